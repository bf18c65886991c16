"""Keypoint localisation accuracy: does a class's CAM keypoint fall inside a box of that class?

The measure of the OASS issue for the scattered Fashion-MNIST composites
(:mod:`mll_tf.data.datasets.fashion_mnist_scatter`): the share of
(image, present class) pairs whose keypoint (:func:`mll_tf.ops.keypoints.keypoints`)
lies inside a ground-truth box of that class. A pair without a keypoint (no
positive activation; for ``max`` every present class but the keypoint's
owner) counts as a miss. A keypoint of cell ``(r, c)`` on an ``h x w`` map
sits at the cell centre, ``((r + 0.5) / h, (c + 0.5) / w)`` as fractions of
the image side (cTopk centroids are real-valued and mapped the same way).
"""

import numpy as np

__all__ = ["keypoint_hits", "localization_accuracy"]


def keypoint_hits(points, valid, labels, boxes, feature_size):
    """Hit matrix of the (image, present class) pairs.

    Args:
        points: float ``[N, C, 2]`` (row, col) in feature cells.
        valid: bool ``[N, C]``.
        labels: ``[N, C]`` in {1, 0, -1}; pairs are the entries equal to 1.
        boxes: list of N lists of ``[class, y0, x0, y1, x1]`` (fractions of the
            image side, half-open).
        feature_size: ``(h, w)`` cells of the map.

    Returns:
        (hits bool ``[N, C]``, pairs bool ``[N, C]``).

    Raises:
        ValueError: ``len(boxes) != N``.
    """
    points, valid, labels = np.asarray(points, np.float64), np.asarray(valid, bool), np.asarray(labels)
    n, c = labels.shape
    if len(boxes) != n:
        raise ValueError(f"localisation: {len(boxes)} box lists for {n} images")
    h, w = feature_size
    yx = (points + 0.5) / np.array([h, w], np.float64)
    pairs = labels == 1
    hits = np.zeros((n, c), bool)
    for i in range(n):
        for cls, y0, x0, y1, x1 in boxes[i]:
            cls = int(cls)
            if cls >= c or not pairs[i, cls] or not valid[i, cls]:
                continue
            y, x = yx[i, cls]
            hits[i, cls] |= bool(y0 <= y < y1 and x0 <= x < x1)
    return hits & pairs, pairs


def localization_accuracy(points, valid, labels, boxes, feature_size):
    """Share in [0, 1] of the (image, present class) pairs whose keypoint is in a box of the class (NaN: no pair)."""
    hits, pairs = keypoint_hits(points, valid, labels, boxes, feature_size)
    return float(hits.sum() / pairs.sum()) if pairs.any() else float("nan")
