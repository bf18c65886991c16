"""README table: plain CAM classifier, Puzzle-CAM and OASS (Max, cMax, cTopk, cTopk-w) on scattered Fashion-MNIST.

Each row fine-tunes EfficientNet-Lite0 (real ImageNet weights, offline) end
to end with ``experiments/train.py --finetune`` on the
``fashion_mnist_scatter`` composites, then evaluates the last round's best
model on the test composites with ``evaluation/evaluate.py``. Reported per
method, over the seeds as mean (min-max): test mAP and the keypoint
localisation accuracy (share of (image, present class) pairs whose keypoint
lies in a box of that class) of the method's own strategy (the CAM and
Puzzle-CAM rows: of cMax), plus the accuracy of all four strategies on the
method's CAMs. Fractions in [0, 1].

Usage (``make oass-table``)::

    python benchmarks/oass_table.py --seeds 0 1 2 --epochs 4

Writes ``<runs-root>/oass_table.json`` and ``oass_table.md`` and prints the
table with the exact settings. Runs already finished in ``<runs-root>`` are
reused (``--resume``).
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = [("cam", "cam", None), ("puzzle_cam", "puzzle_cam", None), ("oass_max", "oass", "max"),
           ("oass_cmax", "oass", "cmax"), ("oass_ctopk", "oass", "ctopk"), ("oass_ctopk_w", "oass", "ctopk_w")]
STRATS = ("max", "cmax", "ctopk", "ctopk_w")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=3e-4)
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--num-train", type=int, default=2048)
    p.add_argument("--num-val", type=int, default=256)
    p.add_argument("--num-test", type=int, default=1000)
    p.add_argument("--canvas", type=int, default=128)
    p.add_argument("--methods", nargs="+", default=[m[0] for m in METHODS],
                   choices=[m[0] for m in METHODS])
    p.add_argument("--runs-root", default="runs/oass_table")
    p.add_argument("--cache-dir", default="data/fashion_mnist_scatter")
    p.add_argument("--extra", default="", help="more train.py flags for every run")
    return p.parse_args(argv)


def _run(cmd):
    print("+", " ".join(cmd), flush=True)
    out = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True)
    if out.returncode != 0:
        sys.stderr.write(out.stdout[-2000:] + out.stderr[-4000:])
        raise SystemExit(f"failed ({out.returncode}): {' '.join(cmd)}")
    return out.stdout


def run_one(a, name, method, kp, seed):
    run = os.path.join(a.runs_root, f"{name}_s{seed}")
    opts = (f"num_train={a.num_train},num_val={a.num_val},num_test={a.num_test},canvas={a.canvas},"
            f"cache_dir={a.cache_dir}")
    cmd = [sys.executable, "experiments/train.py", "--method", method, "--dataset", "fashion_mnist_scatter",
           "--finetune", "--dataset-options", opts, "--input-size", str(a.input_size), "--run-dir", run,
           "--epochs", str(a.epochs), "--batch-size", str(a.batch_size), "--learning-rate", str(a.learning_rate),
           "--seed", str(seed), "--monitor", "val_mAP", "--cam-images", "0", "--no-progress", "--resume"]
    if kp:
        cmd += ["--keypoints", kp]
    cmd += a.extra.split()
    summary = os.path.join(run, "eval_test", "summary.json")
    best = os.path.join(run, "best.keras")
    done = os.path.isfile(os.path.join(run, "final_metrics.json")) and os.path.isfile(summary) and \
        os.path.getmtime(summary) > os.path.getmtime(best)
    if not done:   # a finished and evaluated run is reused as it is
        _run(cmd)
        _run([sys.executable, "evaluation/evaluate.py", "--run", run])
    with open(summary) as f:
        res = json.load(f)["results"]
    hist = os.path.join(run, "history.csv")
    return {"mAP": res["mAP"], **{f"loc_{s}": res[f"loc_{s}"] for s in STRATS},
            "own": res[f"loc_{kp or 'cmax'}"], "history": open(hist).read()}


def fmt(vals):
    v = np.asarray(vals, float)
    return f"{v.mean():.4f}" if len(v) == 1 else f"{v.mean():.4f} ({v.min():.4f}-{v.max():.4f})"


def main(argv=None):
    a = parse_args(argv)
    os.makedirs(a.runs_root, exist_ok=True)
    table = {}
    for name, method, kp in METHODS:
        if name not in a.methods:
            continue
        table[name] = [run_one(a, name, method, kp, s) for s in a.seeds]
    lines = [f"fashion_mnist_scatter (canvas {a.canvas}, {a.num_train}/{a.num_val}/{a.num_test} composites), "
             f"EfficientNet-Lite0 fine-tuned at {a.input_size} px, {a.epochs} epochs of batch {a.batch_size}, "
             f"adam lr {a.learning_rate}, seeds {a.seeds} ({len(a.seeds)} seed(s): mean (min-max)); "
             f"fractions in [0, 1]", "",
             "| method | test mAP | loc. acc. (own keypoints) | Max | cMax | cTopk | cTopk-w |",
             "|---|---|---|---|---|---|---|"]
    for name, rows in table.items():
        cells = [fmt([r["mAP"] for r in rows]), fmt([r["own"] for r in rows])]
        cells += [fmt([r[f"loc_{s}"] for r in rows]) for s in STRATS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(a.runs_root, "oass_table.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(a.runs_root, "oass_table.json"), "w") as f:
        json.dump({"settings": vars(a), "runs": table}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
