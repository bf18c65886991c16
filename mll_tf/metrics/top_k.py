"""Top-K precision / recall / F1 (LESA ``evaluate_k``, ``mode_F1='overall'``).

docs/metrics.md §2: for every image i, T_i is the set of its K highest-scoring
classes, over **all** N images (``is_exclude=False``: images without a
positive label are kept and each adds K false positives). Then

    TP = sum_i |{c in T_i : y_ic = 1}|
    P  = TP / (N * K)      R = TP / #{(i, c) : y_ic = 1}      F1 = 2PR / (P + R)

These are micro ("overall") scores; unknown (-1) and absent (0) both count as
"not positive".
"""

import numbers

import numpy as np

from mll_tf.metrics.average_precision import _check_finite_minmax, _check_inputs

__all__ = ["top_k_precision_recall_f1"]

_ROW_BLOCK_ENTRIES = 1 << 21   # entries per row block (bounds the temporaries)


def _top_k_true_positives(s, y, k):
    """TP count of one row block. s [n, C] float, y [n, C] int8."""
    n, c = s.shape
    pos = y == 1
    if k == c:
        return int(np.count_nonzero(pos))
    # value of the k-th largest score of every row
    kth = np.partition(s, c - k, axis=1)[:, c - k][:, None]
    above = s > kth
    tp = int(np.count_nonzero(above & pos))
    n_above = np.count_nonzero(above, axis=1)
    need = k - n_above                         # slots left for entries == kth
    eq = s == kth
    n_eq = np.count_nonzero(eq, axis=1)
    all_in = n_eq == need                      # usual case: no tie at the cut
    tp += int(np.count_nonzero(eq[all_in] & pos[all_in]))
    cut = np.flatnonzero(~all_in)
    if cut.size:
        # tie at the boundary: the lower class indices win (tf.math.top_k)
        eq_c = eq[cut]
        rank = np.cumsum(eq_c, axis=1)
        take = eq_c & (rank <= need[cut, None])
        tp += int(np.count_nonzero(take & pos[cut]))
    return tp


def top_k_precision_recall_f1(scores, labels, k):
    """Micro top-K precision, recall and F1 over all images (LESA ``evaluate_k``).

    T_i = the ``k`` highest-scoring classes of image i, for **all** N images
    (images without positives included; each adds ``k`` false positives).
    ``TP`` counts entries of T_i with label ``1``; ``P = TP / (N k)``,
    ``R = TP / #(label == 1)``, ``F1 = 2PR / (P + R)``.

    Ties: among equal scores the **lower class index** is selected first, the
    rule of ``tf.math.top_k`` and of a stable descending sort
    (``np.argsort(-scores, kind="stable")[:, :k]``). The result is therefore
    deterministic even when several classes tie at the K-th place.

    Vectorised over images (``np.partition`` to find the K-th value of each
    row; only rows with a tie at the cut need a running count), in row blocks
    to bound memory.

    Args:
        scores: float array ``[N, C]``, finite.
        labels: integer array ``[N, C]`` in {1, 0, -1} (only ``1`` is positive).
        k: int, ``1 <= k <= C``.

    Returns:
        Tuple of Python floats ``(precision, recall, f1)``, fractions in
        [0, 1]. ``recall`` is 0 when there is no positive label, ``f1`` is 0
        when ``precision + recall == 0``, and all three are 0 when N == 0.

    Raises:
        ValueError: if ``scores`` is not 2-D, the shapes differ, ``labels``
            holds a value outside {1, 0, -1}, ``scores`` holds NaN/inf, or
            ``k`` is not an integer in [1, C].

    Source: hbdat/cvpr20_LESA ``core/utils.py::evaluate_k``; docs/metrics.md §2.
    """
    fn = "top_k_precision_recall_f1"
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral):
        raise ValueError(f"{fn}: `k` must be an integer, got {k!r}")
    scores, labels = _check_inputs(scores, labels, fn)
    n, c = scores.shape
    k = int(k)
    if not 1 <= k <= c:
        raise ValueError(f"{fn}: `k` must be in [1, C={c}], got {k}")
    if n == 0:
        return 0.0, 0.0, 0.0
    _check_finite_minmax(scores.min(axis=1), scores.max(axis=1), fn)
    rows = max(1, _ROW_BLOCK_ENTRIES // c)
    tp = 0
    for r0 in range(0, n, rows):
        tp += _top_k_true_positives(scores[r0:r0 + rows], labels[r0:r0 + rows], k)
    n_pos = int(np.count_nonzero(labels == 1))
    precision = tp / (n * k)
    recall = tp / n_pos if n_pos else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return float(precision), float(recall), float(f1)
