#!/usr/bin/env python
"""IMCL vs the logistic baseline under one protocol (the README table).

    python extract/build_tfrecords.py --dataset fashion_mnist_grid   # once
    python extract/build_tfrecords.py --dataset openclipart          # once (make demo does it)
    python benchmarks/imcl_vs_logistic.py                             # ~25 min on 2 CPU cores

For every setting (fashion_mnist_grid with RPS and FPC simulations; the
clip-art tags, which are naturally incomplete, as they are) and seed:

* ``logistic``: the IMCL baseline (linear classifier on pooled features,
  unknown labels weight 0, loss divided by the number of observed entries),
  ``--epochs`` epochs;
* ``imcl``: IMCL started from that logistic classifier, as the reference starts
  from a trained classifier (docs/imcl.md §4), trained ``--epochs`` more
  epochs with lambda_c, lambda_f calibrated from the loss ratios;
* ``logistic 2x``: the logistic baseline trained for twice the epochs, so that
  IMCL is compared with a baseline that had as many updates.

It prints the test mAP (mean and min–max over seeds), the per-epoch training
cost ratio IMCL / logistic (examples per second measured by the trainers),
and writes ``<out>/results.json`` and ``results.md``.
"""

import argparse
import csv
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", default="fashion_mnist_grid:rps:0.5,fashion_mnist_grid:fpc:200,openclipart:none")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--alpha-colab", type=float, default=1.0)
    p.add_argument("--alpha-feature", type=float, default=0.5)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--features-root", default="data/features")
    p.add_argument("--out", default="runs/imcl_vs_logistic")
    p.add_argument("--imcl-prefilter", type=int, default=0,
                   help="IMCL runs with the OMP candidate pre-filter M (0: exact OMP); the logistic runs are "
                        "shared, the IMCL runs go to imcl_m<M>_<dtype>")
    p.add_argument("--imcl-prefilter-dtype", default="float32", choices=["float32", "bfloat16"])
    return p.parse_args(argv)


def _rate(run_dir):
    rows = list(csv.DictReader(open(os.path.join(run_dir, "history.csv"))))
    return sum(float(r["examples_per_sec"]) for r in rows) / len(rows)


def main(argv=None):
    args = parse_args(argv)
    import numpy as np
    from mll_tf.metrics.report import partial_label_report
    from mll_tf.tasks import build_task
    from mll_tf.tasks.multilabel import predict_logits

    seeds = [int(s) for s in args.seeds.split(",")]
    imcl_dir = f"imcl_m{args.imcl_prefilter}_{args.imcl_prefilter_dtype}" if args.imcl_prefilter else "imcl"
    results, rates, t0 = {}, {}, time.perf_counter()
    for setting in args.settings.split(","):
        dataset, sim = setting.split(":", 1)
        for seed in seeds:
            base = os.path.join(args.out, setting.replace(":", "_"), f"s{seed}")
            common = dict(dataset=dataset, features_root=args.features_root, partial_labels=sim, seed=seed,
                          learning_rate=args.learning_rate, cache=True)
            runs = {
                "logistic": build_task(dict(method="logistic", run_dir=os.path.join(base, "logistic"),
                                            epochs=args.epochs, **common)),
                "logistic 2x": build_task(dict(method="logistic", run_dir=os.path.join(base, "logistic2x"),
                                               epochs=2 * args.epochs, **common)),
                "imcl": build_task(dict(method="imcl", run_dir=os.path.join(base, imcl_dir), epochs=args.epochs,
                                        **common),
                                   task=dict(imcl_init_from=os.path.join(base, "logistic"), imcl_k=args.k,
                                             imcl_alpha_colab=args.alpha_colab,
                                             imcl_alpha_feature=args.alpha_feature,
                                             imcl_prefilter=args.imcl_prefilter,
                                             imcl_prefilter_dtype=args.imcl_prefilter_dtype)),
            }
            for name, task in runs.items():
                run_dir = task.run.run_dir
                if not os.path.exists(os.path.join(run_dir, "final_metrics.json")):
                    task.fit(resume=True, verbose=0)
                model = task.load_model(run_dir, "best")
                scores, labels = predict_logits(model, task.eval_dataset("test"))
                rep, _ = partial_label_report(scores, labels, 0.5)
                results.setdefault(setting, {}).setdefault(name, []).append(rep["mAP_partial"])
                rates.setdefault(setting, {}).setdefault(name, []).append(_rate(run_dir))
                print(f"[{time.perf_counter() - t0:6.0f} s] {setting} seed {seed} {name}: test mAP "
                      f"{rep['mAP_partial']:.4f} ({_rate(run_dir):.0f} ex/s)", flush=True)
    names = ["logistic", "logistic 2x", "imcl"]
    lines = ["| Setting | " + " | ".join(names) + " | IMCL / logistic cost per epoch |",
             "|---" * (len(names) + 2) + "|"]
    for setting in results:
        cells = []
        for n in names:
            v = np.array(results[setting][n])
            cells.append(f"{v.mean():.4f} ({v.min():.4f}–{v.max():.4f})")
        ratio = np.mean(rates[setting]["logistic"]) / np.mean(rates[setting]["imcl"])
        lines.append(f"| {setting} | " + " | ".join(cells) + f" | {ratio:.1f}x |")
    table = "\n".join(lines)
    print(f"\ntest mAP over annotated entries (fraction in [0, 1]), mean (min–max) over seeds {seeds}:\n{table}")
    os.makedirs(args.out, exist_ok=True)
    suffix = f"_{imcl_dir}" if args.imcl_prefilter else ""
    with open(os.path.join(args.out, f"results{suffix}.json"), "w") as f:
        json.dump({"args": vars(args), "test_mAP_partial": results, "examples_per_sec": rates}, f, indent=2)
    with open(os.path.join(args.out, f"results{suffix}.md"), "w") as f:
        f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
