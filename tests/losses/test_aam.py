"""AMBinaryLoss against an independent float64 NumPy implementation (values and gradients)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from mll_tf.losses import AMBinaryLoss, compute_s, smooth_labels


def _sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def np_aam(c, y, s, m, k, gp=0.0, gn=0.0, clip=0.05, eps=0.0):
    """Per-example loss [B] and dL/dc [B, C] from the formulas (float64, closed-form derivative)."""
    c = np.asarray(c, np.float64)
    y = np.asarray(y, np.float64)
    known = (y >= 0).astype(np.float64)
    t = np.where(y >= 0, y, 0.0)
    if eps > 0:
        t = np.where(t == 0, eps, t * (1 - eps))
    a, b = k / s, (1 - k) / s
    zp, zn = s * (c - m), -s * (c + m)
    pp, pn0 = _sig(zp), _sig(zn)
    dpp, dpn0 = s * pp * (1 - pp), -s * pn0 * (1 - pn0)
    focus = gp > 0 or gn > 0
    if focus and clip > 0:
        pn = np.minimum(pn0 + clip, 1.0)
        dpn = np.where(pn0 + clip < 1.0, dpn0, 0.0)
    else:
        pn, dpn = pn0, dpn0
    g = a * t * np.log(pp) + b * (1 - t) * np.log(pn)
    dg = a * t * dpp / pp + b * (1 - t) * dpn / pn
    if focus:
        base = t * pn + (1 - t) * pp
        gam = gp * t + gn * (1 - t)
        w = base ** gam
        dbase = t * dpn + (1 - t) * dpp
        with np.errstate(divide="ignore", invalid="ignore"):
            dw = np.where(base > 0, gam * base ** (gam - 1) * dbase, 0.0)
    else:
        w, dw = np.ones_like(c), np.zeros_like(c)
    loss = -(g * w) * known
    grad = -(dg * w + g * dw) * known
    return loss.sum(axis=1), grad


def tf_value_and_grad(loss_obj, y, c):
    c = tf.constant(c, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(c)
        per = loss_obj.call(tf.constant(y, tf.float32), c)
        total = tf.reduce_sum(per)
    return per.numpy(), tape.gradient(total, c).numpy()


def _data(seed=0, b=4, c=7):
    rng = np.random.default_rng(seed)
    cos = rng.uniform(-1, 1, size=(b, c)).astype(np.float32)
    y = rng.choice([1.0, 0.0, -1.0], size=(b, c), p=[0.3, 0.5, 0.2]).astype(np.float32)
    return cos, y


def test_hand_computed_entries():
    # s=10, m=0.1, k=0.7, no focusing; cos 0.5:
    # positive: -(0.7/10) log sigmoid(10*0.4) = 0.07 * log(1 + e^-4) = 0.07 * 0.0181499 = 0.00127049
    # negative: -(0.3/10) log sigmoid(-10*0.6) = 0.03 * log(1 + e^6) = 0.03 * 6.0024757 = 0.18007427
    # unknown: 0
    loss = AMBinaryLoss(s=10.0, m=0.1, k=0.7, reduction="none")
    out = loss(np.array([[1.0, 0.0, -1.0]], np.float32), np.array([[0.5, 0.5, 0.5]], np.float32))
    assert out.shape == (1,)
    assert float(out[0]) == pytest.approx(0.07 * math.log1p(math.exp(-4)) + 0.03 * math.log1p(math.exp(6)),
                                          abs=1e-6)
    assert float(out[0]) == pytest.approx(0.00127049 + 0.18007427, abs=1e-6)


@pytest.mark.parametrize("kw", [
    dict(s=23.0, m=0.0, k=0.7),                                  # the released COCO setting
    dict(s=17.0, m=0.35, k=0.8),                                 # margin
    dict(s=10.0, m=0.2, k=0.6, gamma_pos=1.0, gamma_neg=4.0),   # focusing with the 0.05 shift
    dict(s=10.0, m=0.2, k=0.6, gamma_pos=0.0, gamma_neg=2.0, clip=0.0),   # focusing, no shift
    dict(s=12.0, m=0.1, k=0.7, label_smoothing=0.1),             # smoothing
    dict(s=12.0, m=0.1, k=0.7, gamma_pos=2.0, gamma_neg=3.0, label_smoothing=0.2),
])
def test_values_and_gradients_match_numpy(kw):
    cos, y = _data(seed=len(kw))
    ref_kw = dict(s=kw["s"], m=kw["m"], k=kw["k"], gp=kw.get("gamma_pos", 0.0), gn=kw.get("gamma_neg", 0.0),
                  clip=kw.get("clip", 0.05), eps=kw.get("label_smoothing", 0.0))
    want, want_grad = np_aam(cos, y, **ref_kw)
    got, got_grad = tf_value_and_grad(AMBinaryLoss(reduction="none", **kw), y, cos)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-4, atol=1e-5)


def test_numpy_gradient_is_the_derivative():
    """The closed-form NumPy gradient used above agrees with central differences (float64)."""
    cos, y = _data(seed=3, b=2, c=5)
    cos = cos.astype(np.float64) * 0.9
    kw = dict(s=10.0, m=0.2, k=0.6, gp=1.0, gn=3.0, clip=0.05, eps=0.1)
    _, g = np_aam(cos, y, **kw)
    h = 1e-6
    num = np.zeros_like(cos)
    for idx in np.ndindex(cos.shape):
        up, dn = cos.copy(), cos.copy()
        up[idx] += h
        dn[idx] -= h
        num[idx] = (np_aam(up, y, **kw)[0].sum() - np_aam(dn, y, **kw)[0].sum()) / (2 * h)
    np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-8)


def test_unknown_entries_have_no_effect():
    cos, y = _data(seed=5)
    loss = AMBinaryLoss(s=15.0, m=0.1, k=0.7, gamma_neg=2.0, reduction="none")
    base, grad = tf_value_and_grad(loss, y, cos)
    cos2 = cos.copy()
    cos2[y == -1] = -cos2[y == -1]        # change only the unknown entries
    other, _ = tf_value_and_grad(loss, y, cos2)
    np.testing.assert_allclose(base, other, atol=1e-7)
    assert np.all(grad[y == -1] == 0.0)
    # all unknown -> 0
    zero, _ = tf_value_and_grad(loss, -np.ones_like(y), cos)
    assert np.all(zero == 0.0)


def test_label_smoothing_maps_targets_and_keeps_unknowns():
    y = np.array([[1.0, 0.0, -1.0, 0.5]], np.float32)
    out = keras.ops.convert_to_numpy(smooth_labels(y, 0.1))
    np.testing.assert_allclose(out, [[0.9, 0.1, -1.0, 0.45]], atol=1e-7)
    cos = np.array([[0.2, -0.3, 0.9, 0.1]], np.float32)
    a = AMBinaryLoss(s=10.0, m=0.0, k=0.7, label_smoothing=0.1, reduction="none")(y, cos)
    b = AMBinaryLoss(s=10.0, m=0.0, k=0.7, reduction="none")(out, cos)
    np.testing.assert_allclose(a, b, atol=1e-7)
    with pytest.raises(ValueError):
        smooth_labels(y, 1.0)


def test_focusing_off_and_on_differ_as_the_formula_says():
    cos = np.array([[0.6, -0.4]], np.float32)
    y = np.array([[1.0, 0.0]], np.float32)
    off = AMBinaryLoss(s=10.0, m=0.0, k=0.5, reduction="none")(y, cos)
    on = AMBinaryLoss(s=10.0, m=0.0, k=0.5, gamma_pos=1.0, gamma_neg=1.0, reduction="none")(y, cos)
    # positive (cos 0.6): w = sigmoid(-6) + 0.05 (the shifted p_neg);
    # negative (cos -0.4): its shifted p_neg = min(sigmoid(4) + 0.05, 1) = 1, so log p_neg = 0: no loss
    pn = 1 / (1 + math.exp(6)) + 0.05
    want_on = -(0.05 * math.log(1 / (1 + math.exp(-6))) * pn)
    assert want_on == pytest.approx(6.4953e-06, rel=1e-4)
    want_off = -(0.05 * math.log(1 / (1 + math.exp(-6))) + 0.05 * math.log(1 / (1 + math.exp(-4))))
    assert float(off[0]) == pytest.approx(want_off, rel=1e-5)
    assert float(on[0]) == pytest.approx(want_on, rel=1e-5)


@pytest.mark.parametrize("kw", [dict(), dict(gamma_pos=1.0, gamma_neg=4.0), dict(gamma_pos=0.5, gamma_neg=0.5, clip=0.0),
                                dict(label_smoothing=0.1, gamma_neg=2.0)])
def test_gradients_finite_at_the_extremes(kw):
    """cos = +-1 and s = 200: sigmoids are exactly 0 or 1 in float32."""
    cos = np.array([[1.0, -1.0, 1.0, -1.0, 0.0]], np.float32)
    y = np.array([[1.0, 0.0, 0.0, 1.0, -1.0]], np.float32)
    for s in (30.0, 200.0):
        per, grad = tf_value_and_grad(AMBinaryLoss(s=s, m=0.0, k=0.7, reduction="none", **kw), y, cos)
        assert np.all(np.isfinite(per)) and np.all(np.isfinite(grad)), (s, per, grad)
    # s = 200, no focusing: the wrong-side entries cost (k/s) * 200 = k and (1-k)/s * 200
    per, _ = tf_value_and_grad(AMBinaryLoss(s=200.0, m=0.0, k=0.7, reduction="none"), y, cos)
    assert float(per[0]) == pytest.approx(0.3 + 0.7, rel=1e-5)


def test_reduction_and_config_round_trip():
    cos, y = _data(seed=9)
    loss = AMBinaryLoss(s=17.0, m=0.2, k=0.7, gamma_pos=1.0, gamma_neg=2.0, clip=0.05, label_smoothing=0.1)
    per = AMBinaryLoss(**{**loss.get_config(), "reduction": "none"})(y, cos)
    assert float(loss(y, cos)) == pytest.approx(float(np.mean(per)), rel=1e-6)
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(clone, AMBinaryLoss)
    assert clone.get_config() == loss.get_config()
    np.testing.assert_allclose(clone(y, cos), loss(y, cos), rtol=1e-7)
    p = keras.ops.convert_to_numpy(loss.probabilities(np.array([[0.1]], np.float32)))
    assert p[0, 0] == pytest.approx(1 / (1 + math.exp(-1.7)), rel=1e-6)


def test_compute_s_and_bad_arguments():
    assert compute_s(2) == 7.0 and compute_s(1) == 7.0
    assert compute_s(81) == pytest.approx(min(max(math.sqrt(5) * math.log(80), 7), 30))   # 9.80
    assert compute_s(80) == pytest.approx(math.sqrt(5) * math.log(79))
    assert compute_s(10 ** 9) == 30.0
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError):
            compute_s(bad)
    for kw in (dict(s=0.0), dict(m=-0.1), dict(k=1.5), dict(gamma_neg=-1.0), dict(clip=2.0),
               dict(label_smoothing=1.0)):
        with pytest.raises(ValueError):
            AMBinaryLoss(**kw)
    with pytest.raises(ValueError):
        AMBinaryLoss()(np.zeros([3], np.float32), np.zeros([3], np.float32))
