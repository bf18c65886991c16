"""CUB-200-2011 with its 312 binary attributes as labels (IMCL, docs/imcl.md §1).

Official layout (``CUB_200_2011.tgz`` extracted into ``root``)::

    attributes.txt                      <id> <name>, e.g. "1 has_bill_shape::curved_(up_or_down)"
                                        (top level of the tarball, next to CUB_200_2011/)
    CUB_200_2011/images.txt             <image_id> <relative path under images/>
    CUB_200_2011/train_test_split.txt   <image_id> <is_training_image: 1|0>
    CUB_200_2011/attributes/image_attribute_labels.txt
                                        <image_id> <attribute_id> <is_present> <certainty_id> <time>
    CUB_200_2011/images/<species folder>/<file>.jpg

``root`` may also be the ``CUB_200_2011`` folder itself. The attribute names
are looked up, in order, at ``CUB_200_2011/attributes/attributes.txt`` (where
IMCL's ``global_setting_CUB.py`` and the dataset README put them),
``<parent of CUB_200_2011>/attributes.txt`` (the tarball) and
``CUB_200_2011/attributes.txt``; ``attributes_file`` overrides the search.

Labels (mll_tf convention): ``1`` if ``is_present`` else ``0``. A small number
of rows of the real ``image_attribute_labels.txt`` have six fields instead of
five; the first four fields (image, attribute, is_present, certainty) are
read from every row and the rows are counted in
``extra["rows_with_6_fields"]``. Entries with ``certainty_id <
min_certainty`` (certainties: 1 not visible, 2 guessing, 3 probably,
4 definitely) become ``-1`` (unknown); the default ``min_certainty=1`` keeps
every answer, as IMCL does. An (image, attribute) pair without a row is
``-1``; a pair given twice keeps the positive answer (counted).

Text encoding: the metadata files are read as UTF-8 (the official release
is ASCII) unless the option ``encoding`` names another codec
(``--dataset-options encoding=latin-1``); bytes that do not decode raise
``ValueError`` naming the file, the line and the option.

Splits: ``test`` = ``is_training_image == 0``; the training images are split
by the SHA-1 of their relative path: ``int(sha1[:8], 16) / 2**32 <
val_fraction`` -> ``val``, the rest -> ``train`` (deterministic, about
``val_fraction`` of them).

Partial labels (``label_fraction`` in (0, 1]): of the observed (!= -1) entries
of the TRAIN split, exactly ``floor(label_fraction * n + 0.5)`` are kept,
drawn uniformly without replacement over entries (not per image) by
``numpy.random.default_rng(seed)``; the others become ``-1``. val and test keep
all labels. IMCL's CUB runs read pre-masked TFRecords (``zs_mask_train_CUB_img
.tfrecords``, one mask per fraction 0.1-1) whose generating script is not
published, so per-entry uniform sampling is this library's choice. Note that
those file names suggest the zero-shot ("zs") proposed split of CUB rather
than ``train_test_split.txt``; that split file is not part of this layout.
"""

import collections
import hashlib
import os
import re

import numpy as np

from mll_tf.data.adapter import ImageRecord, PreparedDataset
from mll_tf.data.images import decode_image
from mll_tf.data.datasets._registry import register_dataset
from mll_tf.data.datasets.attributes_csv import check_encoding, decode_error

DEFAULT_ROOT = "data/CUB"

PREPROCESSING = (
    "PIL decode -> RGB -> shorter side resized to resize_shorter (default: size), "
    "bilinear, aspect kept -> central size x size crop, uint8 "
    "(mll_tf.data.images.load_rgb_center_crop)")


def load_image(path, size, resize_shorter=None):
    """Decode one CUB image to RGB ``uint8 [size, size, 3]`` (picklable).

    Raises:
        ValueError: empty file. PIL.UnidentifiedImageError / OSError:
            unreadable image.
    """
    return decode_image(path, size, resize_shorter=resize_shorter)


def attribute_text(name):
    """Words for an attribute name, for word vectors.

    ``"has_bill_shape::curved_(up_or_down)"`` -> ``"bill shape curved up or
    down"``; ``"has_size::small_(5_-_9_in)"`` -> ``"size small 5 9 in"``;
    ``"has_wing_shape::rounded-wings"`` -> ``"wing shape rounded wings"``.
    """
    t = name[4:] if name.startswith("has_") else name
    t = re.sub(r"::|[_()\-]", " ", t)
    return re.sub(r"\s+", " ", t).strip()


def _read_id_table(path, what, n_fields=2, encoding="utf-8"):
    """Read ``<int id> <value>`` lines -> dict id -> value (str).

    Raises:
        FileNotFoundError / ValueError naming the file and line (also for
        bytes that are not valid in ``encoding``, naming the option).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"cub: {what} not found: {path!r}")
    encoding = check_encoding(encoding, "cub")
    try:
        return _read_id_lines(path, what, n_fields, encoding)
    except UnicodeDecodeError as e:
        raise decode_error(path, encoding, e, "cub") from None


def _read_id_lines(path, what, n_fields, encoding):
    out = {}
    with open(path, encoding=encoding) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.split(None, n_fields - 1)
            if len(parts) != n_fields or not parts[0].isdigit():
                raise ValueError(
                    f"{path}: line {lineno}: expected '<id> <{what}>', got {line.rstrip()!r}")
            key = int(parts[0])
            if key in out:
                raise ValueError(f"{path}: line {lineno}: id {key} listed twice")
            out[key] = parts[1].strip()
    if not out:
        raise ValueError(f"{path}: empty {what} file")
    return out


def read_image_attribute_labels(path, image_index, num_attributes, min_certainty=1,
                                encoding="utf-8"):
    """Read ``image_attribute_labels.txt`` into a dense label matrix.

    Args:
        path: str.
        image_index: dict CUB image id -> row index.
        num_attributes: int A (columns; attribute ids are 1..A).
        min_certainty: int in 1..4; answers below it are left unknown.
        encoding: str, text encoding (default UTF-8).

    Returns:
        ``(labels, stats)``: int8 ``[len(image_index), A]`` in {1, 0, -1}
        and a dict of ints ``rows``, ``rows_with_6_fields``,
        ``duplicate_rows``, ``conflicting_pairs``,
        ``below_min_certainty``, ``missing_pairs``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: naming the file and line for a row with fewer than five
            or more than six fields, a non-integer field, an unknown image or
            attribute id, ``is_present`` not 0/1 or a certainty outside 1..4;
            naming the file, line and the ``encoding=`` option for bytes that
            do not decode.
    """
    import pandas as pd

    if not os.path.isfile(path):
        raise FileNotFoundError(f"cub: image attribute labels not found: {path!r}")
    encoding = check_encoding(encoding, "cub")
    try:
        with open(path, encoding=encoding) as f:
            first = f.readline().split()
    except UnicodeDecodeError as e:
        raise decode_error(path, encoding, e, "cub") from None
    if len(first) > 6:  # pandas would silently take extra leading fields of line 1 as an index
        raise ValueError(f"{path}: line 1: expected 5 or 6 fields, got {len(first)}")
    try:
        df = pd.read_csv(path, sep=r"\s+", header=None, names=list(range(6)), index_col=False,
                         dtype="float32", encoding=encoding)
    except UnicodeDecodeError as e:
        raise decode_error(path, encoding, e, "cub") from None
    except (pd.errors.ParserError, ValueError) as e:
        raise ValueError(
            f"{path}: malformed attribute labels (need 5 or 6 fields per row): {e}") from e
    cols = [df[i].to_numpy() for i in range(4)]
    img, att, present, cert = cols
    n = len(df)
    max_id = max(image_index) if image_index else 0
    lut = np.full(max_id + 2, -1, np.int64)
    for k, v in image_index.items():
        lut[k] = v
    finite = np.isfinite(img) & np.isfinite(att) & np.isfinite(present) & np.isfinite(cert) \
        & np.isfinite(df[4].to_numpy())
    integral = finite & (np.floor(img) == img) & (np.floor(att) == att) & (np.floor(cert) == cert)
    img_i = np.where(integral, img, -1).astype(np.int64)
    row = np.where((img_i >= 1) & (img_i <= max_id), lut[np.clip(img_i, 0, max_id + 1)], -1)
    att_i = np.where(integral, att, 0).astype(np.int64)
    checks = [
        (~finite, "expected '<image_id> <attribute_id> <is_present> <certainty_id> <time>'"),
        (~integral, "image, attribute and certainty ids must be integers"),
        (row < 0, "unknown image id (not in images.txt)"),
        ((att_i < 1) | (att_i > num_attributes), f"attribute id outside 1..{num_attributes}"),
        (~np.isin(present, (0, 1)), "is_present must be 0 or 1"),
        (~np.isin(cert, (1, 2, 3, 4)), "certainty_id must be in 1..4"),
    ]
    for bad, msg in checks:
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            vals = [df[c].iloc[i] for c in range(6)]
            shown = " ".join("" if v != v else (str(int(v)) if float(v).is_integer() else str(v))
                             for v in vals).strip()
            raise ValueError(f"{path}: line {i + 1}: {msg}; got {shown!r}")
    labels = np.full((len(image_index), num_attributes), -1, np.int8)
    ok = cert >= min_certainty
    r, a, p = row[ok], att_i[ok] - 1, present[ok].astype(np.int8)
    np.maximum.at(labels, (r, a), p)
    key = row * num_attributes + (att_i - 1)
    uniq = np.unique(key)
    # conflicting pairs: both 0 and 1 given for the same (image, attribute)
    key_pos = np.unique(key[present == 1])
    key_neg = np.unique(key[present == 0])
    stats = {
        "rows": int(n),
        "rows_with_6_fields": int(np.isfinite(df[5].to_numpy()).sum()),
        "duplicate_rows": int(n - len(uniq)),
        "conflicting_pairs": int(len(np.intersect1d(key_pos, key_neg, assume_unique=True))),
        "below_min_certainty": int((~ok).sum()),
        "missing_pairs": int(len(image_index) * num_attributes - len(uniq)),
    }
    return labels, stats


@register_dataset("cub")
class CUB:
    """Adapter for CUB-200-2011 with the 312 binary attributes as labels.

    Args:
        root: str, folder holding ``CUB_200_2011/`` (and the tarball's
            top-level ``attributes.txt``), or the ``CUB_200_2011`` folder
            itself (default ``data/CUB``).
        attributes_file: optional str, path of ``attributes.txt`` (relative
            paths are resolved against ``root``); default: searched as in the
            module docstring.
        val_fraction: float in [0, 1), share of the official training images
            moved to ``val`` by hash (default 0.1).
        label_fraction: float in (0, 1], share of the observed TRAIN entries
            kept (default 1.0: all).
        seed: int, seed of the ``label_fraction`` sampling (default 0).
        min_certainty: int in 1..4, answers with a lower certainty are
            unknown (default 1: all answers used).
        encoding: str, text encoding of the metadata files (default
            ``"utf-8"``, a BOM allowed).

    ``prepare()`` returns a :class:`~mll_tf.data.adapter.PreparedDataset`:
    ``label_names`` = the A attribute names in id order (312 in the official
    release); splits ``train``/``val``/``test`` of ``ImageRecord``
    (``image_id`` = the path from ``images.txt``, ``labels`` int8 ``[A]``
    in {1, 0, -1}), ordered by CUB image id; images whose file is missing or
    empty are skipped with reason ``"missing image file"`` / ``"empty
    file"``. ``extra`` keys: ``root``, ``cub_dir``, ``attributes_file``,
    ``label_text`` and ``attribute_text`` (words per attribute, parallel to
    ``label_names``), ``label_counts_by_split`` /
    ``negative_counts_by_split`` ({split: {name: count}}),
    ``observed_by_split`` (entries != -1), ``label_fraction``, ``seed``,
    ``train_entries_masked``, ``val_fraction``, ``min_certainty``,
    ``attribute_file_stats`` (see :func:`read_image_attribute_labels`),
    ``skipped_counts``, ``label_source``.

    Raises:
        FileNotFoundError: naming the missing root, metadata file or
            attribute-name file (with every place searched).
        ValueError: naming the file and line of a malformed metadata row or
            of bytes that are not valid in ``encoding`` (and the
            ``encoding=`` option); or for options out of range or an
            unknown encoding.
    """

    name = "cub"

    def __init__(self, root=DEFAULT_ROOT, attributes_file=None, val_fraction=0.1,
                 label_fraction=1.0, seed=0, min_certainty=1, encoding="utf-8"):
        self.root = root
        self.encoding = encoding
        check_encoding(encoding, "cub")
        self.attributes_file = attributes_file
        self.val_fraction = float(val_fraction)
        self.label_fraction = float(label_fraction)
        self.seed = int(seed)
        self.min_certainty = int(min_certainty)
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"cub: val_fraction must be in [0, 1), got {val_fraction}")
        if not 0.0 < self.label_fraction <= 1.0:
            raise ValueError(f"cub: label_fraction must be in (0, 1], got {label_fraction}")
        if self.min_certainty not in (1, 2, 3, 4):
            raise ValueError(f"cub: min_certainty must be in 1..4, got {min_certainty}")

    def _locate(self):
        root = os.path.abspath(self.root)
        if os.path.isfile(os.path.join(root, "images.txt")):
            cub_dir = root
        elif os.path.isfile(os.path.join(root, "CUB_200_2011", "images.txt")):
            cub_dir = os.path.join(root, "CUB_200_2011")
        else:
            raise FileNotFoundError(
                f"cub: no images.txt in {root!r} or {os.path.join(root, 'CUB_200_2011')!r}; "
                "extract CUB_200_2011.tgz there or pass root")
        if self.attributes_file is not None:
            p = self.attributes_file
            p = p if os.path.isabs(p) else os.path.join(root, p)
            candidates = [p]
        else:
            candidates = [os.path.join(cub_dir, "attributes", "attributes.txt"),
                          os.path.join(os.path.dirname(cub_dir), "attributes.txt"),
                          os.path.join(cub_dir, "attributes.txt")]
        for c in candidates:
            if os.path.isfile(c):
                return root, cub_dir, c
        raise FileNotFoundError(
            f"cub: attribute names (attributes.txt) not found; looked at {candidates}")

    def _split_of(self, rel_path, is_train):
        if not is_train:
            return "test"
        h = int(hashlib.sha1(rel_path.encode("utf-8")).hexdigest()[:8], 16) / 2 ** 32
        return "val" if h < self.val_fraction else "train"

    def prepare(self):
        """Read the metadata and attribute labels; return a
        :class:`~mll_tf.data.adapter.PreparedDataset` (see the class docstring).
        """
        root, cub_dir, attr_path = self._locate()
        enc = self.encoding
        images = _read_id_table(os.path.join(cub_dir, "images.txt"), "image path", encoding=enc)
        split_path = os.path.join(cub_dir, "train_test_split.txt")
        is_train = _read_id_table(split_path, "is_training_image", encoding=enc)
        attrs = _read_id_table(attr_path, "attribute name", encoding=enc)
        ids = sorted(attrs)
        if ids != list(range(1, len(ids) + 1)):
            raise ValueError(f"{attr_path}: attribute ids must be 1..{len(ids)} without gaps")
        names = [attrs[i] for i in ids]
        for k, v in is_train.items():
            if v not in ("0", "1"):
                raise ValueError(
                    f"{split_path}: image {k}: is_training_image must be 0 or 1, got {v!r}")
        missing = sorted(set(images) - set(is_train))
        if missing:
            raise ValueError(f"{split_path}: no entry for image id(s) {missing[:5]} "
                             f"({len(missing)} of images.txt)")
        image_ids = sorted(images)
        index = {k: i for i, k in enumerate(image_ids)}
        labels, stats = read_image_attribute_labels(
            os.path.join(cub_dir, "attributes", "image_attribute_labels.txt"),
            index, len(names), self.min_certainty, encoding=enc)

        image_root = os.path.join(cub_dir, "images")
        rows = {"train": [], "val": [], "test": []}
        skipped = collections.defaultdict(list)
        reasons = collections.defaultdict(collections.Counter)
        for k in image_ids:
            rel = images[k]
            split = self._split_of(rel, is_train[k] == "1")
            path = os.path.join(image_root, rel)
            if not os.path.isfile(path):
                reason = "missing image file"
            elif os.path.getsize(path) == 0:
                reason = "empty file"
            else:
                rows[split].append(index[k])
                continue
            skipped[split].append({"image_id": rel, "reason": reason})
            reasons[split][reason] += 1

        masked = 0
        if self.label_fraction < 1.0 and rows["train"]:
            tr = np.asarray(rows["train"], np.int64)
            block = labels[tr]
            obs = np.flatnonzero(block.ravel() >= 0)
            n_keep = int(np.floor(self.label_fraction * len(obs) + 0.5))
            keep = np.random.default_rng(self.seed).choice(len(obs), size=n_keep, replace=False)
            drop = np.ones(len(obs), bool)
            drop[keep] = False
            flat = block.ravel()
            flat[obs[drop]] = -1
            labels[tr] = flat.reshape(block.shape)
            masked = int(drop.sum())

        splits, pos_by, neg_by, obs_by = {}, {}, {}, {}
        for split, idx in rows.items():
            splits[split] = [
                ImageRecord(images[image_ids[i]], os.path.join(image_root, images[image_ids[i]]),
                            labels[i].copy())
                for i in idx]
            block = labels[np.asarray(idx, np.int64)] if idx else np.zeros((0, len(names)), np.int8)
            pos_by[split] = {n: int(c) for n, c in zip(names, (block == 1).sum(0).tolist())}
            neg_by[split] = {n: int(c) for n, c in zip(names, (block == 0).sum(0).tolist())}
            obs_by[split] = int((block >= 0).sum())
        text = [attribute_text(n) for n in names]
        extra = {
            "root": root,
            "cub_dir": cub_dir,
            "attributes_file": attr_path,
            "label_text": text,
            "attribute_text": text,
            "label_counts_by_split": pos_by,
            "negative_counts_by_split": neg_by,
            "observed_by_split": obs_by,
            "label_fraction": self.label_fraction,
            "seed": self.seed,
            "train_entries_masked": masked,
            "val_fraction": self.val_fraction,
            "min_certainty": self.min_certainty,
            "attribute_file_stats": stats,
            "skipped_counts": {s: dict(c) for s, c in reasons.items()},
            "label_source": ("attributes/image_attribute_labels.txt: is_present 1 -> 1, 0 -> 0; "
                             "no row, certainty < min_certainty or masked by label_fraction -> -1"),
        }
        return PreparedDataset(
            name=self.name, label_names=names, splits=splits, skipped=dict(skipped),
            load_image=load_image, preprocessing=PREPROCESSING, extra=extra)
