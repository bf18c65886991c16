"""Shared readers for the OpenImages adapters (2018_04 ``openimages``, v3 "2017_11", V6).

OpenImages ships its labels as CSV files; this module turns them into sparse
per-image annotations without ever holding a dense ``[N, C]`` matrix:

* **Class lists** (``classes-trainable.txt``, ``oidv6-classes-trainable.txt``):
  one MID per line, read by :func:`read_class_list` (a ``MID,name`` CSV is
  accepted too; its first column is used).
* **Class descriptions** (``class-descriptions.csv`` without header in
  2017_11 and 2018_04, ``oidv6-class-descriptions.csv`` with the header
  ``LabelName,DisplayName`` in V6): ``MID -> display name``, read by
  :func:`read_class_descriptions`.
* **Human-verified image-level labels** (``ImageID,Source,LabelName,
  Confidence``; tens of millions of rows for the train split), streamed by
  :func:`read_human_image_labels` with ``pandas.read_csv`` in chunks, only
  three columns, into an :class:`ImageLabelTable` (CSR).
  Memory while parsing is about 9 bytes per kept row plus one Python string
  per image; the table keeps about 3 bytes per annotation and the ImageIDs as
  one ``S`` array.

Label convention (mll_tf, docs/labels_and_data.md §1): ``Confidence 1 -> 1`` (present),
``Confidence 0 -> 0`` (verified absent), never annotated ``-> -1`` (unknown).
This equals ``from_pm1`` of the references' ``2*Confidence - 1`` vectors with
``0`` for "not annotated" (IMCL ``extract_feature_2_TFRecords_OpenImages.py``,
hbdat/cvpr20_LESA ``extract_data/extract_images_VGG_feature_2_TFRecord.py``).

Repeated rows -- one rule for every OpenImages adapter (``openimages``,
``openimages_v3``, ``openimages_v6``; docs/labels_and_data.md §3): rows that
repeat an (image, class) pair are merged into one label and counted
(``duplicate_rows``); when they disagree (Confidence 1 and 0), **a positive
wins**: the label is 1 if any row says the image contains the class. The
result does not depend on row order or on chunking; such pairs are counted
(``conflicting_pairs``). The v3 / V6 adapters can choose another outcome with
``conflict="negative"`` or ``"unknown"``; ``openimages`` always uses this
rule. (The references assign rows in file order, so there the later row wins:
hbdat/cvpr20_LESA's and IMCL's OpenImages extraction scripts; the OpenImages
loader of Alibaba-MIIL/PartialLabelingCSL is not published.)

Dense vectors are materialised only when a record's ``labels`` is read (see
:class:`SparseLabelRecord`): a record holds a reference to its split's table
and a row index, so a 5.5M-image, 9780-class train split costs memory
proportional to its annotations, not 54 GB.
"""

import collections
import contextlib
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


@contextlib.contextmanager
def utf8_text(path):
    """Turn a ``UnicodeDecodeError`` while reading ``path`` into an error naming the file and the byte.

    OpenImages publishes its CSVs and lists as UTF-8 (a BOM is accepted); a
    file in another encoding was converted by someone, and is refused rather
    than read with replaced characters.

    Raises:
        ValueError: naming the file, the byte offset and what to do.
    """
    try:
        yield
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}: "
                         f"{e.reason}); OpenImages files are UTF-8 — convert it, e.g. "
                         f"iconv -f latin1 -t utf-8") from None


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
    with utf8_text(path), open(path, newline="", encoding="utf-8-sig") as f:
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
    with utf8_text(path), open(path, newline="", encoding="utf-8-sig") as f:
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
        image_ids: numpy ``S`` (ASCII ImageIDs, 1 byte per character) or
            ``U`` array of N ImageIDs, in order of first appearance in the
            CSV (every ImageID of the CSV, even those with only ignored rows);
            :meth:`image_id` returns one as str.
        indptr: int64 ``[N + 1]``; image i owns entries
            ``indptr[i]:indptr[i+1]``.
        classes: int16 (int32 if C > 32767) ``[nnz]`` column indices in
            ``[0, C)``, sorted within each image.
        values: int8 ``[nnz]`` in {0, 1} (1 present, 0 absent).
        num_classes: int C.
        stats: dict of ints: ``rows`` (data rows read), ``ignored_rows`` (MID
            not in the class list), ``ignored_mids`` (distinct such MIDs),
            ``duplicate_rows`` (rows repeating an (image, class) pair),
            ``conflicting_pairs`` (pairs verified both 1 and 0),
            ``images``, ``images_without_class_labels``; plus ``conflict``
            (the policy, str), ``path`` and ``ignored_mid_examples`` (the
            first 10 distinct ignored MIDs, in file order).
    """
    image_ids: np.ndarray
    indptr: np.ndarray
    classes: np.ndarray
    values: np.ndarray
    num_classes: int
    stats: dict

    def __len__(self):
        return len(self.image_ids)

    def image_id(self, i):
        """ImageID of image ``i`` (str)."""
        v = self.image_ids[i]
        return v.decode("ascii") if isinstance(v, bytes) else str(v)

    def dense(self, i):
        """Labels of image ``i``: int8 ``[C]`` in {1, 0, -1}."""
        y = np.full(self.num_classes, -1, np.int8)
        s, e = self.indptr[i], self.indptr[i + 1]
        y[self.classes[s:e]] = self.values[s:e]
        return y

    def entries_per_image(self, mask):
        """int64 ``[N]``: per image, how many of its entries have ``mask`` (bool ``[nnz]``) set."""
        c = np.zeros(len(mask) + 1, np.int64)
        np.cumsum(mask, out=c[1:])
        return c[self.indptr[1:]] - c[self.indptr[:-1]]

    def drop_entries(self, mask):
        """A new table without the entries where ``mask`` (bool ``[nnz]``) is set (they become -1)."""
        keep = ~np.asarray(mask, bool)
        c = np.zeros(len(keep) + 1, np.int64)
        np.cumsum(keep, out=c[1:])
        return dataclasses.replace(self, indptr=c[self.indptr], classes=self.classes[keep],
                                   values=self.values[keep], stats=dict(self.stats))

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
    """The CSV's column names (read by pandas, so ``.gz``/``.zip`` files work too)."""
    import pandas as pd

    try:
        with utf8_text(path):
            header = [str(c) for c in pd.read_csv(path, nrows=0, encoding="utf-8-sig").columns]
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: empty file; expected the header "
                         "'ImageID,Source,LabelName,Confidence'") from None
    except pd.errors.ParserError as e:
        raise ValueError(f"{path}: malformed CSV: {e}") from e
    missing = [c for c in LABEL_COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{path}: header {header} lacks column(s) {missing}; need columns "
                         f"{','.join(LABEL_COLUMNS)} (human-verified image-level labels, header "
                         "'ImageID,Source,LabelName,Confidence')")
    return header


def _factorize(column):
    """``(codes, names)``: codes into the distinct values in order of first appearance,
    stripped str, plus ``""`` last (code -1, a missing cell, indexes it)."""
    import pandas as pd

    codes, uniques = pd.factorize(column)
    return codes, [str(c).strip() for c in uniques] + [""]


def _bad_row_message(path, line, row, image_empty, label_empty):
    where = f"{path}: line {line}: "
    if image_empty:
        return (where + f"empty ImageID (LabelName={row['LabelName']!r}, "
                f"Confidence={row['Confidence']!r})")
    if label_empty:
        return (where + f"empty LabelName (ImageID={row['ImageID']!r}, "
                f"Confidence={row['Confidence']!r})")
    return (where + f"Confidence {row['Confidence']!r} is not 0 or 1 "
            f"(ImageID={row['ImageID']!r}, LabelName={row['LabelName']!r})")


def read_human_image_labels(path, class_index, *, conflict="positive", chunksize=1_000_000):
    """Stream a human-verified image-level label CSV into an :class:`ImageLabelTable`.

    Args:
        path: str, CSV with header ``ImageID,Source,LabelName,Confidence``
            (other columns are ignored; a UTF-8 BOM is allowed; ``.gz``/``.zip``
            are decompressed by pandas). Surrounding spaces of ImageID,
            LabelName and Confidence are ignored; ``Confidence`` may be
            written ``1``/``0`` or ``1.0``/``0.0``.
        class_index: dict MID -> column index in ``[0, C)``; C is
            ``max + 1``. Rows whose MID is not a key are ignored and counted.
        conflict: str, what an (image, class) pair verified both 1 and 0 by
            different rows becomes: ``"positive"`` (default, the rule of every
            OpenImages adapter -- see the module docstring: a positive wins,
            whatever the row order), ``"negative"`` (0 wins) or ``"unknown"``
            (the pair is dropped, i.e. -1). Exact duplicates are merged; both
            are counted in ``stats``.
        chunksize: int, rows per pandas chunk (bounds the parsing memory; the
            result does not depend on it).

    Returns:
        :class:`ImageLabelTable`.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: naming the file, for a bad header (missing columns) or a
            malformed CSV, or, with the line, ImageID and LabelName, for an
            empty ImageID or LabelName or a Confidence other than 0 or 1.
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
    ignored_mids, ignored_examples = set(), []
    # read as str (a category dtype would turn an all-digit ImageID such as "0012" into 12)
    reader = pd.read_csv(
        path, usecols=list(LABEL_COLUMNS), chunksize=chunksize, encoding="utf-8-sig",
        keep_default_na=False, dtype=str)
    try:
        chunks = iter(reader)
        while True:
            with utf8_text(path):
                chunk = next(chunks, None)
            if chunk is None:
                break
            n = len(chunk)
            if not n:
                continue
            first_line = int(chunk.index[0]) + 2  # +1 header, +1 one-based
            img_codes, img_names = _factorize(chunk["ImageID"])
            lab_codes, lab_names = _factorize(chunk["LabelName"])
            conf_codes, conf_names = _factorize(chunk["Confidence"])
            conf_num = pd.to_numeric(pd.Series(conf_names, dtype=object),
                                     errors="coerce").to_numpy(np.float64)
            conf = np.where(conf_num == 1, 1, np.where(conf_num == 0, 0, -1)).astype(np.int8)
            conf = conf[conf_codes]                    # code -1 (missing) -> last entry -> -1
            img_empty = np.array([s == "" for s in img_names])[img_codes]
            lab_empty = np.array([s == "" for s in lab_names])[lab_codes]
            bad = img_empty | lab_empty | (conf < 0)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ValueError(_bad_row_message(path, first_line + i, chunk.iloc[i],
                                                  img_empty[i], lab_empty[i]))
            # global image indices, in order of first appearance
            gid = np.fromiter((image_pos.setdefault(m, len(image_pos)) for m in img_names[:-1]),
                              np.int64, len(img_names) - 1)
            lmap = np.array([class_index.get(m, -1) for m in lab_names], np.int64)
            cls = lmap[lab_codes]
            keep = cls >= 0
            rows += n
            if not keep.all():
                ignored_rows += int((~keep).sum())
                for c in np.unique(lab_codes[~keep]).tolist():   # codes are in file order
                    m = lab_names[c]
                    if m not in ignored_mids and len(ignored_examples) < 10:
                        ignored_examples.append(m)
                    ignored_mids.add(m)
            imgs.append(gid[img_codes[keep]].astype(np.int32))
            clss.append(cls[keep].astype(np.int32))
            vals.append(conf[keep])
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
    del uimg
    image_ids = list(image_pos)
    del image_pos
    try:
        image_ids = np.array(image_ids, dtype="S")     # ImageIDs are ASCII hex: 1 B/char
    except UnicodeEncodeError:
        image_ids = np.array(image_ids, dtype="U")
    stats = {
        "path": os.path.abspath(path),
        "rows": rows,
        "ignored_rows": ignored_rows,
        "ignored_mids": len(ignored_mids),
        "ignored_mid_examples": ignored_examples,
        "duplicate_rows": int(rows - ignored_rows - len(starts)),
        "conflicting_pairs": int(conflicted.sum()),
        "conflict": conflict,
        "images": n_images,
        "images_without_class_labels": int(np.sum(np.diff(indptr) == 0)),
    }
    return ImageLabelTable(
        image_ids=image_ids, indptr=indptr,
        classes=(ukey % max(num_classes, 1)).astype(np.int16 if num_classes <= 32767 else np.int32),
        values=uval.astype(np.int8), num_classes=num_classes, stats=stats)


class _SplitImages:
    """What the records of one split share: its table, image folder and naming."""

    __slots__ = ("table", "image_dir", "id_prefix", "ext")

    def __init__(self, table, image_dir, id_prefix, ext):
        self.table, self.image_dir, self.id_prefix, self.ext = table, image_dir, id_prefix, ext

    def image_id(self, row):
        if self.id_prefix is None:
            return self.table.image_id(row)
        return self.id_prefix + self.table.image_id(row) + self.ext

    def path(self, row):
        return os.path.join(self.image_dir, self.table.image_id(row) + self.ext)


class SparseLabelRecord(ImageRecord):
    """An :class:`~mll_tf.data.adapter.ImageRecord` whose labels stay sparse.

    ``labels`` is built on each access as a fresh int8 ``[C]`` array (1
    present, 0 absent, -1 unknown) from the annotated entries, so millions of
    records cost memory proportional to their annotations. Mutating the
    returned array therefore has no effect; assign a new array instead
    (``record.labels = y``), which is then stored densely. Records made by
    :func:`build_split_records` hold only a reference to their split's
    :class:`ImageLabelTable` and a row index (``image_id`` and ``path`` are
    computed on access; about 140 bytes per record). A record pickles (and
    deep-copies) as a plain :class:`~mll_tf.data.adapter.ImageRecord` with
    dense labels.

    Args:
        image_id: str, the record's id (the OpenImages ImageID, or for the
            ``openimages`` adapter the image path relative to the root).
        path: str, absolute image path.
        labels: optional dense int8 ``[C]`` (makes the record dense).
        classes: int ``[k]`` column indices of the annotated entries.
        values: int8 ``[k]`` values (0 or 1) of those entries.
        num_classes: int C.
    """

    # table-backed records (build_split_records) hold only _split and _row; explicit
    # fields (constructor, assignments) live in the dict _own
    __slots__ = ("_split", "_row", "_own")

    def __init__(self, image_id, path, labels=None, *, classes=None, values=None, num_classes=None):
        if labels is None and (classes is None or values is None or num_classes is None):
            raise ValueError("SparseLabelRecord needs labels, or classes + values + num_classes")
        self._split = self._row = None
        self._own = {"image_id": image_id, "path": path,
                     "sparse": (classes, values, num_classes)}
        if labels is not None:
            self._own["labels"] = np.asarray(labels, np.int8)

    @classmethod
    def _of_split(cls, split, row):
        r = cls.__new__(cls)
        r._split, r._row, r._own = split, row, None
        return r

    def _set(self, key, value):
        if self._own is None:
            self._own = {}
        self._own[key] = value

    @property
    def image_id(self):
        if self._own is not None and "image_id" in self._own:
            return self._own["image_id"]
        return self._split.image_id(self._row)

    @image_id.setter
    def image_id(self, value):
        self._set("image_id", value)

    @property
    def path(self):
        if self._own is not None and "path" in self._own:
            return self._own["path"]
        return self._split.path(self._row)

    @path.setter
    def path(self, value):
        self._set("path", value)

    @property
    def labels(self):
        if self._own is not None and "labels" in self._own:
            return self._own["labels"]
        if self._split is not None:
            return self._split.table.dense(self._row)
        classes, values, num_classes = self._own["sparse"]
        y = np.full(num_classes, -1, np.int8)
        y[classes] = values
        return y

    @labels.setter
    def labels(self, value):
        self._set("labels", np.asarray(value, np.int8))

    def __reduce__(self):
        return (ImageRecord, (self.image_id, self.path, self.labels))

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


def build_split_records(table, image_dir, *, drop_empty, rows=None, id_root=None,
                        missing_reason="missing image file {name}", missing_dir_ok=False,
                        max_skipped_listed=None, ext=".jpg"):
    """Turn an :class:`ImageLabelTable` into records for the images on disk.

    Args:
        table: :class:`ImageLabelTable` of one split.
        image_dir: str, folder holding ``<ImageID><ext>``.
        drop_empty: bool; drop images without any annotation in the class
            list (counted, not listed as skipped).
        rows: optional int array of the table rows to consider, in order
            (default all; others are left out silently).
        id_root: None (a record's ``image_id`` is the ImageID) or a folder
            (``image_id`` is the image path relative to it, ``/``-separated).
        missing_reason: str, reason listed for a missing image file
            (``{name}`` = the file name).
        missing_dir_ok: bool; a missing ``image_dir`` means every image is
            missing instead of an error.
        max_skipped_listed: int or None; at most this many skipped images are
            listed (all are counted).
        ext: str, file extension.

    Returns:
        ``(records, skipped, counts)``: list of :class:`SparseLabelRecord`,
        list of ``{"image_id", "reason"}``, and a dict with ``kept``
        ``dropped_without_class_labels``, the row indices ``rows`` (int64 array
        into the table; popped by the caller) and ``skipped_by_reason``.

    Raises:
        FileNotFoundError: if ``image_dir`` does not exist (unless
            ``missing_dir_ok``).
    """
    present = (set() if missing_dir_ok and not os.path.isdir(image_dir)
               else list_image_files(image_dir))
    prefix = None
    if id_root is not None:
        prefix = os.path.relpath(image_dir, id_root).replace(os.sep, "/")
        prefix = "" if prefix == "." else prefix + "/"
    split = _SplitImages(table, os.path.abspath(image_dir), prefix, ext)
    records, skipped, kept_rows = [], [], []
    reasons = collections.Counter()
    dropped = 0
    lengths = np.diff(table.indptr)
    for i in (range(len(table)) if rows is None else np.asarray(rows, np.int64).tolist()):
        if drop_empty and lengths[i] == 0:
            dropped += 1
            continue
        name = table.image_id(i) + ext
        if name not in present:
            reasons["missing image file"] += 1
            if max_skipped_listed is None or len(skipped) < max_skipped_listed:
                skipped.append({"image_id": split.image_id(i),
                                "reason": missing_reason.format(name=name)})
            continue
        records.append(SparseLabelRecord._of_split(split, i))
        kept_rows.append(i)
    counts = {"kept": len(records), "dropped_without_class_labels": dropped,
              "skipped_by_reason": dict(reasons), "rows": np.asarray(kept_rows, np.int64)}
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
