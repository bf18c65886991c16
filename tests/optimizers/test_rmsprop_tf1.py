"""Tests for mll_tf.optimizers.TF1RMSprop (docs/lesa.md §4)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mll_tf.optimizers import TF1RMSprop
from tests.conftest import two_cpu_strategy

VAR0 = np.array([1.0, -2.0], np.float32)
GRADS = np.array([[0.5, -1.0],
                  [2.0, 0.25],
                  [-1.5, 3.0]], np.float32)


def np_tf1_rmsprop(var, grads, lrs, rho=0.9, momentum=0.9, eps=1.0,
                   ms0=1.0):
    """TF1 RMSPropOptimizer in float64, written from docs/lesa.md §4."""
    var = np.asarray(var, np.float64).copy()
    ms = np.full_like(var, ms0)
    mom = np.zeros_like(var)
    history = []
    for g, lr in zip(np.asarray(grads, np.float64), lrs):
        ms = rho * ms + (1 - rho) * g * g
        mom = momentum * mom + lr * g / np.sqrt(ms + eps)
        var = var - mom
        history.append(var.copy())
    return history


def _run(optimizer, grads, lrs):
    var = keras.Variable(VAR0)
    optimizer.build([var])
    out = []
    for g, lr in zip(grads, lrs):
        optimizer.learning_rate.assign(lr)
        optimizer.apply_gradients([(tf.constant(g), var)])
        out.append(var.numpy().copy())
    return out


def test_slots_start_at_ones_and_momentum_at_zero():
    opt = TF1RMSprop(learning_rate=0.1)
    var = keras.Variable(VAR0)
    opt.build([var])
    np.testing.assert_array_equal(opt._velocities[0].numpy(), [1.0, 1.0])
    np.testing.assert_array_equal(opt._momentums[0].numpy(), [0.0, 0.0])
    # Plain Keras starts its mean squares at zero.
    plain = keras.optimizers.RMSprop(0.1, rho=0.9, momentum=0.9, epsilon=1.0)
    plain.build([keras.Variable(VAR0)])
    np.testing.assert_array_equal(plain._velocities[0].numpy(), 0.0)


def test_defaults_are_the_reference_values():
    opt = TF1RMSprop()
    assert (opt.rho, opt.momentum, opt.epsilon, opt.centered) == \
        (0.9, 0.9, 1.0, False)
    np.testing.assert_allclose(float(opt.learning_rate), 1e-3, rtol=1e-7)


def test_first_step_by_hand():
    # g = (0.5, -1), lr = 0.1, ms0 = 1:
    #   ms  = 0.9 + 0.1 * g^2 = (0.925, 1.0)
    #   mom = 0.1 * g / sqrt(ms + 1) = (0.05 / sqrt(1.925), -0.1 / sqrt(2))
    #       = (0.0360375, -0.0707107)
    #   var = (1 - 0.0360375, -2 + 0.0707107) = (0.9639625, -1.9292893)
    got = _run(TF1RMSprop(0.1), GRADS[:1], [0.1])[0]
    np.testing.assert_allclose(got, [0.9639625, -1.9292893], rtol=1e-6)
    # Same when the optimizer is built lazily by apply_gradients.
    var = keras.Variable(VAR0)
    lazy = TF1RMSprop(0.1)
    lazy.apply_gradients([(tf.constant(GRADS[0]), var)])
    np.testing.assert_allclose(var.numpy(), [0.9639625, -1.9292893],
                               rtol=1e-6)
    np.testing.assert_allclose(lazy._velocities[0].numpy(), [0.925, 1.0],
                               rtol=1e-6)


def test_three_steps_with_learning_rate_change():
    # lr 0.1, 0.1, then 0.02: the momentum accumulated at lr 0.1 is NOT
    # rescaled; only the newest increment uses 0.02.
    lrs = [0.1, 0.1, 0.02]
    got = _run(TF1RMSprop(0.1), GRADS, lrs)
    want = np_tf1_rmsprop(VAR0, GRADS, lrs)
    for step, (g, w) in enumerate(zip(got, want)):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7,
                                   err_msg=f"step {step}")
    # Step 3 by hand from the reference recursion, element 0:
    #   ms1 = 0.925, ms2 = 0.9*0.925 + 0.1*4 = 1.2325,
    #   ms3 = 0.9*1.2325 + 0.1*2.25 = 1.33425
    #   mom1 = 0.05/sqrt(1.925) = 0.03603750
    #   mom2 = 0.9*mom1 + 0.2/sqrt(2.2325) = 0.03243375 + 0.13385490
    #        = 0.16628864
    #   mom3 = 0.9*mom2 + 0.02*(-1.5)/sqrt(2.33425)
    #        = 0.14965978 - 0.01963575 = 0.13002403
    #   var3 = 1 - mom1 - mom2 - mom3 = 0.66764983
    np.testing.assert_allclose(got[2][0], 0.66764983, rtol=1e-6)
    # Rescaling the momentum with the lr change (not TF1) would differ:
    # mom3' = 0.9 * mom2 * (0.02 / 0.1) + ... -> var3' = 0.78737765.
    assert abs(got[2][0] - 0.78737765) > 0.1


def test_first_step_contrast_with_plain_keras():
    # Same gradient, same hyper-parameters. Step sizes on step 1:
    #   TF1:   lr g / sqrt(0.9 + 0.1 g^2 + 1)
    #   Keras: lr g / sqrt(0.0 + 0.1 g^2 + 1)
    # ratio Keras/TF1 = sqrt((1.9 + 0.1 g^2) / (1 + 0.1 g^2)):
    #   g = 0.5  -> sqrt(1.925 / 1.025) = 1.3704192
    #   g = -1   -> sqrt(2.0 / 1.1)     = 1.3483997
    # and for g -> 0 it tends to sqrt(1.9) = 1.3784049 (< sqrt(2), the
    # bound for rho -> 1).
    lr = 0.1
    grads = np.array([[0.5, -1.0]], np.float32)
    tf1 = VAR0 - _run(TF1RMSprop(lr), grads, [lr])[0]
    plain = VAR0 - _run(keras.optimizers.RMSprop(
        lr, rho=0.9, momentum=0.9, epsilon=1.0), grads, [lr])[0]
    np.testing.assert_allclose(plain / tf1, [1.3704192, 1.3483997],
                               rtol=1e-5)
    np.testing.assert_allclose(
        plain, np.array(np_tf1_rmsprop(VAR0, grads, [lr], ms0=0.0)[0]
                        - VAR0) * -1, rtol=1e-6)
    tiny = np.array([[1e-3, -1e-3]], np.float32)
    tf1 = VAR0 - _run(TF1RMSprop(lr), tiny, [lr])[0]
    plain = VAR0 - _run(keras.optimizers.RMSprop(
        lr, rho=0.9, momentum=0.9, epsilon=1.0), tiny, [lr])[0]
    np.testing.assert_allclose(plain / tf1, np.sqrt(1.9), rtol=1e-3)
    assert np.all(plain / tf1 < np.sqrt(2.0))


def test_centered_and_no_momentum_variants():
    # momentum 0: var -= lr g / sqrt(ms + eps) with ms0 = 1.
    got = _run(TF1RMSprop(0.1, momentum=0.0), GRADS[:2], [0.1, 0.1])
    want = np_tf1_rmsprop(VAR0, GRADS[:2], [0.1, 0.1], momentum=0.0)
    np.testing.assert_allclose(got[-1], want[-1], rtol=1e-6)
    # centered, step 1: mg = 0.1 g; den = ms - mg^2 + eps with ms0 = 1:
    #   element 0: 0.925 - 0.0025 + 1 = 1.9225 -> step 0.05/sqrt(1.9225)
    #            = 0.03606092 -> var 0.96393908
    #   element 1: 1.0 - 0.01 + 1 = 1.99 -> step -0.1/sqrt(1.99)
    #            = -0.07088812 -> var -1.92911188
    got = _run(TF1RMSprop(0.1, centered=True), GRADS[:1], [0.1])[0]
    np.testing.assert_allclose(got, [0.96393908, -1.92911188], rtol=1e-6)


def test_config_and_serialization_round_trip():
    opt = TF1RMSprop(learning_rate=0.01, rho=0.8, momentum=0.5,
                     epsilon=0.5, centered=True, clipnorm=2.0, name="opt")
    config = opt.get_config()
    assert config["rho"] == 0.8 and config["momentum"] == 0.5
    assert config["epsilon"] == 0.5 and config["centered"] is True
    assert config["clipnorm"] == 2.0 and config["name"] == "opt"
    clone = TF1RMSprop.from_config(config)
    assert isinstance(clone, TF1RMSprop)
    assert clone.get_config() == config
    serialized = keras.optimizers.serialize(opt)
    assert serialized["registered_name"] == "mll_tf>TF1RMSprop"
    restored = keras.optimizers.deserialize(serialized)
    assert isinstance(restored, TF1RMSprop)
    assert restored.get_config() == config
    # A restored optimizer still initialises its slots to ones.
    restored.build([keras.Variable(VAR0)])
    np.testing.assert_array_equal(restored._velocities[0].numpy(), 1.0)


def test_checkpoint_restores_slots(tmp_path):
    var = keras.Variable(VAR0)
    opt = TF1RMSprop(0.1)
    opt.build([var])
    opt.apply_gradients([(tf.constant(GRADS[0]), var)])
    path = tf.train.Checkpoint(v=var, opt=opt).save(str(tmp_path / "ck"))
    var2 = keras.Variable(np.zeros(2, np.float32))
    opt2 = TF1RMSprop(0.1)
    opt2.build([var2])
    tf.train.Checkpoint(v=var2, opt=opt2).restore(path).assert_consumed()
    # ms after one step = 0.9 + 0.1 g^2 = (0.925, 1.0), not the fresh ones.
    np.testing.assert_allclose(opt2._velocities[0].numpy(), [0.925, 1.0],
                               rtol=1e-6)
    opt.apply_gradients([(tf.constant(GRADS[1]), var)])
    opt2.apply_gradients([(tf.constant(GRADS[1]), var2)])
    np.testing.assert_allclose(var2.numpy(), var.numpy(), rtol=1e-6)


def test_two_replicas_equal_one_replica():
    # loss = sum_i <x_i, v> * (v . v) / B over a batch of 4 rows split 2 + 2:
    # the per-replica gradients sum (Keras all-reduces them) to the
    # single-device gradient, so 3 steps must give the same variable and
    # slots.
    x = np.array([[0.5, -1.0], [2.0, 0.25], [-1.5, 3.0], [1.0, 1.0]],
                 np.float32)
    lrs = [0.1, 0.1, 0.02]

    def loss_fn(v, xb):
        return tf.reduce_sum(tf.linalg.matvec(xb, v)) * \
            tf.reduce_sum(v * v) / 4.0

    v1 = keras.Variable(VAR0)
    opt1 = TF1RMSprop(0.1)
    opt1.build([v1])
    for lr in lrs:
        opt1.learning_rate.assign(lr)
        with tf.GradientTape() as tape:
            loss = loss_fn(v1.value, x)
        opt1.apply_gradients([(tape.gradient(loss, v1.value), v1)])

    strategy = two_cpu_strategy()
    with strategy.scope():
        v2 = keras.Variable(VAR0)
        opt2 = TF1RMSprop(0.1)
        opt2.build([v2])
    for component in strategy.experimental_local_results(
            opt2._velocities[0].value):
        np.testing.assert_array_equal(component.numpy(), 1.0)

    @tf.function
    def step(xb):
        with tf.GradientTape() as tape:
            loss = loss_fn(v2.value, xb)
        grad = tape.gradient(loss, v2.value)
        opt2.apply_gradients([(grad, v2)])

    dataset = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices(x).batch(4))
    batch = next(iter(dataset))
    for lr in lrs:
        opt2.learning_rate.assign(lr)
        strategy.run(step, args=(batch,))
    for component in strategy.experimental_local_results(v2.value):
        np.testing.assert_allclose(component.numpy(), v1.numpy(), rtol=1e-6,
                                   atol=1e-7)
    for component in strategy.experimental_local_results(
            opt2._velocities[0].value):
        np.testing.assert_allclose(component.numpy(),
                                   opt1._velocities[0].numpy(), rtol=1e-6)
    # Sanity: the variable moved.
    assert np.abs(v1.numpy() - VAR0).min() > 1e-3


@pytest.mark.parametrize("bad", [{"clipnorm": 1.0, "global_clipnorm": 1.0}])
def test_invalid_base_arguments_raise(bad):
    with pytest.raises(ValueError):
        TF1RMSprop(**bad)
