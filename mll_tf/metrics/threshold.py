"""Threshold-based multi-label metrics: CP/CR/CF1, OP/OR/OF1, attribute accuracy.

* :func:`threshold_metrics`: per-class ("C") and overall ("O") precision,
  recall and F1 at a fixed threshold (CSL ``validate.py`` at 0.8, DOR-ML at
  0.5 or tuned thresholds; docs/metrics.md §3), with the per-class scores
  averaged over CLASSES (the DOR-ML loop over samples in
  ``torchreid/metrics/classification.py`` is a bug).
* :func:`tune_thresholds`: per-class argmax-F1 thresholds from
  ``sklearn.metrics.precision_recall_curve`` (DOR-ML
  ``tune_multilabel_thresholds``; docs/metrics.md §3) without its NaN F1 and
  off-by-one risks.
* :func:`attribute_accuracy`: accuracy of the argmax inside groups of
  mutually exclusive classes (e.g. one colour per image).
* :func:`group_predictions`: the argmax inside each exclusive group, or
  "no answer" (``#N/A`` in attribute tables) when the winner's score is
  below its class threshold.
* :func:`thresholds_to_dict` / :func:`thresholds_from_dict`: per-class
  thresholds keyed by class NAME (the ``thresholds.json`` layout), so a file
  never silently applies to a reordered vocabulary.

Inputs: ``scores`` float ``[N, C]`` and ``labels`` int ``[N, C]`` in
{1 present, 0 absent, -1 unknown}. Results are fractions in [0, 1] (never
percent, unlike the references).
"""

import numpy as np

from mll_tf.metrics.average_precision import _check_inputs

__all__ = ["threshold_metrics", "tune_thresholds", "attribute_accuracy", "group_predictions",
           "thresholds_to_dict", "thresholds_from_dict"]

_ROW_BLOCK_ENTRIES = 1 << 21   # entries per row block (bounds the temporaries)


def _check_finite(scores, fn):
    if scores.size and not np.isfinite(scores).all():
        raise ValueError(f"{fn}: `scores` must be finite (found NaN or inf)")


def _ratio(num, den):
    """num / den as float64, 0 where den == 0 (scalars or arrays)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _f1(p, r):
    p = np.asarray(p, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    return _ratio(2.0 * p * r, p + r)


def threshold_metrics(scores, labels, threshold=0.5, ignore_unknown=True,
                      return_per_class=False):
    """Per-class and overall precision / recall / F1 at a threshold.

    Entry (i, c) is predicted positive iff ``scores[i, c] >= threshold_c``
    (the rule of ``sklearn.metrics.precision_recall_curve``, so the values
    of :func:`tune_thresholds` reproduce their F1; CSL ``validate.py`` and
    DOR-ML use ``>``, which differs only for scores exactly equal to the
    threshold). With ``ignore_unknown`` the entries labelled -1 are left out
    of every count; otherwise -1 counts as absent (0). Per class c, over its
    counted entries::

        TP_c = #(pred & y = 1)  FP_c = #(pred & y != 1)  FN_c = #(!pred & y = 1)
        P_c = TP_c / (TP_c + FP_c)      R_c = TP_c / (TP_c + FN_c)
        CP = mean_c P_c   CR = mean_c R_c   CF1 = 2 CP CR / (CP + CR)
        OP = sum TP / sum (TP + FP)   OR = sum TP / sum (TP + FN)
        OF1 = 2 OP OR / (OP + OR)

    0/0 cases, all defined as 0: P_c of a class with no predicted positive,
    R_c of a class with no (counted) positive, OP with no predicted positive
    at all, OR with no positive at all, and any F1 whose P + R = 0. CP and CR
    average over ALL C classes, including classes without positives (which
    then count R_c = 0), as ML-GCN and CSL ``validate.py`` do (CSL sets
    P_c = R_c = 0 whenever TP_c = 0, the same values). CF1 is
    2 CP CR / (CP + CR) (ML-GCN; the CSL ``validate.py`` prints the mean of
    the per-class F1 instead, available as
    ``mean(result["per_class"]["f1"])`` with ``return_per_class``).

    Args:
        scores: float array [N, C], probabilities in [0, 1].
        labels: int array [N, C] in {1, 0, -1}.
        threshold: float, or float array [C] (per-class thresholds, e.g.
            from :func:`tune_thresholds`); finite.
        ignore_unknown: bool, drop -1 entries (True) or count them as 0.
        return_per_class: bool, also return the per-class values.

    Returns:
        dict of Python floats in [0, 1]: ``"CP", "CR", "CF1", "OP", "OR",
        "OF1"``; with ``return_per_class`` also ``"per_class"``: dict of
        float64 arrays [C] ``"precision", "recall", "f1"`` and int64 arrays
        [C] ``"tp", "fp", "fn"``. For N = 0 every value is 0.

    Raises:
        ValueError: if ``scores`` is not 2-D, the shapes differ, ``labels``
            holds another value, ``scores`` holds NaN/inf or values outside
            [0, 1] (e.g. logits), or ``threshold`` is not a finite scalar or
            [C] array.

    Source: docs/metrics.md §3; CSL ``validate.py``; DOR-ML
    ``torchreid/metrics/classification.py`` (its loop over samples not copied);
    ML-GCN ``util.py::AveragePrecisionMeter.evaluation``.
    """
    fn = "threshold_metrics"
    scores, labels = _check_inputs(scores, labels, fn)
    n, c = scores.shape
    _check_finite(scores, fn)
    if scores.size and (scores.min() < 0 or scores.max() > 1):
        raise ValueError(
            f"{fn}: `scores` must be probabilities in [0, 1], found values in "
            f"[{scores.min()}, {scores.max()}] (apply a sigmoid to logits)")
    thr = np.asarray(threshold, dtype=np.float64)
    if thr.ndim > 1 or (thr.ndim == 1 and thr.shape[0] != c):
        raise ValueError(
            f"{fn}: `threshold` must be a scalar or have shape [{c}], got "
            f"{thr.shape}")
    if not np.isfinite(thr).all():
        raise ValueError(f"{fn}: `threshold` must be finite")

    tp = np.zeros(c, dtype=np.int64)
    fp = np.zeros(c, dtype=np.int64)
    fn_ = np.zeros(c, dtype=np.int64)
    rows = max(1, _ROW_BLOCK_ENTRIES // max(c, 1))
    for r0 in range(0, n, rows):
        s = scores[r0:r0 + rows]
        y = labels[r0:r0 + rows]
        pred = s >= thr
        pos = y == 1
        counted_neg = (y == 0) if ignore_unknown else ~pos
        tp += np.count_nonzero(pred & pos, axis=0)
        fp += np.count_nonzero(pred & counted_neg, axis=0)
        fn_ += np.count_nonzero(~pred & pos, axis=0)

    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn_)
    cp = float(precision.mean()) if c else 0.0
    cr = float(recall.mean()) if c else 0.0
    op = float(_ratio(tp.sum(), (tp + fp).sum()))
    or_ = float(_ratio(tp.sum(), (tp + fn_).sum()))
    result = {
        "CP": cp, "CR": cr, "CF1": float(_f1(cp, cr)),
        "OP": op, "OR": or_, "OF1": float(_f1(op, or_)),
    }
    if return_per_class:
        result["per_class"] = {
            "precision": precision, "recall": recall,
            "f1": _f1(precision, recall), "tp": tp, "fp": fp, "fn": fn_,
        }
    return result


def tune_thresholds(scores, labels, ignore_unknown=True, default=0.5):
    """Per-class thresholds that maximise F1 (DOR-ML, without its bugs).

    For each class c, on its entries with label != -1 (all entries, -1 as
    absent, if not ``ignore_unknown``), ``precision, recall, thresholds =
    sklearn.metrics.precision_recall_curve(y == 1, scores[:, c])``. The
    first ``len(thresholds)`` entries of precision/recall belong to
    ``thresholds`` (predicted positive iff score >= threshold); the extra
    last point (P = 1, R = 0) has no threshold and is never chosen (the
    off-by-one risk of DOR-ML). F1 = 2PR / (P + R) with F1 = 0 where
    P + R = 0 (never NaN). The result is the threshold of the maximal F1;
    on ties, the LOWEST such threshold (first ``np.argmax`` in sklearn's
    increasing order). Classes without any counted positive get ``default``.

    ``threshold_metrics(scores, labels, tune_thresholds(scores, labels))``
    then reaches the maximal F1 of every class (with the same
    ``ignore_unknown``). Tune on held-out data (DOR-ML tunes on the
    training loader's scores).

    Args:
        scores: float array [N, C], finite (any scale: probabilities or
            logits; thresholds are score values).
        labels: int array [N, C] in {1, 0, -1}.
        ignore_unknown: bool, drop -1 entries (True) or count them as 0.
        default: float, threshold of classes without counted positives.

    Returns:
        float64 NumPy array [C]; each entry is a score value of its class or
        ``default``.

    Raises:
        ValueError: if ``scores`` is not 2-D, the shapes differ, ``labels``
            holds another value or ``scores`` holds NaN/inf.

    Source: docs/metrics.md §3 (DOR-ML
    ``tune_multilabel_thresholds``).
    """
    from sklearn.metrics import precision_recall_curve

    fn = "tune_thresholds"
    scores, labels = _check_inputs(scores, labels, fn)
    _check_finite(scores, fn)
    n, c = scores.shape
    out = np.full(c, float(default), dtype=np.float64)
    for j in range(c):
        y = labels[:, j]
        s = scores[:, j]
        if ignore_unknown:
            known = y != -1
            y, s = y[known], s[known]
        positive = y == 1
        if not positive.any():
            continue
        precision, recall, thresholds = precision_recall_curve(positive, s)
        k = len(thresholds)
        f1 = _f1(precision[:k], recall[:k])
        out[j] = thresholds[int(np.argmax(f1))]
    return out


def attribute_accuracy(scores, labels, groups):
    """Accuracy of the within-group argmax for mutually exclusive classes.

    For each attribute a with columns G_a (e.g. the colour classes), an
    image counts if its attribute is known: exactly ONE column of G_a is
    labelled 1 (the others may be 0 or -1). Images with no positive or with
    several positives in G_a are skipped. The prediction is the column of
    G_a with the highest score (ties: the first column in the order given
    in ``groups``)::

        accuracy_a = #(argmax_{g in G_a} scores[i, g] == known class of i)
                     / #(images whose attribute is known)

    Args:
        scores: float array [N, C], finite (any monotone scale).
        labels: int array [N, C] in {1, 0, -1}.
        groups: dict str -> sequence of int column indices, each non-empty,
            in [0, C) and without repeats (groups may share columns).

    Returns:
        dict attribute -> Python float in [0, 1], or NaN when no image has
        the attribute known.

    Raises:
        ValueError: for invalid ``scores``/``labels`` (as in
            :func:`threshold_metrics`, any finite scale allowed) or an empty
            group, an index out of range / not an int, or a repeated index.
    """
    fn = "attribute_accuracy"
    scores, labels = _check_inputs(scores, labels, fn)
    _check_finite(scores, fn)
    c = scores.shape[1]
    result = {}
    for name, cols in _check_groups(groups, c, fn).items():
        positive = labels[:, cols] == 1                   # [N, |G|]
        known = np.count_nonzero(positive, axis=1) == 1
        if not known.any():
            result[name] = float("nan")
            continue
        truth = np.argmax(positive[known], axis=1)
        predicted = np.argmax(scores[known][:, cols], axis=1)
        result[name] = float(np.mean(predicted == truth))
    return result


def _check_groups(groups, c, fn):
    out = {}
    for name, columns in groups.items():
        cols = np.asarray(list(columns))
        if cols.size == 0 or cols.ndim != 1 or cols.dtype.kind not in "iu":
            raise ValueError(
                f"{fn}: group {name!r} must be a non-empty list of int column "
                f"indices, got {list(columns)!r}")
        if cols.min() < 0 or cols.max() >= c:
            raise ValueError(
                f"{fn}: group {name!r} has an index outside [0, {c}): "
                f"{cols.tolist()}")
        if np.unique(cols).size != cols.size:
            raise ValueError(
                f"{fn}: group {name!r} repeats a column: {cols.tolist()}")
        out[name] = cols
    return out


def group_predictions(scores, groups, thresholds=None):
    """The predicted class of each exclusive group, or -1 ("no answer", ``#N/A``).

    For group a with columns G_a, the prediction of image i is
    ``g* = argmax_{g in G_a} scores[i, g]`` (ties: the first column in the
    order of ``groups``). With ``thresholds``, the answer is withheld
    (-1, written ``#N/A`` in an attribute table) when
    ``scores[i, g*] < thresholds[g*]``: the group's threshold is the
    threshold of its winning class (the ``>=`` rule of
    :func:`threshold_metrics`).

    Args:
        scores: float array [N, C], finite.
        groups: dict str -> sequence of int column indices (as in
            :func:`attribute_accuracy`).
        thresholds: None, a float, or float array [C].

    Returns:
        dict attribute -> int64 array [N] of COLUMN indices into [0, C), or
        -1 where the answer is withheld.

    Raises:
        ValueError: non-2-D or non-finite ``scores``, an invalid group, or
            ``thresholds`` of another shape.
    """
    fn = "group_predictions"
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"{fn}: `scores` must be 2-D [N, C], got shape {scores.shape}")
    _check_finite(scores, fn)
    n, c = scores.shape
    if thresholds is not None:
        thr = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (c,)) \
            if np.ndim(thresholds) == 0 else np.asarray(thresholds, dtype=np.float64)
        if thr.shape != (c,):
            raise ValueError(f"{fn}: `thresholds` must be a scalar or have shape [{c}], got {thr.shape}")
    result = {}
    for name, cols in _check_groups(groups, c, fn).items():
        best = cols[np.argmax(scores[:, cols], axis=1)] if n else np.zeros(0, np.int64)
        best = best.astype(np.int64)
        if thresholds is not None and n:
            best = np.where(scores[np.arange(n), best] >= thr[best], best, -1)
        result[name] = best
    return result


def thresholds_to_dict(names, thresholds):
    """Per-class thresholds as ``{class name: float}`` (the ``thresholds.json`` layout).

    Args:
        names: sequence of C unique str, the class names in column order.
        thresholds: float array [C], finite.

    Raises:
        ValueError: repeated names, a length mismatch or a non-finite value.
    """
    names = [str(n) for n in names]
    thr = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if len(set(names)) != len(names):
        raise ValueError("thresholds_to_dict: class names must be unique")
    if thr.shape[0] != len(names):
        raise ValueError(f"thresholds_to_dict: {thr.shape[0]} thresholds for {len(names)} classes")
    if not np.isfinite(thr).all():
        raise ValueError("thresholds_to_dict: thresholds must be finite")
    return {n: float(t) for n, t in zip(names, thr)}


def thresholds_from_dict(mapping, names, source="thresholds"):
    """Per-class thresholds in the column order of ``names`` from ``{class name: float}``.

    Args:
        mapping: dict str -> number (e.g. ``json.load`` of ``thresholds.json``;
            a ``{"thresholds": {...}}`` wrapper is accepted too).
        names: sequence of C str, the model's classes in column order.
        source: str, named in errors (the file).

    Returns:
        float64 array [C].

    Raises:
        ValueError: a class of ``names`` missing from the mapping, a class of
            the mapping unknown to the model, or a value that is not a finite
            number (each named, with ``source``).
    """
    if isinstance(mapping, dict) and isinstance(mapping.get("thresholds"), dict):
        mapping = mapping["thresholds"]
    if not isinstance(mapping, dict):
        raise ValueError(f"{source}: expected a JSON object {{class name: threshold}}")
    names = [str(n) for n in names]
    missing = [n for n in names if n not in mapping]
    extra = sorted(set(mapping) - set(names))
    if missing or extra:
        raise ValueError(f"{source}: thresholds do not match the model's classes"
                         + (f"; missing: {', '.join(missing[:10])}" if missing else "")
                         + (f"; unknown: {', '.join(extra[:10])}" if extra else ""))
    out = np.empty(len(names), np.float64)
    for i, n in enumerate(names):
        v = mapping[n]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
            raise ValueError(f"{source}: threshold of {n!r} must be a finite number, got {v!r}")
        out[i] = float(v)
    return out
