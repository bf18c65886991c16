"""Import the original implementation's released weights into a run (``python evaluation/import_weights.py``).

    python evaluation/import_weights.py --config lesa_nus_wide --run-dir runs/lesa_release \\
        --features-root features --checkpoint cvpr20_LESA/results/release_zs_NUS_WIDE_.../model.ckpt

``--source lesa_tf1``: LESA's TF1 checkpoint (hbdat/cvpr20_LESA), read with
``tf.train.load_checkpoint`` and mapped by variable name onto the LESA model
that the run options describe (every option of ``experiments/train.py`` is
accepted: dataset, features, ``--num-heads``, ``--conv-channels``, ...):
``conv/conv/weights``, the ``conv/conv/batch_normalization`` variables,
``attention_layer/w_att_1``, ``w_att_2`` and ``prediction_frac/W`` (see
:mod:`mll_tf.export.import_weights`). Optimizer slots and training counters
are skipped; any missing, unknown or mis-shaped variable is refused by name
and nothing is written. The result is a run directory like a trained one
(``config.yaml``, ``label_split.json``, ``label_embeddings.npz``,
``best.keras`` = ``last.keras``, plus ``imported_weights.json``), so
``evaluate.py``, ``infer.py`` and ``export.py`` work on it.

``--source imcl_npz``: IMCL's fixed-feature model (hbdat/cvpr20_IMCL saves
``models_ES.npz`` / ``models_final.npz`` with ``Thetas_1``, ``Thetas_f`` and
``Gs``, one slice per experiment along the last axis; ``--experiment``
picks it) into a ``--method imcl`` run on stored features; pass
``--imcl-feature-map`` when the file has ``Thetas_1`` and an
``--imcl-graph`` whose non-zero pattern holds the file's ``G``::

    python evaluation/import_weights.py --source imcl_npz --method imcl --dataset openimages \
        --features-root features --imcl-feature-map --imcl-graph graph.npz \
        --checkpoint cvpr20_IMCL/.../models_ES.npz --run-dir runs/imcl_release

``--source dor_pth``: a deep-object-reid (tosfaq/deep-object-reid, branch
``multilabel``; Prokofiev & Sovrasov 2022) ``.pth.tar`` of an EfficientNetV2
model (``efficientnetv2_s_*`` / ``efficientnetv2_l_*``, timm
``tf_efficientnetv2_*``) into a ``--finetune`` run of ``--method
linear_head`` (TimmModelsWrapper: ``nn.Linear``, or ``AngleSimpleLinear``
with ``--loss aam``), ``ml_decoder`` (``mld_*``) or ``ml_gcn`` (``gcn_*``)::

    python evaluation/import_weights.py --source dor_pth --method ml_decoder --loss aam --aam-scale 23 \\
        --finetune --backbone efficientnetv2_s --input-size 448 --dataset json --data-root datasets/VOC \\
        --checkpoint model.pth.tar-60 --run-dir runs/dor_mld_voc

The file is read without torch by a restricted unpickler (tensors, NumPy
scalars; the optimizer / scheduler entries are skipped as inert
placeholders; any other global is refused); a ``module.`` prefix is
removed. Every tensor is mapped by name (timm / torchreid names -> Keras
layers, with the layout conversions; :mod:`mll_tf.export.dor_pth`);
``num_batches_tracked``, the unused ``act2`` PReLU and ``gcn_*``'s unused
``backbone.model.classifier`` are skipped; a missing, unknown or mis-shaped
tensor is refused by name and nothing is written. The head type, the loss
(cosine head), the number of classes, the ML-Decoder sizes and the GCN width
come from the checkpoint and must agree with the flags (``--method``,
``--loss``, ``--backbone``, the dataset's classes, and ``classes_map`` when
the file has it); the AAM scale s is not in the file (``--aam-scale``, the
original config's ``loss.softmax.s``). The backbone's rescaling becomes
deep-object-reid's ``x / 127.5 - 1`` (Keras' is ``x / 128 - 1``);
``imported_weights.json`` records it and what is not reproduced (the
original stretches images to 448 x 448, our loader crops the centre).
"""

import os
import sys

import numpy as np

from mll_tf.cli._flags import UsageError, cli_main, import_tensorflow_quietly

__all__ = ["main"]

PROG = "evaluation/import_weights.py"
#: --source -> the --method(s) it imports into
SOURCES = {"lesa_tf1": ("lesa",), "imcl_npz": ("imcl",), "dor_pth": ("linear_head", "ml_decoder", "ml_gcn")}


def build_flags():
    from mll_tf.cli import train as train_cli

    fs = train_cli.build_flags()
    fs.prog, fs.description = PROG, __doc__.strip()
    fs.section("import")
    fs.define("checkpoint", None, "the released checkpoint (lesa_tf1: TF1 prefix, e.g. .../model.ckpt; "
              "imcl_npz: models_ES.npz / models_final.npz; dor_pth: deep-object-reid .pth.tar / .pth)")
    fs.define("source", "lesa_tf1", "what the checkpoint is: lesa_tf1 into --method lesa, imcl_npz into "
              "--method imcl, dor_pth into --finetune --method linear_head|ml_decoder|ml_gcn",
              choices=tuple(SOURCES))
    fs.define("experiment", 0, "imcl_npz: the experiment (slice of the last axis) to import", kind="int",
              min=0)
    return fs


def _run(argv):
    import_tensorflow_quietly()
    from mll_tf.cli import train as train_cli

    fs = build_flags()
    if fs.parse(argv) is None:
        return 0
    if not fs.checkpoint:
        raise UsageError("--checkpoint is required")
    task, source = train_cli.resolve_task(fs)
    if task.name not in SOURCES[fs.source]:
        raise UsageError(f"--source {fs.source} imports into --method {' | '.join(SOURCES[fs.source])} runs, "
                         f"not {task.name}")
    if task.name == "imcl" and task.run.finetune:
        raise UsageError("--source imcl_npz imports a fixed-feature model: drop --finetune")
    if fs.source == "dor_pth" and not task.run.finetune:
        raise UsageError("--source dor_pth imports a whole model (backbone + head): pass --finetune")
    run = task.run
    run.run_dir = run.run_dir or run.default_run_dir()
    run_dir = run.run_dir
    if any(os.path.exists(os.path.join(run_dir, f)) for f in ("best.keras", "last.keras")) and not fs.overwrite:
        raise UsageError(f"--run-dir: {run_dir} already holds a model; pass --overwrite or another --run-dir")
    from mll_tf.export.import_weights import import_imcl_npz, import_lesa_tf1, read_tf1_checkpoint
    from mll_tf.training.atomic import save_keras_model, write_json
    from mll_tf.training.runner import _save_config

    task.check()
    extra = {}
    if fs.source == "dor_pth":
        from mll_tf.export.dor_pth import import_dor_run

        model, report, extra = import_dor_run(task, fs.checkpoint, run_dir)   # raises before anything is written
    elif fs.source == "lesa_tf1":
        ckpt = read_tf1_checkpoint(fs.checkpoint)
        task.prepare(run_dir)
        model = task.build_model()
        report = import_lesa_tf1(model, ckpt)   # raises before anything is written
    else:
        if not os.path.isfile(fs.checkpoint):
            raise UsageError(f"--checkpoint: no file {fs.checkpoint}")
        task.prepare(run_dir)
        model = task.build_model()
        report = import_imcl_npz(model, fs.checkpoint, experiment=fs.experiment)
        report.setdefault("skipped", [])
    os.makedirs(run_dir, exist_ok=True)
    for name, array in extra.pop("files", {}).items():   # dor_pth ml_gcn: the label embeddings (inp)
        with open(os.path.join(run_dir, name), "wb") as f:
            np.save(f, array, allow_pickle=False)
    task.save_run_files(run_dir)
    _save_config(task, run_dir)
    for name in ("best.keras", "last.keras"):
        save_keras_model(model, os.path.join(run_dir, name))
    write_json(os.path.join(run_dir, "imported_weights.json"),
               {"source": fs.source, "checkpoint": os.path.abspath(fs.checkpoint), **extra, **report})
    print(f"imported {len(report['imported'])} variables from {fs.checkpoint} "
          f"({len(report['skipped'])} training-state / unused variables skipped) -> {run_dir}/best.keras; "
          f"evaluate with: python evaluation/evaluate.py --run {run_dir}")
    print(f"the name mapping (checkpoint -> model) is in {os.path.join(run_dir, 'imported_weights.json')}")
    return 0


def main(argv=None):
    """Entry point; returns the exit code (0, or 2 with one ``error:`` line for bad input)."""
    return cli_main(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
