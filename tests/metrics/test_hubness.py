"""Hubness figures and label-side corrections on hand-built score matrices."""

import numpy as np
import pytest

from mll_tf.metrics.hubness import apply_correction, fit_correction, hubness_report, k_occurrence

S = np.array([[3.0, 2.0, 1.0],
              [3.0, 1.0, 2.0],
              [1.0, 3.0, 2.0],
              [5.0, 4.0, 0.0]])


def test_k_occurrence_by_hand():
    np.testing.assert_array_equal(k_occurrence(S, 1), [3, 1, 0])
    np.testing.assert_array_equal(k_occurrence(S, 2), [3, 3, 2])
    np.testing.assert_array_equal(k_occurrence(np.zeros((2, 3)), 1), [2, 0, 0])  # ties: column order
    with pytest.raises(ValueError):
        k_occurrence(S, 4)


def test_hubness_report_by_hand():
    h = hubness_report(S, ks=(1, 2, 5), names=["a", "b", "c"])
    # N_1 = [3, 1, 0]: mean 4/3, m2 = 14/9, m3 = 20/27
    assert h["skew@1"] == pytest.approx((20 / 27) / (14 / 9) ** 1.5)
    # N_2 = [3, 3, 2]: mean 8/3, m2 = 2/9, m3 = -2/27 -> -1/sqrt(2)
    assert h["skew@2"] == pytest.approx(-1 / np.sqrt(2))
    assert "skew@5" not in h  # K > C skipped
    assert h["top1_share"] == 0.75 and h["top1_label"] == "a" and h["labels_never_top1"] == 1
    assert hubness_report(np.eye(3), ks=(1,))["skew@1"] == 0.0  # every label top-1 once


def test_corrections_by_hand():
    ref = np.array([[1.0, 2.0], [3.0, 6.0]])
    z = fit_correction(ref, "zscore")
    np.testing.assert_allclose(z["shift"], [2, 4])
    np.testing.assert_allclose(z["scale"], [1, 2])
    np.testing.assert_allclose(apply_correction([[2.0, 4.0], [4.0, 4.0]], z), [[0, 0], [2, 0]])
    c1 = fit_correction(ref, "csls", k=1)
    np.testing.assert_allclose(apply_correction([[2.0, 4.0]], c1), [[-1, -2]])
    c2 = fit_correction(ref, "csls", k=5)  # capped at the 2 reference images
    np.testing.assert_allclose(c2["shift"], [2, 4])
    np.testing.assert_allclose(apply_correction(ref, fit_correction(ref, "none")), ref)
    np.testing.assert_allclose(fit_correction(np.ones((3, 1)), "zscore")["scale"], [1.0])  # constant label
    with pytest.raises(ValueError, match="hubness correction"):
        fit_correction(ref, "bogus")


def test_column_corrections_keep_per_class_ap():
    from mll_tf.metrics.average_precision import average_precision_masked

    rng = np.random.default_rng(0)
    s, y = rng.normal(size=(20, 4)), (rng.random((20, 4)) < 0.4).astype(np.int8)
    for m in ("zscore", "csls"):
        c = apply_correction(s, fit_correction(rng.normal(size=(7, 4)), m))
        np.testing.assert_allclose(average_precision_masked(c, y), average_precision_masked(s, y))
