"""One distributed LESA step on 2 CPU replicas equals the step on one."""

import numpy as np
import tensorflow as tf
import keras

from mll_tf.losses.lesa_loss import LESALoss
from mll_tf.models.lesa import LESA
from mll_tf.training.lesa_trainer import make_train_step
from tests.conftest import two_cpu_strategy


def _run(devices, features, labels, vecs, init_weights):
    strategy = two_cpu_strategy() if len(devices) == 2 else tf.distribute.MirroredStrategy(devices)
    with strategy.scope():
        model = LESA(label_embeddings=vecs, num_heads=2, conv_channels=6, grid_size=(2, 2))
        model(tf.zeros([1, 4, 6]))
        if init_weights is not None:
            model.set_weights(init_weights)
        w0 = [w.copy() for w in model.get_weights()]
        opt = keras.optimizers.RMSprop(1e-2, rho=0.9, momentum=0.9, epsilon=1.0)
        opt.build(model.trainable_variables)
    step = make_train_step(strategy, model, opt, LESALoss(), global_batch_size=len(features))
    ds = tf.data.Dataset.from_tensor_slices((features, labels)).batch(len(features))
    batch = next(iter(strategy.experimental_distribute_dataset(ds)))
    terms = {k: float(v) for k, v in step(batch).items()}
    terms2 = {k: float(v) for k, v in step(batch).items()}
    return w0, terms, terms2, model.get_weights()


def test_two_cpu_replicas_match_one():
    assert len(tf.config.list_logical_devices("CPU")) >= 2, "conftest splits the CPU into 2 devices"
    rng = np.random.default_rng(0)
    features = rng.random((8, 4, 6), dtype=np.float32)
    labels = rng.choice(np.array([1, 0, 0, -1], np.int8), size=(8, 5))
    vecs = rng.normal(size=(5, 3)).astype(np.float32)
    w0, one, one2, w_one = _run(["/cpu:0"], features, labels, vecs, None)
    _, two, two2, w_two = _run(["/cpu:0", "/cpu:1"], features, labels, vecs, w0)
    for k in ("ranking", "distribution", "global", "span", "total"):
        np.testing.assert_allclose(two[k], one[k], rtol=1e-5, err_msg=k)
        np.testing.assert_allclose(two2[k], one2[k], rtol=1e-4, err_msg=k)  # after one update
    for a, b in zip(w_one, w_two):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert one["total"] != one2["total"]  # the step did change the weights
