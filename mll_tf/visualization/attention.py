"""Draw where LESA's shared attention heads look.

LESA (Huynh & Elhamifar, CVPR 2020, Sec. 3.2) has M attention heads, each a
softmax over the R = h * w regions of the backbone feature map
(``LESA(...)["attention"]``, [B, M, R]). This module only draws: it turns
those weights back into h x w maps, upsamples them onto the image, draws one
panel per head next to the top seen and unseen labels, and writes the
figures to TensorBoard. Scoring images with a trained run (decoding, features,
the model) is :func:`mll_tf.tasks.lesa.explain_images`.

Region order: the feature store flattens a ``[h, w, D]`` map row by row
(``mll_tf.data.extraction.FeatureFunction``), so region ``r`` is row
``r // w``, column ``r % w`` (``r = col + row * w``).

Figures are built with :class:`matplotlib.figure.Figure` and the Agg canvas
directly, never through ``pyplot``, so no GUI backend or global figure state is
involved.
"""

import math

import numpy as np

__all__ = [
    "attention_figure",
    "attention_grids",
    "figure_to_array",
    "log_attention_images",
    "upsample_attention",
]


def _grid(grid):
    h, w = (int(g) for g in grid)
    if h < 1 or w < 1:
        raise ValueError(f"grid must be two positive ints (h, w), got {grid}")
    return h, w


def attention_grids(attention, grid):
    """Reshape region attention into spatial maps.

    Args:
        attention: float array-like ``[..., R]`` (typically ``[B, M, R]``,
            LESA's ``"attention"`` output, rows in [0, 1] summing to 1).
        grid: ``(h, w)`` ints with ``h * w == R``, the feature grid the
            regions were flattened from (manifest ``feature_grid``).

    Returns:
        float32 ndarray ``[..., h, w]`` (``[B, M, h, w]``), where
        ``out[..., i, j] = attention[..., j + i * w]`` (row-major, as the
        feature store writes regions). Values are unchanged.

    Raises:
        ValueError: if ``h * w`` differs from the last dimension.
    """
    a = np.asarray(attention, dtype=np.float32)
    h, w = _grid(grid)
    if a.ndim < 1 or a.shape[-1] != h * w:
        raise ValueError(f"attention_grids: grid {h}x{w} needs R = {h * w} regions, "
                         f"got attention of shape {a.shape}")
    return a.reshape(a.shape[:-1] + (h, w))


def upsample_attention(grid_maps, size):
    """Bilinearly upsample attention maps and min-max normalise each one.

    Args:
        grid_maps: float array-like ``[..., h, w]`` (e.g. ``[B, M, h, w]``
            from :func:`attention_grids`).
        size: int or ``(H, W)``, the output size in pixels.

    Returns:
        float32 ndarray ``[..., H, W]`` with values in [0, 1]: each map is
        resized with ``tf.image.resize(..., "bilinear")`` (half-pixel
        centres, as ``jax.image``/PIL) and then rescaled to
        ``(x - min) / (max - min)`` on its own, so each head uses the full
        colour range. A constant map becomes all zeros. For display only:
        the result is not a distribution.

    Raises:
        ValueError: if ``grid_maps`` has fewer than 2 dimensions or ``size``
            is not positive.
    """
    import tensorflow as tf

    m = np.asarray(grid_maps, dtype=np.float32)
    if m.ndim < 2:
        raise ValueError(f"upsample_attention: need [..., h, w] maps, got shape {m.shape}")
    size = (int(size), int(size)) if np.isscalar(size) else tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"upsample_attention: size must be positive (H, W), got {size}")
    lead, (h, w) = m.shape[:-2], m.shape[-2:]
    flat = m.reshape((-1, h, w, 1))
    up = tf.image.resize(flat, size, method="bilinear").numpy()[..., 0]
    lo = up.min(axis=(1, 2), keepdims=True)
    span = up.max(axis=(1, 2), keepdims=True) - lo
    out = np.where(span > 0, (up - lo) / np.where(span > 0, span, 1.0), 0.0)
    return out.astype(np.float32).reshape(lead + size)


def _fmt_top(title, top):
    lines = [title]
    if not top:
        lines.append("  (none)")
    for name, score in top:
        lines.append(f"  {score:7.2f}  {name}")
    return lines


def attention_figure(image, attention, grid, seen_top, unseen_top, head_top=None, *,
                     title="image", cmap="jet", alpha=0.5, max_cols=6, dpi=80):
    """Draw an image, one attention overlay per head and the top labels.

    Args:
        image: uint8 array ``[H, W, 3]`` RGB, the (cropped) network input.
        attention: float array-like ``[M, R]``, one image's LESA attention.
        grid: ``(h, w)`` with ``h * w == R``.
        seen_top: list of ``(name, score)`` pairs, the top seen labels (score:
            LESA logit, unbounded float), best first.
        unseen_top: list of ``(name, score)`` pairs, the top unseen (zero-shot)
            labels, best first.
        head_top: optional list of M ``(name, score)`` pairs, each head's
            highest-scoring label; used in the head titles.
        title: str, title of the image panel.
        cmap: str, matplotlib colormap of the overlay.
        alpha: float in [0, 1], overlay opacity.
        max_cols: int, panels per row.
        dpi: int, figure resolution (pixels per inch).

    Returns:
        matplotlib.figure.Figure with exactly M + 2 axes, in order: the image
        (titled ``title``), heads 0..M-1 (titled ``"head m"`` or
        ``"head m: <name> (<score>)"``), and a text panel titled
        ``"top-K predictions"`` listing the seen then unseen labels.

    Raises:
        ValueError: if ``image`` is not ``[H, W, 3]`` or ``head_top`` does not
            have M entries (and the errors of :func:`attention_grids`).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"attention_figure: image must be [H, W, 3], got {image.shape}")
    maps = attention_grids(np.asarray(attention)[None], grid)[0]          # [M, h, w]
    heads = maps.shape[0]
    if head_top is not None and len(head_top) != heads:
        raise ValueError(f"attention_figure: head_top has {len(head_top)} entries for "
                         f"{heads} heads")
    heat = upsample_attention(maps, image.shape[:2])                       # [M, H, W]

    panels = heads + 2
    ncols = max(1, min(panels, int(max_cols)))
    nrows = math.ceil(panels / ncols)
    fig = Figure(figsize=(2.3 * ncols, 2.5 * nrows), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(nrows, ncols, 1)
    ax.imshow(image)
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    for m in range(heads):
        ax = fig.add_subplot(nrows, ncols, m + 2)
        ax.imshow(image)
        ax.imshow(heat[m], cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0)
        label = f"head {m}"
        if head_top is not None:
            name, score = head_top[m]
            label += f": {name} ({score:.2f})"
        ax.set_title(label, fontsize=7)
        ax.axis("off")
    ax = fig.add_subplot(nrows, ncols, heads + 2)
    ax.axis("off")
    ax.set_title("top-K predictions", fontsize=8)
    text = "\n".join(_fmt_top("seen:", seen_top) + _fmt_top("unseen:", unseen_top))
    ax.text(0.0, 1.0, text, va="top", ha="left", family="monospace", fontsize=6,
            transform=ax.transAxes)
    fig.tight_layout()
    return fig


def figure_to_array(fig):
    """Render a figure to pixels.

    Args:
        fig: matplotlib.figure.Figure (any canvas; it is drawn with Agg).

    Returns:
        uint8 ndarray ``[H, W, 3]`` RGB (the opaque figure background, alpha
        dropped), H x W = the figure size in inches times its dpi.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.array(canvas.buffer_rgba(), dtype=np.uint8)[..., :3]


def log_attention_images(summary_writer, step, images, attention, grid, seen_tops, unseen_tops,
                         max_images=4, head_tops=None):
    """Write attention figures as TensorBoard image summaries.

    Writes ``tf.summary.image("attention/<i>", ...)`` for the first
    ``min(B, max_images)`` images (one tag per image, so TensorBoard shows
    each image's history over ``step``) and flushes the writer.

    Args:
        summary_writer: ``tf.summary.SummaryWriter`` (e.g.
            ``tf.summary.create_file_writer(run_dir + "/tb")``).
        step: int, the global step of the summaries.
        images: uint8 array ``[B, H, W, 3]``.
        attention: float array ``[B, M, R]``.
        grid: ``(h, w)`` with ``h * w == R``.
        seen_tops, unseen_tops: length-B lists of ``(name, score)`` lists.
        max_images: int, at most this many figures are written.
        head_tops: optional length-B list of M ``(name, score)`` pairs.

    Returns:
        int, the number of figures written.
    """
    import tensorflow as tf

    n = min(len(images), int(max_images))
    with summary_writer.as_default(step=int(step)), tf.summary.record_if(True):
        for i in range(n):
            fig = attention_figure(images[i], attention[i], grid, seen_tops[i], unseen_tops[i],
                                   None if head_tops is None else head_tops[i], title=f"image {i}")
            tf.summary.image(f"attention/{i}", figure_to_array(fig)[None], step=int(step))
    summary_writer.flush()
    return n
