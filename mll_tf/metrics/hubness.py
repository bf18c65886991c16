"""Hubness of label rankings and two standard label-side corrections.

In zero-shot scoring a few labels ("hubs") land in the top-K of very many
images (Radovanovic, Nanopoulos & Ivanovic, "Hubs in space", JMLR 2010;
Dinu, Lazaridou & Baroni, "Improving zero-shot learning by mitigating the
hubness problem", ICLR 2015 workshop). Measures, over N images and C labels:

* k-occurrence ``N_k(c)``: the number of images whose top-K labels contain
  c (ties broken by column order, as a stable sort);
* its skewness ``E[(N_k - mu)^3] / sigma^3`` (population moments,
  Radovanovic et al. Eq. 1): 0 for a symmetric spread, large and positive
  when a few labels are hubs;
* the share of the images whose top-1 label is the most frequent top-1
  label (a fraction in [0, 1]; 1/C would be a uniform spread).

Corrections (computed on UNLABELLED reference images, e.g. the validation
split; no label is read):

* ``zscore``: per-label standardisation ``(s_ic - mu_c) / sigma_c`` with the
  label's mean and standard deviation over the reference images;
* ``csls``: the label-side term of cross-domain similarity local scaling
  (Lample et al., "Word translation without parallel data", ICLR 2018,
  Eq. 6): ``s_ic - r_c``, ``r_c`` the mean of the label's ``k`` highest
  reference scores (the image-side term is constant within an image and
  does not change a ranking over labels, so it is left out).

Both are monotone per label (column), so every per-class AP -- hence ZSL and
GZSL mAP -- is unchanged; they change the per-image rankings, i.e.
P/R/F1@K and the hubness figures (docs/metrics.md §7).
"""

import numpy as np

__all__ = ["HUBNESS_CORRECTIONS", "fit_correction", "apply_correction", "hubness_report",
           "k_occurrence"]

HUBNESS_CORRECTIONS = ("none", "zscore", "csls")


def k_occurrence(scores, k):
    """k-occurrence of every label.

    Args:
        scores: float ``[N, C]``.
        k: int, 1 <= k <= C.

    Returns:
        int64 ``[C]``: for each label, the number of images with it in their
        top ``k`` (ties by column order); sums to ``N * k``.

    Raises:
        ValueError: ``k`` out of range.
    """
    s = np.asarray(scores, np.float64)
    n, c = s.shape
    if not 1 <= k <= c:
        raise ValueError(f"k_occurrence: k must be in [1, {c}], got {k}")
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.bincount(top.ravel(), minlength=c).astype(np.int64)


def _skewness(x):
    x = np.asarray(x, np.float64)
    sd = x.std()
    if sd == 0:
        return 0.0
    return float(np.mean((x - x.mean()) ** 3) / sd ** 3)


def hubness_report(scores, ks=(5,), names=None):
    """Hubness figures of one score matrix.

    Args:
        scores: float ``[N, C]`` (e.g. the ZSL scores of the unseen labels).
        ks: K values for the k-occurrence skewness (those > C are skipped).
        names: optional list of C label names.

    Returns:
        dict: ``skew@K`` (float) for each K, ``top1_share`` (fraction in
        [0, 1] of images whose top-1 is the most frequent top-1 label),
        ``top1_label`` (its name, or column index without ``names``) and
        ``labels_never_top1`` (int).
    """
    s = np.asarray(scores, np.float64)
    n, c = s.shape
    out = {}
    for k in ks:
        if k <= c:
            out[f"skew@{k}"] = _skewness(k_occurrence(s, k))
    if n and c:
        n1 = k_occurrence(s, 1)
        j = int(np.argmax(n1))
        out["top1_share"] = float(n1[j] / n)
        out["top1_label"] = names[j] if names is not None else j
        out["labels_never_top1"] = int((n1 == 0).sum())
    return out


def fit_correction(reference_scores, method="zscore", k=10):
    """Per-label statistics of a hubness correction from unlabelled images.

    Args:
        reference_scores: float ``[M, C]`` scores of reference images (no
            labels are used).
        method: ``"none"``, ``"zscore"`` or ``"csls"``.
        k: int >= 1, neighbourhood size of ``csls`` (capped at M).

    Returns:
        dict ``{"method", "shift": float64 [C], "scale": float64 [C]}``;
        corrected scores are ``(s - shift) / scale``.

    Raises:
        ValueError: unknown ``method`` or no reference image.
    """
    r = np.asarray(reference_scores, np.float64)
    if method not in HUBNESS_CORRECTIONS:
        raise ValueError(f"hubness correction must be one of {HUBNESS_CORRECTIONS}, got {method!r}")
    c = r.shape[1]
    if method == "none":
        return {"method": method, "shift": np.zeros(c), "scale": np.ones(c)}
    if r.shape[0] < 1:
        raise ValueError("fit_correction: no reference image")
    if method == "zscore":
        sd = r.std(axis=0)
        return {"method": method, "shift": r.mean(axis=0), "scale": np.where(sd > 0, sd, 1.0)}
    kk = min(int(k), r.shape[0])
    top = -np.sort(-r, axis=0)[:kk]
    return {"method": method, "shift": top.mean(axis=0), "scale": np.ones(c)}


def apply_correction(scores, correction):
    """``(scores - shift) / scale`` per label (column); float64 ``[N, C]``."""
    return (np.asarray(scores, np.float64) - correction["shift"]) / correction["scale"]
