"""Tests for mll_tf.models.imcl and the IMCL step builders of mll_tf.tasks.imcl (paper Sec. 3)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from mll_tf import labels as mll_labels
from mll_tf.graphs.label_graph import preprocess_graph
from mll_tf.losses.imcl_loss import IMCLLoss
from mll_tf.models.imcl import (IMCLDictionary, IMCLModel, LabelDependency,
                                asym_sigmoid, clamp_labels, labels_to_pm1)
from mll_tf.tasks.imcl import (make_imcl_train_step, make_logistic_train_step,
                               refresh_dictionary)
from tests.ops.test_omp import np_omp

B, N, C, D, K = 6, 14, 5, 4, 2
GRAPH = np.array([[0, 2, 0, 0, 1],
                  [1, 0, 0, 0, 0],
                  [0, 0, 0, 3, 0],
                  [0, 1, 0, 0, 0],
                  [0, 0, 0, 0, 0]], np.float32)


def np_asym(x, c):
    y = np.clip(x + 0.5 * np.log(1 / c), -80, 80)
    return (np.exp(y) - np.exp(-y) / c) / (np.exp(y) + np.exp(-y))


def np_clamp(pred, y, c):
    return (1 - np.abs(np.clip(y, -1, 1))) * pred + np.clip(y, -1 / c, 10)


def test_asym_sigmoid_by_hand():
    x = np.array([0.0, math.log(2), -math.log(2), 100.0, -100.0], np.float32)
    # sigma_2(x) = (e^2x - 1) / (e^2x + 2): 0, 3/6, (-3/4)/(9/4), ~1, ~-1/2.
    np.testing.assert_allclose(asym_sigmoid(x, 2.0), [0, 0.5, -1 / 3, 1, -0.5],
                               atol=1e-6)
    np.testing.assert_allclose(asym_sigmoid(x[:3], 1.0), np.tanh(x[:3]), atol=1e-6)
    assert np.isfinite(asym_sigmoid(np.float32([1e6, -1e6]), 2.0)).all()


def test_clamp_labels_and_label_conversion():
    pred = np.full((1, 3), 0.3, np.float32)
    np.testing.assert_allclose(clamp_labels(pred, [[1, -1, 0]], 2.0), [[1, -0.5, 0.3]])
    np.testing.assert_allclose(clamp_labels(pred, [[1, -1, 0]], 1.0), [[1, -1, 0.3]])
    y = np.array([[1, 0, -1], [0, 0, 1]], np.int8)
    np.testing.assert_array_equal(labels_to_pm1(y), mll_labels.to_pm1(y))


def test_label_dependency_pattern_config_and_clip():
    layer = LabelDependency(GRAPH)
    g = layer.dense().numpy()
    np.testing.assert_allclose(g, preprocess_graph(GRAPH), rtol=1e-6)
    assert layer.num_nonzero == int(np.count_nonzero(preprocess_graph(GRAPH)))
    x = np.arange(10, dtype=np.float32).reshape(2, 5)
    np.testing.assert_allclose(layer(x), x @ g, rtol=1e-6)
    assert len(layer.trainable_variables) == 1
    layer.values.assign(layer.values * 0 + np.linspace(-1, 2, layer.num_nonzero))
    layer.clip_to_unit()
    v = layer.values.numpy()
    assert v.min() == 0 and v.max() == 1
    again = LabelDependency.from_config(layer.get_config())
    assert again.num_nonzero == layer.num_nonzero and again.num_labels == C
    ident = LabelDependency(num_labels=3)
    np.testing.assert_array_equal(ident.dense(), np.eye(3))
    with pytest.raises(ValueError, match="num_labels=4"):
        LabelDependency(GRAPH, num_labels=4)


def _sparse_graph(c=40, per_label=2, seed=0):
    rng = np.random.default_rng(seed)
    g = np.zeros((c, c), np.float32)
    g[np.repeat(np.arange(c), per_label), rng.integers(0, c, per_label * c)] = rng.uniform(0.5, 2, per_label * c)
    return g


@pytest.mark.parametrize("shape", [(12, 40), (4, 3, 40)])
def test_label_dependency_sparse_product_equals_the_dense_matmul(shape, monkeypatch):
    """A large sparse G (C >= 512 labels, here lowered to 32; nnz * 8 < C^2) and few rows: the product runs over the nnz entries and gives x @ G and its
    gradients (in x and in the values) as the dense matmul does, to float32 round-off."""
    import mll_tf.models.imcl as imcl_module

    layer = LabelDependency(_sparse_graph())
    assert layer.num_nonzero * imcl_module.SPARSE_PRODUCT_DENSITY < 40 ** 2
    monkeypatch.setattr(imcl_module, "SPARSE_PRODUCT_MIN_LABELS", 32)   # 40 labels count as many here
    x = tf.constant(np.random.default_rng(1).uniform(-0.5, 1, shape).astype(np.float32))
    w = tf.constant(np.random.default_rng(2).normal(size=shape).astype(np.float32))

    def value_and_grads():
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = layer(x)
            loss = tf.reduce_sum(out * w)
        return [out] + tape.gradient(loss, [x, layer.values])

    calls = []
    real = LabelDependency._sparse_product
    monkeypatch.setattr(LabelDependency, "_sparse_product", lambda self, v: calls.append(1) or real(self, v))
    sparse = value_and_grads()
    assert calls   # the sparse path ran
    want = np.einsum("...c,cd->...d", x.numpy().astype(np.float64), layer.dense().numpy().astype(np.float64))
    np.testing.assert_allclose(sparse[0].numpy(), want, rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(imcl_module, "SPARSE_PRODUCT_DENSITY", 10 ** 9)   # "dense graph": the dense matmul
    calls.clear()
    dense = value_and_grads()
    assert not calls
    for a, b in zip(sparse, dense):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(imcl_module, "SPARSE_PRODUCT_DENSITY", 8)
    monkeypatch.setattr(imcl_module, "SPARSE_PRODUCT_MAX_ELEMENTS", 10)   # too many rows: dense
    layer(x)
    assert not calls
    monkeypatch.setattr(imcl_module, "SPARSE_PRODUCT_MAX_ELEMENTS", 1 << 22)
    monkeypatch.setattr(imcl_module, "SPARSE_PRODUCT_MIN_LABELS", 512)   # the default: 40 labels are too few
    layer(x)
    assert not calls


def _model(feature_map=True, seed=0, **kw):
    keras.utils.set_random_seed(seed)
    model = IMCLModel(C, graph=GRAPH, feature_map=feature_map, **kw)
    model(np.zeros((1, D), np.float32))
    if feature_map:   # a non-identity Theta_1 so the tests see it
        rng = np.random.default_rng(seed)
        model.theta_1.kernel.assign(np.eye(D) + 0.1 * rng.normal(size=(D, D)))
        model.theta_1.bias.assign(0.1 * rng.normal(size=D))
    return model


def _np_params(model):
    k1 = b1 = None
    if model.theta_1 is not None:
        k1, b1 = model.theta_1.kernel.numpy(), model.theta_1.bias.numpy()
    return (k1, b1, model.classifier.kernel.numpy(), model.classifier.bias.numpy(),
            model.label_dependency.dense().numpy())


def test_model_forward_and_propagation():
    keras.utils.set_random_seed(0)
    plain = IMCLModel(C, graph=GRAPH, feature_map=True)
    plain(np.zeros((1, D), np.float32))
    np.testing.assert_array_equal(plain.theta_1.kernel.numpy(), np.eye(D))
    np.testing.assert_array_equal(plain.theta_1.bias.numpy(), np.zeros(D))

    model = _model()
    k1, b1, k, b, g = _np_params(model)
    rng = np.random.default_rng(3)
    regions = rng.normal(size=(3, 2, D)).astype(np.float32)
    f = regions.mean(axis=1)
    logits = (f @ k1 + b1) @ k + b
    np.testing.assert_allclose(model(regions), logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model(f), logits, rtol=1e-5, atol=1e-6)
    labels = np.array([[1, -1, 0, 0, -1], [0, 0, 0, 0, 0], [-1] * 5], np.int8)
    y = mll_labels.to_pm1(labels)
    expected = np_clamp(np_asym(logits, 2.0) @ g, y, 2.0)
    np.testing.assert_allclose(model.propagated(f, labels=labels), expected, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(model.propagated(logits, from_logits=True),
                               np_asym(logits, 2.0) @ g, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.predictions(logits, labels),
                               np_clamp(np_asym(logits, 2.0), y, 2.0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.omp_features(np.ones((2, 3), np.float32)), np.ones((2, 4)))


def test_model_save_load(tmp_path):
    model = _model()
    model.label_dependency.values.assign(
        np.linspace(0.1, 0.9, model.num_nonzero).astype(np.float32))
    path = str(tmp_path / "imcl.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    x = np.random.default_rng(0).normal(size=(2, D)).astype(np.float32)
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6)
    np.testing.assert_array_equal(loaded.label_dependency.dense(),
                                  model.label_dependency.dense())
    assert loaded.feature_map and loaded.c == 2.0


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(B, D)).astype(np.float32)
    labels = rng.choice([1, 0, -1], size=(B, C), p=[0.4, 0.4, 0.2]).astype(np.int8)
    dict_f = rng.normal(size=(N, D)).astype(np.float32)
    dict_y = rng.choice([1, 0, -1], size=(N, C), p=[0.3, 0.3, 0.4]).astype(np.int8)
    dict_f[3] = feats[0]             # the first image is in the dictionary
    dict_y[3] = labels[0]
    return feats, labels, dict_f, dict_y


def _optimizers(lr=0.05, lr_graph=0.5):
    rms = dict(rho=0.9, momentum=0.9, epsilon=1.0)
    return {"classifier": keras.optimizers.RMSprop(lr, **rms),
            "graph": keras.optimizers.RMSprop(lr_graph, **rms)}


def np_losses(model, feats, labels, dict_f, dict_y, k, lam_c, lam_f, threshold):
    """Independent NumPy forward: OMP + L_log, L_colab, L_feat."""
    k1, b1, kk, b, g = (None if a is None else a.astype(np.float64)
                        for a in _np_params(model))
    c = model.c

    def embed(x):
        return x @ k1 + b1 if k1 is not None else x

    y = mll_labels.to_pm1(labels).astype(np.float64)
    ydict = mll_labels.to_pm1(dict_y).astype(np.float64)
    e, ed = embed(feats.astype(np.float64)), embed(dict_f.astype(np.float64))
    s, sd = e @ kk + b, ed @ kk + b
    y_hat = np_clamp(np_asym(s, c), y, c)
    y_dict = np_clamp(np_asym(sd, c) @ g, ydict, c)
    q = np.concatenate([e, np.ones((len(e), 1))], 1)
    qd = np.concatenate([ed, np.ones((len(ed), 1))], 1)
    idx, pl, pf = np_omp(y_hat, q, y_dict, qd, k, lam_c, lam_f, threshold)
    colab = feat = 0.0
    for i in range(len(y)):
        rl, rf = y_hat[i].copy(), q[i].copy()
        for a in range(k):
            if idx[i, a] >= 0:
                rl -= pl[i, a] * y_dict[idx[i, a]]
                rf -= pf[i, a] * qd[idx[i, a]]
        colab += (rl ** 2).sum()
        feat += (rf ** 2).sum()
    z = (labels == 1).astype(np.float64)
    w = (labels != -1).astype(np.float64)
    xent = np.maximum(s, 0) - s * z + np.log1p(np.exp(-np.abs(s)))
    return {"logistic": (xent * w).sum() / max(w.sum(), 1), "colab": colab / len(y),
            "feature": feat / len(y), "indices": idx}


@pytest.mark.parametrize("feature_map", [True, False])
def test_losses_match_numpy_and_calibration(feature_map):
    feats, labels, dict_f, dict_y = _problem(1)
    model = _model(feature_map=feature_map, seed=1)
    step = make_imcl_train_step(model, _optimizers(), (dict_f, dict_y),
                                loss=IMCLLoss(1.0, 0.5), k=K, threshold=1e-3)
    got = step.evaluate_losses(feats, labels)
    ref = np_losses(model, feats, labels, dict_f, dict_y, K, 1.0, 0.5, 1e-3)
    assert 3 not in ref["indices"][0]          # the image itself is excluded
    assert (ref["indices"] >= 0).sum() > B     # non-trivial supports
    for key in ("logistic", "colab", "feature"):
        assert float(got[key]) == pytest.approx(ref[key], rel=2e-4, abs=1e-6), key
    assert float(got["total"]) == pytest.approx(
        ref["logistic"] + ref["colab"] + 0.5 * ref["feature"], rel=2e-4)

    # Calibration: lambda = alpha * L_log / L with the bootstrap OMP (1e5, 1).
    boot = np_losses(model, feats, labels, dict_f, dict_y, K, 1e5, 1.0, 1e-3)
    lam_c, lam_f = step.calibrate(feats, labels, alpha_colab=1.0, alpha_feature=0.5)
    assert lam_c == pytest.approx(boot["logistic"] / boot["colab"], rel=5e-4)
    assert lam_f == pytest.approx(0.5 * boot["logistic"] / boot["feature"], rel=5e-4)
    assert float(step.lambda_colab) == pytest.approx(lam_c)
    assert float(step.lambda_feature) == pytest.approx(lam_f)


def test_train_steps_reduce_loss_and_keep_graph_pattern():
    feats, labels, dict_f, dict_y = _problem(2)
    model = _model(seed=2)
    g0 = model.label_dependency.dense().numpy()
    step = make_imcl_train_step(model, _optimizers(), IMCLDictionary(dict_f, dict_y),
                                loss=IMCLLoss(1.0, 0.5), k=K, threshold=1e-3)
    step.calibrate(feats, labels, 1.0, 0.5)
    history = [step(feats, labels) for _ in range(12)]
    log = [float(h["logistic"]) for h in history]
    assert log[-1] < 0.8 * log[0]
    assert all(np.isfinite(float(h["total"])) for h in history)
    g = model.label_dependency.dense().numpy()
    assert not np.allclose(g, g0)                      # G was trained
    np.testing.assert_array_equal(g[g0 == 0], 0.0)     # pattern kept exactly
    assert g.min() >= 0.0 and g.max() <= 1.0
    assert model.label_dependency.indices.shape == (int(np.count_nonzero(g0)), 2)


def test_cached_dictionary_and_shared_optimizer():
    feats, labels, dict_f, dict_y = _problem(3)
    model_a, model_b = _model(seed=3), _model(seed=3)
    kw = dict(loss=IMCLLoss(1.0, 0.5), k=K, threshold=1e-3)
    exact = make_imcl_train_step(model_a, _optimizers(), (dict_f, dict_y), **kw)
    cached = make_imcl_train_step(model_b, _optimizers(), (dict_f, dict_y),
                                  dict_refresh_every=3, **kw)
    # The first step refreshes the cache, so both see the same dictionary.
    a, b = exact(feats, labels), cached(feats, labels)
    for key in ("logistic", "colab", "feature", "total"):
        assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-5)
    for _ in range(3):
        assert np.isfinite(float(cached(feats, labels)["total"]))
    # One optimiser for everything (MSCOCO) and no feature term.
    model_c = _model(seed=3, feature_map=False)
    single = make_imcl_train_step(
        model_c, {"classifier": keras.optimizers.SGD(0.1)}, (dict_f, dict_y),
        loss=IMCLLoss(1.0, 0.5), k=K, use_feature_term=False)
    out = single(feats, labels)
    assert float(out["feature"]) == 0.0 and float(single.lambda_feature) == 0.0
    with pytest.raises(ValueError, match="unknown optimiser"):
        make_imcl_train_step(model_c, {"classifier": keras.optimizers.SGD(0.1),
                                       "theta": None}, (dict_f, dict_y))


def test_jit_compiled_step_matches():
    feats, labels, dict_f, dict_y = _problem(4)
    outs = []
    for jit in (False, True, "optimizer"):
        model = _model(seed=4)
        step = make_imcl_train_step(model, _optimizers(), (dict_f, dict_y),
                                    loss=IMCLLoss(1.0, 0.5), k=K, jit_compile=jit)
        outs.append((step(feats, labels), step(feats, labels),
                     model.classifier.kernel.numpy()))
    for other in outs[1:]:
        for key in ("total", "colab"):
            assert float(outs[0][1][key]) == pytest.approx(float(other[1][key]), rel=1e-4)
        np.testing.assert_allclose(outs[0][2], other[2], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="jit_compile"):
        make_logistic_train_step(_model(seed=4), keras.optimizers.SGD(0.1), jit_compile="all")


def test_logistic_step_reduces_loss():
    feats, labels, _, _ = _problem(5)
    for jit in (False, "optimizer"):
        model = _model(feature_map=False, seed=5)
        step = make_logistic_train_step(model, keras.optimizers.RMSprop(0.05), jit_compile=jit)
        losses = [float(step(feats, labels)["logistic"]) for _ in range(10)]
        assert losses[-1] < 0.8 * losses[0]


def test_end_to_end_backbone_and_dictionary_refresh():
    rng = np.random.default_rng(6)
    images = rng.normal(size=(B, 5, 5, 2)).astype(np.float32)
    dict_images = rng.normal(size=(N, 5, 5, 2)).astype(np.float32)
    _, labels, _, dict_y = _problem(6)
    keras.utils.set_random_seed(6)
    backbone = keras.Sequential([keras.Input((5, 5, 2)),
                                 keras.layers.Conv2D(D, 3, activation="relu")])
    model = IMCLModel(C, graph=GRAPH, backbone=backbone)
    model(images[:1])
    assert model.feature_dim == D
    dictionary = IMCLDictionary(np.zeros((N, D), np.float32), dict_y)
    refresh_dictionary(model, dictionary, dict_images, batch_size=4)
    np.testing.assert_allclose(dictionary.features.numpy(),
                               model.pool(dict_images).numpy(), rtol=1e-5, atol=1e-6)
    opts = _optimizers()
    opts["backbone"] = keras.optimizers.SGD(0.01)
    step = make_imcl_train_step(model, opts, dictionary, loss=IMCLLoss(1.0, 0.0), k=K)
    w0 = backbone.layers[0].kernel.numpy().copy()
    out = step(images, labels)
    assert np.isfinite(float(out["total"]))
    assert not np.allclose(backbone.layers[0].kernel.numpy(), w0)
