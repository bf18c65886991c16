"""Tests for mll_tf.models.lesa.LESA (docs/lesa.md §2)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mll_tf.losses.lesa_loss import LESALoss, attention_span_sum_of_squares
from mll_tf.models.lesa import LESA
from tests.conftest import two_cpu_strategy

B, H, W_, D, CP, M, C, DW = 2, 2, 3, 4, 6, 3, 5, 7   # R = H * W_ = 6


def _data(seed=0, b=B, r=H * W_, d=D):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(b, r, d)).astype(np.float32)


def _embeddings(seed=1, c=C, dw=DW):
    return np.random.default_rng(seed).normal(
        size=(c, dw)).astype(np.float32) * 3.0


def _model(grid_size=(H, W_), seed=2, **kwargs):
    keras.utils.set_random_seed(seed)
    kwargs.setdefault("num_heads", M)
    kwargs.setdefault("conv_channels", CP)
    model = LESA(_embeddings(), grid_size=grid_size, **kwargs)
    model(_data(b=1, r=grid_size[0] * grid_size[1]))
    # Non-trivial BN statistics/affine so that the reference below tests them.
    rng = np.random.default_rng(3)
    channels = model.bn.gamma.shape[0]
    model.bn.gamma.assign(rng.uniform(0.5, 1.5, channels))
    model.bn.beta.assign(rng.normal(size=channels))
    model.bn.moving_mean.assign(rng.normal(size=channels) * 0.1)
    model.bn.moving_variance.assign(rng.uniform(0.5, 2.0, channels))
    return model


def _softmax(x, axis):
    ex = np.exp(x - x.max(axis=axis, keepdims=True))
    return ex / ex.sum(axis=axis, keepdims=True)


def np_lesa(model, features, label_embeddings=None):
    """Independent NumPy forward pass in the reference's augmented form."""
    h, w = model._grid
    kernel = model.conv.kernel.numpy()                   # [2, 2, D, C']
    b, r, d = features.shape
    x = features.reshape(b, h, w, d)
    # SAME padding of a 2x2 kernel: 0 rows/cols before, 1 after.
    xp = np.zeros((b, h + 1, w + 1, d), np.float64)
    xp[:, :h, :w] = x
    conv = np.zeros((b, h, w, kernel.shape[-1]))
    for i in range(h):
        for j in range(w):
            for a in range(2):
                for c in range(2):
                    conv[:, i, j] += xp[:, i + a, j + c] @ kernel[a, c]
    bn = model.bn
    conv = ((conv - bn.moving_mean.numpy())
            / np.sqrt(bn.moving_variance.numpy() + 1e-3)
            * bn.gamma.numpy() + bn.beta.numpy())
    f = np.maximum(conv, 0).reshape(b, h * w, -1)        # r = w_count*h + w
    ones = np.ones(f.shape[:2] + (1,))
    f_a = np.concatenate([f, ones], -1)                  # [B, R, C'+1]
    hid = np.tanh(f_a @ model.w_att_1.numpy())           # [B, R, C']
    e = np.concatenate([hid, ones], -1) @ model.w_att_2.numpy()
    e = e.transpose(0, 2, 1)                             # [B, M, R]
    alpha = _softmax(e, axis=-1)
    z = alpha @ f_a                                      # [B, M, C'+1]
    if label_embeddings is None:
        label_embeddings = model.label_embeddings
    v = label_embeddings / np.linalg.norm(label_embeddings, axis=1,
                                          keepdims=True)
    wv = v @ model.W.numpy().T                           # [C, C']
    theta = np.concatenate([wv, np.zeros((len(wv), 1))], -1)
    head = z @ theta.T                                   # [B, M, C]
    glob = f_a.mean(axis=1) @ theta.T
    return {"logits": head.max(axis=1), "head_logits": head,
            "attention_logits": e, "attention": alpha, "global_logits": glob,
            "z": z, "theta": theta}


def test_output_shapes_and_attention_rows():
    model = _model()
    out = model(_data())
    assert set(out) == {"logits", "head_logits", "attention_logits",
                        "attention", "global_logits"}
    assert out["logits"].shape == (B, C)
    assert out["head_logits"].shape == (B, M, C)
    assert out["attention_logits"].shape == (B, M, H * W_)
    assert out["attention"].shape == (B, M, H * W_)
    assert out["global_logits"].shape == (B, C)
    for value in out.values():
        assert value.dtype == tf.float32
    np.testing.assert_allclose(out["attention"].numpy().sum(-1), 1.0,
                               rtol=1e-6)


def test_weight_shapes_match_reference():
    model = _model()
    assert tuple(model.conv.kernel.shape) == (2, 2, D, CP)
    assert tuple(model.w_att_1.shape) == (CP + 1, CP)
    assert tuple(model.w_att_2.shape) == (CP + 1, M)
    assert tuple(model.W.shape) == (CP, DW)
    assert tuple(model.seen_embeddings.shape) == (C, DW)
    assert not model.seen_embeddings.trainable
    assert all(v is not model.seen_embeddings
               for v in model.trainable_variables)
    assert any(v is model.seen_embeddings
               for v in model.non_trainable_variables)
    # conv_channels defaults to D.
    default = LESA(_embeddings(), num_heads=2)
    default(_data(b=1, r=4))
    assert tuple(default.w_att_1.shape) == (D + 1, D)
    # The folded bias rows are random (HeNormal), not zero.
    assert np.all(model.w_att_1.numpy()[CP] != 0)
    assert np.all(model.w_att_2.numpy()[CP] != 0)


def test_seen_embeddings_are_l2_normalised():
    model = _model()
    emb = _embeddings()
    np.testing.assert_allclose(
        model.seen_embeddings.numpy(),
        emb / np.linalg.norm(emb, axis=1, keepdims=True), rtol=1e-6)


@pytest.mark.parametrize("grid", [(2, 3), (3, 2), (2, 2)])
def test_forward_matches_numpy_reference(grid):
    model = _model(grid_size=grid)
    x = _data(b=3, r=grid[0] * grid[1], seed=5)
    out = model(x, training=False)
    ref = np_lesa(model, x)
    for key in ("logits", "head_logits", "attention_logits", "attention",
                "global_logits"):
        np.testing.assert_allclose(out[key].numpy(), ref[key], rtol=1e-4,
                                   atol=1e-5, err_msg=key)


def test_trailing_zero_cancels_constant_channel():
    model = _model()
    x = _data(seed=6)
    ref = np_lesa(model, x)
    theta = model.classifiers().numpy()
    # theta = [W v_hat ; 0]: last column exactly zero.
    np.testing.assert_array_equal(theta[:, -1], 0.0)
    np.testing.assert_allclose(theta, ref["theta"], rtol=1e-5, atol=1e-6)
    # The constant channel of z_m is sum_r alpha = 1 ...
    np.testing.assert_allclose(ref["z"][..., -1], 1.0, rtol=1e-6)
    # ... and the model's scores equal z_a . theta: replacing that channel by
    # any value leaves the scores unchanged because theta's last entry is 0.
    out = model(x)
    z_other = ref["z"].copy()
    z_other[..., -1] = 123.0
    np.testing.assert_allclose(out["head_logits"].numpy(), z_other @ theta.T,
                               rtol=1e-4, atol=1e-5)
    # With a non-zero trailing entry the scores would shift by that entry.
    theta_bad = theta.copy()
    theta_bad[:, -1] = 1.0
    assert np.abs(ref["z"] @ theta_bad.T - out["head_logits"].numpy()).min() \
        > 0.5


def test_zero_shot_swap():
    model = _model()
    x = _data(seed=7)
    seen = _embeddings()
    unseen = np.random.default_rng(9).normal(size=(4, DW)).astype(np.float32)
    default = model(x)
    # Passing the (raw, unnormalised) seen vectors equals the default call.
    explicit = model(x, label_embeddings=tf.constant(seen * 5.0))
    for key in default:
        np.testing.assert_allclose(explicit[key].numpy(),
                                   default[key].numpy(), rtol=1e-5,
                                   atol=1e-6, err_msg=key)
    zsl = model(x, label_embeddings=tf.constant(unseen))
    assert zsl["logits"].shape == (B, 4)
    assert zsl["head_logits"].shape == (B, M, 4)
    np.testing.assert_allclose(zsl["logits"].numpy(),
                               np_lesa(model, x, unseen)["logits"],
                               rtol=1e-4, atol=1e-5)
    # GZSL: concat([unseen, seen]), unseen first.
    gzsl = model(x, label_embeddings=tf.concat([unseen, seen], axis=0))
    assert gzsl["logits"].shape == (B, 4 + C)
    for key in ("logits", "global_logits"):
        np.testing.assert_allclose(gzsl[key].numpy()[:, :4],
                                   zsl[key].numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(gzsl[key].numpy()[:, 4:],
                                   default[key].numpy(), rtol=1e-5,
                                   atol=1e-6)
    # Attention does not depend on the label vectors.
    np.testing.assert_allclose(gzsl["attention"].numpy(),
                               default["attention"].numpy())


def test_training_mode_updates_bn_statistics():
    model = _model()
    before = model.bn.moving_mean.numpy().copy()
    x = _data(seed=8) + 3.0
    eval_out = model(x, training=False)
    np.testing.assert_array_equal(model.bn.moving_mean.numpy(), before)
    train_out = model(x, training=True)
    assert np.abs(model.bn.moving_mean.numpy() - before).max() > 1e-4
    assert np.abs(train_out["logits"].numpy()
                  - eval_out["logits"].numpy()).max() > 1e-4


def test_get_config_round_trip():
    model = _model()
    config = model.get_config()
    assert config["num_labels"] == C
    assert config["embedding_dim"] == DW
    assert config["num_heads"] == M
    assert config["conv_channels"] == CP
    assert list(config["grid_size"]) == [H, W_]
    assert "label_embeddings" not in config
    clone = LESA.from_config(config)
    assert clone.label_embeddings is None
    assert clone.get_config() == config
    x = _data(seed=10)
    clone(x)
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(clone(x)["logits"].numpy(),
                               model(x)["logits"].numpy(), rtol=1e-6)


def test_save_load_round_trip(tmp_path):
    model = _model()
    x = _data(seed=11)
    expected = model(x)
    path = str(tmp_path / "lesa.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, LESA)
    np.testing.assert_array_equal(loaded.seen_embeddings.numpy(),
                                  model.seen_embeddings.numpy())
    np.testing.assert_array_equal(loaded.bn.moving_variance.numpy(),
                                  model.bn.moving_variance.numpy())
    got = loaded(x)
    for key in expected:
        np.testing.assert_array_equal(got[key].numpy(),
                                      expected[key].numpy(), err_msg=key)


def test_constructor_errors():
    with pytest.raises(ValueError, match="num_labels"):
        LESA()
    with pytest.raises(ValueError, match="num_labels"):
        LESA(_embeddings(), num_labels=C + 1)
    with pytest.raises(ValueError, match="embedding_dim"):
        LESA(_embeddings(), embedding_dim=DW + 1)
    with pytest.raises(ValueError, match="2-D"):
        LESA(np.zeros(5))
    model = LESA(_embeddings(), num_heads=2)
    with pytest.raises(ValueError, match="perfect square"):
        model(_data(b=1, r=6))
    model = LESA(_embeddings(), num_heads=2, grid_size=(2, 2))
    with pytest.raises(ValueError, match="grid_size"):
        model(_data(b=1, r=6))


def test_from_sizes_only():
    model = LESA(num_labels=C, embedding_dim=DW, num_heads=2)
    out = model(_data(b=1, r=4))
    assert out["logits"].shape == (1, C)
    np.testing.assert_array_equal(model.seen_embeddings.numpy(), 0.0)


def test_two_replica_step_equals_one_replica_step():
    """Sync BN + additive losses + the span split: 2 replicas == 1 device."""
    x = _data(b=4, r=4, seed=12)
    labels = np.array([[1, 0, -1, 0, 1], [0, 1, 1, -1, 0],
                       [1, 1, 0, 0, 0], [-1, 0, 1, 0, 1]], np.int8)
    loss_fn = LESALoss()

    def make():
        keras.utils.set_random_seed(4)
        model = LESA(_embeddings(), num_heads=M, conv_channels=CP)
        model(x[:1])
        return model

    single = make()
    with tf.GradientTape() as tape:
        full = loss_fn(labels, single(x, training=True))["total"]
    single_grads = tape.gradient(full, single.trainable_variables)

    strategy = two_cpu_strategy()
    with strategy.scope():
        model = make()

    @tf.function
    def step(xb, yb):
        ctx = tf.distribute.get_replica_context()
        with tf.GradientTape() as tape:
            out = model(xb, training=True)
            s_tot = ctx.all_reduce(
                "sum", attention_span_sum_of_squares(
                    tf.stop_gradient(out["attention_logits"])))
            loss = loss_fn(yb, out, global_batch_size=4,
                           span_sum_of_squares=s_tot)["total"]
        grads = tape.gradient(loss, model.trainable_variables)
        return loss, ctx.all_reduce("sum", grads)

    dataset = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((x, labels)).batch(4))
    losses, grads = strategy.run(step, args=next(iter(dataset)))
    total = float(strategy.reduce("sum", losses, axis=None))
    np.testing.assert_allclose(total, float(full), rtol=1e-5)
    for var, want, got in zip(model.trainable_variables, single_grads, grads):
        got = strategy.experimental_local_results(got)[0].numpy()
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-6,
                                   err_msg=var.path)
    np.testing.assert_allclose(
        strategy.experimental_local_results(model.bn.moving_mean)[0].numpy(),
        single.bn.moving_mean.numpy(), rtol=1e-5, atol=1e-7)


def test_xla_forward_and_loss_match_eager():
    model = _model()
    x = _data(b=3, seed=13)
    labels = np.array([[1, 0, -1, 0, 1], [0, 1, 1, -1, 0],
                       [1, 1, 0, 0, 0]], np.int8)
    loss_fn = LESALoss()

    def forward(features, y):
        out = model(features, training=False)
        return out, loss_fn(y, out)

    eager_out, eager_loss = forward(x, labels)
    xla_out, xla_loss = tf.function(forward, jit_compile=True)(x, labels)
    for key in eager_out:
        np.testing.assert_allclose(xla_out[key].numpy(),
                                   eager_out[key].numpy(), rtol=1e-4,
                                   atol=1e-5, err_msg=key)
    for key in eager_loss:
        np.testing.assert_allclose(float(xla_loss[key]),
                                   float(eager_loss[key]), rtol=1e-4,
                                   atol=1e-6, err_msg=key)
