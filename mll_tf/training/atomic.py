"""Atomic writes for run directories: a file is either its old version or its new one, never half of one.

Every file a run writes goes to a temporary name in the same folder and is
renamed over the final name when complete (``os.replace`` is atomic on POSIX
file systems), so a process killed while writing leaves the previous version
intact.
"""

import contextlib
import json
import os
import zipfile

__all__ = ["atomic_path", "write_json", "write_text", "save_keras_model", "keras_file_ok"]


@contextlib.contextmanager
def atomic_path(path, suffix=""):
    """Yield a temporary path next to ``path``; rename it over ``path`` if the block succeeds.

    Args:
        path: str, the final file.
        suffix: str, appended to the temporary name (e.g. ``".keras"`` for
            writers that check the extension).

    The temporary file is removed if the block raises.
    """
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path, text):
    """Write ``text`` (str) to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_json(path, data, indent=2):
    """Write ``data`` as JSON to ``path`` atomically."""
    write_text(path, json.dumps(data, indent=indent) + "\n")


def save_keras_model(model, path):
    """``model.save(path)`` atomically (``path`` ends with ``.keras``)."""
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)


def keras_file_ok(path):
    """True if ``path`` is a complete ``.keras`` archive (exists, a zip whose members' CRCs check)."""
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() is None and "config.json" in z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
