"""Tests for mll_tf.metrics.average_precision (docs/metrics.md §1)."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

import mll_tf.metrics.average_precision as apm
from mll_tf.metrics import (
    average_precision_asl,
    average_precision_masked,
    average_precision_partial,
    mean_average_precision,
)


def sklearn_masked(scores, labels):
    """Per-class sklearn AP on the known rows, 0 without a known positive."""
    out = np.zeros(scores.shape[1])
    for c in range(scores.shape[1]):
        known = labels[:, c] != -1
        y = labels[known, c] == 1
        if y.any():
            out[c] = average_precision_score(y, scores[known, c])
    return out


def random_case(seed, n=200, c=7, decimals=2, dtype=np.float32, p=(0.2, 0.6, 0.2)):
    rng = np.random.default_rng(seed)
    s = rng.random((n, c))
    if decimals is not None:
        s = np.round(s, decimals)              # many ties
    y = rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=(n, c), p=p)
    return s.astype(dtype), y


# ---------------------------------------------------------------- variant (a)

def test_masked_hand_worked_with_tie():
    # scores 0.9(+), 0.8(-), 0.8(+), 0.1(-): groups {0.9}, {0.8, 0.8}, {0.1}
    # AP = 1/2 * (1/1 + 2/3) = 5/6 (sklearn grouping; rank order would give 3/4)
    s = np.array([[0.9], [0.8], [0.8], [0.1]], dtype=np.float32)
    y = np.array([[1], [0], [1], [0]], dtype=np.int8)
    np.testing.assert_allclose(average_precision_masked(s, y), [5 / 6], rtol=0, atol=1e-15)
    assert average_precision_score(y[:, 0], s[:, 0]) == pytest.approx(5 / 6)


def test_masked_hand_worked_unknown_ignored():
    # the unknown row (score 0.95) is dropped: ranking 0.9(+) 0.5(-) 0.3(+)
    # AP = 1/2 * (1/1 + 2/3) = 5/6
    s = np.array([[0.95], [0.9], [0.5], [0.3]])
    y = np.array([[-1], [1], [0], [1]])
    np.testing.assert_allclose(average_precision_masked(s, y), [5 / 6], atol=1e-15)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("decimals", [1, 2, 3, None])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_masked_matches_sklearn_with_ties_and_unknowns(seed, decimals, dtype):
    s, y = random_case(seed, decimals=decimals, dtype=dtype)
    np.testing.assert_allclose(average_precision_masked(s, y), sklearn_masked(s, y),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("buckets_per_row", [0.01, 0.1, 0.5])
@pytest.mark.parametrize("seed", range(4))
def test_masked_matches_sklearn_when_buckets_are_coarse(monkeypatch, buckets_per_row, seed):
    # few value buckets -> many buckets mix several scores: exercises the
    # sorting path that resolves "impure" buckets
    monkeypatch.setattr(apm, "_BUCKETS_PER_ROW", buckets_per_row)
    s, y = random_case(seed, n=300, c=9, decimals=[2, None][seed % 2])
    np.testing.assert_allclose(average_precision_masked(s, y), sklearn_masked(s, y),
                               rtol=0, atol=1e-6)


def test_masked_many_blocks_and_threads(monkeypatch):
    # several panels and blocks, 1 and 2 threads give the same numbers
    monkeypatch.setattr(apm, "_PANEL_COLS", 8)
    monkeypatch.setattr(apm, "_BLOCK_ENTRIES", 3 * 150)
    s, y = random_case(7, n=150, c=29, decimals=2)
    ref = sklearn_masked(s, y)
    for threads in (1, 2, 3):
        np.testing.assert_allclose(average_precision_masked(s, y, num_threads=threads), ref,
                                   rtol=0, atol=1e-6)


def test_masked_equals_sorted_reference():
    s, y = random_case(11, n=500, c=13, decimals=2, dtype=np.float64)
    np.testing.assert_allclose(average_precision_masked(s, y),
                               apm._average_precision_masked_sorted(s, y), atol=1e-12)


def test_masked_class_without_positive_is_zero_and_kept_in_mean():
    s, y = random_case(3)
    y[:, 2] = np.where(y[:, 2] == 1, 0, y[:, 2])     # no positive
    y[:, 4] = -1                                      # nothing known at all
    ap = average_precision_masked(s, y)
    assert ap[2] == 0.0 and ap[4] == 0.0
    assert mean_average_precision(s, y) == pytest.approx(ap.mean())
    assert mean_average_precision(s, y) == pytest.approx(sklearn_masked(s, y).sum() / 7)


def test_masked_unknown_scores_do_not_matter():
    s, y = random_case(5, decimals=2)
    ap = average_precision_masked(s, y)
    rng = np.random.default_rng(0)
    s2 = s.copy()
    unk = y == -1
    s2[unk] = rng.choice([-5.0, 0.5, 3.0], size=unk.sum())   # also ties with known ones
    np.testing.assert_allclose(average_precision_masked(s2, y), ap, atol=1e-12)


def test_masked_constant_and_extreme_scores():
    s = np.zeros((6, 3))
    s[:, 1] = [1e30, -1e30, 0.0, 5.0, 5.0, -0.0]     # huge range, +-0 tie
    s[:, 2] = [-3e38, 3e38, 1.0, 1.0, 2.0, -1.0]       # float32 range overflow
    y = np.array([[1, 1, 0], [0, 0, 1], [1, 1, 1], [0, -1, 0], [-1, 0, 1], [0, 1, 0]])
    for dt in (np.float32, np.float64):
        sd = s.astype(dt)
        np.testing.assert_allclose(average_precision_masked(sd, y), sklearn_masked(sd, y),
                                   atol=1e-12)


def test_masked_empty_and_single():
    assert average_precision_masked(np.zeros((0, 3)), np.zeros((0, 3), int)).tolist() == [0, 0, 0]
    assert average_precision_masked(np.zeros((4, 0)), np.zeros((4, 0), int)).shape == (0,)
    np.testing.assert_allclose(average_precision_masked([[0.3]], [[1]]), [1.0])


def test_masked_accepts_float_and_bool_labels():
    s, y = random_case(2)
    ref = average_precision_masked(s, y)
    np.testing.assert_allclose(average_precision_masked(s, y.astype(np.float32)), ref)
    yb = y == 1
    np.testing.assert_allclose(average_precision_masked(s, yb),
                               sklearn_masked(s, yb.astype(np.int8)), atol=1e-12)


@pytest.mark.parametrize("fn", [average_precision_masked, average_precision_asl,
                                average_precision_partial, mean_average_precision])
def test_errors(fn):
    s = np.zeros((4, 3))
    y = np.zeros((4, 3), dtype=np.int8)
    with pytest.raises(ValueError, match="labels"):
        fn(s, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="labels"):
        fn(s, y + 2)
    with pytest.raises(ValueError, match="labels"):
        fn(s, np.full((4, 3), 0.5))
    with pytest.raises(ValueError, match="scores"):
        fn(np.zeros(4), np.zeros(4))
    bad = s.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="finite"):
        fn(bad, y)
    bad[1, 1] = np.inf
    with pytest.raises(ValueError, match="finite"):
        fn(bad, y)


# ---------------------------------------------------------------- variant (b)

def test_asl_hand_worked_ties_follow_row_order():
    # column 0: scores 0.9(+), 0.8(-), 0.8(+), 0.1(-): stable order keeps
    # row 1 before row 2 -> prec@1 = 1, prec@3 = 2/3 -> AP = (1 + 2/3)/2 = 5/6
    # column 1: same scores, positive row 1 then row 2 swapped: rows 1(+), 2(-)
    # -> prec@1 = 1, prec@2 = 2/2 -> AP = 1
    s = np.array([[0.9, 0.9], [0.8, 0.8], [0.8, 0.8], [0.1, 0.1]])
    y = np.array([[1, 1], [0, 1], [1, 0], [0, 0]])
    np.testing.assert_allclose(average_precision_asl(s, y), [5 / 6, 1.0], atol=1e-15)


def test_asl_unknown_counts_as_negative_and_no_positive_is_zero():
    # column 0: 0.9(?), 0.5(+), 0.1(-): unknown ranks first as a negative
    # -> AP = prec@2 = 1/2 ; column 1: no positive -> 0
    s = np.array([[0.9, 0.2], [0.5, 0.3], [0.1, 0.4]])
    y = np.array([[-1, 0], [1, -1], [0, 0]])
    np.testing.assert_allclose(average_precision_asl(s, y), [0.5, 0.0], atol=1e-15)


@pytest.mark.parametrize("seed", range(4))
def test_asl_equals_masked_on_full_labels_distinct_scores(seed):
    s, y = random_case(seed, n=200, c=7, decimals=None, dtype=np.float64, p=(0.0, 0.7, 0.3))
    assert len(np.unique(s)) == s.size
    np.testing.assert_allclose(average_precision_asl(s, y), average_precision_masked(s, y),
                               atol=1e-12)
    np.testing.assert_allclose(average_precision_asl(s, y), sklearn_masked(s, y), atol=1e-12)


def test_asl_fraction_not_percent():
    s, y = random_case(1)
    ap = average_precision_asl(s, y)
    assert ap.dtype == np.float64 and np.all((ap >= 0) & (ap <= 1))


# ---------------------------------------------------------------- variant (c)

def test_partial_hand_worked():
    # col 0: known rows 0.9(+), 0.5(-), 0.3(+) (row with 0.95 unknown)
    #        -> AP = (1/1 + 2/3) / 2 = 5/6
    # col 1: no known negative -> excluded ; col 2: no positive -> excluded
    # col 3: nothing known -> excluded
    s = np.array([[0.95, 0.1, 0.3, 0.1],
                  [0.9, 0.2, 0.2, 0.2],
                  [0.5, 0.3, 0.1, 0.3],
                  [0.3, 0.4, 0.0, 0.4]])
    y = np.array([[-1, 1, 0, -1],
                  [1, 1, 0, -1],
                  [0, -1, -1, -1],
                  [1, 1, 0, -1]])
    ap, valid = average_precision_partial(s, y)
    assert valid.tolist() == [True, False, False, False]
    assert ap[0] == pytest.approx(5 / 6)
    assert np.isnan(ap[1:]).all()


def test_partial_is_asl_on_known_rows():
    s, y = random_case(9, n=120, c=5, decimals=None, dtype=np.float64)
    ap, valid = average_precision_partial(s, y)
    for c in range(5):
        known = y[:, c] != -1
        ref = average_precision_asl(s[known, c:c + 1], y[known, c:c + 1])[0]
        assert valid[c]
        assert ap[c] == pytest.approx(ref, abs=1e-12)
    # distinct scores: (c) == (a) on valid classes
    np.testing.assert_allclose(ap[valid], average_precision_masked(s, y)[valid], atol=1e-12)
