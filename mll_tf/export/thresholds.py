"""Per-class thresholds of a trained run (``evaluation/evaluate.py --tune-thresholds``).

For each class, the threshold maximising that class's F1 on the VALIDATION
split (:func:`mll_tf.metrics.threshold.tune_thresholds`; unknown labels left
out). Deep-object-reid's ``tune_multilabel_thresholds`` tunes on the
training loader's scores, where a fitted model is over-confident: its
thresholds are then too high for new images (an optimistic, biased choice);
held-out validation images are what new images look like. The evaluated
split (default test) is never used for tuning.

``thresholds.json`` (keyed by class NAME)::

    {"thresholds": {"<class>": 0.37, ...}, "tuned_on": "val", "model": "best.keras",
     "rule": "predicted iff probability >= threshold", "criterion": "per-class F1", ...}

is written to ``<run>/thresholds.json`` (read by ``infer.py`` and
``export.py``) and to the evaluation folder, with
``threshold_comparison.json``: CP/CR/CF1/OP/OR/OF1 of the evaluated split at
0.5 and at the tuned thresholds, side by side, and for attribute tables
(exclusive groups) the accuracy and coverage of the within-group arg-max,
where a group whose winning score is below its class threshold answers
``#N/A`` (counted as not correct).
"""

import json
import os

import numpy as np

__all__ = ["NA", "group_report", "load_thresholds", "tune_run_thresholds"]

#: What an attribute table holds for a withheld answer.
NA = "#N/A"


def group_report(probs, labels, groups, thresholds=None):
    """Accuracy and coverage of the within-group arg-max with withheld answers.

    For group a and the images whose attribute is known (exactly one column
    of G_a labelled 1): ``accuracy`` = #(answer == true class) / #known,
    a withheld answer (``#N/A``) counting as wrong; ``coverage`` = #(answered)
    / #known. Fractions in [0, 1]; NaN when no image has the attribute known.

    Args:
        probs: float ``[N, C]``; labels: int ``[N, C]`` in {1, 0, -1};
        groups: dict attribute -> column indices; thresholds: None, float or ``[C]``.

    Returns:
        dict attribute -> {"accuracy": float, "coverage": float}.
    """
    from mll_tf.metrics.threshold import group_predictions

    labels = np.asarray(labels)
    pred = group_predictions(probs, groups, thresholds)
    out = {}
    for a, cols in groups.items():
        cols = np.asarray(cols)
        pos = labels[:, cols] == 1
        known = pos.sum(1) == 1
        if not known.any():
            out[a] = {"accuracy": float("nan"), "coverage": float("nan")}
            continue
        truth = cols[np.argmax(pos[known], axis=1)]
        p = pred[a][known]
        out[a] = {"accuracy": float(np.mean(p == truth)), "coverage": float(np.mean(p >= 0))}
    return out


def load_thresholds(path, names):
    """Per-class thresholds float64 ``[C]`` in the order of ``names`` from a ``thresholds.json``.

    Raises:
        ValueError: unreadable JSON, or classes that do not match (named).
        FileNotFoundError: no such file.
    """
    from mll_tf.metrics.threshold import thresholds_from_dict

    from mll_tf.data import fs

    if not fs.isfile(path):
        raise FileNotFoundError(f"--thresholds: {path} does not exist")
    try:
        data = json.loads(fs.read_text(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"--thresholds: {path} is not a JSON file ({e})") from None
    return thresholds_from_dict(data, names, source=f"--thresholds {path}")


def _fmt_row(name, row, cols):
    return f"{name:<14}" + "".join(f"{row[c]:10.4f}" if np.isfinite(row[c]) else f"{'-':>10}" for c in cols)


def tune_run_thresholds(task, run_dir, split="test", which="best", out=None, tune_split="val"):
    """Tune per-class thresholds on ``tune_split`` and compare them with 0.5 on ``split``.

    Writes ``<run>/thresholds.json`` and, in ``out`` (default
    ``<run>/eval_<split>``), ``thresholds.json`` and
    ``threshold_comparison.json``.

    Returns:
        (record dict, printable report str).

    Raises:
        ValueError: ``split == tune_split``, or a method without probabilities (LESA).
    """
    from mll_tf.export.inference import split_scores
    from mll_tf.metrics.threshold import threshold_metrics, thresholds_to_dict, tune_thresholds
    from mll_tf.training.atomic import write_json

    if split == tune_split:
        raise ValueError(f"--split {split}: thresholds are tuned on the {tune_split!r} split; evaluate them "
                         f"on another split")
    names, groups = task._label_info()
    vp, vl = split_scores(task, run_dir, tune_split, which)
    tuned = tune_thresholds(vp, vl)
    no_pos = [names[j] for j in range(len(names)) if not (vl[:, j] == 1).any()]
    tp, tl = split_scores(task, run_dir, split, which)
    rows = {"0.5": threshold_metrics(tp, tl, 0.5), "tuned": threshold_metrics(tp, tl, tuned)}
    record = {
        "thresholds": thresholds_to_dict(names, tuned),
        "tuned_on": tune_split, "model": f"{which}.keras", "method": task.name,
        "rule": "predicted iff probability >= threshold",
        "criterion": "per-class F1 on the tuning split (unknown labels left out)",
        "default_for_classes_without_positive": 0.5, "classes_without_positive": no_pos,
    }
    comparison = {"split": split, "num_images": int(tp.shape[0]), "at_0.5": rows["0.5"],
                  "at_tuned": rows["tuned"]}
    if groups:
        comparison["attributes"] = {"at_0.5": group_report(tp, tl, groups, 0.5),
                                    "at_tuned": group_report(tp, tl, groups, tuned)}
    out = out or os.path.join(run_dir, f"eval_{split}")
    write_json(os.path.join(run_dir, "thresholds.json"), record)
    write_json(os.path.join(out, "thresholds.json"), record)
    write_json(os.path.join(out, "threshold_comparison.json"), comparison)
    cols = ["CP", "CR", "CF1", "OP", "OR", "OF1"]
    lines = [f"\nper-class thresholds tuned on {tune_split!r} ({vp.shape[0]} images; "
             f"{len(no_pos)} classes without a positive keep 0.5), measured on {split!r} "
             f"({tp.shape[0]} images); fractions in [0, 1]",
             f"{'threshold':<14}" + "".join(f"{c:>10}" for c in cols)]
    lines += [_fmt_row(k, rows[k], cols) for k in ("0.5", "tuned")]
    if groups:
        lines.append(f"{'attribute':<14}{'acc@0.5':>10}{'cov@0.5':>10}{'acc@tuned':>10}{'cov@tuned':>10}"
                     f"   (#N/A below the winner's threshold counts as wrong)")
        a5, at = comparison["attributes"]["at_0.5"], comparison["attributes"]["at_tuned"]
        for a in groups:
            r = {"a": a5[a]["accuracy"], "b": a5[a]["coverage"], "c": at[a]["accuracy"], "d": at[a]["coverage"]}
            lines.append(_fmt_row(a[:14], r, "abcd"))
    lines.append(f"wrote {os.path.join(run_dir, 'thresholds.json')} and {out}/threshold_comparison.json")
    return {"thresholds": record, "comparison": comparison}, "\n".join(lines)
