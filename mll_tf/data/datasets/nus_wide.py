"""NUS-WIDE in LESA's zero-shot protocol: 925 seen Flickr tags, 81 unseen concepts.

Official layout under ``root`` (docs/labels_and_data.md §3, docs/lesa.md §5)::

    ImageList/Imagelist.txt        all 269,648 images, one path per line
                                   (``C:\\ImageData\\Flickr\\actor\\0001_2124494179.jpg``)
    ImageList/TrainImagelist.txt   the training images (``actor\\0001_2124494179.jpg``,
    ImageList/TestImagelist.txt    paths relative to ``Flickr/``), and the test images
    NUS_WID_Tags/TagList1k.txt     the 1000 tags, one per line
    NUS_WID_Tags/AllTags1k.txt     one row of 1000 tab-separated 0/1 per Imagelist.txt line
    Concepts81.txt                 the 81 concepts (alphabetical), one per line
    AllLabels/Labels_<concept>.txt one 0/1 per Imagelist.txt line (human labels)
    Flickr/<folder>/<file>.jpg     the images

Row mapping (as hbdat/cvpr20_LESA
``extract_data/extract_full_NUS_WIDE_images_VGG_feature_2_TFRecord.py``):
``AllTags1k.txt`` and ``AllLabels/Labels_*.txt`` are indexed by the line
number of the *full* list ``Imagelist.txt``; an entry of
``Train/TestImagelist.txt`` is matched to that row by its **file name** (the
part after the last ``/`` or ``\\``). If two lines of ``Imagelist.txt`` share
a file name, the later one wins (the reference builds a dict); the number of
such names is reported in ``extra["duplicate_file_names"]``. The image itself
is read from ``Flickr/<entry of the train/test list>``.

Labels (int8, mll_tf convention of docs/labels_and_data.md §1), columns
``[81 concepts (Concepts81.txt order), 925 seen tags (TagList1k.txt order)]``
(GZSL order, unseen first, docs/metrics.md §5):

* concepts: ``Labels_<concept>.txt`` 1 -> 1, 0 -> 0 (human labels);
* seen tags: ``AllTags1k.txt`` 1 -> 1, 0 -> 0. A missing tag is *absent*
  (0), not unknown, as in LESA (its ``label_1k`` is 2·tag − 1 ∈ {−1, +1}).
  The 75 tags that are also concepts are not seen labels (LESA zeroes them).

Images the reference drops are skipped and listed with a reason: a missing
file, a file of at most ``min_file_bytes`` (4000) bytes (Flickr's
"unavailable" stubs), or a file byte-identical to ``placeholder`` (LESA's
``temps/test.jpg``, the "photo unavailable" image; not checked unless given).

Splits: ``val`` = the first ``val_size`` (5000) usable images of
``TrainImagelist.txt`` in file order (LESA: ``take(5000)`` of the train
TFRecord), ``train`` = the remaining usable training images, ``test`` =
the usable images of ``TestImagelist.txt``. A skipped training image is
listed under ``val`` while the validation split is not yet full, else
under ``train``.

Memory and speed: the 0/1 tables are parsed block-wise with NumPy (no
per-value Python objects); ``AllTags1k.txt`` (≈ 540 MB of text) becomes an
int8 ``[269648, 1000]`` array (≈ 270 MB), and the label rows of all records
are views into one int8 ``[N, 1006]`` array per split (≈ 270 MB in all).
Scanning the image files costs one ``stat`` per image (plus one read of the
files whose size equals the placeholder's).
"""

import collections
import os

import numpy as np

from mll_tf.data.adapter import ImageRecord, PreparedDataset
from mll_tf.data.images import decode_image
from mll_tf.data.datasets._registry import register_dataset

DEFAULT_ROOT = "data/NUS_WIDE"

PREPROCESSING = (
    "PIL decode to RGB; shorter side resized to resize_shorter (default size; LESA VGG19: 256 "
    "for 224), bilinear, aspect kept; central size x size crop; uint8 "
    "(mll_tf.data.images.load_rgb_center_crop)")

_IS_SPACE = np.zeros(256, bool)
_IS_SPACE[[ord(c) for c in " \t\r\n\v\f"]] = True
_BLOCK = 8 << 20  # bytes per parsing block


def _file_name(entry):
    """File name of a NUS-WIDE list entry (Windows or POSIX separators)."""
    return entry.replace("\\", "/").rsplit("/", 1)[-1]


def _read_lines(path):
    """Non-empty, stripped lines of a text file (UTF-8, BOM tolerated)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"nus_wide: missing file {path!r} "
                                "(official NUS-WIDE layout expected)")
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        return [(i + 1, s) for i, s in enumerate(line.strip() for line in f) if s]


def read_binary_table(path, num_cols):
    """Parse a whitespace-separated table of single-digit 0/1 values.

    Vectorised (NumPy on 8 MiB blocks of bytes); used for ``AllTags1k.txt``
    (1000 columns) and ``Labels_<concept>.txt`` (1 column). Trailing blank
    lines are ignored.

    Args:
        path: str, the text file.
        num_cols: int, values expected on every row.

    Returns:
        int8 array ``[rows, num_cols]`` with values in {0, 1}.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: naming the file and the 1-based row when a row does not
            hold exactly ``num_cols`` values or a value is not ``0``/``1``
            (also for a blank line followed by more data).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"nus_wide: missing file {path!r}")
    parts = []       # int8 [rows_in_block, num_cols]
    blank_run = []   # 1-based numbers of blank lines not yet followed by data
    line0 = 0        # lines completed before the current block
    carry = b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_BLOCK)
            data = carry + chunk
            if not data:
                break
            if chunk:
                cut = data.rfind(b"\n") + 1
                if cut == 0:   # no newline yet: keep reading
                    carry = data
                    continue
                block, carry = data[:cut], data[cut:]
            else:
                block, carry = data, b""
            if line0 == 0 and block.startswith(b"\xef\xbb\xbf"):
                block = b"   " + block[3:]
            buf = np.frombuffer(block, np.uint8)
            tok = ~_IS_SPACE[buf]
            ends = np.flatnonzero(buf == 10)
            if not block.endswith(b"\n"):
                ends = np.append(ends, len(buf) - 1)
            pos = np.flatnonzero(tok)
            counts = np.diff(np.searchsorted(pos, ends, side="right"), prepend=0)
            bad_tok = np.flatnonzero(tok[1:] & tok[:-1])          # a value of > 1 character
            bad_val = pos[(buf[pos] != 48) & (buf[pos] != 49)]    # not '0' / '1'
            for where in (bad_tok + 1, bad_val):
                if len(where):
                    row = line0 + int(np.searchsorted(ends, where[0])) + 1
                    raise ValueError(f"{path}: row {row}: values must be 0 or 1 separated by "
                                     "whitespace")
            for j in np.flatnonzero(counts != num_cols):
                row = line0 + int(j) + 1
                if counts[j] == 0:
                    blank_run.append(row)
                else:
                    raise ValueError(f"{path}: row {row} has {int(counts[j])} values, "
                                     f"expected {num_cols}")
            full = np.flatnonzero(counts == num_cols)
            if len(full):
                last = line0 + int(full[-1]) + 1
                if blank_run and blank_run[0] < last:
                    raise ValueError(f"{path}: row {blank_run[0]} is blank "
                                     f"(expected {num_cols} values)")
                blank_run = [r for r in blank_run if r > last]
            vals = (buf[pos] - 48).astype(np.int8)
            parts.append(vals.reshape(-1, num_cols))
            line0 += len(ends)
            if not chunk:
                break
    if not parts:
        return np.zeros((0, num_cols), np.int8)
    return np.concatenate(parts)


@register_dataset("nus_wide")
class NUSWIDE:
    """Adapter for NUS-WIDE in LESA's zero-shot protocol (docs/lesa.md §5).

    Args:
        root: str, the NUS-WIDE folder in the official layout (module doc);
            default ``data/NUS_WIDE``.
        val_size: int >= 0, number of usable training images (in
            ``TrainImagelist.txt`` order) that form the ``val`` split.
        placeholder: str or None, path of Flickr's "photo unavailable" image
            (LESA ``temps/test.jpg``); files byte-identical to it are
            skipped. None: not checked (recorded in ``extra``).
        min_file_bytes: int, files of at most this many bytes are skipped
            (reference ``cap_file_size = 4000``).
        image_dir: str, image folder, relative to ``root`` or absolute
            (default ``Flickr``).

    ``prepare()`` returns a :class:`PreparedDataset` with 1006 labels
    ``[81 concepts, 925 seen tags]`` (int8 1/0, see module doc), splits
    ``train``/``val``/``test``, ``image_id`` = image path relative to
    ``root`` (``Flickr/actor/0001_2124494179.jpg``), and ``extra`` keys
    ``label_split`` (``unseen``/``seen``/``unseen_eval`` names), ``eval_k``
    ``[3, 5]``, ``protocol`` ``"lesa_nus_wide"``, ``root`` (absolute),
    ``label_counts_by_split`` (positives per label), ``placeholder``,
    ``duplicate_file_names`` and a few provenance notes.

    Raises (from ``prepare``):
        FileNotFoundError: a metadata file is missing (named).
        ValueError: inconsistent metadata, naming the file and row: a table
            with the wrong number of rows or values, a non-0/1 value, a
            duplicated tag or concept, or a train/test entry whose file name
            is not in ``Imagelist.txt``.
    """

    name = "nus_wide"

    def __init__(self, root=DEFAULT_ROOT, val_size=5000, placeholder=None, min_file_bytes=4000,
                 image_dir="Flickr"):
        self.root = root
        self.val_size = int(val_size)
        self.placeholder = placeholder
        self.min_file_bytes = int(min_file_bytes)
        self.image_dir = image_dir
        if self.val_size < 0:
            raise ValueError(f"nus_wide: val_size must be >= 0, got {val_size}")
        if placeholder is not None and not os.path.isfile(placeholder):
            raise FileNotFoundError(f"nus_wide: placeholder image {placeholder!r} does not exist")

    def _path(self, *parts):
        return os.path.join(self.root, *parts)

    def _label_names(self):
        tag_file = self._path("NUS_WID_Tags", "TagList1k.txt")
        concept_file = self._path("Concepts81.txt")
        tags = [s for _, s in _read_lines(tag_file)]
        concepts = [s for _, s in _read_lines(concept_file)]
        for names, path in ((tags, tag_file), (concepts, concept_file)):
            dup = [n for n, c in collections.Counter(names).items() if c > 1]
            if dup:
                raise ValueError(f"{path}: duplicated names {dup[:10]}")
        concept_set = set(concepts)
        seen_idx = np.array([i for i, t in enumerate(tags) if t not in concept_set], np.int64)
        return tags, concepts, seen_idx

    def _tables(self, tags, concepts):
        list_file = self._path("ImageList", "Imagelist.txt")
        numbered = _read_lines(list_file)
        for k, (line_no, _) in enumerate(numbered):
            if line_no != k + 1:   # row i of the tables is line i of this file
                raise ValueError(f"{list_file}: line {k + 1} is blank")
        all_names = [_file_name(s) for _, s in numbered]
        n = len(all_names)
        row_of = {}
        for i, name in enumerate(all_names):
            row_of[name] = i   # later line wins, as the reference's dict
        tag_file = self._path("NUS_WID_Tags", "AllTags1k.txt")
        tags1k = read_binary_table(tag_file, len(tags))
        if len(tags1k) != n:
            raise ValueError(f"{tag_file}: {len(tags1k)} rows, but {list_file} lists {n} images")
        labels81 = np.zeros((n, len(concepts)), np.int8)
        for j, c in enumerate(concepts):
            f = self._path("AllLabels", f"Labels_{c}.txt")
            col = read_binary_table(f, 1)
            if len(col) != n:
                raise ValueError(f"{f}: {len(col)} rows, but {list_file} lists {n} images "
                                 f"(concept {c!r})")
            labels81[:, j] = col[:, 0]
        return row_of, n - len(row_of), tags1k, labels81

    def _check(self, path, placeholder_bytes):
        """None if usable, else the skip reason."""
        try:
            size = os.stat(path).st_size
        except OSError:
            return "missing file"
        if placeholder_bytes is not None and size == len(placeholder_bytes):
            with open(path, "rb") as f:
                if f.read() == placeholder_bytes:
                    return "placeholder image (byte-identical to the Flickr 'unavailable' image)"
        if size <= self.min_file_bytes:
            return f"file too small ({size} bytes <= {self.min_file_bytes})"
        return None

    def prepare(self):
        """Read the metadata and check the image files; return a :class:`PreparedDataset`."""
        tags, concepts, seen_idx = self._label_names()
        seen = [tags[i] for i in seen_idx]
        row_of, duplicates, tags1k, labels81 = self._tables(tags, concepts)
        placeholder_bytes = None
        if self.placeholder is not None:
            with open(self.placeholder, "rb") as f:
                placeholder_bytes = f.read()
        image_root = self._path(self.image_dir)
        prefix = os.path.relpath(image_root, self.root).replace(os.sep, "/")
        prefix = "" if prefix == "." else prefix + "/"
        kept = {"train": [], "val": [], "test": []}   # (image_id, path, table row)
        skipped = collections.defaultdict(list)
        for list_name, role in (("TrainImagelist.txt", "train"), ("TestImagelist.txt", "test")):
            list_file = self._path("ImageList", list_name)
            for line_no, entry in _read_lines(list_file):
                rel = entry.replace("\\", "/")
                name = rel.rsplit("/", 1)[-1]
                if name not in row_of:
                    raise ValueError(f"{list_file}: line {line_no}: {entry!r} is not in "
                                     "ImageList/Imagelist.txt (matched by file name)")
                image_id = prefix + rel
                path = os.path.join(self.root, image_id)
                split = role
                if role == "train" and len(kept["val"]) < self.val_size:
                    split = "val"
                reason = self._check(path, placeholder_bytes)
                if reason is not None:
                    skipped[split].append({"image_id": image_id, "reason": reason})
                    continue
                kept[split].append((image_id, path, row_of[name]))

        label_names = concepts + seen
        tag_set = set(tags)
        splits, counts = {}, {}
        for split, items in kept.items():
            rows = np.array([r for _, _, r in items], np.int64)
            y = np.concatenate([labels81[rows], tags1k[np.ix_(rows, seen_idx)]], axis=1)
            y = np.ascontiguousarray(y, dtype=np.int8)
            splits[split] = [ImageRecord(i, p, y[k]) for k, (i, p, _) in enumerate(items)]
            counts[split] = dict(zip(label_names, (y == 1).sum(axis=0).astype(int).tolist()))
        extra = {
            "protocol": "lesa_nus_wide",
            "root": os.path.abspath(self.root),
            "label_split": {"unseen": list(concepts), "seen": seen, "unseen_eval": list(concepts)},
            "eval_k": [3, 5],
            "label_counts_by_split": counts,
            "label_source": ("concepts: AllLabels/Labels_<concept>.txt (human, 1/0); seen tags: "
                             "NUS_WID_Tags/AllTags1k.txt (Flickr tags, missing tag = 0 absent); "
                             "columns [81 concepts, 925 seen tags]"),
            "row_mapping": ("train/test list entries -> rows of ImageList/Imagelist.txt, "
                            "AllTags1k.txt and AllLabels by file name (LESA "
                            "extract_full_NUS_WIDE_images_VGG_feature_2_TFRecord.py)"),
            "duplicate_file_names": int(duplicates),
            "concepts_not_in_tags": [c for c in concepts if c not in tag_set],
            "val_size": self.val_size,
            "val_rule": "first val_size usable images of TrainImagelist.txt (LESA take(5000))",
            "min_file_bytes": self.min_file_bytes,
            "placeholder": os.path.abspath(self.placeholder) if self.placeholder else None,
        }
        if self.placeholder is None:
            extra["placeholder_note"] = (
                "placeholder=None: files byte-identical to Flickr's 'photo unavailable' image "
                "(LESA temps/test.jpg, 3344 bytes) were not checked; the size rule "
                f"(<= {self.min_file_bytes} bytes) still drops that image")
        return PreparedDataset(
            name=self.name, label_names=label_names, splits=splits, skipped=dict(skipped),
            load_image=decode_image, preprocessing=PREPROCESSING, extra=extra)
