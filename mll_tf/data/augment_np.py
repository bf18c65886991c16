"""Deterministic image augmentation with PIL/NumPy (no TensorFlow import).

Used for oversampled copies of rare-class images: a copy is addressed as
``<path>#aug<k>`` (``k >= 1``) and :func:`load_with_augmentation` decodes the
original file and applies :func:`augment_array` seeded by ``k`` and the file
name, so the same copy always gives the same pixels, in any worker process.
"""

import os
import re
import zlib

import numpy as np

from mll_tf.data.images import decode_image

_AUG = re.compile(r"^(.*)#aug(\d+)$")

PREPROCESSING = (
    "load_rgb_center_crop; for '<path>#aug<k>' copies additionally (seeded by k and the file "
    "name): random-resized crop of 75-95% of the area, aspect 3/4-4/3, resized back bilinear; "
    "horizontal flip with probability 1/2; brightness x U(0.8, 1.2), clipped to [0, 255]")


def split_aug_suffix(path_or_id):
    """Split ``"x.jpg#aug3"`` into ``("x.jpg", 3)``; no suffix -> ``(s, 0)``."""
    m = _AUG.match(path_or_id)
    if m is None:
        return path_or_id, 0
    return m.group(1), int(m.group(2))


def aug_seed(base, k):
    """Seed sequence entropy for copy ``k`` of file ``base`` (stable across processes)."""
    return [int(k), zlib.crc32(os.path.basename(base).encode("utf-8"))]


def augment_array(image, seed, min_area=0.75, max_area=0.95, brightness=0.2):
    """Random-resized crop + horizontal flip + brightness jitter.

    Args:
        image: uint8 ``[H, W, 3]``.
        seed: int or list of ints for ``numpy.random.default_rng``.
        min_area, max_area: floats in (0, 1], crop area range (share of H*W).
        brightness: float in [0, 1), factor drawn from U(1 - b, 1 + b).

    Returns:
        uint8 ``[H, W, 3]``, the same shape as ``image``.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    area = rng.uniform(min_area, max_area) * h * w
    ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw = int(np.clip(round(np.sqrt(area * ratio)), 1, w))
    ch = int(np.clip(round(np.sqrt(area / ratio)), 1, h))
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    flip = rng.random() < 0.5
    factor = rng.uniform(1 - brightness, 1 + brightness)
    im = Image.fromarray(np.ascontiguousarray(image[y0:y0 + ch, x0:x0 + cw]))
    im = im.resize((w, h), Image.Resampling.BILINEAR)
    out = np.asarray(im, dtype=np.float32)
    if flip:
        out = out[:, ::-1]
    return np.clip(np.rint(out * factor), 0, 255).astype(np.uint8)


def load_with_augmentation(path, size, resize_shorter=None):
    """Decode an image; ``"<path>#aug<k>"`` gets augmented copy ``k``.

    Picklable (module level), for extraction worker processes.

    Args:
        path: str, an image file, optionally suffixed ``#aug<k>`` (k >= 1). A
            path whose full name exists as a file is read as is.
        size, resize_shorter: as :func:`mll_tf.data.images.load_rgb_center_crop`.

    Returns:
        uint8 ``[size, size, 3]``.

    Raises:
        Whatever :func:`mll_tf.data.images.decode_image` raises on an unreadable file.
    """
    base, k = (path, 0) if os.path.exists(path) else split_aug_suffix(path)
    image = decode_image(base, size, resize_shorter)
    if k == 0:
        return image
    return augment_array(image, aug_seed(base, k))
