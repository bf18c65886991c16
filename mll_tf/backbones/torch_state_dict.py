"""Read PyTorch ``.pth`` state dicts into NumPy without importing torch.

A ``.pth`` file is a pickle, and unpickling runs whatever callables the file
names. :func:`load_torch_state_dict` therefore never calls plain
``pickle.load``: it uses :class:`_RestrictedUnpickler`, whose ``find_class``
resolves only the handful of globals that a tensor state dict needs
(``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``,
``torch._utils._rebuild_parameter`` and the ``torch.*Storage`` type names),
each mapped to a small NumPy stand-in defined here. Every other global is
refused with :class:`UnsafePickleError` before anything is called.

Two container formats are supported:

* the legacy format (``torch.save(..., _use_new_zipfile_serialization=False)``,
  the default before PyTorch 1.6): five concatenated pickles / blobs
  — magic number, protocol version, system info, the pickled object, the
  list of storage keys — followed by the raw storages in the order of that
  list, each preceded by its element count as an 8-byte integer;
* the zip format (PyTorch >= 1.6): ``<archive>/data.pkl`` plus one raw file
  ``<archive>/data/<key>`` per storage.

Checkpoints (:func:`load_torch_checkpoint`): a training checkpoint such as
deep-object-reid's ``torchreid/engine/engine.py::save_model`` ``.pth.tar``
(``{'state_dict', 'epoch', 'optimizer', 'scheduler', 'num_classes',
'classes_map', 'initial_lr'}``) pickles more than tensors: NumPy scalars
(``numpy.core.multiarray.scalar`` + ``numpy.dtype`` + ``_codecs.encode``),
which are decoded by NumPy stand-ins, and the optimizer / LR-scheduler
objects (PyTorch 1.8's ``OneCycleLR`` keeps a bound method, pickled as
``builtins.getattr(<OneCycleLR object>, '_annealing_cos')``, whose
``__dict__`` holds the ``SAM`` / ``SGD`` optimizer). The globals listed in
:data:`TRAINING_STATE_GLOBALS` are resolved to *inert* placeholders
(:class:`_Inert`): calling one, or ``NEWOBJ`` / ``BUILD`` on one, only
yields another placeholder; nothing is imported or run. A placeholder may
appear only outside ``state_dict``; the top-level entries holding one are
returned as skipped. Every other global is still refused.

Format reference: ``torch/serialization.py`` (``_legacy_save``, ``_load``)
and ``torch/_utils.py`` (``_rebuild_tensor_v2``) in PyTorch.

Bounded: a crafted file cannot make the loader allocate much more than it
holds. The unpickler is Python's pure-Python one (its memo is a dict; the C
unpickler grows its memo table to the largest index a ``LONG_BINPUT`` names,
so a 9-byte pickle can take GiBs), reading from memory (a declared length
never reserves more than the bytes present); the calls it makes are charged
against a budget of 8 x the pickle's size + 1 MiB; a storage whose declared
size exceeds the bytes present (after at most 16x decompression for a
compressed zip member) is refused before anything is read; and the arrays
built (overlapping views such as stride 0 can describe more data than their
storage) may take at most 4 x the file size + 16 MiB in all.
"""
import collections
import functools
import io
import os
import pickle
import struct
import zipfile

import numpy as np

from mll_tf.data.safe_pickle import BudgetedUnpickler

__all__ = ["TRAINING_STATE_GLOBALS", "UnsafePickleError", "load_torch_checkpoint", "load_torch_state_dict"]

#: The calls of a pickle may allocate this many times its size (+ the slack).
_PICKLE_ALLOCATION_FACTOR = 8
_PICKLE_ALLOCATION_SLACK = 1 << 20
#: The arrays of a file may take this many times its size (+ the slack).
_OUTPUT_FACTOR = 4
_OUTPUT_SLACK = 16 << 20
#: A compressed zip member may expand at most this many times (+ 4096 bytes).
_MAX_COMPRESSION_RATIO = 16

# Legacy-format constants from torch/serialization.py.
_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001

# torch storage type name -> NumPy dtype (little-endian element layout).
# BFloat16 has no NumPy dtype: it is read as uint16 and widened to float32.
_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
    "ComplexFloatStorage": np.dtype("<c8"),
    "ComplexDoubleStorage": np.dtype("<c16"),
}


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global that a tensor state dict does not need.

    Raised by :func:`load_torch_state_dict` before the global is resolved or
    called, so the payload of a malicious file never runs. The message names
    the refused ``module.name`` and the file.
    """


class _StorageType:
    """Stand-in for a ``torch.<X>Storage`` class: only carries a dtype."""

    def __init__(self, name):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]

    def __repr__(self):
        return f"_StorageType({self.name})"


class _StorageRef:
    """A storage named by a persistent id; its bytes are bound later."""

    def __init__(self, storage_type, key, numel):
        self.storage_type = storage_type
        self.key = key
        self.numel = numel


class _LazyTensor:
    """Arguments of ``_rebuild_tensor_v2``, materialised once storages load."""

    def __init__(self, storage, offset, size, stride):
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *unused):
    """NumPy stand-in for ``torch._utils._rebuild_tensor_v2``.

    ``*unused`` absorbs ``requires_grad``, ``backward_hooks`` and (PyTorch
    >= 1.13) ``metadata``.
    """
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError(
            "_rebuild_tensor_v2 expects a storage persistent id, got "
            f"{type(storage).__name__}")
    return _LazyTensor(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, *unused):
    """NumPy stand-in for ``torch._utils._rebuild_parameter[_with_state]``."""
    return data


_ALLOWED_FUNCTIONS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _RestrictedUnpickler(BudgetedUnpickler):
    """Pure-Python unpickler that resolves only the globals of a tensor state dict.

    Reads from an in-memory file; the calls of the allowed globals are
    charged against a budget of ``_PICKLE_ALLOCATION_FACTOR`` x the bytes
    left in the file + ``_PICKLE_ALLOCATION_SLACK``; ``BUILD`` is allowed only
    on dicts (``OrderedDict._metadata``) with a dict state.
    """

    dispatch = dict(BudgetedUnpickler.dispatch)
    ALLOCATION_FACTOR = _PICKLE_ALLOCATION_FACTOR
    ALLOCATION_SLACK = _PICKLE_ALLOCATION_SLACK

    def __init__(self, file, filename):
        pos = file.tell()
        size = file.seek(0, io.SEEK_END) - pos
        file.seek(pos)
        super().__init__(file, size, f"refusing '{filename}'")
        self.filename = filename
        self.storages = {}

    def refusal(self, message):
        return UnsafePickleError(message)

    def _charged_call(self, func, name, *args):
        n = 0
        for a in args:
            try:
                n += len(a)
            except TypeError:
                pass
        self._charge(64 + 64 * n, f"{name}({n} items)")
        return func(*args)

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_FUNCTIONS:
            # A fresh wrapper per lookup, so that a BUILD opcode aimed at the
            # returned object cannot alter this module's functions.
            return functools.partial(self._charged_call,
                                     _ALLOWED_FUNCTIONS[(module, name)],
                                     f"{module}.{name}")
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafePickleError(
            f"refusing to load global '{module}.{name}' from "
            f"'{self.filename}': only tensor state dicts are allowed "
            "(collections.OrderedDict, torch._utils._rebuild_tensor_v2, "
            "torch.*Storage)")

    def load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(state, tuple) and len(state) == 2 and state[1] is None:
            state = state[0]
        if not (isinstance(inst, dict) and isinstance(state, dict)):
            raise UnsafePickleError(
                f"refusing '{self.filename}': BUILD (__setstate__) on a "
                f"{type(inst).__name__}; only a dict's attributes may be set")
        self._charge(64 + 64 * len(state), "BUILD")
        inst.__dict__.update(state)

    dispatch[pickle.BUILD[0]] = load_build

    def persistent_load(self, pid):
        # pid = ('storage', storage_type, key, location, numel[, view_meta])
        if (not isinstance(pid, tuple) or len(pid) < 5
                or pid[0] != "storage"):
            raise pickle.UnpicklingError(
                f"unsupported persistent id {pid!r} in '{self.filename}'")
        storage_type, key, _, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(
                f"persistent id {pid!r} in '{self.filename}' does not name "
                "a torch storage type")
        if len(pid) > 5 and pid[5] is not None:
            raise ValueError(
                f"'{self.filename}': storage views (pre-0.4 PyTorch files) "
                "are not supported")
        if not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError(
                f"invalid storage size {numel!r} in '{self.filename}'")
        key = str(key)
        ref = self.storages.get(key)
        if ref is None:
            self._charge(256, "a storage reference")
            ref = _StorageRef(storage_type, key, int(numel))
            self.storages[key] = ref
        return ref


def _unpickle(file, filename, cls=None):
    """Run the restricted unpickler (``cls``, default :class:`_RestrictedUnpickler`); return (object, storages)."""
    unpickler = (cls or _RestrictedUnpickler)(file, filename)
    return unpickler.load(), unpickler.storages


class _OutputBudget:
    """Bytes the arrays of one file may take: ``_OUTPUT_FACTOR`` x its size + slack."""

    def __init__(self, file_size, filename):
        self.limit = _OUTPUT_FACTOR * file_size + _OUTPUT_SLACK
        self.file_size = file_size
        self.filename = filename
        self.used = 0

    def charge(self, size, nbytes):
        self.used += nbytes
        if self.used > self.limit:
            raise ValueError(
                f"'{self.filename}': a tensor of size {size} ({nbytes} bytes) "
                f"brings the arrays to {self.used} bytes, more than "
                f"{_OUTPUT_FACTOR} x the file's {self.file_size} bytes + "
                f"{_OUTPUT_SLACK}: overlapping views (stride 0) describe more "
                "data than the file holds; refused")


def _materialise(obj, arrays, filename, budget=None, memo=None):
    """Replace every _LazyTensor inside ``obj`` by an owning np.ndarray.

    Containers shared in the pickle are materialised once and stay shared
    (a pickle of nested shared lists would otherwise expand exponentially).
    """
    if budget is None:
        budget = _OutputBudget(0, filename)
        budget.limit = float("inf")
    if memo is None:
        memo = {}
    if isinstance(obj, _LazyTensor):
        if not isinstance(obj.storage, _StorageRef) or \
                obj.storage.key not in arrays:
            raise ValueError(f"'{filename}': tensor without a storage")
        return _tensor_to_array(obj, arrays[obj.storage.key], filename, budget)
    if not isinstance(obj, (dict, list, tuple)):
        return obj
    done = memo.get(id(obj))
    if done is not None:
        return done[1]
    if isinstance(obj, collections.OrderedDict):
        out = collections.OrderedDict(
            (k, _materialise(v, arrays, filename, budget, memo)) for k, v in obj.items())
    elif isinstance(obj, dict):
        out = {k: _materialise(v, arrays, filename, budget, memo) for k, v in obj.items()}
    else:
        out = type(obj)(_materialise(v, arrays, filename, budget, memo) for v in obj)
    memo[id(obj)] = (obj, out)   # obj kept alive so its id is not reused
    return out


def _tensor_to_array(tensor, storage, filename, budget=None):
    """Copy a (possibly strided, offset) view of ``storage`` into an array.

    ``budget`` (:class:`_OutputBudget`) is charged the array's bytes before
    the copy is made.
    """
    size, stride, offset = tensor.size, tensor.stride, tensor.offset
    if not (isinstance(size, tuple) and isinstance(stride, tuple)
            and all(type(v) is int for v in size + stride + (offset,))):
        raise ValueError(
            f"'{filename}': invalid tensor geometry size={size!r} "
            f"stride={stride!r} offset={offset!r}")
    if (len(size) != len(stride) or any(s < 0 for s in size)
            or any(s < 0 for s in stride) or offset < 0):
        raise ValueError(
            f"'{filename}': invalid tensor geometry size={size} "
            f"stride={stride} offset={offset}")
    is_bf16 = tensor.storage.storage_type.name == "BFloat16Storage"
    native = storage.dtype.newbyteorder("=")
    numel = 1
    for n in size:
        numel *= n
    if budget is not None:
        budget.charge(size, numel * (4 if is_bf16 else native.itemsize))
    if 0 in size:
        return np.zeros(size, dtype=np.float32 if is_bf16 else native)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise ValueError(
            f"'{filename}': tensor (size={size}, stride={stride}, "
            f"offset={offset}) reads past the end of its storage of "
            f"{storage.size} elements")
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size,
        strides=tuple(s * storage.itemsize for s in stride), writeable=False)
    array = np.array(view, dtype=native, order="C", copy=True)
    if is_bf16:
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def _storage_dtype(ref, little_endian):
    dtype = ref.storage_type.dtype
    return dtype if little_endian else dtype.newbyteorder(">")


def _load_legacy(f, filename, cls=None):
    """Read the legacy (pre-1.6, non-zip) torch.save format.

    ``f`` is an in-memory binary file (``io.BytesIO``) holding the whole
    file; storages are zero-copy views of its buffer.
    """
    magic, _ = _unpickle(f, filename)
    if magic != _LEGACY_MAGIC_NUMBER:
        raise ValueError(
            f"'{filename}' is not a PyTorch file (bad magic number)")
    protocol, _ = _unpickle(f, filename)
    if protocol != _LEGACY_PROTOCOL_VERSION:
        raise ValueError(
            f"'{filename}': unsupported legacy protocol version {protocol!r}")
    sys_info, _ = _unpickle(f, filename)
    little_endian = True
    if isinstance(sys_info, dict):
        little_endian = bool(sys_info.get("little_endian", True))
    obj, storages = _unpickle(f, filename, cls)
    keys, _ = _unpickle(f, filename)
    if not isinstance(keys, list):
        raise ValueError(f"'{filename}': storage key list is missing")
    count_fmt = "<q" if little_endian else ">q"
    buffer = f.getbuffer()
    arrays = {}
    for key in keys:
        key = str(key)
        ref = storages.get(key)
        if ref is None:
            raise ValueError(
                f"'{filename}': storage '{key}' is not used by any tensor")
        header = f.read(8)
        if len(header) != 8:
            raise ValueError(
                f"'{filename}' is truncated: missing the size of storage "
                f"'{key}'")
        (numel,) = struct.unpack(count_fmt, header)
        if numel != ref.numel:
            raise ValueError(
                f"'{filename}' is corrupt: storage '{key}' has {numel} "
                f"elements, the pickle says {ref.numel}")
        dtype = _storage_dtype(ref, little_endian)
        nbytes = numel * dtype.itemsize
        start = f.tell()
        remain = len(buffer) - start
        if nbytes > remain:
            raise ValueError(
                f"'{filename}' is truncated: storage '{key}' declares {numel} "
                f"elements = {nbytes} bytes, {remain} remain")
        arrays[key] = np.frombuffer(buffer, dtype=dtype, count=numel,
                                    offset=start)
        f.seek(start + nbytes)
    missing = set(storages) - set(arrays)
    if missing:
        raise ValueError(
            f"'{filename}' is corrupt: storages {sorted(missing)} have no "
            "data")
    return obj, arrays


def _load_zip(path, filename, cls=None):
    """Read the zip-based torch.save format (PyTorch >= 1.6)."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pkl = [n for n in names if n.endswith("data.pkl")
               and n.count("/") == 1]
        if len(pkl) != 1:
            raise ValueError(
                f"'{filename}' is a zip file but not a PyTorch archive "
                "(no '<archive>/data.pkl')")
        prefix = pkl[0][:-len("data.pkl")]
        little_endian = True
        if prefix + "byteorder" in names:
            little_endian = archive.read(prefix + "byteorder") != b"big"
        obj, storages = _unpickle(io.BytesIO(archive.read(pkl[0])), filename, cls)
        arrays = {}
        for key, ref in storages.items():
            member = f"{prefix}data/{key}"
            if member not in names:
                raise ValueError(
                    f"'{filename}' is corrupt: missing '{member}'")
            dtype = _storage_dtype(ref, little_endian)
            info = archive.getinfo(member)
            needed = ref.numel * dtype.itemsize
            if needed > info.file_size:
                raise ValueError(
                    f"'{filename}' is truncated: '{member}' holds "
                    f"{info.file_size} bytes, needs {needed}")
            if (info.compress_type != zipfile.ZIP_STORED and info.file_size
                    > _MAX_COMPRESSION_RATIO * info.compress_size + 4096):
                raise ValueError(
                    f"'{filename}': '{member}' is compressed: "
                    f"{info.compress_size} bytes declaring {info.file_size}, "
                    f"more than {_MAX_COMPRESSION_RATIO} x; refused "
                    "(torch.save stores storages uncompressed)")
            data = archive.read(member)
            if len(data) < ref.numel * dtype.itemsize:
                raise ValueError(
                    f"'{filename}' is truncated: '{member}' holds "
                    f"{len(data)} bytes, needs {ref.numel * dtype.itemsize}")
            arrays[key] = np.frombuffer(
                data, dtype=dtype, count=ref.numel)
    return obj, arrays


def load_torch_state_dict(path):
    """Load a PyTorch ``.pth`` state dict as NumPy arrays, without torch.

    The file is unpickled by a restricted unpickler that resolves only
    ``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``,
    ``torch._utils._rebuild_parameter[_with_state]`` and the
    ``torch.<Type>Storage`` names, each mapped to a NumPy stand-in; no code
    named by the file is ever run. Tensors are copied out of their storages
    honouring ``storage_offset`` and ``stride``, so the arrays are
    C-contiguous and own their memory.

    Args:
        path: str or os.PathLike. A file written by ``torch.save`` in the
            legacy format (PyTorch < 1.6, or
            ``_use_new_zipfile_serialization=False``) or the zip format.

    Returns:
        ``collections.OrderedDict[str, np.ndarray]``: parameter and buffer
        names to arrays with the tensors' shapes, in file order. dtypes
        follow the storages (``FloatStorage`` -> float32, ``LongStorage`` ->
        int64, ...; ``BFloat16Storage`` is widened to float32). Nested
        containers (e.g. ``{"state_dict": ...}``) are returned with tensors
        replaced by arrays.

    Raises:
        UnsafePickleError: the pickle names any other global (e.g.
            ``os.system``, ``builtins.eval``, an ``nn.Module`` class); the
            message names ``module.name`` and the file. Also when its calls
            would allocate more than the pickle's budget, or it sets the
            state of anything but a dict.
        ValueError: the file is truncated or corrupt (a storage declaring
            more bytes than are present: ``"'<path>' is truncated: storage
            '0' declares 67108864 elements = 268435456 bytes, 16 remain"``),
            is not a PyTorch file, does not hold a mapping at the top level,
            has a compressed storage expanding more than 16x, or its
            tensors would take more than 4 x the file size + 16 MiB; the
            message names the file.
        FileNotFoundError: ``path`` does not exist.
    """
    path = os.fspath(path)
    try:
        if zipfile.is_zipfile(path):
            obj, arrays = _load_zip(path, path)
        else:
            with open(path, "rb") as f:
                obj, arrays = _load_legacy(io.BytesIO(f.read()), path)
        if not isinstance(obj, dict):
            raise ValueError(
                f"'{path}' holds a {type(obj).__name__}, not a state dict")
        budget = _OutputBudget(os.path.getsize(path), path)
        return _materialise(collections.OrderedDict(obj), arrays, path, budget)
    except (UnsafePickleError, ValueError):
        raise
    except (EOFError, pickle.UnpicklingError, struct.error,
            zipfile.BadZipFile, TypeError, AttributeError, IndexError,
            KeyError, OverflowError, UnicodeDecodeError) as e:
        raise ValueError(
            f"'{path}' is truncated or corrupt, or not a PyTorch state dict "
            f"file: {type(e).__name__}: {e}") from e


# --------------------------------------------------------------------------
# Training checkpoints ({'state_dict': ..., 'epoch': ..., 'optimizer': ...}).
# --------------------------------------------------------------------------

#: Globals of a training checkpoint's optimizer / LR-scheduler state that
#: :func:`load_torch_checkpoint` tolerates as inert placeholders (never
#: imported or called): exact ``(module, name)`` pairs, and every name in a
#: module under the ``torch.optim.`` / ``torchreid.optim.`` prefixes
#: (deep-object-reid's ``SAM``, ``OneCycleLR``, PyTorch's ``SGD``, ``Adam``,
#: ``AdamW``, ``lr_scheduler.*``).
TRAINING_STATE_GLOBALS = frozenset({
    ("builtins", "getattr"),          # a bound method (OneCycleLR.anneal_func in PyTorch <= 2.1)
    ("builtins", "dict"),             # defaultdict(dict): Optimizer.state
    ("collections", "defaultdict"),
    ("__builtin__", "getattr"),       # protocol-2 pickles written by Python 2
})
TRAINING_STATE_MODULE_PREFIXES = ("torch.optim.", "torchreid.optim.")

#: numpy scalar dtypes a checkpoint may hold (bool, ints, floats, complex).
_SCALAR_KINDS = "biufc"


class _Inert:
    """Placeholder for a tolerated training-state global or anything built from one.

    Calling it, ``NEWOBJ`` with it as the class or ``BUILD`` on it gives
    another placeholder (the state is dropped); nothing is imported or run.
    """

    __slots__ = ("what",)

    def __init__(self, what):
        self.what = what

    def __call__(self, *args, **kwargs):
        return _Inert(f"{self.what}(...)")

    def __repr__(self):
        return f"<not loaded: {self.what}>"


class _NumpyDType:
    """Stand-in for ``numpy.dtype(spec, align, copy)``: a plain numeric dtype only."""

    def __init__(self, spec, *unused):
        if not isinstance(spec, str):
            raise pickle.UnpicklingError(f"numpy.dtype({spec!r}): only a dtype string is allowed")
        try:
            dtype = np.dtype(spec)
        except TypeError as e:
            raise pickle.UnpicklingError(f"numpy.dtype({spec!r}): {e}") from None
        if dtype.kind not in _SCALAR_KINDS or dtype.fields is not None or dtype.itemsize > 16:
            raise pickle.UnpicklingError(f"numpy.dtype({spec!r}): only bool / int / float / complex scalars "
                                         "are allowed")
        self.dtype = dtype

    def setstate(self, state):
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags)
        if not (isinstance(state, tuple) and len(state) >= 2 and state[1] in ("<", ">", "=", "|")):
            raise pickle.UnpicklingError(f"numpy.dtype state {state!r} is not a plain dtype's")
        if len(state) > 4 and any(v is not None for v in state[2:5]):
            raise pickle.UnpicklingError("numpy.dtype with sub-arrays or fields is not allowed")
        if state[1] in "<>":
            self.dtype = self.dtype.newbyteorder(state[1])


def _numpy_scalar(dtype, data=None):
    """Stand-in for ``numpy.core.multiarray.scalar(dtype, bytes)``: the NumPy scalar, decoded."""
    if not isinstance(dtype, _NumpyDType) or not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError("numpy scalar: expected (numpy.dtype, bytes)")
    if len(data) != dtype.dtype.itemsize:
        raise pickle.UnpicklingError(f"numpy scalar of {dtype.dtype}: {len(data)} bytes")
    return np.frombuffer(bytes(data), dtype=dtype.dtype, count=1)[0]


def _codecs_encode(text, encoding="utf-8", *unused):
    """Stand-in for ``_codecs.encode(str, 'latin1')``: protocol 2's way of pickling bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode: only (str, 'latin1') is allowed")
    return text.encode("latin1")


_CHECKPOINT_FUNCTIONS = {
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _NumpyDType,
    ("_codecs", "encode"): _codecs_encode,
}


def _is_training_state_global(module, name):
    return ((module, name) in TRAINING_STATE_GLOBALS
            or any(module.startswith(p) for p in TRAINING_STATE_MODULE_PREFIXES))


class _CheckpointUnpickler(_RestrictedUnpickler):
    """:class:`_RestrictedUnpickler` + NumPy scalars + inert training-state globals (see the module doc)."""

    dispatch = dict(_RestrictedUnpickler.dispatch)

    def find_class(self, module, name):
        if (module, name) in _CHECKPOINT_FUNCTIONS:
            return functools.partial(self._charged_call, _CHECKPOINT_FUNCTIONS[(module, name)],
                                     f"{module}.{name}")
        if _is_training_state_global(module, name):
            self._charge(64, f"{module}.{name}")
            return _Inert(f"{module}.{name}")
        try:
            return super().find_class(module, name)
        except UnsafePickleError:
            raise UnsafePickleError(
                f"refusing to load global '{module}.{name}' from '{self.filename}': a checkpoint may hold "
                "tensors, NumPy scalars and optimizer / scheduler state (torch.optim.*, torchreid.optim.*, "
                "builtins.getattr/dict, collections.defaultdict, never called) only") from None

    def load_newobj(self):
        self.stack.pop()  # the arguments of a placeholder class are dropped
        cls = self.stack.pop()
        if not isinstance(cls, _Inert):
            raise UnsafePickleError(f"refusing '{self.filename}': NEWOBJ on {type(cls).__name__}")
        self._charge(64, "NEWOBJ")
        self.append(cls())

    def load_newobj_ex(self):
        self.stack.pop()
        self.load_newobj()

    def load_build(self):
        inst = self.stack[-2] if len(self.stack) >= 2 else None     # stack: [..., inst, state]
        if isinstance(inst, _Inert):
            self.stack.pop()            # the state of a placeholder is dropped
            self._charge(64, "BUILD")
            return
        if isinstance(inst, _NumpyDType):
            inst.setstate(self.stack.pop())
            return
        super().load_build()

    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.BUILD[0]] = load_build


def _contains_inert(obj, depth=0):
    if isinstance(obj, _Inert):
        return True
    if depth > 64:
        return True         # too deep for training metadata: treated as not loadable
    if isinstance(obj, dict):
        return any(_contains_inert(k, depth + 1) or _contains_inert(v, depth + 1) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return any(_contains_inert(v, depth + 1) for v in obj)
    return False


def _plain(obj, depth=0):
    """``obj`` if it is small plain metadata (numbers, str, lists / dicts of them, no tensors), else None."""
    if isinstance(obj, (bool, int, float, str, type(None), np.generic)):
        return obj.item() if isinstance(obj, np.generic) else obj
    if depth > 4 or not isinstance(obj, (list, tuple, dict)) or len(obj) > 100000:
        return None
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            pk, pv = _plain(k, depth + 1), _plain(v, depth + 1)
            if pk is None or (pv is None and v is not None) or isinstance(pk, (list, dict)):
                return None
            out[pk] = pv
        return out
    out = [_plain(v, depth + 1) for v in obj]
    return None if any(o is None and v is not None for o, v in zip(out, obj)) else out


def load_torch_checkpoint(path):
    """Read a PyTorch training checkpoint (or a bare state dict) as NumPy, without torch.

    Accepts what ``torch.save`` writes for deep-object-reid's
    ``torchreid/engine/engine.py::save_model`` (``{'state_dict':
    model.state_dict(), 'epoch': int, 'optimizer': ..., 'scheduler': ...,
    'num_classes': int, 'classes_map': {name: index}, 'initial_lr':
    float}``, ``.pth.tar``) and ``torchreid/utils/torchtools.py::
    save_checkpoint``, in the legacy or the zip format, or a bare state dict.
    The unpickler is :func:`load_torch_state_dict`'s, extended by NumPy
    scalars and the inert :data:`TRAINING_STATE_GLOBALS` (see the module
    doc); the optimizer / scheduler entries are never materialised.

    Args:
        path: str or os.PathLike.

    Returns:
        ``(state_dict, metadata, skipped)``: ``state_dict`` an
        ``OrderedDict[str, np.ndarray]`` (the ``'state_dict'`` entry, or the
        whole file when it is a bare state dict; keys as stored, e.g. with a
        ``module.`` prefix); ``metadata`` a dict of the other top-level
        entries that are plain values (``epoch``, ``num_classes``,
        ``classes_map``, ``initial_lr``, as Python / NumPy scalars, str,
        lists and dicts); ``skipped`` the sorted names of the top-level
        entries that are training state (``optimizer``, ``scheduler``, ...).

    Raises:
        UnsafePickleError: a global outside the allowed and tolerated sets
            (``os.system``, ``builtins.eval``, an ``nn.Module`` class, ...),
            named with the file; also a tolerated placeholder inside the
            state dict, or a pickle past its allocation budget.
        ValueError: as :func:`load_torch_state_dict` (truncated, corrupt,
            not a mapping, too large), or a state-dict value that is not a
            tensor (named).
        FileNotFoundError: ``path`` does not exist.
    """
    path = os.fspath(path)
    try:
        if zipfile.is_zipfile(path):
            obj, arrays = _load_zip(path, path, _CheckpointUnpickler)
        else:
            with open(path, "rb") as f:
                obj, arrays = _load_legacy(io.BytesIO(f.read()), path, _CheckpointUnpickler)
        if not isinstance(obj, dict):
            raise ValueError(f"'{path}' holds a {type(obj).__name__}, not a checkpoint dict or a state dict")
        budget = _OutputBudget(os.path.getsize(path), path)
        if "state_dict" in obj:
            sd, rest = obj["state_dict"], {k: v for k, v in obj.items() if k != "state_dict"}
            if not isinstance(sd, dict):
                raise ValueError(f"'{path}': 'state_dict' holds a {type(sd).__name__}, not a state dict")
        else:
            sd, rest = obj, {}
        bad = [str(k) for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, _LazyTensor)]
        if bad:
            what = {str(k): v for k, v in sd.items()}
            first = bad[0]
            kind = repr(what[first]) if isinstance(what[first], _Inert) else type(what[first]).__name__
            err = UnsafePickleError if any(isinstance(what[b], _Inert) for b in bad) else ValueError
            raise err(f"'{path}': state dict entries that are not tensors: {', '.join(bad[:10])}"
                      f"{' ...' if len(bad) > 10 else ''} (first: {kind})")
        state_dict = _materialise(collections.OrderedDict(sd), arrays, path, budget)
        metadata, skipped = {}, []
        for k, v in rest.items():
            plain = None if _contains_inert(v) else _plain(v)
            if plain is None and v is not None:
                skipped.append(str(k))
            else:
                metadata[str(k)] = plain
        return state_dict, metadata, sorted(skipped)
    except (UnsafePickleError, ValueError):
        raise
    except (EOFError, pickle.UnpicklingError, struct.error,
            zipfile.BadZipFile, TypeError, AttributeError, IndexError,
            KeyError, OverflowError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(
            f"'{path}' is truncated or corrupt, or not a PyTorch checkpoint "
            f"file: {type(e).__name__}: {e}") from e
