"""Image-file decoding for extraction workers (PIL; no TensorFlow import)."""

import numpy as np


def load_rgb_center_crop(path, size):
    """Decode an image file to RGB ``uint8 [size, size, 3]``.

    The shorter side is resized to ``size`` (bilinear), then the central
    ``size x size`` square is cropped. Palette/alpha/greyscale images are
    converted to RGB (alpha composited on white).

    Raises:
        ValueError: if the file is empty.
        PIL.UnidentifiedImageError / OSError: if it is not a readable image
            (the extractor records it as skipped).
    """
    import os

    from PIL import Image, ImageOps

    if os.path.getsize(path) == 0:
        raise ValueError("empty file")
    with Image.open(path) as im:
        im.load()
        if im.mode in ("RGBA", "LA", "P"):
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, im)
        im = im.convert("RGB")
        im = ImageOps.fit(im, (size, size), method=Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.uint8)
