#!/usr/bin/env python
"""Evaluate a trained run: ZSL/GZSL for LESA, partial-label metrics for the others.

    python evaluation/evaluate.py --run runs/lesa_openclipart [--baselines]
    python evaluation/evaluate.py --run runs/csl_fashion_mnist_grid

Partial-label runs (csl, asl, ignore, negative, logistic, imcl) report mAP
over all entries (CSL/ASL variant), mAP over annotated entries only
(``mAP_partial``; classes without a known positive or negative dropped and
counted), CP/CR/CF1/OP/OR/OF1 at ``--threshold`` (default: the run's) and,
for attribute tables, per-attribute accuracy over known labels
(METHODS.md §3.3, §6.3).

ZSL scores the unseen labels only; GZSL scores [unseen, seen] (unseen first).
AP is per class over known labels (a class without a positive scores 0 and
stays in the mean); P/R/F1@K are micro over all images (METHODS.md §1.6, §6.3,
§6.4). Writes ``<run>/eval_<split>/summary.json`` and ``per_class.csv`` and
prints a table (values in percent). ``--baselines`` adds a random ranking and
a linear word-embedding baseline measured the same way.
"""

import argparse
import csv
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run directory written by experiments/train.py")
    p.add_argument("--split", default="test")
    p.add_argument("--model", default="best", choices=["best", "last"], help="which saved model")
    p.add_argument("--k", default=None, help="comma-separated K values (default: the run's eval_k)")
    p.add_argument("--baselines", action="store_true", help="also score a random and a linear baseline")
    p.add_argument("--out", default=None, help="output folder (default: <run>/eval_<split>)")
    p.add_argument("--threshold", type=float, default=None,
                   help="partial-label runs: probability threshold for CP..OF1 (default: the run's)")
    return p


def region_means(split_dir, columns):
    """Region-averaged features [N, D] and labels[:, columns] of a split."""
    import numpy as np
    import tensorflow as tf
    from mll_tf.training.lesa_trainer import column_dataset

    feats, labels = [], []
    for f, y in column_dataset(split_dir, columns, 256):
        feats.append(tf.reduce_mean(f, axis=1).numpy())
        labels.append(y.numpy())
    return np.concatenate(feats), np.concatenate(labels)


def evaluate_partial(args, cfg):
    """Partial-label evaluation of a csl/asl/ignore/negative/logistic/imcl run."""
    import numpy as np
    import keras
    import mll_tf.models.heads  # noqa: F401  (registers the heads for load_model)
    from mll_tf.metrics.report import format_partial_table, partial_label_report

    thr = cfg.threshold if args.threshold is None else args.threshold
    if cfg.finetune:
        from mll_tf.training.finetune import build_finetune_model, image_dataset, prepare_dataset
        from mll_tf.training.multilabel_trainer import predict
        prepared = prepare_dataset(cfg)
        names = list(prepared.label_names)
        groups = prepared.extra.get("attribute_groups")
        if cfg.method == "imcl":
            from mll_tf.training.imcl_trainer import build_imcl_finetune_model
            with open(os.path.join(args.run, "imcl_meta.json")) as f:
                meta = json.load(f)
            model, bb = build_imcl_finetune_model(cfg, len(names), num_nonzero=meta["num_nonzero"],
                                                  weights=None)
        else:
            model, bb = build_finetune_model(cfg, len(names), weights=None)
        model_path = os.path.join(args.run, f"{args.model}.weights.h5")
        model.load_weights(model_path)
        recs = prepared.splits[args.split]
        ds = image_dataset(recs, np.stack([r.labels for r in recs]).astype(np.int8), prepared.load_image,
                           cfg.input_size, 32, train=False, seed=0, resize_shorter=bb.resize_shorter)
        scores, labels = predict(model, ds)
    else:
        from mll_tf.training.lesa_trainer import read_split_manifest
        from mll_tf.training.multilabel_trainer import predict
        from mll_tf.data.feature_store import make_dataset
        manifest = read_split_manifest(cfg, args.split)
        names = list(manifest.label_names)
        groups = manifest.extra.get("attribute_groups")
        model_path = os.path.join(args.run, f"{args.model}.keras")
        model = keras.models.load_model(model_path)
        scores, labels = predict(model, make_dataset(cfg.features_dir(args.split), 256))
    summary, ap = partial_label_report(scores, labels, thr, groups)
    out = args.out or os.path.join(args.run, f"eval_{args.split}")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"run": args.run, "model": model_path, "split": args.split, "threshold": thr,
                   "method": cfg.method, "results": summary}, f, indent=2)
    pos = (labels == 1).sum(0)
    known = (labels != -1).sum(0)
    with open(os.path.join(out, "per_class.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "ap_partial", "num_positive", "num_known"])
        for i, n in enumerate(names):
            w.writerow([n, "" if not np.isfinite(ap[i]) else f"{ap[i]:.6f}", int(pos[i]), int(known[i])])
    print(f"{args.split}: {labels.shape[0]} images, {len(names)} labels ({model_path}); "
          f"{summary['num_classes_dropped']} classes without a known positive and negative dropped "
          f"from mAP_partial")
    print(format_partial_table({cfg.method: summary}, title=f"\n[{cfg.method}] (percent, threshold {thr})"))
    print(f"\nwrote {out}/summary.json and {out}/per_class.csv")
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    import numpy as np
    import keras
    import mll_tf.models.lesa  # noqa: F401  (registers LESA for load_model)
    from mll_tf.metrics.report import format_table, zsl_gzsl_report
    from mll_tf.training.config import TrainConfig
    from mll_tf.training.lesa_trainer import column_dataset, predict_logits, read_split_manifest
    from mll_tf.training.zsl_split import LabelSplit

    cfg_path = os.path.join(args.run, "config.yaml")
    if not os.path.exists(cfg_path):
        print(f"error: {args.run} is not a run directory (no config.yaml); "
              "train one with experiments/train.py", file=sys.stderr)
        return 2
    cfg = TrainConfig.load(cfg_path)
    if cfg.method != "lesa":
        return evaluate_partial(args, cfg)
    ks = tuple(int(k) for k in args.k.split(",")) if args.k else tuple(cfg.eval_k)
    split = LabelSplit.load(os.path.join(args.run, "label_split.json"))
    z = np.load(os.path.join(args.run, "label_embeddings.npz"))
    vec = dict(zip(z["names"].tolist(), z["vectors"]))
    manifest = read_split_manifest(cfg, args.split)
    seen_idx, unseen_idx = split.indices(manifest.label_names)
    gzsl_vecs = np.stack([vec[n] for n in split.gzsl_names()]).astype(np.float32)
    model_path = os.path.join(args.run, f"{args.model}.keras")
    model = keras.models.load_model(model_path)
    ds = column_dataset(cfg.features_dir(args.split), unseen_idx + seen_idx, 256)
    scores, labels = predict_logits(model, ds, gzsl_vecs)
    u = len(split.unseen)
    summary, ap = zsl_gzsl_report(scores, labels, u, ks)
    results = {"lesa": summary}

    if args.baselines:
        from mll_tf.models.baselines import LinearEmbeddingBaseline, random_scores
        rand = [zsl_gzsl_report(random_scores(*scores.shape, seed=s), labels, u, ks)[0] for s in range(5)]
        results["random"] = {st: {m: (rand[0][st][m] if m.startswith("num_") else
                                      float(np.mean([r[st][m] for r in rand]))) for m in rand[0][st]}
                             for st in rand[0]}  # mean over 5 random rankings
        train_manifest = read_split_manifest(cfg, "train")
        s_idx, _ = split.indices(train_manifest.label_names)
        xtr, ytr = region_means(cfg.features_dir("train"), s_idx)
        xte, _ = region_means(cfg.features_dir(args.split), unseen_idx + seen_idx)
        seen_vecs = np.stack([vec[n] for n in split.seen])
        lin = LinearEmbeddingBaseline().fit(xtr, ytr, seen_vecs)
        results["linear_embedding"] = zsl_gzsl_report(lin.scores(xte, gzsl_vecs), labels, u, ks)[0]

    out = args.out or os.path.join(args.run, f"eval_{args.split}")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"run": args.run, "model": model_path, "split": args.split, "k": list(ks),
                   "num_unseen": u, "num_seen": len(split.seen), "results": results}, f, indent=2)
    names = split.gzsl_names()
    pos = (labels == 1).sum(0)
    known = (labels != -1).sum(0)
    with open(os.path.join(out, "per_class.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "set", "ap", "num_positive", "num_known"])
        for i, n in enumerate(names):
            w.writerow([n, "unseen" if i < u else "seen", f"{ap[i]:.6f}", int(pos[i]), int(known[i])])
    print(f"{args.split}: {labels.shape[0]} images, {u} unseen + {len(split.seen)} seen labels "
          f"({model_path})")
    for name, summ in results.items():
        print(format_table(summ, ks, title=f"\n[{name}] (percent)"))
    print(f"\nwrote {out}/summary.json and {out}/per_class.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
