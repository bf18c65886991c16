#!/usr/bin/env python
"""Predict labels for new images with a trained run and write a CSV.

    python evaluation/infer.py --run runs/csl_fashion_mnist_grid --images photos/ --out predictions.csv

One row per image. For label vocabularies: ``image, error, label_1, score_1,
..., label_K, score_K`` (the K highest sigmoid probabilities, in [0, 1]).
For attribute tables (``attributes_csv``): the input table's columns, i.e.
the image column and one predicted class per attribute, followed by
``<attribute>_score`` columns and ``error``. LESA runs score the seen and the
unseen labels (GZSL; scores are LESA logits, not probabilities).

An image that cannot be read gets a row with its error, not a crash. Images
may be files or folders (searched recursively for image files).
"""

import argparse
import csv
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run directory written by experiments/train.py")
    p.add_argument("--images", required=True, nargs="+", help="image files and/or folders")
    p.add_argument("--out", required=True, help="CSV file to write")
    p.add_argument("--top-k", type=int, default=5, help="labels per row for label vocabularies")
    p.add_argument("--model", default="best", choices=["best", "last"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    return p


def _load_scorer(run, cfg, which):
    """Return (score_fn(features) -> [n, C] scores, label names, is_probability)."""
    import numpy as np
    import keras
    import tensorflow as tf

    if cfg.method == "lesa":
        import mll_tf.models.lesa  # noqa: F401
        from mll_tf.training.zsl_split import LabelSplit
        split = LabelSplit.load(os.path.join(run, "label_split.json"))
        z = np.load(os.path.join(run, "label_embeddings.npz"))
        vec = dict(zip(z["names"].tolist(), z["vectors"]))
        names = split.gzsl_names()
        vecs = tf.constant(np.stack([vec[n] for n in names]).astype(np.float32))
        model = keras.models.load_model(os.path.join(run, f"{which}.keras"))
        return (lambda f: model(f, training=False, label_embeddings=vecs)["logits"].numpy()), names, False
    import mll_tf.models.heads  # noqa: F401
    model = keras.models.load_model(os.path.join(run, f"{which}.keras"))
    return (lambda f: tf.sigmoid(model(f, training=False)).numpy()), None, True


def main(argv=None):
    args = build_parser().parse_args(argv)
    import numpy as np
    from mll_tf.inference import FeatureExtractor, list_images
    from mll_tf.training.config import TrainConfig
    from mll_tf.training.lesa_trainer import read_split_manifest

    cfg_path = os.path.join(args.run, "config.yaml")
    if not os.path.exists(cfg_path):
        print(f"error: --run {args.run} is not a run directory (no config.yaml)", file=sys.stderr)
        return 2
    cfg = TrainConfig.load(cfg_path)
    if cfg.finetune:
        print("error: infer.py scores runs trained on stored features; a --finetune run is evaluated "
              "with evaluation/evaluate.py", file=sys.stderr)
        return 2
    try:
        paths = list_images(args.images, args.limit)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    manifest = read_split_manifest(cfg, "train")
    score_fn, names, is_prob = _load_scorer(args.run, cfg, args.model)
    names = names or list(manifest.label_names)
    groups = manifest.extra.get("attribute_groups")
    classes = manifest.extra.get("attribute_classes")
    image_col = manifest.extra.get("image_column", "image")
    extractor = FeatureExtractor(manifest)

    if groups:
        header = [image_col] + list(groups) + [f"{a}_score" for a in groups] + ["error"]
    else:
        header = ["image", "error"] + [c for i in range(1, args.top_k + 1) for c in (f"label_{i}", f"score_{i}")]
    n_err = 0
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for s in range(0, len(paths), args.batch_size):
            chunk = paths[s:s + args.batch_size]
            feats, ok, errors = extractor.extract(chunk)
            scores = score_fn(feats) if len(feats) else np.zeros((0, len(names)))
            j = 0
            for p, good, err in zip(chunk, ok, errors):
                if not good:
                    n_err += 1
                    w.writerow([p] + [""] * (len(header) - 2) + [err] if groups else [p, err])
                    continue
                sc = scores[j]
                j += 1
                if groups:
                    preds, confs = [], []
                    for a, cols in groups.items():
                        best = int(np.argmax(sc[cols]))
                        preds.append(classes[a][best] if classes else names[cols[best]])
                        confs.append(f"{sc[cols][best]:.4f}")
                    w.writerow([p] + preds + confs + [""])
                else:
                    top = np.argsort(-sc, kind="stable")[:args.top_k]
                    w.writerow([p, ""] + [v for t in top for v in (names[t], f"{sc[t]:.4f}")])
    print(f"{len(paths)} images -> {args.out} ({n_err} unreadable, reported in the 'error' column; "
          f"scores are {'probabilities' if is_prob else 'LESA logits'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
