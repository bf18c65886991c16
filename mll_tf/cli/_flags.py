"""Command-line plumbing shared by the mll_tf tools: absl flags, help, one-line errors.

Every tool parses its flags with ``absl.flags`` on its own ``FlagValues``
(so ``main(argv)`` can be called repeatedly, e.g. by tests) and follows one
style:

* flags are spelled ``--batch-size 32`` or ``--batch_size=32``;
* booleans are ``--resume`` / ``--noresume`` (or ``--resume=false``);
* ``--help`` lists every flag with its default, range and choices (the
  choices of ``--method``, ``--dataset``, ``--backbone`` come from the
  registries);
* bad input -- an unknown flag, a value out of range, a missing file, a
  run directory that is not one -- prints ONE line ``error: ...`` naming the
  flag, file or row, and the tool returns 2; never a traceback.
"""

import dataclasses
import os
import re
import sys
import tempfile

__all__ = ["UsageError", "FlagSet", "cli_main", "import_tensorflow_quietly"]

#: Lines TensorFlow prints on a machine without a GPU that say nothing to the user.
_TF_NOISE = re.compile(
    r"(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|cudart_stub\.cc.*Could not find cuda drivers"
    r"|cuda_platform\.cc.*failed call to cuInit"
    r"|port\.cc.*oneDNN custom operations are on"
    r"|cpu_feature_guard\.cc.*(This TensorFlow binary is optimized|To enable the following)"
    r"|^To enable the following instructions:.*rebuild TensorFlow"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|computation placer already registered"
    r"|TF-TRT Warning)")


class UsageError(ValueError):
    """Bad command-line input; its message is the one line the user sees."""


def import_tensorflow_quietly():
    """Import TensorFlow and look for devices with its start-up chatter filtered out.

    On a CPU-only machine TensorFlow writes INFO lines and an ERROR-level
    ``failed call to cuInit`` line to the process's stderr before any Python
    logging is set up. This runs the import and the first device query with
    file descriptor 2 redirected to a temporary file, then writes back every
    line except those known start-up messages (a real error still shows).

    It also sets ``TF_CPP_MIN_LOG_LEVEL=3`` unless the environment sets it:
    TensorFlow's C++ log then shows only fatal messages. Its ERROR level is
    used for notes such as oneDNN's "supports DT_HALF only on platforms with
    AVX-512 ... falling back" (printed when float16 features are converted);
    real failures reach the tools as Python exceptions. Set
    ``TF_CPP_MIN_LOG_LEVEL=0`` to see the whole log.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            import tensorflow as tf
            tf.config.list_physical_devices()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", "replace")
            keep = [line for line in text.splitlines() if line.strip() and not _TF_NOISE.search(line)]
            if keep:
                sys.stderr.write("\n".join(keep) + "\n")


def _flag_name(name):
    return name.replace("-", "_")


def normalise_argv(argv):
    """``--batch-size`` -> ``--batch_size``, ``--no-resume`` -> ``--noresume`` (flag names only)."""
    out = []
    for a in argv:
        if a.startswith("--") and len(a) > 2:
            name, eq, value = a[2:].partition("=")
            if name.startswith("no-"):
                name = "no" + name[3:]
            out.append("--" + name.replace("-", "_") + eq + value)
        else:
            out.append(a)
    return out


class FlagSet:
    """A tool's flags: absl ``FlagValues`` plus the help text it prints.

    Args:
        prog: str, the tool's name in messages (``experiments/train.py``).
        description: str, printed at the top of ``--help``.
    """

    def __init__(self, prog, description=""):
        from absl import flags

        self._flags = flags
        invoked = os.path.basename(sys.argv[0] or "")
        self.prog = invoked if invoked.startswith("mll-") else prog
        self.description = description.strip()
        self.fv = flags.FlagValues()
        self.sections = []  # (title, [(flag, help line)])
        self._section("options")
        self.booleans = set()
        self.lists_of_int = set()

    def _section(self, title):
        self.sections.append((title, []))

    def section(self, title):
        """Start a new group of flags in ``--help``."""
        self._section(title)

    def _doc(self, name, text):
        self.sections[-1][1].append(("--" + name.replace("_", "-"), text))

    def define(self, name, default, help, *, kind=None, choices=None, min=None, max=None,  # noqa: A002
               required=False):
        """Define one flag.

        Args:
            name: str (underscores or dashes).
            default: the default value (its type is the flag's type unless
                ``kind`` says otherwise); ``None`` means "not given".
            help: str.
            kind: ``"bool" | "int" | "float" | "str" | "int_list" | "str_list"``
                (default: from ``default``).
            choices: optional sequence (a ``str`` flag becomes an enum).
            min, max: optional bounds.
            required: bool, named in ``--help``; checked by :meth:`parse`.
        """
        flags = self._flags
        name = _flag_name(name)
        if kind is None:
            kind = {bool: "bool", int: "int", float: "float"}.get(type(default), "str")
        fv = self.fv
        extra = []
        if kind == "bool":
            flags.DEFINE_boolean(name, default, help, flag_values=fv)
            self.booleans.add(name)
        elif kind == "int":
            flags.DEFINE_integer(name, default, help, lower_bound=min, upper_bound=max, flag_values=fv)
        elif kind == "float":
            flags.DEFINE_float(name, default, help, lower_bound=min, upper_bound=max, flag_values=fv)
        elif kind in ("int_list", "str_list"):
            flags.DEFINE_list(name, default, help, flag_values=fv)
            if kind == "int_list":
                self.lists_of_int.add(name)
        elif choices is not None:
            flags.DEFINE_enum(name, default, [str(c) for c in choices], help, flag_values=fv)
        else:
            flags.DEFINE_string(name, default, help, flag_values=fv)
        if choices is not None:
            extra.append("one of: " + ", ".join(str(c) for c in choices if c != ""))
        if min is not None or max is not None:
            extra.append(f"range [{'' if min is None else min}, {'' if max is None else max}]")
        if required:
            extra.append("required")
        elif default not in (None, ""):
            extra.append(f"default: {default}")
        self._doc(name, help + (f" ({'; '.join(extra)})" if extra else ""))
        if required:
            self._required = getattr(self, "_required", []) + [name]

    def define_dataclass(self, cls, defaults=None, skip=()):
        """Define one flag per field of a config dataclass (see :func:`mll_tf.training.config.option`).

        The flags' defaults are None ("not given"), so :meth:`explicit` can
        tell what the command line set; ``--help`` shows the field's default.
        """
        for f in dataclasses.fields(cls):
            if f.name in skip or f.name in self.fv:
                continue
            meta = f.metadata
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            choices = meta.get("choices")
            if callable(choices):
                choices = choices()
            kind = None
            if isinstance(default, tuple):
                kind = "int_list"
            elif isinstance(default, bool):
                kind = "bool"
            elif isinstance(default, int):
                kind = "int"
            elif isinstance(default, float):
                kind = "float"
            help_text = meta.get("help", "")
            shown = (defaults or {}).get(f.name, default)
            if isinstance(shown, tuple):
                shown = ",".join(map(str, shown)) or "''"
            extra = []
            if choices is not None:
                extra.append("one of: " + ", ".join(str(c) for c in choices if c != ""))
            if meta.get("listed"):
                extra.append("one of: " + ", ".join(meta["listed"]()))
            lo, hi = meta.get("min"), meta.get("max")
            if lo is not None or hi is not None:
                lo_s = "" if lo is None else (f"> {lo}" if meta.get("min_exclusive") else f">= {lo}")
                hi_s = "" if hi is None else f"<= {hi}"
                extra.append(" and ".join(x for x in (lo_s, hi_s) if x))
            extra.append(f"default: {shown if shown != '' else repr('')}")
            flags = self._flags
            name = f.name
            if kind == "bool":
                flags.DEFINE_boolean(name, None, help_text, flag_values=self.fv)
                self.booleans.add(name)
            elif kind == "int":
                flags.DEFINE_integer(name, None, help_text, lower_bound=lo, upper_bound=hi, flag_values=self.fv)
            elif kind == "float":
                flags.DEFINE_float(name, None, help_text, lower_bound=lo, upper_bound=hi, flag_values=self.fv)
            elif kind == "int_list":
                flags.DEFINE_list(name, None, help_text, flag_values=self.fv)
                self.lists_of_int.add(name)
            elif choices is not None:
                flags.DEFINE_enum(name, None, [str(c) for c in choices], help_text, flag_values=self.fv)
            else:
                flags.DEFINE_string(name, None, help_text, flag_values=self.fv)
            self._doc(name, f"{help_text} ({'; '.join(extra)})")

    def help_text(self):
        lines = [f"usage: {self.prog} [flags]"]
        if self.description:
            lines += ["", self.description]
        for title, items in self.sections:
            if not items:
                continue
            lines += ["", f"{title}:"]
            for flag, text in items:
                lines.append(f"  {flag}")
                lines.append(f"      {text}")
        lines += ["", "Booleans: --flag / --noflag (or --flag=true|false). Flags may be written --a-b or --a_b."]
        return "\n".join(lines)

    def parse(self, argv, positional=False):
        """Parse ``argv`` (without the program name).

        Returns:
            None after printing ``--help`` (the caller returns 0), else the
            list of positional arguments.

        Raises:
            UsageError: one line naming the flag.
        """
        argv = list(sys.argv[1:] if argv is None else argv)
        if any(a in ("-h", "--help", "--helpfull", "-help") for a in argv):
            print(self.help_text())
            return None
        argv = normalise_argv(argv)
        try:
            rest = self.fv([self.prog] + argv)[1:]
        except self._flags.Error as e:
            msg = str(e).splitlines()[0]
            m = re.match(r"Unknown command line flag '(\w+)'", msg)
            if m:
                msg = f"unknown flag --{m.group(1).replace('_', '-')} (see --help)"
            msg = re.sub(r"--(\w+)", lambda g: "--" + g.group(1).replace("_", "-"), msg)
            raise UsageError(msg) from None
        if rest and not positional:
            prev = None
            for i, a in enumerate(argv):
                if a == rest[0] and i > 0:
                    prev = argv[i - 1]
                    break
            hint = ""
            if prev and prev.startswith("--") and prev[2:].split("=")[0] in self.booleans:
                name = prev[2:].split("=")[0].replace("_", "-")
                hint = f"; {prev} takes no value: write --{name} or --no{name} (or --{name}=false)"
            raise UsageError(f"unexpected argument {rest[0]!r}{hint}")
        for name in getattr(self, "_required", []):
            if self.fv[name].value in (None, "", []):
                raise UsageError(f"--{name.replace('_', '-')} is required (see --help)")
        return rest

    def __getattr__(self, name):
        fv = self.__dict__.get("fv")
        if fv is not None and name in fv:
            value = fv[name].value
            if name in self.lists_of_int and value is not None:
                try:
                    return tuple(int(x) for x in value)
                except ValueError:
                    raise UsageError(f"--{name.replace('_', '-')}: expected integers like 3,5, got "
                                     f"{','.join(value)}") from None
            return value
        raise AttributeError(name)

    def explicit(self, names):
        """``{name: value}`` of the flags among ``names`` given on the command line."""
        out = {}
        for n in names:
            if n in self.fv and self.fv[n].present:
                out[n] = getattr(self, n)
        return out


def cli_main(run, argv=None):
    """Run a tool's body and turn expected errors into one line and exit code 2.

    Args:
        run: callable ``(argv) -> int``.
        argv: list of str or None (``sys.argv[1:]``).

    Returns:
        int exit code: ``run``'s, or 2 after printing ``error: <message>``
        for :class:`UsageError`, ``ValueError``, ``KeyError``,
        ``FileNotFoundError`` (which includes a missing feature store),
        ``NotADirectoryError``, and the input pipeline's own checks failing
        inside TensorFlow (a corrupt or truncated shard, a non-finite or
        mis-shaped record: their message names the store, shard or record).
    """
    try:
        return run(argv)
    except (UsageError, ValueError, KeyError, FileNotFoundError, NotADirectoryError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        sys.stdout.flush()
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 -- only the pipeline's named data errors become one line
        msg = _data_error_message(e)
        if msg is None:
            raise
        sys.stdout.flush()
        print(f"error: {msg}", file=sys.stderr)
        return 2


def _data_error_message(e):
    """The message of a feature-store check that failed inside a ``tf.data`` pipeline, or None.

    The reader's checks (``mll_tf.data.feature_store`` / ``schema``) fail with
    ``InvalidArgumentError: ... assertion failed: [feature store '...': ...]``;
    this returns the text between the brackets. Any other error gives None
    (it is a bug and keeps its traceback).
    """
    tf = sys.modules.get("tensorflow")
    if tf is None or not isinstance(e, tf.errors.OpError):
        return None
    text = e.message if hasattr(e, "message") else str(e)
    start = text.find("assertion failed: [feature store ")
    if start < 0:
        return None
    body = text[start + len("assertion failed: ["):]
    end = body.find("]\n")
    body = body[:end] if end >= 0 else body.split("\n", 1)[0].rstrip("]")
    return body.replace("\\'", "'")
