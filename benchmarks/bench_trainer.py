#!/usr/bin/env python
"""Throughput of the one training loop (``keras.Model.fit``) against a hand-written loop.

Two measurements, each printed with its ratio to a baseline run in the same
invocation:

1. ``step``: the training step alone, on one in-memory batch repeated (no
   input pipeline), at two shapes:

   * LESA at the NUS-WIDE shape: 196 x 512 region features, 925 seen labels,
     10 heads, 300-d word vectors, batch 32, RMSprop;
   * the partial-label head at the clip-art shape: 49 x 1280 features, 100
     classes, batch 32, CSL's selective loss, Adam.

   Baseline: the hand-written trainers' loop with their step (as in commit
   02ffb31): ``strategy.run`` of the step in a ``tf.function``, one Python
   call and one host sync per step. Candidates: ``fit`` with
   ``steps_per_execution`` 1, 4 and 16 (Keras runs that many steps in one
   compiled call), timed inside one ``fit`` call after 16 warm-up steps (so
   fit's per-call set-up is not counted). Examples/s, best of ``--repeats``
   blocks.

2. ``trainer`` (``--old-tree DIR``): the whole training loop on generated
   stores of the same shapes (shuffled stream from ZLIB TFRecords, rounds of
   ``--steps`` steps with validation, checkpoints, TensorBoard, history): the
   trainers of an older checkout (``DIR``: a ``git worktree`` of a commit that
   still has ``mll_tf/training/lesa_trainer.py``, e.g. 02ffb31) against this
   tree's ``fit`` path, each in its own process, alternating; the examples/s
   of the rounds after the first (which includes tracing), as each trainer
   writes it to ``history.csv``.

Usage:
    python benchmarks/bench_trainer.py                       # the step benchmark
    python benchmarks/bench_trainer.py --old-tree /path/to/worktree --steps 64
"""

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)

BATCH = 32
SHAPES = {
    "lesa": dict(regions=196, dim=512, labels=925, unseen=81, heads=10, word_dim=300, grid=(14, 14)),
    "lesa_clipart": dict(regions=49, dim=1280, conv=512, labels=70, heads=10, word_dim=50, grid=(7, 7)),
    "csl": dict(regions=49, dim=1280, labels=100),
}


# ----------------------------------------------------------------------------- step benchmark

def _lesa_parts(rng, shape="lesa"):
    import keras
    import numpy as np

    from mll_tf.losses.lesa_loss import LESALoss
    from mll_tf.tasks.lesa import TrainableLESA

    s = SHAPES[shape]
    vecs = rng.normal(size=(s["labels"], s["word_dim"])).astype(np.float32)
    x = np.maximum(rng.normal(size=(BATCH, s["regions"], s["dim"])) - 0.84, 0).astype(np.float32)
    y = rng.choice(np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, -1], np.int8), size=(BATCH, s["labels"]))

    def build():
        m = TrainableLESA(label_embeddings=vecs, num_heads=s["heads"], conv_channels=s.get("conv", s["dim"]),
                          grid_size=s["grid"])
        m(x[:1])
        return m

    return build, LESALoss(), lambda: keras.optimizers.RMSprop(1e-3, rho=0.9, momentum=0.9, epsilon=1.0), x, y


def _csl_parts(rng):
    import keras
    import numpy as np

    from mll_tf.losses.partial import PartialAsymmetricLoss
    from mll_tf.tasks.partial import TrainableHead

    s = SHAPES["csl"]
    x = np.maximum(rng.normal(size=(BATCH, s["regions"], s["dim"])) - 0.84, 0).astype(np.float32)
    y = rng.choice(np.array([1, 0, 0, 0, -1, -1], np.int8), size=(BATCH, s["labels"]))

    def build():
        m = TrainableHead(s["labels"])
        m(x[:1])
        return m

    loss = PartialAsymmetricLoss(mode="selective", gamma_pos=0.0, gamma_neg=1.0, gamma_unann=4.0, clip=0.0,
                                 likelihood_topk=5, reduction="none")
    return build, loss, lambda: keras.optimizers.Adam(1e-3), x, y


def _prefit_lesa_step(strategy, model, loss_fn, batch_size):
    """The step of the hand-written LESA trainer (02ffb31 ``lesa_trainer.make_train_step``), as it was."""
    import tensorflow as tf

    from mll_tf.losses.lesa_loss import attention_span_sum_of_squares

    optimizer = model.optimizer

    def step_fn(features, labels):
        with tf.GradientTape() as tape:
            out = model(features, training=True)
            ctx = tf.distribute.get_replica_context()
            s_local = attention_span_sum_of_squares(out["attention_logits"])
            s_total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.stop_gradient(s_local))
            terms = loss_fn(labels, out, global_batch_size=batch_size, span_sum_of_squares=s_total)
        grads = tape.gradient(terms["total"], model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return terms

    @tf.function
    def train_step(batch):
        per_replica = strategy.run(step_fn, args=batch)
        return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()}

    return train_step, "total"


def _prefit_head_step(strategy, model, loss_fn, batch_size):
    """The step of the hand-written partial-label trainer (02ffb31 ``multilabel_trainer.make_train_step``)."""
    import tensorflow as tf

    optimizer = model.optimizer

    def step_fn(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_sum(loss_fn(y, logits)) / float(batch_size)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return {"loss": loss, "prob_sum": tf.reduce_sum(tf.sigmoid(logits), axis=0)}

    @tf.function
    def train_step(batch):
        out = strategy.run(step_fn, args=batch)
        return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in out.items()}

    return train_step, "loss"


def hand_loop(strategy, model, x, y, warmup, steps, prefit):
    """The pre-fit trainers' loop: their step in a tf.function, one call and one float() per step.

    ``prefit``: a builder of the old step (above), so the baseline is the old loop with the old step.
    """
    import tensorflow as tf

    train_step, key = prefit(strategy, model, model.loss, BATCH)
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    it = iter(strategy.experimental_distribute_dataset(ds))
    for _ in range(warmup):
        float(train_step(next(it))[key])
    t0 = time.perf_counter()
    for _ in range(steps):
        float(train_step(next(it))[key])
    return steps * BATCH / (time.perf_counter() - t0)


class _StepClock:
    """Times the steps of one ``fit`` call after ``warmup`` steps (excludes fit's set-up and tracing)."""

    def __init__(self, warmup):
        import keras

        clock = self

        class CB(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                done = batch + 1
                if done == warmup:
                    clock.t0, clock.n0 = time.perf_counter(), done
                clock.t1, clock.n1 = time.perf_counter(), done

        self.callback = CB()

    def rate(self):
        return (self.n1 - self.n0) * BATCH / (self.t1 - self.t0)


def fit_loop(model, x, y, warmup, steps):
    """Steady-state examples/s of ``fit``: the steps after ``warmup`` within one call."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    clock = _StepClock(warmup)
    model.fit(ds, epochs=1, steps_per_epoch=warmup + steps, verbose=0, callbacks=[clock.callback], shuffle=False)
    return clock.rate()


def bench_steps(args):
    import keras
    import numpy as np
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    print(f"step benchmark: batch {BATCH}, {args.step_count} steps per block, best of {args.repeats} blocks "
          f"(examples/s; ratio to the hand-written loop with its step, as before fit)")
    cases = (("lesa (NUS-WIDE shape)", _lesa_parts, _prefit_lesa_step),
             ("lesa (clip-art shape, the main job)", lambda rng: _lesa_parts(rng, "lesa_clipart"),
              _prefit_lesa_step),
             ("csl head (clip-art shape)", _csl_parts, _prefit_head_step))
    for name, parts, prefit in cases:
        rng = np.random.default_rng(0)
        build, loss, opt, x, y = parts(rng)
        results = {}
        for label, spe in (("hand loop (baseline)", None), ("fit, steps_per_execution 1", 1),
                           ("fit, steps_per_execution 4", 4), ("fit, steps_per_execution 16", 16)):
            keras.utils.set_random_seed(0)
            with strategy.scope():
                model = build()
                model.compile(optimizer=opt(), loss=loss, steps_per_execution=spe or 1)
                model.optimizer.build(model.trainable_variables)
            best = 0.0
            warmup = 16  # a multiple of every steps_per_execution tried
            for _ in range(args.repeats):
                if spe is None:
                    rate = hand_loop(strategy, model, x, y, warmup, args.step_count, prefit)
                else:
                    rate = fit_loop(model, x, y, warmup, args.step_count)
                best = max(best, rate)
            results[label] = best
        base = results["hand loop (baseline)"]
        print(f"\n{name}")
        for label, rate in results.items():
            print(f"  {label:<30} {rate:8.1f} ex/s   {rate / base:5.2f}x")


# ----------------------------------------------------------------------------- trainer benchmark

def _names(n, prefix):
    return [f"{prefix}{i:04d}" for i in range(n)]


def make_stores(workdir, n_train):
    """Generated stores of both shapes (post-ReLU-like float16 maps, ZLIB) and a GloVe file."""
    import numpy as np

    from mll_tf.data.feature_store import FeatureStoreWriter, Manifest

    rng = np.random.default_rng(0)
    out = {}
    for kind, s in SHAPES.items():
        if kind not in ("lesa", "csl"):
            continue
        c = s["labels"] + s.get("unseen", 0)
        names = _names(c, "w")
        extra = {}
        if kind == "lesa":
            extra["label_split"] = {"seen": names[:s["labels"]], "unseen": names[s["labels"]:]}
        root = os.path.join(workdir, "features")
        grid = s.get("grid", (7, 7))
        for split, n in (("train", n_train), ("val", 64), ("test", 64)):
            man = Manifest(dataset=f"bench_{kind}", split=split, backbone="efficientnet_lite0",
                           weights="random initialisation (weights=None)", input_size=[224, 224],
                           preprocessing="generated", feature_shape=[s["regions"], s["dim"]],
                           feature_grid=list(grid), feature_dtype="float16", label_names=names,
                           extra_label_names={}, extra=extra)
            d = os.path.join(root, f"bench_{kind}", "efficientnet_lite0_224", split)
            if os.path.exists(os.path.join(d, "manifest.json")):
                continue
            with FeatureStoreWriter(d, man) as w:
                for i in range(n):
                    f = np.maximum(rng.normal(size=(s["regions"], s["dim"])) - 0.84, 0).astype(np.float16)
                    y = (rng.random(c) < 0.05).astype(np.int8)
                    w.write(f"{split}/{i:06d}", f, y)
        out[kind] = root
    glove = os.path.join(workdir, "vectors.txt")
    if not os.path.exists(glove):
        with open(glove, "w") as f:
            for n in _names(SHAPES["lesa"]["labels"] + SHAPES["lesa"]["unseen"], "w"):
                f.write(n + " " + " ".join(f"{v:.5f}" for v in rng.normal(size=300)) + "\n")
    return os.path.join(workdir, "features"), glove


_OLD = r'''
import os, sys, json
sys.path.insert(0, sys.argv[1])
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
from mll_tf.training.config import TrainConfig
kind, root, glove, run, steps, rounds = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]), int(sys.argv[7])
common = dict(dataset=f"bench_{kind}", features_root=root, run_dir=run, batch_size=32, eval_every=steps,
              max_steps=steps * rounds, input_size=224, shuffle_buffer=256)
if kind == "lesa":
    from mll_tf.training.lesa_trainer import train_lesa
    train_lesa(TrainConfig(method="lesa", word_vectors=glove, optimizer="rmsprop", learning_rate=1e-3, **common),
               progress=False)
else:
    from mll_tf.training.multilabel_trainer import train_multilabel
    train_multilabel(TrainConfig(method="csl", learning_rate=1e-3, **common), progress=False)
'''

_NEW = r'''
import os, sys
sys.path.insert(0, sys.argv[1])
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
from mll_tf.tasks import build_task
kind, root, glove, run, steps, rounds = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]), int(sys.argv[7])
spe = int(sys.argv[8])
common = dict(dataset=f"bench_{kind}", features_root=root, run_dir=run, batch_size=32, eval_every=steps,
              max_steps=steps * rounds, input_size=224, shuffle_buffer=256, steps_per_execution=spe)
if kind == "lesa":
    task = build_task(dict(method="lesa", word_vectors=glove, optimizer="rmsprop", learning_rate=1e-3, **common),
                      task=dict(attention_images=0))
else:
    task = build_task(dict(method="csl", learning_rate=1e-3, **common))
task.fit(verbose=0)
'''


def _rates(run_dir, key):
    rows = list(csv.DictReader(open(os.path.join(run_dir, "history.csv"))))
    return [float(r[key]) for r in rows[1:]]  # the first round includes tracing


def bench_trainers(args):
    import numpy as np

    workdir = args.workdir or tempfile.mkdtemp(prefix="mll_bench_trainer_")
    t0 = time.perf_counter()
    root, glove = make_stores(workdir, args.num_train)
    print(f"\ntrainer benchmark: stores in {workdir} ({time.perf_counter() - t0:.0f} s to make); "
          f"{args.rounds} rounds of {args.steps} steps of {BATCH}, shuffled from ZLIB TFRecords, "
          f"validation on 64 images after each round; examples/s of rounds 2..{args.rounds}, "
          f"{args.trials} alternating trials")
    for kind in ("lesa", "csl"):
        rates = {"old trainer (baseline)": [], "fit, steps_per_execution 1": []}
        if args.spe > 1:
            rates[f"fit, steps_per_execution {args.spe}"] = []
        for trial in range(args.trials):
            for label in rates:
                run = os.path.join(workdir, "runs", f"{kind}_{trial}_{label.split(',')[0].split()[0]}_{len(rates[label])}")
                shutil.rmtree(run, ignore_errors=True)
                if label.startswith("old"):
                    cmd = [sys.executable, "-c", _OLD, args.old_tree, kind, root, glove, run, str(args.steps),
                           str(args.rounds)]
                    key = "train/examples_per_sec"
                else:
                    spe = int(label.rsplit(" ", 1)[1])
                    cmd = [sys.executable, "-c", _NEW, HERE, kind, root, glove, run, str(args.steps),
                           str(args.rounds), str(spe)]
                    key = "examples_per_sec"
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode:
                    raise SystemExit(f"{label} failed:\n{proc.stderr[-3000:]}")
                rates[label] += _rates(run, key)
        base = float(np.median(rates["old trainer (baseline)"]))
        name = "LESA (NUS-WIDE shape)" if kind == "lesa" else "CSL head (clip-art shape)"
        print(f"\n{name}: median (min-max) examples/s over {len(rates['old trainer (baseline)'])} rounds")
        for label, r in rates.items():
            med = float(np.median(r))
            print(f"  {label:<30} {med:8.1f} ({min(r):.1f}-{max(r):.1f})   {med / base:5.2f}x")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--step-count", type=int, default=64, help="steps per timed block (step benchmark; a multiple "
                   "of 16)")
    p.add_argument("--repeats", type=int, default=3, help="timed blocks per candidate (best is kept)")
    p.add_argument("--old-tree", default=None, help="checkout with the pre-fit trainers: run the trainer benchmark")
    p.add_argument("--steps", type=int, default=64, help="trainer benchmark: steps per round")
    p.add_argument("--rounds", type=int, default=4, help="trainer benchmark: rounds per run")
    p.add_argument("--trials", type=int, default=2, help="trainer benchmark: alternating runs per trainer")
    p.add_argument("--spe", type=int, default=8, help="trainer benchmark: also fit with this steps_per_execution")
    p.add_argument("--num-train", type=int, default=1024, help="trainer benchmark: generated training records")
    p.add_argument("--workdir", default=None, help="keep the generated stores here (default: a temp dir)")
    p.add_argument("--skip-steps", action="store_true", help="only the trainer benchmark")
    args = p.parse_args(argv)
    if not args.skip_steps:
        bench_steps(args)
    if args.old_tree:
        bench_trainers(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
