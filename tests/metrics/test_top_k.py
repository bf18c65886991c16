"""Tests for mll_tf.metrics.top_k (docs/metrics.md §2)."""

import numpy as np
import pytest

import mll_tf.metrics.top_k as tkm
from mll_tf.metrics import top_k_precision_recall_f1


def reference(scores, labels, k):
    """Stable descending argsort per row: lower class index first on ties."""
    top = np.argsort(-np.asarray(scores, dtype=np.float64), axis=1, kind="stable")[:, :k]
    tp = int((np.take_along_axis(np.asarray(labels), top, axis=1) == 1).sum())
    n = scores.shape[0]
    p = tp / (n * k)
    npos = int((np.asarray(labels) == 1).sum())
    r = tp / npos if npos else 0.0
    return p, r, (2 * p * r / (p + r) if p + r > 0 else 0.0)


def test_hand_worked():
    # k = 2
    # image 0: top-2 = classes 0 (+), 2 (-)         -> TP 1
    # image 1: top-2 = classes 3 (+), 1 (-1 unknown) -> TP 1
    # image 2: no positive, still adds 2 FP          -> TP 0
    # TP = 2, P = 2 / (3*2) = 1/3, #pos = 4 -> R = 1/2, F1 = 2*(1/6)/(5/6) = 2/5
    s = np.array([[0.9, 0.1, 0.8, 0.2],
                  [0.1, 0.7, 0.3, 0.9],
                  [0.5, 0.6, 0.7, 0.8]])
    y = np.array([[1, 1, 0, 0],
                  [1, -1, 0, 1],
                  [0, 0, -1, 0]])
    p, r, f1 = top_k_precision_recall_f1(s, y, 2)
    assert (p, r) == (pytest.approx(1 / 3), pytest.approx(1 / 2))
    assert f1 == pytest.approx(2 / 5)


def test_ties_lower_index_wins():
    # all four scores equal: k = 2 picks classes 0 and 1
    s = np.full((2, 4), 0.5)
    y = np.array([[0, 1, 1, 1],       # class 1 chosen -> TP 1
                  [0, 0, 1, 1]])      # classes 0, 1 -> TP 0
    p, r, f1 = top_k_precision_recall_f1(s, y, 2)
    assert p == pytest.approx(1 / 4)
    assert r == pytest.approx(1 / 5)
    # tie at the cut only: 0.9 is in, then 2 of the three 0.5 (classes 1, 2)
    s = np.array([[0.5, 0.5, 0.9, 0.5, 0.1]])
    y = np.array([[0, 0, 1, 1, 0]])   # class 3 (0.5) is NOT selected
    assert top_k_precision_recall_f1(s, y, 3)[0] == pytest.approx(1 / 3)
    y = np.array([[1, 0, 1, 1, 0]])   # class 0 (0.5) is selected
    assert top_k_precision_recall_f1(s, y, 3)[0] == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_matches_stable_argsort_with_ties(seed, k):
    rng = np.random.default_rng(seed)
    s = np.round(rng.random((300, 7)), 1).astype(np.float32)
    y = rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=s.shape, p=[0.1, 0.7, 0.2])
    np.testing.assert_allclose(top_k_precision_recall_f1(s, y, k), reference(s, y, k),
                               atol=1e-15)


def test_row_blocks(monkeypatch):
    monkeypatch.setattr(tkm, "_ROW_BLOCK_ENTRIES", 50)
    rng = np.random.default_rng(3)
    s = np.round(rng.random((101, 9)), 1)
    y = rng.integers(-1, 2, size=s.shape)
    np.testing.assert_allclose(top_k_precision_recall_f1(s, y, 4), reference(s, y, 4),
                               atol=1e-15)


def test_no_positive_and_empty():
    s = np.array([[0.1, 0.2], [0.3, 0.4]])
    assert top_k_precision_recall_f1(s, np.zeros((2, 2)), 1) == (0.0, 0.0, 0.0)
    assert top_k_precision_recall_f1(np.zeros((0, 3)), np.zeros((0, 3)), 2) == (0.0, 0.0, 0.0)
    # k == C: every positive is retrieved
    y = np.array([[1, 0], [-1, 1]])
    assert top_k_precision_recall_f1(s, y, 2) == (pytest.approx(0.5), 1.0, pytest.approx(2 / 3))


@pytest.mark.parametrize("k", [0, 4, -1, 2.0, True, "2"])
def test_bad_k(k):
    with pytest.raises(ValueError, match="`k`"):
        top_k_precision_recall_f1(np.zeros((2, 3)), np.zeros((2, 3)), k)


def test_bad_inputs():
    with pytest.raises(ValueError, match="labels"):
        top_k_precision_recall_f1(np.zeros((2, 3)), np.zeros((2, 4)), 1)
    with pytest.raises(ValueError, match="labels"):
        top_k_precision_recall_f1(np.zeros((2, 3)), np.full((2, 3), 3), 1)
    with pytest.raises(ValueError, match="finite"):
        top_k_precision_recall_f1(np.array([[0.0, np.nan]]), np.zeros((1, 2)), 1)
