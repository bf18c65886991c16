"""Heads x losses on stored EfficientNet-Lite0 features: the table of docs/ml_heads.md.

Trains every head of Prokofiev & Sovrasov 2022 -- ``linear_head`` (pooled
features + linear / cosine classifier), ``ml_gcn`` (label-graph channel
attention) and ``ml_decoder`` (query cross-attention, group FC) -- with each
loss (``asl``, ``aam``) on the stored features of each dataset, for several
seeds, evaluates the ``best.keras`` of every run on the test split and prints
mean (min-max) over the seeds of mAP, CF1 and OF1 (fractions in [0, 1]; CF1/OF1
at probability threshold 0.5, probabilities sigmoid(logit) for ASL and
sigmoid(s cos) for AAM).

Every run uses the same recipe (``--optimizer``, ``--learning-rate``,
``--epochs``, ``--batch-size``). To fit the 36 runs into 30 minutes on a
2-core CPU the defaults are short (2 epochs, Adam 1e-3) and the ML-Decoder is
narrower than the paper's (``--decoder-dim 128 --decoder-ffn 512`` instead of
768 / 2048; one layer, 8 heads, Q = min(100, C) as the paper); the AAM loss
uses its released settings (s 23, m 0, k 0.7, no focusing) unless
``--aam-scale``. The training labels of a store are read once per process
(every run of a dataset has the same labels), not once per run.
Labels: all of each dataset's labels (the clip-art tags are not split into
seen/unseen here, unlike LESA's zero-shot protocol).

Usage (``make ml-heads-table``)::

    python benchmarks/ml_heads_table.py --datasets fashion_mnist_grid,openclipart --seeds 0,1,2

Writes ``<out>/results.json`` (every run's test metrics and seconds) and
``<out>/table.md``; prints the table and the wall-clock time.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HEADS = ("linear_head", "ml_gcn", "ml_decoder")
LOSSES = ("asl", "aam")
METRICS = ("mAP", "CF1", "OF1")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="fashion_mnist_grid,openclipart")
    p.add_argument("--heads", default=",".join(HEADS))
    p.add_argument("--losses", default=",".join(LOSSES))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--features-root", default="data/features")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--out", default="runs/ml_heads_table")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--optimizer", default="adam")
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--decoder-dim", type=int, default=128, help="ML-Decoder width (the paper: 768)")
    p.add_argument("--decoder-ffn", type=int, default=512, help="ML-Decoder FFN width (the paper: 2048)")
    p.add_argument("--aam-scale", default="23")
    p.add_argument("--word-vectors", default="glove-6b-50d")
    p.add_argument("--overwrite", action="store_true", help="retrain runs that already have results")
    return p.parse_args(argv)


def run_one(args, dataset, head, loss, seed):
    """Train one run and evaluate its best.keras on the test split; returns the result record."""
    from mll_tf.tasks import build_task

    run_dir = os.path.join(args.out, dataset, f"{head}_{loss}_seed{seed}")
    task_opts = dict(loss=loss, aam_scale=args.aam_scale)
    if head == "ml_decoder":
        task_opts.update(decoder_dim=args.decoder_dim, decoder_ffn=args.decoder_ffn)
    if head == "ml_gcn":
        task_opts.update(allow_missing_embeddings=True)
    task = build_task(dict(method=head, dataset=dataset, backbone=args.backbone, input_size=args.input_size,
                           features_root=args.features_root, run_dir=run_dir, epochs=args.epochs,
                           batch_size=args.batch_size, optimizer=args.optimizer,
                           learning_rate=args.learning_rate, seed=seed, cache=True,
                           word_vectors=args.word_vectors), source="ml_heads_table", task=task_opts)
    t0 = time.perf_counter()
    task.fit(overwrite=True, verbose=0)
    fit_s = time.perf_counter() - t0
    rec, _ = task.evaluate(run_dir, split="test")
    res = rec["results"]
    return {"dataset": dataset, "head": head, "loss": loss, "seed": seed, "seconds": time.perf_counter() - t0,
            "fit_seconds": fit_s, "num_test_images": res.get("num_images"),
            **{m: float(res[m]) for m in METRICS}}


def summarise(records, datasets, heads, losses):
    """Markdown table: one row per (dataset, head, loss), mean (min-max) of each metric over the seeds."""
    import numpy as np

    lines = ["| dataset | head | loss | seeds | " + " | ".join(f"test {m}" for m in METRICS) + " | s / run |",
             "|---|---|---|---|" + "---|" * len(METRICS) + "---|"]
    for d in datasets:
        for h in heads:
            for lo in losses:
                rs = [r for r in records if (r["dataset"], r["head"], r["loss"]) == (d, h, lo)]
                if not rs:
                    continue
                cells = []
                for m in METRICS:
                    v = np.array([r[m] for r in rs])
                    cells.append(f"{v.mean():.4f} ({v.min():.4f}-{v.max():.4f})")
                secs = np.mean([r["seconds"] for r in rs])
                lines.append(f"| {d} | {h} | {lo} | {len(rs)} | " + " | ".join(cells) + f" | {secs:.0f} |")
    return "\n".join(lines)


def _read_labels_once():
    """Memoise the training-label pass of every run over one store (same store -> same labels)."""
    import functools

    from mll_tf.tasks import multilabel

    cached = functools.lru_cache(maxsize=None)(multilabel.read_ids_and_labels)

    def read(split_dir, batch_size=1024):
        ids, labels = cached(split_dir, batch_size)
        return list(ids), labels.copy()

    multilabel.read_ids_and_labels = read


def main(argv=None):
    args = parse_args(argv)
    _read_labels_once()
    datasets = [d for d in args.datasets.split(",") if d]
    heads = [h for h in args.heads.split(",") if h]
    losses = [x for x in args.losses.split(",") if x]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "results.json")
    records = []
    if os.path.isfile(path) and not args.overwrite:
        with open(path) as f:
            records = json.load(f)["runs"]
    done = {(r["dataset"], r["head"], r["loss"], r["seed"]) for r in records}
    t0 = time.perf_counter()
    for d in datasets:
        for h in heads:
            for lo in losses:
                for s in seeds:
                    if (d, h, lo, s) in done:
                        continue
                    r = run_one(args, d, h, lo, s)
                    records.append(r)
                    print(f"{d} {h} {lo} seed {s}: mAP {r['mAP']:.4f} CF1 {r['CF1']:.4f} OF1 {r['OF1']:.4f} "
                          f"({r['seconds']:.0f} s)", flush=True)
                    with open(path, "w") as f:
                        json.dump({"args": vars(args), "runs": records}, f, indent=1)
    total = time.perf_counter() - t0
    table = summarise(records, datasets, heads, losses)
    settings = (f"EfficientNet-Lite0 {args.input_size} stored features; {args.epochs} epochs, batch "
                f"{args.batch_size}, {args.optimizer} lr {args.learning_rate:g}; ML-Decoder "
                f"{args.decoder_dim}/{args.decoder_ffn}; AAM s {args.aam_scale}, m 0, k 0.7; "
                f"best.keras by val mAP_partial; test split; fractions in [0, 1]")
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table + "\n\n" + settings + "\n")
    print("\n" + table + "\n\n" + settings)
    print(f"\nwall clock: {total:.0f} s for the {len(records) - len(done)} runs trained in this process "
          f"({len(records)} in {path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
