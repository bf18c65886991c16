#!/usr/bin/env python
"""Peak memory and throughput of extraction, reading and LESA training at scale.

Checks the claim "extraction and training stream from disk with bounded
memory; the reader never holds a split in RAM unless --cache is asked for" on
generated data of NUS-WIDE's shapes (VGG19 conv5_4 maps 14x14x512 = 196x512
float16, 1006 labels = 81 concepts + 925 tags; docs/lesa.md §1, §5).

Each phase runs in its own subprocess (this script with ``--phase``) and
reports that process's peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``, KiB on
Linux), its RSS right before the streaming loop (TensorFlow + model +
pipeline set up: the part that does not depend on N) and RSS samples taken
at every 10% of the loop (flat = bounded memory):

  write    N generated post-ReLU-like maps (relu(z - 0.8416), z ~ N(0, 1):
           ~80% zeros, float16; generated in batches from a seeded RNG, so
           generation is O(batch) memory) + int8 labels in {1, 0, -1} written
           through FeatureStoreWriter (ZLIB level 1, float16, default 64 MiB
           shards): the writer path of extraction with the backbone forward
           pass replaced by generated maps (VGG19 on 100k images would take
           hours on this CPU).
  extract  the real extraction path (mll_tf.data.extraction.extract_records:
           decoding workers -> FeatureFunction -> writer) on a few generated
           images through a small random-weights conv backbone that outputs
           14x14x512 (or VGG19 with random weights, --extract-backbone vgg19),
           at two image counts, to show its memory does not depend on N.
  read     one full pass of make_dataset(batch 32, shuffle=True,
           shuffle_buffer=2048, cache=False) over the N records.
  train    --steps LESA train steps (TrainableLESA.train_step, the step fit
           runs, on a one-replica MirroredStrategy as the trainer, batch
           32, the first 925 label columns gathered as column_dataset does,
           random 300-d word vectors, RMSprop 1e-3/0.9/0.9/1.0) streaming from
           the store; baseline: the same step on one in-memory batch, timed
           in the same process.
  read-cache  (only with --read-cache) the same pass with cache=True, twice:
           the cached split is held in RAM, so its RSS grows with N.

The timings are noisy when other jobs share the CPU; peak RSS is not.
The read phase's RSS creeps up by ~0.1-0.3 GiB during a pass and then stays
flat: glibc malloc's dynamic mmap threshold lets the ~200 KB record buffers
come from (fragmenting) heap arenas. With MALLOC_MMAP_THRESHOLD_=131072 in
the environment the read RSS measured flat (1.13 GiB at N=10,000 instead of
1.21 -> 1.33 GiB).

Usage:
    python benchmarks/bench_scale.py                      # N = 100,000 (~6 GB on disk)
    python benchmarks/bench_scale.py --num-images 10000 --workdir /tmp/mll_scale
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

R, D, GRID = 196, 512, (14, 14)
NUM_CONCEPTS, NUM_TAGS = 81, 925          # labels_1006 = concat([label_81, label_925])
NUM_LABELS = NUM_CONCEPTS + NUM_TAGS
SEEN = 925                                # train on the first 925 columns (column_dataset-style)
EMBED_DIM = 300
BATCH = 32
SHUFFLE_BUFFER = 2048
RELU_SHIFT = 0.8416                       # P(z > 0.8416) = 0.20 for z ~ N(0, 1)
RESULT_TAG = "BENCH_SCALE_RESULT "
GIB = 2**30


# ----------------------------------------------------------------- helpers
def _peak_rss():
    """Peak RSS of this process in bytes (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _common(n, before, samples, **kw):
    """Result dict of a phase: peak RSS by getrusage and by /proc VmHWM (should agree)."""
    return dict(n=n, peak=_peak_rss(), hwm=_vm_hwm(), before=before, samples=samples, **kw)


def _vm_hwm(pid="self"):
    """Peak RSS (VmHWM) of a process in bytes, 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class _ChildPeaks:
    """Polls the VmHWM of this process's children (the decoding workers).

    RUSAGE_CHILDREN is not usable for them: a child forked (or vforked) and
    exec'd inherits the parent's RSS high-water mark in its ru_maxrss.
    """

    def __init__(self, interval=0.2):
        import threading

        self.peaks = {}
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _children(self):
        pids = set()
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/children") as f:
                    pids.update(f.read().split())
            except OSError:
                pass
        return pids

    def _run(self):
        while not self._stop.wait(self._interval):
            for pid in self._children():
                self.peaks[pid] = max(self.peaks.get(pid, 0), _vm_hwm(pid))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _current_rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _dir_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            total += os.path.getsize(os.path.join(root, name))
    return total


class _Sampler:
    """Current RSS at every 10% of a loop of ``total`` iterations."""

    def __init__(self, total):
        self.marks = [max(1, round(total * k / 10)) for k in range(1, 11)]
        self.samples = []

    def __call__(self, done):
        while self.marks and done >= self.marks[0]:
            self.marks.pop(0)
            self.samples.append(_current_rss())


def _label_names():
    return ([f"concept{i:02d}" for i in range(NUM_CONCEPTS)]
            + [f"tag{i:03d}" for i in range(NUM_TAGS)])


def _manifest(split, backbone):
    from mll_tf.data.feature_store import Manifest

    return Manifest(dataset="nus_wide_synthetic", split=split, backbone=backbone,
                    weights="none (generated)", input_size=[224, 224],
                    preprocessing="generated", feature_shape=[R, D],
                    feature_grid=list(GRID), feature_dtype="float16",
                    label_names=_label_names(), compression="ZLIB")


def _labels(rng, n):
    """int8 [n, 1006] in {1, 0, -1}: ~1% positives (~10 per image), ~5% unknown."""
    u = rng.random((n, NUM_LABELS))
    out = (u < 0.01).astype("int8")
    out[u > 0.95] = -1
    return out


def _gen_image(path, size):
    """Picklable decoder stand-in: a seeded random uint8 image for 'gen:<i>'."""
    import numpy as np

    seed = int(str(path).split(":")[1])
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _store_dir(args):
    return os.path.join(args.workdir, f"nus_like_{args.num_images}", "train")


# ----------------------------------------------------------------- phases
def phase_write(args):
    import numpy as np
    import tensorflow as tf  # noqa: F401 - count TF's footprint like extraction does

    from mll_tf.data.feature_store import FeatureStoreWriter

    n, gen_batch = args.num_images, args.gen_batch
    rng = np.random.default_rng(args.seed)
    split_dir = _store_dir(args)
    writer = FeatureStoreWriter(split_dir, _manifest("train", "generated-vgg19-shape"),
                                compression_level=1, overwrite=True)
    sampler = _Sampler(n)
    before = _current_rss()
    gen_s = write_s = 0.0
    zeros = 0
    t_all = time.perf_counter()
    with writer:
        for start in range(0, n, gen_batch):
            m = min(gen_batch, n - start)
            t0 = time.perf_counter()
            z = rng.standard_normal((m, R, D), dtype=np.float32)
            z -= RELU_SHIFT
            np.maximum(z, 0.0, out=z)
            feats = z.astype(np.float16)
            del z
            labels = _labels(rng, m)
            zeros += int(np.count_nonzero(feats == 0))
            t1 = time.perf_counter()
            for i in range(m):
                writer.write(f"img{start + i:07d}", feats[i], labels[i])
            t2 = time.perf_counter()
            gen_s += t1 - t0
            write_s += t2 - t1
            sampler(start + m)
    total_s = time.perf_counter() - t_all
    manifest = writer.manifest
    store = sum(s["num_bytes"] for s in manifest.shards)
    return _common(
        n, before, sampler.samples,
        rate=n / total_s, rate_writer=n / write_s, gen_s=gen_s, write_s=write_s,
        store_bytes=_dir_bytes(split_dir), shard_bytes=store, shards=len(manifest.shards),
        zero_fraction=zeros / (n * R * D),
        compression=store / (n * R * D * 2))


def _tiny_backbone(size):
    """Random-weights conv net: [B, size, size, 3] in [0, 255] -> [B, 14, 14, 512] >= 0."""
    import keras

    inp = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inp)
    x = keras.layers.Conv2D(32, 3, strides=4, padding="same", activation="relu")(x)   # 56
    x = keras.layers.Conv2D(64, 3, strides=2, padding="same", activation="relu")(x)   # 28
    x = keras.layers.Conv2D(512, 3, strides=2, padding="same", activation="relu")(x)  # 14
    return keras.Model(inp, x, name="tiny_random_backbone")


def phase_extract(args):
    import numpy as np
    import keras

    from mll_tf.data.adapter import ImageRecord
    from mll_tf.data.extraction import FeatureFunction, extract_records
    from mll_tf.data.feature_store import FeatureStoreWriter

    n, size = args.extract_images, 224
    keras.utils.set_random_seed(0)
    if args.extract_backbone == "vgg19":
        from mll_tf.backbones import build_backbone
        model = build_backbone("vgg19", weights=None, input_size=size).model
    else:
        model = _tiny_backbone(size)
    assert tuple(model.output.shape[1:]) == (GRID[0], GRID[1], D), model.output.shape
    fn = FeatureFunction(model, BATCH)
    fn(np.zeros((BATCH, size, size, 3), np.uint8))  # trace outside the timed part
    rng = np.random.default_rng(args.seed)
    labels = _labels(rng, n)
    records = [ImageRecord(f"gen{i:07d}", f"gen:{i}", labels[i]) for i in range(n)]
    split_dir = os.path.join(args.workdir, f"extract_{args.extract_backbone}_{n}", "train")
    before = _current_rss()
    t0 = time.perf_counter()
    with _ChildPeaks() as workers, \
            FeatureStoreWriter(split_dir, _manifest("train", args.extract_backbone),
                               compression_level=1, overwrite=True) as writer:
        stats = extract_records(records, _gen_image, size, fn, writer, num_workers=2,
                                progress=False)
    seconds = time.perf_counter() - t0
    out = _common(n, before, [_current_rss()],
                  workers_peak=max(workers.peaks.values(), default=0),
                  num_children=len(workers.peaks), rate=stats["written"] / seconds,
                  store_bytes=_dir_bytes(split_dir), backbone=args.extract_backbone)
    shutil.rmtree(os.path.dirname(split_dir), ignore_errors=True)
    return out


def phase_read(args, cache=False):
    import tensorflow as tf

    from mll_tf.data.feature_store import make_dataset, read_manifest

    split_dir = _store_dir(args)
    n = read_manifest(split_dir).num_examples
    # Size of one serialized record: what the shuffle buffer / cache hold per example.
    first = next(iter(tf.data.TFRecordDataset(
        os.path.join(split_dir, read_manifest(split_dir).shards[0]["file"]),
        compression_type="ZLIB")))
    record_bytes = len(first.numpy())
    ds = make_dataset(split_dir, BATCH, shuffle=True, shuffle_buffer=SHUFFLE_BUFFER, seed=0,
                      cache=cache)
    passes = 2 if cache else 1
    before = _current_rss()
    sampler = _Sampler(n * passes)
    seen = 0
    rates = []
    for _ in range(passes):
        t0 = time.perf_counter()
        count = 0
        for feats, _labels_ in ds:
            count += int(feats.shape[0])
            sampler(seen + count)
        rates.append(count / (time.perf_counter() - t0))
        seen += count
        assert count == n, (count, n)
    return _common(n, before, sampler.samples,
                rate=rates[-1], rates=rates, record_bytes=record_bytes,
                buffer_bytes=SHUFFLE_BUFFER * record_bytes,
                store_bytes=_dir_bytes(split_dir))


def phase_read_cache(args):
    return phase_read(args, cache=True)


def phase_train(args):
    import keras
    import numpy as np
    import tensorflow as tf

    from mll_tf.data.feature_store import read_manifest
    from mll_tf.losses.lesa_loss import LESALoss
    from mll_tf.tasks.lesa import TrainableLESA, column_dataset
    from mll_tf.training.distribute import distributed_train_step, make_strategy

    split_dir = _store_dir(args)
    n = read_manifest(split_dir).num_examples
    keras.utils.set_random_seed(0)
    vecs = np.random.default_rng(1).normal(size=(SEEN, EMBED_DIM)).astype(np.float32)
    strategy = make_strategy(1)
    with strategy.scope():
        model = TrainableLESA(label_embeddings=vecs, num_heads=10, conv_channels=D, grid_size=GRID)
        model(tf.zeros([1, R, D]), training=False)
        model.compile(optimizer=keras.optimizers.RMSprop(1e-3, rho=0.9, momentum=0.9, epsilon=1.0),
                      loss=LESALoss())
        model.optimizer.build(model.trainable_variables)
    step = distributed_train_step(strategy, model, jit_compile=args.jit)
    ds = column_dataset(split_dir, list(range(SEEN)), BATCH, shuffle=True,
                        shuffle_buffer=SHUFFLE_BUFFER, seed=0, cache=False, repeat=True,
                        drop_remainder=True)
    it = iter(strategy.experimental_distribute_dataset(ds))

    # Baseline: the same step on one in-memory batch (no input pipeline),
    # timed before and after the streaming loop; the faster block is kept.
    fixed = next(it)
    for _ in range(args.warmup):
        float(step(fixed)["loss"])

    def in_memory():
        t0 = time.perf_counter()
        for _ in range(args.baseline_steps):
            loss = step(fixed)["loss"]
        float(loss)
        return args.baseline_steps * BATCH / (time.perf_counter() - t0)

    baseline = in_memory()

    # Streaming: --steps steps, each on the next batch from disk.
    before = _current_rss()
    sampler = _Sampler(args.steps)
    t0 = time.perf_counter()
    for i in range(args.steps):
        loss = step(next(it))["loss"]
        if (i + 1) % max(1, args.steps // 10) == 0:
            float(loss)  # keep the host loop from running far ahead of the device
        sampler(i + 1)
    last = float(loss)
    rate = args.steps * BATCH / (time.perf_counter() - t0)
    baseline = max(baseline, in_memory())
    assert np.isfinite(last), last
    return _common(n, before, sampler.samples, rate=rate,
                baseline=baseline, steps=args.steps, loss=last,
                store_bytes=_dir_bytes(split_dir))


PHASES = {"write": phase_write, "extract": phase_extract, "read": phase_read,
          "read-cache": phase_read_cache, "train": phase_train}


# ----------------------------------------------------------------- driver
def _child_argv(args, phase, **overrides):
    opts = dict(vars(args), phase=phase, **overrides)
    argv = [sys.executable, os.path.abspath(__file__)]
    for key in ("phase", "num_images", "workdir", "steps", "warmup", "baseline_steps",
                "gen_batch", "seed", "extract_images", "extract_backbone"):
        argv += [f"--{key.replace('_', '-')}", str(opts[key])]
    if opts["jit"]:
        argv.append("--jit")
    return argv


def _run_child(args, phase, **overrides):
    argv = _child_argv(args, phase, **overrides)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG):])
    if proc.returncode != 0 or result is None:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"phase {phase} failed (exit code {proc.returncode})")
    result["wall"] = wall
    if abs(result["peak"] - result["hwm"]) > 64 * 2**20:
        print(f"  note: {phase}: ru_maxrss {_gib(result['peak']):.2f} GiB differs from "
              f"VmHWM {_gib(result['hwm']):.2f} GiB")
    return result


def _gib(b):
    return b / GIB


def _samples(res):
    return " ".join(f"{_gib(s):.2f}" for s in res["samples"])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--num-images", type=int, default=100_000)
    p.add_argument("--workdir", default="/tmp/mll_scale",
                   help="where the store is written (default /tmp/mll_scale)")
    p.add_argument("--steps", type=int, default=300, help="streaming training steps")
    p.add_argument("--keep", action="store_true",
                   help="keep the generated store (default: print its size and delete it)")
    p.add_argument("--reuse", action="store_true",
                   help="skip the write phase if a complete store of --num-images exists")
    p.add_argument("--read-cache", action="store_true",
                   help="also read with cache=True (holds the split in RAM: "
                        "~0.19 GiB per 1000 images; do not use at 100k on a 24 GB machine)")
    p.add_argument("--jit", action="store_true", help="train step with jit_compile=True")
    p.add_argument("--warmup", type=int, default=3, help="untimed train steps (tracing)")
    p.add_argument("--baseline-steps", type=int, default=20,
                   help="in-memory-batch train steps timed as the baseline")
    p.add_argument("--gen-batch", type=int, default=64, help="maps generated at once")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--extract-images", default="64,256",
                   help="image counts of the real-extraction-path check ('' to skip)")
    p.add_argument("--extract-backbone", choices=("tiny", "vgg19"), default="tiny")
    p.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.phase:
        if args.phase == "extract":
            args.extract_images = int(args.extract_images)
        result = PHASES[args.phase](args)
        print(RESULT_TAG + json.dumps(result), flush=True)
        return

    import platform
    os.makedirs(args.workdir, exist_ok=True)
    print(f"bench_scale: N={args.num_images}, maps {R}x{D} float16 (~80% zeros), "
          f"{NUM_LABELS} labels, ZLIB level 1, batch {BATCH}, shuffle buffer {SHUFFLE_BUFFER}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
          f"python {platform.python_version()}; workdir {args.workdir}")
    print("Each phase is a separate process; 'peak' = its ru_maxrss, 'before loop' = RSS "
          "after TF/model/pipeline set-up, samples = RSS at 10%..100% of the loop (GiB).")
    print("Timings are noisy: 2 cores shared with other jobs.")
    print()
    results = []
    store = _store_dir(args)
    try:
        reuse = False
        if args.reuse and os.path.exists(os.path.join(store, "manifest.json")):
            with open(os.path.join(store, "manifest.json")) as f:
                m = json.load(f)
            reuse = m.get("complete") and m.get("num_examples") == args.num_images
        if reuse:
            print(f"write: reusing the complete store {store}")
        else:
            res = _run_child(args, "write")
            results.append(("write", res))
            print(f"write: {res['n']} maps in {res['wall']:.0f} s; {res['rate']:.0f} ex/s "
                  f"overall (generation {res['gen_s']:.0f} s + FeatureStoreWriter "
                  f"{res['write_s']:.0f} s = {res['rate_writer']:.0f} ex/s through the writer); "
                  f"{res['zero_fraction']:.1%} zeros, {res['shards']} shards, on disk "
                  f"{res['compression']:.3f} of raw float16. This is the writer path of "
                  f"extraction with the backbone forward pass replaced by generated maps.")
            print(f"       RSS samples: {_samples(res)}")
        for k in [int(v) for v in args.extract_images.split(",") if v.strip()]:
            res = _run_child(args, "extract", extract_images=k)
            results.append(("extract", res))
            print(f"extract ({res['backbone']} random-weights backbone -> 14x14x512, "
                  f"2 decode workers, real extract_records path): {res['n']} images, "
                  f"{res['rate']:.1f} img/s, main process peak {_gib(res['peak']):.2f} GiB, "
                  f"largest decode worker peak (VmHWM of {res['num_children']} child processes) "
                  f"{_gib(res['workers_peak']):.2f} GiB")
        res = _run_child(args, "read")
        results.append(("read", res))
        print(f"read: one shuffled pass, {res['rate']:.0f} ex/s; one serialized record = "
              f"{res['record_bytes']} B, so the shuffle buffer alone holds "
              f"{SHUFFLE_BUFFER} x {res['record_bytes']} B = "
              f"{_gib(res['buffer_bytes']):.2f} GiB ({res['buffer_bytes'] / 1e9:.2f} GB) "
              f"once full")
        print(f"       RSS samples: {_samples(res)}")
        if args.read_cache:
            res = _run_child(args, "read-cache")
            results.append(("read-cache", res))
            print(f"read-cache: cache=True, pass 1 {res['rates'][0]:.0f} ex/s, pass 2 (from "
                  f"RAM) {res['rates'][1]:.0f} ex/s; the split is "
                  f"{_gib(res['n'] * res['record_bytes']):.2f} GiB serialized")
            print(f"       RSS samples: {_samples(res)}")
        res = _run_child(args, "train")
        results.append(("train", res))
        print(f"train: {res['steps']} streaming LESA steps{' (XLA)' if args.jit else ''}: "
              f"{res['rate']:.0f} ex/s; baseline (same step on one in-memory batch, same "
              f"process, best of a block before and one after) {res['baseline']:.0f} ex/s; ratio streaming / in-memory "
              f"{res['rate'] / res['baseline']:.2f}; last loss {res['loss']:.3f}")
        print(f"       RSS samples: {_samples(res)}")
    finally:
        print()
        header = (f"{'phase':<11} {'N':>8} {'peak RSS GiB':>12} {'before loop':>11} "
                  f"{'throughput':>16} {'store on disk':>14}")
        print(header)
        print("-" * len(header))
        for phase, res in results:
            unit = "img/s" if phase == "extract" else "ex/s"
            store_gib = f"{_gib(res['store_bytes']):.2f} GiB"
            print(f"{phase:<11} {res['n']:>8} {_gib(res['peak']):>12.2f} "
                  f"{_gib(res['before']):>11.2f} {res['rate']:>11.0f} {unit:<4} "
                  f"{store_gib:>14}")
        if os.path.exists(store):
            size = _dir_bytes(os.path.dirname(store))
            if args.keep:
                print(f"\nkept {os.path.dirname(store)} ({_gib(size):.2f} GiB)")
            else:
                print(f"\ndeleting {os.path.dirname(store)} ({_gib(size):.2f} GiB on disk)")
                shutil.rmtree(os.path.dirname(store), ignore_errors=True)


if __name__ == "__main__":
    main()
