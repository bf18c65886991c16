"""Throughput of the LESA model + full LESA loss (eager / tf.function / XLA).

Measures training-step and inference examples/s at batch 32 for two shapes:

* ``clipart``: R=49 (7x7 EfficientNet-Lite0 grid), D=1280, conv_channels=512,
  d_w=50 (GloVe-50), C=60 seen labels;
* ``nus``: the reference NUS-WIDE shape, R=196 (14x14 VGG19 conv5_4), D=512,
  d_w=300, C=925 seen labels (METHODS.md §1.2).

A training step is forward + :class:`mll_tf.losses.lesa_loss.LESALoss` +
gradients + ``keras.optimizers.RMSprop(rho=0.9, momentum=0.9, epsilon=1.0)``
(METHODS.md §1.4). Each mode is warmed up (tracing/compilation excluded), then
timed over ``--steps`` steps. Prints a table and the XLA / tf.function ratio.
No assertions.

Usage:
    python benchmarks/bench_lesa.py --steps 20 --shape both
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from mll_tf.losses.lesa_loss import LESALoss  # noqa: E402
from mll_tf.models.lesa import LESA  # noqa: E402

SHAPES = {
    "clipart": dict(regions=49, dim=1280, conv_channels=512, embedding_dim=50,
                    num_labels=60),
    "nus": dict(regions=196, dim=512, conv_channels=None, embedding_dim=300,
                num_labels=925),
}
BATCH = 32


def _make(shape, seed=0):
    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)
    model = LESA(rng.normal(size=(shape["num_labels"],
                                  shape["embedding_dim"])).astype("float32"),
                 num_heads=10, conv_channels=shape["conv_channels"])
    features = tf.constant(np.maximum(rng.normal(
        size=(BATCH, shape["regions"], shape["dim"])), 0).astype("float32"))
    labels = tf.constant(rng.choice(
        [1, 0, 0, 0, -1], size=(BATCH, shape["num_labels"])).astype("int8"))
    model(features[:1])
    optimizer = keras.optimizers.RMSprop(learning_rate=1e-3, rho=0.9,
                                         momentum=0.9, epsilon=1.0)
    optimizer.build(model.trainable_variables)
    return model, optimizer, features, labels


def _step_fns(model, optimizer, loss_fn, mode):
    def train_step(x, y):
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            losses = loss_fn(y, out)
        grads = tape.gradient(losses["total"], model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return losses["total"]

    def infer_step(x):
        return model(x, training=False)["logits"]

    if mode == "eager":
        return train_step, infer_step
    jit = mode == "xla"
    return (tf.function(train_step, jit_compile=jit),
            tf.function(infer_step, jit_compile=jit))


def _time(fn, args, steps, warmup):
    for _ in range(warmup):
        result = fn(*args)
    np.asarray(result)
    start = time.perf_counter()
    for _ in range(steps):
        result = fn(*args)
    np.asarray(result)  # wait for the last step
    return BATCH * steps / (time.perf_counter() - start)


def run(shape_name, steps, warmup):
    shape = SHAPES[shape_name]
    loss_fn = LESALoss()
    rows = {}
    for mode in ("eager", "tf.function", "xla"):
        model, optimizer, x, y = _make(shape)
        train_step, infer_step = _step_fns(model, optimizer, loss_fn, mode)
        try:
            train = _time(train_step, (x, y), steps, warmup)
            infer = _time(infer_step, (x,), steps, warmup)
        except Exception as err:  # report and continue with the next mode
            print(f"  {shape_name}/{mode}: failed: "
                  f"{type(err).__name__}: {str(err)[:200]}")
            train = infer = float("nan")
        rows[mode] = (train, infer)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10,
                        help="timed steps per mode (default 10)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed warm-up steps per mode (default 2)")
    parser.add_argument("--shape", choices=("clipart", "nus", "both"),
                        default="both")
    args = parser.parse_args(argv)
    names = ["clipart", "nus"] if args.shape == "both" else [args.shape]
    print(f"TF {tf.__version__}, Keras {keras.__version__}, batch {BATCH}, "
          f"{args.steps} timed steps after {args.warmup} warm-up steps, "
          f"CPU threads: intra={tf.config.threading.get_intra_op_parallelism_threads()}")
    header = (f"{'shape':8s} {'mode':12s} {'train ex/s':>11s} "
              f"{'infer ex/s':>11s}")
    results = {}
    for name in names:
        results[name] = run(name, args.steps, args.warmup)
    print()
    print(header)
    print("-" * len(header))
    for name, rows in results.items():
        for mode, (train, infer) in rows.items():
            print(f"{name:8s} {mode:12s} {train:11.1f} {infer:11.1f}")
    print()
    for name, rows in results.items():
        tf_train, tf_infer = rows["tf.function"]
        xla_train, xla_infer = rows["xla"]
        eager_train, eager_infer = rows["eager"]
        print(f"{name:8s} XLA / tf.function: train {xla_train / tf_train:5.2f}x"
              f", infer {xla_infer / tf_infer:5.2f}x;  tf.function / eager: "
              f"train {tf_train / eager_train:5.2f}x, "
              f"infer {tf_infer / eager_infer:5.2f}x")


if __name__ == "__main__":
    main()
