"""The Task: one training method, everything the one loop needs from it.

A task (TF Model Garden's ``Task``; keras-hub's task/backbone split) owns a
method's configuration, data, model, loss, validation and evaluation; the
loop itself is ``keras.Model.fit`` in :func:`mll_tf.training.runner.fit_task`
and is the same for every method. A method is one module::

    @dataclasses.dataclass
    class MyConfig(TaskConfig):
        width: int = option(16, "hidden units", min=1)

    @register_task("mine")
    class MyTask(Task):
        Config = MyConfig

        def build_model(self): ...           # a keras.Model with train_step/test_step
        def build_loss(self): ...
        def train_dataset(self, batch_size, start_step=0): ...
        def validation_metrics(self, model): ...

``--method mine`` then works in ``experiments/train.py``, ``evaluate.py`` and
``infer.py``, with ``--width`` as a flag (``tests/tasks/test_registry.py``
builds and trains such a task).
"""

import dataclasses
import os

from mll_tf.registry import Registry
from mll_tf.training.config import RunConfig, coerce_fields, validate_fields

__all__ = ["TASKS", "OwnLossSteps", "Predictor", "Task", "TaskConfig", "register_task", "write_evaluation",
           "EXTRACT_HINT", "extract_command"]

TASKS = Registry("task", flag="--method")

#: The command that makes a missing feature store (completed by :func:`extract_command`).
EXTRACT_HINT = ("python extract/build_tfrecords.py --dataset {dataset} --backbone {backbone} "
                "--input-size {input_size}")


def extract_command(run):
    """The complete extraction command that makes the feature store a run configuration reads.

    Adds ``--data-root``: the run's, or, when the adapter's default folder does
    not exist here, a ``/path/to/<dataset>`` placeholder (the line after the
    command says to replace it); and the run's ``--dataset-options`` and
    ``--out-dir``.

    Returns:
        (command str, note str or "").
    """
    import inspect
    import shlex
    import sys

    cmd = EXTRACT_HINT.format(dataset=run.dataset, backbone=run.backbone, input_size=run.input_size)
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          "extract", "build_tfrecords.py")
    if os.path.exists(script):  # a checkout: this interpreter and the script, from here
        cmd = cmd.replace("python extract/build_tfrecords.py",
                          f"{shlex.quote(sys.executable)} {shlex.quote(os.path.relpath(script))}")
    else:  # an installed package
        cmd = cmd.replace("python extract/build_tfrecords.py", "mll-extract")
    note = ""
    root = run.data_root
    if not root:
        default = None
        try:
            from mll_tf.data.datasets import get_dataset

            cls = get_dataset(run.dataset)
            param = inspect.signature(cls).parameters.get("root")
            default = None if param is None or param.default is inspect.Parameter.empty else param.default
        except (KeyError, TypeError, ValueError):
            pass
        if not (default and os.path.exists(default)):
            root = f"/path/to/{run.dataset.replace(':', '_').replace('/', '_')}"
            note = (f"\n(replace {root} with the folder holding {run.dataset} in its official layout"
                    + (f"; the adapter's default, {default}, does not exist here)" if default else ")"))
    if root:
        cmd += f" --data-root {shlex.quote(root)}"
    if run.dataset_options:
        cmd += f" --dataset-options {shlex.quote(run.dataset_options)}"
    return cmd + f" --out-dir {shlex.quote(run.features_root)}", note


def write_evaluation(out, record, header, rows):
    """Write ``<out>/summary.json`` (``record``) and ``<out>/per_class.csv`` (``header`` + ``rows``), atomically.

    ``out`` may be any ``tf.io.gfile`` path (a local folder, ``gs://``, ``ram://``).

    Returns:
        ``out`` (str).
    """
    import csv
    import io
    import json

    from mll_tf.training.atomic import write_text

    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    write_text(os.path.join(out, "summary.json"), json.dumps(record, indent=2))
    write_text(os.path.join(out, "per_class.csv"), text.getvalue())
    return out


def register_task(name):
    """Class decorator: register a :class:`Task` subclass as ``--method name``.

    Sets ``cls.name = name``.

    Raises:
        ValueError: ``name`` is taken by another class.
    """
    def deco(cls):
        cls.name = name
        return TASKS.register(name)(cls)
    return deco


@dataclasses.dataclass
class TaskConfig:
    """Base of a method's own options (the ``task:`` section of ``config.yaml``)."""

    def __post_init__(self):
        coerce_fields(self)


class OwnLossSteps:
    """Mixin of the task models whose ``train_step`` computes the method's loss itself.

    ``compile(loss=...)`` keeps the loss object as ``model.loss`` for the
    step (a LESA loss takes the model's dict of outputs, a partial-label loss
    is normalised by global counts) instead of Keras' compiled-loss wrapper,
    which expects one loss per model output.
    """

    def compile(self, optimizer="rmsprop", loss=None, **kwargs):
        super().compile(optimizer=optimizer, **kwargs)
        self.loss = loss

    def get_compile_config(self):
        # Saved models are loaded for inference; their task recompiles them for training.
        return None

    def compile_from_config(self, config):
        pass


def _normalise_monitor(name):
    """Old spellings (``val/seen/F1@5``) -> Keras log keys (``val_seen_F1@5``)."""
    if name.startswith("val/"):
        return "val_" + name[len("val/"):].replace("/", "_")
    return name


class Task:
    """A training method.

    Attributes (class level):
        name: str, the ``--method`` it is registered as.
        Config: its :class:`TaskConfig` dataclass.
        supports_features: bool, trains on a feature store.
        supports_finetune: bool, trains end to end on images (``--finetune``).
        max_replicas: int or None, the most ``tf.distribute`` replicas its
            ``train_step`` supports (None: any).
        default_monitor: str, the log key that selects ``best.keras`` unless
            ``--monitor`` says otherwise.
        evaluate_options: names of ``evaluation/evaluate.py`` options this
            task accepts besides ``--split``/``--model``/``--out``.
        resumable_fields: names of the task's options that ``--resume`` may
            change (evaluation-only settings); the others are fixed for the
            life of a run.

    Args:
        run: :class:`mll_tf.training.config.RunConfig` (its ``method`` is
            set to this task's name).
        config: the task's :attr:`Config` (default: its defaults).
    """

    name = None
    Config = TaskConfig
    supports_features = True
    supports_finetune = False
    max_replicas = None
    default_monitor = "val_mAP"
    evaluate_options = ()
    #: the task's options a resumed run may change (everything else is fixed for a run's life)
    resumable_fields = ()

    def __init__(self, run=None, config=None):
        self.run = run if run is not None else RunConfig()
        self.run.method = self.name
        self.config = config if config is not None else self.Config()
        if not isinstance(self.config, self.Config):
            raise TypeError(f"--method {self.name}: config must be a {self.Config.__name__}, "
                            f"got {type(self.config).__name__}")

    # --- configuration ---------------------------------------------------------------------
    @property
    def monitor(self):
        """The log key that selects ``best.keras`` (``--monitor`` or the method's default)."""
        return _normalise_monitor(self.run.monitor) if self.run.monitor else self.default_monitor

    def check(self):
        """Validate the configuration and the inputs; nothing is written.

        Raises:
            ValueError: a bad option (named).
            MissingFeaturesError: a feature store is missing (with the command
                that makes it).
        """
        self.run.validate()
        validate_fields(self.config)
        if self.run.finetune and not self.supports_finetune:
            raise ValueError(f"--finetune: --method {self.name} trains on stored features only")
        if not self.run.finetune and not self.supports_features:
            raise ValueError(f"--method {self.name} trains end to end on images: pass --finetune")
        if not self.run.finetune:
            for split in ("train", "val", "test"):
                self.read_manifest(split)

    def describe(self):
        """One line printed when training starts."""
        return f"{self.run.dataset} ({'images' if self.run.finetune else 'stored features'})"

    # --- data --------------------------------------------------------------------------------
    def features_dir(self, split):
        """The feature-store folder of ``split`` for this run."""
        return self.run.features_dir(split)

    def read_manifest(self, split):
        """The :class:`~mll_tf.data.feature_store.Manifest` of ``split``.

        Raises:
            MissingFeaturesError: naming the folder and the extraction command.
        """
        from mll_tf.data import fs
        from mll_tf.data.feature_store import MissingFeaturesError, read_manifest

        path = self.features_dir(split)
        if not fs.exists(fs.join(path, "manifest.json")):
            cmd, note = extract_command(self.run)
            raise MissingFeaturesError(f"no {split!r} features at {path}; make them with:\n    {cmd}{note}")
        return read_manifest(path)

    def feature_store_identity(self):
        """Which extraction of each split this run reads: recorded in ``run_info.json``, checked by ``--resume``.

        Returns:
            None when the run trains on images (``--finetune``), else dict
            split -> ``{"created": str (the manifest's first-save time),
            "num_examples": int, "num_bytes": int (its shards)}`` for the
            splits that have a store (some datasets have no test split). A
            new extraction into the same folder changes ``created``.
        """
        from mll_tf.data.feature_store import MissingFeaturesError

        if self.run.finetune:
            return None
        out = {}
        for split in ("train", "val", "test"):
            try:
                m = self.read_manifest(split)
            except MissingFeaturesError:
                continue
            out[split] = {"created": m.created, "num_examples": int(m.num_examples),
                          "num_bytes": int(sum(int(sh.get("num_bytes", 0)) for sh in m.shards))}
        return out

    def prepare(self, run_dir, resume=False):
        """Read what training needs, before the model is built; writes nothing.

        Args:
            run_dir: str, the run directory (with ``resume``, files saved by an
                earlier start of the run are read back from it).
            resume: bool, the run is being resumed.
        """

    def save_run_files(self, run_dir):
        """Write the task's run files (label split, simulated labels, ...), after every check passed."""

    @property
    def num_train_examples(self):
        """Training examples per pass (set by :meth:`prepare`)."""
        raise NotImplementedError

    def train_dataset(self, batch_size, start_step=0):
        """The infinite, batched training stream, started at ``start_step`` steps.

        Returns:
            ``tf.data.Dataset`` of the model's ``train_step`` inputs.
        """
        raise NotImplementedError

    # --- model -------------------------------------------------------------------------------
    def build_model(self):
        """The built Keras model, with this method's ``train_step`` / ``test_step``.

        Called inside the strategy's scope.
        """
        raise NotImplementedError

    def build_loss(self):
        """The method's loss (a ``keras.losses.Loss``), passed to ``compile``."""
        raise NotImplementedError

    def optimizer_variables(self, model):
        """The variables the compiled optimizer updates (default: all trainable ones)."""
        return model.trainable_variables

    def on_model_built(self, model):
        """Hook after compile, inside the strategy's scope (e.g. build extra optimizers)."""

    def callbacks(self, run_dir):
        """The method's own Keras callbacks (attention images, prior file, ...)."""
        return []

    def validation_metrics(self, model):
        """Metrics on the validation split, ``{name: float}``, fractions in [0, 1]."""
        raise NotImplementedError

    def on_fit_end(self, model, run_dir):
        """Hook after ``fit`` returns."""

    # --- the loop ------------------------------------------------------------------------------
    def fit(self, resume=False, overwrite=False, verbose="auto"):
        """Train with ``keras.Model.fit`` into ``run.run_dir`` (see :func:`~mll_tf.training.runner.fit_task`)."""
        from mll_tf.training.runner import fit_task
        return fit_task(self, resume=resume, overwrite=overwrite, verbose=verbose)

    # --- after training --------------------------------------------------------------------------
    def load_model(self, run_dir, which="best"):
        """The saved model (``best`` or ``last``) of a run of this task.

        Raises:
            FileNotFoundError: naming the missing file.
        """
        import keras

        import mll_tf.tasks  # noqa: F401  (registers the training models for deserialisation)

        from mll_tf.data import fs

        path = os.path.join(run_dir, f"{which}.keras")
        if not fs.isfile(path):
            raise FileNotFoundError(f"no saved model {path} (--model {which})")
        return keras.models.load_model(path, compile=False)

    def evaluate(self, run_dir, split="test", which="best", out=None, **options):
        """Evaluate a trained run; writes ``summary.json`` and ``per_class.csv``.

        Returns:
            (summary dict, printable report str).
        """
        raise NotImplementedError

    def predictor(self, run_dir, which="best"):
        """A :class:`Predictor` scoring new images with a trained run."""
        raise NotImplementedError

    def inference_model(self, run_dir, which="best", **options):
        """The trained run as one model from images to scores (``infer.py``, ``export.py``).

        The default (:func:`mll_tf.export.inference.default_inference_model`)
        serves the sigmoid methods (the saved model outputs logits; scores are
        their sigmoid) and LESA (``options``: ``label_set="seen"|"all"``). A
        method whose model outputs something else (e.g. cosines without
        their scale) overrides this and returns
        :func:`mll_tf.export.inference.from_task_parts` with its own head.

        Returns:
            :class:`mll_tf.export.inference.InferenceModel`.
        """
        from mll_tf.export.inference import default_inference_model
        return default_inference_model(self, run_dir, which, **options)


@dataclasses.dataclass
class Predictor:
    """What ``evaluation/infer.py`` needs from a trained run.

    Attributes:
        label_names: list of C str, the score columns.
        score: callable ``features float32 [n, R, D] -> float32 [n, C]``.
        is_probability: bool, scores are probabilities in [0, 1] (else
            unbounded logits, e.g. LESA's).
        manifest: the training split's manifest (its extractor is rebuilt to
            make features of new images).
    """
    label_names: list
    score: object
    is_probability: bool
    manifest: object
