"""CAM keypoints of OASS (Max, cMax, cTopk, cTopk-w) and the grid-aligned windows cropped around them.

OASS (Xu et al., "Object-Aware Self-Supervised Multi-Label Learning", ICIP
2022) generates its self-supervision from object locations found on the
class activation maps (CAMs) of a Puzzle-CAM classifier. Its release (a
README only) names four keypoint strategies; the rules below are our
reconstruction of them (docs/oass.md sec. 1 lists which parts are the
README's text and which are inferred):

===========  ===================================================================
``max``      one keypoint per image: the arg-max of the class-merged map
             ``M = max_c relu(F) * y`` (raw maps: normalised maps all peak at
             ~1); it belongs to the class with the largest ``relu(F)`` among
             the image's positive classes at that cell
``cmax``     per positive class: the arg-max of its normalised CAM
``ctopk``    per positive class: the ``k`` highest local maxima (3x3
             neighbourhood, ``A > 0``) of its normalised CAM and their plain
             centroid; fewer than ``k`` maxima: the ones there are
``ctopk_w``  as ``ctopk``, centroid weighted by the normalised CAM values
===========  ===================================================================

Conventions: feature maps are NHWC ``[B, h, w, C]``; a keypoint is (row, col)
in feature cells (cell ``(i, j)`` has coordinates ``(i, j)``; centroids are
real-valued). Ties resolve to the first cell in row-major order (``argmax``
and ``top_k`` both keep the lower index first). A keypoint exists for
(image, class) only if the class is positive and its map has a positive
activation (``max relu(F) > 0``): an all-zero / all-negative map has none.
Everything here is a stop-gradient computation (no trainable weights).
"""

import tensorflow as tf

__all__ = ["STRATEGIES", "make_cam", "keypoints", "grid_windows", "crop_windows", "local_maxima"]

STRATEGIES = ("max", "cmax", "ctopk", "ctopk_w")

#: Puzzle-CAM ``make_cam`` epsilon (``tools/ai/torch_utils.py``).
CAM_EPS = 1e-5


def make_cam(features):
    """Max-normalised CAMs ``A = relu(relu(F) - eps) / (max_hw relu(F) + eps)``.

    Source: Puzzle-CAM ``tools/ai/torch_utils.py::make_cam`` (eps = 1e-5), per
    (image, class) channel.

    Args:
        features: float ``[B, h, w, C]`` raw class maps F.

    Returns:
        float32 ``[B, h, w, C]`` in [0, 1).
    """
    f = tf.nn.relu(tf.cast(features, tf.float32))
    top = tf.reduce_max(f, axis=[1, 2], keepdims=True)
    return tf.nn.relu(f - CAM_EPS) / (top + CAM_EPS)


def local_maxima(cams):
    """Cells that equal the maximum of their 3x3 neighbourhood and are > 0.

    The neighbourhood is cut at the borders (``max_pool2d`` with SAME padding
    ignores the padding), so a border peak is a maximum; on a plateau every
    cell of the plateau is a maximum.

    Args:
        cams: float ``[B, h, w, C]``.

    Returns:
        bool ``[B, h, w, C]``.
    """
    pooled = tf.nn.max_pool2d(cams, ksize=3, strides=1, padding="SAME")
    return tf.logical_and(tf.equal(cams, pooled), cams > 0)


def _coords(flat_idx, w):
    flat_idx = tf.cast(flat_idx, tf.int32)
    return tf.cast(tf.stack([flat_idx // w, flat_idx % w], axis=-1), tf.float32)


def keypoints(features, labels, strategy="cmax", k=3):
    """Keypoints of the positive classes of each image, one vectorised op.

    Args:
        features: float ``[B, h, w, C]`` raw class maps F (the classifier's
            1x1-conv output before pooling); a stop-gradient is applied.
        labels: ``[B, C]`` labels, 1 present (anything else: no keypoint;
            unknown ``-1`` entries are treated as not present).
        strategy: one of :data:`STRATEGIES`.
        k: int >= 1, maxima per channel of ``ctopk`` / ``ctopk_w``.

    Returns:
        ``(points, valid)``: float32 ``[B, C, 2]`` (row, col) in feature
        cells and bool ``[B, C]``. For ``max`` at most one class per image
        is valid (the keypoint's owner) and its row holds the keypoint; rows
        of invalid pairs are 0.

    Raises:
        ValueError: an unknown ``strategy`` or ``k < 1``.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"--keypoints: {strategy!r} is not one of {', '.join(STRATEGIES)}")
    if int(k) < 1:
        raise ValueError(f"--topk: must be >= 1, got {k}")
    f = tf.stop_gradient(tf.cast(features, tf.float32))
    pos = tf.equal(tf.cast(labels, tf.int32), 1)                                    # [B, C]
    shape = tf.shape(f)
    b, h, w, c = shape[0], shape[1], shape[2], shape[3]
    relu = tf.nn.relu(f)
    if strategy == "max":
        masked = relu * tf.cast(pos, tf.float32)[:, None, None, :]                  # [B, h, w, C]
        merged = tf.reshape(tf.reduce_max(masked, axis=-1), [b, h * w])             # [B, h*w]
        idx = tf.argmax(merged, axis=1, output_type=tf.int32)                       # first max
        point = _coords(idx, w)                                                     # [B, 2]
        at = tf.gather(tf.reshape(masked, [b, h * w, c]), idx, axis=1, batch_dims=1)  # [B, C]
        # owner: the positive class with the largest activation there (first on ties)
        at = tf.where(pos, at, -tf.ones_like(at))
        owner = tf.argmax(at, axis=1, output_type=tf.int32)
        ok = tf.reduce_max(merged, axis=1) > 0
        valid = tf.logical_and(tf.one_hot(owner, c, on_value=True, off_value=False), ok[:, None])
        points = tf.where(valid[..., None], tf.tile(point[:, None, :], [1, c, 1]), 0.0)
        return points, valid
    cams = make_cam(f)
    chan = tf.reshape(tf.transpose(cams, [0, 3, 1, 2]), [b, c, h * w])              # [B, C, h*w]
    has_peak = tf.reduce_max(tf.reshape(tf.transpose(relu, [0, 3, 1, 2]), [b, c, h * w]), axis=-1) > 0
    valid = tf.logical_and(pos, has_peak)
    if strategy == "cmax":
        points = _coords(tf.argmax(chan, axis=-1, output_type=tf.int32), w)         # [B, C, 2]
        return tf.where(valid[..., None], points, 0.0), valid
    lm = tf.reshape(tf.transpose(local_maxima(cams), [0, 3, 1, 2]), [b, c, h * w])
    scores = tf.where(lm, chan, tf.fill(tf.shape(chan), float("-inf")))
    kk = tf.minimum(int(k), h * w)
    vals, idx = tf.math.top_k(scores, k=kk, sorted=True)                            # [B, C, k]
    ok = tf.math.is_finite(vals)
    xy = _coords(idx, w)                                                            # [B, C, k, 2]
    if strategy == "ctopk":
        wgt = tf.cast(ok, tf.float32)
        den = tf.maximum(tf.reduce_sum(wgt, axis=-1), 1.0)
    else:  # ctopk_w: CAM-weighted centroid (scale-invariant in the weights)
        wgt = tf.where(ok, vals, 0.0)
        den = tf.maximum(tf.reduce_sum(wgt, axis=-1), 1e-12)
    points = tf.reduce_sum(wgt[..., None] * xy, axis=2) / den[..., None]
    valid = tf.logical_and(valid, tf.reduce_any(ok, axis=-1))
    return tf.where(valid[..., None], points, 0.0), valid


def grid_windows(points, size, cells):
    """Top-left cell of the ``cells x cells`` window centred on each keypoint, clamped inside the map.

    ``i0 = clip(floor(r + 0.5) - cells // 2, 0, size - cells)`` (and ``j0``
    from the column): the rule of the OASS reconstruction (docs/oass.md sec.
    1), rounding halves up. The image window is then
    ``stride * (i0, j0)`` with side ``stride * cells``, so the patch's
    feature map lines up with ``F[i0:i0+cells, j0:j0+cells]``.

    Args:
        points: float ``[..., 2]`` (row, col) in cells.
        size: int or ``(h, w)``, the feature map's size in cells.
        cells: int, window side in cells (``1 <= cells <= min(h, w)``).

    Returns:
        int32 ``[..., 2]`` (i0, j0).

    Raises:
        ValueError: ``cells`` outside ``[1, min(h, w)]``.
    """
    h, w = (size, size) if isinstance(size, int) else size
    if not 1 <= int(cells) <= min(h, w):
        raise ValueError(f"--patch-cells: a window of {cells} cells does not fit a {h}x{w} feature map")
    centre = tf.cast(tf.floor(tf.cast(points, tf.float32) + 0.5), tf.int32) - int(cells) // 2
    hi = tf.constant([h - int(cells), w - int(cells)], tf.int32)
    return tf.clip_by_value(centre, 0, hi)


def crop_windows(x, batch_index, corners, side, stride=1):
    """Exact square crops ``x[b, s*i0 : s*i0 + side, s*j0 : s*j0 + side]`` (a vectorised gather).

    Args:
        x: ``[B, H, W, D]`` images or feature maps.
        batch_index: int ``[N]``, the image of each crop.
        corners: int ``[N, 2]`` (i0, j0) in cells (see :func:`grid_windows`).
        side: int, crop side in pixels of ``x``.
        stride: int, pixels of ``x`` per cell (1 for feature maps; the
            backbone's output stride for images).

    Returns:
        ``[N, side, side, D]``, same dtype as ``x``.
    """
    src = tf.gather(x, batch_index)                                          # [N, H, W, D]
    ar = tf.range(int(side), dtype=tf.int32)
    rows = corners[:, 0:1] * int(stride) + ar[None, :]                       # [N, side]
    cols = corners[:, 1:2] * int(stride) + ar[None, :]
    src = tf.gather(src, rows, axis=1, batch_dims=1)                         # [N, side, W, D]
    return tf.gather(src, cols, axis=2, batch_dims=1)                        # [N, side, side, D]
