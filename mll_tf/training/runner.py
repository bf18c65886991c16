"""The one training loop: any :class:`mll_tf.tasks.base.Task`, trained by ``keras.Model.fit``.

:func:`fit_task` is what ``experiments/train.py`` and ``Task.fit`` run:

1. check the configuration and the inputs (nothing is written before);
2. build the ``tf.distribute`` strategy (MirroredStrategy over all GPUs, or
   ``--cpu-replicas`` logical CPUs, or one CPU);
3. let the task prepare its run files (label split, simulated labels, ...);
4. build and compile the task's model under the strategy (its own
   ``train_step`` / ``test_step``; ``steps_per_execution``, XLA);
5. with ``resume``, restore the newest backup *before* the input pipeline is
   built, so that the pipeline starts at the saved step;
6. ``model.fit`` with rounds of ``steps_per_round`` steps as epochs and the
   callbacks of :mod:`mll_tf.training.callbacks`;
7. write ``final_metrics.json``.

Run directory::

    config.yaml            the resolved configuration (load it with --config)
    run_info.json          versions of Python/TF/Keras/NumPy, git commit, command, and which
                           extraction of the feature store it reads (checked by --resume)
    best.keras, last.keras the model selected by --monitor, and the last one
    history.csv            one row per round (fractions, not percent)
    final_metrics.json     the last round's metrics
    tb/                    TensorBoard (train/, validation/, and task images)
    backup/                the training state for --resume
    ...                    the task's own files (label_split.json, prior.csv, ...)
"""

import datetime
import os
import platform
import subprocess
import sys

from mll_tf.training.config import config_to_dict

__all__ = ["RESUMABLE_RUN_FIELDS", "RunDirectoryError", "check_resume", "check_same_features", "fit_task",
           "run_info"]


def _git_commit():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def run_info(config_source=None):
    """Provenance of a run: versions, git commit of the code, command line, time.

    Returns:
        dict (JSON-serialisable).
    """
    import keras
    import numpy as np
    import tensorflow as tf

    import mll_tf

    return {
        "mll_tf": mll_tf.__version__,
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "command": sys.argv,
        "config_file": config_source,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _save_config(task, run_dir):
    import yaml

    from mll_tf.training.atomic import write_text

    path = os.path.join(run_dir, "config.yaml")
    write_text(path, f"# mll_tf run configuration; `experiments/train.py --config {path}` re-runs it\n"
               + yaml.safe_dump(config_to_dict(task.run, task.config), sort_keys=False))


def _verbose(verbose):
    if verbose == "auto":
        return 1 if sys.stdout.isatty() else 0
    return int(verbose)


#: Run options a resumed run may change: lengths, learning rate, bookkeeping, where files are, how the
#: step is executed. Everything else (the method, its data and architecture, the order of the examples,
#: the optimizer's kind) is fixed for the life of a run.
RESUMABLE_RUN_FIELDS = frozenset({
    "run_dir", "features_root", "data_root", "epochs", "max_steps", "eval_every", "learning_rate",
    "weight_decay", "lr_schedule", "lr_signal", "lr_decay", "lr_patience", "lr_floor_fraction",
    "lr_warmup_fraction", "lr_div_factor", "lr_final_div_factor", "lr_poly_power", "early_stopping_patience",
    "steps_per_execution", "jit_compile", "cpu_replicas", "distribution", "data_service", "monitor", "log_every",
    "backup_every", "deterministic"})


class RunDirectoryError(ValueError):
    """The run directory holds a run that this command would overwrite or contradict."""


def _run_files(run_dir):
    from mll_tf.data import fs

    return sorted(fs.listdir(run_dir)) if fs.isdir(run_dir) else []


def check_resume(task, run_dir):
    """Refuse, before anything is written, a resume that would change a run's architecture or data.

    Compares ``task``'s configuration with ``<run_dir>/config.yaml``. A field
    left at its default takes the saved value (it was not asked for); a field
    set to another value is refused by name unless it is in
    :data:`RESUMABLE_RUN_FIELDS` or the task's ``resumable_fields``.

    Raises:
        RunDirectoryError: naming every conflicting flag, the saved and the
            requested values.
    """
    import dataclasses

    from mll_tf.tasks import load_task
    from mll_tf.training.config import flag_name

    from mll_tf.data import fs

    if not fs.isfile(os.path.join(run_dir, "config.yaml")):
        return
    saved = load_task(run_dir)
    conflicts = []
    for mine, theirs, allowed in ((task.run, saved.run, RESUMABLE_RUN_FIELDS),
                                  (task.config, saved.config, frozenset(task.resumable_fields))):
        if type(mine) is not type(theirs):
            conflicts.append(f"--method {task.name} (the run is --method {saved.name})")
            continue
        defaults = type(mine)()
        for f in dataclasses.fields(mine):
            new, old = getattr(mine, f.name), getattr(theirs, f.name)
            if new == old or f.name == "method":
                continue
            if new == getattr(defaults, f.name):  # not asked for: keep the run's value
                setattr(mine, f.name, old)
                continue
            if f.name not in allowed:
                conflicts.append(f"{flag_name(f.name)} {new!r} (the run has {old!r})")
    if conflicts:
        raise RunDirectoryError(
            f"--resume: {run_dir} was trained otherwise; changing the architecture, the data or the "
            f"order of the examples of a run is refused: {'; '.join(conflicts)}. Keep the run's values, or "
            f"start a new run with another --run-dir (or --overwrite this one).")


def check_same_features(task, run_dir, store):
    """Refuse, before anything is written, a resume on features extracted again since the run started.

    ``store`` is ``task.feature_store_identity()``; it is compared with the
    one ``<run_dir>/run_info.json`` recorded (runs started before it was
    recorded, and runs on images, are not checked). A resumed run on a new
    extraction would mix two sets of features in one model and one history.

    Args:
        task: the :class:`mll_tf.tasks.base.Task` being resumed (names the store in the message).
        run_dir: str, the run directory (local path or any ``tf.io.gfile`` URL).
        store: dict split -> ``{"created", "num_examples", "num_bytes"}`` or None
            (:meth:`~mll_tf.tasks.base.Task.feature_store_identity`).

    Raises:
        RunDirectoryError: naming the splits, the run's and the store's extraction times.
    """
    import json

    from mll_tf.data import fs

    path = os.path.join(run_dir, "run_info.json")
    if store is None or not fs.isfile(path):
        return
    with fs.open_file(path, "r") as f:
        saved = json.load(f).get("feature_store")
    if not saved:
        return
    changed = [f"{split} (the run used the extraction of {saved[split].get('created')}, the store now holds "
               f"{now['created']})" for split, now in store.items() if split in saved and saved[split] != now]
    if changed:
        raise RunDirectoryError(
            f"--resume: the features in {os.path.dirname(task.features_dir('train'))} were extracted again "
            f"since {run_dir} started: {'; '.join(changed)}. A resumed run would mix two extractions; start a new "
            f"run (--overwrite, or another --run-dir).")


def _recreate_models(task, model, run_dir, state, backup_dir):
    """``--resume``: re-create ``best.keras`` / ``last.keras`` that are missing or unreadable.

    ``last.keras`` comes from the restored state; ``best.keras`` from the
    best weights kept in the backup (``best.weights.h5``).
    """
    from mll_tf.data import fs
    from mll_tf.training.atomic import keras_file_ok, load_weights, save_keras_model

    last = os.path.join(run_dir, "last.keras")
    best = os.path.join(run_dir, "best.keras")
    best_weights = os.path.join(backup_dir, "best.weights.h5")
    if not keras_file_ok(best) and fs.isfile(best_weights):
        print(f"--resume: {best} is missing or damaged; re-created from {best_weights}")
        load_weights(model, best_weights)
        save_keras_model(model, best)
        load_weights(model, state["weights"])
    if not keras_file_ok(last) and state.get("rounds_done"):
        from mll_tf.training.recipe import swap_ema_weights

        print(f"--resume: {last} is missing or damaged; re-created from the backup at step {state['step']}")
        swapped = swap_ema_weights(model.optimizer)   # last.keras holds the EMA weights (--ema-decay)
        save_keras_model(model, last)
        if swapped:
            swap_ema_weights(model.optimizer)


def fit_task(task, *, resume=False, overwrite=False, verbose="auto", config_source=None):
    """Train ``task`` with ``keras.Model.fit``; returns the last round's metrics.

    What a run directory guarantees:

    * every file is written atomically (a kill leaves the previous version);
    * the backup (``backup/``) is the source of truth: ``--resume`` restarts
      from its step and re-creates ``history.csv``, ``final_metrics.json``,
      ``last.keras`` and ``best.keras`` when they are missing or damaged;
    * an existing run is never overwritten silently (``overwrite`` clears it
      first), and a resume that would change the run's architecture or data is
      refused before anything is written.

    Args:
        task: a :class:`mll_tf.tasks.base.Task` (its ``run.run_dir`` is set).
        resume: bool, continue from the newest backup in ``<run_dir>/backup``
            (from the saved step; a finished run trains nothing, a run given
            more ``--epochs`` / ``--max-steps`` continues).
        overwrite: bool, delete what ``run_dir`` holds and start a new run.
        verbose: ``"auto"`` (a Keras progress bar on a terminal, one line per
            round otherwise), 0, 1 or 2.
        config_source: str or None, the config file the run came from
            (recorded in ``run_info.json``).

    Returns:
        dict: log key -> float (``loss``, the loss terms, ``val_*`` fractions,
        ``step``, ``learning_rate``, ``examples_per_sec``), also written to
        ``final_metrics.json``.

    Raises:
        MissingFeaturesError, ValueError: bad configuration or inputs, before
            anything is written.
        RunDirectoryError: ``run_dir`` holds a run and neither ``resume`` nor
            ``overwrite`` is given, or the resume contradicts the run.
        NonFiniteLossError: the loss became NaN or infinite.
    """
    import keras
    import tensorflow as tf

    from mll_tf.data import fs
    from mll_tf.training import recipe
    from mll_tf.training import callbacks as cbs
    from mll_tf.training.atomic import write_json
    from mll_tf.training import distribute
    from mll_tf.training.precision import check_precision, precision_scope
    from mll_tf.training.schedules import build_lr_schedule

    run = task.run
    if resume and overwrite:
        raise RunDirectoryError("--resume and --overwrite exclude each other")
    run_dir = run.run_dir or run.default_run_dir()
    run.run_dir = run_dir
    # A multi-worker job is one run: the workers other than the chief neither check nor clear run_dir.
    multi = run.distribution == "multi_worker" or (run.distribution == "auto" and distribute.tf_config_tasks() > 1)
    existing = _run_files(run_dir)
    if multi and not resume:
        raise RunDirectoryError("a multi-worker run (TF_CONFIG / --distribution multi_worker) is started with "
                                "--resume (and without --overwrite) on every worker, so that a restarted job "
                                "continues from its backup")
    if existing and not resume and not overwrite:
        raise RunDirectoryError(
            f"--run-dir {run_dir} already holds a run ({', '.join(existing[:4])}"
            f"{', ...' if len(existing) > 4 else ''}); pass --resume to continue it, or --overwrite to delete it "
            f"and start again")
    if resume:
        check_resume(task, run_dir)
    task.check()
    recipe.check_recipe(task)
    policy = check_precision(run.precision, task)   # --precision: refused before anything is written
    store = task.feature_store_identity()
    if resume:
        check_same_features(task, run_dir, store)
    distribute.check_data_service(run.data_service)
    strategy = distribute.make_strategy(run.cpu_replicas, run.distribution)
    chief = distribute.is_chief(strategy)
    read_dir = run_dir
    if not chief:   # TensorFlow's guide: the other workers write to temporary directories
        run_dir = distribute.worker_write_dir(run_dir, strategy)
        overwrite, existing = False, []
    replicas = strategy.num_replicas_in_sync
    if task.max_replicas is not None and replicas > task.max_replicas:
        raise ValueError(f"--method {task.name} trains on at most {task.max_replicas} replica(s); "
                         f"this machine gives {replicas} (drop --cpu-replicas)")
    if run.batch_size % replicas:
        raise ValueError(f"--batch-size {run.batch_size} must be divisible by the {replicas} replicas")

    backup_dir = os.path.join(run_dir, "backup")
    state = cbs.RunBackup.read_state(os.path.join(read_dir, "backup")) if resume else None
    task.prepare(read_dir, resume=state is not None)
    n = task.num_train_examples
    steps_per_round = run.steps_per_round(n)
    if steps_per_round < 1:
        raise ValueError(f"the training split has {n} examples, fewer than --batch-size {run.batch_size}")
    if steps_per_round % run.steps_per_execution:
        raise ValueError(f"--steps-per-execution {run.steps_per_execution} must divide the round length "
                         f"of {steps_per_round} steps (set --eval-every to a multiple of it)")
    total_steps = run.total_steps(n)
    num_rounds = run.num_rounds(n)
    monitor = task.monitor

    # Every check passed: only now is the run directory touched.
    if overwrite and existing:
        print(f"--overwrite: deleting the run in {run_dir}")
        fs.rmtree(run_dir)
    if resume and state is None:
        print(f"--resume: no backup in {backup_dir}; starting from scratch")
    fs.makedirs(run_dir)
    task.save_run_files(run_dir)
    _save_config(task, run_dir)
    write_json(os.path.join(run_dir, "run_info.json"), dict(run_info(config_source), feature_store=store))

    if run.deterministic:   # process-wide; ops without a deterministic kernel then raise instead of varying
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(run.seed)
    with strategy.scope(), precision_scope(policy):   # the model's layers keep the policy
        model = task.build_model()
        optimizer = recipe.build_run_optimizer(run, total_steps, task.optimizer_variables(model))
        if run.sam_rho > 0:   # read by the model's train_step (recipe.sam_gradients)
            model.sam_rho, model.sam_adaptive = float(run.sam_rho), bool(run.sam_adaptive)
        model.compile(optimizer=optimizer, loss=task.build_loss(),
                      steps_per_execution=run.steps_per_execution, jit_compile=run.jit_compile)
        model.optimizer.build(task.optimizer_variables(model))   # LossScaleOptimizer under mixed_float16
        task.on_model_built(model)
    distribute.adapt_model_for_multi_worker(model, strategy)
    print(f"{task.name}: {task.describe()}; {replicas} replica(s) "
          f"({', '.join(strategy.extended.worker_devices)}); {num_rounds} rounds of {steps_per_round} "
          f"steps of {run.batch_size}; monitor {monitor}")

    round_control = cbs.RoundControl(steps_per_round, total_steps, 0, run.batch_size)
    best = cbs.BestModelCheckpoint(os.path.join(run_dir, "best.keras"), monitor,
                                   weights_copy=os.path.join(backup_dir, "best.weights.h5"))
    stateful = {"best": best}
    rule = build_lr_schedule(run)
    adaptive = cbs.AdaptiveLearningRate(rule, monitor) if rule is not None else None
    if adaptive is not None:
        stateful["adaptive_lr"] = adaptive
    early = recipe.EarlyStopping(monitor, run.early_stopping_patience) if run.early_stopping_patience else None
    if early is not None:
        stateful["early_stopping"] = early
    task_callbacks = task.callbacks(run_dir)
    for cb in task_callbacks:
        if hasattr(cb, "state_dict"):
            stateful[type(cb).__name__] = cb
    backup = cbs.RunBackup(backup_dir, run.backup_every, stateful, round_control)

    start_step = 0
    history_path = os.path.join(run_dir, "history.csv")
    final_path = os.path.join(run_dir, "final_metrics.json")
    if state is not None:
        backup.restore(model, state)
        start_step = int(state["step"])
        if adaptive is not None:
            adaptive.restore_learning_rate(model)
        print(f"resumed from {state['weights']} (step {start_step}, {backup.rounds_done} rounds done)")
        if chief:
            _recreate_models(task, model, run_dir, state, backup_dir)
    cbs.write_history(history_path, backup.history)
    if start_step >= total_steps or recipe.early_stopped(state):
        print(f"all {total_steps} steps already done in {run_dir}; nothing to train" if start_step >= total_steps
              else f"the run in {run_dir} stopped early at step {start_step} (--early-stopping-patience); "
                   f"nothing to train")
        metrics = {k: v for k, v in backup.history[-1].items() if k != "epoch"} if backup.history else {}
        if metrics:
            write_json(final_path, metrics)
        return metrics
    round_control.step = round_control._round_start_step = start_step

    tensorboard = cbs.TensorBoard(os.path.join(run_dir, "tb"), run.log_every, start_step)
    verbose = _verbose(verbose)
    ema = recipe.EMAValidation()   # validation and best/last checkpoints see the EMA weights (--ema-decay)
    callbacks = [round_control, cbs.TerminateOnNaN(round_control), ema.swap_in,
                 cbs.ValidationMetrics(task, monitor)]
    callbacks += task_callbacks
    if adaptive is not None:
        callbacks.append(adaptive)
    callbacks += [best, cbs.LastModelCheckpoint(os.path.join(run_dir, "last.keras"))]
    if early is not None:
        callbacks.append(early)
    callbacks += [ema.swap_out, tensorboard, cbs.HistoryCSV(history_path, rows=backup.history)]
    if verbose == 0:
        callbacks.append(cbs.RoundLogger(num_rounds, best=best))
    callbacks.append(backup)

    def train_input(batch_size):
        dataset = task.train_dataset(batch_size, start_step=start_step)
        if run.mixup > 0 or run.cutmix > 0:
            dataset = recipe.mix_batches(dataset, "mixup" if run.mixup > 0 else "cutmix", run.mixup or run.cutmix,
                                         seed=run.seed, start_step=start_step, probability=run.mix_probability)
        if run.data_service:   # the pipeline above runs on the tf.data service's workers
            dataset = distribute.data_service_input(dataset, run.data_service)
        return dataset

    if distribute.is_multi_worker(strategy):   # each worker reads its own shard files
        dataset = distribute.distribute_input(strategy, train_input, run.batch_size)
    else:
        dataset = train_input(run.batch_size)
    try:
        model.fit(dataset, epochs=num_rounds, steps_per_epoch=steps_per_round,
                  initial_epoch=start_step // steps_per_round, callbacks=callbacks, shuffle=False,
                  verbose=verbose)
    except BaseException:
        tensorboard.abort()
        raise
    finally:
        if not chief:
            distribute.remove_worker_write_dir(run_dir, read_dir)
    if not chief:
        return {k: v for k, v in backup.history[-1].items() if k != "epoch"} if backup.history else {}
    task.on_fit_end(model, run_dir)
    cbs.write_history(history_path, backup.history)   # the backup's rows: exactly one per round
    metrics = {k: v for k, v in backup.history[-1].items() if k != "epoch"} if backup.history else {}
    if metrics:
        write_json(final_path, metrics)
    return metrics
