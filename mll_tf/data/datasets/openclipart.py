"""Open Clip Art (Debian ``openclipart-svg``): real clip-art with real tags.

Layout: ``<root>/<category>/.../*.svg`` (root ``/usr/share/openclipart/svg``,
8121 SVG files, public domain). Each SVG carries its own keywords in its
metadata as ``<dc:subject><rdf:Bag><rdf:li>tag</rdf:li>...``.
Those tags are the labels. They are noisy and incomplete, like the
Flickr tags NUS-WIDE's 925 seen labels are made of: a missing tag is recorded
as ``0`` (absent), not as unknown, exactly as LESA treats Flickr tags.

What the adapter does, deterministically:

1. Reads every ``*.svg`` under ``root``; files with identical bytes (the
   package ships some drawings under several categories) are kept once, under
   the first path in sorted order, so a drawing never lands in two splits.
2. Normalises tags: lower case, ``_`` -> space, whitespace collapsed, split on
   ``,`` and ``;``; tags without a letter (``"11"``) and the collection
   artefacts in :data:`STOP_TAGS` are dropped.
3. Splits by the SHA-1 of the file bytes: ``h % 100 < test_percent`` -> test,
   next ``val_percent`` -> val, the rest -> train.
4. Keeps as vocabulary the tags on at least ``min_count`` TRAIN images (so the
   test split does not shape the vocabulary), sorted by decreasing count then
   name. Labels are ``1`` if the image has the tag, else ``0``.

Files that cannot be parsed or are empty are skipped and listed with the
reason; render failures are caught later, during extraction.
"""

import collections
import glob
import hashlib
import os
import re
import xml.etree.ElementTree as ET

import numpy as np

from mll_tf.data.adapter import ImageRecord, PreparedDataset
from mll_tf.data.datasets._registry import register_dataset
from mll_tf.data.images import decode_image, render_svg  # noqa: F401  (render_svg: the drawings' renderer)

DEFAULT_ROOT = "/usr/share/openclipart/svg"
_DC = "{http://purl.org/dc/elements/1.1/}"
_RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"

#: Tags that describe the upload or the collection rather than the drawing.
STOP_TAGS = frozenset({
    "hash", "magick", "unsorted", "special", "lemon_theme_icon", "lemon theme icon",
    "architetto francesco rollandin", "clip art", "clipart", "svg", "inkscape",
})

PREPROCESSING = (
    "cairosvg render at output_width=size (aspect kept), composited on white, "
    "padded to a white size x size square (PIL.ImageOps.pad), RGB uint8")


def normalize_tag(tag):
    """Normalise one raw tag; returns a list (a raw tag may hold several).

    ``"Signs_and_Symbols"`` -> ``["signs and symbols"]``;
    ``"rome,italy"`` -> ``["rome", "italy"]``; ``"11"`` -> ``[]``.
    """
    out = []
    for part in re.split(r"[,;]", tag):
        t = re.sub(r"\s+", " ", part.replace("_", " ").strip().lower())
        t = t.strip(" .:'\"()[]")
        if t and re.search(r"[a-z]", t) and t not in STOP_TAGS:
            out.append(t)
    return out


def read_tags(data):
    """Return the set of normalised ``dc:subject`` tags of an SVG document.

    Args:
        data: bytes of the SVG file.

    Raises:
        xml.etree.ElementTree.ParseError: if the XML is malformed.
    """
    root = ET.fromstring(data)
    tags = set()
    for subject in root.iter(_DC + "subject"):
        for li in subject.iter(_RDF + "li"):
            if li.text:
                tags.update(normalize_tag(li.text))
    return tags


@register_dataset("openclipart")
class OpenClipArt:
    """Adapter for the Debian ``openclipart-svg`` collection.

    Args:
        root: str, folder holding the SVG tree (default
            ``/usr/share/openclipart/svg``).
        min_count: int >= 1, a tag joins the vocabulary if it is on at least
            this many train images.
        test_percent, val_percent: ints in [0, 100), split sizes in percent
            of the unique drawings.

    Raises:
        FileNotFoundError: if ``root`` holds no SVG file (names the apt
            package to install).
    """

    name = "openclipart"

    def __init__(self, root=DEFAULT_ROOT, min_count=20, test_percent=20, val_percent=10):
        self.root = root
        self.min_count = int(min_count)
        self.test_percent = int(test_percent)
        self.val_percent = int(val_percent)
        if self.min_count < 1 or not 0 <= self.test_percent + self.val_percent < 100:
            raise ValueError("openclipart: need min_count >= 1 and 0 <= test+val percent < 100")

    def _split_of(self, digest):
        h = int(digest[:8], 16) % 100
        if h < self.test_percent:
            return "test"
        if h < self.test_percent + self.val_percent:
            return "val"
        return "train"

    def prepare(self):
        """Scan the SVG tree; return a :class:`PreparedDataset`."""
        files = sorted(glob.glob(os.path.join(self.root, "**", "*.svg"), recursive=True))
        if not files:
            raise FileNotFoundError(
                f"openclipart: no .svg file under {self.root!r}; install the Debian package "
                "'openclipart-svg' (apt-get install openclipart-svg) or pass --data-root")
        seen_digest = {}
        items = []  # (image_id, path, split, tags)
        skipped = collections.defaultdict(list)
        duplicates = 0
        for path in files:
            image_id = os.path.relpath(path, self.root)
            with open(path, "rb") as f:
                data = f.read()
            digest = hashlib.sha1(data).hexdigest()
            split = self._split_of(digest)
            if digest in seen_digest:
                duplicates += 1
                continue
            seen_digest[digest] = image_id
            if not data:
                skipped[split].append({"image_id": image_id, "reason": "empty file"})
                continue
            try:
                tags = read_tags(data)
            except ET.ParseError as e:
                skipped[split].append({"image_id": image_id, "reason": f"unreadable SVG: {e}"})
                continue
            items.append((image_id, path, split, tags))

        counts = collections.Counter(t for _, _, s, tags in items if s == "train" for t in tags)
        vocab = sorted((t for t, c in counts.items() if c >= self.min_count),
                       key=lambda t: (-counts[t], t))
        index = {t: i for i, t in enumerate(vocab)}
        splits = {"train": [], "val": [], "test": []}
        for image_id, path, split, tags in items:
            y = np.zeros(len(vocab), np.int8)
            y[[index[t] for t in tags if t in index]] = 1
            splits[split].append(ImageRecord(image_id, path, y))
        split_counts = {
            s: {t: int(c) for t, c in zip(vocab, np.sum([r.labels for r in recs], axis=0).tolist())}
            if recs else {t: 0 for t in vocab}
            for s, recs in splits.items()}
        extra = {
            "root": self.root,
            "min_count": self.min_count,
            "test_percent": self.test_percent,
            "val_percent": self.val_percent,
            "stop_tags": sorted(STOP_TAGS),
            "duplicate_files_dropped": duplicates,
            "label_counts_by_split": split_counts,
            "label_source": "SVG <dc:subject> tags; a missing tag is 0 (absent)",
        }
        return PreparedDataset(
            name=self.name, label_names=vocab, splits=splits, skipped=dict(skipped),
            load_image=decode_image, preprocessing=PREPROCESSING, extra=extra)
