"""Write PyTorch-format files without torch (shared by tests/backbones and tests/export).

A pure-Python pickler emits the same opcodes as ``torch.save`` (GLOBAL
``torch._utils _rebuild_tensor_v2``, ``torch FloatStorage`` persistent ids,
...) without importing torch; :func:`legacy_bytes` and :func:`write_zip`
lay the pickle and the storages out as ``torch.save`` does in its legacy
(< 1.6) and zip (>= 1.6) formats (``torch/serialization.py``).
"""
import collections
import io
import pickle
import struct
import zipfile

import numpy as np

MAGIC = 0x1950A86A20F9469CFC6C
SYS_INFO = {"protocol_version": 1001, "little_endian": True,
            "type_sizes": {"short": 2, "int": 4, "long": 4}}


class Global:
    """Placeholder pickled as ``GLOBAL module name`` (module not imported)."""

    def __init__(self, module, name):
        self.module = module
        self.qual = name

    def __call__(self, *args):  # save_reduce requires a callable
        raise AssertionError("never called")


class Call:
    """Pickled as ``func(*args)`` via REDUCE (then BUILD with ``state`` if given)."""

    def __init__(self, func, *args, state=None):
        self.func = func
        self.args = args
        self.state = state

    def __reduce__(self):
        if self.state is None:
            return self.func, self.args
        return self.func, self.args, self.state


class Storage:
    def __init__(self, key, array, type_name="FloatStorage"):
        self.key = key
        self.array = array
        self.type_name = type_name


class TorchLikePickler(pickle._Pickler):
    dispatch = pickle._Pickler.dispatch.copy()

    def _save_global_stub(self, obj):
        self.write(pickle.GLOBAL
                   + f"{obj.module}\n{obj.qual}\n".encode("ascii"))

    dispatch[Global] = _save_global_stub

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", Global("torch", obj.type_name), obj.key,
                    "cpu", obj.array.size, None)
        return None


def dumps(obj):
    buf = io.BytesIO()
    TorchLikePickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def tensor(storage, offset, size, stride):
    return Call(Global("torch._utils", "_rebuild_tensor_v2"), storage,
                offset, tuple(size), tuple(stride), False,
                collections.OrderedDict())


def state_dict(arrays, first_key=0):
    """``{name: ndarray}`` -> (an ``OrderedDict(...)`` pickle object of tensors, their storages)."""
    items, storages = [], []
    for i, (name, a) in enumerate(arrays.items()):
        a = np.ascontiguousarray(a)
        s = Storage(str(first_key + i), a.reshape(-1),
                    {np.dtype("float32"): "FloatStorage", np.dtype("int64"): "LongStorage"}[a.dtype])
        strides = tuple(int(np.prod(a.shape[d + 1:])) for d in range(a.ndim))
        items.append((name, tensor(s, 0, a.shape, strides)))
        storages.append(s)
    return Call(Global("collections", "OrderedDict"), items), storages


def legacy_bytes(state, storages):
    parts = [pickle.dumps(MAGIC, protocol=2),
             pickle.dumps(1001, protocol=2),
             pickle.dumps(SYS_INFO, protocol=2),
             dumps(state),
             pickle.dumps([s.key for s in storages], protocol=2)]
    for s in storages:
        parts.append(struct.pack("<q", s.array.size))
        parts.append(s.array.astype(s.array.dtype.newbyteorder("<"))
                     .tobytes())
    return b"".join(parts)


def write_zip(path, obj, storages, archive="archive"):
    """``torch.save`` (>= 1.6) layout: ``<archive>/data.pkl``, ``byteorder``, ``data/<key>``, ``version``."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{archive}/data.pkl", dumps(obj))
        zf.writestr(f"{archive}/byteorder", "little")
        for s in storages:
            zf.writestr(f"{archive}/data/{s.key}", s.array.astype(s.array.dtype.newbyteorder("<")).tobytes())
        zf.writestr(f"{archive}/version", "3\n")
    return path
