"""Parity of the Keras LESA model and LESALoss with an independent NumPy
version of the reference (docs/lesa.md §2 shape flow, §3 losses).

The NumPy reference below is written from docs/lesa.md and the structure of
hbdat/cvpr20_LESA ``core/model_share_attention.py`` (``_conv``,
``_augment_1``/``_augment_0``, ``_attention_layer_MLP``, ``_predict_frac``,
``_ranking_loss``, ``_attention_distribution_soft_cardinality``,
``_attention_global_regularizer``, ``_attention_ortho_span_regularizer``),
in float64, in the reference's augmented form and its {+1, -1, 0} label
convention. It shares no code with mll_tf. Every model variable is set from
NumPy arrays, then outputs and every loss term are compared (float32 TF vs
float64 NumPy, rtol = atol = 1e-5).
"""

import numpy as np
import pytest

from mll_tf.losses.lesa_loss import LESALoss
from mll_tf.models.lesa import LESA

B, GRID, D, M, DW, C = 4, (3, 4), 6, 3, 5, 7        # R = 12 regions
R = GRID[0] * GRID[1]
BN_EPS = 1e-3
TOL = dict(rtol=1e-5, atol=1e-5)

# mll_tf convention: 1 present, 0 absent, -1 unknown.
LABELS = np.array([[1, 0, -1, 0, 1, 0, -1],
                   [0, 1, 1, -1, 0, 0, 1],
                   [-1, -1, -1, -1, -1, -1, -1],     # no pairs at all
                   [1, -1, 0, 0, 0, -1, 0]], np.int8)


# ---------------------------------------------------------------------------
# NumPy reference (float64)
# ---------------------------------------------------------------------------

def to_reference_labels(y):
    """docs/labels_and_data.md §1: {1, 0, -1} -> {+1, -1, 0}: where(y < 0, 0, 2y - 1)."""
    y = np.asarray(y, np.float64)
    return np.where(y < 0, 0.0, 2.0 * y - 1.0)


def augment(x, value):
    """``_augment_1`` (value 1) / ``_augment_0`` (value 0) on the last axis."""
    pad = np.full(x.shape[:-1] + (1,), value, np.float64)
    return np.concatenate([x, pad], axis=-1)


def conv2x2_same(x, kernel):
    """slim.conv2d(k=[2,2], SAME, stride 1, no bias): pad 0 before, 1 after."""
    b, h, w, _ = x.shape
    xp = np.zeros((b, h + 1, w + 1, x.shape[-1]))
    xp[:, :h, :w] = x
    out = np.zeros((b, h, w, kernel.shape[-1]))
    for a in range(2):
        for c in range(2):
            out += np.einsum("bhwd,de->bhwe", xp[:, a:a + h, c:c + w],
                             kernel[a, c])
    return out


def softmax(x, axis):
    ex = np.exp(x - x.max(axis=axis, keepdims=True))
    return ex / ex.sum(axis=axis, keepdims=True)


def reference_forward(features, weights, training):
    """docs/lesa.md §2 steps 1-8 and g. Returns a dict of float64 arrays."""
    h, w = GRID
    x = features.astype(np.float64).reshape(-1, h, w, D)
    conv = conv2x2_same(x, weights["conv/kernel"])
    if training:   # tf.layers.batch_normalization(training=True): batch
        mean = conv.mean(axis=(0, 1, 2))                  # statistics,
        var = conv.var(axis=(0, 1, 2))                    # biased variance
    else:
        mean = weights["conv_bn/moving_mean"]
        var = weights["conv_bn/moving_variance"]
    bn = ((conv - mean) / np.sqrt(var + BN_EPS) * weights["conv_bn/gamma"]
          + weights["conv_bn/beta"])
    f = np.maximum(bn, 0.0).reshape(-1, R, D)             # ReLU, [B, R, D]
    f_a = augment(f, 1.0)                                 # [B, R, D+1]
    att_h = np.tanh(np.tensordot(f_a, weights["w_att_1"], axes=[[2], [0]]))
    e = np.tensordot(augment(att_h, 1.0), weights["w_att_2"],
                     axes=[[2], [0]]).transpose(0, 2, 1)  # [B, M, R]
    alpha = softmax(e, axis=2)
    z = np.sum(f_a[:, None, :, :] * alpha[:, :, :, None], axis=2)
    v = weights["raw_vecs"] / np.linalg.norm(weights["raw_vecs"], axis=1,
                                             keepdims=True)
    theta = augment((weights["W"] @ v.T).T, 0.0)          # [C, D+1]
    head = np.tensordot(z, theta.T, axes=[[2], [0]])      # [B, M, C]
    f_global = f_a.mean(axis=1)                           # [B, D+1]
    return {"logits": head.max(axis=1), "head_logits": head,
            "attention_logits": e, "attention": alpha,
            "global_logits": f_global @ theta.T,
            "batch_mean": mean, "batch_var": var}


def reference_losses(labels, out, weights=(0.1, 0.001, 0.01)):
    """docs/lesa.md §3 on reference labels y in {+1, -1, 0}."""
    y = to_reference_labels(labels)
    logits = out["logits"]
    # _ranking_loss: only the columns labelled somewhere in the batch.
    cols = np.flatnonzero(np.abs(y).sum(axis=0) > 0)
    sub_y, sub_s = y[:, cols], logits[:, cols]
    pos, neg = np.clip(sub_y, 0, 1), np.clip(-sub_y, 0, 1)
    mask = pos[:, None, :] * neg[:, :, None]              # [B, n, p]
    o = 1.0 + (sub_s * neg)[:, :, None] - (sub_s * pos)[:, None, :]
    diff = np.maximum(mask * o, 0.0)
    violation = np.sign(diff).sum(axis=(1, 2))
    ranking = np.mean(diff.sum(axis=(1, 2)) / (violation + 1e-8))
    # _attention_distribution_soft_cardinality (no cardinality norm).
    p = softmax(out["head_logits"], axis=1) * np.clip(y, 0, 1)[:, None, :]
    distribution = np.mean(np.mean(np.square(p.sum(axis=2)), axis=1))
    # _attention_global_regularizer, margin 0: a SUM.
    glob = np.sum(np.maximum(-(logits - out["global_logits"]) * y, 0.0))
    # _attention_ortho_span_regularizer: Frobenius norm of the whole batch.
    e = out["attention_logits"]
    e_hat = e / np.sqrt(np.maximum(np.sum(e * e, axis=2, keepdims=True),
                                   1e-12))
    gram = np.einsum("bmr,bkr->bmk", e_hat, e_hat)
    gram[:, np.arange(M), np.arange(M)] = 0.0
    span = np.sqrt(np.sum(gram ** 2))
    w_dist, w_glob, w_span = weights
    total = ranking + w_dist * distribution + w_glob * glob + w_span * span
    return {"ranking": ranking, "distribution": distribution,
            "global": glob, "span": span, "total": total,
            "min_abs_hinge": np.min(np.abs(o[mask > 0]))}


# ---------------------------------------------------------------------------
# Model with every variable set from NumPy
# ---------------------------------------------------------------------------

def _numpy_weights(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "raw_vecs": rng.normal(size=(C, DW)) * 4.0,       # GloVe-like norms
        "conv/kernel": rng.normal(size=(2, 2, D, D)) * 0.35,
        "conv_bn/gamma": rng.uniform(0.5, 1.5, D),
        "conv_bn/beta": rng.normal(size=D) * 0.5,
        "conv_bn/moving_mean": rng.normal(size=D) * 0.5,
        "conv_bn/moving_variance": rng.uniform(0.5, 2.0, D),
        "w_att_1": rng.normal(size=(D + 1, D)) * 0.5,     # last row = bias
        "w_att_2": rng.normal(size=(D + 1, M)),           # last row = bias
        "W": rng.normal(size=(D, DW)) * 0.6,
    }


def _features(seed=1):
    # Post-ReLU backbone maps: non-negative, O(1).
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 1.5, size=(B, R, D)).astype(np.float32)


def _model(weights):
    model = LESA(weights["raw_vecs"].astype(np.float32), num_heads=M,
                 grid_size=GRID)
    model(np.zeros((1, R, D), np.float32))
    v = weights["raw_vecs"] / np.linalg.norm(weights["raw_vecs"], axis=1,
                                             keepdims=True)
    values = dict(weights, seen_embeddings=v)
    values.pop("raw_vecs")
    assigned = set()
    for var in model.variables:
        key = var.path.split("/", 1)[1]                   # drop "lesa/"
        assert key in values, f"no NumPy value for {var.path}"
        assert tuple(var.shape) == values[key].shape, var.path
        var.assign(values[key].astype(np.float32))
        assigned.add(key)
    assert assigned == set(values), set(values) - assigned
    return model


def test_variables_map_one_to_one_and_embeddings_normalised():
    weights = _numpy_weights()
    model = LESA(weights["raw_vecs"].astype(np.float32), num_heads=M,
                 grid_size=GRID)
    model(np.zeros((1, R, D), np.float32))
    # The constructor's own normalisation equals the reference's.
    v = weights["raw_vecs"] / np.linalg.norm(weights["raw_vecs"], axis=1,
                                             keepdims=True)
    np.testing.assert_allclose(model.seen_embeddings.numpy(), v, rtol=1e-6,
                               atol=1e-7)
    assert len(model.variables) == 9
    _model(weights)   # asserts the one-to-one mapping


@pytest.mark.parametrize("training", [False, True],
                         ids=["bn_inference", "bn_training"])
def test_forward_and_losses_match_numpy_reference(training):
    weights = _numpy_weights()
    model = _model(weights)
    x = _features()
    out = model(x, training=training)
    ref = reference_forward(x, weights, training)
    for key in ("logits", "head_logits", "attention_logits", "attention",
                "global_logits"):
        np.testing.assert_allclose(out[key].numpy(), ref[key], err_msg=key,
                                   **TOL)

    ref_loss = reference_losses(LABELS, ref)
    # No hinge sits within 1e-3 of 0, so float32 vs float64 cannot flip a
    # violation count (which would change the ranking loss discontinuously).
    assert ref_loss["min_abs_hinge"] > 1e-3
    # The case exercises the interesting branches.
    assert ref_loss["ranking"] > 0 and ref_loss["global"] > 0
    got = LESALoss()(LABELS, out)
    for key in ("ranking", "distribution", "global", "span", "total"):
        np.testing.assert_allclose(float(got[key]), ref_loss[key],
                                   err_msg=key, **TOL)


def test_training_mode_moving_statistics_update():
    # Keras: moving = 0.99 moving + 0.01 batch, with the biased batch
    # variance. (TF1's fused batch norm, used by the reference for 4-D NHWC
    # inputs, updates the moving variance with the Bessel-corrected
    # n/(n-1) variance, n = B*h*w = 48 here; a relative difference of
    # 0.01/(n-1) on the update, not modelled.)
    weights = _numpy_weights()
    model = _model(weights)
    x = _features()
    model(x, training=True)
    ref = reference_forward(x, weights, training=True)
    np.testing.assert_allclose(
        model.bn.moving_mean.numpy(),
        0.99 * weights["conv_bn/moving_mean"] + 0.01 * ref["batch_mean"],
        **TOL)
    np.testing.assert_allclose(
        model.bn.moving_variance.numpy(),
        0.99 * weights["conv_bn/moving_variance"] + 0.01 * ref["batch_var"],
        **TOL)


def test_inference_differs_from_training_statistics():
    # Guard: the moving statistics are far from the batch statistics, so the
    # two parity cases above test different things.
    weights = _numpy_weights()
    x = _features()
    ref_inf = reference_forward(x, weights, training=False)
    ref_train = reference_forward(x, weights, training=True)
    assert np.abs(ref_inf["logits"] - ref_train["logits"]).max() > 0.1
    assert np.abs(weights["conv_bn/moving_mean"]
                  - ref_train["batch_mean"]).max() > 0.1


def test_reference_label_converter():
    np.testing.assert_array_equal(to_reference_labels([1, 0, -1]),
                                  [1.0, -1.0, 0.0])
