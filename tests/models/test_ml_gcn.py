"""MLGCNHead and build_ml_gcn_head (mll_tf.models.ml_gcn) against an independent NumPy forward.

Prokofiev & Sovrasov 2022 Sec. 3.1; deep-object-reid
``torchreid/models/gcn.py`` (gen_A, Image_GCNN.gen_adj, GraphConvolution,
the max-over-labels sigmoid channel attention).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mll_tf.graphs.label_graph import save_graph
from mll_tf.models.heads import CosineClassifier
from mll_tf.models.ml_gcn import MLGCNHead, build_ml_gcn_head, gcn_adjacency
from tests.models.head_checks import (assert_gradients_match, assert_save_load,
                                      assert_two_replicas_equal_one, loss_weights)

B, R, D, C, E, H = 4, 5, 6, 7, 3, 5
NAMES = ["cat", "dog", "car", "tree", "boat", "bird", "bus"]
LABELS = np.array([[1, 1, 0, 0, 0, 1, 0],
                   [1, 0, 0, 1, 0, 1, 0],
                   [0, 0, 1, 0, 0, 0, 1],
                   [0, 0, 1, 0, 1, 0, 1],
                   [1, 1, 0, 0, 0, 0, -1],
                   [0, 0, 0, 1, 0, 1, 0],
                   [0, 0, -1, 0, 1, 0, 0]], np.int8)


def np_gcn_adjacency(y, t=0.4, rho=0.25):
    """P(j|i) -> binarise -> rho / colsum + I -> D^-1/2 A^T D^-1/2, from the formulas."""
    pos = (np.asarray(y) == 1).astype(np.float64)
    m = pos.T @ pos
    count = np.diag(m).copy()
    p = m / np.where(count > 0, count, 1)[:, None]
    np.fill_diagonal(p, 0)
    a = (p >= t).astype(np.float64)
    a = a * rho / (a.sum(0, keepdims=True) + 1e-6) + np.eye(len(a))
    d = a.sum(1) ** -0.5
    return (a @ np.diag(d)).T @ np.diag(d)


def leaky(z):
    return np.where(z > 0, z, 0.2 * z)


def np_ml_gcn(W, x, cosine):
    x = np.asarray(x, np.float64)
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    h = leaky(W["adj"] @ (W["emb"] @ W["gcn1"]))
    h = leaky(W["adj"] @ (h @ W["gcn2"]))
    att = 1 / (1 + np.exp(-h.max(0)))
    f = (x * att).mean(1)
    if cosine:
        fn = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
        wn = W["kernel"] / np.maximum(np.linalg.norm(W["kernel"], axis=0, keepdims=True), 1e-12)
        return np.clip(fn @ wn, -1, 1)
    return f @ W["kernel"] + W["bias"]


def features(seed=0, shape=(B, R, D)):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def embeddings(seed=0):
    return np.random.default_rng(seed).normal(size=(C, E)).astype(np.float32)


def built(cosine, seed=0, **kw):
    keras.utils.set_random_seed(seed)
    m = MLGCNHead(embeddings(seed), gcn_adjacency(LABELS), hidden_dim=H, cosine=cosine, **kw)
    m(features())
    rng = np.random.default_rng(seed + 1)
    for v in m.trainable_weights:
        v.assign(rng.normal(size=v.shape).astype(np.float32))
    return m


def weights(m):
    w = {"emb": m.label_embeddings, "adj": m.adjacency, "gcn1": m.gcn1, "gcn2": m.gcn2,
         "kernel": m.classifier.kernel}
    if not m.cosine:
        w["bias"] = m.classifier.bias
    return w


def np_weights(m):
    return {k: v.numpy().astype(np.float64) for k, v in weights(m).items()}


def test_adjacency_from_labels_by_hand():
    # counts 3, 2, 1; M01 = 2, M02 = 1, M12 = 0 -> P(1|0) = 2/3, P(2|0) = 1/3, P(0|1) = 1, P(0|2) = 1
    # -> A = [[0,1,0],[1,0,0],[1,0,0]] at t = 0.4; column sums 2, 1, 0
    # -> A' = 0.25 A / colsum + I = [[1,.25,0],[.125,1,0],[.125,0,1]]; row sums 1.25, 1.125, 1.125
    # -> A_hat[i, j] = A'[j, i] / sqrt(rowsum_i rowsum_j).
    y = np.array([[1, 1, 0], [1, 1, 0], [1, 0, 1], [0, 0, -1]])
    s = np.sqrt(1.25 * 1.125)
    want = np.array([[1 / 1.25, 0.125 / s, 0.125 / s], [0.25 / s, 1 / 1.125, 0], [0, 0, 1 / 1.125]])
    np.testing.assert_allclose(gcn_adjacency(y), want, rtol=1e-5)
    np.testing.assert_allclose(gcn_adjacency(LABELS), np_gcn_adjacency(LABELS), rtol=1e-6)
    np.testing.assert_allclose(gcn_adjacency(LABELS, t=0.3, rho=0.5), np_gcn_adjacency(LABELS, 0.3, 0.5),
                               rtol=1e-6)


@pytest.mark.parametrize("cosine", [False, True])
def test_forward_matches_numpy(cosine):
    m = built(cosine)
    for shape in [(B, R, D), (B, 2, 3, D)]:
        x = features(1, shape)
        out = m(x)
        assert out.dtype == tf.float32 and out.shape == (B, C)
        np.testing.assert_allclose(out.numpy(), np_ml_gcn(np_weights(m), x, cosine), rtol=1e-5, atol=1e-5)
    if cosine:
        assert isinstance(m.classifier, CosineClassifier) and np.all(np.abs(out.numpy()) <= 1)


def test_channel_attention_is_image_independent_and_in_unit_interval():
    m = built(False)
    w = m.channel_attention().numpy()
    assert w.shape == (D,) and np.all((w > 0) & (w < 1))
    x = features(2)
    # attention then pooling == pooling then attention (the weights are shared by all images)
    pooled = x.mean(1) * w
    np.testing.assert_allclose(m(x).numpy(), pooled @ m.classifier.kernel.numpy() + m.classifier.bias.numpy(),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cosine", [False, True])
def test_gradients_match_finite_differences(cosine):
    m = built(cosine, seed=3)
    x = features(4, (2, 3, D))
    r = loss_weights((2, C), seed=5)
    w = weights(m)
    trainable = [k for k in w if k not in ("emb", "adj")]
    got = assert_gradients_match(m, lambda W, xx: np_ml_gcn(W, xx, cosine), w, x, r, trainable)
    assert len(m.trainable_weights) == len(trainable)
    assert {v.path.split("/")[-1] for v in m.non_trainable_weights} == {"label_embeddings", "adjacency"}
    assert got["emb"] is None and got["adj"] is None


def test_default_hidden_dim_and_initialisation():
    m = MLGCNHead(embeddings(), gcn_adjacency(LABELS))
    m(features())
    assert m.gcn1.shape == (E, D) and m.gcn2.shape == (D, D)
    assert np.abs(m.gcn2.numpy()).max() <= 1 / np.sqrt(D)
    np.testing.assert_array_equal(m.adjacency.numpy(), gcn_adjacency(LABELS))


def test_float16_input_and_dropout():
    m = built(True, dropout=0.5)
    x16 = features(6).astype(np.float16)
    out = m(x16)
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), m(x16.astype(np.float32)).numpy(), atol=1e-6)
    assert np.abs(m(x16, training=True).numpy() - out.numpy()).max() > 1e-4


def test_bad_arrays():
    with pytest.raises(ValueError, match=r"adjacency must be \[C, C\]"):
        MLGCNHead(embeddings(), np.eye(C - 1))
    with pytest.raises(ValueError, match="label_embeddings must be"):
        MLGCNHead(np.zeros(C), np.eye(C))
    bad = embeddings()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN.*row 2"):
        MLGCNHead(bad, np.eye(C))


# ---- the builder: class order ------------------------------------------------

def test_builder_equals_direct_construction():
    emb = embeddings(7)
    x = features(8)
    keras.utils.set_random_seed(1)
    a = build_ml_gcn_head(NAMES, (NAMES, emb), train_labels=LABELS, hidden_dim=H)
    out_a = a(x).numpy()
    keras.utils.set_random_seed(1)
    b = MLGCNHead(emb, gcn_adjacency(LABELS), hidden_dim=H)
    np.testing.assert_array_equal(out_a, b(x).numpy())
    # the same graph given as P(j|i) with names
    pos = (LABELS == 1).astype(np.float64)
    m = pos.T @ pos
    p = m / np.diag(m)[:, None]
    np.fill_diagonal(p, 0)
    c = build_ml_gcn_head(NAMES, (NAMES, emb), graph=(NAMES, p), hidden_dim=H)
    c(x)
    np.testing.assert_allclose(c.adjacency.numpy(), gcn_adjacency(LABELS), rtol=1e-6)


def test_builder_refuses_embedding_rows_in_another_order():
    emb = embeddings(7)
    perm = [0, 1, 3, 2, 4, 5, 6]
    shuffled = ([NAMES[i] for i in perm], emb[perm])
    with pytest.raises(ValueError, match=r"label embeddings rows are not in the class order: row 2 is 'tree' "
                                         r"but class 2 is 'car'"):
        build_ml_gcn_head(NAMES, shuffled, train_labels=LABELS)
    fixed = build_ml_gcn_head(NAMES, shuffled, train_labels=LABELS, reorder=True)
    fixed(features())
    np.testing.assert_array_equal(fixed.label_embeddings.numpy(), emb)
    # a mapping is looked up by name, whatever its order
    mapping = {NAMES[i]: emb[i] for i in reversed(range(C))}
    by_name = build_ml_gcn_head(NAMES, mapping, train_labels=LABELS)
    by_name(features())
    np.testing.assert_array_equal(by_name.label_embeddings.numpy(), emb)


def test_builder_refuses_graph_rows_in_another_order(tmp_path):
    emb = embeddings(7)
    perm = [1, 0, 2, 3, 4, 5, 6]
    p = np.random.default_rng(0).uniform(size=(C, C))
    path = save_graph(tmp_path / "g.npz", p[np.ix_(perm, perm)], [NAMES[i] for i in perm])
    with pytest.raises(ValueError, match=r"label graph rows are not in the class order: row 0 is 'dog' "
                                         r"but class 0 is 'cat'"):
        build_ml_gcn_head(NAMES, (NAMES, emb), graph=path)
    with pytest.raises(ValueError, match="label graph rows are not in the class order"):
        build_ml_gcn_head(NAMES, (NAMES, emb), graph=([NAMES[i] for i in perm], p[np.ix_(perm, perm)]))
    fixed = build_ml_gcn_head(NAMES, (NAMES, emb), graph=path, reorder=True)
    direct = build_ml_gcn_head(NAMES, (NAMES, emb), graph=(NAMES, p))
    fixed(features()), direct(features())
    np.testing.assert_allclose(fixed.adjacency.numpy(), direct.adjacency.numpy(), rtol=1e-6)


def test_builder_missing_extra_zero_rows_and_files(tmp_path):
    emb = embeddings(7)
    with pytest.raises(ValueError, match="no row for class 'bus'"):
        build_ml_gcn_head(NAMES, (NAMES[:-1], emb[:-1]), train_labels=LABELS)
    with pytest.raises(ValueError, match="row for 'plane', which is not a class"):
        build_ml_gcn_head(NAMES, (NAMES + ["plane"], np.vstack([emb, emb[:1]])), train_labels=LABELS)
    zero = emb.copy()
    zero[3] = 0
    with pytest.raises(ValueError, match="class 'tree'.*all-zero row"):
        build_ml_gcn_head(NAMES, (NAMES, zero), train_labels=LABELS)
    build_ml_gcn_head(NAMES, (NAMES, zero), train_labels=LABELS, allow_missing_embeddings=True)
    np.save(tmp_path / "emb.npy", emb)
    ok = build_ml_gcn_head(NAMES, (NAMES, str(tmp_path / "emb.npy")), train_labels=LABELS)
    ok(features())
    np.testing.assert_array_equal(ok.label_embeddings.numpy(), emb)
    with pytest.raises(ValueError, match="has no label names"):
        build_ml_gcn_head(NAMES, str(tmp_path / "emb.npy"), train_labels=LABELS)
    with pytest.raises(FileNotFoundError):
        build_ml_gcn_head(NAMES, (NAMES, str(tmp_path / "nope.npy")), train_labels=LABELS)
    with pytest.raises(ValueError, match=r"label graph: 7 names for an array of shape \(7, 8\)"):
        build_ml_gcn_head(NAMES, (NAMES, emb), graph=(NAMES, np.zeros((C, C + 1))))
    with pytest.raises(ValueError, match="graph or train_labels"):
        build_ml_gcn_head(NAMES, (NAMES, emb))
    with pytest.raises(ValueError, match="not unique"):
        build_ml_gcn_head(NAMES + ["cat"], (NAMES, emb), train_labels=LABELS)


def test_builder_with_the_project_word_vectors():
    from mll_tf.data.word_vectors import label_embeddings, load_word_vectors

    names = ["cat", "dog", "car", "tree", "boat"]
    emb, missing = label_embeddings(names, load_word_vectors())
    assert missing == [] and emb.shape == (5, 50)
    head = build_ml_gcn_head(names, (names, emb), train_labels=LABELS[:, :5], cosine=True)
    out = head(features(9))
    assert out.shape == (B, 5) and head.gcn1.shape == (50, D)


@pytest.mark.parametrize("cosine", [False, True])
def test_save_load_round_trip(cosine, tmp_path):
    m = built(cosine)
    loaded = assert_save_load(m, features(10), tmp_path)
    np.testing.assert_array_equal(loaded.adjacency.numpy(), m.adjacency.numpy())
    np.testing.assert_array_equal(loaded.label_embeddings.numpy(), m.label_embeddings.numpy())


def test_two_replicas_equal_one(strategy2):
    x = features(11)
    r = loss_weights((B, C), seed=12)

    def make_model():
        keras.utils.set_random_seed(4)
        return MLGCNHead(embeddings(), gcn_adjacency(LABELS), hidden_dim=H, cosine=True)

    assert_two_replicas_equal_one(strategy2, make_model, x, r)
