"""Predict labels for images with a trained run (``python evaluation/infer.py``, ``mll-infer``).

    python evaluation/infer.py --run runs/csl_fashion_mnist_grid --images photos/ --out predictions.csv
    python evaluation/infer.py --run runs/csl_fashion_mnist_grid --split val --thresholds \\
        runs/csl_fashion_mnist_grid/thresholds.json --out val_predictions.csv
    python evaluation/infer.py --model exported/csl_savedmodel --images photo.jpg --out p.csv

Every run type works: stored-feature runs (the features are recomputed from
the images with the backbone, weights, input size, crop rule, decoder and
feature dtype recorded in the feature store's manifest), ``--finetune`` runs
(their model takes images), every method (``Task.inference_model``), and
models written by ``evaluation/export.py`` (``--model <export dir or file>``).

Inputs: ``--images`` files and folders (folders are searched recursively for
every extension the decoder reads, ``.svg`` drawings included), further
paths after it, ``--list`` (a text file with one path per line, relative
paths resolved against the list's folder), or ``--split val|test`` (the
split's images as the run's dataset adapter lists them). Every file is
decoded by :func:`mll_tf.data.images.decode_image`, the decoder of
extraction and training.

Output (CSV, one row per image, in input order):

* label vocabularies: ``image, error``, then ``labels`` (with
  ``--thresholds``: the ";"-separated classes whose score is at least their
  threshold), then ``label_1, score_1, ..., label_K, score_K`` (the
  ``--top-k`` highest scores, best first; ``--top-k 0`` for none);
* attribute tables: the input table's columns (its image column and one
  predicted class per attribute: the arg-max within the attribute's
  classes, ``#N/A`` when ``--thresholds`` is given and the winner's score is
  below its threshold), then ``<attribute>_score`` columns and ``error``.

Scores are probabilities in [0, 1] for the sigmoid methods and LESA's
ranking scores (unseen labels first, then seen; ``--label-set seen`` for the
seen ones only). An image that cannot be read gets a row with the same
columns, empty except the image and ``error`` (the reason).
"""

import csv
import os
import sys

from mll_tf.cli._flags import FlagSet, UsageError, cli_main, import_tensorflow_quietly

__all__ = ["main", "read_list_file"]

PROG = "evaluation/infer.py"


def build_flags():
    fs = FlagSet(PROG, __doc__)
    fs.define("run", None, "run directory written by experiments/train.py")
    fs.define("model", "best", "best or last (a run's saved model), or an exported model "
              "(directory or .onnx/.tflite file written by evaluation/export.py)")
    fs.define("images", None, "an image file or folder (more paths may follow)")
    fs.define("list", None, "a text file listing image paths, one per line")
    fs.define("split", None, "the images of a split of the run's dataset", choices=("train", "val", "test"))
    fs.define("out", None, "CSV file to write", required=True)
    fs.define("top_k", 5, "ranked labels per row for label vocabularies (0: none)", min=0)
    fs.define("thresholds", None, "thresholds.json (keyed by class name, e.g. from evaluate.py "
              "--tune-thresholds): adds label sets / #N/A answers")
    fs.define("label_set", "all", "LESA runs: score the seen+unseen labels or the seen ones",
              choices=("all", "seen"))
    fs.define("batch_size", 32, "images per forward pass", min=1)
    fs.define("limit", None, "only the first N images", kind="int", min=1)
    fs.define("progress", True, "show a progress bar (on a terminal)")
    return fs


def read_list_file(path):
    """Image paths listed in a text file (one per line; blank lines and ``#`` comments skipped).

    Relative paths are resolved against the list file's folder.

    Raises:
        FileNotFoundError: the list file does not exist.
        ValueError: it is not UTF-8 text (names the file and the line).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--list: {path} does not exist")
    base = os.path.dirname(os.path.abspath(path))
    out = []
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if i == 1 else "utf-8").strip()
            except UnicodeDecodeError:
                raise ValueError(f"--list: {path} line {i} is not UTF-8 text") from None
            if not line or line.startswith("#"):
                continue
            out.append(line if os.path.isabs(line) else os.path.join(base, line))
    return out


def _inputs(fs, rest, task):
    """[(shown name, path)] of the images to score."""
    from mll_tf.data.extraction import list_images

    given = [n for n, v in (("--images", fs.images), ("--list", fs.list), ("--split", fs.split)) if v]
    if len(given) != 1:
        raise UsageError("give exactly one of --images, --list, --split"
                         + (f" (got {', '.join(given)})" if given else ""))
    if rest and not fs.images:
        raise UsageError(f"unexpected arguments {' '.join(rest)} (paths follow --images)")
    if fs.images:
        try:
            paths = list_images([fs.images] + list(rest))
        except FileNotFoundError as e:
            raise UsageError(str(e)) from None
        items = [(p, p) for p in paths]
    elif fs.list:
        items = [(p, p) for p in read_list_file(fs.list)]
    else:
        if task is None:
            raise UsageError("--split needs --run (the run's dataset lists the split's images)")
        prepared = _split_adapter(task, fs.split)
        if not prepared.splits.get(fs.split):
            raise UsageError(f"--split: dataset {task.run.dataset} has no {fs.split!r} images")
        items = [(r.image_id, r.path) for r in prepared.splits[fs.split]]
    return items[:fs.limit] if fs.limit else items


def _split_adapter(task, split):
    """The run's dataset adapter, prepared with the options of its feature store (or of the run)."""
    from mll_tf.tasks.multilabel import prepare_adapter

    if not task.run.finetune:
        from mll_tf.data.datasets import get_dataset

        options = task.read_manifest("train").adapter_options
        if options is not None:
            return get_dataset(task.run.dataset)(**options).prepare()
    return prepare_adapter(task.run)


def _header(im, top_k, with_labels):
    if im.groups:
        attrs = list(im.groups)
        return [im.image_column] + attrs + [f"{a}_score" for a in attrs] + ["error"]
    return (["image", "error"] + (["labels"] if with_labels else [])
            + [c for i in range(1, top_k + 1) for c in (f"label_{i}", f"score_{i}")])


def _rows(im, names, scores, thresholds, top_k):
    """The CSV cells of scored images (without the image column / error)."""
    import numpy as np

    from mll_tf.export.thresholds import NA
    from mll_tf.metrics.threshold import group_predictions

    if im.groups:
        pred = group_predictions(scores, im.groups, thresholds)
        rows = []
        for i in range(len(scores)):
            cls, conf = [], []
            for a, cols in im.groups.items():
                best = int(cols[int(np.argmax(scores[i, cols]))])
                choice = int(pred[a][i])
                if choice < 0:
                    cls.append(NA)
                else:
                    j = list(cols).index(choice)
                    cls.append(im.classes[a][j] if im.classes else names[choice])
                conf.append(f"{scores[i, best]:.6f}")
            rows.append((cls, conf))
        return rows
    rows = []
    for s in scores:
        cells = []
        if thresholds is not None:
            cells.append(";".join(n for n, v, t in zip(names, s, thresholds) if v >= t))
        top = np.argsort(-s, kind="stable")[:top_k]
        cells += [v for t in top for v in (names[t], f"{s[t]:.6f}")]
        rows.append(cells)
    return rows


def _run(argv):
    fs = build_flags()
    rest = fs.parse(argv, positional=True)
    if rest is None:
        return 0
    import_tensorflow_quietly()
    import numpy as np
    from tqdm import tqdm

    from mll_tf.data.images import decode_image
    from mll_tf.export.thresholds import load_thresholds

    exported = fs.model not in ("best", "last")
    task = None
    if exported:
        from mll_tf.export.runtimes import load_exported

        if not os.path.exists(fs.model):
            raise UsageError(f"--model: {fs.model} is neither best/last nor an exported model")
        im = load_exported(fs.model)
        if fs.run:
            from mll_tf.tasks import load_task
            task = load_task(fs.run)
    else:
        if not fs.run:
            raise UsageError("--run is required (or --model <exported model>)")
        from mll_tf.tasks import load_task

        task = load_task(fs.run)
        if fs.label_set != "all" and task.name != "lesa":
            raise UsageError("--label-set applies to --method lesa runs")
        im = task.inference_model(fs.run, fs.model, label_set=fs.label_set)
    items = _inputs(fs, rest, task)
    names = list(im.label_names)
    thresholds = load_thresholds(fs.thresholds, names) if fs.thresholds else None
    header = _header(im, fs.top_k, thresholds is not None)
    score = im.score_pixels if exported else _pixel_scorer(im)
    n_err = 0
    os.makedirs(os.path.dirname(os.path.abspath(fs.out)), exist_ok=True)
    bar = tqdm(total=len(items), unit="img", desc="infer",
               disable=not (fs.progress and sys.stderr.isatty() and len(items) > fs.batch_size))
    with open(fs.out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for s in range(0, len(items), fs.batch_size):
            chunk = items[s:s + fs.batch_size]
            images, errors = [], []
            for _, path in chunk:
                try:
                    x = np.asarray(decode_image(path, im.image_size, im.resize_shorter), np.uint8)
                    if x.shape != (im.image_size, im.image_size, 3):
                        raise ValueError(f"decoder returned {x.shape}")
                    images.append(x)
                    errors.append(None)
                except Exception as e:  # noqa: BLE001 - one unreadable image never stops the run
                    errors.append(f"{type(e).__name__}: {str(e)[:200]}")
            scores = score(np.stack(images)) if images else np.zeros((0, len(names)), np.float32)
            cells = iter(_rows(im, names, scores, thresholds, fs.top_k))
            for (shown, _), err in zip(chunk, errors):
                if err is not None:
                    n_err += 1
                    row = [""] * len(header)
                    row[0], row[header.index("error")] = shown, err
                    w.writerow(row)
                elif im.groups:
                    cls, conf = next(cells)
                    w.writerow([shown] + cls + conf + [""])
                else:
                    w.writerow([shown, ""] + next(cells))
            bar.update(len(chunk))
    bar.close()
    kind = "probabilities" if im.is_probability else "LESA ranking scores"
    print(f"{len(items)} images -> {fs.out} ({n_err} unreadable, reported in the 'error' column; "
          f"scores are {kind})")
    return 0


def _pixel_scorer(im):
    """uint8 ``[n, S, S, 3]`` (decoded at the run's size) -> float32 NumPy scores ``[n, C]``."""
    import tensorflow as tf

    fn = tf.function(lambda x: im.pipeline.scores_from_pixels(tf.cast(x, tf.float32)), reduce_retracing=True)
    return lambda x: fn(x).numpy()


def main(argv=None):
    """Entry point; returns the exit code (0, or 2 with one ``error:`` line for bad input)."""
    return cli_main(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
