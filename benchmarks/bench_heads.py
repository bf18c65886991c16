"""Training-step cost of the classification heads against the number of classes C.

Heads (``mll_tf.models``): the linear baseline ``PooledHead(C)`` (global
average pooling + Dense), and ``MLDecoderHead(C)`` with its defaults
(Q = min(100, C) queries, E = 768, 8 heads, FFN 2048, group FC pooling with
G = ceil(C / Q) outputs per query). Optionally ``--cosine`` for both.

Input: random region features ``[B, 49, 1280]`` (the EfficientNet-Lite0
feature-store shape: a 7x7 map of 1280 channels), random 0/1 targets, the
objective a sigmoid cross-entropy; one step = forward + backward (gradients
of all trainable weights, no optimiser update) in one ``tf.function``.

ML-Decoder's cost per example is ~ R D E + 4 Q E^2 + 2 Q E F + Q E G
multiply-adds (token projection, attention projections, FFN, group FC);
with Q capped at 100, only the last term grows with C and it is ~ E C, the
size of a linear classifier on E features. So from C = 1000 to C = 9605 its
step cost should stay nearly flat, while a linear head's cost grows with
D C. (From C = 80 to 1000 Q grows from 80 to 100.)

Timing: ``--rounds`` rounds; in each, every (head, C) is timed over
``--steps`` steps after tracing and ``--warmup`` steps; the median round is
reported (the machine's cores are shared, interleaving spreads the noise).
``--full-queries`` adds ML-Decoder with one query per class (Q = C, G = 1,
what group decoding avoids) for C <= 1000. Prints examples/s, parameters (trainable / total) and each head's ratio of
examples/s to its own C = 80 row, all in one process.

Usage:
    python benchmarks/bench_heads.py                     # B = 32, C = 80 1000 9605
    python benchmarks/bench_heads.py --batch 64 --cosine
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from mll_tf.models.heads import PooledHead  # noqa: E402
from mll_tf.models.ml_decoder import MLDecoderHead  # noqa: E402

tf.get_logger().setLevel("ERROR")   # one tf.function per (head, C) is intended, not a retracing problem


def make_step(model):
    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logits))
        grads = tape.gradient(loss, model.trainable_variables)
        # a scalar that depends on every gradient, so nothing is pruned
        return loss + tf.add_n([tf.reduce_sum(g) for g in grads]) * 0.0
    return step


def count(variables):
    return int(sum(np.prod(v.shape) for v in variables))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--regions", type=int, default=49)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--classes", type=int, nargs="+", default=[80, 1000, 9605])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cosine", action="store_true", help="cosine classifier / cosine group FC")
    p.add_argument("--full-queries", action="store_true",
                   help="add an 'ml_dec_Q=C' row: one query per class (no group decoding), for C <= 1000")
    args = p.parse_args(argv)

    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(args.batch, args.regions, args.dim)).astype(np.float32))
    heads = {"linear": lambda c: PooledHead(c, cosine=args.cosine),
             "ml_decoder": lambda c: MLDecoderHead(c, cosine=args.cosine)}
    if args.full_queries:
        heads["ml_dec_Q=C"] = lambda c: MLDecoderHead(c, num_queries=c, cosine=args.cosine)
    rows = {}
    for name, make in heads.items():
        for c in args.classes:
            if name == "ml_dec_Q=C" and c > 1000:
                continue
            tf.keras.utils.set_random_seed(0)
            model = make(c)
            model(x[:1])
            y = tf.constant((rng.uniform(size=(args.batch, c)) < 0.05).astype(np.float32))
            step = make_step(model)
            for _ in range(args.warmup + 1):
                step(x, y).numpy()
            extra = ""
            if name.startswith("ml_dec"):
                extra = f"Q={model.num_queries} G={model.group_size}"
            rows[(name, c)] = {"step": step, "y": y, "times": [], "extra": extra,
                               "trainable": count(model.trainable_weights), "total": count(model.weights)}
    for _ in range(args.rounds):
        for key, row in rows.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                out = row["step"](x, row["y"])
            out.numpy()
            row["times"].append((time.perf_counter() - t0) / args.steps)

    print(f"forward+backward, region features [{args.batch}, {args.regions}, {args.dim}] float32, "
          f"{'cosine' if args.cosine else 'linear'} outputs, median of {args.rounds} rounds x {args.steps} steps, "
          f"{os.cpu_count()} CPU threads visible")
    print(f"{'head':<11} {'C':>6} {'examples/s':>11} {'ms/step':>8} {'vs C=' + str(args.classes[0]):>8} "
          f"{'trainable params':>17} {'all params':>11}  notes")
    for name in heads:
        base = None
        for c in args.classes:
            if (name, c) not in rows:
                continue
            row = rows[(name, c)]
            t = statistics.median(row["times"])
            eps = args.batch / t
            base = base or eps
            print(f"{name:<11} {c:>6} {eps:>11.1f} {1000 * t:>8.1f} {eps / base:>8.3f} "
                  f"{row['trainable']:>17,} {row['total']:>11,}  {row['extra']}")
    a = statistics.median(rows[("ml_decoder", args.classes[-1])]["times"])
    b = statistics.median(rows[("linear", args.classes[-1])]["times"])
    print(f"ml_decoder / linear step time at C={args.classes[-1]}: {a / b:.1f}x")


if __name__ == "__main__":
    main()
