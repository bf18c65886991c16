"""MLDecoderHead (mll_tf.models.ml_decoder) against an independent NumPy forward.

Ridnik et al. 2023 Sec. 3 / Prokofiev & Sovrasov 2022 Sec. 3.2; the NumPy
forward below re-implements Alibaba-MIIL/ML_Decoder
``src_files/ml_decoder/ml_decoder.py`` (TransformerDecoderLayerOptimal,
GroupFC) and deep-object-reid's ``GroupASL`` at inference (no dropout).
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from mll_tf.models.ml_decoder import MLDecoderHead, default_num_queries
from tests.models.head_checks import (assert_gradients_match, assert_save_load,
                                      assert_two_replicas_equal_one, loss_weights)

B, R, D_IN, E, HEADS, FFN = 4, 5, 6, 8, 2, 12


def make(num_classes=7, num_queries=3, cosine=False, **kw):
    return MLDecoderHead(num_classes, num_queries=num_queries, embed_dim=E, num_heads=HEADS, ffn_dim=FFN,
                         cosine=cosine, **kw)


def features(seed=0, shape=(B, R, D_IN)):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def built(cosine=False, seed=0, **kw):
    """A head with all weights randomised (LayerNorm gammas/betas and biases too, so none is trivial)."""
    keras.utils.set_random_seed(seed)
    m = make(cosine=cosine, **kw)
    m(features())
    rng = np.random.default_rng(seed + 100)
    for v in m.weights:
        v.assign(rng.normal(scale=0.5, size=v.shape).astype(np.float32))
    return m


def weights(m):
    a = m.attention
    return {"Wp": m.token_proj.kernel, "bp": m.token_proj.bias, "queries": m.queries,
            "g1": m.norm1.gamma, "be1": m.norm1.beta,
            "Wq": a._query_dense.kernel, "bq": a._query_dense.bias,
            "Wk": a._key_dense.kernel, "bk": a._key_dense.bias,
            "Wv": a._value_dense.kernel, "bv": a._value_dense.bias,
            "Wo": a._output_dense.kernel, "bo": a._output_dense.bias,
            "g2": m.norm2.gamma, "be2": m.norm2.beta,
            "W1": m.ffn1.kernel, "b1": m.ffn1.bias, "W2": m.ffn2.kernel, "b2": m.ffn2.bias,
            "g3": m.norm3.gamma, "be3": m.norm3.beta,
            "P": m.group_kernel, "bias": m.group_bias}


# The key bias "bk" adds q.bk to every score of a query: softmax ignores it and
# its gradient is 0 up to round-off (checked separately).
TRAINABLE = ["Wp", "bp", "g1", "be1", "Wq", "bq", "Wk", "Wv", "bv", "Wo", "bo",
             "g2", "be2", "W1", "b1", "W2", "b2", "g3", "be3", "P", "bias"]


def np_layer_norm(x, g, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def np_softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def np_normalize(x, axis):
    return x / np.maximum(np.sqrt((x ** 2).sum(axis, keepdims=True)), 1e-12)


def np_ml_decoder(W, x, num_classes, cosine, leaky):
    """Inference forward of ML-Decoder in float64 (x: [B, R, D] or [B, h, w, D])."""
    x = np.asarray(x, np.float64)
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    t = x @ W["Wp"] + W["bp"]
    tokens = np.where(t > 0, t, 0.2 * t) if leaky else np.maximum(t, 0)
    q = np.broadcast_to(W["queries"], (x.shape[0],) + W["queries"].shape)
    h = np_layer_norm(q + q, W["g1"], W["be1"])                      # tgt + dropout(tgt), eval
    qh = np.einsum("bqe,ehk->bhqk", h, W["Wq"]) + W["bq"][None, :, None, :]
    kh = np.einsum("bre,ehk->bhrk", tokens, W["Wk"]) + W["bk"][None, :, None, :]
    vh = np.einsum("bre,ehk->bhrk", tokens, W["Wv"]) + W["bv"][None, :, None, :]
    att = np_softmax(np.einsum("bhqk,bhrk->bhqr", qh, kh) / math.sqrt(qh.shape[-1]))
    o = np.einsum("bhqr,bhrk->bhqk", att, vh)
    attn = np.einsum("bhqk,hke->bqe", o, W["Wo"]) + W["bo"]
    h = np_layer_norm(h + attn, W["g2"], W["be2"])
    ff = np.maximum(h @ W["W1"] + W["b1"], 0) @ W["W2"] + W["b2"]
    h = np_layer_norm(h + ff, W["g3"], W["be3"])
    P = W["P"]
    if cosine:
        h, P = np_normalize(h, -1), np_normalize(P, 1)
    nq, g = P.shape[0], P.shape[2]
    out = np.zeros((x.shape[0], nq * g))
    for i in range(nq):                                               # GroupFC, query by query
        out[:, i * g:(i + 1) * g] = h[:, i, :] @ P[i]
    return out[:, :num_classes] + W["bias"]


def np_forward(cosine, leaky=None, num_classes=7):
    leaky = cosine if leaky is None else leaky
    return lambda W, x: np_ml_decoder(W, x, num_classes, cosine, leaky)


@pytest.mark.parametrize("cosine", [False, True])
def test_forward_matches_numpy(cosine):
    m = built(cosine)
    x = features(1)
    want = np_forward(cosine)({k: v.numpy().astype(np.float64) for k, v in weights(m).items()}, x)
    got = m(x).numpy()
    assert got.dtype == np.float32 and got.shape == (B, 7)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_token_activation_choice():
    assert make().token_activation == "relu"
    assert make(cosine=True).token_activation == "leaky_relu"
    m = built(False, token_activation="leaky_relu")
    x = features(2)
    w = {k: v.numpy().astype(np.float64) for k, v in weights(m).items()}
    np.testing.assert_allclose(m(x).numpy(), np_forward(False, leaky=True)(w, x), rtol=1e-5, atol=1e-5)
    # ReLU and LeakyReLU differ on these weights (the option is not ignored).
    assert np.abs(np_forward(False, leaky=False)(w, x) - m(x).numpy()).max() > 1e-3
    with pytest.raises(ValueError, match="token_activation"):
        make(token_activation="gelu")


def test_cosine_output_is_cosine_plus_bias():
    m = built(True)
    x = features(3)
    out = m(x).numpy()
    cos = out - m.group_bias.numpy()
    assert np.all(np.abs(cos) <= 1 + 1e-6)
    m.group_bias.assign(np.zeros(7, np.float32))
    np.testing.assert_allclose(m(x).numpy(), cos, atol=1e-6)


@pytest.mark.parametrize("cosine", [False, True])
def test_gradients_match_finite_differences(cosine):
    m = built(cosine, seed=4)
    x = features(5, (2, 3, D_IN))
    r = loss_weights((2, 7), seed=6)
    got = assert_gradients_match(m, np_forward(cosine), weights(m), x, r, TRAINABLE)
    # the frozen queries get no update
    assert m.queries.path not in [v.path for v in m.trainable_variables]
    assert [v.path for v in m.non_trainable_weights] == [m.queries.path]
    assert got["queries"] is None
    assert np.abs(got["bk"]).max() < 1e-5 * np.abs(got["Wk"]).max()


@pytest.mark.parametrize("num_classes,num_queries,q,g", [(7, 3, 3, 3), (7, None, 7, 1), (250, None, 100, 3),
                                                          (9605, None, 100, 97), (5, 8, 5, 1)])
def test_group_sizes(num_classes, num_queries, q, g):
    assert default_num_queries(num_classes, num_queries) == q
    m = MLDecoderHead(num_classes, num_queries=num_queries, embed_dim=E, num_heads=HEADS, ffn_dim=FFN)
    assert (m.num_queries, m.group_size) == (q, g) and (g - 1) * q < num_classes <= g * q
    if num_classes <= 250:
        out = m(features(0, (2, 3, D_IN)))
        assert out.shape == (2, num_classes)
        assert m.group_kernel.shape == (q, E, g) and m.group_bias.shape == (num_classes,)


def test_feature_map_equals_flattened_regions():
    m = built(False)
    fmap = features(7, (B, 2, 3, D_IN))
    np.testing.assert_array_equal(m(fmap).numpy(), m(fmap.reshape(B, 6, D_IN)).numpy())
    with pytest.raises(ValueError, match="rank 2"):
        m(features(7, (B, D_IN)))


def test_float16_input_gives_float32_output():
    m = built(True)
    x16 = features(8).astype(np.float16)
    out = m(x16)
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), m(x16.astype(np.float32)).numpy(), rtol=1e-6, atol=1e-6)


def test_dropout_only_in_training():
    m = built(False)
    x = features(9)
    np.testing.assert_array_equal(m(x, training=False).numpy(), m(x).numpy())
    assert np.abs(m(x, training=True).numpy() - m(x).numpy()).max() > 1e-4
    m0 = built(False, dropout=0.0)
    np.testing.assert_allclose(m0(x, training=True).numpy(), m0(x).numpy(), rtol=1e-6, atol=1e-6)


def test_default_sizes_and_initialisation():
    m = MLDecoderHead(9605)
    m(np.zeros((1, 2, 16), np.float32))
    assert (m.embed_dim, m.attention.num_heads, m.ffn_dim, m.dropout_rate) == (768, 8, 2048, 0.1)
    assert (m.num_queries, m.group_size) == (100, 97)
    # xavier_normal_ on [Q, E, G]: std sqrt(2 / (G (E + Q)))
    std = math.sqrt(2 / (97 * (768 + 100)))
    assert abs(m.group_kernel.numpy().std() / std - 1) < 0.02
    np.testing.assert_array_equal(m.group_bias.numpy(), 0)
    assert abs(m.queries.numpy().std() - 1) < 0.05


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        MLDecoderHead(0)
    with pytest.raises(ValueError, match="divisible"):
        MLDecoderHead(5, embed_dim=10, num_heads=3)
    with pytest.raises(ValueError, match="dropout"):
        MLDecoderHead(5, dropout=1.0)
    with pytest.raises(ValueError, match="num_queries"):
        MLDecoderHead(5, num_queries=0)


@pytest.mark.parametrize("cosine", [False, True])
def test_save_load_round_trip(cosine, tmp_path):
    m = built(cosine)
    loaded = assert_save_load(m, features(10), tmp_path)
    assert loaded.get_config()["cosine"] == cosine and loaded.num_queries == 3
    assert len(loaded.non_trainable_weights) == 1


def test_two_replicas_equal_one(strategy2):
    x = features(11)
    r = loss_weights((B, 7), seed=12)

    def make_model():
        keras.utils.set_random_seed(3)
        return make(cosine=True)

    assert_two_replicas_equal_one(strategy2, make_model, x, r)


def test_mixed_precision_policy_gives_float32_close_to_float32():
    x = features(13)
    want = built(True)(x).numpy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        m = built(True)
        assert m.compute_dtype == "float16" and m.group_kernel.dtype == "float32"
        got = m(x)
    finally:
        keras.config.set_dtype_policy("float32")
    assert got.dtype == tf.float32
    np.testing.assert_allclose(got.numpy(), want, atol=2e-2)
