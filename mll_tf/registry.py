"""Name -> builder registries for datasets, models and methods.

Filled by decorators (``@register_dataset("openclipart")``) and read by the CLIs
(``--dataset``, ``--method``). An unknown name raises ``KeyError`` listing the
registered names (CONVENTIONS.md §3.2 item 4).
"""

_REGISTRIES = {"dataset": {}, "method": {}}


def _register(kind, name):
    def deco(obj):
        table = _REGISTRIES[kind]
        if name in table and table[name] is not obj:
            raise ValueError(f"{kind} {name!r} is already registered")
        table[name] = obj
        return obj
    return deco


def _lookup(kind, name):
    table = _REGISTRIES[kind]
    if name not in table:
        raise KeyError(f"unknown {kind} {name!r}; registered: {sorted(table)}")
    return table[name]


def register_dataset(name):
    """Class decorator registering a dataset adapter under ``name``."""
    return _register("dataset", name)


def get_dataset(name):
    """Return the adapter class registered as ``name``.

    ``"tfds:<name>[/<config>][:<version>]"`` (e.g. ``"tfds:voc/2007"``) is not
    in the registry: it returns ``functools.partial(TFDSDataset, name=...)``
    (``mll_tf.data.datasets.tfds_source``; ``root`` is the TFDS data_dir).
    tensorflow_datasets is imported only when that adapter prepares.

    Raises:
        KeyError: listing the registered dataset names; or ``"tfds:"`` with
            no dataset name.
    """
    if name.startswith("tfds:"):
        import functools

        from mll_tf.data.datasets.tfds_source import TFDSDataset

        rest = name[len("tfds:"):]
        if not rest:
            raise KeyError("dataset 'tfds:' needs a TFDS name, e.g. 'tfds:voc/2007'")
        return functools.partial(TFDSDataset, name=rest)
    import mll_tf.data.datasets  # noqa: F401  (fills the registry)
    return _lookup("dataset", name)


def dataset_names():
    import mll_tf.data.datasets  # noqa: F401
    return sorted(_REGISTRIES["dataset"])


def register_method(name):
    """Decorator registering a training method (see ``mll_tf.training``)."""
    return _register("method", name)


def get_method(name):
    """Return the training method registered as ``name``.

    Raises:
        KeyError: listing the registered method names.
    """
    import mll_tf.training.methods  # noqa: F401
    return _lookup("method", name)


def method_names():
    import mll_tf.training.methods  # noqa: F401
    return sorted(_REGISTRIES["method"])


def parse_dataset_options(text):
    """Parse ``"num_train=64,seed=1,root=/x"`` into adapter keyword arguments.

    Values are read as YAML scalars (``64`` -> int, ``0.5`` -> float,
    ``true`` -> bool, anything else -> str).

    Raises:
        ValueError: naming ``--dataset-options`` and the bad item.
    """
    import yaml

    out = {}
    for item in filter(None, (t.strip() for t in (text or "").split(","))):
        if "=" not in item:
            raise ValueError(f"--dataset-options: {item!r} is not KEY=VALUE")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = yaml.safe_load(v) if v.strip() else ""
    return out
