"""Predict labels for new images with a trained run (``python evaluation/infer.py``, ``mll-infer``).

    python evaluation/infer.py --run runs/csl_fashion_mnist_grid --images photos/ --out predictions.csv

One row per image. For label vocabularies: ``image, error, label_1,
score_1, ..., label_K, score_K`` (the K highest scores; probabilities in
[0, 1] for sigmoid methods, LESA logits -- unseen labels first, then seen --
for zero-shot runs). For attribute tables (``attributes_csv``): the input
table's columns, i.e. the image column and one predicted class per attribute,
then ``<attribute>_score`` columns and ``error``.

Images are decoded and turned into features exactly as the run's feature
store was made (the backbone, weights, input size, crop rule and decoder
recorded in its manifest). An image that cannot be read gets a row with its
error, not a crash. ``--images`` takes files and folders (searched
recursively for image files); further paths may follow it.
"""

import csv
import os
import sys

from mll_tf.cli._flags import FlagSet, UsageError, cli_main, import_tensorflow_quietly

__all__ = ["main"]

PROG = "evaluation/infer.py"


def build_flags():
    fs = FlagSet(PROG, __doc__)
    fs.define("run", None, "run directory written by experiments/train.py", required=True)
    fs.define("images", None, "an image file or folder (more paths may follow)", required=True)
    fs.define("out", None, "CSV file to write", required=True)
    fs.define("top_k", 5, "labels per row for label vocabularies", min=1)
    fs.define("model", "best", "which saved model", choices=("best", "last"))
    fs.define("batch_size", 32, "images per forward pass", min=1)
    fs.define("limit", None, "only the first N images", kind="int", min=1)
    return fs


def _run(argv):
    fs = build_flags()
    rest = fs.parse(argv, positional=True)
    if rest is None:
        return 0
    import_tensorflow_quietly()
    import numpy as np

    from mll_tf.data.extraction import FeatureExtractor, list_images
    from mll_tf.tasks import load_task

    task = load_task(fs.run)
    try:
        paths = list_images([fs.images] + list(rest), fs.limit)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    pred = task.predictor(fs.run, fs.model)
    names = pred.label_names
    manifest = pred.manifest
    groups = manifest.extra.get("attribute_groups")
    classes = manifest.extra.get("attribute_classes")
    image_col = manifest.extra.get("image_column", "image")
    extractor = FeatureExtractor(manifest)
    if groups:
        header = [image_col] + list(groups) + [f"{a}_score" for a in groups] + ["error"]
    else:
        header = ["image", "error"] + [c for i in range(1, fs.top_k + 1) for c in (f"label_{i}", f"score_{i}")]
    n_err = 0
    os.makedirs(os.path.dirname(os.path.abspath(fs.out)), exist_ok=True)
    with open(fs.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for s in range(0, len(paths), fs.batch_size):
            chunk = paths[s:s + fs.batch_size]
            feats, ok, errors = extractor.extract(chunk)
            scores = pred.score(feats) if len(feats) else np.zeros((0, len(names)))
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
                    top = np.argsort(-sc, kind="stable")[:fs.top_k]
                    w.writerow([p, ""] + [v for t in top for v in (names[t], f"{sc[t]:.4f}")])
    print(f"{len(paths)} images -> {fs.out} ({n_err} unreadable, reported in the 'error' column; "
          f"scores are {'probabilities' if pred.is_probability else 'LESA logits'})")
    return 0


def main(argv=None):
    """Entry point; returns the exit code (0, or 2 with one ``error:`` line for bad input)."""
    return cli_main(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
