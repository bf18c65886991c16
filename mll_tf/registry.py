"""Name -> object registries, filled by decorators.

One :class:`Registry` per kind of thing a command line chooses by name:
dataset adapters (``mll_tf.data.datasets``), backbones
(``mll_tf.backbones``) and training methods (``mll_tf.tasks``). A module
registers what it defines with the kind's decorator
(``@register_dataset("openclipart")``, ``@register_task("lesa")``); the
package that owns the kind imports its modules and offers the lookup
(``mll_tf.data.datasets.get_dataset``, ``mll_tf.tasks.get_task``). This
module imports nothing of the project, so registering never makes an import
circle.
"""

__all__ = ["Registry", "parse_key_values"]


class Registry:
    """A name -> object table for one kind.

    Args:
        kind: str, what is registered (``"dataset"``, ``"task"``), used in
            error messages and flag names (``--dataset``, ``--method``).
        flag: str or None, the command-line flag that chooses from this
            registry, named in errors (default ``--<kind>``).

    Example:
        >>> TASKS = Registry("task", flag="--method")
        >>> @TASKS.register("lesa")
        ... class LESATask: ...
        >>> TASKS.get("lesa")
    """

    def __init__(self, kind, flag=None):
        self.kind = kind
        self.flag = flag or f"--{kind}"
        self._table = {}

    def register(self, name):
        """Decorator registering an object under ``name``.

        Raises:
            ValueError: another object is already registered as ``name``.
        """
        def deco(obj):
            if name in self._table and self._table[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered "
                                 f"({self._table[name]!r})")
            self._table[name] = obj
            return obj
        return deco

    def unregister(self, name):
        """Remove ``name`` (tests that register a method of their own clean up with it)."""
        self._table.pop(name, None)

    def get(self, name):
        """The object registered as ``name``.

        Raises:
            KeyError: naming the flag and listing the registered names.
        """
        if name not in self._table:
            raise KeyError(f"{self.flag}: unknown {self.kind} {name!r}; registered: "
                           f"{', '.join(sorted(self._table))}")
        return self._table[name]

    def names(self):
        """Registered names, sorted (list of str)."""
        return sorted(self._table)

    def __contains__(self, name):
        return name in self._table

    def items(self):
        """``(name, object)`` pairs, sorted by name."""
        return sorted(self._table.items())


def parse_key_values(text, flag="--dataset-options"):
    """Parse ``"num_train=64,seed=1,root=/x"`` into a dict of keyword arguments.

    Values are read as YAML scalars (``64`` -> int, ``0.5`` -> float,
    ``true`` -> bool, anything else -> str); dashes in keys become
    underscores.

    Args:
        text: str or None.
        flag: str, the flag named in errors.

    Returns:
        dict str -> scalar.

    Raises:
        ValueError: naming ``flag`` and the item that is not ``KEY=VALUE``.
    """
    import yaml

    out = {}
    for item in filter(None, (t.strip() for t in (text or "").split(","))):
        if "=" not in item:
            raise ValueError(f"{flag}: {item!r} is not KEY=VALUE")
        k, v = item.split("=", 1)
        if not k.strip():
            raise ValueError(f"{flag}: {item!r} has an empty key")
        out[k.strip().replace("-", "_")] = yaml.safe_load(v) if v.strip() else ""
    return out
