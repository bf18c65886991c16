"""Roofline: achieved GFLOP/s of the LESA, partial-label and ML-Decoder steps as a fraction of the matmul peak.

One run prints one table:

* the machine's **peak** dense rate: a large square ``tf.linalg.matmul``
  (``--matmul-size``, default 4096) in float32 and in bfloat16, with the
  default TensorFlow thread pools (the ones training uses);
* for each head, its **FLOPs** per train step (batch ``--batch``, 32) and per
  inference batch (``--infer-batch``, 256), counted from the built model's
  shapes (multiply-add = 2 FLOPs; elementwise ops, softmax, normalisation and
  the optimizer update are not counted, so the fractions are lower bounds);
* the **achieved** GFLOP/s (FLOPs x calls/s) of the ``tf.function`` train step
  and inference call in float32 and under the ``mixed_bfloat16`` policy
  (``--precision bfloat16``), and the fraction of the matching peak.

Heads, all on the NUS-WIDE feature shape (196 x 512 regions = 14x14 VGG19
conv5_4, 925 seen labels):

* ``lesa``: :class:`mll_tf.models.lesa.LESA` (10 heads, conv 512) + the full
  :class:`~mll_tf.losses.lesa_loss.LESALoss` + RMSprop (as bench_lesa.py);
* ``partial``: :class:`mll_tf.models.heads.MultiLabelHead` (mean over regions
  + Dense(925), the partial-label methods' head) + sigmoid BCE on the known
  labels + Adam;
* ``ml_decoder``: :class:`mll_tf.models.ml_decoder.MLDecoderHead` (100
  queries, E 768, 8 heads, FFN 2048, dropout 0.1) + sigmoid BCE + Adam.

FLOP counts (per example, forward): for a dense product [n, k] x [k, m],
2 n k m. Training: the features are not trainable, so the first layer's
backward pass is its weight gradient only (1x its forward); every later product
has a weight and an input gradient (2x its forward).

A fraction near 1 means the step is bound by the matrix products; a low
fraction means it is bound by something else (memory traffic of the
elementwise ops, per-op overhead, the loss), which is where a profile
(``benchmarks/bench_lesa.py --profile``) should look.

Timing: every case is warmed up, then timed in ``--repeats`` blocks of
``--steps`` calls, the blocks interleaved over all cases so that the load of a
shared machine hits all alike; the best block is kept. No assertions.

Usage:
    python benchmarks/roofline.py
    python benchmarks/roofline.py --steps 5 --repeats 3 --heads lesa
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench_lesa import SHAPES, _interleaved, _make, _step_fns  # noqa: E402
from mll_tf.losses.lesa_loss import LESALoss  # noqa: E402
from mll_tf.models.heads import MultiLabelHead  # noqa: E402
from mll_tf.models.ml_decoder import MLDecoderHead  # noqa: E402

SHAPE = SHAPES["nus"]
PRECISIONS = {"float32": None, "bfloat16": "mixed_bfloat16"}


# ----------------------------------------------------------------- FLOP counts
def lesa_flops(model, batch, regions, train):
    """Dense FLOPs of one LESA forward (or train step) on ``batch`` examples, from the model's weights."""
    kh, kw, d, k = model.conv.kernel.shape
    heads = model.w_att_2.shape[1]
    c, d_w = model.seen_embeddings.shape
    conv = 2 * batch * regions * d * k * kh * kw          # 2x2 SAME conv = 4 taps per output
    att = (2 * batch * regions * k * k                     # F W1
           + 2 * batch * regions * k * heads               # H W2
           + 2 * batch * heads * regions * k)              # alpha F
    labels = (2 * c * d_w * k                              # theta = W v_hat (once per batch)
              + 2 * batch * heads * k * c                  # head scores
              + 2 * batch * k * c)                         # global scores
    if not train:
        return conv + att + labels
    return 2 * conv + 3 * (att + labels)


def partial_flops(model, batch, regions, train):
    """MultiLabelHead: mean over regions (1 FLOP per input value) + Dense(C); train: + the weight gradient."""
    d, c = model.classifier.kernel.shape
    pool = batch * regions * d
    dense = 2 * batch * d * c
    return pool + (2 * dense if train else dense)


def ml_decoder_flops(model, batch, regions, train):
    """MLDecoderHead: token projection, cross-attention (Q/K/V/O projections, scores, weighted sum), FFN, group FC."""
    d_in = model.token_proj.kernel.shape[0]
    e, q, f, g = model.embed_dim, model.num_queries, model.ffn_dim, model.group_size
    tokens = 2 * batch * regions * d_in * e
    rest = (2 * batch * q * e * e * 2                      # query and output projections
            + 2 * batch * regions * e * e * 2              # key and value projections
            + 2 * batch * q * regions * e * 2              # scores and weighted sum
            + 2 * batch * q * e * f * 2                    # FFN
            + 2 * batch * q * e * g)                       # group FC
    if not train:
        return tokens + rest
    return 2 * tokens + 3 * rest


# ----------------------------------------------------------------- steps
def _bce_step_fns(model, optimizer):
    """tf.function train step (sigmoid BCE on the known labels, Adam) and inference call of a plain head."""
    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            logits = tf.cast(model(x, training=True), tf.float32)
            known = tf.cast(y >= 0, tf.float32)
            bce = tf.nn.sigmoid_cross_entropy_with_logits(tf.cast(y > 0, tf.float32), logits)
            loss = tf.reduce_sum(bce * known) / tf.maximum(tf.reduce_sum(known), 1.0)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    @tf.function
    def infer_step(x):
        return tf.cast(model(x, training=False), tf.float32)

    return train_step, infer_step


def _head_cases(head, precision, batch, infer_batch, seed=0):
    """{case name: (callable, FLOPs per call)} for one head and precision."""
    rng = np.random.default_rng(seed)
    regions, dim, c = SHAPE["regions"], SHAPE["dim"], SHAPE["num_labels"]
    dtype = PRECISIONS[precision]
    if head == "lesa":
        model, optimizer, x, y, x_inf = _make(SHAPE, seed=seed, dtype=dtype)
        train_step, infer_step = _step_fns(model, optimizer, LESALoss(), "tf.function")
        flops = lesa_flops
    else:
        keras.utils.set_random_seed(seed)
        if head == "partial":
            model = MultiLabelHead(c, dtype=dtype)
            flops = partial_flops
        else:
            model = MLDecoderHead(c, dtype=dtype)
            flops = ml_decoder_flops
        x_inf = tf.constant(np.maximum(rng.normal(size=(infer_batch, regions, dim)), 0).astype("float32"))
        x = x_inf[:batch]
        y = tf.constant(rng.choice([1, 0, 0, 0, -1], size=(batch, c)).astype("int8"))
        model(x[:1])
        optimizer = keras.optimizers.Adam(1e-4)
        optimizer.build(model.trainable_variables)
        train_step, infer_step = _bce_step_fns(model, optimizer)
    x, x_inf = x[:batch], x_inf[:infer_batch]
    return {
        (head, precision, "train"): ((lambda: train_step(x, y)), flops(model, batch, regions, True)),
        (head, precision, "infer"): ((lambda: infer_step(x_inf)), flops(model, infer_batch, regions, False)),
    }


def _matmul_case(dtype, n):
    a = tf.random.normal((n, n), dtype=tf.float32, seed=1)
    b = tf.random.normal((n, n), dtype=tf.float32, seed=2)
    a, b = tf.cast(a, dtype), tf.cast(b, dtype)
    fn = tf.function(lambda: tf.linalg.matmul(a, b))
    return fn, 2 * n ** 3


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed calls per block (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up calls per case (default 2)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed blocks per case, interleaved; the best is kept (default 3)")
    parser.add_argument("--batch", type=int, default=32, help="train batch (default 32)")
    parser.add_argument("--infer-batch", type=int, default=256, help="inference batch (default 256)")
    parser.add_argument("--matmul-size", type=int, default=4096,
                        help="n of the n x n peak matmul (default 4096; 2048 gave a lower 'peak' than the "
                             "LESA step itself reached on a quiet machine)")
    parser.add_argument("--heads", default="lesa,partial,ml_decoder",
                        help="comma-separated heads: lesa, partial, ml_decoder (default all)")
    parser.add_argument("--precisions", default="float32,bfloat16",
                        help="comma-separated: float32, bfloat16 (default both)")
    args = parser.parse_args(argv)
    heads = [h for h in args.heads.split(",") if h]
    precisions = [p for p in args.precisions.split(",") if p]
    for h in heads:
        if h not in ("lesa", "partial", "ml_decoder"):
            parser.error(f"--heads: unknown head {h!r}")
    for p in precisions:
        if p not in PRECISIONS:
            parser.error(f"--precisions: unknown precision {p!r}")

    flops, fns = {}, {}
    for p in precisions:
        fn, f = _matmul_case(tf.float32 if p == "float32" else tf.bfloat16, args.matmul_size)
        fns[("matmul", p, "peak")] = (fn, 1)
        flops[("matmul", p, "peak")] = f
    for h in heads:
        for p in precisions:
            for key, (fn, f) in _head_cases(h, p, args.batch, args.infer_batch).items():
                fns[key] = (fn, 1)
                flops[key] = f
    calls = _interleaved(fns, args.steps, args.warmup, args.repeats, "roofline")   # calls/s
    peak = {p: flops[("matmul", p, "peak")] * calls[("matmul", p, "peak")] / 1e9 for p in precisions}

    print(f"TF {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs, intra-op threads "
          f"{tf.config.threading.get_intra_op_parallelism_threads() or 'default'}, load average "
          f"{os.getloadavg()[0]:.1f} (a shared machine: absolute rates are the load's, compare the "
          f"fractions); best of {args.repeats} interleaved blocks of {args.steps} calls")
    print(f"NUS-WIDE shape: {SHAPE['regions']}x{SHAPE['dim']} regions, {SHAPE['num_labels']} labels; "
          f"train batch {args.batch}, inference batch {args.infer_batch}")
    header = (f"{'head':11s} {'precision':9s} {'call':6s} {'GFLOP/call':>10s} {'calls/s':>8s} "
              f"{'ex/s':>8s} {'GFLOP/s':>8s} {'of peak':>8s}")
    print(header)
    print("-" * len(header))
    for p in precisions:
        key = ("matmul", p, "peak")
        print(f"{'matmul':11s} {p:9s} {'peak':6s} {flops[key] / 1e9:10.2f} {calls[key]:8.2f} {'-':>8s} "
              f"{peak[p]:8.1f} {1:8.0%}")
    for h in heads:
        for p in precisions:
            for kind in ("train", "infer"):
                key = (h, p, kind)
                rate = flops[key] * calls[key] / 1e9
                batch = args.batch if kind == "train" else args.infer_batch
                print(f"{h:11s} {p:9s} {kind:6s} {flops[key] / 1e9:10.2f} {calls[key]:8.2f} "
                      f"{calls[key] * batch:8.1f} {rate:8.1f} {rate / peak[p]:8.0%}")
    if "float32" in peak and "bfloat16" in peak:
        print(f"bfloat16 / float32 matmul peak: {peak['bfloat16'] / peak['float32']:.2f}x")
    return calls, flops, peak


if __name__ == "__main__":
    main()
