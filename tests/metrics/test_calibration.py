"""Calibrated stacking (Chao et al., ECCV 2016) on a hand-built GZSL score matrix."""

import numpy as np
import pytest

from mll_tf.metrics.calibration import calibrated_stacking, choose_gamma, gamma_grid

# 1 unseen column, then 2 seen columns
S = np.array([[0.5, 1.0, 0.2],
              [0.1, 0.3, 0.9]])
Y = np.array([[1, 0, 0],
              [0, 0, 1]])


def test_calibrated_stacking_subtracts_gamma_from_seen_columns_only():
    out = calibrated_stacking(S, 1, 0.4)
    np.testing.assert_allclose(out, [[0.5, 0.6, -0.2], [0.1, -0.1, 0.5]])
    np.testing.assert_array_equal(S[0], [0.5, 1.0, 0.2])  # input untouched
    with pytest.raises(ValueError):
        calibrated_stacking(S, 4, 0.1)


def test_choose_gamma_by_hand():
    # F1@1: gamma = 0 -> top-1 = seen col 1 (absent) in row 0, seen col 2 (present) in row 1: TP 1 of
    # 2 predictions and 2 positives -> F1 0.5. For 0.5 < gamma < 0.8 row 0 ranks the unseen label
    # first and row 1 still the seen one -> F1 1. gamma > 0.8 loses row 1 -> 0.5.
    gamma, best, at0 = choose_gamma(S, Y, 1, ks=(1,), grid=[0.0, 0.25, 0.6, 0.7, 1.0])
    assert (gamma, best, at0) == (0.6, 1.0, 0.5)  # ties: the candidate closest to 0
    g, best, _ = choose_gamma(S, Y, 1, ks=(1,))
    assert 0.5 < g < 0.8 and best == 1.0
    assert g == pytest.approx(-0.9 + 156 * 0.009)  # the first point of linspace(-0.9, 0.9, 201) above 0.5


def test_flat_criterion_keeps_plain_stacking():
    y = np.zeros_like(Y)  # no positive: F1 is 0 for every gamma
    assert choose_gamma(S, y, 1, ks=(1,), grid=[-1.0, 0.0, 1.0])[0] == 0.0


def test_gamma_grid_spans_the_score_range():
    g = gamma_grid(S, 1, num=5)
    np.testing.assert_allclose(g, [-0.9, -0.45, 0.0, 0.45, 0.9])
