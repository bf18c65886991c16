"""Tests for mll_tf.losses.imcl_loss (docs/imcl.md §3)."""

import math
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from mll_tf.losses.imcl_loss import (IMCLLoss, calibrate_lambdas,
                                     feature_residual_loss,
                                     label_residual_loss,
                                     masked_logistic_loss,
                                     masked_logistic_sums)

LABELS = np.array([[1, 0, -1], [-1, -1, -1]], np.int8)
LOGITS = np.array([[0.0, 2.0, 5.0], [1.0, 1.0, 1.0]], np.float32)


def test_masked_logistic_by_hand():
    # Observed: (0,0) target 1 logit 0 -> ln 2; (0,1) target 0 logit 2 -> ln(1 + e^2).
    s = math.log(2) + math.log(1 + math.e ** 2)
    total, count = masked_logistic_sums(LABELS, LOGITS)
    assert float(total) == pytest.approx(s, rel=1e-6) and float(count) == 2
    assert float(masked_logistic_loss(LABELS, LOGITS)) == pytest.approx(s / 2, rel=1e-6)
    per, cnt = masked_logistic_sums(LABELS, LOGITS, per_example=True)
    np.testing.assert_allclose(per, [s, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(cnt, [2, 0])
    # MSCOCO: unweighted, only 1 is positive.
    t2, c2 = masked_logistic_sums(LABELS, LOGITS, unknown_as_negative=True)
    expected = (s + math.log(1 + math.e ** 5) + 3 * math.log(1 + math.e))
    assert float(t2) == pytest.approx(expected, rel=1e-6) and float(c2) == 6
    # No observed label: 0 (TF1 SUM_BY_NONZERO_WEIGHTS), not NaN.
    assert float(masked_logistic_loss(-np.ones((2, 3)), LOGITS)) == 0.0


def test_masked_logistic_matches_tf_and_is_stable():
    rng = np.random.default_rng(0)
    labels = rng.choice([1, 0, -1], size=(4, 7)).astype(np.int8)
    logits = (rng.normal(size=(4, 7)) * 40).astype(np.float32)
    w = (labels != -1).astype(np.float32)
    xent = tf.nn.sigmoid_cross_entropy_with_logits(
        labels=(labels == 1).astype(np.float32), logits=logits).numpy()
    expected = (xent * w).sum() / w.sum()
    got = float(masked_logistic_loss(labels, logits))
    assert np.isfinite(got) and got == pytest.approx(expected, rel=1e-5)


def _residual_case():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(3, 4)).astype(np.float32)
    dictionary = rng.normal(size=(6, 4)).astype(np.float32)
    idx = np.array([[2, 5, -1], [0, -1, -1], [-1, -1, -1]], np.int32)
    coef = np.array([[0.5, -1.0, 9.0], [2.0, 7.0, 7.0], [3.0, 3.0, 3.0]], np.float32)
    expected = 0.0
    for i in range(3):
        r = y[i].copy()
        for a in range(3):
            if idx[i, a] >= 0:
                r -= coef[i, a] * dictionary[idx[i, a]]
        expected += (r ** 2).sum()
    return y, dictionary, idx, coef, expected


def test_residual_losses():
    y, dictionary, idx, coef, expected = _residual_case()
    for fn in (label_residual_loss, feature_residual_loss):
        assert float(fn(y, dictionary, idx, coef)) == pytest.approx(expected / 3, rel=1e-5)
        atoms = dictionary[np.maximum(idx, 0)]
        assert float(fn(y, atoms, idx, coef)) == pytest.approx(expected / 3, rel=1e-5)
        assert float(fn(y, dictionary, idx, coef, global_batch_size=12)) == pytest.approx(
            expected / 12, rel=1e-5)


def test_calibrate_lambdas():
    lc, lf = calibrate_lambdas(0.6, 0.2, 3.0, 1.0, 0.5)
    assert lc == pytest.approx(3.0) and lf == pytest.approx(0.1)
    assert calibrate_lambdas(0.6, 0.2, 0.0, 0.5, 0.0) == (pytest.approx(1.5), 0.0)
    with pytest.warns(RuntimeWarning, match="l_colab is 0"):
        assert calibrate_lambdas(0.6, 0.0, 3.0, 2.0, 0.5)[0] == 2.0
    with pytest.raises(ValueError, match="no observed"):
        calibrate_lambdas(0.0, 0.2, 3.0, 1.0, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert calibrate_lambdas(0.0, 0.0, 0.0, 0.0, 0.0) == (0.0, 0.0)
    for bad in ((-1.0, 0.2, 3.0, 1, 1), (0.6, float("nan"), 3.0, 1, 1), (0.6, 0.2, 3.0, -1, 1)):
        with pytest.raises(ValueError):
            calibrate_lambdas(*bad)
    lc, _ = calibrate_lambdas(tf.constant(0.6), tf.constant(0.3), tf.constant(1.0), 1.0, 0.0)
    assert lc == pytest.approx(2.0)


def test_imcl_loss_combines_terms():
    y, dictionary, idx, coef, expected = _residual_case()
    rng = np.random.default_rng(2)
    labels = rng.choice([1, 0, -1], size=(3, 4)).astype(np.int8)
    logits = rng.normal(size=(3, 4)).astype(np.float32)
    f = rng.normal(size=(3, 4)).astype(np.float32)
    outputs = {"logits": logits, "indices": idx, "y_hat": y,
               "atom_y_hat": dictionary[np.maximum(idx, 0)], "coef_label": coef,
               "omp_features": f, "atom_features": dictionary[np.maximum(idx, 0)],
               "coef_feature": coef}
    loss = IMCLLoss(lambda_colab=2.0, lambda_feature=0.5)
    out = loss(labels, outputs)
    log = float(masked_logistic_loss(labels, logits))
    feat = float(feature_residual_loss(f, dictionary, idx, coef))
    assert float(out["logistic"]) == pytest.approx(log, rel=1e-6)
    assert float(out["colab"]) == pytest.approx(expected / 3, rel=1e-5)
    assert float(out["feature"]) == pytest.approx(feat, rel=1e-6)
    assert float(out["total"]) == pytest.approx(log + 2 * expected / 3 + 0.5 * feat, rel=1e-5)
    # Overrides, global counts, and the logistic-only form.
    out = loss(labels, outputs, lambda_colab=tf.constant(0.0), lambda_feature=1.0,
               global_batch_size=6, global_observed_count=100)
    total_xent, _ = masked_logistic_sums(labels, logits)
    assert float(out["logistic"]) == pytest.approx(float(total_xent) / 100, rel=1e-6)
    assert float(out["total"]) == pytest.approx(float(total_xent) / 100 + feat / 2, rel=1e-5)
    only = IMCLLoss(lambda_colab=1.0)(labels, {"logits": logits})
    assert float(only["colab"]) == 0.0 and float(only["total"]) == pytest.approx(log, rel=1e-6)
    # lambda_feature = 0 skips the feature term.
    assert float(IMCLLoss(1.0, 0.0)(labels, outputs)["feature"]) == 0.0
    assert float(loss.call(labels, outputs)) == pytest.approx(
        log + 2 * expected / 3 + 0.5 * feat, rel=1e-5)


def test_imcl_loss_config_round_trip():
    loss = IMCLLoss(lambda_colab=1.5, lambda_feature=0.25, unknown_as_negative=True)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(again, IMCLLoss)
    assert (again.lambda_colab, again.lambda_feature, again.unknown_as_negative) == (
        1.5, 0.25, True)


def test_split_batch_reductions_sum_to_full_batch():
    # What a 2-replica trainer does: per-replica terms with global counts,
    # summed over replicas, equal the single-device loss on the whole batch.
    rng = np.random.default_rng(3)
    labels = rng.choice([1, 0, -1], size=(6, 5)).astype(np.int8)
    logits = rng.normal(size=(6, 5)).astype(np.float32)
    y = rng.normal(size=(6, 5)).astype(np.float32)
    f = rng.normal(size=(6, 3)).astype(np.float32)
    idx = rng.integers(-1, 4, size=(6, 2)).astype(np.int32)
    coef = rng.normal(size=(6, 2)).astype(np.float32)
    ydict = rng.normal(size=(4, 5)).astype(np.float32)
    fdict = rng.normal(size=(4, 3)).astype(np.float32)

    def outputs(s):
        safe = np.maximum(idx[s], 0)
        return {"logits": logits[s], "indices": idx[s], "y_hat": y[s],
                "atom_y_hat": ydict[safe], "coef_label": coef[s],
                "omp_features": f[s], "atom_features": fdict[safe],
                "coef_feature": coef[s]}

    loss = IMCLLoss(0.7, 0.3)
    full = loss(labels, outputs(slice(None)))
    count = float(masked_logistic_sums(labels, logits)[1])
    parts = [loss(labels[s], outputs(s), global_batch_size=6, global_observed_count=count)
             for s in (slice(0, 2), slice(2, 6))]
    for key in ("logistic", "colab", "feature", "total"):
        assert sum(float(p[key]) for p in parts) == pytest.approx(float(full[key]), rel=1e-5)
