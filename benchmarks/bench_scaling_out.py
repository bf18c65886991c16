#!/usr/bin/env python
"""Sharded extraction with 1 and 2 local workers, and the reader of the merged store.

    python benchmarks/bench_scaling_out.py [--num-images 192] [--input-size 224]

On generated clip-art (SVG rendered by cairosvg, the openclipart job) and
efficientnet_lite0 (random weights: the same computation as the ImageNet
ones, nothing downloaded), prints:

  1. one worker: ``extract/build_tfrecords.py`` on every image (the
     baseline): its own img/s (the extraction loop, after start-up) and the
     wall time of the command;
  2. two workers (``--num-workers 2 --worker-index 0|1``) started together
     on this machine, then ``--finalize``: each worker's img/s, the wall
     time until both are done, the ratio of the aggregate rate to 1.;
  3. the reader (``make_dataset``, batch 64, 3 passes) of the merged store:
     records/s and MiB/s of float16 features, for the whole split and for
     each worker's half (``input_shard``), and the ratio;
  4. bytes per image on disk (ZLIB level 1) and uncompressed.

    python benchmarks/bench_scaling_out.py --training [--train-records 2048] [--train-batch-size 128]

instead trains ``--method ignore`` (a linear head: the step is cheap, so this
measures the distribution overhead more than compute) on a generated store of
float16 features [49, 256] in 16 shard files: one process (the baseline) vs
two ``MultiWorkerMirroredStrategy`` workers on 127.0.0.1, each reading its own
files; prints examples/s of the second round (``history.csv``) and the ratio.

Every number comes from this machine; when it is shared with other jobs the
two-worker figures measure contention as much as scaling.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _cmd(common, *extra):
    return [sys.executable, os.path.join(ROOT, "extract", "build_tfrecords.py"), *common, *extra]


def _rate(text):
    m = re.search(r"([0-9.]+) img/s", text)
    return float(m.group(1)) if m else float("nan")


def _train_task(features_root, run_dir, batch_size, steps):
    from mll_tf.tasks import build_task

    return build_task(dict(method="ignore", dataset="toy", backbone="efficientnet_lite0", input_size=8,
                           features_root=features_root, run_dir=run_dir, batch_size=batch_size,
                           max_steps=2 * steps, eval_every=steps, learning_rate=0.01, shuffle_buffer=256,
                           log_every=steps), task={})


def _train_worker(arg):
    """One worker of the two-worker training phase."""
    import json

    spec = json.loads(arg)
    os.environ["TF_CONFIG"] = json.dumps(spec["tf_config"])
    from mll_tf.training.runner import fit_task

    fit_task(_train_task(spec["features"], spec["run_dir"], spec["batch_size"], spec["steps"]), resume=True,
             verbose=0)


def _examples_per_sec(run_dir):
    import csv

    with open(os.path.join(run_dir, "history.csv")) as f:
        rows = list(csv.DictReader(f))
    return float(rows[-1]["examples_per_sec"])


def training(args):
    import json
    import socket

    import numpy as np

    from mll_tf.data.feature_store import FeatureStoreWriter, Manifest

    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("TF_CONFIG", None)
    names = ["cat", "dog", "car", "tree", "boat", "house", "bird", "fish"]
    steps = args.train_records // args.train_batch_size
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        features = os.path.join(tmp, "features")
        for split, n in (("train", args.train_records), ("val", 256), ("test", 64)):
            man = Manifest(dataset="toy", split=split, backbone="efficientnet_lite0", weights="none",
                           input_size=[8, 8], preprocessing="synthetic", feature_shape=[49, 256],
                           feature_grid=[7, 7], feature_dtype="float16", label_names=names)
            per_shard = max(1, n // 16)
            with FeatureStoreWriter(os.path.join(features, "toy", "efficientnet_lite0_8", split), man) as w:
                for i in range(n):
                    y = (rng.random(len(names)) < 0.3).astype(np.int8)
                    x = np.maximum(rng.normal(size=(49, 256)) - 0.8, 0).astype(np.float16)
                    w.write(f"{split}/{i:05d}", x, y)
                    if split == "train" and (i + 1) % per_shard == 0 and i + 1 < n:
                        w._finish_shard()
        from mll_tf.training.runner import fit_task

        one = os.path.join(tmp, "one")
        fit_task(_train_task(features, one, args.train_batch_size, steps), verbose=0)
        rate1 = _examples_per_sec(one)
        socks = [socket.socket() for _ in range(2)]
        for s_ in socks:
            s_.bind(("127.0.0.1", 0))
        ports = [s_.getsockname()[1] for s_ in socks]
        for s_ in socks:
            s_.close()
        two = os.path.join(tmp, "two")
        procs = []
        for i in range(2):
            spec = {"tf_config": {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                  "task": {"type": "worker", "index": i}},
                    "features": features, "run_dir": two, "batch_size": args.train_batch_size, "steps": steps}
            procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), "--train-worker",
                                           json.dumps(spec)], env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
        outs = [q.communicate()[0] for q in procs]
        if any(q.returncode for q in procs):
            sys.exit("\n".join(o[-3000:] for o in outs))
        rate2 = _examples_per_sec(two)
    print(f"training --method ignore, features 49x256 float16, {args.train_records} training records in 16 shard "
          f"files, global batch {args.train_batch_size}, round 2 of 2 ({steps} steps); CPUs visible: {os.cpu_count()}")
    print(f"one process:            {rate1:8.0f} examples/s")
    print(f"two workers (127.0.0.1): {rate2:8.0f} examples/s; ratio to one process {rate2 / rate1:.2f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--training", action="store_true", help="the training phase instead of extraction/reading")
    p.add_argument("--train-records", type=int, default=2048)
    p.add_argument("--train-batch-size", type=int, default=128)
    p.add_argument("--train-worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--num-images", type=int, default=192)
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-shard-mb", type=float, default=2.0)
    args = p.parse_args(argv)
    if args.train_worker:
        return _train_worker(args.train_worker)
    if args.training:
        return training(args)

    from tests.helpers import make_clipart_tree

    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("TF_CONFIG", None)
    with tempfile.TemporaryDirectory() as tmp:
        make_clipart_tree(os.path.join(tmp, "svg"), n=args.num_images, broken=False)
        common = ["--dataset", "openclipart", "--data-root", os.path.join(tmp, "svg"), "--min-count", "1",
                  "--dataset-options", "test_percent=0,val_percent=0", "--splits", "train",
                  "--backbone", "efficientnet_lite0", "--weights", "none", "--input-size", str(args.input_size),
                  "--batch-size", str(args.batch_size), "--workers", "1", "--max-shard-mb", str(args.max_shard_mb),
                  "--noprogress"]
        # 1. one worker
        t0 = time.perf_counter()
        one = subprocess.run(_cmd(common, "--out-dir", os.path.join(tmp, "one")), env=env, capture_output=True,
                             text=True)
        wall1 = time.perf_counter() - t0
        if one.returncode:
            sys.exit(one.stdout + one.stderr)
        rate1 = _rate(one.stdout)
        # 2. two workers at once, then finalize
        out2 = os.path.join(tmp, "two")
        t0 = time.perf_counter()
        procs = [subprocess.Popen(_cmd(common, "--out-dir", out2, "--num-workers", "2", "--worker-index", str(i)),
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for i in range(2)]
        outs = [q.communicate()[0] for q in procs]
        wall2 = time.perf_counter() - t0
        if any(q.returncode for q in procs):
            sys.exit("\n".join(outs))
        fin = subprocess.run(_cmd(common, "--out-dir", out2, "--num-workers", "2", "--finalize"), env=env,
                             capture_output=True, text=True)
        if fin.returncode:
            sys.exit(fin.stdout + fin.stderr)
        rates2 = [_rate(o) for o in outs]

        from mll_tf.data.feature_store import input_shard, make_dataset, read_manifest

        split_dir = os.path.join(out2, "openclipart", f"efficientnet_lite0_{args.input_size}", "train")
        man = read_manifest(split_dir)
        n = man.num_examples
        raw = 2 * man.feature_shape[0] * man.feature_shape[1]   # float16
        disk = sum(s["num_bytes"] for s in man.shards)

        def read(shard=None):
            def ds():
                if shard is None:
                    return make_dataset(split_dir, 64, repeat=False)
                with input_shard(*shard):
                    return make_dataset(split_dir, 64, repeat=False)
            for _ in ds():   # warm-up pass (tracing, page cache)
                pass
            t = time.perf_counter()
            count = 0
            for _ in range(3):
                for x, _y in ds():
                    count += int(x.shape[0])
            return count / (time.perf_counter() - t)

        read_all = read()
        read_half = [read((2, i)) for i in range(2)]

    print(f"images: {args.num_images} generated clip-art SVGs, efficientnet_lite0 at {args.input_size}px "
          f"(random weights), features {man.feature_shape[0]}x{man.feature_shape[1]} float16, "
          f"{len(man.shards)} shards after merge; CPUs visible: {os.cpu_count()}")
    print(f"1. one worker:  {rate1:7.1f} img/s in the extraction loop; {wall1:6.1f} s wall "
          f"({args.num_images / wall1:.1f} img/s with start-up)")
    print(f"2. two workers: {rates2[0]:7.1f} + {rates2[1]:.1f} img/s in their loops; both done in {wall2:6.1f} s "
          f"wall ({args.num_images / wall2:.1f} img/s with start-up); aggregate / one worker: "
          f"{(args.num_images / wall2) / (args.num_images / wall1):.2f} (wall), "
          f"{sum(rates2) / rate1:.2f} (loops)")
    print(f"3. reader: {read_all:8.0f} records/s = {read_all * raw / 2**20:7.1f} MiB/s of features (whole split); "
          f"one worker's half: {read_half[0]:.0f} and {read_half[1]:.0f} records/s "
          f"(ratio to whole: {read_half[0] / read_all:.2f}, {read_half[1] / read_all:.2f})")
    print(f"4. bytes per image: {disk / n:,.0f} on disk (ZLIB level 1), {raw:,} uncompressed "
          f"(ratio {disk / n / raw:.2f}); {n} records")


if __name__ == "__main__":
    main()
