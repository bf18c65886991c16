#!/usr/bin/env python
"""Ignore vs Negative vs ASL vs CSL under simulated partial labels (the README table).

    python extract/build_tfrecords.py --dataset fashion_mnist_grid      # once
    python benchmarks/partial_labels.py                                  # ~25 min on 2 CPU cores

For each simulation (FPC: N positive and N negative annotations kept per
class; RPS: each annotation hidden with probability p) and each seed, it trains
on the stored features of ``fashion_mnist_grid`` (complete ground truth, so
the test mAP measures what the hidden labels cost):

* ``ignore``: BCE on annotated entries only; its ``prior.csv`` (running mean
  of the sigmoid outputs) is the class prior CSL needs (docs/partial_labels.md §1);
* ``negative``: BCE with un-annotated entries as negatives;
* ``asl``: asymmetric loss (gamma- 4, clip 0.05), un-annotated as negatives;
* ``csl``: the selective loss with that prior (prior threshold 0.5 and
  gamma- 1 for RPS / 3 for FPC, gamma_u 4, as the CSL README commands), and a
  likelihood top-k of 1 per image (the reference's 5 is for 80 COCO classes;
  1 of our 10 classes is the same share of the label space).

It prints mean and spread (min-max) of the test mAP per method and
simulation, and writes ``<out>/results.json`` and ``<out>/results.md``.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion_mnist_grid")
    p.add_argument("--features-root", default="data/features")
    p.add_argument("--simulations", default="fpc:200,rps:0.5")
    p.add_argument("--methods", default="ignore,negative,asl,csl")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--out", default="runs/partial_labels")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import numpy as np
    from mll_tf.metrics.report import partial_label_report
    from mll_tf.tasks import build_task
    from mll_tf.tasks.multilabel import predict_logits

    sims = args.simulations.split(",")
    methods = args.methods.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    if "csl" in methods and ("ignore" not in methods or methods.index("ignore") > methods.index("csl")):
        raise SystemExit("--methods: csl needs the ignore run's prior; list ignore before csl")
    results, t0 = {}, time.perf_counter()
    for sim in sims:
        for seed in seeds:
            for method in methods:
                run_dir = os.path.join(args.out, f"{sim.replace(':', '')}_s{seed}", method)
                task_options = {}
                if method == "csl":
                    task_options = dict(prior_path=os.path.join(os.path.dirname(run_dir), "ignore", "prior.csv"),
                                        prior_threshold=0.5, gamma_neg=3.0 if sim.startswith("fpc") else 1.0,
                                        gamma_unann=4.0, likelihood_topk=1)
                task = build_task(dict(method=method, dataset=args.dataset, features_root=args.features_root,
                                       run_dir=run_dir, partial_labels=sim, seed=seed, epochs=args.epochs,
                                       learning_rate=args.learning_rate, cache=True), task=task_options)
                if not os.path.exists(os.path.join(run_dir, "final_metrics.json")):
                    task.fit(resume=True, verbose=0)
                model = task.load_model(run_dir, "best")
                scores, labels = predict_logits(model, task.eval_dataset("test"))
                rep, _ = partial_label_report(scores, labels, 0.5)
                results.setdefault(sim, {}).setdefault(method, []).append(rep["mAP"])
                print(f"[{time.perf_counter() - t0:6.0f} s] {sim} seed {seed} {method}: test mAP "
                      f"{rep['mAP']:.4f}", flush=True)
    lines = ["| Simulation | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for sim in sims:
        cells = []
        for m in methods:
            v = np.array(results[sim][m])
            cells.append(f"{v.mean():.4f} ({v.min():.4f}–{v.max():.4f})")
        lines.append(f"| {sim} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(f"\ntest mAP (fraction in [0, 1]), mean (min–max) over seeds {seeds}:\n{table}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"dataset": args.dataset, "seeds": seeds, "epochs": args.epochs,
                   "learning_rate": args.learning_rate, "test_mAP": results}, f, indent=2)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
