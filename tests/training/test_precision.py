"""--precision: Keras mixed-precision policies for LESA (float32 | bfloat16 | mixed_float16)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mll_tf.losses.lesa_loss import LESALoss
from mll_tf.tasks.lesa import TrainableLESA
from mll_tf.training import precision
from mll_tf.training.precision import check_precision
from tests.helpers import toy_task, write_toy_store

POLICY = {"float32": "float32", "bfloat16": "mixed_bfloat16", "mixed_float16": "mixed_float16"}


def _data(seed=0, n=64, regions=16, dim=8, labels=6):
    """Separable toy features: labels decide which class centres are added to the regions."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, labels)) < 0.35).astype(np.int8)
    y[y.sum(1) == 0, 0] = 1
    centres = rng.normal(size=(labels, dim))
    x = rng.normal(scale=0.5, size=(n, regions, dim)) + (y @ centres)[:, None, :]
    return np.maximum(x, 0).astype(np.float32), y, rng.normal(size=(labels, 5)).astype(np.float32)


@pytest.mark.parametrize("prec", ["float32", "bfloat16", "mixed_float16"])
def test_lesa_trains_and_stays_finite_per_precision(prec):
    x, y, vecs = _data()
    keras.utils.set_random_seed(0)
    model = TrainableLESA(label_embeddings=vecs, num_heads=2, conv_channels=8, dtype=POLICY[prec])
    model(x[:1])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=LESALoss())
    # Weights stay float32; the conv computes in the policy's type; BN, outputs, loss are float32.
    assert all(v.dtype == "float32" for v in model.weights)
    assert model.conv.compute_dtype == {"float32": "float32", "bfloat16": "bfloat16",
                                        "mixed_float16": "float16"}[prec]
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (prec == "mixed_float16")
    out = model(x[:4], training=True)
    assert {k: v.dtype for k, v in out.items()} == {k: tf.float32 for k in out}
    np.testing.assert_allclose(np.sum(out["attention"], -1), 1.0, atol=1e-5)   # softmax in float32
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16).repeat()
    hist = model.fit(ds, steps_per_epoch=4, epochs=8, verbose=0).history["loss"]
    assert np.all(np.isfinite(hist))
    assert hist[-1] < 0.8 * hist[0], hist
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())


def test_float32_policy_is_bit_identical_to_default():
    x, _, vecs = _data()
    outs = []
    for kwargs in ({}, {"dtype": "float32"}):
        keras.utils.set_random_seed(1)
        m = TrainableLESA(label_embeddings=vecs, num_heads=2, conv_channels=8, **kwargs)
        outs.append(m(x[:4], training=False))
    for k in outs[0]:
        np.testing.assert_array_equal(outs[0][k].numpy(), outs[1][k].numpy())


def test_bfloat16_close_to_float32_with_same_weights():
    x, _, vecs = _data()
    keras.utils.set_random_seed(2)
    m32 = TrainableLESA(label_embeddings=vecs, num_heads=2, conv_channels=8)
    m32(x[:1])
    m16 = TrainableLESA(label_embeddings=vecs, num_heads=2, conv_channels=8, dtype="mixed_bfloat16")
    m16(x[:1])
    m16.set_weights(m32.get_weights())
    a, b = m32(x), m16(x)
    scale = np.max(np.abs(a["logits"].numpy()))
    # bfloat16 keeps 8 significant bits: relative error of a few 1e-3 per product
    assert np.max(np.abs(a["logits"].numpy() - b["logits"].numpy())) < 0.05 * scale
    assert np.max(np.abs(a["logits"].numpy() - b["logits"].numpy())) > 0   # it did compute in bfloat16


def test_check_precision_refusals():
    class NoMixed:
        name = "logistic"

    class Mixed:
        name = "lesa"
        mixed_precision = True

    assert check_precision("float32", NoMixed()) == "float32"
    assert check_precision("bfloat16", Mixed(), has_gpu=False, has_bf16=True) == "mixed_bfloat16"
    assert check_precision("mixed_float16", Mixed(), has_gpu=True) == "mixed_float16"
    with pytest.raises(ValueError, match=r"^--precision mixed_float16 needs a GPU"):
        check_precision("mixed_float16", Mixed(), has_gpu=False)
    with pytest.raises(ValueError, match=r"^--precision bfloat16: this CPU has no AVX512-BF16"):
        check_precision("bfloat16", Mixed(), has_gpu=False, has_bf16=False)
    with pytest.raises(ValueError, match=r"--method logistic trains in float32 only"):
        check_precision("bfloat16", NoMixed(), has_gpu=False, has_bf16=True)


def test_cpu_flags_parsed(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("flags\t: fpu avx512f avx512_bf16 avx512_vnni\n")
    assert precision.cpu_has_bf16(str(f))
    f.write_text("flags\t: fpu avx2 avx512f\n")
    assert not precision.cpu_has_bf16(str(f))
    assert not precision.cpu_has_bf16(str(tmp_path / "missing"))


def test_cli_refuses_float16_on_cpu(tmp_path, capsys):
    from experiments import train

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    write_toy_store(tmp_path / "f")
    rc = train.main(["--method", "lesa", "--dataset", "toy", "--features-root", str(tmp_path / "f"),
                     "--input-size", "8", "--run-dir", str(tmp_path / "run"), "--precision", "mixed_float16"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("error: --precision mixed_float16 needs a GPU")
    assert not (tmp_path / "run").exists()   # refused before anything is written


def test_fit_task_bfloat16_run(tmp_path, monkeypatch):
    """A whole run under --precision bfloat16; the saved model keeps the policy and evaluates."""
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda *a: True)   # bf16 runs (slowly) on any CPU
    write_toy_store(tmp_path / "f")
    task = toy_task(tmp_path / "f", tmp_path, "lesa", precision="bfloat16", epochs=2)
    metrics = task.fit(verbose=0)
    assert keras.mixed_precision.global_policy().name == "float32"   # restored after the build
    assert np.isfinite(metrics["loss"]) and 0.0 <= metrics["val_seen_mAP"] <= 1.0
    model = keras.saving.load_model(str(tmp_path / "lesa" / "best.keras"), compile=False)
    assert model.dtype_policy.name == "mixed_bfloat16" and model.conv.compute_dtype == "bfloat16"


def test_bfloat16_inference_folds_batchnorm_into_the_conv():
    """Mixed-precision inference: conv + BN(moving statistics) as one conv with a bias, equal to float32 conv+BN."""
    x, _, vecs = _data(n=8)
    rng = np.random.default_rng(3)
    keras.utils.set_random_seed(3)
    m32 = TrainableLESA(label_embeddings=vecs, num_heads=2, conv_channels=8)
    m32(x[:1])
    m32.bn.moving_mean.assign(rng.normal(size=8).astype(np.float32))
    m32.bn.moving_variance.assign(rng.uniform(0.2, 3.0, size=8).astype(np.float32))
    m32.bn.gamma.assign(rng.uniform(0.5, 2.0, size=8).astype(np.float32))
    m32.bn.beta.assign(rng.normal(size=8).astype(np.float32))
    m16 = TrainableLESA(label_embeddings=vecs, num_heads=2, conv_channels=8, dtype="mixed_bfloat16")
    m16(x[:1])
    m16.set_weights(m32.get_weights())
    # float32 reference by hand: conv, then (z - mean) / sqrt(var + eps) * gamma + beta, ReLU
    z = m32.conv(x.reshape(-1, 4, 4, 8)).numpy()
    bn = m32.bn
    ref = np.maximum((z - bn.moving_mean.numpy()) / np.sqrt(bn.moving_variance.numpy() + 1e-3)
                     * bn.gamma.numpy() + bn.beta.numpy(), 0).reshape(-1, 16, 8)
    np.testing.assert_allclose(m32.conv_features(x).numpy(), ref, rtol=1e-5, atol=1e-5)   # float32: unfused
    got = tf.cast(m16.conv_features(x), tf.float32).numpy()
    assert m16.conv_features(x).dtype == tf.bfloat16
    np.testing.assert_allclose(got, ref, rtol=0.03, atol=0.03 * np.abs(ref).max())
    # training mode under bfloat16 still normalises with the batch statistics (the BN layer)
    train = tf.cast(m16.conv_features(x, training=True), tf.float32).numpy()
    assert np.max(np.abs(train - got)) > 0.1


def test_mixed_precision_conv_as_matmul_equals_same_conv():
    """The 2x2 SAME conv as one [B h w, 4 D] x [4 D, C'] product (used under mixed policies) = tf.nn.conv2d."""
    from mll_tf.models.lesa import LESA

    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 3, 4, 6)).astype(np.float32)            # a non-square 3 x 4 grid
    kernel = rng.normal(size=(2, 2, 6, 5)).astype(np.float32)
    model = LESA(rng.normal(size=(4, 3)), num_heads=2, conv_channels=5, grid_size=(3, 4))
    model(x.reshape(3, 12, 6))
    want = tf.nn.conv2d(x, kernel, strides=1, padding="SAME").numpy()
    got = model._conv_as_matmul(tf.constant(x), tf.constant(kernel)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # and the bfloat16 model's training path uses it: its conv features follow the float32 ones
    m16 = LESA(rng.normal(size=(4, 3)), num_heads=2, conv_channels=5, grid_size=(3, 4), dtype="mixed_bfloat16")
    m16(x.reshape(3, 12, 6))
    m16.set_weights(model.get_weights())
    a = model.conv_features(x.reshape(3, 12, 6), training=True).numpy()
    b = tf.cast(m16.conv_features(x.reshape(3, 12, 6), training=True), tf.float32).numpy()
    np.testing.assert_allclose(b, a, atol=0.05 * np.abs(a).max())
