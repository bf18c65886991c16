"""Training methods as Tasks; importing this package registers them (``--method``).

========  ==============================================================
method    task
========  ==============================================================
lesa      :class:`mll_tf.tasks.lesa.LESATask` (zero-shot, seen/unseen)
csl       :class:`mll_tf.tasks.partial.CSLTask` (partial labels)
asl       :class:`mll_tf.tasks.partial.ASLTask`
ignore    :class:`mll_tf.tasks.partial.IgnoreTask`
negative  :class:`mll_tf.tasks.partial.NegativeTask`
logistic  :class:`mll_tf.tasks.partial.LogisticTask` (IMCL's baseline)
imcl      :class:`mll_tf.tasks.imcl.IMCLTask`
========  ==============================================================

``ml_decoder``, ``ml_gcn`` and ``linear_head``: :mod:`mll_tf.tasks.ml_heads`
(attention heads with the AAM or ASL loss).

Build a task from a configuration with :func:`build_task`, or reload a
trained run's with :func:`load_task`; train with ``task.fit()``.
"""

import dataclasses
import os

from mll_tf.tasks.base import TASKS, Task, TaskConfig, register_task
from mll_tf.tasks import lesa  # noqa: F401
from mll_tf.tasks import partial  # noqa: F401
from mll_tf.tasks import imcl  # noqa: F401
from mll_tf.tasks import ml_heads  # noqa: F401
from mll_tf.tasks import oass  # noqa: F401  (cam, puzzle_cam, oass)

__all__ = ["TASKS", "Task", "TaskConfig", "build_task", "get_task", "load_task", "register_task",
           "task_names"]


def get_task(name):
    """The Task class registered as ``name``.

    Raises:
        KeyError: naming ``--method`` and listing the registered methods.
    """
    return TASKS.get(name)


def task_names():
    """Registered method names (sorted list of str)."""
    return TASKS.names()


def build_task(mapping=None, source="config", **overrides):
    """A Task from a config mapping (``config.yaml`` layout or flat) plus keyword overrides.

    Args:
        mapping: dict or None, e.g. read by
            :func:`mll_tf.training.config.load_config_file`.
        source: str, named in errors (a file name or ``--config``).
        **overrides: run or task fields (``method="csl"``, ``epochs=3``,
            ``gamma_neg=2.0``), applied last.

    Returns:
        the configured :class:`Task` (not validated yet: ``task.check()``).

    Raises:
        KeyError: unknown ``method``.
        ValueError: a key that is neither a run option nor an option of the
            method (named with ``source``).
    """
    from mll_tf.training.config import RunConfig, split_mapping

    mapping = dict(mapping or {})
    mapping.update({k: v for k, v in overrides.items() if k != "task"})
    if "task" in overrides:
        mapping.setdefault("task", {}).update(overrides["task"])
    method = mapping.get("method", RunConfig().method)
    cls = get_task(method)
    run_fields, task_fields = split_mapping(mapping, cls.Config, source)
    run = RunConfig(**run_fields)
    config = cls.Config(**task_fields)
    return cls(run, config)


def load_task(run_dir):
    """The Task of a trained run, from ``<run_dir>/config.yaml``.

    Older flat configuration files are read too (keys that are no longer
    options are ignored).

    Raises:
        FileNotFoundError: ``run_dir`` has no ``config.yaml``.
        ValueError: the file is not a valid configuration.
    """
    import yaml

    from mll_tf.training.config import RunConfig

    from mll_tf.data import fs

    path = os.path.join(run_dir, "config.yaml")
    if not fs.isfile(path):
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml); train one with "
                                f"experiments/train.py")
    data = yaml.safe_load(fs.read_text(path)) or {}
    if "task" not in data:  # a flat file of an older version: keep what is still an option
        cls = get_task(data.get("method", "lesa"))
        known = {f.name for f in dataclasses.fields(RunConfig)} | {f.name for f in dataclasses.fields(cls.Config)}
        data = {k: v for k, v in data.items() if k in known}
        if isinstance(data.get("monitor"), str) and data["monitor"].startswith("val/"):
            data["monitor"] = "val_" + data["monitor"][4:].replace("/", "_")
    task = build_task(data, source=path)
    task.run.run_dir = run_dir
    return task
