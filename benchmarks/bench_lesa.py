"""Throughput of the LESA model + full LESA loss (eager / tf.function / XLA).

Measures training-step examples/s at batch 32 and inference examples/s at
batch 32 and 256 for two shapes:

* ``clipart``: R=49 (7x7 EfficientNet-Lite0 grid), D=1280, conv_channels=512,
  d_w=50 (GloVe-50), C=60 seen labels;
* ``nus``: the reference NUS-WIDE shape, R=196 (14x14 VGG19 conv5_4), D=512,
  d_w=300, C=925 seen labels, 10 heads (docs/lesa.md §2).

A training step is forward + :class:`mll_tf.losses.lesa_loss.LESALoss` +
gradients + ``keras.optimizers.RMSprop(rho=0.9, momentum=0.9, epsilon=1.0)``
(docs/lesa.md §4). Each mode is warmed up (tracing/compilation excluded), then
timed in ``--repeats`` blocks of ``--steps`` steps; the modes' blocks are
interleaved (eager, tf.function, XLA, eager, ...) so that a load change on a
shared machine hits all modes alike, and the best block of each mode is
reported. Prints a table, the XLA / tf.function ratios and, for ``nus``, the
goal "XLA train step >= 1.5x tf.function" as met / not met.

Extra train-step variants (``--variants``, default on; benchmark-side only,
the library is unchanged):

* ``xla-lossgrad``: XLA on forward + loss + gradients only, the optimizer
  update in the surrounding plain tf.function;
* ``xla-dense``: XLA with the ranking loss's dense [B, C, C] path instead of
  the sorted one (``ranking_loss(method="dense")``);
* ``trainer`` / ``trainer-xla``: the library's
  ``TrainableLESA.train_step`` (the step ``keras.Model.fit`` runs; one-replica
  MirroredStrategy, as ``experiments/train.py`` runs), without / with
  ``jit_compile``.

Further modes (``--modes``, default: all), timed in the same interleaved blocks:

* ``tf1-graph``: the original TF1 LESA graph rebuilt with ``tf.compat.v1``
  (``_tf1_graph``: same ops, losses and TF1 RMSProp, its own Graph/Session),
  the baseline of the "vs the TF1 graph" ratios printed at the end (training
  batch 32 and inference batch 256);
* ``bf16``: ``tf.function`` with the model under Keras' ``mixed_bfloat16``
  policy (``--precision bfloat16``: 16-bit products, float32 weights, BN
  statistics, softmax, outputs and loss; BN folded into the conv at inference).

``--profile`` times op groups (forward pieces, loss, gradients, optimizer) in
tf.function and XLA for the ``nus`` shape, to show what dominates the step.
No assertions.

Usage:
    python benchmarks/bench_lesa.py
    python benchmarks/bench_lesa.py --steps 20 --shape nus --profile
    python benchmarks/bench_lesa.py --shape nus --modes tf1-graph,tf.function,bf16 --no-variants
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

from mll_tf.losses import lesa_loss  # noqa: E402
from mll_tf.losses.lesa_loss import LESALoss  # noqa: E402
from mll_tf.models.lesa import LESA  # noqa: E402

SHAPES = {
    "clipart": dict(regions=49, dim=1280, conv_channels=512, embedding_dim=50,
                    num_labels=60),
    "nus": dict(regions=196, dim=512, conv_channels=None, embedding_dim=300,
                num_labels=925),
}
BATCH = 32
INFER_BATCH = 256
MODES = ("eager", "tf.function", "xla")
#: The original TF1 graph (rebuilt with tf.compat.v1, see ``_tf1_graph``) and the
#: reduced-precision / faster paths, timed in the same interleaved blocks.
EXTRA_MODES = ("tf1-graph", "bf16")
VARIANTS = ("xla-lossgrad", "xla-dense", "trainer", "trainer-xla")
GOAL = 1.5  # XLA / tf.function, NUS-WIDE train step


class _DenseRankingLESALoss(LESALoss):
    """LESALoss with ``ranking_loss(method="dense")`` (benchmark-side)."""

    def __call__(self, labels, outputs, global_batch_size=None,
                 span_sum_of_squares=None, num_replicas=None):
        logits = outputs["logits"]
        rank_i = lesa_loss.ranking_loss(labels, logits, margin=self.margin,
                                        method="dense")
        dist_i = lesa_loss.attention_distribution_loss(
            labels, outputs["head_logits"])
        glob_i = lesa_loss.global_relevance_loss(labels, logits,
                                                 outputs["global_logits"])
        n = tf.cast(tf.shape(rank_i)[0], tf.float32)
        ranking = tf.reduce_sum(rank_i) / n
        distribution = tf.reduce_sum(dist_i) / n
        global_ = tf.reduce_sum(glob_i)
        span = self.span_term(outputs["attention_logits"])
        return {"total": self.weighted_total(ranking, distribution, global_,
                                             span)}


def _tf1_graph(shape, features, labels, seed=0):
    """The original LESA TF1 graph, rebuilt with ``tf.compat.v1`` in its own ``tf.Graph`` / ``Session``.

    Same ops as ``AttentionClassifier.build_model_rank(is_conv=True)`` of
    hbdat/cvpr20_LESA ``core/model_share_attention.py`` with the NUS-WIDE
    zero-shot script's settings (T=10, lamb_att_dist=0.1, lamb_att_global=0.001,
    lamb_att_span=0.01, constant word vectors, no L2 regulariser):
    ``slim.conv2d`` 2x2 SAME without bias + ``tf.layers.batch_normalization``
    (fused, moving statistics in UPDATE_OPS) + ReLU; ``_augment_1``;
    ``_attention_layer_MLP`` (tensordot, tanh, softmax over regions, the
    broadcast product [B, T, R, D+1] summed over R); ``_predict_frac``;
    ``_ranking_loss`` (label subset gather, dense [B, C, C] pairs),
    ``_attention_distribution_soft_cardinality``,
    ``_attention_ortho_span_regularizer``, ``_attention_global_regularizer``;
    ``tf.train.RMSPropOptimizer(decay=0.9, momentum=0.9, epsilon=1.0)`` applied
    after the UPDATE_OPS. The contrib/slim layers no longer exist, so the conv
    and the fused batch norm are written with the ops they call. Labels use the
    reference's +1 / -1 / 0 (unknown) convention.

    The inputs are held in graph variables (no ``feed_dict`` copy per step; the
    reference fed NumPy batches, which costs it a little more), so the baseline
    is, if anything, favoured.

    Returns:
        (train() -> loss float, infer() -> logits [B_infer, C], session).
    """
    v1 = tf.compat.v1
    graph = tf.Graph()
    regions, dim = shape["regions"], shape["dim"]
    k = shape["conv_channels"] or dim
    side = int(round(regions ** 0.5))
    heads, c = 10, shape["num_labels"]
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(c, shape["embedding_dim"])).astype("float32")
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)   # sklearn normalize(vecs)
    ref_labels = np.where(labels == 1, 1.0, np.where(labels == 0, -1.0, 0.0)).astype("float32")
    with graph.as_default():
        v1.set_random_seed(seed)
        x_train = v1.get_variable("x_train", initializer=features[:BATCH], trainable=False)
        x_infer = v1.get_variable("x_infer", initializer=features, trainable=False)
        y_var = v1.get_variable("y", initializer=ref_labels, trainable=False)
        is_train = v1.placeholder_with_default(True, [])
        # training reads the batch of 32, inference the batch of 256
        feats = tf.cond(is_train, x_train.read_value, x_infer.read_value)
        visual_labels = y_var.read_value()
        init = v1.variance_scaling_initializer()

        def augment(t, value, rank):
            sh = tf.shape(t)
            extra = [sh[i] for i in range(rank - 1)] + [1]
            return tf.concat([t, tf.fill(extra, value)], axis=rank - 1)

        # _conv: slim.conv2d(512, [2, 2], SAME, normalizer_fn=tf.layers.batch_normalization)
        x = tf.reshape(feats, [-1, side, side, dim])
        kernel = v1.get_variable("conv/weights", [2, 2, dim, k],
                                 initializer=v1.glorot_uniform_initializer())
        x = tf.nn.conv2d(x, kernel, strides=1, padding="SAME")
        gamma = v1.get_variable("conv/bn/gamma", [k], initializer=v1.ones_initializer())
        beta = v1.get_variable("conv/bn/beta", [k], initializer=v1.zeros_initializer())
        mmean = v1.get_variable("conv/bn/moving_mean", [k], initializer=v1.zeros_initializer(),
                                trainable=False)
        mvar = v1.get_variable("conv/bn/moving_variance", [k], initializer=v1.ones_initializer(),
                               trainable=False)

        def bn_train():
            return v1.nn.fused_batch_norm(x, gamma, beta, epsilon=1e-3, is_training=True)

        def bn_infer():
            return v1.nn.fused_batch_norm(x, gamma, beta, mean=mmean, variance=mvar, epsilon=1e-3,
                                          is_training=False)

        x, bmean, bvar = tf.cond(is_train, bn_train, bn_infer)
        for var, val in ((mmean, bmean), (mvar, bvar)):
            v1.add_to_collection(v1.GraphKeys.UPDATE_OPS, v1.assign_sub(var, (var - val) * 0.01))
        conv = tf.reshape(tf.nn.relu(x), [-1, regions, k])
        features_a = augment(conv, 1.0, 3)
        # _attention_layer_MLP
        w_att_1 = v1.get_variable("w_att_1", [k + 1, k], initializer=init)
        w_att_2 = v1.get_variable("w_att_2", [k + 1, heads], initializer=init)
        att_h = tf.nn.tanh(tf.tensordot(features_a, w_att_1, axes=[[2], [0]]))
        out_att_log = tf.transpose(tf.tensordot(augment(att_h, 1.0, 3), w_att_2, axes=[[2], [0]]),
                                   perm=[0, 2, 1])
        out_att = tf.nn.softmax(out_att_log, axis=2)
        f_att = tf.reduce_sum(features_a[:, tf.newaxis, :, :] * out_att[:, :, :, tf.newaxis], axis=2)
        f_global = tf.reduce_mean(features_a, axis=1)
        # _predict_frac
        w = v1.get_variable("W", [k, shape["embedding_dim"]], initializer=init)
        classifiers = augment(tf.transpose(tf.matmul(w, tf.transpose(tf.constant(vecs)))), 0.0, 2)
        att_logits = tf.tensordot(f_att, tf.transpose(classifiers), axes=[[2], [0]])
        logits = tf.reduce_max(att_logits, axis=1)
        # _ranking_loss
        subset = tf.reshape(tf.where(tf.reduce_sum(tf.abs(visual_labels), axis=0) > 0), [-1])
        sub_labels = tf.gather(visual_labels, subset, axis=1)
        sub_logits = tf.gather(logits, subset, axis=1)
        pos = tf.clip_by_value(sub_labels, 0.0, 1.0)
        neg = tf.clip_by_value(-sub_labels, 0.0, 1.0)
        mask = pos[:, tf.newaxis, :] * neg[:, :, tf.newaxis]
        o = 1 + (sub_logits * neg)[:, :, tf.newaxis] - (sub_logits * pos)[:, tf.newaxis, :]
        diff = tf.maximum(mask * o, 0)
        violation = tf.reduce_sum(tf.sign(diff), axis=[1, 2])
        loss_rank = tf.reduce_mean(tf.reduce_sum(diff, axis=[1, 2]) / (violation + 1e-8))
        # _attention_distribution_soft_cardinality
        p = tf.reduce_sum(tf.nn.softmax(att_logits, axis=1)
                          * tf.clip_by_value(visual_labels, 0, 1)[:, tf.newaxis, :], axis=2)
        loss_dist = tf.reduce_mean(tf.reduce_mean(tf.square(p), axis=1))
        # _attention_ortho_span_regularizer
        norm = tf.nn.l2_normalize(out_att_log, 2)
        reg = tf.reduce_sum(norm[:, tf.newaxis, :, :] * norm[:, :, tf.newaxis, :], axis=3)
        loss_span = tf.norm(tf.linalg.set_diag(reg, tf.zeros(tf.shape(reg)[:-1])))
        # _attention_global_regularizer
        logits_global = tf.matmul(f_global, tf.transpose(classifiers))
        loss_global = tf.reduce_sum(tf.maximum(-(logits - logits_global) * visual_labels, 0))
        loss = loss_rank + 0.1 * loss_dist + 0.001 * loss_global + 0.01 * loss_span
        optimizer = v1.train.RMSPropOptimizer(1e-3, decay=0.9, momentum=0.9, epsilon=1.0)
        grads = optimizer.compute_gradients(loss)
        with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
            train_op = optimizer.apply_gradients(grads)
        init_op = v1.global_variables_initializer()
    sess = v1.Session(graph=graph)
    sess.run(init_op)

    def train():
        return sess.run([train_op, loss])[1]

    def infer():
        return sess.run(logits, {is_train: False})

    return train, infer, sess


def _make(shape, seed=0, strategy=None, dtype=None):
    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)
    scope = strategy.scope() if strategy is not None else _nullcontext()
    with scope:
        model = LESA(rng.normal(size=(shape["num_labels"],
                                      shape["embedding_dim"])).astype("float32"),
                     num_heads=10, conv_channels=shape["conv_channels"], dtype=dtype)
        features = np.maximum(rng.normal(
            size=(INFER_BATCH, shape["regions"], shape["dim"])), 0).astype("float32")
        model(features[:1])
        optimizer = keras.optimizers.RMSprop(learning_rate=1e-3, rho=0.9,
                                             momentum=0.9, epsilon=1.0)
        optimizer.build(model.trainable_variables)
    labels = rng.choice([1, 0, 0, 0, -1], size=(BATCH, shape["num_labels"])).astype("int8")
    return (model, optimizer, tf.constant(features[:BATCH]), tf.constant(labels),
            tf.constant(features))


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _step_fns(model, optimizer, loss_fn, mode):
    """(train_step(x, y), infer_step(x)) for a mode or variant."""
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
    if mode == "xla-lossgrad":
        @tf.function(jit_compile=True)
        def loss_and_grads(x, y):
            with tf.GradientTape() as tape:
                out = model(x, training=True)
                losses = loss_fn(y, out)
            return losses["total"], tape.gradient(losses["total"],
                                                  model.trainable_variables)

        @tf.function
        def split_step(x, y):
            total, grads = loss_and_grads(x, y)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return total

        return split_step, None
    jit = mode in ("xla", "xla-dense")
    return (tf.function(train_step, jit_compile=jit),
            tf.function(infer_step, jit_compile=jit))


def _trainer_step(shape, jit):
    """The library's train step (``TrainableLESA.train_step``, what ``fit`` runs) on one replica."""
    from mll_tf.tasks.lesa import TrainableLESA
    from mll_tf.training.distribute import distributed_train_step

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    plain, _, x, y, _ = _make(shape, strategy=strategy)
    with strategy.scope():
        model = TrainableLESA.from_config(plain.get_config())
        model(x[:1])
        model.set_weights(plain.get_weights())
        model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=1e-3, rho=0.9, momentum=0.9,
                                                         epsilon=1.0), loss=LESALoss())
        model.optimizer.build(model.trainable_variables)
    step = distributed_train_step(strategy, model, jit_compile=jit)
    batch = next(iter(strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensors((x, y)))))
    return lambda: step(batch)["loss"]


def _block(fn, steps):
    """Seconds for ``steps`` calls (waits for the last result)."""
    start = time.perf_counter()
    for _ in range(steps):
        result = fn()
    np.asarray(result)
    return time.perf_counter() - start


def _interleaved(cases, steps, warmup, repeats, label):
    """Best block time per case; blocks run round-robin over the cases.

    ``cases``: dict name -> (callable, examples per call). Returns dict name ->
    examples/s (NaN if the case fails).
    """
    rates, ok = {}, {}
    for name, (fn, _) in cases.items():
        try:
            _block(fn, warmup)
            ok[name] = fn
        except Exception as err:  # report and continue with the other cases
            print(f"  {label}/{name}: failed: {type(err).__name__}: {str(err)[:300]}")
            rates[name] = float("nan")
    best = {name: float("inf") for name in ok}
    for _ in range(repeats):
        for name, fn in ok.items():
            best[name] = min(best[name], _block(fn, steps))
    for name in ok:
        rates[name] = cases[name][1] * steps / best[name]
    return {name: rates[name] for name in cases}


def run(shape_name, steps, warmup, repeats, variants, modes=MODES + EXTRA_MODES):
    """{"train": {mode: ex/s}, "infer32": {...}, "infer256": {...}}."""
    shape = SHAPES[shape_name]
    train, infer32, infer256 = {}, {}, {}
    for mode in tuple(modes) + (VARIANTS if variants else ()):
        if mode.startswith("trainer"):
            train[mode] = (_trainer_step(shape, mode == "trainer-xla"), BATCH)
            continue
        if mode == "tf1-graph":
            _, _, _, y, x256 = _make(shape)
            tf1_train, tf1_infer, _ = _tf1_graph(shape, x256.numpy(), y.numpy())
            train[mode] = (tf1_train, BATCH)
            infer256[mode] = (tf1_infer, INFER_BATCH)
            continue
        if mode == "bf16":   # tf.function, Keras mixed_bfloat16 policy (--precision bfloat16)
            model, optimizer, x, y, x256 = _make(shape, dtype="mixed_bfloat16")
            train_step, infer_step = _step_fns(model, optimizer, LESALoss(), "tf.function")
            train[mode] = ((lambda f=train_step, a=(x, y): f(*a)), BATCH)
            infer32[mode] = ((lambda f=infer_step, a=x: f(a)), BATCH)
            infer256[mode] = ((lambda f=infer_step, a=x256: f(a)), INFER_BATCH)
            continue
        model, optimizer, x, y, x256 = _make(shape)
        loss_fn = _DenseRankingLESALoss() if mode == "xla-dense" else LESALoss()
        train_step, infer_step = _step_fns(model, optimizer, loss_fn, mode)
        train[mode] = ((lambda f=train_step, a=(x, y): f(*a)), BATCH)
        if mode in MODES:
            infer32[mode] = ((lambda f=infer_step, a=x: f(a)), BATCH)
            infer256[mode] = ((lambda f=infer_step, a=x256: f(a)), INFER_BATCH)
    return {
        "train": _interleaved(train, steps, warmup, repeats, f"{shape_name}/train"),
        "infer32": _interleaved(infer32, steps, warmup, repeats, f"{shape_name}/infer32"),
        "infer256": _interleaved(infer256, max(1, steps // 2), warmup, repeats,
                                 f"{shape_name}/infer256"),
    }


# ----------------------------------------------------------------- profile
def profile(steps, warmup, repeats):
    """Milliseconds per call of op groups of the NUS-WIDE step, tf.function vs XLA."""
    shape = SHAPES["nus"]
    model, optimizer, x, y, _ = _make(shape)
    loss_fn = LESALoss()
    variables = model.trainable_variables
    outputs = {k: tf.identity(v) for k, v in model(x, training=True).items()}
    zeros = [tf.zeros_like(v) for v in variables]

    def conv_fwd(x):
        return model.conv_features(x, training=True)

    def conv_fwd_grad(x):
        with tf.GradientTape() as tape:
            f = model.conv_features(x, training=True)
            s = tf.reduce_sum(f * f)
        return tape.gradient(s, model.conv.trainable_variables + model.bn.trainable_variables)

    def forward(x):
        return model(x, training=True)["logits"]

    def forward_loss(x, y):
        return loss_fn(y, model(x, training=True))["total"]

    def forward_loss_grad(x, y):
        with tf.GradientTape() as tape:
            total = loss_fn(y, model(x, training=True))["total"]
        return tape.gradient(total, variables)

    def loss_only(y, outs):
        return loss_fn(y, outs)["total"]

    def loss_grad(y, outs):
        with tf.GradientTape() as tape:
            tape.watch(outs)
            total = loss_fn(y, outs)["total"]
        return tape.gradient(total, outs)

    def ranking_grad(method):
        def fn(y, logits):
            with tf.GradientTape() as tape:
                tape.watch(logits)
                total = tf.reduce_sum(lesa_loss.ranking_loss(y, logits, method=method))
            return tape.gradient(total, logits)
        return fn

    def apply(*grads):
        optimizer.apply_gradients(zip(grads, variables))
        return tf.constant(0.0)

    def full_step(x, y):
        with tf.GradientTape() as tape:
            total = loss_fn(y, model(x, training=True))["total"]
        optimizer.apply_gradients(zip(tape.gradient(total, variables), variables))
        return total

    groups = [
        ("conv 2x2 512->512 + BN + ReLU, forward", conv_fwd, (x,)),
        ("conv + BN + ReLU, forward + gradient", conv_fwd_grad, (x,)),
        ("model forward (training=True)", forward, (x,)),
        ("model forward + LESALoss", forward_loss, (x, y)),
        ("LESALoss alone (fixed outputs)", loss_only, (y, outputs)),
        ("LESALoss + grad w.r.t. outputs", loss_grad, (y, outputs)),
        ("ranking_loss sorted + grad", ranking_grad("sorted"), (y, outputs["logits"])),
        ("ranking_loss dense + grad", ranking_grad("dense"), (y, outputs["logits"])),
        ("forward + loss + all gradients", forward_loss_grad, (x, y)),
        ("RMSprop apply_gradients", apply, tuple(zeros)),
        ("full train step", full_step, (x, y)),
    ]
    cases = {}
    for name, fn, args in groups:
        for mode in ("tf.function", "xla"):
            f = tf.function(fn, jit_compile=mode == "xla")
            cases[(name, mode)] = ((lambda f=f, a=args: tf.nest.flatten(f(*a))[0]), 1)
    rates = _interleaved(cases, steps, warmup, repeats, "profile")
    ms = {k: 1e3 / v for k, v in rates.items()}
    full_tf = ms[("full train step", "tf.function")]
    print()
    print(f"Profile, nus shape, batch {BATCH} (ms per call, best of {repeats} blocks of "
          f"{steps}; share = of the tf.function full step):")
    header = f"{'op group':42s} {'tf.function':>11s} {'XLA':>8s} {'XLA speedup':>11s} {'share':>6s}"
    print(header)
    print("-" * len(header))
    for name, _, _ in groups:
        a, b = ms[(name, "tf.function")], ms[(name, "xla")]
        print(f"{name:42s} {a:11.1f} {b:8.1f} {a / b:10.2f}x {a / full_tf:6.0%}")
    # Dense FLOPs of one train step (multiply-add = 2). The features are not
    # trainable, so the conv's backward pass is the kernel gradient only (1x
    # its forward); every later matmul has input and weight gradients (2x).
    b, r, d, c = BATCH, shape["regions"], shape["dim"], shape["num_labels"]
    k, m, w = d, 10, shape["embedding_dim"]
    conv = 2 * b * r * d * k * 4
    att = 2 * b * r * k * k + 2 * b * r * k * m + 2 * b * m * r * k
    heads = 2 * c * w * k + 2 * b * m * k * c + 2 * b * k * c
    step = 2 * conv + 3 * (att + heads)
    conv_ms = ms[("conv + BN + ReLU, forward + gradient", "tf.function")]
    rate = 2 * conv / conv_ms / 1e6
    print(f"dense FLOPs per train step: conv {2 * conv / 1e9:.1f} G (forward + kernel "
          f"gradient), attention matmuls {3 * att / 1e9:.1f} G, label scores "
          f"{3 * heads / 1e9:.1f} G; total {step / 1e9:.1f} GFLOP. The conv runs at "
          f"{rate:.0f} GFLOP/s in tf.function; at that rate the step's dense FLOPs alone "
          f"take {step / rate / 1e6:.0f} ms = {step / rate / 1e6 / full_tf:.0%} of the "
          f"tf.function step, which XLA cannot fuse away.")
    return ms


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10,
                        help="timed steps per block (default 10; batch-256 inference "
                             "uses half)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed warm-up steps per mode (default 2)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed blocks per mode, interleaved; the best is kept (default 3)")
    parser.add_argument("--shape", choices=("clipart", "nus", "both"),
                        default="both")
    parser.add_argument("--no-variants", dest="variants", action="store_false",
                        help="skip the extra train-step variants")
    parser.add_argument("--profile", action="store_true",
                        help="time op groups of the nus step (tf.function vs XLA)")
    parser.add_argument("--modes", default=",".join(MODES + EXTRA_MODES),
                        help="comma-separated modes to time (default: all of "
                             f"{', '.join(MODES + EXTRA_MODES)})")
    args = parser.parse_args(argv)
    modes = tuple(m for m in args.modes.split(",") if m)
    unknown = sorted(set(modes) - set(MODES + EXTRA_MODES))
    if unknown:
        parser.error(f"--modes: unknown {', '.join(unknown)}")
    names = ["clipart", "nus"] if args.shape == "both" else [args.shape]
    print(f"TF {tf.__version__}, Keras {keras.__version__}, train batch {BATCH}, "
          f"inference batch {BATCH} and {INFER_BATCH}, best of {args.repeats} interleaved "
          f"blocks of {args.steps} steps after {args.warmup} warm-up steps, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (noisy: shared "
          f"machine)")
    results = {name: run(name, args.steps, args.warmup, args.repeats, args.variants, modes)
               for name in names}
    print()
    header = (f"{'shape':8s} {'mode':12s} {'train ex/s':>11s} "
              f"{'infer@32':>10s} {'infer@256':>10s}")
    print(header)
    print("-" * len(header))
    for name, res in results.items():
        for mode, train in res["train"].items():
            i32 = res["infer32"].get(mode)
            i256 = res["infer256"].get(mode)
            fmt = (lambda v: f"{v:10.1f}" if v is not None else f"{'-':>10s}")
            print(f"{name:8s} {mode:12s} {train:11.1f} {fmt(i32)} {fmt(i256)}")
    print()
    for name, res in results.items():
        tr, i32, i256 = res["train"], res["infer32"], res["infer256"]
        if "tf1-graph" in tr:
            print(f"{name:8s} vs the TF1 graph (same process, interleaved): " + "; ".join(
                f"{m} train {tr[m] / tr['tf1-graph']:.2f}x, infer@256 "
                f"{i256[m] / i256['tf1-graph']:.2f}x" for m in tr
                if m != "tf1-graph" and m in i256))
        if not {"xla", "tf.function", "eager"} <= set(tr):
            continue
        ratio = tr["xla"] / tr["tf.function"]
        line = (f"{name:8s} XLA / tf.function: train {ratio:5.2f}x, infer@32 "
                f"{i32['xla'] / i32['tf.function']:5.2f}x, infer@256 "
                f"{i256['xla'] / i256['tf.function']:5.2f}x;  tf.function / eager: train "
                f"{tr['tf.function'] / tr['eager']:5.2f}x, infer@32 "
                f"{i32['tf.function'] / i32['eager']:5.2f}x, infer@256 "
                f"{i256['tf.function'] / i256['eager']:5.2f}x")
        print(line)
        if args.variants:
            print(f"{'':8s} train variants / tf.function: " + ", ".join(
                f"{v} {tr[v] / tr['tf.function']:.2f}x" for v in VARIANTS))
        if name == "nus":
            print(f"{'':8s} goal: XLA train step >= {GOAL:.1f}x tf.function at the NUS-WIDE "
                  f"shape -> {ratio:.2f}x: {'met' if ratio >= GOAL else 'NOT met'}")
    if args.profile:
        profile(args.steps, args.warmup, args.repeats)


if __name__ == "__main__":
    main()
