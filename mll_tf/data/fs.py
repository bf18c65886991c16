"""File-system access for feature stores and run directories through ``tf.io.gfile``.

Every path a store or a run directory uses may be a local path or any URL
TensorFlow's file systems serve (``gs://``, ``s3://`` with the
tensorflow-io plugin, ``hdfs://``, the in-memory ``ram://``). Local paths
behave exactly as with ``os``: the same files, the same atomic renames
(``rename(..., overwrite=True)`` is ``rename(2)``) and ``fsync`` before a
rename so a crash leaves the old or the new file.

Limits on other file systems:

* ``fsync`` is a no-op (object stores make a file visible only when it is
  completely uploaded, which is what the local fsync + rename gives);
* a rename is atomic on POSIX-like file systems (HDFS, ``ram://``) but is a
  copy + delete on object stores (GCS, S3): a reader may briefly see both
  names, never a half-written file;
* the feature-store writer lock (``writer.lock``) is created with
  ``O_CREAT | O_EXCL`` locally; elsewhere there is no atomic create, so two
  writers started at the same moment on the same split may both take it.
  Do not start two extractions of one split at once on a remote store (the
  sharded extraction gives each worker its own directory, so it never needs
  to).

Only path strings are handled here (``os.path.join`` is a string operation
and correct for URLs); nothing imports TensorFlow until a function is called.
"""

import os

__all__ = ["is_local", "join", "exists", "isdir", "isfile", "listdir", "makedirs", "remove", "rmtree",
           "rename", "getsize", "getmtime", "open_file", "read_text", "write_text_atomic", "fsync_path",
           "copy"]


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def is_local(path):
    """True for a path on the local file system (no ``scheme://`` prefix, or ``file://``)."""
    path = os.fspath(path)
    return "://" not in path or path.startswith("file://")


def join(*parts):
    """``os.path.join`` of path strings (also right for ``scheme://`` URLs)."""
    return os.path.join(*(os.fspath(p) for p in parts))


def exists(path):
    path = os.fspath(path)
    return os.path.exists(path) if is_local(path) else _gfile().exists(path)


def isdir(path):
    path = os.fspath(path)
    return os.path.isdir(path) if is_local(path) else _gfile().isdir(path)


def isfile(path):
    path = os.fspath(path)
    if is_local(path):
        return os.path.isfile(path)
    g = _gfile()
    return g.exists(path) and not g.isdir(path)


def listdir(path):
    """Names in a directory (no trailing ``/`` on sub-directories)."""
    path = os.fspath(path)
    if is_local(path):
        return os.listdir(path)
    return [n.rstrip("/") for n in _gfile().listdir(path)]


def makedirs(path):
    """Create ``path`` and its parents; no error if it exists."""
    path = os.fspath(path)
    if is_local(path):
        os.makedirs(path, exist_ok=True)
    else:
        _gfile().makedirs(path)


def remove(path, missing_ok=False):
    path = os.fspath(path)
    try:
        if is_local(path):
            os.remove(path)
        else:
            import tensorflow as tf

            try:
                tf.io.gfile.remove(path)
            except tf.errors.NotFoundError:
                raise FileNotFoundError(path) from None
    except FileNotFoundError:
        if not missing_ok:
            raise


def rmtree(path):
    path = os.fspath(path)
    if is_local(path):
        import shutil

        shutil.rmtree(path)
    else:
        _gfile().rmtree(path)


def rename(src, dst):
    """Rename ``src`` over ``dst`` (``os.replace`` locally; ``gfile.rename(overwrite=True)`` elsewhere)."""
    src, dst = os.fspath(src), os.fspath(dst)
    if is_local(src) and is_local(dst):
        os.replace(src, dst)
    else:
        _gfile().rename(src, dst, overwrite=True)


def copy(src, dst):
    """Copy a file (over ``dst``), any file system to any file system."""
    _gfile().copy(os.fspath(src), os.fspath(dst), overwrite=True)


def getsize(path):
    path = os.fspath(path)
    if is_local(path):
        return os.path.getsize(path)
    import tensorflow as tf

    try:
        return int(tf.io.gfile.stat(path).length)
    except tf.errors.NotFoundError:
        raise FileNotFoundError(path) from None


def getmtime(path):
    """Modification time in seconds since the epoch."""
    path = os.fspath(path)
    if is_local(path):
        return os.path.getmtime(path)
    import tensorflow as tf

    try:
        return tf.io.gfile.stat(path).mtime_nsec / 1e9
    except tf.errors.NotFoundError:
        raise FileNotFoundError(path) from None


def open_file(path, mode="r"):
    """``open(path, mode, encoding="utf-8")`` locally (text modes), ``tf.io.gfile.GFile`` elsewhere.

    Raises:
        FileNotFoundError: reading a path that does not exist (any file system).
    """
    path = os.fspath(path)
    if is_local(path):
        if "b" in mode:
            return open(path, mode)
        return open(path, mode, encoding="utf-8", newline="" if "w" in mode else None)
    if "r" in mode and not _gfile().exists(path):
        raise FileNotFoundError(path)
    return _gfile().GFile(path, mode)


def read_text(path):
    """The whole file as str (UTF-8)."""
    with open_file(path, "r") as f:
        return f.read()


def fsync_path(path):
    """Flush a local file's data to disk (no-op on other file systems)."""
    path = os.fspath(path)
    if is_local(path):
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def write_text_atomic(path, text, tmp=None):
    """Write ``text`` to ``path`` via ``tmp`` (default ``path + ".tmp"``) and a rename over ``path``."""
    path = os.fspath(path)
    tmp = tmp or path + ".tmp"
    with open_file(tmp, "w") as f:
        f.write(text)
        if is_local(tmp):
            f.flush()
            os.fsync(f.fileno())
    rename(tmp, path)
