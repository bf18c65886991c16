"""CosineClassifier (AngleSimpleLinear) and PooledHead (mll_tf.models.heads) against NumPy.

deep-object-reid ``torchreid/losses/am_softmax.py::AngleSimpleLinear``:
cos = normalize(x, dim=1) @ normalize(W, dim=0), clamped to [-1, 1].
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mll_tf.models.heads import (AngleSimpleLinear, CosineClassifier, MultiLabelHead, PooledHead,
                                 UnitColumnUniform)
from tests.models.head_checks import (assert_gradients_match, assert_save_load,
                                      assert_two_replicas_equal_one, loss_weights)

B, R, D, C = 4, 5, 6, 7


def features(seed=0, shape=(B, R, D)):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def np_cosine(x, w):
    xn = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    wn = w / np.maximum(np.linalg.norm(w, axis=0, keepdims=True), 1e-12)
    return np.clip(xn @ wn, -1, 1)


def np_pooled(W, x, cosine):
    x = np.asarray(x, np.float64)
    pooled = x.reshape(x.shape[0], -1, x.shape[-1]).mean(1) if x.ndim > 2 else x
    return np_cosine(pooled, W["kernel"]) if cosine else pooled @ W["kernel"] + W["bias"]


def built(cosine, seed=0, **kw):
    keras.utils.set_random_seed(seed)
    m = PooledHead(C, cosine=cosine, **kw)
    m(features())
    rng = np.random.default_rng(seed + 1)
    for v in m.weights:
        v.assign(rng.normal(size=v.shape).astype(np.float32))
    return m


def weights(m):
    w = {"kernel": m.classifier.kernel}
    if not m.cosine:
        w["bias"] = m.classifier.bias
    return w


def test_angle_simple_linear_by_hand():
    layer = CosineClassifier(2)
    layer.build((None, 2))
    layer.kernel.assign(np.array([[3.0, 0.0], [4.0, -2.0]], np.float32))   # columns (3,4)/5 and (0,-1)
    x = np.array([[1.0, 0.0], [0.0, 5.0], [0.0, 0.0]], np.float32)
    want = [[0.6, 0.0], [0.8, -1.0], [0.0, 0.0]]                          # zero input -> 0, not NaN
    np.testing.assert_allclose(layer(x).numpy(), want, atol=1e-7)
    assert AngleSimpleLinear is CosineClassifier


def test_cosine_classifier_matches_numpy_and_is_bounded():
    layer = CosineClassifier(C)
    x = features(1, (B, D)) * 100
    out = layer(x).numpy()
    np.testing.assert_allclose(out, np_cosine(x.astype(np.float64), layer.kernel.numpy().astype(np.float64)),
                               rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(out) <= 1.0)
    # the same input direction gives the same cosines, whatever its norm
    np.testing.assert_allclose(layer(x / 100).numpy(), out, atol=1e-6)


def test_unit_column_initialiser():
    w = UnitColumnUniform(seed=3)((50, 9)).numpy()
    np.testing.assert_allclose(np.linalg.norm(w, axis=0), 1.0, rtol=1e-6)
    assert w.std() > 0.05
    layer = CosineClassifier(9)
    layer.build((None, 50))
    np.testing.assert_allclose(np.linalg.norm(layer.kernel.numpy(), axis=0), 1.0, rtol=1e-6)


@pytest.mark.parametrize("cosine", [False, True])
def test_pooled_head_matches_numpy(cosine):
    m = built(cosine)
    w = {k: v.numpy().astype(np.float64) for k, v in weights(m).items()}
    for shape in [(B, R, D), (B, 2, 3, D), (B, D)]:
        x = features(2, shape)
        out = m(x)
        assert out.dtype == tf.float32 and out.shape == (B, C)
        np.testing.assert_allclose(out.numpy(), np_pooled(w, x, cosine), rtol=1e-5, atol=1e-5)
    assert not m.cosine or not hasattr(m.classifier, "bias")


def test_linear_pooled_head_equals_multilabel_head():
    m = built(False)
    ref = MultiLabelHead(C)
    x = features(3)
    ref(x)
    ref.classifier.set_weights(m.classifier.get_weights())
    np.testing.assert_allclose(m(x).numpy(), ref(x).numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("cosine", [False, True])
def test_gradients_match_finite_differences(cosine):
    m = built(cosine, seed=4)
    x = features(5, (3, 2, D))
    r = loss_weights((3, C), seed=6)
    w = weights(m)
    assert_gradients_match(m, lambda W, xx: np_pooled(W, xx, cosine), w, x, r, list(w))


def test_float16_input_and_dropout():
    m = built(True, dropout=0.5)
    x16 = features(7).astype(np.float16)
    out = m(x16)
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), m(x16.astype(np.float32)).numpy(), atol=1e-6)
    assert np.abs(m(x16, training=True).numpy() - out.numpy()).max() > 1e-4


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        PooledHead(0)
    with pytest.raises(ValueError, match="dropout"):
        PooledHead(3, dropout=-0.1)
    with pytest.raises(ValueError, match="units"):
        CosineClassifier(0)
    with pytest.raises(ValueError, match="rank 5"):
        built(False)(np.zeros((1, 1, 1, 1, D), np.float32))


@pytest.mark.parametrize("cosine", [False, True])
def test_save_load_round_trip(cosine, tmp_path):
    m = built(cosine)
    loaded = assert_save_load(m, features(8), tmp_path)
    assert isinstance(loaded.classifier, CosineClassifier) == cosine


def test_two_replicas_equal_one(strategy2):
    x = features(9)
    r = loss_weights((B, C), seed=10)

    def make_model():
        keras.utils.set_random_seed(2)
        return PooledHead(C, cosine=True)

    assert_two_replicas_equal_one(strategy2, make_model, x, r)


def test_cosine_weights_build_under_two_strategies_in_turn():
    """The unit-column initializer draws from its own seed, not Keras' global seed generator (a
    variable of whichever strategy made it first): building under a second strategy works."""
    import tensorflow as tf

    from mll_tf.models.heads import CosineClassifier

    for devices in (["/cpu:0", "/cpu:1"], ["/cpu:0"]):
        strategy = tf.distribute.MirroredStrategy(devices)
        with strategy.scope():
            layer = CosineClassifier(3)
            out = layer(tf.ones([2, 4]))
        w = layer.get_weights()[0]
        np.testing.assert_allclose(np.linalg.norm(w, axis=0), 1.0, rtol=1e-6)
        assert out.shape == (2, 3)
