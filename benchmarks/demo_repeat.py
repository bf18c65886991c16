"""The main job N times: the README's train + evaluate commands in fresh run directories, mean (min-max).

    python benchmarks/demo_repeat.py                      # seeds 0..4, the `make demo` commands
    python benchmarks/demo_repeat.py --train-args="--selection zsl_holdout"
    python benchmarks/demo_repeat.py --same-seed          # 5 runs of the identical command (seed 0)
    python benchmarks/demo_repeat.py --evaluate-only      # re-read/re-evaluate the existing run folders

Each run is (the feature store must exist: ``make extract``)::

    python experiments/train.py --method lesa --dataset openclipart --features-root data/features \\
        --run-dir <runs-root>/seed<s> --epochs 8 --seed <s> [--train-args]
    python evaluation/evaluate.py --run <runs-root>/seed<s> --baselines [--eval-args]

A run folder is deleted before its run (fresh). Training in this project is a
pure function of ``--seed`` on one machine, so the range over runs of the
same command is a range over CPU round-off only (0 when bit-identical); the
default varies the seed (0..N-1), which is the spread a user can expect.
Prints, for every row of ``evaluate.py``'s ``summary.json`` (LESA, its
``+cal``/``+zscore`` variants, the baselines), the seven test numbers and the
hubness figures as mean (min-max) over the runs, fractions in [0, 1]; writes
``<runs-root>/demo_repeat.json`` and a Markdown table
``<runs-root>/demo_repeat.md``.
"""

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

COLUMNS = [("zsl", "mAP"), ("zsl", "F1@3"), ("zsl", "F1@5"), ("gzsl", "mAP"), ("gzsl", "F1@3"),
           ("gzsl", "F1@5"), ("seen", "mAP")]
HEAD = ["ZSL mAP", "ZSL F1@3", "ZSL F1@5", "GZSL mAP", "GZSL F1@3", "GZSL F1@5", "seen mAP"]


def _run(cmd, log):
    with open(log, "a") as f:
        f.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
        f.flush()
        t0 = time.time()
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
        return rc, time.time() - t0


def _fmt(vals):
    if not vals:
        return "-"
    m = sum(vals) / len(vals)
    return f"{m:.4f} ({min(vals):.4f}–{max(vals):.4f})"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=5, help="number of runs")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0..n-1)")
    p.add_argument("--same-seed", action="store_true", help="every run with seed 0 (the identical command)")
    p.add_argument("--runs-root", default="runs/demo_repeat")
    p.add_argument("--features-root", default="data/features")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--train-args", default="", help="extra experiments/train.py flags, one string")
    p.add_argument("--eval-args", default="", help="extra evaluation/evaluate.py flags, one string")
    p.add_argument("--evaluate-only", action="store_true", help="do not train; evaluate the existing folders")
    p.add_argument("--summaries-only", action="store_true", help="only read the existing summary.json files")
    p.add_argument("--python", default=sys.executable)
    a = p.parse_args(argv)

    if a.n < 1:
        print("error: --n must be >= 1", file=sys.stderr)
        return 2
    seeds = ([int(s) for s in a.seeds.split(",")] if a.seeds else
             [0] * a.n if a.same_seed else list(range(a.n)))
    os.makedirs(a.runs_root, exist_ok=True)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    train_py = os.path.join(here, "experiments", "train.py")
    eval_py = os.path.join(here, "evaluation", "evaluate.py")
    runs, times = [], []
    for i, s in enumerate(seeds):
        name = f"run{i}_seed{s}" if a.same_seed else f"seed{s}"
        run_dir = os.path.join(a.runs_root, name)
        log = os.path.join(a.runs_root, name + ".log")
        runs.append(run_dir)
        if a.summaries_only:
            continue
        t_train = 0.0
        if not a.evaluate_only:
            if os.path.exists(run_dir):
                shutil.rmtree(run_dir)
            if os.path.exists(log):
                os.remove(log)
            train = [a.python, train_py, "--method", "lesa", "--dataset", "openclipart", "--features-root",
                     a.features_root, "--run-dir", run_dir, "--epochs", str(a.epochs), "--seed", str(s)]
            rc, t_train = _run(train + shlex.split(a.train_args), log)
            if rc:
                print(f"error: training {run_dir} failed (exit {rc}); see {log}", file=sys.stderr)
                return 1
        rc, t_eval = _run([a.python, eval_py, "--run", run_dir, "--baselines"] + shlex.split(a.eval_args), log)
        if rc:
            print(f"error: evaluating {run_dir} failed (exit {rc}); see {log}", file=sys.stderr)
            return 1
        times.append((t_train, t_eval))
        print(f"{run_dir}: train {t_train:.0f} s, evaluate {t_eval:.0f} s", flush=True)

    summaries = []
    for r in runs:
        with open(os.path.join(r, "eval_test", "summary.json")) as f:
            summaries.append(json.load(f))
    rows = list(dict.fromkeys(k for s in summaries for k in s["results"]))
    table, lines = {}, []
    lines.append(f"{len(runs)} runs ({', '.join(os.path.basename(r) for r in runs)}); train args: "
                 f"{a.train_args or '(none)'}; eval args: {a.eval_args or '(none)'}")
    lines.append("")
    lines.append("| row | " + " | ".join(HEAD) + " |")
    lines.append("|---" * (len(HEAD) + 1) + "|")
    for row in rows:
        cells = []
        for st, m in COLUMNS:
            vals = [s["results"][row][st][m] for s in summaries if row in s["results"] and m in s["results"][row][st]]
            table.setdefault(row, {})[f"{st}_{m}"] = vals
            cells.append(_fmt(vals))
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("hubness of the unseen labels (ZSL scores), mean (min–max):")
    hub_rows = list(dict.fromkeys(k for s in summaries for k in s.get("hubness", {})))
    hub = {}
    for row in hub_rows:
        keys = [k for k in summaries[0].get("hubness", {}).get(row, {}) if k.startswith("skew@")] + ["top1_share"]
        parts = []
        for k in keys:
            vals = [s["hubness"][row][k] for s in summaries if row in s.get("hubness", {})]
            hub.setdefault(row, {})[k] = vals
            parts.append(f"{k} {_fmt(vals)}")
        tops = [s["hubness"][row]["top1_label"] for s in summaries if row in s.get("hubness", {})]
        hub[row]["top1_label"] = tops
        lines.append(f"  {row}: " + "; ".join(parts) + f"; most frequent top-1: {', '.join(map(str, tops))}")
    gam = {row: [s["gamma"][row] for s in summaries if row in s.get("gamma", {})]
           for row in dict.fromkeys(k for s in summaries for k in s.get("gamma", {}))}
    if gam:
        lines.append("gamma (validation, pseudo-unseen): " +
                     "; ".join(f"{r} {_fmt(v)}" for r, v in gam.items()))
    if times:
        tt = [t for t, _ in times]
        lines.append(f"wall time per run: train {sum(tt) / len(tt):.0f} ({min(tt):.0f}–{max(tt):.0f}) s, evaluate "
                     f"{sum(e for _, e in times) / len(times):.0f} s (shared machine)")
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(a.runs_root, "demo_repeat.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(a.runs_root, "demo_repeat.json"), "w") as f:
        json.dump({"runs": runs, "seeds": seeds, "train_args": a.train_args, "eval_args": a.eval_args,
                   "results": table, "hubness": hub, "gamma": gam, "times": times}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
