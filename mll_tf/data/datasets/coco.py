"""MS-COCO 2014 as a multi-label image set (CSL/ASL protocol; IMCL's 1k words).

Layout (the official one, ``root`` is user supplied; nothing is downloaded)::

    <root>/annotations/instances_train2014.json
    <root>/annotations/instances_val2014.json
    <root>/annotations/captions_train2014.json   (vocab="captions" only)
    <root>/annotations/captions_val2014.json     (vocab="captions" only)
    <root>/train2014/<file_name>                 e.g. COCO_train2014_000000000009.jpg
    <root>/val2014/<file_name>

Label vocabularies:

* ``vocab="instances"`` (default, CSL/ASL): the 80 object
  categories. COCO category ids run from 1 to 90 with gaps (ids 12, 26, 29,
  30, 45, 66, 68, 69, 71, 83 are unused); column ``c`` is the ``c``-th
  category sorted by id, named as in the json (``person``, ``bicycle``, ...).
  This is the row order of CSL's ``prior_fpc_1000.csv`` (person first). An
  image is 1 for a class if it has any instance of it, else 0; images without
  any annotation are kept, all negative.
* ``vocab="captions"`` (IMCL's MS-COCO-1k, docs/imcl.md §1): the
  ``caption_vocab_size`` (default 1000) most frequent words of the
  ``captions_train2014.json`` captions. Captions are lower-cased and cut into
  alphanumeric tokens (``[a-z0-9]+``); the function words of
  :data:`STOP_WORDS` are dropped; words are ranked by their number of
  occurrences (ties broken alphabetically). An image is 1 for a word if the
  word occurs in any of its captions, else 0. IMCL used the Fang et al.
  (CVPR 2015, "From captions to visual concepts and back") vocabulary from
  ``coco_extra_labels.zip`` / ``vocab_coco.pkl``, which is not available
  offline. That list was built from the most common words of the training
  captions with its own tokenisation and keeps function words. This one drops
  :data:`STOP_WORDS` and does not merge plurals, so the columns are not the
  same 1000 words and the label counts differ; results are not
  number-for-number comparable with IMCL's.

Splits (as CSL/ASL): ``test`` = val2014; ``train`` = train2014 minus a
deterministic ``val_fraction`` (default 0.05) of it, chosen by the SHA-1 of
the image id (``int(sha1(str(id))[:8], 16) / 2**32 < val_fraction`` -> val).

Image files listed in the json but absent on disk are skipped with the reason
``"missing file"``; decode failures are caught later by the extractor.
"""

import collections
import hashlib
import json
import os
import re

import numpy as np

from mll_tf.data.adapter import ImageRecord, PreparedDataset
from mll_tf.data.images import decode_image
from mll_tf.data.datasets._registry import register_dataset

DEFAULT_ROOT = "data/coco"

#: Function words dropped from the caption vocabulary.
STOP_WORDS = frozenset({
    "a", "an", "the", "and", "or", "of", "on", "in", "at", "to", "with", "for", "from",
    "by", "as", "is", "are", "was", "be", "been", "being", "it", "its", "this", "that",
    "these", "those", "there", "their", "his", "her", "some", "into", "onto", "while",
})

PREPROCESSING = ("PIL decode, RGB, shorter side resized to resize_shorter (default size), "
                 "central size x size crop (mll_tf.data.images.load_rgb_center_crop)")

_TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(caption):
    """Lower-case alphanumeric tokens of a caption (stop words kept)."""
    return _TOKEN.findall(caption.lower())


def load_json(path):
    """Load a COCO annotation json.

    Raises:
        FileNotFoundError: naming ``path``.
        ValueError: naming ``path`` if it is not valid JSON or not an object.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"coco: annotation file {path} not found (official COCO 2014 "
                                "layout: <root>/annotations/*.json)")
    with open(path, "rb") as f:
        try:
            data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"coco: malformed JSON in {path}: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"coco: {path} is not a COCO annotation object")
    return data


def _field(data, key, path):
    if key not in data or not isinstance(data[key], list):
        raise ValueError(f"coco: {path} has no list {key!r}")
    return data[key]


def _images(data, path):
    out = {}
    for im in _field(data, "images", path):
        try:
            out[int(im["id"])] = str(im["file_name"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"coco: {path}: bad image entry {im!r} ({e})") from e
    return out


def _categories(data, path):
    cats = []
    for c in _field(data, "categories", path):
        try:
            cats.append((int(c["id"]), str(c["name"])))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"coco: {path}: bad category entry {c!r} ({e})") from e
    return sorted(cats)


def hash_fraction(image_id):
    """Deterministic number in [0, 1) from an image id (SHA-1 of ``str(id)``)."""
    return int(hashlib.sha1(str(image_id).encode()).hexdigest()[:8], 16) / 2 ** 32


def instance_labels(data, path, images, cat_ids):
    """int8 ``[N, C]`` presence matrix (rows in ``images`` order) from instances.

    Raises:
        ValueError: naming ``path`` for an annotation with an unknown image
            or category id.
    """
    row = {i: r for r, i in enumerate(images)}
    col = {c: j for j, c in enumerate(cat_ids)}
    y = np.zeros((len(images), len(cat_ids)), np.int8)
    for a in _field(data, "annotations", path):
        try:
            r, c = row[int(a["image_id"])], col[int(a["category_id"])]
        except KeyError as e:
            raise ValueError(f"coco: {path}: annotation {a.get('id')!r} refers to unknown "
                             f"image/category id {e}") from e
        y[r, c] = 1
    return y


def caption_words_by_image(data, path, images):
    """dict image id -> set of caption tokens (stop words kept)."""
    words = collections.defaultdict(set)
    for a in _field(data, "annotations", path):
        try:
            iid, cap = int(a["image_id"]), str(a["caption"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"coco: {path}: bad caption entry {a!r} ({e})") from e
        if iid not in images:
            raise ValueError(f"coco: {path}: caption {a.get('id')!r} refers to unknown "
                             f"image id {iid}")
        words[iid].update(tokenize(cap))
    return words


def caption_vocabulary(data, path, size, stop_words=STOP_WORDS):
    """The ``size`` most frequent caption tokens (minus ``stop_words``).

    Returns:
        (list of words ranked by decreasing count then alphabetically,
        dict word -> occurrences, coverage: fraction of all non-stop-word
        token occurrences covered by the list).
    """
    counts = collections.Counter()
    for a in _field(data, "annotations", path):
        counts.update(t for t in tokenize(str(a.get("caption", ""))) if t not in stop_words)
    vocab = sorted(counts, key=lambda w: (-counts[w], w))[:size]
    total = sum(counts.values())
    covered = sum(counts[w] for w in vocab)
    return vocab, {w: int(counts[w]) for w in vocab}, (covered / total if total else 0.0)


@register_dataset("coco")
class COCO2014:
    """Adapter for MS-COCO 2014 (train2014 -> train/val, val2014 -> test).

    Args:
        root: str, folder in the official layout (see the module doc).
        vocab: ``"instances"`` (80 categories in id order) or ``"captions"``
            (``caption_vocab_size`` caption words).
        val_fraction: float in [0, 1), share of train2014 moved to val by
            image-id hash (default 0.05).
        caption_vocab_size: int >= 1 (default 1000), captions vocabulary only.
        stop_words: iterable of str or None (None -> :data:`STOP_WORDS`;
            ``[]`` keeps every word), captions vocabulary only.

    ``prepare()`` returns records with ``image_id = "<train2014|val2014>/<file_name>"``
    and int8 labels in {0, 1}. ``extra`` holds ``root`` (absolute),
    ``label_counts_by_split``, ``vocab``, ``val_fraction``,
    ``images_without_positives_by_split``, and for instances ``category_ids``
    (column order), for captions ``caption_word_counts`` (train occurrences),
    ``caption_token_coverage``, ``stop_words`` and ``images_without_captions_by_split``.

    Raises:
        FileNotFoundError: a missing annotation file (named).
        ValueError: bad options; malformed JSON or entries (the file named);
            train and val category lists that differ.
    """

    name = "coco"

    def __init__(self, root=DEFAULT_ROOT, vocab="instances", val_fraction=0.05,
                 caption_vocab_size=1000, stop_words=None):
        if vocab not in ("instances", "captions"):
            raise ValueError(f"coco: vocab must be 'instances' or 'captions', got {vocab!r}")
        self.root = root
        self.vocab = vocab
        self.val_fraction = float(val_fraction)
        self.caption_vocab_size = int(caption_vocab_size)
        self.stop_words = STOP_WORDS if stop_words is None else frozenset(stop_words)
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"coco: val_fraction must be in [0, 1), got {val_fraction}")
        if self.caption_vocab_size < 1:
            raise ValueError("coco: caption_vocab_size must be >= 1")

    def _ann(self, kind, year_split):
        return os.path.join(self.root, "annotations", f"{kind}_{year_split}.json")

    def prepare(self):
        """Read the annotation files and list the images; see the class doc."""
        root = os.path.abspath(self.root)
        extra = {"root": root, "vocab": self.vocab, "val_fraction": self.val_fraction}
        per_source = {}  # "train2014"/"val2014" -> (images dict, labels [N, C])
        if self.vocab == "instances":
            names = cat_ids = None
            for src in ("train2014", "val2014"):
                path = self._ann("instances", src)
                data = load_json(path)
                cats = _categories(data, path)
                if cat_ids is None:
                    cat_ids, names = [c for c, _ in cats], [n for _, n in cats]
                elif [c for c, _ in cats] != cat_ids:
                    raise ValueError(f"coco: categories of {path} differ from those of "
                                     f"{self._ann('instances', 'train2014')}")
                images = _images(data, path)
                per_source[src] = (images, instance_labels(data, path, images, cat_ids))
                del data
            extra["category_ids"] = cat_ids
            extra["label_source"] = "instances: 1 if any instance of the category, else 0"
        else:
            path = self._ann("captions", "train2014")
            data = load_json(path)
            names, word_counts, coverage = caption_vocabulary(
                data, path, self.caption_vocab_size, self.stop_words)
            col = {w: j for j, w in enumerate(names)}
            no_caption = {}
            for src in ("train2014", "val2014"):
                if src == "val2014":
                    path = self._ann("captions", src)
                    data = load_json(path)
                images = _images(data, path)
                words = caption_words_by_image(data, path, images)
                y = np.zeros((len(images), len(names)), np.int8)
                for r, iid in enumerate(images):
                    y[r, [col[w] for w in words.get(iid, ()) if w in col]] = 1
                per_source[src] = (images, y)
                no_caption[src] = sum(1 for iid in images if iid not in words)
                del data
            extra["caption_word_counts"] = word_counts
            extra["caption_token_coverage"] = coverage
            extra["stop_words"] = sorted(self.stop_words)
            extra["images_without_captions_by_split"] = {
                "train+val": no_caption["train2014"], "test": no_caption["val2014"]}
            extra["label_source"] = ("captions: 1 if the word occurs in any caption of the "
                                     "image, else 0 (not the Fang et al. vocabulary)")

        splits = {"train": [], "val": [], "test": []}
        skipped = {"train": [], "val": [], "test": []}
        for src, (images, y) in per_source.items():
            for r, (iid, file_name) in enumerate(images.items()):
                if src == "val2014":
                    split = "test"
                else:
                    split = "val" if hash_fraction(iid) < self.val_fraction else "train"
                image_id = f"{src}/{file_name}"
                path = os.path.join(root, src, file_name)
                if not os.path.isfile(path):
                    skipped[split].append({"image_id": image_id, "reason": "missing file"})
                    continue
                splits[split].append(ImageRecord(image_id, path, y[r].copy()))
        counts, empty = {}, {}
        for s, recs in splits.items():
            m = np.stack([r.labels for r in recs]) if recs else np.zeros((0, len(names)), np.int8)
            counts[s] = {n: int(v) for n, v in zip(names, m.sum(axis=0, dtype=np.int64).tolist())}
            empty[s] = int(np.sum(m.max(axis=1) == 0)) if len(m) else 0
        extra["label_counts_by_split"] = counts
        extra["images_without_positives_by_split"] = empty
        return PreparedDataset(
            name=self.name, label_names=list(names), splits=splits, skipped=skipped,
            load_image=decode_image, preprocessing=PREPROCESSING, extra=extra)
