"""Calibrated stacking for generalised zero-shot ranking (GZSL).

Chao, Changpinyo, Gong & Sha, "An empirical study and analysis of
generalized zero-shot learning for object recognition in the wild", ECCV
2016, Sec. 3.2, Eq. 3: a model trained on the seen labels scores them
higher than unseen labels it never saw, so [unseen, seen] rankings are
calibrated by subtracting a constant gamma from every seen-label score
before ranking::

    s'_ic = s_ic - gamma * [c is seen]

gamma > 0 favours the unseen labels, gamma = 0 is plain stacking. gamma is a
hyper-parameter and must be chosen without unseen-label ground truth: here
on the validation split with SEEN labels held out as pseudo-unseen
(:func:`mll_tf.training.zsl_split.choose_holdout_labels`, docs/lesa.md §7).

Per-class AP is invariant to adding a constant to a column, so calibration
changes the GZSL P/R/F1@K (a per-image ranking over labels) and never the
ZSL or GZSL mAP (docs/metrics.md §7).
"""

import numpy as np

from mll_tf.metrics.top_k import top_k_precision_recall_f1

__all__ = ["calibrated_stacking", "choose_gamma", "gamma_grid"]


def calibrated_stacking(scores, num_unseen, gamma):
    """Subtract ``gamma`` from the seen columns of GZSL scores.

    Args:
        scores: float ``[N, U + S]``, unseen columns first (docs/metrics.md §5).
        num_unseen: int U, 0 <= U <= U + S.
        gamma: float, in the units of the scores (e.g. LESA logits).

    Returns:
        float64 ``[N, U + S]``, a new array (the input is not modified).

    Raises:
        ValueError: ``scores`` not 2-D or ``num_unseen`` out of range.
    """
    s = np.array(scores, np.float64, copy=True)
    u = int(num_unseen)
    if s.ndim != 2 or not 0 <= u <= s.shape[1]:
        raise ValueError(f"calibrated_stacking: need scores [N, C] and 0 <= num_unseen <= C, got "
                         f"shape {s.shape} and {num_unseen}")
    s[:, u:] -= float(gamma)
    return s


def gamma_grid(scores, num_unseen, num=201):
    """Candidate gammas spanning every useful shift of the seen columns.

    From ``-(d)`` to ``+d`` with ``d = max(scores) - min(scores)``: beyond
    that range every seen score is above (or below) every unseen score, so
    the ranking no longer changes. Contains 0 when ``num`` is odd.

    Args:
        scores: float ``[N, U + S]``.
        num_unseen: int U (unused except for validation).
        num: int >= 1, grid size.

    Returns:
        float64 ``[num]``, increasing.
    """
    s = np.asarray(scores, np.float64)
    if s.size == 0:
        return np.zeros(1)
    d = float(np.max(s) - np.min(s))
    return np.linspace(-d, d, int(num)) if d > 0 else np.zeros(1)


def choose_gamma(scores, labels, num_unseen, ks=(3, 5), grid=None):
    """gamma maximising the mean GZSL F1@K on (validation) scores.

    Args:
        scores: float ``[N, U + S]``, unseen (here: pseudo-unseen) columns first.
        labels: int ``[N, U + S]`` in {1, 0, -1}, same order.
        num_unseen: int U >= 1.
        ks: K values; the criterion is the mean of F1@K over those with
            K <= U + S.
        grid: optional float array of candidates (default :func:`gamma_grid`).

    Returns:
        (gamma float, criterion at gamma float in [0, 1], criterion at
        gamma = 0 float in [0, 1]). Ties go to the candidate closest to 0
        (then the smaller one), so a flat criterion keeps plain stacking.

    Raises:
        ValueError: no K fits or ``num_unseen`` < 1.
    """
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels)
    u = int(num_unseen)
    ks = [k for k in ks if k <= s.shape[1]]
    if not ks or u < 1:
        raise ValueError(f"choose_gamma: need num_unseen >= 1 and some K <= {s.shape[1]}")
    grid = gamma_grid(s, u) if grid is None else np.asarray(grid, np.float64)

    def crit(g):
        c = calibrated_stacking(s, u, g)
        return float(np.mean([top_k_precision_recall_f1(c, y, k)[2] for k in ks]))

    values = np.array([crit(g) for g in grid])
    best = values.max()
    cands = grid[values == best]
    gamma = float(min(cands, key=lambda g: (abs(g), g)))
    return gamma, float(best), crit(0.0)
