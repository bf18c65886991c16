"""Fashion-MNIST items scattered on a larger canvas, with their boxes: localisation with a known answer.

Source: the official Fashion-MNIST IDX files of the Debian package
``dataset-fashion-mnist`` (read by :mod:`mll_tf.data.datasets.fashion_mnist_grid`,
same train/val item pools). Each composite is a ``canvas x canvas`` grayscale
image on black holding ``min_items..max_items`` real items, each resized
(bilinear) to a side drawn uniformly in ``[28 * min_scale, 28 * max_scale]``
pixels and pasted (pixel-wise maximum) at a random position where its square
does not overlap the squares already placed (an item that finds no free place
in 50 draws is left out, and so is its label). The labels are COMPLETE (1 for
a class with an item on the canvas, else 0).

Boxes: the tight box of each item's non-zero pixels, as fractions of the
canvas side, half-open ``[y0, y1) x [x0, x1)``, written to
``<cache_dir>/<seed>/<split>/boxes.json`` (``{"<index:06d>": [[class, y0, x0,
y1, x1], ...]}``) and listed in ``extra["boxes_files"]`` by split; read them
with :func:`load_boxes`. Used by the keypoint localisation accuracy
(:mod:`mll_tf.metrics.localization`).

Determinism: image ``i`` of a split is drawn from
``numpy.random.default_rng([seed, split_id, i])`` (items picked uniformly from
the split's pool), so it does not depend on the split sizes; PNGs are written
once (temporary file + rename) and reused. The options that shape the pixels
are recorded in ``scatter_config.json``; a cache built with other options is
refused, naming that file.
"""

import json
import os

import numpy as np

from mll_tf.data.adapter import ImageRecord, PreparedDataset
from mll_tf.data.datasets._registry import register_dataset
from mll_tf.data.datasets.fashion_mnist_grid import (CELL, CLASS_NAMES, CLASS_NAMES_TEXT, DEFAULT_ROOT, SPLIT_IDS,
                                                     _write_png, check_cache_config, load_split,
                                                     split_pools)
from mll_tf.data.images import decode_image

__all__ = ["FashionMNISTScatter", "load_boxes", "scatter_image"]

DEFAULT_CACHE_DIR = "data/fashion_mnist_scatter"
PLACEMENT_TRIES = 50


def scatter_image(images, labels, pool, rng, canvas, min_items, max_items, min_scale, max_scale):
    """One composite.

    Args:
        images: uint8 ``[N, 28, 28]``; labels: uint8 ``[N]``; pool: int array of usable items.
        rng: ``numpy.random.Generator``.
        canvas: int side in pixels; min_items/max_items: ints; min_scale/max_scale: floats.

    Returns:
        (uint8 ``[canvas, canvas]``, multi-hot int8 ``[10]``, list of ``[class, y0, x0, y1, x1]``
        with fractions of the canvas side).
    """
    from PIL import Image

    out = np.zeros((canvas, canvas), np.uint8)
    k = int(rng.integers(min_items, max_items + 1))
    placed, boxes = [], []
    hot = np.zeros(len(CLASS_NAMES), np.int8)
    for _ in range(k):
        item = int(pool[rng.integers(len(pool))])
        side = int(round(CELL * rng.uniform(min_scale, max_scale)))
        side = min(max(side, 1), canvas)
        spot = None
        for _ in range(PLACEMENT_TRIES):
            r, c = (int(v) for v in rng.integers(0, canvas - side + 1, size=2))
            if all(r >= r1 or r + side <= r0 or c >= c1 or c + side <= c0 for r0, c0, r1, c1 in placed):
                spot = (r, c)
                break
        if spot is None:
            continue
        r, c = spot
        pix = np.asarray(Image.fromarray(images[item]).resize((side, side), Image.BILINEAR))
        out[r:r + side, c:c + side] = np.maximum(out[r:r + side, c:c + side], pix)
        placed.append((r, c, r + side, c + side))
        rows, cols = np.nonzero(pix)
        if len(rows) == 0:
            continue
        cls = int(labels[item])
        hot[cls] = 1
        boxes.append([cls, (r + rows.min()) / canvas, (c + cols.min()) / canvas,
                      (r + rows.max() + 1) / canvas, (c + cols.max() + 1) / canvas])
    return out, hot, boxes


def load_boxes(path):
    """``boxes.json`` -> dict image index str -> list of ``[class, y0, x0, y1, x1]`` (fractions).

    Raises:
        FileNotFoundError / ValueError: naming the file.
    """
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: malformed JSON ({e})") from None


@register_dataset("fashion_mnist_scatter")
class FashionMNISTScatter:
    """Adapter: Fashion-MNIST items scattered at random positions and scales, boxes recorded.

    Args:
        root: folder of the official gzip IDX files (default: the Debian package's).
        cache_dir: where PNGs and ``boxes.json`` go (``<cache_dir>/<seed>/<split>/``).
        num_train, num_val, num_test: ints >= 0 (defaults 4000, 500, 1000).
        canvas: int >= 28, canvas side in pixels (default 128).
        min_items, max_items: ints, ``1 <= min_items <= max_items <= 6``.
        min_scale, max_scale: floats, ``0 < min_scale <= max_scale``, item side / 28;
            ``28 * max_scale <= canvas``.
        seed: int; val_pool_fraction: float in (0, 1).

    ``prepare()`` returns 10 labels, records ``"<split>/<index:06d>"`` with
    complete int8 labels, and ``extra["boxes_files"]`` (split -> path).

    Raises:
        ValueError: bad options; a cache built with other options (names ``scatter_config.json``).
        FileNotFoundError: an IDX file is missing (names the apt package).
    """

    name = "fashion_mnist_scatter"

    def __init__(self, root=DEFAULT_ROOT, cache_dir=DEFAULT_CACHE_DIR, num_train=4000, num_val=500,
                 num_test=1000, canvas=128, min_items=1, max_items=3, min_scale=1.0, max_scale=2.0, seed=0,
                 val_pool_fraction=0.1):
        self.root, self.cache_dir = root, cache_dir
        self.num = {"train": int(num_train), "val": int(num_val), "test": int(num_test)}
        self.canvas = int(canvas)
        self.min_items, self.max_items = int(min_items), int(max_items)
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        self.seed, self.val_pool_fraction = int(seed), float(val_pool_fraction)
        if min(self.num.values()) < 0:
            raise ValueError("fashion_mnist_scatter: num_train/num_val/num_test must be >= 0")
        if not 1 <= self.min_items <= self.max_items <= 6:
            raise ValueError(f"fashion_mnist_scatter: need 1 <= min_items <= max_items <= 6, got "
                             f"{self.min_items}, {self.max_items}")
        if not 0 < self.min_scale <= self.max_scale or CELL * self.max_scale > self.canvas:
            raise ValueError(f"fashion_mnist_scatter: need 0 < min_scale <= max_scale and 28 * max_scale <= "
                             f"canvas ({self.canvas}), got {self.min_scale}, {self.max_scale}")
        if not 0.0 < self.val_pool_fraction < 1.0:
            raise ValueError("fashion_mnist_scatter: val_pool_fraction must be in (0, 1)")

    def _config(self):
        return {"seed": self.seed, "canvas": self.canvas, "min_items": self.min_items,
                "max_items": self.max_items, "min_scale": self.min_scale, "max_scale": self.max_scale,
                "val_pool_fraction": self.val_pool_fraction, "root": os.path.abspath(self.root)}

    def prepare(self):
        """Read the IDX files, draw and cache the composites and their boxes.

        Returns:
            :class:`PreparedDataset` with splits train/val/test.
        """
        root = os.path.abspath(self.root)
        tr_images, tr_labels = load_split(root, "train")
        te_images, te_labels = load_split(root, "test")
        train_pool, val_pool = split_pools(len(tr_labels), self.seed, self.val_pool_fraction)
        sources = {"train": (tr_images, tr_labels, train_pool), "val": (tr_images, tr_labels, val_pool),
                   "test": (te_images, te_labels, np.arange(len(te_labels)))}
        out_root = os.path.abspath(os.path.join(self.cache_dir, str(self.seed)))
        config = self._config()
        check_cache_config(os.path.join(out_root, "scatter_config.json"), config)
        splits, boxes_files, counts = {}, {}, {}
        for split, (images, labels, pool) in sources.items():
            d = os.path.join(out_root, split)
            os.makedirs(d, exist_ok=True)
            bpath = os.path.join(d, "boxes.json")
            boxes = load_boxes(bpath) if os.path.exists(bpath) else {}
            recs, changed = [], False
            for i in range(self.num[split]):
                key, path = f"{i:06d}", os.path.join(d, f"{i:06d}.png")
                rng = np.random.default_rng([self.seed, SPLIT_IDS[split], i])
                img, hot, bx = scatter_image(images, labels, pool, rng, self.canvas, self.min_items,
                                             self.max_items, self.min_scale, self.max_scale)
                if not (os.path.exists(path) and os.path.getsize(path) > 0):
                    _write_png(path, img)
                if key not in boxes:
                    boxes[key], changed = bx, True
                recs.append(ImageRecord(f"{split}/{key}", path, hot))
            if changed or not os.path.exists(bpath):
                with open(bpath + ".tmp", "w") as f:
                    json.dump(boxes, f)
                os.replace(bpath + ".tmp", bpath)
            splits[split], boxes_files[split] = recs, bpath
            pos = np.sum([r.labels for r in recs], axis=0) if recs else np.zeros(len(CLASS_NAMES))
            counts[split] = {c: int(v) for c, v in zip(CLASS_NAMES, pos)}
        extra = {"root": root, "cache_dir": out_root, "boxes_files": boxes_files,
                 "label_counts_by_split": counts, "class_names_text": list(CLASS_NAMES_TEXT),
                 "label_text": list(CLASS_NAMES_TEXT), "scatter": config,
                 "label_source": "complete: 1 iff an item of the class is on the canvas, else 0"}
        return PreparedDataset(
            name=self.name, label_names=list(CLASS_NAMES), splits=splits, skipped={s: [] for s in splits},
            load_image=decode_image,
            preprocessing=f"{self.canvas}x{self.canvas} grayscale PNG, RGB by channel replication, resized to "
                          f"size x size bilinear",
            extra=extra)
