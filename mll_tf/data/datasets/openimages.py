"""Open Images 2018_04 (v4) in LESA's zero-shot protocol: 7186 seen, 2594 unseen (400 evaluated).

Layout under ``root`` (hbdat/cvpr20_LESA ``extract_data/extract_images_VGG_feature_2_TFRecord.py``,
``extract_test_seen_unseen_images_VGG_feature_2_TFRecord.py``, ``data/OpenImages/2018_04/``;
docs/labels_and_data.md §3, docs/lesa.md §5)::

    2018_04/classes-trainable.txt     7186 seen MIDs, one per line (column order of the seen labels)
    2018_04/unseen_labels.pkl         pickled numpy object array of the 2594 unseen MIDs
      (or unseen_labels.txt)          (or one MID per line)
    2018_04/top_400_unseen.csv        400 indices into the unseen list (UTF-8 BOM, one per line)
    2018_04/class-descriptions.csv    MID,display name (no header; names may be quoted)
    2018_04/{train,validation,test}-annotations-human-imagelabels.csv
                                      ImageID,Source,LabelName,Confidence (human-verified)
    image_data/{train,validation,test}/<ImageID>.jpg   (the reference's ./image_data/<set>/)

``meta_dir`` and ``image_dir`` (a template with ``{split}`` = ``train``,
``validation`` or ``test``) are options, relative to ``root`` or absolute.

Labels (int8, docs/labels_and_data.md §1): Confidence 1 -> 1, 0 -> 0, not annotated
-> -1; columns ``[2594 unseen (pickle order), 7186 seen (classes-trainable
order)]`` (unseen first, docs/metrics.md §5). The CSVs are read by the reader
shared by all OpenImages adapters
(:func:`mll_tf.data.datasets._oi_common.read_human_image_labels`), with its
one rule for repeated rows: an (image, MID) pair given by several rows gets
one label, and when the rows disagree **a positive wins** (1 if any row says
the image contains the class), whatever the row order or chunking (the
reference's ``get_label`` assigns rows in file order, so there the later row
wins). Repeated rows are counted (``extra["duplicate_rows"]``), disagreeing
pairs too (``extra["conflicting_pairs"]``). A row whose MID is in neither list
is ignored and counted (``extra["unknown_mid_rows"]``).

What the reference does, and what this adapter does:

* train / validation: the reference stores only the 7186 seen columns
  (unseen annotations are dropped). Here unseen columns are -1 unless
  annotated; with ``drop_unseen_train_val=True`` they are all -1, exactly as
  the reference. Zero-shot training must use only the seen columns.
* train: the reference skips, batch by batch, images without a positive
  seen label (``mask = sum(labels > 0) > 0``, hbdat/cvpr20_LESA issue #2);
  here such images are left out of ``train`` (counted in
  ``extra["train_images_without_positive_seen"]``, not listed as skipped).
* images: the reference keeps the images of the CSV whose file exists, in
  order of first appearance in the CSV; a missing file is listed here in
  ``skipped`` with reason ``"missing file"``.
* test: seen and unseen columns (reference ``seen_label``/``unseen_label``);
  ``extra["label_split"]["unseen_eval"]`` holds the 400 evaluated unseen
  MIDs in ``top_400_unseen.csv`` order (the reference gathers them in that
  order for ZSL/GZSL evaluation, docs/lesa.md §5).

Memory (the real train CSV has ≈ 28M rows for ≈ 5.5M images): the CSVs are
streamed with pandas in chunks of ``chunk_rows`` rows (≈ 1 s per 1M rows); annotations are kept
sparse (:class:`~mll_tf.data.datasets._oi_common.ImageLabelTable`, CSR: int16
column + int8 value per annotation ≈ 85 MB for 28M, plus ≈ 1 GB of indices and
sort keys while building), a dict ImageID -> index (≈ 0.7 GB for 5.5M ids)
exists while a CSV is parsed. ImageIDs are then kept as one ``S16`` array
(≈ 90 MB) and each record
(:class:`~mll_tf.data.datasets._oi_common.SparseLabelRecord`, ≈ 140 B,
≈ 0.75 GB for the 5.5M train images) builds its dense int8 ``[9780]`` label
row only when ``record.labels`` is read, so no dense ``[5.5M, 9780]`` matrix
(≈ 54 GB) is ever held. The image files are checked against one listing of
each image folder (≈ 0.5 GB of names for 5.5M files, while checking; a
missing folder: every image of the split is missing).
"""

import builtins
import codecs
import collections
import csv
import functools
import importlib
import io
import os
import pickle

import numpy as np

from mll_tf.data.adapter import PreparedDataset
from mll_tf.data.images import decode_image
from mll_tf.data.safe_pickle import BudgetedUnpickler
from mll_tf.data.datasets._oi_common import (build_split_records, read_class_descriptions, utf8_text,
                                             read_human_image_labels)
from mll_tf.data.datasets._registry import register_dataset

DEFAULT_ROOT = "data/OpenImages"

#: our split name -> the Open Images / reference set name
SPLIT_FILES = {"train": "train", "val": "validation", "test": "test"}

PREPROCESSING = (
    "PIL decode to RGB; shorter side resized to resize_shorter (default size; LESA VGG19: 256 "
    "for 224), bilinear, aspect kept; central size x size crop; uint8 "
    "(mll_tf.data.images.load_rgb_center_crop)")


# --------------------------------------------------------------------------- label lists

def _safe_codecs_encode(obj, encoding="utf-8", errors="strict"):
    """``_codecs.encode`` limited to str -> latin-1 bytes (how numpy pickles raw bytes)."""
    if not isinstance(obj, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("refused: _codecs.encode other than str -> latin1 bytes")
    return codecs.encode(obj, "latin1", errors)


def _numpy_private(module, name):
    """``numpy._core.<module>.<name>`` (NumPy 2) or ``numpy.core.<module>.<name>`` (NumPy 1)."""
    for mod in (f"numpy._core.{module}", f"numpy.core.{module}"):
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"numpy {module}.{name} not found")


class _BoundedArray(np.ndarray):
    """The ndarray type :class:`RestrictedUnpickler` builds (never constructed directly).

    ``numpy.ndarray`` in a pickle resolves to this subclass: it is only a
    valid argument of numpy's ``_reconstruct``; calling it (``ndarray(shape)``
    would allocate ``shape`` uninitialised) is refused.
    """

    def __new__(cls, *args, **kwargs):
        raise pickle.UnpicklingError("refused: numpy.ndarray(...) called directly (numpy's own "
                                     "pickles rebuild arrays with _reconstruct)")


_SIMPLE_KINDS = frozenset("biufcSUO?")
_TEXT = (str, bytes, bytearray)
_NUMBER = (int, float, bool)


def _prod(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def _check_shape(shape):
    if (not isinstance(shape, tuple)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise pickle.UnpicklingError(f"refused: numpy shape {shape!r} is not a tuple of ints >= 0")
    return _prod(shape)


def _check_dtype(dtype):
    if not isinstance(dtype, np.dtype):
        raise pickle.UnpicklingError(f"refused: numpy dtype expected, got {type(dtype).__name__}")
    if dtype.kind not in _SIMPLE_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise pickle.UnpicklingError(f"refused: numpy dtype {dtype} (only plain bool, number, "
                                     "string and object dtypes)")
    return dtype


class RestrictedUnpickler(BudgetedUnpickler):
    """Unpickler that only rebuilds builtin containers, strings and numpy arrays, within a memory budget.

    Allowed globals: ``numpy.ndarray``, ``numpy.dtype``,
    ``numpy(.core|._core).multiarray._reconstruct``,
    ``numpy(.core|._core).numeric._frombuffer`` (protocol 5),
    ``_codecs.encode`` (str -> latin-1 bytes only) and the builtins ``list``,
    ``tuple``, ``dict``, ``set``, ``frozenset``, ``str``, ``bytes``, ``int``,
    ``float``, ``bool``, each replaced by a checked stand-in. Anything else
    raises :class:`pickle.UnpicklingError` naming the global, so a crafted
    file cannot run code. Used for LESA's ``unseen_labels.pkl`` (a numpy
    object array of str, pickle protocol 2).

    Bounded: a crafted file cannot allocate much more than it holds.

    * It is Python's pure-Python unpickler (``pickle._Unpickler``), whose
      memo is a dict: the C unpickler grows its memo table to the largest
      index a ``LONG_BINPUT`` names (a 9-byte file can make it allocate
      GiBs). The file is read into memory first, so a declared length
      (``BINBYTES8``, ``BYTEARRAY8``, ...) never reserves more than the bytes
      present.
    * ``bytes(n)`` with an integer (or integer-like, e.g. a 0-d array) ``n``
      is refused; ``str``/``int``/``float`` take only strings and numbers.
    * numpy's ``_reconstruct`` only makes the empty placeholder numpy writes
      (shape ``(0,)``); ``__setstate__`` (the ``BUILD`` opcode) is allowed
      only on those arrays and on dtypes made here, and an array state must
      hold exactly the data its shape declares (``len(list) == size`` for
      object arrays, ``len(bytes) == size * itemsize`` otherwise; numpy
      itself crashes the interpreter on a short object list) with a plain
      dtype (no fields or sub-arrays).
    * Every call of an allowed callable is charged the memory it may
      allocate (64 bytes per item of a container argument, the length of a
      string, 8 bytes per object-array element, ...); in all, the calls may
      allocate at most ``ALLOCATION_FACTOR`` (8) times the file size plus
      ``ALLOCATION_SLACK`` (1 MiB), so repeating a copying call over one
      large object cannot multiply the file's size.

    A refusal raises :class:`pickle.UnpicklingError` (``"refused: ..."``).
    A top-level array is returned as a plain ``numpy.ndarray``.

    Args:
        file: binary file object (read to its end at construction).
        fix_imports, encoding, errors: as :class:`pickle.Unpickler`
            (``encoding="latin1"`` for Python 2 numpy pickles).
    """

    dispatch = dict(BudgetedUnpickler.dispatch)

    def __init__(self, file, *, fix_imports=True, encoding="ASCII", errors="strict"):
        data = file.read()
        super().__init__(io.BytesIO(data), len(data), "refused", fix_imports=fix_imports, encoding=encoding,
                         errors=errors)
        self._own = {}   # id -> object: arrays and dtypes made here (BUILD is allowed on them)

    # -- budget (mll_tf.data.safe_pickle) ------------------------------------------

    def _charge_items(self, name, args):
        n = 0
        for a in args:
            if isinstance(a, _NUMBER) or a is None:
                continue
            try:
                n += len(a)
            except TypeError:
                raise pickle.UnpicklingError(
                    f"refused: builtins.{name} of a {type(a).__name__} (no length)") from None
        self._charge(64 + 64 * n, f"builtins.{name}({n} items)")

    # -- the allowed callables --------------------------------------------------

    def _container(self, name, *args):
        if len(args) > 1:
            raise pickle.UnpicklingError(f"refused: builtins.{name} with {len(args)} arguments")
        self._charge_items(name, args)
        return getattr(builtins, name)(*args)

    def _text_or_number(self, name, *args):
        if not all(isinstance(a, _TEXT + _NUMBER) for a in args):
            kinds = ", ".join(type(a).__name__ for a in args)
            raise pickle.UnpicklingError(f"refused: builtins.{name}({kinds}): only strings and "
                                         "numbers")
        self._charge(64 + sum(4 * len(a) for a in args if isinstance(a, _TEXT)),
                     f"builtins.{name}")
        return getattr(builtins, name)(*args)

    def _bytes(self, *args):
        if args and not isinstance(args[0], _TEXT + (list, tuple)):
            x = args[0]
            if isinstance(x, int) or hasattr(type(x), "__index__"):
                raise pickle.UnpicklingError(
                    f"refused: builtins.bytes({type(x).__name__} {int(x)}): an integer argument "
                    "allocates that many zero bytes")
            raise pickle.UnpicklingError(f"refused: builtins.bytes of a {type(x).__name__}")
        if not all(isinstance(a, str) for a in args[1:]):
            raise pickle.UnpicklingError("refused: builtins.bytes with non-str encoding/errors")
        self._charge(64 + (4 * len(args[0]) if args else 0), "builtins.bytes")
        return bytes(*args)

    def _encode(self, obj, encoding="utf-8", errors="strict"):
        self._charge(64 + (len(obj) if isinstance(obj, str) else 0), "_codecs.encode")
        return _safe_codecs_encode(obj, encoding, errors)

    def _dtype(self, obj, align=False, copy=True):
        self._charge(256, "numpy.dtype")
        dtype = _check_dtype(np.dtype(obj, bool(align), True))   # a copy, never a shared builtin
        self._own[id(dtype)] = dtype
        return dtype

    def _reconstruct(self, subtype, shape, dtype):
        if subtype is not _BoundedArray:
            raise pickle.UnpicklingError("refused: numpy _reconstruct of a type other than "
                                         "numpy.ndarray")
        if _check_shape(shape) != 0:
            raise pickle.UnpicklingError(f"refused: numpy _reconstruct with shape {shape} (numpy "
                                         "writes the empty placeholder (0,))")
        self._charge(256, "numpy _reconstruct")
        arr = _numpy_private("multiarray", "_reconstruct")(_BoundedArray, shape, dtype)
        self._own[id(arr)] = arr
        return arr

    def _frombuffer(self, buf, dtype, shape, order):
        dtype = _check_dtype(np.dtype(dtype))
        if dtype.hasobject:
            raise pickle.UnpicklingError("refused: numpy _frombuffer with an object dtype")
        if not isinstance(buf, (bytes, bytearray, memoryview, pickle.PickleBuffer)):
            raise pickle.UnpicklingError(f"refused: numpy _frombuffer of a {type(buf).__name__}")
        self._charge(256, "numpy _frombuffer")
        n = _check_shape(shape)
        if n * dtype.itemsize != memoryview(buf).nbytes:
            raise pickle.UnpicklingError(f"refused: numpy buffer of {memoryview(buf).nbytes} bytes "
                                         f"for shape {shape} of {dtype}")
        arr = _numpy_private("numeric", "_frombuffer")(buf, dtype, shape, order)
        return arr.view(_BoundedArray)

    def find_class(self, module, name):
        if module in ("builtins", "__builtin__"):
            if name in ("list", "tuple", "dict", "set", "frozenset"):
                return functools.partial(self._container, name)
            if name in ("str", "int", "float", "bool"):
                return functools.partial(self._text_or_number, name)
            if name == "bytes":
                return functools.partial(self._bytes)
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return functools.partial(self._reconstruct)
        if module in ("numpy.core.numeric", "numpy._core.numeric") and name == "_frombuffer":
            return functools.partial(self._frombuffer)
        if module == "numpy" and name == "ndarray":
            return _BoundedArray
        if module == "numpy" and name == "dtype":
            return functools.partial(self._dtype)
        if module == "_codecs" and name == "encode":
            return functools.partial(self._encode)
        raise pickle.UnpicklingError(f"refused global {module}.{name}: only builtin containers, "
                                     "str and numpy arrays may be unpickled")

    # -- opcodes ----------------------------------------------------------------

    def _check_array_state(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("refused: malformed numpy array state")
        shape, dtype, _fortran, raw = state[-4:]
        n = _check_shape(shape)
        _check_dtype(dtype)
        if dtype.hasobject:
            if not isinstance(raw, list) or len(raw) != n:
                got = f"{len(raw)} items" if isinstance(raw, list) else type(raw).__name__
                raise pickle.UnpicklingError(f"refused: a numpy object array state declares shape "
                                             f"{shape} ({n} items) but holds {got}")
            self._charge(64 + 8 * n, "a numpy object array")
        else:
            if not isinstance(raw, bytes) or len(raw) != n * dtype.itemsize:
                got = f"{len(raw)} bytes" if isinstance(raw, bytes) else type(raw).__name__
                raise pickle.UnpicklingError(f"refused: a numpy array state declares shape {shape} "
                                             f"of {dtype} ({n * dtype.itemsize} bytes) but holds "
                                             f"{got}")
            self._charge(64 + len(raw), "a numpy array")

    @staticmethod
    def _check_dtype_state(state):
        ok = (isinstance(state, tuple) and len(state) in (8, 9) and state[2] is None
              and state[3] is None and state[4] is None and isinstance(state[5], int)
              and -1 <= state[5] <= 2 ** 31 and (len(state) == 8 or state[8] is None))
        if not ok:
            raise pickle.UnpicklingError("refused: numpy dtype state other than a plain dtype's")

    def load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if self._own.get(id(inst)) is not inst:
            raise pickle.UnpicklingError(f"refused: BUILD (__setstate__) on a "
                                         f"{type(inst).__name__}")
        if isinstance(inst, np.dtype):
            self._check_dtype_state(state)
        else:
            self._check_array_state(state)
        inst.__setstate__(state)
        if isinstance(inst, np.dtype):
            _check_dtype(inst)

    dispatch[pickle.BUILD[0]] = load_build

    def load(self):
        obj = super().load()
        if isinstance(obj, _BoundedArray):
            obj = obj.view(np.ndarray)
        return obj


def load_mid_list_pickle(path):
    """Read a pickled list/array of MIDs with :class:`RestrictedUnpickler`.

    Returns:
        list of str.

    Raises:
        ValueError: naming ``path`` if the pickle is refused (a global other
            than the allowed ones, or more memory than the budget of
            :class:`RestrictedUnpickler`), unreadable or not a flat sequence
            of str: ``"<path>: cannot load the unseen label list: refused:
            builtins.bytes(int 268435456): an integer argument allocates that
            many zero bytes"``.
    """
    with open(path, "rb") as f:
        try:
            obj = RestrictedUnpickler(f, encoding="latin1").load()
        except Exception as e:  # noqa: BLE001 - any failure is reported with the file name
            raise ValueError(f"{path}: cannot load the unseen label list: {e}") from e
    if isinstance(obj, np.ndarray):
        obj = obj.tolist()
    if not isinstance(obj, (list, tuple)) or not all(isinstance(m, str) for m in obj):
        raise ValueError(f"{path}: expected a list/array of MID strings, got {type(obj).__name__}")
    return [m.strip() for m in obj]


def _read_list(path):
    with utf8_text(path), open(path, encoding="utf-8-sig") as f:
        return [s for s in (line.strip() for line in f) if s]


def _check_unique(names, path):
    dup = [n for n, c in collections.Counter(names).items() if c > 1]
    if dup:
        raise ValueError(f"{path}: duplicated MIDs {dup[:10]}")


def read_top_unseen(path, num_unseen):
    """Indices of the evaluated unseen labels (``top_400_unseen.csv``, BOM-safe).

    Returns:
        list of int in ``[0, num_unseen)``, file order.

    Raises:
        ValueError: naming the file and line for a non-integer, out-of-range
            or repeated index.
    """
    out = []
    with utf8_text(path), open(path, encoding="utf-8-sig", newline="") as f:
        for line_no, row in enumerate(csv.reader(f), 1):
            if not row or not row[0].strip():
                continue
            try:
                i = int(row[0].strip())
            except ValueError:
                raise ValueError(f"{path}: line {line_no}: {row[0]!r} is not an integer "
                                 "index") from None
            if not 0 <= i < num_unseen:
                raise ValueError(f"{path}: line {line_no}: index {i} outside [0, {num_unseen})")
            if i in out:
                raise ValueError(f"{path}: line {line_no}: index {i} repeated")
            out.append(i)
    return out


# --------------------------------------------------------------------------- adapter

@register_dataset("openimages")
class OpenImages:
    """Adapter for Open Images 2018_04, LESA's protocol (docs/lesa.md §5 and §6).

    Args:
        root: str, dataset folder (module doc); default ``data/OpenImages``.
        meta_dir: str, folder of the label lists and CSVs, relative to
            ``root`` or absolute (default ``2018_04``).
        image_dir: str template with ``{split}`` (``train``, ``validation``,
            ``test``), relative to ``root`` or absolute (default
            ``image_data/{split}``, the reference layout).
        splits: iterable of ``"train"``, ``"val"``, ``"test"`` to read
            (default all three); each needs its annotation CSV.
        annotations: str template with ``{split}``, the CSV file name in
            ``meta_dir`` (default ``{split}-annotations-human-imagelabels.csv``).
        unseen_file: str or None, unseen MID list in ``meta_dir``; None:
            ``unseen_labels.pkl`` if present, else ``unseen_labels.txt``.
        top_unseen_file: str or None, evaluated-unseen index file in
            ``meta_dir`` (default ``top_400_unseen.csv``); None: evaluate
            all unseen labels.
        drop_unseen_train_val: bool, set unseen columns of train/val to -1
            (the reference keeps no unseen labels there).
        chunk_rows: int, CSV rows parsed at once.

    ``prepare()`` returns a :class:`PreparedDataset` with ``2594 + 7186``
    labels named by MID (unseen first), splits ``train``/``val``/``test``
    (:class:`~mll_tf.data.datasets._oi_common.SparseLabelRecord` with int8
    labels in {1, 0, -1}; a positive wins over a conflicting 0, module doc),
    ``image_id`` = image path relative to ``root``, and ``extra`` keys ``label_split``
    (``unseen``/``seen``/``unseen_eval`` MIDs), ``label_text`` (display names,
    the MID where none is known), ``eval_k`` ``[10, 20]``, ``protocol``
    ``"lesa_openimages"``, ``root`` (absolute), ``label_counts_by_split``
    (positives per MID), ``unknown_mid_rows`` (split -> ignored rows),
    ``unknown_mid_examples``, ``duplicate_rows`` (split -> repeated
    (image, MID) rows), ``conflicting_pairs`` (split -> pairs given both 1
    and 0), ``conflict`` (``"positive"``), ``train_images_without_positive_seen``,
    ``labels_without_description`` (count) and its ``_examples``.

    Raises (from ``prepare``):
        FileNotFoundError: a label list, ``class-descriptions.csv`` or a
            requested split's CSV is missing (named).
        ValueError: naming the file (and row): a MID both seen and unseen, a
            duplicated MID, a refused or malformed pickle, a bad top-unseen
            index, a malformed ``class-descriptions.csv`` line, a CSV without
            the ImageID/LabelName/Confidence columns, or an empty ImageID or
            LabelName or a Confidence other than 0/1.
    """

    name = "openimages"

    def __init__(self, root=DEFAULT_ROOT, meta_dir="2018_04", image_dir="image_data/{split}",
                 splits=("train", "val", "test"),
                 annotations="{split}-annotations-human-imagelabels.csv", unseen_file=None,
                 top_unseen_file="top_400_unseen.csv", drop_unseen_train_val=False,
                 chunk_rows=1_000_000):
        self.root = root
        self.meta_dir = meta_dir
        self.image_dir = image_dir
        self.splits = tuple(splits)
        self.annotations = annotations
        self.unseen_file = unseen_file
        self.top_unseen_file = top_unseen_file
        self.drop_unseen_train_val = bool(drop_unseen_train_val)
        self.chunk_rows = int(chunk_rows)
        bad = [s for s in self.splits if s not in SPLIT_FILES]
        if bad or not self.splits:
            raise ValueError(f"openimages: splits must be a non-empty subset of "
                             f"{list(SPLIT_FILES)}, got {list(splits)}")
        if "{split}" not in image_dir:
            raise ValueError(f"openimages: image_dir {image_dir!r} must contain '{{split}}'")

    def _meta(self, name):
        return os.path.join(self.root, self.meta_dir, name)

    def _require(self, path, what):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"openimages: missing {what} {path!r} (LESA 2018_04 layout: "
                                    "see mll_tf/data/datasets/openimages.py)")
        return path

    def _label_lists(self):
        seen_path = self._require(self._meta("classes-trainable.txt"), "seen label list")
        seen = _read_list(seen_path)
        _check_unique(seen, seen_path)
        if self.unseen_file is not None:
            unseen_path = self._require(self._meta(self.unseen_file), "unseen label list")
        else:
            unseen_path = self._meta("unseen_labels.pkl")
            if not os.path.isfile(unseen_path):
                unseen_path = self._require(self._meta("unseen_labels.txt"),
                                            "unseen label list (unseen_labels.pkl or .txt)")
        if unseen_path.endswith((".pkl", ".pickle")):
            unseen = load_mid_list_pickle(unseen_path)
        else:
            unseen = _read_list(unseen_path)
        _check_unique(unseen, unseen_path)
        both = sorted(set(seen) & set(unseen))
        if both:
            raise ValueError(f"{unseen_path}: MIDs also in {seen_path}: {both[:10]}")
        if self.top_unseen_file is None:
            top = list(range(len(unseen)))
        else:
            top = read_top_unseen(self._require(self._meta(self.top_unseen_file),
                                                "evaluated-unseen index file"), len(unseen))
        desc = read_class_descriptions(self._require(self._meta("class-descriptions.csv"),
                                                     "MID -> display name file"))
        return seen, unseen, top, desc, unseen_path

    def prepare(self):
        """Read label lists and CSVs, check image files; return a :class:`PreparedDataset`."""
        seen, unseen, top, desc, unseen_path = self._label_lists()
        label_names = unseen + seen
        n_unseen = len(unseen)
        class_index = {m: i for i, m in enumerate(label_names)}
        csv_paths = {s: self._require(self._meta(self.annotations.format(split=SPLIT_FILES[s])),
                                      f"{s} annotation CSV") for s in self.splits}
        splits, skipped, counts = {}, {}, {}
        unknown_rows, unknown_examples, duplicates, conflicts = {}, [], {}, {}
        without_positive = 0
        for split in self.splits:
            table = read_human_image_labels(csv_paths[split], class_index, conflict="positive",
                                            chunksize=self.chunk_rows)
            unknown_rows[split] = table.stats["ignored_rows"]
            unknown_examples += [m for m in table.stats["ignored_mid_examples"]
                                 if m not in unknown_examples]
            duplicates[split] = table.stats["duplicate_rows"]
            conflicts[split] = table.stats["conflicting_pairs"]
            if split in ("train", "val") and self.drop_unseen_train_val:
                table = table.drop_entries(table.classes < n_unseen)
            rows = None
            if split == "train":   # only images with a positive seen label
                has_pos = table.entries_per_image((table.values == 1)
                                                  & (table.classes >= n_unseen)) > 0
                without_positive = int((~has_pos).sum())
                rows = np.flatnonzero(has_pos)
            image_dir = os.path.join(self.root, self.image_dir.format(split=SPLIT_FILES[split]))
            records, skips, kept = build_split_records(
                table, image_dir, drop_empty=False, rows=rows, id_root=self.root,
                missing_reason="missing file", missing_dir_ok=True)
            splits[split] = records
            if skips:
                skipped[split] = skips
            pos, _ = table.entry_counts(kept["rows"])
            counts[split] = dict(zip(label_names, pos.tolist()))
            del table
        no_desc = [m for m in label_names if m not in desc]
        extra = {
            "protocol": "lesa_openimages",
            "root": os.path.abspath(self.root),
            "label_split": {"unseen": list(unseen), "seen": list(seen),
                            "unseen_eval": [unseen[i] for i in top]},
            "label_text": [desc.get(m, m) for m in label_names],
            "eval_k": [10, 20],
            "label_counts_by_split": counts,
            "label_source": ("human-verified image-level labels: Confidence 1 -> 1, 0 -> 0, "
                             "not annotated -> -1; columns [unseen (unseen list order), seen "
                             "(classes-trainable.txt order)]"),
            "unseen_list_file": os.path.basename(unseen_path),
            "unknown_mid_rows": unknown_rows,
            "unknown_mid_examples": unknown_examples,
            "duplicate_rows": duplicates,
            "conflicting_pairs": conflicts,
            "conflict": "positive",
            "train_images_without_positive_seen": without_positive,
            "drop_unseen_train_val": self.drop_unseen_train_val,
            "labels_without_description": len(no_desc),
            "labels_without_description_examples": no_desc[:20],
            "image_dir": self.image_dir,
            "meta_dir": self.meta_dir,
        }
        return PreparedDataset(
            name=self.name, label_names=label_names, splits=splits, skipped=skipped,
            load_image=decode_image, preprocessing=PREPROCESSING, extra=extra)
