"""Image-file decoding for extraction workers (PIL; no TensorFlow import)."""

import numpy as np


def load_rgb_center_crop(path, size, resize_shorter=None):
    """Decode an image file to RGB ``uint8 [size, size, 3]``.

    The shorter side is resized to ``resize_shorter`` pixels (default
    ``size``; bilinear, aspect ratio kept), then the central ``size x size``
    square is cropped. LESA's VGG preprocessing is ``size=224,
    resize_shorter=256`` (slim ``vgg_preprocessing``, METHODS.md §1.1). Palette/alpha/greyscale images are
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
        if resize_shorter is None or resize_shorter == size:
            im = ImageOps.fit(im, (size, size), method=Image.Resampling.BILINEAR)
        else:
            if resize_shorter < size:
                raise ValueError(f"resize_shorter={resize_shorter} < size={size}")
            w, h = im.size
            scale = resize_shorter / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            im = im.resize((nw, nh), Image.Resampling.BILINEAR)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
    return np.asarray(im, dtype=np.uint8)
