"""Evaluate a trained run (``python evaluation/evaluate.py``, console script ``mll-evaluate``).

    python evaluation/evaluate.py --run runs/lesa_openclipart --baselines
    python evaluation/evaluate.py --run runs/csl_fashion_mnist_grid --threshold 0.7

The run's method (from its ``config.yaml``, via the task registry) decides
what is measured; every value is a fraction in [0, 1]:

* zero-shot methods (``lesa``): ZSL on the unseen labels, GZSL on [unseen,
  seen] (unseen first) and seen-only: mAP (per-class AP over known labels; a
  class without a positive scores 0 and stays in the mean) and micro
  P/R/F1@K over all images. ``--baselines`` adds a random ranking and the
  linear word-embedding (ridge) baseline, measured the same way. Beside
  the raw rows: ``+cal`` (calibrated stacking, gamma chosen on validation
  pseudo-unseen labels of a ``--selection zsl_holdout`` run) and
  ``+zscore``/``+csls`` (``--hubness-correction``), with the hubness of the
  unseen labels (k-occurrence skewness, top-1 share) (docs/lesa.md sec. 7).
* multi-label methods (``csl asl ignore negative logistic imcl``): mAP over
  all entries, mAP over annotated entries only (``mAP_partial``; classes
  without a known positive and negative dropped and counted),
  CP/CR/CF1/OP/OR/OF1 at ``--threshold`` (default: the run's) and, for
  attribute tables, per-attribute accuracy over known labels.
  ``--tune-thresholds`` picks, per class, the threshold maximising that
  class's F1 on the VALIDATION split, writes ``<run>/thresholds.json``
  (keyed by class name; read by ``infer.py`` / ``export.py``) and prints
  CP..OF1 at 0.5 and at the tuned thresholds side by side (attribute
  tables: arg-max per attribute, ``#N/A`` below the winner's threshold).

Writes ``<out>/summary.json`` and ``<out>/per_class.csv`` (default
``<run>/eval_<split>``) and prints a table.
"""

import sys

from mll_tf.cli._flags import FlagSet, UsageError, cli_main, import_tensorflow_quietly

__all__ = ["main"]

PROG = "evaluation/evaluate.py"
_OPTIONS = ("k", "baselines", "threshold", "hubness_correction")


def build_flags():
    fs = FlagSet(PROG, __doc__)
    fs.define("run", None, "run directory written by experiments/train.py", required=True)
    fs.define("split", "test", "split to evaluate")
    fs.define("model", "best", "which saved model", choices=("best", "last"))
    fs.define("out", None, "output folder (default: <run>/eval_<split>)")
    fs.section("method-specific options")
    fs.define("k", None, "zero-shot runs: K values of P/R/F1@K, e.g. 3,5 (default: the run's)", kind="int_list")
    fs.define("baselines", False, "zero-shot runs: also score a random ranking and the linear "
              "word-embedding baseline")
    fs.define("hubness_correction", None, "zero-shot runs: hubness correction reported beside the raw "
              "scores, fitted on the unlabelled validation images (default zscore; none: no extra rows)",
              choices=("none", "zscore", "csls"))
    fs.define("threshold", None, "multi-label runs: probability threshold of CP..OF1 (default: the run's)",
              kind="float", min=0.0, max=1.0)
    fs.define("tune_thresholds", False, "multi-label runs: per-class thresholds maximising each class's F1 on "
              "the val split, written to <run>/thresholds.json; CP..OF1 at 0.5 and tuned side by side")
    return fs


def _run(argv):
    fs = build_flags()
    if fs.parse(argv) is None:
        return 0
    import_tensorflow_quietly()
    from mll_tf.tasks import load_task

    task = load_task(fs.run)
    given = fs.explicit(_OPTIONS)
    for name in given:
        if name not in task.evaluate_options:
            raise UsageError(f"--{name} does not apply to --method {task.name} runs "
                             f"(their options: {', '.join('--' + o for o in task.evaluate_options) or 'none'})")
    if fs.k is not None and any(k < 1 for k in fs.k):
        raise UsageError(f"--k: values must be >= 1, got {','.join(map(str, fs.k))}")
    if fs.tune_thresholds and "threshold" not in task.evaluate_options:
        raise UsageError(f"--tune-thresholds: --method {task.name} runs give no per-class probabilities")
    if fs.tune_thresholds and fs.split == "val":
        raise UsageError("--tune-thresholds: thresholds are tuned on the val split; evaluate another --split")
    _, text = task.evaluate(fs.run, split=fs.split, which=fs.model, out=fs.out, **given)
    print(text)
    if fs.tune_thresholds:
        from mll_tf.export.thresholds import tune_run_thresholds

        print(tune_run_thresholds(task, fs.run, split=fs.split, which=fs.model, out=fs.out)[1])
    return 0


def main(argv=None):
    """Entry point; returns the exit code (0, or 2 with one ``error:`` line for bad input)."""
    return cli_main(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
