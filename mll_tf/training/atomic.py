"""Atomic writes for run directories: a file is either its old version or its new one, never half of one.

Every file a run writes goes to a temporary name in the same folder and is
renamed over the final name when complete (``os.replace`` is atomic on POSIX
file systems), so a process killed while writing leaves the previous version
intact.

A run directory may be any ``tf.io.gfile`` path (``gs://``, ``hdfs://``,
``ram://``): there the file is written to a local temporary file (Keras'
``model.save`` and HDF5 want one), copied next to the final name and renamed
over it (:func:`mll_tf.data.fs.rename`; a copy on object stores, which only
show complete objects).
"""

import contextlib
import json
import os
import zipfile

__all__ = ["atomic_path", "write_json", "write_text", "save_keras_model", "keras_file_ok", "load_weights"]


@contextlib.contextmanager
def atomic_path(path, suffix=""):
    """Yield a temporary path next to ``path``; rename it over ``path`` if the block succeeds.

    Args:
        path: str, the final file.
        suffix: str, appended to the temporary name (e.g. ``".keras"`` for
            writers that check the extension).

    The temporary file is removed if the block raises.
    """
    from mll_tf.data import fs

    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    fs.makedirs(folder)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}{suffix}")
    if not fs.is_local(path):
        import shutil
        import tempfile

        local_dir = tempfile.mkdtemp(prefix="mll_tf-")
        local = os.path.join(local_dir, f"{os.path.basename(path)}{suffix}")
        try:
            yield local
            fs.copy(local, tmp)
            fs.rename(tmp, path)
        finally:
            shutil.rmtree(local_dir, ignore_errors=True)
            if fs.exists(tmp):
                fs.remove(tmp, missing_ok=True)
        return
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
    from mll_tf.data import fs

    try:
        with fs.open_file(path, "rb") as f, zipfile.ZipFile(f) as z:
            return z.testzip() is None and "config.json" in z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def load_weights(model, path):
    """``model.load_weights(path)`` for a ``.weights.h5`` file on any ``tf.io.gfile`` file system.

    A non-local file is first copied to a local temporary file (HDF5 reads local files).
    """
    from mll_tf.data import fs

    path = os.fspath(path)
    if fs.is_local(path):
        model.load_weights(path)
        return
    import shutil
    import tempfile

    local_dir = tempfile.mkdtemp(prefix="mll_tf-")
    try:
        local = os.path.join(local_dir, os.path.basename(path))
        fs.copy(path, local)
        model.load_weights(local)
    finally:
        shutil.rmtree(local_dir, ignore_errors=True)
