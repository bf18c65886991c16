"""Tests for mll_tf.metrics.threshold (docs/metrics.md §3)."""

import math

import numpy as np
import pytest

from mll_tf.metrics import attribute_accuracy, threshold_metrics, tune_thresholds

S = np.array([[0.9, 0.2, 0.6],
              [0.4, 0.7, 0.5],
              [0.6, 0.1, 0.3],
              [0.2, 0.8, 0.9]])
Y = np.array([[1, 0, -1],
              [1, 1, 0],
              [0, -1, 0],
              [0, 1, 1]], np.int8)


def _approx(d):
    return {k: pytest.approx(v) for k, v in d.items()}


def test_threshold_metrics_hand_computed():
    # threshold 0.5, predicted iff s >= 0.5:
    #   pred = [[1,0,1],[0,1,1],[1,0,0],[0,1,1]]  (s[1,2] = 0.5 counts)
    # class 0: TP 1 (row 0), FN 1 (row 1), FP 1 (row 2) -> P 1/2, R 1/2
    # class 1: row 2 unknown; TP 2 (rows 1, 3)          -> P 1,   R 1
    # class 2: row 0 unknown; FP row 1, TP row 3        -> P 1/2, R 1
    # CP = 2/3, CR = 5/6, CF1 = 2 (2/3)(5/6) / (3/2) = 20/27
    # OP = 4 / 6, OR = 4 / 5, OF1 = 2 (2/3)(4/5) / (22/15) = 8/11
    got = threshold_metrics(S, Y, 0.5, return_per_class=True)
    per = got.pop("per_class")
    assert got == _approx({"CP": 2 / 3, "CR": 5 / 6, "CF1": 20 / 27,
                           "OP": 2 / 3, "OR": 4 / 5, "OF1": 8 / 11})
    np.testing.assert_allclose(per["precision"], [0.5, 1, 0.5])
    np.testing.assert_allclose(per["recall"], [0.5, 1, 1])
    np.testing.assert_allclose(per["f1"], [0.5, 1, 2 / 3])
    np.testing.assert_array_equal(per["tp"], [1, 2, 1])
    np.testing.assert_array_equal(per["fp"], [1, 0, 1])
    np.testing.assert_array_equal(per["fn"], [1, 0, 0])
    assert all(isinstance(v, float) for v in got.values())


def test_threshold_metrics_unknown_as_negative():
    # -1 -> 0: class 2 row 0 (s = .6, predicted) becomes a FP -> P 1/3;
    # class 1 row 2 (s = .1) is a TN. CP = (1/2 + 1 + 1/3)/3 = 11/18,
    # CR = 5/6; OP = 4/7, OR = 4/5.
    got = threshold_metrics(S, Y, 0.5, ignore_unknown=False)
    cp, cr, op, or_ = 11 / 18, 5 / 6, 4 / 7, 4 / 5
    assert got == _approx({"CP": cp, "CR": cr, "CF1": 2 * cp * cr / (cp + cr),
                           "OP": op, "OR": or_,
                           "OF1": 2 * op * or_ / (op + or_)})


def test_threshold_metrics_per_class_thresholds_and_zero_cases():
    # thresholds [.95, .5, .95]: classes 0 and 2 predict nothing ->
    # P_c = 0 (0/0) and R_c = 0; class 1 P = R = 1.
    # CP = CR = CF1 = 1/3; OP = 2/2 = 1, OR = 2/(2 + 3) = 2/5, OF1 = 4/7
    got = threshold_metrics(S, Y, [0.95, 0.5, 0.95])
    assert got == _approx({"CP": 1 / 3, "CR": 1 / 3, "CF1": 1 / 3,
                           "OP": 1.0, "OR": 0.4, "OF1": 4 / 7})
    # nothing predicted at all: every value 0 (no NaN)
    none = threshold_metrics(S, Y, 1.01)
    assert none == {k: 0.0 for k in ("CP", "CR", "CF1", "OP", "OR", "OF1")}
    # no positive at all: recall 0, precision 0 (only FPs) -> all 0
    assert threshold_metrics(S, np.zeros_like(Y), 0.5)["OR"] == 0.0
    # a class without positives still counts in CR with R_c = 0
    y = np.array([[1, 0], [0, 0]], np.int8)
    s = np.array([[0.9, 0.1], [0.1, 0.1]])
    got = threshold_metrics(s, y)
    assert (got["CP"], got["CR"], got["OP"], got["OR"]) == (0.5, 0.5, 1.0, 1.0)
    # empty input
    assert threshold_metrics(np.zeros((0, 3)), np.zeros((0, 3)))["OF1"] == 0.0


def test_threshold_metrics_match_brute_force():
    rng = np.random.default_rng(0)
    s = rng.random((30, 6))
    y = rng.integers(-1, 2, size=(30, 6))
    thr = rng.uniform(0.2, 0.8, size=6)
    got = threshold_metrics(s, y, thr, return_per_class=True)
    p_c, r_c = [], []
    tps = fps = fns = 0
    for c in range(6):
        known = y[:, c] != -1
        pred = s[known, c] >= thr[c]
        pos = y[known, c] == 1
        tp, fp, fn = (pred & pos).sum(), (pred & ~pos).sum(), (~pred & pos).sum()
        p_c.append(tp / (tp + fp) if tp + fp else 0.0)
        r_c.append(tp / (tp + fn) if tp + fn else 0.0)
        tps, fps, fns = tps + tp, fps + fp, fns + fn
    cp, cr = np.mean(p_c), np.mean(r_c)
    op, or_ = tps / (tps + fps), tps / (tps + fns)
    per = got.pop("per_class")
    assert got == _approx({"CP": cp, "CR": cr, "CF1": 2 * cp * cr / (cp + cr),
                           "OP": op, "OR": or_,
                           "OF1": 2 * op * or_ / (op + or_)})
    np.testing.assert_allclose(per["precision"], p_c)


def test_threshold_metrics_errors():
    with pytest.raises(ValueError, match="probabilities in \\[0, 1\\]"):
        threshold_metrics(S * 3 - 1, Y)
    with pytest.raises(ValueError, match="finite"):
        threshold_metrics(np.where(S > 0.85, np.nan, S), Y)
    with pytest.raises(ValueError, match="shape \\[3\\]"):
        threshold_metrics(S, Y, [0.5, 0.5])
    with pytest.raises(ValueError, match="threshold` must be finite"):
        threshold_metrics(S, Y, float("nan"))
    with pytest.raises(ValueError, match="does not match"):
        threshold_metrics(S, Y[:, :2])
    with pytest.raises(ValueError, match="found \\[2\\]"):
        threshold_metrics(S, Y + 1)


# ---------------------------------------------------------------------------
# tune_thresholds
# ---------------------------------------------------------------------------


def test_tune_thresholds_hand_computed():
    s = np.array([[0.9, 0.9, 0.9, 0.9, 0.3],
                  [0.8, 0.8, 0.1, 0.8, 0.2],
                  [0.7, 0.7, 0.5, 0.7, 0.1],
                  [0.6, 0.6, 0.5, 0.6, 0.4],
                  [0.2, 0.2, 0.5, 0.2, 0.5]])
    y = np.array([[1, 1, 0, -1, 0],
                  [0, 0, 1, 0, 0],
                  [1, 0, 1, 1, 0],
                  [0, 1, 0, 0, 0],
                  [0, 0, 0, 0, -1]], np.int8)
    got = tune_thresholds(s, y)
    # class 0: t=.9 F1 2/3, .8 1/2, .7 (P 2/3, R 1) 4/5, .6 2/3, .2 4/7 -> .7
    # class 1: t=.9 (P 1, R 1/2) 2/3, .8 1/2, .7 2/5, .6 (P 1/2, R 1) 2/3,
    #          .2 4/7 -> tie 2/3 at .9 and .6: the lowest, .6
    # class 2: the top score (.9) is a negative: F1(.9) = 0 (P = R = 0, not
    #          NaN); .5 (tied x3, 4 predicted): P 1/4, R 1/2 -> 1/3;
    #          .1: P 2/5, R 1 -> 4/7 -> .1
    # class 3: the -1 at .9 is dropped: .8 (neg) -> 0, .7: P 1/2, R 1 -> 2/3,
    #          .6: P 1/3 -> 1/2, .2: P 1/4 -> 2/5 -> .7
    # class 4: no known positive -> default 0.5
    np.testing.assert_allclose(got, [0.7, 0.6, 0.1, 0.7, 0.5])
    assert got.dtype == np.float64
    np.testing.assert_allclose(tune_thresholds(s, y, default=0.25)[4], 0.25)
    # -1 counted as absent: class 3 at .9 becomes a negative: .9 and .8 -> 0,
    # .7: P 1/3, R 1 -> 1/2; .6: P 1/4 -> 2/5; .2: P 1/5 -> 1/3 -> .7
    np.testing.assert_allclose(tune_thresholds(s, y, ignore_unknown=False)[3],
                               0.7)


def test_tuned_thresholds_reach_the_best_f1():
    rng = np.random.default_rng(3)
    s = np.round(rng.random((40, 5)), 2)            # ties included
    y = rng.integers(-1, 2, size=(40, 5)).astype(np.int8)
    thr = tune_thresholds(s, y)
    per = threshold_metrics(s, y, thr, return_per_class=True)["per_class"]
    for c in range(5):
        known = y[:, c] != -1
        best = 0.0
        for t in np.unique(s[known, c]):
            pred = s[known, c] >= t
            pos = y[known, c] == 1
            tp = (pred & pos).sum()
            if tp:
                p, r = tp / pred.sum(), tp / pos.sum()
                best = max(best, 2 * p * r / (p + r))
        assert per["f1"][c] == pytest.approx(best)


def test_tune_thresholds_all_positive_class_and_errors():
    s = np.array([[0.3], [0.6]])
    np.testing.assert_allclose(tune_thresholds(s, np.ones((2, 1))), [0.3])
    with pytest.raises(ValueError, match="finite"):
        tune_thresholds(np.array([[np.inf]]), np.ones((1, 1)))
    # logits are fine for tuning (thresholds are score values)
    np.testing.assert_allclose(
        tune_thresholds(np.array([[3.0], [-2.0]]), np.array([[1], [0]])), [3.0])


# ---------------------------------------------------------------------------
# attribute_accuracy
# ---------------------------------------------------------------------------


def test_attribute_accuracy_hand_computed():
    groups = {"color": [0, 1, 2], "size": [3, 4]}
    y = np.array([[1, 0, 0, 1, 0],       # color 0, size 3
                  [0, -1, 1, -1, -1],    # color 2, size unknown
                  [-1, -1, -1, 0, 1],    # color unknown, size 4
                  [1, 1, 0, 0, 0]],      # color ambiguous, size: no positive
                 np.int8)
    s = np.array([[0.2, 0.5, 0.1, 0.9, 0.3],   # color -> 1 (wrong), size 3 ok
                  [0.1, 0.3, 0.8, 0.5, 0.5],   # color -> 2 ok
                  [0.9, 0.1, 0.1, 0.6, 0.4],   # size -> 3 (wrong)
                  [0.9, 0.1, 0.1, 0.1, 0.9]])
    assert attribute_accuracy(s, y, groups) == {"color": 0.5, "size": 0.5}


def test_attribute_accuracy_ties_nan_and_errors():
    y = np.array([[0, 1, -1], [1, 0, -1]], np.int8)
    s = np.array([[0.5, 0.5, 0.1], [0.9, 0.1, 0.1]])
    # row 0 ties -> the first column as listed in the group; row 1 is right
    assert attribute_accuracy(s, y, {"a": [1, 0]}) == {"a": 1.0}
    assert attribute_accuracy(s, y, {"a": [0, 1]}) == {"a": 0.5}
    got = attribute_accuracy(s, y, {"b": [1, 0], "unknown": [2]})
    assert got["b"] == 1.0 and math.isnan(got["unknown"])
    # logits are fine
    assert attribute_accuracy(s * 10 - 3, y, {"a": [0, 1]}) == {"a": 0.5}
    for bad, msg in (([], "non-empty"), ([0, 3], "outside"), ([0, 0], "repeats"),
                     ([0.5], "int column")):
        with pytest.raises(ValueError, match=msg):
            attribute_accuracy(s, y, {"g": bad})
