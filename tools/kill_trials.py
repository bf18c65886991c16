"""Kill -9 trials: interrupt extraction and training at random moments, resume, compare with an uninterrupted run.

    python tools/kill_trials.py --what extraction --trials 10
    python tools/kill_trials.py --what training --trials 10

Each trial starts the README's command as a subprocess, sends it SIGKILL after a time drawn uniformly
from [0.1, 0.95] x the reference run's wall time (start-up included, so kills land in start-up,
shard/checkpoint writes and the steps between), then re-runs the same command (with ``--resume`` for
training) until it exits 0 and compares the result with the uninterrupted reference:

* extraction: every image id exactly once, the labels and the feature bytes of every record identical
  to the reference store, and ``--verify`` passes;
* training: ``history.csv`` has one row per round, ``final_metrics.json`` equals the reference's within
  float round-off (1e-5 absolute; speeds excluded) and the weights of ``last.keras`` within 1e-5.

It prints one line per trial and a summary (``k of n trials ended identical``); exit code 1 if any trial
differs. The trials use the clip-art store of ``make demo`` (``data/features``), which must exist for
``--what training``; ``--what extraction`` extracts ``--limit`` images of each split into a temporary
directory.
"""

import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow is imported (to read the results)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEED_KEYS = ("examples_per_sec",)


def _run(cmd, kill_after=None):
    """Run ``cmd``; with ``kill_after`` seconds, SIGKILL it then. Returns (exit code, seconds, killed)."""
    # PYTHONPATH: this checkout's mll_tf, even where another checkout is pip-installed (editable)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONHASHSEED="0",
               PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    killed = False
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        killed = True
    if not killed and proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.read().decode()[-2000:]}")
    return proc.returncode, time.perf_counter() - t0, killed


def _store_records(store_dir):
    """{split: {image_id: tf.train.Example}} of a store (every shard read to its end), and the duplicate ids."""
    import glob

    sys.path.insert(0, ROOT)
    from mll_tf.cli._flags import import_tensorflow_quietly

    import_tensorflow_quietly()
    import tensorflow as tf  # noqa: WPS433

    from mll_tf.data.schema import IMAGE_ID_KEY  # noqa: WPS433

    out, dups = {}, []
    for split in sorted(os.listdir(store_dir)):
        shards = sorted(glob.glob(os.path.join(store_dir, split, "*.tfrecord*")))
        records = {}
        for raw in tf.data.TFRecordDataset(shards, compression_type="ZLIB"):
            # compared as parsed protos: the byte order of a proto map is not fixed across processes
            example = tf.train.Example.FromString(raw.numpy())
            image_id = example.features.feature[IMAGE_ID_KEY].bytes_list.value[0].decode()
            if image_id in records:
                dups.append((split, image_id))
            records[image_id] = example
        out[split] = records
    return out, dups


def extraction_trials(args, rng):
    work = tempfile.mkdtemp(prefix="kill_trials_extract_")
    py = sys.executable

    def cmd(out_dir):
        return [py, "extract/build_tfrecords.py", "--dataset", "openclipart", "--backbone", "efficientnet_lite0",
                "--out-dir", out_dir, "--limit", str(args.limit), "--batch-size", "16",
                "--max-shard-mb", "1", "--noprogress"]

    ref_dir = os.path.join(work, "reference")
    _, wall, _ = _run(cmd(ref_dir))
    store = lambda d: os.path.join(d, "openclipart", "efficientnet_lite0_224")  # noqa: E731
    reference, dups = _store_records(store(ref_dir))
    assert not dups, dups
    n_ref = sum(len(r) for r in reference.values())
    print(f"reference: {n_ref} records in {wall:.1f} s")
    same = 0
    for t in range(args.trials):
        out_dir = os.path.join(work, f"trial{t}")
        at = rng.uniform(0.1, 0.95) * wall
        _, _, killed = _run(cmd(out_dir), kill_after=at)
        _run(cmd(out_dir))                          # the same command again: it resumes
        got, dups = _store_records(store(out_dir))
        verify = subprocess.run(cmd(out_dir) + ["--verify"], cwd=ROOT, capture_output=True,
                                env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")).returncode
        ok = not dups and got == reference and verify == 0
        same += ok
        if not ok and set(got) == set(reference):
            for split in reference:
                bad = [i for i in reference[split] if got[split].get(i) != reference[split][i]]
                if bad:
                    print(f"  {split}: {len(bad)} records differ, e.g. {bad[:3]}")
        print(f"trial {t + 1}: kill at {at:5.1f} s ({'killed' if killed else 'finished first'}), "
              f"{sum(len(r) for r in got.values())} records, {len(dups)} duplicates, verify exit {verify}: "
              f"{'identical' if ok else 'DIFFERENT'}", flush=True)
        shutil.rmtree(out_dir, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    return same


def _final(run_dir):
    metrics = json.load(open(os.path.join(run_dir, "final_metrics.json")))
    rows = list(csv.DictReader(open(os.path.join(run_dir, "history.csv"))))
    sys.path.insert(0, ROOT)
    from mll_tf.cli._flags import import_tensorflow_quietly

    import_tensorflow_quietly()
    import keras  # noqa: WPS433
    import mll_tf.tasks  # noqa: F401,WPS433 (registers the models' classes for loading)

    weights = keras.models.load_model(os.path.join(run_dir, "last.keras")).get_weights()
    return metrics, [r["epoch"] for r in rows], weights


def training_trials(args, rng):
    work = tempfile.mkdtemp(prefix="kill_trials_train_")
    py = sys.executable
    features = os.path.join(ROOT, "data", "features")
    if not os.path.isdir(os.path.join(features, "openclipart")):
        sys.exit("error: run `make extract` first (the clip-art store in data/features is missing)")

    def cmd(run_dir, resume):
        c = [py, "experiments/train.py", "--method", "lesa", "--dataset", "openclipart", "--features-root",
             features, "--run-dir", run_dir, "--epochs", str(args.epochs), "--backup-every",
             str(args.backup_every), "--noprogress", "--seed", "0"]
        return c + (["--resume"] if resume else [])

    ref_dir = os.path.join(work, "reference")
    _, wall, _ = _run(cmd(ref_dir, False))
    ref_metrics, ref_rounds, ref_weights = _final(ref_dir)
    print(f"reference: {len(ref_rounds)} rounds in {wall:.1f} s, val_zsl_mAP {ref_metrics.get('val_zsl_mAP')}")
    same = 0
    for t in range(args.trials):
        run_dir = os.path.join(work, f"trial{t}")
        at = rng.uniform(0.1, 0.95) * wall
        _, _, killed = _run(cmd(run_dir, False), kill_after=at)
        if os.path.isfile(os.path.join(run_dir, "config.yaml")):
            _run(cmd(run_dir, True))
        else:                                   # killed before the run directory was written: start again
            _run(cmd(run_dir, False) + ["--overwrite"])
        metrics, rounds, weights = _final(run_dir)
        diffs = {k: abs(metrics[k] - ref_metrics[k]) for k in ref_metrics if k not in SPEED_KEYS}
        dm = max(diffs.values())
        if dm > 1e-5:
            print("  metrics that differ:", {k: (ref_metrics[k], metrics[k]) for k, d in diffs.items() if d > 1e-5})
        dw = max(float(np.max(np.abs(a - b))) for a, b in zip(weights, ref_weights))
        ok = rounds == ref_rounds and set(metrics) == set(ref_metrics) and dm <= 1e-5 and dw <= 1e-5
        same += ok
        print(f"trial {t + 1}: kill at {at:5.1f} s ({'killed' if killed else 'finished first'}), rounds "
              f"{','.join(rounds)}, max |metric diff| {dm:.1e}, max |weight diff| {dw:.1e}: "
              f"{'identical' if ok else 'DIFFERENT'}", flush=True)
        shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    return same


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--what", choices=("extraction", "training"), required=True)
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    p.add_argument("--limit", type=int, default=200, help="extraction: images per split")
    p.add_argument("--epochs", type=int, default=2, help="training: rounds")
    p.add_argument("--backup-every", type=int, default=50, help="training: steps between backups")
    args = p.parse_args()
    if args.trials < 1:
        p.error("--trials must be >= 1")
    rng = random.Random(args.seed)
    same = (extraction_trials if args.what == "extraction" else training_trials)(args, rng)
    print(f"{args.what}: {same} of {args.trials} trials ended identical to the uninterrupted run")
    sys.exit(0 if same == args.trials else 1)


if __name__ == "__main__":
    main()
