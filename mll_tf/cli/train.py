"""Train a method on a dataset (``python experiments/train.py``, console script ``mll-train``).

    python experiments/train.py --method lesa --dataset openclipart
    python experiments/train.py --config lesa_nus_wide --features-root /data/features
    python experiments/train.py --run-dir runs/lesa_openclipart --resume

Every method (``--method``, from the task registry) trains with the same loop
(``keras.Model.fit`` under ``tf.distribute``). A run's configuration is the
run options below plus the method's own options; ``--config FILE`` (a
``config.yaml`` of an earlier run, any YAML of that layout, a Python file
with ``get_config()``, or a packaged config such as ``lesa_nus_wide``) sets
them and flags override it. ``--resume`` continues the run in ``--run-dir``
from its last backed-up step, with its saved configuration unless flags
override it. The resolved configuration is saved as ``<run-dir>/config.yaml``.
Watch a run with ``tensorboard --logdir <run-dir>/tb --host 127.0.0.1``.
"""

import dataclasses
import os
import shlex
import sys

from mll_tf.cli._flags import FlagSet, UsageError, cli_main, import_tensorflow_quietly

__all__ = ["main", "resolve_task"]

PROG = "experiments/train.py"


def build_flags():
    """The tool's :class:`~mll_tf.cli._flags.FlagSet` (run options, then each method's options)."""
    from mll_tf.tasks import TASKS
    from mll_tf.training.config import RunConfig, packaged_configs

    fs = FlagSet(PROG, __doc__)
    fs.define("config", None, "experiment config: a YAML / Python file or a packaged name "
              f"({', '.join(packaged_configs())}); flags override it")
    fs.define("resume", False, "continue the run in --run-dir from its last backup (its architecture and data "
              "options are kept; changing them is refused)")
    fs.define("overwrite", False, "delete what --run-dir holds and start a new run there (without it, an "
              "existing run is never overwritten)")
    fs.define("progress", None, "a Keras progress bar (default: when stdout is a terminal); --noprogress "
              "prints one line per round instead", kind="bool")
    fs.section("run options (every method)")
    fs.define("method", None, f"training method (default: {RunConfig().method})", choices=TASKS.names())
    fs.define_dataclass(RunConfig)
    for name, cls in TASKS.items():
        fs.section(f"--method {name} options")
        fs.define_dataclass(cls.Config)
    return fs


def _task_field_owners():
    from mll_tf.tasks import TASKS

    owners = {}
    for name, cls in TASKS.items():
        for f in dataclasses.fields(cls.Config):
            owners.setdefault(f.name, []).append(name)
    return owners


def resolve_task(fs):
    """Defaults <- --config file <- (with --resume) the run's saved config <- explicit flags.

    Returns:
        (task, config source str or None).

    Raises:
        UsageError / ValueError: naming the flag or file.
    """
    from mll_tf.tasks import TASKS, build_task
    from mll_tf.training.config import RunConfig, load_config_file

    run_names = [f.name for f in dataclasses.fields(RunConfig)]
    owners = _task_field_owners()
    explicit = fs.explicit(run_names + list(owners))
    mapping, source = {}, None
    if fs.config:
        mapping, source = load_config_file(fs.config)
    run_dir = explicit.get("run_dir") or mapping.get("run_dir")
    if fs.resume:
        if not run_dir:
            method = explicit.get("method") or mapping.get("method") or RunConfig().method
            dataset = explicit.get("dataset") or mapping.get("dataset") or RunConfig().dataset
            run_dir = RunConfig(method=method, dataset=dataset).default_run_dir()
        saved = os.path.join(run_dir, "config.yaml")
        from mll_tf.data import fs as gfs

        if gfs.exists(saved):
            from mll_tf.tasks import load_task

            old = load_task(run_dir)
            from mll_tf.training.config import config_to_dict
            mapping, source = config_to_dict(old.run, old.config), saved
    method = explicit.get("method") or mapping.get("method") or RunConfig().method
    if method not in TASKS:
        raise UsageError(f"--method: unknown {method!r}; registered: {', '.join(TASKS.names())}")
    cls = TASKS.get(method)
    own = {f.name for f in dataclasses.fields(cls.Config)}
    for name in explicit:
        if name in owners and name not in own and name not in run_names:
            raise UsageError(f"--{name.replace('_', '-')} is an option of --method "
                             f"{'/'.join(owners[name])}, not of --method {method}")
    if mapping.get("method") and mapping.get("method") != method:
        # A config file for another method: keep its run options, drop its task options.
        mapping = {k: v for k, v in mapping.items() if k in run_names}
    overrides = dict(explicit)
    overrides["method"] = method
    task_over = {k: overrides.pop(k) for k in list(overrides) if k in own and k not in run_names}
    if run_dir:
        overrides["run_dir"] = run_dir
    try:
        task = build_task(mapping, source=source or "--config", task=task_over, **overrides)
    except TypeError as e:
        raise UsageError(f"{source or '--config'}: {e}") from None
    return task, source


def _run(argv):
    import_tensorflow_quietly()
    fs = build_flags()
    if fs.parse(argv) is None:
        return 0
    task, source = resolve_task(fs)
    run = task.run
    if not run.run_dir:
        run.run_dir = run.default_run_dir()
    task.check()  # before TensorFlow starts: --cpu-replicas needs an uninitialised runtime
    if run.cpu_replicas > 1 and not __import__("tensorflow").config.list_physical_devices("GPU"):
        from mll_tf.training.distribute import split_cpu
        split_cpu(run.cpu_replicas)
    verbose = "auto" if fs.progress is None else int(bool(fs.progress))
    from mll_tf.training.runner import fit_task

    fit_task(task, resume=fs.resume, overwrite=fs.overwrite, verbose=verbose, config_source=source)
    here = os.path.dirname(os.path.abspath(sys.executable))
    tb = os.path.join(here, "tensorboard")
    tb = tb if os.path.exists(tb) else "tensorboard"
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    evaluate = os.path.join(repo, "evaluation", "evaluate.py")
    ev_cmd = (f"{shlex.quote(sys.executable)} {shlex.quote(os.path.relpath(evaluate))}"
              if os.path.exists(evaluate) else "mll-evaluate")
    print(f"run directory: {run.run_dir}\n"
          f"  evaluate:    {ev_cmd} --run {shlex.quote(run.run_dir)}\n"
          f"  tensorboard: {shlex.quote(tb)} --logdir {shlex.quote(os.path.join(run.run_dir, 'tb'))} "
          f"--host 127.0.0.1")
    return 0


def main(argv=None):
    """Entry point; returns the exit code (0, or 2 with one ``error:`` line for bad input)."""
    return cli_main(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
