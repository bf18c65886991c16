"""PASCAL VOC 2012 (or 2007) as a multi-label image set, from the official devkit layout.

Layout (``root`` is user supplied; nothing is downloaded)::

    <root>/JPEGImages/<id>.jpg
    <root>/Annotations/<id>.xml            <object><name>dog</name><difficult>0</difficult>...
    <root>/ImageSets/Main/train.txt        one id per line (also val.txt, trainval.txt)
    <root>/ImageSets/Segmentation/val.txt  (Puzzle-CAM's seg val / test lists)

``root`` may also be the folder above ``VOC2012/`` (``VOCdevkit``).

Labels: the set of object ``name``s in the image's XML (Puzzle-CAM
``core/datasets.py``); ``difficult`` objects are KEPT (``keep_difficult``,
default True, as Puzzle-CAM); 1 present, 0 absent (complete, never -1).
Columns: the 20 classes in Puzzle-CAM's ``data/VOC_2012.json`` order
(:data:`CLASS_NAMES`, alphabetical).

Splits (docs/oass.md sec. 4): ``train`` = the ``train_list`` ids minus a
deterministic ``val_fraction`` (default 0.05, chosen by the SHA-1 of the id)
that forms ``val`` (checkpoint selection); ``test`` = the ``test_list`` ids. A
list is a name under ``ImageSets`` (``Main/train``, ``Segmentation/val``) or
the path of a text file of ids, e.g. Puzzle-CAM's ``data/train_aug.txt``
(10,582 ids of VOC 2012 + SBD). Defaults: train ``Main/train``, test
``Main/val`` (leak-free). A train list that shares ids with the test list
(e.g. ``train_aug`` with ``Main/val``: SBD comes from VOC2011 trainval) is
refused, naming both lists.

Ids whose XML or JPEG is missing are skipped with the reason (``train_aug``
ids without an XML in a plain VOC2012 folder, for instance). The same data is
also readable through TFDS as ``--dataset tfds:voc/2012``.
"""

import hashlib
import os
import xml.etree.ElementTree as ET

import numpy as np

from mll_tf.data.adapter import ImageRecord, PreparedDataset
from mll_tf.data.datasets._registry import register_dataset
from mll_tf.data.images import decode_image

__all__ = ["CLASS_NAMES", "VOC", "parse_annotation", "read_id_list"]

DEFAULT_ROOT = "data/VOCdevkit/VOC2012"

#: Puzzle-CAM ``data/VOC_2012.json`` class order.
CLASS_NAMES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor"]

PREPROCESSING = ("PIL decode, RGB, shorter side resized to resize_shorter (default size), "
                 "central size x size crop (mll_tf.data.images.load_rgb_center_crop)")


def parse_annotation(path, keep_difficult=True):
    """Class names of the objects of one VOC XML file (a set of str).

    Raises:
        ValueError: naming ``path``: not XML, or an object name not in :data:`CLASS_NAMES`.
    """
    try:
        tree = ET.parse(path)
    except ET.ParseError as e:
        raise ValueError(f"{path}: not a VOC annotation ({e})") from None
    names = set()
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in CLASS_NAMES:
            raise ValueError(f"{path}: object name {name!r} is not a VOC class")
        if not keep_difficult and (obj.findtext("difficult") or "0").strip() == "1":
            continue
        names.add(name)
    return names


def read_id_list(root, spec):
    """Ids of a list: ``"Main/train"``-style names under ``<root>/ImageSets`` or a text-file path.

    Lines may hold extra columns (``<id> <flag>``, the per-class lists); the
    first token is the id; blank lines are ignored.

    Raises:
        FileNotFoundError: naming the list's file.
    """
    path = spec if os.path.isfile(spec) else os.path.join(root, "ImageSets", spec + ("" if spec.endswith(".txt")
                                                                                    else ".txt"))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"voc: no id list {spec!r} ({path})")
    with open(path) as f:
        ids = [line.split()[0] for line in f if line.strip()]
    # train_aug lists may be written as "/JPEGImages/<id>.jpg ..." paths
    return [os.path.splitext(os.path.basename(i))[0] for i in ids], path


def _is_val(image_id, fraction):
    return int(hashlib.sha1(image_id.encode()).hexdigest()[:8], 16) / 2 ** 32 < fraction


@register_dataset("voc")
class VOC:
    """Adapter for the VOC devkit layout (see the module docstring).

    Args:
        root: the ``VOC2012`` folder (or the ``VOCdevkit`` above it).
        train_list, test_list: id lists (names under ``ImageSets`` or files).
        val_fraction: float in [0, 1), share of the train ids held out as ``val``.
        keep_difficult: bool (default True, Puzzle-CAM).

    Raises:
        FileNotFoundError: no ``JPEGImages``/``Annotations`` under ``root``, or a missing list.
        ValueError: bad options, a bad XML file (named), or a train list sharing ids with the test list.
    """

    name = "voc"

    def __init__(self, root=DEFAULT_ROOT, train_list="Main/train", test_list="Main/val", val_fraction=0.05,
                 keep_difficult=True):
        self.root = root
        if not os.path.isdir(os.path.join(root, "Annotations")) and os.path.isdir(os.path.join(root, "VOC2012")):
            self.root = os.path.join(root, "VOC2012")
        self.train_list, self.test_list = str(train_list), str(test_list)
        self.val_fraction = float(val_fraction)
        self.keep_difficult = keep_difficult if isinstance(keep_difficult, bool) else \
            str(keep_difficult).lower() in ("1", "true", "yes")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"voc: val_fraction must be in [0, 1), got {val_fraction}")

    def prepare(self):
        """Scan the lists and the XML files.

        Returns:
            :class:`PreparedDataset` with splits train/val/test.
        """
        root = os.path.abspath(self.root)
        for d in ("JPEGImages", "Annotations"):
            if not os.path.isdir(os.path.join(root, d)):
                raise FileNotFoundError(f"voc: no {d}/ under {root} (expected the VOC devkit layout)")
        train_ids, train_path = read_id_list(root, self.train_list)
        test_ids, test_path = read_id_list(root, self.test_list)
        shared = set(train_ids) & set(test_ids)
        if shared:
            raise ValueError(f"voc: the train list {train_path} and the test list {test_path} share "
                             f"{len(shared)} ids (e.g. {sorted(shared)[0]}); pick leak-free lists (docs/oass.md)")
        ids = {"train": [i for i in train_ids if not _is_val(i, self.val_fraction)],
               "val": [i for i in train_ids if _is_val(i, self.val_fraction)],
               "test": test_ids}
        col = {n: i for i, n in enumerate(CLASS_NAMES)}
        splits, skipped, counts = {}, {}, {}
        for split, lst in ids.items():
            recs, skip = [], []
            for image_id in lst:
                xml = os.path.join(root, "Annotations", image_id + ".xml")
                jpg = os.path.join(root, "JPEGImages", image_id + ".jpg")
                if not os.path.isfile(xml):
                    skip.append({"image_id": image_id, "reason": "missing annotation"})
                    continue
                if not os.path.isfile(jpg):
                    skip.append({"image_id": image_id, "reason": "missing file"})
                    continue
                y = np.zeros(len(CLASS_NAMES), np.int8)
                for n in parse_annotation(xml, self.keep_difficult):
                    y[col[n]] = 1
                recs.append(ImageRecord(image_id, jpg, y))
            splits[split], skipped[split] = recs, skip
            pos = np.sum([r.labels for r in recs], axis=0) if recs else np.zeros(len(CLASS_NAMES))
            counts[split] = {c: int(v) for c, v in zip(CLASS_NAMES, pos)}
        extra = {"root": root, "lists": {"train": train_path, "test": test_path},
                 "val_fraction": self.val_fraction, "keep_difficult": self.keep_difficult,
                 "label_counts_by_split": counts, "label_text": [n for n in CLASS_NAMES]}
        return PreparedDataset(name=self.name, label_names=list(CLASS_NAMES), splits=splits, skipped=skipped,
                               load_image=decode_image, preprocessing=PREPROCESSING, extra=extra)
