"""Image-file decoding: the one decoder of extraction, training on images, inference and figures.

:func:`decode_image` turns any image file an adapter reads into RGB
``uint8 [size, size, 3]``: an SVG drawing (recognised by its content, not its
file name) is rendered with cairosvg on white and padded to a square
(:func:`render_svg`); anything else is decoded by PIL, converted to RGB
(alpha composited on white), its shorter side resized and the centre cropped
(:func:`load_rgb_center_crop`). It is picklable and imports no TensorFlow,
so extraction workers use it directly.
"""

import io
import os

import numpy as np

__all__ = ["decode_image", "is_svg", "load_rgb_center_crop", "render_svg"]


def is_svg(path):
    """True if the file's first 4 KiB look like an SVG document (``<svg`` element)."""
    with open(path, "rb") as f:
        head = f.read(4096)
    head = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    return b"<svg" in head and (head.startswith(b"<") or head.startswith(b"<?xml"))


def render_svg(path, size, resize_shorter=None):
    """Render an SVG to an RGB ``uint8 [size, size, 3]`` array on white.

    cairosvg renders the drawing at width ``size``; it is composited on white
    and padded (never cropped) to a square. ``resize_shorter`` is accepted for
    the common decoder signature and ignored.

    Raises:
        ValueError: if the file is empty.
        Exception: whatever cairosvg raises on a broken drawing (the extractor
            records it as a render error).
    """
    import cairosvg
    from PIL import Image, ImageOps

    if os.path.getsize(path) == 0:
        raise ValueError("empty file")
    png = cairosvg.svg2png(url=path, output_width=size)
    im = Image.open(io.BytesIO(png)).convert("RGBA")
    white = Image.new("RGBA", im.size, (255, 255, 255, 255))
    im = Image.alpha_composite(white, im).convert("RGB")
    im = ImageOps.pad(im, (size, size), method=Image.Resampling.BILINEAR, color=(255, 255, 255))
    return np.asarray(im, dtype=np.uint8)


def decode_image(path, size, resize_shorter=None):
    """Decode any image file an adapter reads to RGB ``uint8 [size, size, 3]``.

    SVG drawings (by content: :func:`is_svg`) go through :func:`render_svg`;
    every other file through :func:`load_rgb_center_crop`.

    Args:
        path: str, the image file.
        size: int, output side in pixels.
        resize_shorter: int or None, raster images only: the shorter side is
            resized to this many pixels before the central crop (None: to
            ``size``; LESA's VGG preprocessing: 256 for 224).

    Raises:
        ValueError: an empty file. PIL.UnidentifiedImageError / OSError /
            cairosvg errors: an unreadable image (the extractor records it as
            skipped).
    """
    if os.path.getsize(path) == 0:
        raise ValueError("empty file")
    if is_svg(path):
        return render_svg(path, size)
    return load_rgb_center_crop(path, size, resize_shorter=resize_shorter)


def load_rgb_center_crop(path, size, resize_shorter=None):
    """Decode an image file to RGB ``uint8 [size, size, 3]``.

    The shorter side is resized to ``resize_shorter`` pixels (default
    ``size``; bilinear, aspect ratio kept), then the central ``size x size``
    square is cropped. LESA's VGG preprocessing is ``size=224,
    resize_shorter=256`` (slim ``vgg_preprocessing``, as hbdat/cvpr20_LESA extracts its features). Palette/alpha/greyscale images are
    converted to RGB (alpha composited on white).

    Raises:
        ValueError: if the file is empty.
        PIL.UnidentifiedImageError / OSError: if it is not a readable image
            (the extractor records it as skipped).
    """
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
