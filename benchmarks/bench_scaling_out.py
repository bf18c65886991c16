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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-images", type=int, default=192)
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-shard-mb", type=float, default=2.0)
    args = p.parse_args(argv)

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
