"""Fashion-MNIST 2x2 composites: real items, multi-label, complete ground truth.

Source: Debian ``dataset-fashion-mnist`` (MIT licence), the official
Fashion-MNIST files as gzip IDX under ``/usr/share/datasets/fashion-mnist/``::

    train-images-idx3-ubyte.gz  60000 x 28 x 28 uint8   (magic 0x00000803)
    train-labels-idx1-ubyte.gz  60000 uint8 in [0, 10)  (magic 0x00000801)
    t10k-images-idx3-ubyte.gz   10000 x 28 x 28
    t10k-labels-idx1-ubyte.gz   10000

An IDX file is a big-endian header (magic ``00 00 <dtype=08> <ndim>``, then
``ndim`` uint32 sizes) followed by the uint8 data.

Each composite is a 56 x 56 grayscale image made of a 2 x 2 grid of 28 x 28
cells holding one to four real items; empty cells are black (0, the
Fashion-MNIST background). The labels are COMPLETE: 1 for every class with
an item in the grid, 0 for every other class (never -1). Hiding labels later
simulates partial labels with a known answer (CSL's FPC/RPS, docs/partial_labels.md §6).

Determinism (everything follows from ``seed``):

* The official train items are split once into two disjoint pools: a
  ``val_pool_fraction`` share (default 0.1, 6000 items) for val grids, the
  rest for train grids. Test grids use the 10000 official test items.
* Grids are generated in blocks of :data:`BLOCK` grids; block ``b`` of a
  split draws its item counts (uniform in ``[min_items, max_items]``) and cell
  positions from ``numpy.random.default_rng([seed, split_id, 0, b])``. Items
  are taken in order from a stream of permutations of the pool (permutation
  ``c`` from ``default_rng([seed, split_id, 1, c])``), so every pool item is
  used before any is reused. Grid ``i`` therefore depends only on ``seed``,
  the split, ``i``, ``min_items``/``max_items``/``val_pool_fraction`` and the
  source files -- not on ``num_train``/``num_val``/``num_test``: a larger run
  reuses the PNGs of a smaller one. (An item can appear twice in one grid
  only when the pool is smaller than ``max_items`` or at a permutation seam.)

Composites are written once as PNG (grayscale) under
``<cache_dir>/<seed>/<split>/<index:06d>.png`` (write to a temporary file,
then rename; existing non-empty files are reused, never rewritten). The
options that shape the pixels are recorded in
``<cache_dir>/<seed>/grid_config.json``; reusing a cache built with other
options raises ``ValueError`` naming that file.
"""

import gzip
import hashlib
import json
import os

import numpy as np

from mll_tf.data.adapter import ImageRecord, PreparedDataset
from mll_tf.data.images import decode_image
from mll_tf.data.datasets._registry import register_dataset

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
DEFAULT_CACHE_DIR = "data/fashion_mnist_grid"

#: Official class names, in label-index order.
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
#: Word-vector text of each class (GloVe has "t-shirt"; "ankle boot" is the
#: mean of "ankle" and "boot" under ``word_vectors.label_embeddings``).
CLASS_NAMES_TEXT = ["t-shirt", "trouser", "pullover", "dress", "coat",
                    "sandal", "shirt", "sneaker", "bag", "ankle boot"]

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IMAGE_MAGIC = 0x00000803
LABEL_MAGIC = 0x00000801
CELL = 28
GRID = 2
SIZE = CELL * GRID
BLOCK = 1024
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}

PREPROCESSING = (
    "56x56 grayscale PNG composite, converted to RGB (channel replicated), "
    "resized to size x size bilinear (mll_tf.data.images.load_rgb_center_crop)")


def read_idx(path, expected_magic):
    """Read a (gzip) IDX file into a uint8 array.

    Args:
        path: str, ``*.gz`` (gzip) or uncompressed IDX file.
        expected_magic: int, e.g. ``0x00000803`` (uint8, 3 dims) for images,
            ``0x00000801`` for labels.

    Returns:
        uint8 array of the dims in the header (``[N, 28, 28]`` or ``[N]``).

    Raises:
        FileNotFoundError: if ``path`` is missing.
        ValueError: naming ``path`` if it is not gzip, the magic number is not
            ``expected_magic`` or the data length does not match the header.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"fashion_mnist_grid: {path} not found; install the Debian package "
            "'dataset-fashion-mnist' (apt-get install dataset-fashion-mnist) or pass root=")
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read as gzip IDX ({e})") from e
    if len(data) < 4:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise ValueError(f"{path}: bad IDX magic number 0x{magic:08x}, "
                         f"expected 0x{expected_magic:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    n = int(np.prod(dims))
    if len(data) - header != n:
        raise ValueError(f"{path}: header says {dims} = {n} bytes of data, "
                         f"file has {len(data) - header}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def load_split(root, which):
    """Read the official ``which`` ("train" or "test") images and labels.

    Returns:
        (images uint8 ``[N, 28, 28]``, labels uint8 ``[N]`` in [0, 10)).

    Raises:
        ValueError: naming the file on a bad header, a shape mismatch or a
            label outside [0, 10).
    """
    img_file, lab_file = (os.path.join(root, f) for f in FILES[which])
    images = read_idx(img_file, IMAGE_MAGIC)
    labels = read_idx(lab_file, LABEL_MAGIC)
    if images.shape[1:] != (CELL, CELL):
        raise ValueError(f"{img_file}: items are {images.shape[1:]}, expected (28, 28)")
    if len(images) != len(labels):
        raise ValueError(f"{img_file} has {len(images)} items but {lab_file} "
                         f"has {len(labels)} labels")
    if labels.size and labels.max() >= len(CLASS_NAMES):
        raise ValueError(f"{lab_file}: label {int(labels.max())} outside [0, 10)")
    return images, labels


def split_pools(n_items, seed, val_pool_fraction):
    """Disjoint train/val item pools over the official train items.

    Returns:
        (train_pool, val_pool): sorted int64 index arrays; the val pool has
        ``max(1, round(n_items * val_pool_fraction))`` items.
    """
    perm = np.random.default_rng([seed, 99]).permutation(n_items)
    n_val = min(n_items - 1, max(1, int(round(n_items * val_pool_fraction))))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def compose_grids(images, labels, pool, n, seed, split_id, min_items=1, max_items=4):
    """Build ``n`` composites from the items of ``pool`` (vectorised).

    Args:
        images: uint8 ``[N, 28, 28]``; labels: uint8 ``[N]`` in [0, 10).
        pool: int array of item indices this split may use.
        n: int >= 0, number of grids; seed, split_id: ints (see module doc).
        min_items, max_items: ints, 1 <= min_items <= max_items <= 4.

    Returns:
        (grids uint8 ``[n, 56, 56]``, multi_hot int8 ``[n, 10]`` in {0, 1},
        items int64 ``[n, 4]``: the item index in each cell, row-major
        (top-left, top-right, bottom-left, bottom-right), -1 if empty).
    """
    cells = GRID * GRID
    n_blocks = -(-n // BLOCK)
    ks, orders = [], []
    for b in range(n_blocks):
        rng = np.random.default_rng([seed, split_id, 0, b])
        ks.append(rng.integers(min_items, max_items + 1, size=BLOCK))
        orders.append(np.argsort(rng.random((BLOCK, cells)), axis=1))
    k = np.concatenate(ks)[:n] if ks else np.zeros(0, np.int64)
    order = np.concatenate(orders)[:n] if orders else np.zeros((0, cells), np.int64)
    # rank[i, cell] = position of `cell` in grid i's random cell order
    rank = np.argsort(order, axis=1)
    occupied = rank < k[:, None]
    total = int(occupied.sum())
    pool = np.asarray(pool, np.int64)
    stream = [np.random.default_rng([seed, split_id, 1, c]).permutation(pool)
              for c in range(-(-total // max(len(pool), 1)))]
    stream = np.concatenate(stream)[:total] if stream else np.zeros(0, np.int64)
    items = np.full((n, cells), -1, np.int64)
    items[occupied] = stream
    safe = np.where(occupied, items, 0)
    tiles = np.where(occupied[:, :, None, None], images[safe], 0).astype(np.uint8)
    grids = tiles.reshape(n, GRID, GRID, CELL, CELL).transpose(0, 1, 3, 2, 4).reshape(n, SIZE, SIZE)
    onehot = np.zeros((n, cells, len(CLASS_NAMES)), np.int8)
    onehot[np.nonzero(occupied) + (labels[items[occupied]].astype(np.int64),)] = 1
    return grids, onehot.max(axis=1) if n else np.zeros((0, len(CLASS_NAMES)), np.int8), items


def _write_png(path, array):
    from PIL import Image

    tmp = f"{path}.tmp{os.getpid()}"
    Image.fromarray(array, "L").save(tmp, format="PNG")
    os.replace(tmp, path)


def _sha1(path):
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


def check_cache_config(path, config):
    """Record ``config`` (a JSON-able dict) in ``path``, or check that the cache there was built with it.

    Raises:
        ValueError: naming ``path``: malformed JSON, or the options that differ (old, new).
    """
    if os.path.exists(path):
        with open(path) as f:
            try:
                old = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: malformed JSON ({e})") from e
        if old != config:
            diff = {k: (old.get(k), v) for k, v in config.items() if old.get(k) != v}
            raise ValueError(
                f"{path}: this cache was built with other options {diff} (old, new); "
                "delete the folder or pass another cache_dir/seed")
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(config, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


@register_dataset("fashion_mnist_grid")
class FashionMNISTGrid:
    """Adapter building 2x2 Fashion-MNIST composites with complete labels.

    Args:
        root: str, folder with the four official gzip IDX files (default
            ``/usr/share/datasets/fashion-mnist``, Debian
            ``dataset-fashion-mnist``).
        cache_dir: str, where the PNG composites are written (default
            ``data/fashion_mnist_grid``); files go to
            ``<cache_dir>/<seed>/<split>/<index:06d>.png``.
        num_train, num_val, num_test: ints >= 0, grids per split (defaults
            8000, 1000, 2000). Train/val grids use disjoint pools of official
            train items, test grids the official test items.
        min_items, max_items: ints, 1 <= min_items <= max_items <= 4, items
            per grid (uniform).
        seed: int, everything is deterministic given the seed.
        val_pool_fraction: float in (0, 1), share of the official train items
            reserved for val grids (default 0.1).

    ``prepare()`` returns 10 labels (:data:`CLASS_NAMES`), records with
    ``image_id = "<split>/<index:06d>"`` and int8 labels in {0, 1}.
    ``extra`` holds ``root``, ``cache_dir`` (absolute), ``label_counts_by_split``,
    ``class_names_text`` / ``label_text`` (word-vector text per class),
    ``grid`` (layout, item counts, pools, seed) and ``items_per_grid_by_split``.

    Raises:
        ValueError: on bad options, a bad IDX file (named), or a cache built
            with other pixel-shaping options (names ``grid_config.json``).
        FileNotFoundError: if an IDX file is missing (names the apt package).
    """

    name = "fashion_mnist_grid"

    def __init__(self, root=DEFAULT_ROOT, cache_dir=DEFAULT_CACHE_DIR, num_train=8000,
                 num_val=1000, num_test=2000, min_items=1, max_items=4, seed=0,
                 val_pool_fraction=0.1):
        self.root = root
        self.cache_dir = cache_dir
        self.num_train = int(num_train)
        self.num_val = int(num_val)
        self.num_test = int(num_test)
        self.min_items = int(min_items)
        self.max_items = int(max_items)
        self.seed = int(seed)
        self.val_pool_fraction = float(val_pool_fraction)
        if not 1 <= self.min_items <= self.max_items <= GRID * GRID:
            raise ValueError(f"fashion_mnist_grid: need 1 <= min_items <= max_items <= 4, "
                             f"got {self.min_items}, {self.max_items}")
        if min(self.num_train, self.num_val, self.num_test) < 0:
            raise ValueError("fashion_mnist_grid: num_train/num_val/num_test must be >= 0")
        if not 0.0 < self.val_pool_fraction < 1.0:
            raise ValueError("fashion_mnist_grid: val_pool_fraction must be in (0, 1)")

    def prepare(self):
        """Read the IDX files, build and cache the composites.

        Returns:
            :class:`PreparedDataset` with splits train/val/test.
        """
        root = os.path.abspath(self.root)
        tr_images, tr_labels = load_split(root, "train")
        te_images, te_labels = load_split(root, "test")
        train_pool, val_pool = split_pools(len(tr_labels), self.seed, self.val_pool_fraction)
        sources = {"train": (tr_images, tr_labels, train_pool, self.num_train),
                   "val": (tr_images, tr_labels, val_pool, self.num_val),
                   "test": (te_images, te_labels, np.arange(len(te_labels)), self.num_test)}
        out_root = os.path.abspath(os.path.join(self.cache_dir, str(self.seed)))
        config = {
            "seed": self.seed, "min_items": self.min_items, "max_items": self.max_items,
            "val_pool_fraction": self.val_pool_fraction, "block": BLOCK,
            "label_files_sha1": {w: _sha1(os.path.join(root, FILES[w][1])) for w in FILES},
            "num_items": {"train": int(len(tr_labels)), "test": int(len(te_labels))},
        }
        check_cache_config(os.path.join(out_root, "grid_config.json"), config)

        splits, counts, items_per_grid = {}, {}, {}
        written = 0
        for split, (images, labels, pool, n) in sources.items():
            grids, multi_hot, items = compose_grids(
                images, labels, pool, n, self.seed, SPLIT_IDS[split],
                self.min_items, self.max_items)
            d = os.path.join(out_root, split)
            os.makedirs(d, exist_ok=True)
            recs = []
            for i in range(n):
                path = os.path.join(d, f"{i:06d}.png")
                if not (os.path.exists(path) and os.path.getsize(path) > 0):
                    _write_png(path, grids[i])
                    written += 1
                recs.append(ImageRecord(f"{split}/{i:06d}", path, multi_hot[i].copy()))
            splits[split] = recs
            pos = multi_hot.sum(axis=0) if n else np.zeros(len(CLASS_NAMES), np.int64)
            counts[split] = {c: int(v) for c, v in zip(CLASS_NAMES, pos.tolist())}
            items_per_grid[split] = {str(j): int(np.sum((items >= 0).sum(axis=1) == j))
                                     for j in range(self.min_items, self.max_items + 1)}
        self.pngs_written = written  # PNGs written by this call (0 when fully cached)
        extra = {
            "root": root,
            "cache_dir": out_root,
            "label_counts_by_split": counts,
            "class_names_text": list(CLASS_NAMES_TEXT),
            "label_text": list(CLASS_NAMES_TEXT),
            "grid": {
                "rows": GRID, "cols": GRID, "cell": CELL, "size": SIZE,
                "min_items": self.min_items, "max_items": self.max_items,
                "seed": self.seed, "val_pool_fraction": self.val_pool_fraction,
                "pool_sizes": {"train": int(len(train_pool)), "val": int(len(val_pool)),
                               "test": int(len(te_labels))},
                "item_sources": {"train": "official train", "val": "official train",
                                 "test": "official test (t10k)"},
                "background": 0,
            },
            "items_per_grid_by_split": items_per_grid,
            "label_source": "complete: 1 iff an item of the class is in the grid, else 0",
        }
        return PreparedDataset(
            name=self.name, label_names=list(CLASS_NAMES), splits=splits,
            skipped={s: [] for s in splits}, load_image=decode_image,
            preprocessing=PREPROCESSING, extra=extra)
