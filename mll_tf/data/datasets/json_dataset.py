"""Multi-label datasets in DOR-ML's json format (docs/labels_and_data.md §3).

Layout: ``<root>/{train,val,test}.json`` (whichever exist, at least one),
each::

    {"classes": ["dog", "cat", ...],
     "images": [["images/0001.jpg", ["dog", "dog", "person"]], ...]}

with image paths relative to ``root`` (DOR-ML reads them relative to the
folder of the json file: openvinotoolkit/deep-object-reid, branch
``multilabel``, ``torchreid/data/datasets/image/classification.py``,
``MultiLabelClassification.load_annotation``).

As DOR-ML: the label columns are the **sorted** class names (numbers sort
numerically, as in VG500's integer classes; ``label_names`` are their
``str``), a listed label is 1 (repeats, one per object, count once), every
other label is 0, and an image without labels is all-negative. Unlike
DOR-ML, which silently drops a label that is not a class, that is an error
here, and all split files must have the same class set.

The original's committed and documented splits read as they are (checked on
fixtures in each layout, ``tests/data/test_json_dataset.py``): VOC-07
(``data/000005.jpg``, one label per object, 20 classes), NUS-WIDE
(``images/<id>_m.jpg``, the 81 concepts in the file's own unsorted order,
images without labels), VG-500 (integer classes 0..499 and integer labels)
and COCO-14 (category names with spaces). Those splits ship ``train.json``
and ``val.json`` only.

Paths are confined to ``root``: an absolute path, or one whose
``os.path.realpath`` (symlinks resolved) is outside ``root``, is an error.
Each path is normalised relative to ``root`` (``os.path.normpath`` of
``root/path``, made relative again, ``/`` separators) before anything else,
so ``images/a.jpg``, ``images/./a.jpg``, ``images//a.jpg`` and
``images/x/../a.jpg`` are one image, and the normalised path is the
``image_id``. A missing image file is skipped with reason ``"missing file"``;
a path repeated within a file (after normalisation) keeps its first entry,
later ones are skipped with reason ``"repeated entry (first at image k)"``.
Symlinks are not resolved for this check: two names of one file are two
images.
"""

import collections
import json
import os

import numpy as np

from mll_tf.data.adapter import ImageRecord, PreparedDataset
from mll_tf.data.images import decode_image
from mll_tf.data.datasets._registry import register_dataset

DEFAULT_ROOT = None
SPLITS = ("train", "val", "test")

PREPROCESSING = (
    "PIL decode to RGB; shorter side resized to resize_shorter (default size), bilinear, "
    "aspect kept; central size x size crop; uint8 (mll_tf.data.images.load_rgb_center_crop)")


def _check_classes(classes, path):
    if not isinstance(classes, list) or not classes:
        raise ValueError(f"{path}: 'classes' must be a non-empty list")
    kinds = set()
    for c in classes:
        if isinstance(c, bool) or not isinstance(c, (str, int)):
            raise ValueError(f"{path}: class {c!r} is not a string or an integer")
        kinds.add(type(c))
    if len(kinds) > 1:
        raise ValueError(f"{path}: 'classes' mixes strings and integers")
    dup = [c for c, n in collections.Counter(classes).items() if n > 1]
    if dup:
        raise ValueError(f"{path}: repeated classes {dup[:10]}")
    return sorted(classes)


def _load(path):
    try:
        with open(path, encoding="utf-8-sig") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(data, dict) or "classes" not in data or "images" not in data:
        raise ValueError(f"{path}: expected an object with 'classes' and 'images'")
    if not isinstance(data["images"], list):
        raise ValueError(f"{path}: 'images' must be a list of [path, [labels]]")
    return data


@register_dataset("json")
class JSONDataset:
    """Adapter for DOR-ML json annotations (docs/labels_and_data.md §3).

    Args:
        root: str, folder holding ``train.json`` / ``val.json`` /
            ``test.json`` and the images (required; there is no default).
        splits: iterable of split names or None; None reads whichever of
            ``train``, ``val``, ``test`` exist. A requested split whose file
            is missing is an error.

    ``prepare()`` returns a :class:`PreparedDataset`: ``label_names`` = the
    sorted classes as str, records with int8 labels ``[C]`` in {1, 0}
    (no unknowns), ``image_id`` = the relative path from the json file,
    normalised (``os.path.normpath``, ``/`` separators), and
    ``extra`` keys ``root`` (absolute), ``protocol`` ``"dor_ml_json"``,
    ``files`` (split -> json file name), ``label_counts_by_split``,
    ``images_without_labels`` (split -> count) and
    ``images_in_several_splits`` (count).

    Raises:
        ValueError: no root given; naming the file (and image index) for
            invalid JSON or structure, a class set that differs from another
            file's, a label that is not a class, or a path that is absolute
            or resolves outside ``root``.
        FileNotFoundError: ``root`` holds none of the json files, or a
            requested split's file is missing.
    """

    name = "json"

    def __init__(self, root=DEFAULT_ROOT, splits=None):
        if not root:
            raise ValueError("json: no dataset root; pass root= (--data-root DIR holding "
                             "train.json / val.json / test.json)")
        self.root = root
        self.splits = None if splits is None else tuple(splits)
        if self.splits is not None:
            bad = [s for s in self.splits if s not in SPLITS]
            if bad or not self.splits:
                raise ValueError(f"json: splits must be a non-empty subset of {list(SPLITS)}, "
                                 f"got {list(splits)}")

    def _files(self):
        if self.splits is None:
            found = {s: os.path.join(self.root, s + ".json") for s in SPLITS
                     if os.path.isfile(os.path.join(self.root, s + ".json"))}
            if not found:
                raise FileNotFoundError(f"json: none of {[s + '.json' for s in SPLITS]} in "
                                        f"{self.root!r}")
            return found
        files = {s: os.path.join(self.root, s + ".json") for s in self.splits}
        for s, p in files.items():
            if not os.path.isfile(p):
                raise FileNotFoundError(f"json: split {s!r} requested but {p!r} does not exist")
        return files

    def _relative(self, rel, path, k, real_root):
        if not isinstance(rel, str) or not rel.strip():
            raise ValueError(f"{path}: image {k}: path {rel!r} is not a non-empty string")
        drive = rel[:1].isalpha() and rel[1:2] == ":"
        if os.path.isabs(rel) or rel.startswith(("/", "\\")) or drive:
            raise ValueError(f"{path}: image {k}: absolute path {rel!r}; paths must be relative "
                             "to the dataset root")
        abs_root = os.path.abspath(self.root)
        norm = os.path.relpath(os.path.normpath(os.path.join(abs_root, rel)), abs_root)
        full = os.path.join(self.root, norm)
        real = os.path.realpath(full)
        if (norm == os.pardir or norm.startswith(os.pardir + os.sep)
                or os.path.commonpath([real, real_root]) != real_root):
            raise ValueError(f"{path}: image {k}: path {rel!r} resolves outside the dataset root "
                             f"({real})")
        return norm.replace(os.sep, "/"), full

    def prepare(self):
        """Read the json files; return a :class:`PreparedDataset`."""
        files = self._files()
        real_root = os.path.realpath(self.root)
        loaded = {s: _load(p) for s, p in files.items()}
        classes, first = None, None
        for s, data in loaded.items():
            cls = _check_classes(data["classes"], files[s])
            if classes is None:
                classes, first = cls, files[s]
            elif cls != classes:
                extra_, missing = sorted(set(cls) - set(classes), key=str), \
                    sorted(set(classes) - set(cls), key=str)
                raise ValueError(f"{files[s]}: class set differs from {first} (extra "
                                 f"{extra_[:10]}, missing {missing[:10]})")
        column = {c: i for i, c in enumerate(classes)}
        label_names = [str(c) for c in classes]
        if len(set(label_names)) != len(label_names):
            raise ValueError(f"{first}: classes collide when written as strings")

        splits, skipped, counts, unlabelled = {}, {}, {}, {}
        where = collections.defaultdict(set)
        for s, data in loaded.items():
            path = files[s]
            items, skips, seen_at = [], [], {}
            for k, entry in enumerate(data["images"]):
                if not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[1], list):
                    raise ValueError(f"{path}: image {k}: expected [path, [labels]], got "
                                     f"{str(entry)[:80]}")
                rel, labels = entry
                norm, full = self._relative(rel, path, k, real_root)
                cols = []
                for lab in labels:
                    ok = isinstance(lab, (str, int)) and not isinstance(lab, bool)
                    if not ok or lab not in column:
                        raise ValueError(f"{path}: image {k} ({rel}): label {lab!r} is not in "
                                         "'classes'")
                    cols.append(column[lab])
                if norm in seen_at:
                    skips.append({"image_id": norm,
                                  "reason": f"repeated entry (first at image {seen_at[norm]})"})
                    continue
                seen_at[norm] = k
                if not os.path.isfile(full):
                    skips.append({"image_id": norm, "reason": "missing file"})
                    continue
                items.append((norm, full, cols))
                where[norm].add(s)
            y = np.zeros((len(items), len(classes)), np.int8)
            for i, (_, _, cols) in enumerate(items):
                y[i, cols] = 1
            splits[s] = [ImageRecord(rel, full, y[i]) for i, (rel, full, _) in enumerate(items)]
            if skips:
                skipped[s] = skips
            counts[s] = dict(zip(label_names, y.sum(axis=0, dtype=np.int64).tolist()))
            unlabelled[s] = int((y.sum(axis=1) == 0).sum())
        extra = {
            "protocol": "dor_ml_json",
            "root": os.path.abspath(self.root),
            "files": {s: os.path.basename(p) for s, p in files.items()},
            "label_counts_by_split": counts,
            "label_source": ("DOR-ML json: columns = sorted classes; a listed label is 1, "
                             "every other label 0 (an image without labels is all-negative)"),
            "images_without_labels": unlabelled,
            "images_in_several_splits": sum(1 for v in where.values() if len(v) > 1),
        }
        return PreparedDataset(
            name=self.name, label_names=label_names, splits=splits, skipped=skipped,
            load_image=decode_image, preprocessing=PREPROCESSING, extra=extra)
