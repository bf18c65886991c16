"""Experiment configuration: the run fields every method shares plus the method's own.

A run's configuration is a :class:`RunConfig` (data, optimisation, schedule,
distribution, bookkeeping) and the config dataclass of its task
(``mll_tf.tasks.<method>``, e.g. :class:`mll_tf.tasks.lesa.LESAConfig`).
Both are plain dataclasses whose fields carry their command-line help, range
and choices in ``metadata`` (see :func:`option`), so one description serves
the flags of ``experiments/train.py``, the validation of a YAML or Python
config file and the Python API alike.

Saved as ``<run_dir>/config.yaml``::

    method: lesa
    dataset: openclipart
    ...                 # the RunConfig fields
    task:               # the task's config fields
      num_heads: 10
      ...

:func:`load_config_file` reads such a file, a flat YAML mapping, or a Python
module with a ``get_config()`` function returning that mapping (big_vision /
ml_collections style); flags then override it.
"""

import dataclasses
import importlib.util
import os

import yaml

__all__ = ["RunConfig", "option", "validate_fields", "config_to_dict", "load_config_file",
           "split_mapping", "PACKAGED_CONFIGS_DIR", "packaged_configs"]

#: Folder of the packaged experiment configs (``--config lesa_nus_wide``).
PACKAGED_CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "configs")


def option(default, help, *, min=None, max=None, choices=None, min_exclusive=False,  # noqa: A002
           listed=None):
    """A dataclass field with its flag description.

    Args:
        default: the default value (its type is the flag's type).
        help: str, the ``--help`` text.
        min, max: optional bounds (inclusive; ``min_exclusive`` makes the
            lower bound strict).
        choices: optional tuple of allowed values, or a zero-argument
            callable returning them (a registry's ``names``), so that
            ``--help`` lists what is registered.
        listed: optional zero-argument callable returning names that
            ``--help`` lists without restricting the value to them (e.g. the
            registered datasets, where ``tfds:<name>`` is accepted too).

    Returns:
        ``dataclasses.field``.
    """
    meta = {"help": help, "min": min, "max": max, "choices": choices, "min_exclusive": min_exclusive,
            "listed": listed}
    if isinstance(default, (list, tuple)):
        return dataclasses.field(default_factory=lambda d=tuple(default): d, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _choices(field):
    c = field.metadata.get("choices")
    return tuple(c()) if callable(c) else c


def coerce_fields(cfg):
    """YAML gives lists and ints where a config wants tuples and floats: convert them in place."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if isinstance(default, tuple) and isinstance(v, list):
            setattr(cfg, f.name, tuple(v))
        elif isinstance(default, float) and isinstance(v, int) and not isinstance(v, bool):
            setattr(cfg, f.name, float(v))


def flag_name(name):
    """``batch_size`` -> ``--batch-size`` (the spelling errors use)."""
    return "--" + name.replace("_", "-")


def validate_fields(cfg):
    """Check every field of a config dataclass against its type, range and choices.

    Raises:
        ValueError: one line naming the flag, the bad value and the rule.
    """
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        meta = f.metadata
        name = flag_name(f.name)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if isinstance(default, bool):
            if not isinstance(v, bool):
                raise ValueError(f"{name}: expected true or false, got {v!r}")
            continue
        if isinstance(default, int) and not isinstance(default, bool):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{name}: expected an integer, got {v!r}")
        elif isinstance(default, float):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"{name}: expected a number, got {v!r}")
            v = float(v)
            if v != v or v in (float("inf"), float("-inf")):
                raise ValueError(f"{name}: expected a finite number, got {v!r}")
            setattr(cfg, f.name, v)
        elif isinstance(default, str):
            if not isinstance(v, str):
                raise ValueError(f"{name}: expected a string, got {v!r}")
        elif isinstance(default, tuple):
            if not isinstance(v, (list, tuple)):
                raise ValueError(f"{name}: expected a list, got {v!r}")
            setattr(cfg, f.name, tuple(v))
            v = tuple(v)
        lo, hi = meta.get("min"), meta.get("max")
        values = v if isinstance(v, tuple) else (v,)
        for x in values:
            if isinstance(x, (int, float)) and not isinstance(x, bool):
                if lo is not None and (x < lo or (meta.get("min_exclusive") and x == lo)):
                    rel = ">" if meta.get("min_exclusive") else ">="
                    raise ValueError(f"{name}: must be {rel} {lo}, got {x!r}")
                if hi is not None and x > hi:
                    raise ValueError(f"{name}: must be <= {hi}, got {x!r}")
        choices = _choices(f)
        if choices is not None and v not in choices:
            raise ValueError(f"{name}: {v!r} is not one of {', '.join(map(str, choices))}")
    return cfg


def _optimizer_names():
    from mll_tf.optimizers import optimizer_names
    return optimizer_names()


def _dataset_names():
    from mll_tf.data.datasets import dataset_names
    return dataset_names() + ["tfds:<name>"]


def _backbone_names():
    from mll_tf.backbones import backbone_names
    return backbone_names()


@dataclasses.dataclass
class RunConfig:
    """What every training run has, whatever the method (``<run_dir>/config.yaml``, top level).

    Every field is a flag of ``experiments/train.py`` (``batch_size`` ->
    ``--batch-size`` or ``--batch_size``). Fractions are in [0, 1].
    """
    # --- what to train, on what
    method: str = option("lesa", "training method (a name in the mll_tf.tasks registry)")
    dataset: str = option("openclipart", "dataset adapter whose feature store (or images, with "
                          "--finetune) is trained on", listed=_dataset_names)
    dataset_options: str = option("", "adapter options KEY=VALUE,... (as for extract/build_tfrecords.py); "
                                  "used with --finetune")
    data_root: str = option("", "--finetune: the dataset root ('' -> the adapter's default)")
    features_root: str = option("data/features", "root of the feature stores written by "
                                "extract/build_tfrecords.py")
    backbone: str = option("efficientnet_lite0", "backbone that made the features (or is fine-tuned)",
                           choices=_backbone_names)
    input_size: int = option(224, "square input size in pixels of the backbone", min=1)
    finetune: bool = option(False, "train the backbone end to end on images instead of stored features "
                            "(methods that support it)")
    word_vectors: str = option("glove-6b-50d", "word vectors: 'glove-6b-50d' (offline, PyPI) or a "
                               "GloVe-format text file")
    partial_labels: str = option("none", "simulate partial training labels: none | fpc:<N per class> | "
                                 "rps:<drop fraction>")
    run_dir: str = option("", "run directory ('' -> runs/<method>_<dataset>)")
    # --- optimisation
    optimizer: str = option("adam", "optimizer", choices=_optimizer_names)
    learning_rate: float = option(1e-4, "initial learning rate", min=0.0, min_exclusive=True)
    sgd_momentum: float = option(0.9, "sgd: momentum (0: plain SGD, as Puzzle-CAM's optimizer effectively "
                                 "is)", min=0.0, max=0.999)
    sgd_nesterov: bool = option(True, "sgd: Nesterov momentum (--nosgd-nesterov: the classical momentum 0.9 "
                                "of PyTorch's SGD, as DOR-ML)")
    weight_decay: float = option(0.0, "sgd, adamw: decoupled weight decay (w -= lr * wd * w; never on "
                                 "biases / norm parameters / other variables of <= 1 dimension)", min=0.0)
    lr_schedule: str = option("constant", "constant | adaptive (LESA/IMCL LearningRate.adapt: EMA of the "
                              "monitored metric, decay on a drop) | one_cycle (cosine one-cycle over the run, "
                              "peak --learning-rate) | poly (lr * (1 - t/T)^--lr-poly-power over the run's T "
                              "steps, Puzzle-CAM's PolyOptimizer)",
                              choices=("constant", "adaptive", "one_cycle", "poly"))
    lr_poly_power: float = option(0.9, "poly: the exponent", min=0.0, min_exclusive=True)
    lr_warmup_fraction: float = option(0.2, "one_cycle: fraction of the steps rising to the peak "
                                       "(pct_start)", min=0.0, max=0.999)
    lr_div_factor: float = option(100.0, "one_cycle: the first rate is --learning-rate / this", min=1.0)
    lr_final_div_factor: float = option(1000.0, "one_cycle: the last rate is the first rate / this",
                                        min=1.0)
    lr_signal: float = option(0.3, "adaptive: EMA weight of the newest validation value", min=0.0,
                              max=1.0, min_exclusive=True)
    lr_decay: float = option(0.8, "adaptive: factor applied on a drop of the EMA", min=0.0, max=1.0,
                             min_exclusive=True)
    lr_patience: int = option(5, "adaptive: validation rounds to wait after a decay", min=0)
    lr_floor_fraction: float = option(1e-3, "adaptive: no decay once lr < this fraction of "
                                      "--learning-rate", min=0.0)
    sam_rho: float = option(0.0, "> 0: sharpness-aware minimisation with this radius (two gradient passes "
                            "per step; the reference uses 0.05)", min=0.0)
    sam_adaptive: bool = option(False, "adaptive SAM: perturbation scaled by the squared weights")
    ema_decay: float = option(0.0, "> 0: keep an exponential moving average of the weights with this decay "
                              "(e.g. 0.9997); validation, best.keras and last.keras use it", min=0.0,
                              max=0.999999)
    early_stopping_patience: int = option(0, "> 0: stop after this many validation rounds without a better "
                                          "monitored value", min=0)
    mixup: float = option(0.0, "> 0: MixUp of the training batches with Beta(a, a) weights (features or "
                          "images; methods that train on soft targets)", min=0.0)
    cutmix: float = option(0.0, "> 0: CutMix of the training images with Beta(a, a) areas (--finetune)",
                           min=0.0)
    mix_probability: float = option(1.0, "--mixup/--cutmix: fraction of the batches mixed", min=0.0, max=1.0)
    batch_size: int = option(32, "global batch size (split over the replicas)", min=1)
    epochs: int = option(8, "validation rounds (epochs) to train, unless --max-steps", min=1)
    max_steps: int = option(0, "> 0: train this many steps in all instead of --epochs", min=0)
    eval_every: int = option(0, "> 0: a round is this many steps (the reference's evaluation period) "
                             "instead of one pass over the training split", min=0)
    steps_per_execution: int = option(1, "training steps run per call of the compiled step "
                                      "(keras compile(steps_per_execution)); must divide the round length",
                                      min=1)
    shuffle: bool = option(True, "shuffle the training examples (--noshuffle: file order, as the "
                           "LESA reference)")
    shuffle_buffer: int = option(2048, "records in the shuffle buffer (memory: this many uncompressed "
                                 "feature maps)", min=1)
    cache: bool = option(False, "hold the serialized training split in memory after the first pass")
    seed: int = option(0, "seed of weight initialisation, shuffling and label simulation", min=0)
    deterministic: bool = option(False, "tf.config.experimental.enable_op_determinism(): the same results on "
                                 "every run with the same seed, on any device (on this CPU build runs are "
                                 "already reproducible; cost and scope in docs/training.md)")
    cpu_replicas: int = option(1, "without GPUs: split the CPU into this many MirroredStrategy replicas",
                               min=1)
    distribution: str = option("auto", "mirrored: this machine (GPUs or --cpu-replicas); multi_worker: "
                               "MultiWorkerMirroredStrategy over the cluster in TF_CONFIG (run the same command "
                               "with --resume on every worker; docs/scaling.md); auto: multi_worker when "
                               "TF_CONFIG names several workers", choices=("auto", "mirrored", "multi_worker"))
    data_service: str = option("", "a tf.data service dispatcher (grpc://host:port): the training input pipeline "
                               "runs on its workers instead of in this process (docs/scaling.md); empty: here")
    jit_compile: bool = option(False, "compile the training step with XLA")
    precision: str = option("float32", "float32 | bfloat16 (Keras mixed_bfloat16: CPUs with AVX512-BF16/AMX, "
                            "recent GPUs) | mixed_float16 (GPU only, with loss scaling); the loss, softmax over "
                            "regions, BatchNorm statistics and metrics stay float32 (docs/performance.md)",
                            choices=("float32", "bfloat16", "mixed_float16"))
    # --- validation and bookkeeping
    monitor: str = option("", "validation metric that selects best.keras and drives --lr-schedule "
                          "adaptive ('' -> the method's)")
    log_every: int = option(20, "TensorBoard: write batch-level scalars every N steps", min=1)
    backup_every: int = option(500, "back up the training state every N steps (and after every round) "
                               "so that --resume continues from the last saved step", min=1)

    def __post_init__(self):
        coerce_fields(self)

    def validate(self):
        """Check ranges and choices (:func:`validate_fields`), then cross-field rules.

        Raises:
            ValueError: one line naming the flag.
        """
        validate_fields(self)
        from mll_tf.data.simulation import parse_scheme
        try:
            parse_scheme(self.partial_labels or "none")
        except ValueError as e:
            raise ValueError(f"--partial-labels: {e}") from None
        if self.steps_per_execution > 1:
            for name, value in (("--eval-every", self.eval_every), ("--max-steps", self.max_steps)):
                if value and value % self.steps_per_execution:
                    raise ValueError(f"{name} {value} must be a multiple of --steps-per-execution "
                                     f"{self.steps_per_execution}")
        return self

    def default_run_dir(self):
        """``runs/<method>_<dataset>`` with path characters of the dataset name replaced."""
        return os.path.join("runs", f"{self.method}_{self.dataset}".replace(":", "_").replace("/", "_"))

    def features_dir(self, split):
        """``<features_root>/<dataset>/<backbone>_<size>/<split>`` (as written by extract/)."""
        ds = self.dataset.replace(":", "_").replace("/", "_")
        return os.path.join(self.features_root, ds, f"{self.backbone}_{self.input_size}", split)

    def steps_per_round(self, num_examples):
        """Training steps between two validations: ``eval_every``, or one pass (``N // batch``)."""
        if self.eval_every > 0:
            return self.eval_every
        return num_examples // self.batch_size

    def num_rounds(self, num_examples):
        """Validation rounds: ``epochs``, or ``ceil(max_steps / steps_per_round)``."""
        if self.max_steps > 0:
            per = self.steps_per_round(num_examples)
            return -(-self.max_steps // max(per, 1))
        return self.epochs

    def total_steps(self, num_examples):
        """Training steps of the whole run."""
        if self.max_steps > 0:
            return self.max_steps
        return self.epochs * self.steps_per_round(num_examples)


def config_to_dict(run, task_config):
    """The YAML mapping of a run: RunConfig fields, then ``task:`` with the task's fields."""
    d = dataclasses.asdict(run)
    t = dataclasses.asdict(task_config)
    for k, v in list(t.items()):
        if isinstance(v, tuple):
            t[k] = list(v)
    d["task"] = t
    return d


def split_mapping(mapping, task_config_cls, source):
    """Split a config mapping into (run fields, task fields).

    Accepts the saved layout (task fields under ``task:``) and a flat one
    (any key that is a task field goes to the task).

    Raises:
        ValueError: naming ``source`` and every key that is neither.
    """
    run_names = {f.name for f in dataclasses.fields(RunConfig)}
    task_names = {f.name for f in dataclasses.fields(task_config_cls)}
    mapping = dict(mapping or {})
    task = dict(mapping.pop("task", None) or {})
    run = {}
    for k, v in mapping.items():
        if k in run_names:
            run[k] = v
        elif k in task_names:
            task[k] = v
        else:
            raise ValueError(f"{source}: unknown key {k!r} (not a run option nor an option of "
                             f"--method {mapping.get('method', '?')})")
    unknown = sorted(set(task) - task_names)
    if unknown:
        raise ValueError(f"{source}: {', '.join(repr(k) for k in unknown)} are not options of "
                         f"{task_config_cls.__name__}")
    return run, task


def packaged_configs():
    """Names of the experiment configs shipped with the package (``--config NAME``)."""
    if not os.path.isdir(PACKAGED_CONFIGS_DIR):
        return []
    return sorted(os.path.splitext(f)[0] for f in os.listdir(PACKAGED_CONFIGS_DIR)
                  if f.endswith((".yaml", ".py")) and not f.startswith("_"))


def load_config_file(path_or_name):
    """Read an experiment config: a ``.yaml`` file, a ``.py`` module with ``get_config()``, or a packaged name.

    Args:
        path_or_name: str, a file path, or the name of a packaged config
            (``lesa_nus_wide``: ``mll_tf/configs/lesa_nus_wide.yaml``).

    Returns:
        (dict mapping, str resolved path).

    Raises:
        ValueError: naming ``--config`` when the file does not exist, is not
            a mapping, or a Python config has no ``get_config()``.
    """
    path = os.fspath(path_or_name)
    if not os.path.exists(path):
        for ext in (".yaml", ".py"):
            cand = os.path.join(PACKAGED_CONFIGS_DIR, path + ext)
            if os.path.exists(cand):
                path = cand
                break
        else:
            raise ValueError(f"--config: no file {path!r} and no packaged config of that name "
                             f"(packaged: {', '.join(packaged_configs())})")
    if path.endswith(".py"):
        spec = importlib.util.spec_from_file_location("_mll_tf_config", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if not hasattr(module, "get_config"):
            raise ValueError(f"--config {path}: a Python config must define get_config()")
        data = module.get_config()
        data = dict(data.to_dict() if hasattr(data, "to_dict") else data)
    else:
        with open(path) as f:
            try:
                data = yaml.safe_load(f)
            except yaml.YAMLError as e:
                raise ValueError(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: expected a mapping of options, got {type(data).__name__}")
    return data, path
