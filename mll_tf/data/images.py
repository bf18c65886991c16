"""Image-file decoding: the one decoder of extraction, training on images, inference and figures.

:func:`decode_image` turns any image file an adapter reads into RGB
``uint8 [size, size, 3]``: an SVG drawing (recognised by its content, not its
file name) is rendered with cairosvg on white and padded to a square
(:func:`render_svg`); anything else is decoded by PIL, converted to RGB
(alpha composited on white), its shorter side resized and the centre cropped
(:func:`load_rgb_center_crop`). It is picklable and imports no TensorFlow,
so extraction workers use it directly.

High bit depths are reduced to 8 bits by one rule (:func:`to_8bit`), never
clipped: 16-bit samples keep their high byte, ``v >> 8`` = floor(v / 256)
(0 -> 0, 32768 -> 128, 65535 -> 255), which is what Pillow itself does for
16-bit RGB, RGBA and LA PNGs (rawmodes ``RGB;16B`` etc.) and what libpng's
``png_set_strip_16`` does, so a 16-bit grey image and the same picture in
16-bit RGB decode to the same pixels. Float images (mode ``F``) must hold
values in [0, 1] (the convention of float image data) and become
floor(255 v + 0.5); any other float range has no defined white level and is
refused with the range in the message (the extractor records it as
skipped), as are NaN/Inf values and 32-bit integer images outside [0, 65535].
"""

import io
import os
import threading

import numpy as np

__all__ = ["decode_image", "is_svg", "load_rgb_center_crop", "render_svg", "to_8bit"]

#: Modes with an alpha channel: composited on white before dropping it.
_ALPHA_MODES = ("RGBA", "LA", "P", "PA", "RGBa")


def is_svg(path):
    """True if the file's first 4 KiB look like an SVG document (``<svg`` element)."""
    with open(path, "rb") as f:
        head = f.read(4096)
    head = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    return b"<svg" in head and (head.startswith(b"<") or head.startswith(b"<?xml"))


#: Font size (in user units, identity transform) at which a font face is resolved for the whole process.
_PIN_FONT_SIZE = 12.0
_PINNED_FACES = {}
_PIN_LOCK = threading.Lock()


def _pin_font_face(family, slant, weight):
    """Resolve cairo's font face ``(family, slant, weight)`` once per process, at a fixed size, and keep it.

    cairo resolves a toy font face (the family names of SVG text) through
    fontconfig the first time it is used and keeps that resolution while the
    face is alive, and the resolution depends on the size and transform of
    that first use (fontconfig's pixel size). A family that is not installed
    (the clip-art's "Bitstream Vera Sans") therefore came out differently
    depending on which drawing with text a process rendered first; with
    several decoding processes, whose first drawings depend on scheduling,
    extraction was not reproducible on a few drawings. Holding a reference to
    the face, resolved at :data:`_PIN_FONT_SIZE` before any drawing uses it,
    makes every drawing's text a function of the file alone (in any order,
    any process, any thread). Thread-safe.
    """
    key = (family, slant, weight)
    if key in _PINNED_FACES:
        return
    import cairocffi

    with _PIN_LOCK:
        if key not in _PINNED_FACES:
            face = cairocffi.ToyFontFace(family, slant, weight)
            scaled = cairocffi.ScaledFont(face, cairocffi.Matrix(xx=_PIN_FONT_SIZE, yy=_PIN_FONT_SIZE))
            _PINNED_FACES[key] = (face, scaled)


def _install_font_pinning():
    """Make ``cairocffi.Context.select_font_face`` (what cairosvg calls for text) pin the face first.

    Idempotent; the wrapped method then behaves as the original.
    """
    import cairocffi

    original = cairocffi.Context.select_font_face
    if getattr(original, "_mll_pins_faces", False):
        return

    def select_font_face(self, family="", slant=cairocffi.FONT_SLANT_NORMAL,
                         weight=cairocffi.FONT_WEIGHT_NORMAL):
        _pin_font_face(family, slant, weight)
        return original(self, family, slant, weight)

    select_font_face._mll_pins_faces = True
    select_font_face.__doc__ = original.__doc__
    cairocffi.Context.select_font_face = select_font_face


def render_svg(path, size, resize_shorter=None):
    """Render an SVG to an RGB ``uint8 [size, size, 3]`` array on white.

    cairosvg renders the drawing at width ``size``; it is composited on white
    and padded (never cropped) to a square. ``resize_shorter`` is accepted for
    the common decoder signature and ignored. Text renders the same whatever
    the process rendered before (fonts resolved once, at a fixed size:
    :func:`_pin_font_face`).

    Raises:
        ValueError: if the file is empty.
        Exception: whatever cairosvg raises on a broken drawing (the extractor
            records it as a render error).
    """
    import cairosvg
    from PIL import Image, ImageOps

    if os.path.getsize(path) == 0:
        raise ValueError("empty file")
    _install_font_pinning()
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
        ValueError: an empty file, or a float / 32-bit integer image whose
            values have no defined white level (see :func:`to_8bit`).
            PIL.UnidentifiedImageError / OSError / cairosvg errors: an
            unreadable image (the extractor records it as skipped).
    """
    if os.path.getsize(path) == 0:
        raise ValueError("empty file")
    if is_svg(path):
        return render_svg(path, size)
    return load_rgb_center_crop(path, size, resize_shorter=resize_shorter)


def to_8bit(im):
    """Reduce a high-bit-depth single-channel PIL image to mode ``L`` (uint8).

    * ``I;16``, ``I;16L``, ``I;16B``, ``I;16N`` (unsigned 16-bit grey) and
      ``I`` (32-bit signed grey; Pillow's mode for 16-bit PGM/PPM, which it
      scales to 0..65535, and for 16/32-bit integer TIFFs): values must lie
      in [0, 65535] and become ``v >> 8`` (the module rule).
    * ``F`` (32-bit float): finite values in [0, 1] become
      ``floor(255 * v + 0.5)``.
    * any other mode is returned unchanged.

    Args:
        im: PIL.Image.Image (loaded).

    Returns:
        PIL.Image.Image: mode ``L`` for the modes above, else ``im``.

    Raises:
        ValueError: ``"mode F image with values in [lo, hi], outside [0, 1]:
            no defined white level; save it as 8/16-bit or scaled to [0, 1]"``,
            ``"mode F image with NaN or infinite values"``, or ``"mode I
            image with values in [lo, hi], outside [0, 65535] ..."``.
    """
    from PIL import Image

    mode = im.mode
    if mode == "I" or mode.startswith("I;16"):
        a = np.asarray(im).astype(np.int64)
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise ValueError(f"mode {mode} image with values in [{lo}, {hi}], outside [0, 65535]: "
                             "no defined white level; save it as 8- or 16-bit unsigned")
        return Image.fromarray((a >> 8).astype(np.uint8), "L")
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        if not np.isfinite(a).all():
            raise ValueError("mode F image with NaN or infinite values")
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"mode F image with values in [{lo:g}, {hi:g}], outside [0, 1]: no "
                             "defined white level; save it as 8/16-bit or scaled to [0, 1]")
        return Image.fromarray(np.floor(a * 255.0 + 0.5).astype(np.uint8), "L")
    return im


def load_rgb_center_crop(path, size, resize_shorter=None):
    """Decode an image file to RGB ``uint8 [size, size, 3]``.

    The shorter side is resized to ``resize_shorter`` pixels (default
    ``size``; bilinear, aspect ratio kept), then the central ``size x size``
    square is cropped. LESA's VGG preprocessing is ``size=224,
    resize_shorter=256`` (slim ``vgg_preprocessing``, as hbdat/cvpr20_LESA
    extracts its features). Palette/alpha/greyscale images are converted to
    RGB (alpha composited on white). 16-bit, 32-bit integer and
    float images are first reduced to 8 bits by :func:`to_8bit` (16-bit
    RGB(A) PNGs arrive from Pillow as 8-bit high bytes, the same rule).

    Raises:
        ValueError: if the file is empty, or (from :func:`to_8bit`) a float
            image outside [0, 1] or with NaN/Inf, or an integer image outside
            [0, 65535]; the message names the mode and the value range.
        PIL.UnidentifiedImageError / OSError: if it is not a readable image
            (the extractor records it as skipped).
    """
    from PIL import Image, ImageOps

    if os.path.getsize(path) == 0:
        raise ValueError("empty file")
    with Image.open(path) as im:
        im.load()
        im = to_8bit(im)
        if im.mode in _ALPHA_MODES:
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
