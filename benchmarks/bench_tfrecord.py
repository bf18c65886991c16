"""Benchmark the TFRecord feature store: write and read speed, with and without ZLIB.

Writes synthetic ReLU-like sparse feature maps (about 80% zeros, float16) with
~1000 labels through ``FeatureStoreWriter`` and reads them back with
``make_dataset`` (interleave -> batch -> parse -> prefetch). For each shape it
prints examples/s and the ratios against the uncompressed store written and
read in the same process, plus the compression ratio (bytes on disk / bytes
of the uncompressed store). Reads are the best of two passes (the first
one also traces the parse function); writes include validation,
serialization, shard renames, fsyncs and manifest saves. It also times
parse-then-batch on the uncompressed and ZLIB-1 stores to compare with the
batch-then-parse pipeline. Numbers are noisy on a shared 2-core machine.

Default shapes: the clip-art backbone map 49 x 1280 and NUS-WIDE's VGG19
conv5_4 map 196 x 512 (docs/lesa.md §1).

Usage:
    python benchmarks/bench_tfrecord.py
    python benchmarks/bench_tfrecord.py --num-examples 4000 --shape 196x512 --levels none,1,6
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from mll_tf.data import schema  # noqa: E402
from mll_tf.data.feature_store import FeatureStoreWriter, Manifest, make_dataset  # noqa: E402


def _parse_shape(text):
    try:
        r, d = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape must look like 196x512, got {text!r}")
    return r, d


def _pool(shape, num_labels, sparsity, size, seed):
    """``size`` distinct ReLU-like maps (float16) and label vectors (int8)."""
    rng = np.random.default_rng(seed)
    # Threshold so that P(z > t) = 1 - sparsity for z ~ N(0, 1).
    t = float(np.quantile(rng.standard_normal(200_000), sparsity))
    feats = np.maximum(rng.standard_normal((size,) + shape, dtype=np.float32) - t, 0)
    feats = feats.astype(np.float16)
    labels = rng.choice(np.array([1, 0, -1], np.int8), size=(size, num_labels),
                        p=[0.02, 0.88, 0.10])
    return feats, labels


def _write(split_dir, n, feats, labels, compression, level, max_shard_bytes):
    manifest = Manifest(dataset="bench", split="train", backbone="synthetic",
                        feature_shape=list(feats.shape[1:]), feature_dtype="float16",
                        label_names=[f"c{i}" for i in range(labels.shape[1])],
                        compression=compression)
    t0 = time.perf_counter()
    with FeatureStoreWriter(split_dir, manifest, max_shard_bytes=max_shard_bytes,
                            compression_level=level, overwrite=True) as w:
        for i in range(n):
            k = i % len(feats)
            w.write(f"img{i:07d}", feats[k], labels[k])
    dt = time.perf_counter() - t0
    m = w.manifest
    return dt, sum(s["num_bytes"] for s in m.shards), len(m.shards)


def _read(split_dir, batch_size, passes=2):
    """Best of ``passes`` full passes (the first one also traces and warms up)."""
    ds = make_dataset(split_dir, batch_size)
    best = None
    for _ in range(passes):
        t0 = time.perf_counter()
        n = sum(int(feats.shape[0]) for feats, _ in ds)
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    return best, n


def _read_parse_then_batch(split_dir, batch_size, spec, compression):
    """The other layout: parse each record, then batch (for comparison)."""
    files = sorted(tf.io.gfile.glob(os.path.join(split_dir, "*.tfrecord")))

    def read_shard(path):
        return tf.data.TFRecordDataset(path, compression_type=compression or None)

    def parse_one(serialized):
        return schema.parse_examples(serialized, spec)["features"]

    ds = tf.data.Dataset.from_tensor_slices(files).interleave(
        read_shard, cycle_length=max(1, min(len(files), 4)),
        num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(parse_one, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    best = None
    for _ in range(2):
        t0 = time.perf_counter()
        n = sum(int(b.shape[0]) for b in ds)
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    return best, n


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-examples", type=int, default=1200,
                   help="examples written per (shape, compression) case")
    p.add_argument("--shape", type=_parse_shape, action="append",
                   help="feature map RxD, repeatable (default: 49x1280 and 196x512)")
    p.add_argument("--num-labels", type=int, default=1000)
    p.add_argument("--levels", default="none,1,6",
                   help="comma-separated: 'none' (uncompressed baseline) and ZLIB levels")
    p.add_argument("--sparsity", type=float, default=0.8, help="fraction of zeros")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-shard-mb", type=float, default=16.0)
    p.add_argument("--workdir", default=None, help="default: a temp dir, removed at the end")
    args = p.parse_args(argv)
    shapes = args.shape or [(49, 1280), (196, 512)]
    levels = [v.strip().lower() for v in args.levels.split(",") if v.strip()]
    if "none" not in levels:
        levels = ["none"] + levels

    root = args.workdir or tempfile.mkdtemp(prefix="bench_tfrecord_")
    print(f"TF {tf.__version__}, {os.cpu_count()} CPUs, {args.num_examples} examples per case, "
          f"{args.num_labels} labels, sparsity {args.sparsity:.2f}, float16, "
          f"batch {args.batch_size}, shards <= {args.max_shard_mb:g} MB")
    header = (f"{'shape':>9} {'codec':>7} {'write ex/s':>10} {'x none':>7} {'read ex/s':>10} "
              f"{'x none':>7} {'MB':>8} {'shards':>6} {'size/none':>9}")
    try:
        for shape in shapes:
            feats, labels = _pool(shape, args.num_labels, args.sparsity, 64, seed=0)
            print()
            print(header)
            base = None
            for level in levels:
                split_dir = os.path.join(root, f"{shape[0]}x{shape[1]}_{level}")
                compression = "" if level == "none" else "ZLIB"
                zlevel = None if level == "none" else int(level)
                wt, nbytes, nshards = _write(split_dir, args.num_examples, feats, labels,
                                             compression, zlevel,
                                             int(args.max_shard_mb * 2**20))
                rt, n = _read(split_dir, args.batch_size)
                assert n == args.num_examples
                w_rate, r_rate = args.num_examples / wt, args.num_examples / rt
                if base is None:
                    base = (w_rate, r_rate, nbytes)
                codec = "none" if level == "none" else f"ZLIB-{level}"
                print(f"{shape[0]:>4}x{shape[1]:<4} {codec:>7} {w_rate:>10.0f} "
                      f"{w_rate / base[0]:>7.2f} {r_rate:>10.0f} {r_rate / base[1]:>7.2f} "
                      f"{nbytes / 2**20:>8.1f} {nshards:>6} {nbytes / base[2]:>9.3f}")
                if level in ("none", "1"):
                    spec = schema.FeatureSpec(shape, "float16", args.num_labels)
                    pt, n = _read_parse_then_batch(split_dir, args.batch_size, spec,
                                                   compression)
                    assert n == args.num_examples
                    p_rate = args.num_examples / pt
                    print(f"{'':>9} {'':>7} parse-then-batch read: {p_rate:.0f} ex/s "
                          f"= {p_rate / r_rate:.2f} x batch-then-parse")
                shutil.rmtree(split_dir)
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
