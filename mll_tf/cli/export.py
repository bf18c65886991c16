"""Export a trained run as one model from images to labels (``python evaluation/export.py``, ``mll-export``).

    python evaluation/export.py --run runs/csl_fashion_mnist_grid --format savedmodel
    python evaluation/export.py --run runs/csl_fashion_mnist_grid --format onnx --out deploy/onnx
    python evaluation/export.py --run runs/lesa_openclipart --format litert --label-set seen

The exported graph fuses the recorded preprocessing (central crop + resize to
the run's input size), the backbone (for stored-feature runs: the one the
feature store's manifest records, with its weights) and the trained head:
input ``images`` RGB uint8 ``[B, H, W, 3]`` (the SavedModel also takes
encoded image files, signature ``serving_bytes``), outputs
``probabilities [B, C]`` (LESA: ``scores``) and, when thresholds exist
(``<run>/thresholds.json`` from ``evaluate.py --tune-thresholds``, or
``--thresholds``), ``labels [B, C]``. ``mll_export.json`` beside it holds the
class names, thresholds, input spec and provenance. Formats: ``savedmodel``
(TensorFlow), ``onnx`` (tf2onnx; run with onnxruntime), ``litert``
(TensorFlow Lite / LiteRT), ``openvino``; the last three need
``pip install 'mll_tf[export]'``. Run an export with
``evaluation/infer.py --model <out>``.
"""

import os
import sys

from mll_tf.cli._flags import FlagSet, UsageError, cli_main, import_tensorflow_quietly

__all__ = ["main"]

PROG = "evaluation/export.py"


def build_flags():
    from mll_tf.export.formats import FORMATS

    fs = FlagSet(PROG, __doc__)
    fs.define("run", None, "run directory written by experiments/train.py", required=True)
    fs.define("format", None, "export format", choices=FORMATS, required=True)
    fs.define("out", None, "output folder (default: <run>/export/<format>)")
    fs.define("model", "best", "which saved model", choices=("best", "last"))
    fs.define("thresholds", "auto", "auto (<run>/thresholds.json if tuned for --model), none, or a "
              "thresholds.json path")
    fs.define("label_set", "all", "LESA runs: seen+unseen labels (all) or the seen labels", choices=("all", "seen"))
    fs.define("overwrite", False, "replace an existing export in --out")
    return fs


def _run(argv):
    fs = build_flags()
    if fs.parse(argv) is None:
        return 0
    from mll_tf.data.fs import isdir

    if not isdir(fs.run):
        raise UsageError(f"--run: {fs.run} is not a directory")
    import_tensorflow_quietly()
    from mll_tf.export.formats import export_run

    out = fs.out or os.path.join(fs.run, "export", fs.format)
    sidecar, im = export_run(fs.run, out, fs.format, which=fs.model, thresholds=fs.thresholds,
                             label_set=fs.label_set, overwrite=fs.overwrite)
    thr = "with per-class thresholds (output 'labels')" if sidecar["thresholds"] else "without thresholds"
    print(f"{fs.format}: {os.path.join(out, sidecar['model'])} ({len(sidecar['class_names'])} classes, "
          f"input uint8 [B, H, W, 3] -> {', '.join(sidecar['outputs'])}; {thr}); sidecar "
          f"{os.path.join(out, 'mll_export.json')}")
    return 0


def main(argv=None):
    """Entry point; returns the exit code (0, or 2 with one ``error:`` line for bad input)."""
    return cli_main(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
