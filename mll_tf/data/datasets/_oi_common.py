"""Shared readers for the OpenImages adapters (v3 "2017_11" and V6).

OpenImages ships its labels as CSV files; this module turns them into sparse
per-image annotations without ever holding a dense ``[N, C]`` matrix:

* **Class lists** (``classes-trainable.txt``, ``oidv6-classes-trainable.txt``):
  one MID per line, read by :func:`read_class_list` (a ``MID,name`` CSV is
  accepted too; its first column is used).
* **Class descriptions** (``class-descriptions.csv`` without header in
  2017_11, ``oidv6-class-descriptions.csv`` with the header
  ``LabelName,DisplayName`` in V6): ``MID -> display name``, read by
  :func:`read_class_descriptions`.
* **Human-verified image-level labels** (``ImageID,Source,LabelName,
  Confidence``; tens of millions of rows for the train split), streamed by
  :func:`read_human_image_labels` with ``pandas.read_csv`` in chunks, only
  three columns, categorical dtypes. Memory is about 9 bytes per kept
  annotation plus one Python string per image.

Label convention (mll_tf, docs/labels_and_data.md §1): ``Confidence 1 -> 1`` (present),
``Confidence 0 -> 0`` (verified absent), never annotated ``-> -1`` (unknown).
This equals ``from_pm1`` of the references' ``2*Confidence - 1`` vectors with
``0`` for "not annotated" (IMCL ``extract_feature_2_TFRecords_OpenImages.py``).

Dense vectors are materialised only when a record's ``labels`` is read (see
:class:`SparseLabelRecord`), so a 1.7M-image, 9605-class train split costs
memory proportional to its annotations, not 16 GB.
"""

import collections
import csv
import dataclasses
import os

import numpy as np

from mll_tf.data.adapter import ImageRecord
from mll_tf.data.images import decode_image

#: Columns of the human-verified image-level label CSVs that are read.
LABEL_COLUMNS = ("ImageID", "LabelName", "Confidence")

#: Conflict policies for an (image, class) pair verified both 1 and 0.
CONFLICT_POLICIES = ("positive", "negative", "unknown")

PREPROCESSING = (
    "PIL decode -> RGB (alpha composited on white) -> shorter side resized to "
    "resize_shorter (default: size), bilinear, aspect kept -> central size x size "
    "crop, uint8 (mll_tf.data.images.load_rgb_center_crop)")


def load_image(path, size, resize_shorter=None):
    """Decode one OpenImages JPEG to RGB ``uint8 [size, size, 3]``.

    Picklable (module level), used by the extraction workers. See
    :func:`mll_tf.data.images.load_rgb_center_crop`.

    Raises:
        ValueError: empty file. PIL.UnidentifiedImageError / OSError:
            unreadable image (the extractor records it as skipped).
    """
    return decode_image(path, size, resize_shorter=resize_shorter)


def _looks_like_mid(s):
    return s.startswith("/")


def _check_file(path, what):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: file not found: {path!r}")


def read_class_list(path):
    """Read an ordered list of class MIDs.

    Args:
        path: str. A ``.txt`` file with one MID per line (blank lines ignored),
            or a CSV whose first column holds the MIDs (a first row whose first
            field is not a MID, e.g. ``LabelName``, is taken as a header).

    Returns:
        list of str, the MIDs in file order (column order of the labels).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: naming the file and line, for an entry that is not a MID
            (does not start with ``/``) or a duplicate MID; or if the file
            holds no MID.
    """
    _check_file(path, "class list")
    mids, seen = [], {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if not row or not row[0].strip():
                continue
            mid = row[0].strip()
            if not _looks_like_mid(mid):
                if lineno == 1 and not mids:
                    continue  # header
                raise ValueError(f"{path}: line {lineno}: {mid!r} is not an OpenImages MID")
            if mid in seen:
                raise ValueError(f"{path}: line {lineno}: duplicate class {mid!r} "
                                 f"(first on line {seen[mid]})")
            seen[mid] = lineno
            mids.append(mid)
    if not mids:
        raise ValueError(f"{path}: no class MID found")
    return mids


def read_class_descriptions(path):
    """Read an OpenImages ``MID,DisplayName`` CSV, with or without header.

    Args:
        path: str, e.g. ``2017_11/class-descriptions.csv`` (no header) or
            ``oidv6-class-descriptions.csv`` (header ``LabelName,DisplayName``).
            Quoted names (``Fiat 500 "topolino"`` is stored with CSV
            quoting) are handled by the csv module; a UTF-8 BOM is ignored.

    Returns:
        dict MID -> display name (str), in file order.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: naming the file and line, for a row with fewer than two
            fields, a non-MID first field after the first line, or a MID listed
            twice with different names.
    """
    _check_file(path, "class descriptions")
    out = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if not row or not "".join(row).strip():
                continue
            if not _looks_like_mid(row[0].strip()):
                if lineno == 1:
                    continue  # header, e.g. LabelName,DisplayName
                raise ValueError(f"{path}: line {lineno}: {row[0]!r} is not an OpenImages MID")
            if len(row) < 2:
                raise ValueError(f"{path}: line {lineno}: expected 'MID,DisplayName', got {row!r}")
            mid, name = row[0].strip(), ",".join(row[1:]).strip()
            if mid in out and out[mid] != name:
                raise ValueError(f"{path}: line {lineno}: {mid!r} described twice "
                                 f"({out[mid]!r} and {name!r})")
            out[mid] = name
    return out


def display_names(mids, descriptions, path):
    """Display names of ``mids`` (parallel list).

    Raises:
        ValueError: naming ``path`` (the descriptions file) and the missing
            MIDs if any MID has no description.
    """
    missing = [m for m in mids if m not in descriptions]
    if missing:
        raise ValueError(f"{path}: no description for {len(missing)} class(es), e.g. {missing[:5]}")
    return [descriptions[m] for m in mids]


@dataclasses.dataclass
class ImageLabelTable:
    """Sparse human-verified labels of one split, in CSR layout.

    Attributes:
        image_ids: list of N str, in order of first appearance in the CSV
            (every ImageID of the CSV, even those with only ignored rows).
        indptr: int64 ``[N + 1]``; image i owns entries
            ``indptr[i]:indptr[i+1]``.
        classes: int32 ``[nnz]`` column indices in ``[0, C)``, sorted within
            each image.
        values: int8 ``[nnz]`` in {0, 1} (1 present, 0 absent).
        num_classes: int C.
        stats: dict of ints: ``rows`` (data rows read), ``ignored_rows`` (MID
            not in the class list), ``ignored_mids`` (distinct such MIDs),
            ``duplicate_rows`` (rows repeating an (image, class) pair),
            ``conflicting_pairs`` (pairs verified both 1 and 0),
            ``images``, ``images_without_class_labels``; plus ``conflict``
            (the policy, str) and ``path``.
    """
    image_ids: list
    indptr: np.ndarray
    classes: np.ndarray
    values: np.ndarray
    num_classes: int
    stats: dict

    def __len__(self):
        return len(self.image_ids)

    def dense(self, i):
        """Labels of image ``i``: int8 ``[C]`` in {1, 0, -1}."""
        y = np.full(self.num_classes, -1, np.int8)
        s, e = self.indptr[i], self.indptr[i + 1]
        y[self.classes[s:e]] = self.values[s:e]
        return y

    def entry_counts(self, rows=None):
        """Per-class ``(positives, negatives)``, two int64 ``[C]`` arrays.

        Args:
            rows: optional int array of image indices to count (default all).
        """
        if rows is None:
            cls, val = self.classes, self.values
        else:
            keep = np.zeros(len(self.image_ids), bool)
            keep[np.asarray(rows, np.int64)] = True
            sel = np.repeat(keep, np.diff(self.indptr))
            cls, val = self.classes[sel], self.values[sel]
        pos = np.bincount(cls[val == 1], minlength=self.num_classes).astype(np.int64)
        neg = np.bincount(cls[val == 0], minlength=self.num_classes).astype(np.int64)
        return pos, neg


def _read_header(path):
    with open(path, newline="", encoding="utf-8-sig") as f:
        try:
            header = next(csv.reader(f))
        except StopIteration:
            raise ValueError(f"{path}: empty file; expected the header "
                             "'ImageID,Source,LabelName,Confidence'") from None
    header = [h.strip() for h in header]
    missing = [c for c in LABEL_COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{path}: header {header} lacks column(s) {missing}; expected "
                         "'ImageID,Source,LabelName,Confidence' "
                         "(human-verified image-level labels)")
    return header


def read_human_image_labels(path, class_index, *, conflict="positive", chunksize=1_000_000):
    """Stream a human-verified image-level label CSV into an :class:`ImageLabelTable`.

    Args:
        path: str, CSV with header ``ImageID,Source,LabelName,Confidence``
            (other columns are ignored; ``.gz``/``.zip`` are decompressed by
            pandas).
        class_index: dict MID -> column index in ``[0, C)``; C is
            ``max + 1``. Rows whose MID is not a key are ignored and counted.
        conflict: str, what an (image, class) pair verified both 1 and 0 by
            different rows becomes: ``"positive"`` (default: a human saw the
            object at least once, so 1 wins), ``"negative"`` (0 wins) or
            ``"unknown"`` (the pair is dropped, i.e. -1). Exact duplicates are
            merged silently; both are counted in ``stats``. (IMCL keeps the
            last row in file order; CSL's loader is not published.)
        chunksize: int, rows per pandas chunk (bounds the parsing memory).

    Returns:
        :class:`ImageLabelTable`.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: naming the file, for a bad header, a malformed CSV, or
            (with the line, ImageID and LabelName) an empty ImageID/LabelName
            or a Confidence other than 0 or 1.
    """
    import pandas as pd

    if conflict not in CONFLICT_POLICIES:
        raise ValueError(f"conflict must be one of {CONFLICT_POLICIES}, got {conflict!r}")
    _check_file(path, "image-level labels")
    _read_header(path)
    num_classes = (max(class_index.values()) + 1) if class_index else 0
    image_pos = {}
    imgs, clss, vals = [], [], []
    rows = ignored_rows = 0
    ignored_mids = set()
    reader = pd.read_csv(
        path, usecols=list(LABEL_COLUMNS), chunksize=chunksize,
        dtype={"ImageID": "category", "LabelName": "category", "Confidence": "float32"})
    try:
        for chunk in reader:
            n = len(chunk)
            first_line = int(chunk.index[0]) + 2 if n else 0  # +1 header, +1 one-based
            img_codes = chunk["ImageID"].cat.codes.to_numpy()
            lab_codes = chunk["LabelName"].cat.codes.to_numpy()
            conf = chunk["Confidence"].to_numpy()
            bad = (img_codes < 0) | (lab_codes < 0) | ~((conf == 0) | (conf == 1))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                r = chunk.iloc[i]
                raise ValueError(
                    f"{path}: line {first_line + i}: bad row (ImageID={r['ImageID']!r}, "
                    f"LabelName={r['LabelName']!r}, Confidence={r['Confidence']!r}); "
                    "need a non-empty ImageID and LabelName and Confidence 0 or 1")
            cats = chunk["ImageID"].cat.categories
            gid = np.fromiter((image_pos.setdefault(c, len(image_pos)) for c in cats),
                              np.int64, len(cats))
            lab_cats = chunk["LabelName"].cat.categories
            lmap = np.fromiter((class_index.get(m, -1) for m in lab_cats), np.int64, len(lab_cats))
            cls = lmap[lab_codes]
            keep = cls >= 0
            rows += n
            if not keep.all():
                ignored_rows += int((~keep).sum())
                ignored_mids.update(lab_cats[np.unique(lab_codes[~keep])].tolist())
            imgs.append(gid[img_codes[keep]].astype(np.int32))
            clss.append(cls[keep].astype(np.int32))
            vals.append(conf[keep].astype(np.int8))
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: malformed CSV: {e}") from e
    except ValueError as e:
        if str(e).startswith(str(path)):
            raise
        raise ValueError(f"{path}: malformed CSV: {e}") from e

    img = np.concatenate(imgs) if imgs else np.zeros(0, np.int32)
    cls = np.concatenate(clss) if clss else np.zeros(0, np.int32)
    val = np.concatenate(vals) if vals else np.zeros(0, np.int8)
    del imgs, clss, vals
    key = img.astype(np.int64) * max(num_classes, 1) + cls
    del img, cls
    order = np.argsort(key, kind="stable")
    key, val = key[order], val[order]
    del order
    if len(key):
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        vmax = np.maximum.reduceat(val, starts)
        vmin = np.minimum.reduceat(val, starts)
    else:
        starts = np.zeros(0, np.int64)
        vmax = vmin = np.zeros(0, np.int8)
    conflicted = vmax != vmin
    ukey = key[starts]
    del key, val
    if conflict == "positive":
        uval = vmax
    elif conflict == "negative":
        uval = vmin
    else:
        ukey, uval = ukey[~conflicted], vmax[~conflicted]
    n_images = len(image_pos)
    uimg = ukey // max(num_classes, 1)
    indptr = np.zeros(n_images + 1, np.int64)
    np.cumsum(np.bincount(uimg, minlength=n_images), out=indptr[1:])
    stats = {
        "path": os.path.abspath(path),
        "rows": rows,
        "ignored_rows": ignored_rows,
        "ignored_mids": len(ignored_mids),
        "duplicate_rows": int(rows - ignored_rows - len(starts)),
        "conflicting_pairs": int(conflicted.sum()),
        "conflict": conflict,
        "images": n_images,
        "images_without_class_labels": int(np.sum(np.diff(indptr) == 0)),
    }
    return ImageLabelTable(
        image_ids=list(image_pos), indptr=indptr,
        classes=(ukey % max(num_classes, 1)).astype(np.int32), values=uval.astype(np.int8),
        num_classes=num_classes, stats=stats)


class SparseLabelRecord(ImageRecord):
    """An :class:`~mll_tf.data.adapter.ImageRecord` whose labels stay sparse.

    ``labels`` is built on each access as a fresh int8 ``[C]`` array (1
    present, 0 absent, -1 unknown) from the annotated entries, so millions of
    records cost memory proportional to their annotations. Mutating the
    returned array therefore has no effect; assign a new array instead
    (``record.labels = y``), which is then stored densely.

    Args:
        image_id: str, the OpenImages ImageID.
        path: str, absolute image path.
        labels: optional dense int8 ``[C]`` (makes the record dense).
        classes: int ``[k]`` column indices of the annotated entries.
        values: int8 ``[k]`` values (0 or 1) of those entries.
        num_classes: int C.
    """

    def __init__(self, image_id, path, labels=None, *, classes=None, values=None, num_classes=None):
        self.image_id = image_id
        self.path = path
        self._dense = None if labels is None else np.asarray(labels, np.int8)
        self._classes = classes
        self._values = values
        self._num_classes = num_classes
        if self._dense is None and (classes is None or values is None or num_classes is None):
            raise ValueError("SparseLabelRecord needs labels, or classes + values + num_classes")

    @property
    def labels(self):
        if self._dense is not None:
            return self._dense
        y = np.full(self._num_classes, -1, np.int8)
        y[self._classes] = self._values
        return y

    @labels.setter
    def labels(self, value):
        self._dense = np.asarray(value, np.int8)

    def __repr__(self):
        return f"SparseLabelRecord(image_id={self.image_id!r}, path={self.path!r})"


def list_image_files(image_dir):
    """Set of file names directly in ``image_dir`` (one directory listing).

    Raises:
        FileNotFoundError: naming the directory if it does not exist.
    """
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"image folder not found: {image_dir!r}")
    with os.scandir(image_dir) as it:
        return {e.name for e in it}


def build_split_records(table, image_dir, *, drop_empty, max_skipped_listed=None, ext=".jpg"):
    """Turn an :class:`ImageLabelTable` into records for the images on disk.

    Args:
        table: :class:`ImageLabelTable` of one split.
        image_dir: str, folder holding ``<ImageID><ext>``.
        drop_empty: bool; drop images without any annotation in the class
            list (counted, not listed as skipped).
        max_skipped_listed: int or None; at most this many skipped images are
            listed (all are counted).
        ext: str, file extension.

    Returns:
        ``(records, skipped, counts)``: list of :class:`SparseLabelRecord`,
        list of ``{"image_id", "reason"}``, and a dict with ``kept``
        ``dropped_without_class_labels``, the row indices ``rows`` (int64 array
        into the table; popped by the caller) and ``skipped_by_reason``.

    Raises:
        FileNotFoundError: if ``image_dir`` does not exist.
    """
    present = list_image_files(image_dir)
    image_dir = os.path.abspath(image_dir)
    records, skipped, rows = [], [], []
    reasons = collections.Counter()
    dropped = 0
    lengths = np.diff(table.indptr)
    for i, image_id in enumerate(table.image_ids):
        if drop_empty and lengths[i] == 0:
            dropped += 1
            continue
        name = image_id + ext
        if name not in present:
            reasons["missing image file"] += 1
            if max_skipped_listed is None or len(skipped) < max_skipped_listed:
                skipped.append({"image_id": image_id, "reason": f"missing image file {name}"})
            continue
        s, e = table.indptr[i], table.indptr[i + 1]
        records.append(SparseLabelRecord(
            image_id, os.path.join(image_dir, name), classes=table.classes[s:e],
            values=table.values[s:e], num_classes=table.num_classes))
        rows.append(i)
    counts = {"kept": len(records), "dropped_without_class_labels": dropped,
              "skipped_by_reason": dict(reasons), "rows": np.asarray(rows, np.int64)}
    return records, skipped, counts


def prepare_openimages(name, label_names, label_text, split_specs, *, conflict, drop_empty,
                       max_skipped_listed, chunksize, extra):
    """Shared ``prepare()`` body of the OpenImages adapters.

    Args:
        name: str, registry name.
        label_names: list of C MIDs (column order).
        label_text: list of C display names.
        split_specs: dict split -> ``(csv_path, image_dir)`` or ``None`` (split
            not requested: empty).
        conflict, drop_empty, max_skipped_listed, chunksize: see the adapters.
        extra: dict of adapter-specific metadata, completed here.

    Returns:
        :class:`mll_tf.data.adapter.PreparedDataset`.
    """
    from mll_tf.data.adapter import PreparedDataset

    class_index = {m: i for i, m in enumerate(label_names)}
    splits, skipped, csv_stats = {}, {}, {}
    pos_by_split, neg_by_split = {}, {}
    for split, spec in split_specs.items():
        if spec is None:
            splits[split] = []
            continue
        csv_path, image_dir = spec
        if not os.path.isdir(image_dir):
            raise FileNotFoundError(
                f"{name}: image folder for split {split!r} not found: {image_dir!r}")
        table = read_human_image_labels(
            csv_path, class_index, conflict=conflict, chunksize=chunksize)
        records, skip, counts = build_split_records(
            table, image_dir, drop_empty=drop_empty, max_skipped_listed=max_skipped_listed)
        pos, neg = table.entry_counts(counts.pop("rows"))
        splits[split] = records
        if skip:
            skipped[split] = skip
        csv_stats[split] = dict(table.stats, image_dir=os.path.abspath(image_dir), **counts)
        pos_by_split[split] = {m: int(c) for m, c in zip(label_names, pos.tolist())}
        neg_by_split[split] = {m: int(c) for m, c in zip(label_names, neg.tolist())}
        del table
    extra = dict(extra)
    extra.update({
        "label_text": list(label_text),
        "label_counts_by_split": pos_by_split,
        "negative_counts_by_split": neg_by_split,
        "csv_stats": csv_stats,
        "ignored_rows_by_split": {s: v["ignored_rows"] for s, v in csv_stats.items()},
        "skipped_counts": {s: v["skipped_by_reason"] for s, v in csv_stats.items()},
        "conflict": conflict,
        "drop_empty": bool(drop_empty),
        "label_source": ("human-verified image-level labels: Confidence 1 -> 1, 0 -> 0, "
                         "never annotated -> -1"),
    })
    return PreparedDataset(
        name=name, label_names=list(label_names), splits=splits, skipped=skipped,
        load_image=load_image, preprocessing=PREPROCESSING, extra=extra)


SPLITS = ("train", "val", "test")


class OpenImagesAdapterBase:
    """Options and ``prepare()`` shared by the OpenImages adapters.

    Subclasses set ``name``, ``DEFAULT_*`` class attributes and ``version``.
    Relative file and folder options are resolved against ``root``; absolute
    ones are used as given. See :class:`OpenImagesV6` / :class:`OpenImagesV3`
    for the arguments.
    """

    name = None
    version = None
    DEFAULT_CLASSES_FILE = None
    DEFAULT_DESCRIPTIONS_FILE = None
    DEFAULT_LABEL_FILES = {}
    DEFAULT_IMAGE_DIRS = {"train": "train", "val": "validation", "test": "test"}
    DEFAULT_DROP_EMPTY = False

    def __init__(self, root, classes_file=None, classes=None, descriptions_file=None,
                 label_files=None, image_dirs=None, splits=SPLITS, conflict="positive",
                 drop_empty=None, max_skipped_listed=10000, chunksize=1_000_000):
        self.root = root
        self.classes_file = classes_file if classes_file is not None else self.DEFAULT_CLASSES_FILE
        self.classes = None if classes is None else [str(c) for c in classes]
        self.descriptions_file = (descriptions_file if descriptions_file is not None
                                  else self.DEFAULT_DESCRIPTIONS_FILE)
        unknown = set(label_files or {}) | set(image_dirs or {}) | set(splits)
        unknown -= set(SPLITS)
        if unknown:
            raise ValueError(
                f"{self.name}: unknown split(s) {sorted(unknown)}; splits are {SPLITS}")
        self.label_files = dict(self.DEFAULT_LABEL_FILES, **(label_files or {}))
        self.image_dirs = dict(self.DEFAULT_IMAGE_DIRS, **(image_dirs or {}))
        self.splits = tuple(splits)
        if conflict not in CONFLICT_POLICIES:
            raise ValueError(
                f"{self.name}: conflict must be one of {CONFLICT_POLICIES}, got {conflict!r}")
        self.conflict = conflict
        self.drop_empty = self.DEFAULT_DROP_EMPTY if drop_empty is None else bool(drop_empty)
        self.max_skipped_listed = None if max_skipped_listed is None else int(max_skipped_listed)
        self.chunksize = int(chunksize)
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise ValueError(f"{self.name}: classes holds duplicate MIDs")

    def _path(self, p):
        return os.path.abspath(p if os.path.isabs(p) else os.path.join(self.root, p))

    def prepare(self):
        """Read the class list, descriptions and label CSVs; return a
        :class:`mll_tf.data.adapter.PreparedDataset` (see the class docstring).
        """
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"{self.name}: dataset root not found: {self.root!r}")
        if self.classes is not None:
            mids, class_source = list(self.classes), "explicit list (classes=...)"
        else:
            class_source = self._path(self.classes_file)
            mids = read_class_list(class_source)
        desc_path = self._path(self.descriptions_file)
        text = display_names(mids, read_class_descriptions(desc_path), desc_path)
        specs = {s: ((self._path(self.label_files[s]), self._path(self.image_dirs[s]))
                     if s in self.splits else None) for s in SPLITS}
        extra = {
            "root": os.path.abspath(self.root),
            "version": self.version,
            "class_source": class_source,
            "descriptions_file": desc_path,
            "label_files": {s: v[0] for s, v in specs.items() if v},
            "image_dirs": {s: v[1] for s, v in specs.items() if v},
            "splits_prepared": [s for s in SPLITS if s in self.splits],
        }
        return prepare_openimages(
            self.name, mids, text, specs, conflict=self.conflict, drop_empty=self.drop_empty,
            max_skipped_listed=self.max_skipped_listed, chunksize=self.chunksize, extra=extra)
