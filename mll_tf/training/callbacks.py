"""Keras callbacks of the one training loop (``keras.Model.fit``).

:func:`mll_tf.training.runner.fit_task` trains every method with
``model.fit`` and these callbacks, in this order (Keras calls them in list
order, and later callbacks see what earlier ones put in ``logs``):

1. :class:`RoundControl` -- rounds of ``steps_per_round`` steps up to the
   run's total (a shorter last round, and a shorter first round when a run
   resumes mid-round); adds ``step``, ``learning_rate`` and
   ``examples_per_sec`` to the round's logs.
2. :class:`TerminateOnNaN` -- stops with :class:`NonFiniteLossError` at the
   first non-finite loss.
3. :class:`ValidationMetrics` -- the task's validation metrics, as
   ``val_<name>`` fractions in [0, 1].
4. the task's own callbacks (LESA attention images, the CSL prior file, ...).
5. :class:`AdaptiveLearningRate` -- LESA / IMCL ``LearningRate.adapt`` after
   each validation, with its state backed up.
6. :class:`BestModelCheckpoint` (``best.keras``, ">=" as the references) and
   :class:`LastModelCheckpoint` (``last.keras``), both written atomically.
7. :class:`TensorBoard` (``keras.callbacks.TensorBoard``, fixed) and
   :class:`HistoryCSV` (``history.csv``).
8. :class:`RoundLogger` -- one line per round when stdout is not a terminal.
9. :class:`RunBackup` -- the training state every ``backup_every`` steps and
   after every round, so that ``--resume`` continues from the last saved step.

Every callback with state to keep across an interruption has
``state_dict()`` / ``load_state_dict(state)``; :class:`RunBackup` saves
those states with the model and optimizer variables.
"""

import json
import math
import os
import re
import sys
import time

import keras
import numpy as np

__all__ = [
    "AdaptiveLearningRate",
    "BestModelCheckpoint",
    "HistoryCSV",
    "NonFiniteLossError",
    "RoundControl",
    "RoundLogger",
    "RunBackup",
    "LastModelCheckpoint",
    "TensorBoard",
    "TerminateOnNaN",
    "ValidationMetrics",
    "current_learning_rate",
]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


def current_learning_rate(optimizer):
    """The optimizer's learning rate now, as a Python float."""
    lr = optimizer.learning_rate
    if callable(lr) and not hasattr(lr, "numpy"):
        lr = lr(optimizer.iterations)
    return float(keras.ops.convert_to_numpy(lr))


class RoundControl(keras.callbacks.Callback):
    """Rounds of ``steps_per_round`` steps, up to ``total_steps``, resumable mid-round.

    ``model.fit(epochs=num_rounds, steps_per_epoch=steps_per_round)`` runs
    whole rounds; this callback ends a round early (``model.stop_training``
    after its last step) in two cases: the last round of ``--max-steps`` that
    is not a multiple of the round length, and the first round of a run
    resumed at step ``start_step`` inside a round (it runs only the steps
    that round still had). In the second case the flag is cleared again at
    the end of the round, so training continues.

    Adds to the round's logs: ``step`` (global steps done), ``learning_rate``
    (the rate used during the round) and ``examples_per_sec``.

    Args:
        steps_per_round: int >= 1.
        total_steps: int >= 1, steps of the whole run.
        start_step: int >= 0, steps already done (a resumed run).
        global_batch_size: int, examples per step.
    """

    def __init__(self, steps_per_round, total_steps, start_step=0, global_batch_size=1):
        super().__init__()
        self.steps_per_round = int(steps_per_round)
        self.total_steps = int(total_steps)
        self.start_step = int(start_step)
        self.global_batch_size = int(global_batch_size)
        self.step = self.start_step
        self._round_start_step = self.start_step
        self._stopped_round_early = False

    def on_epoch_begin(self, epoch, logs=None):
        self._round_start_step = self.step
        self._t0 = time.perf_counter()
        self._lr = current_learning_rate(self.model.optimizer)

    def on_train_batch_end(self, batch, logs=None):
        # ``batch`` is the last step index of this execution, counted from 0 at the round's start.
        self.step = self._round_start_step + batch + 1
        if self.step >= self.total_steps:
            self.model.stop_training = True
        elif (self.step % self.steps_per_round == 0 and self.step - self._round_start_step < self.steps_per_round
              and not self.model.stop_training):
            self.model.stop_training = True  # a resumed, shortened round ends here; fit goes on
            self._stopped_round_early = True

    def on_epoch_end(self, epoch, logs=None):
        if self._stopped_round_early:
            self.model.stop_training = False
            self._stopped_round_early = False
        if logs is not None:
            steps = self.step - self._round_start_step
            seconds = max(time.perf_counter() - self._t0, 1e-9)
            logs["step"] = self.step
            logs["learning_rate"] = self._lr
            logs["examples_per_sec"] = steps * self.global_batch_size / seconds


class TerminateOnNaN(keras.callbacks.TerminateOnNaN):
    """``keras.callbacks.TerminateOnNaN`` that fails the run instead of ending it quietly.

    Raises:
        NonFiniteLossError: at the first step whose loss is NaN or infinite,
            naming the step and the remedy. The last backup is untouched, so
            ``--resume`` (e.g. with a lower ``--learning-rate``) starts from
            before the failure.
    """

    def __init__(self, round_control=None):
        super().__init__()
        self.round_control = round_control

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        loss = float(keras.ops.convert_to_numpy(loss))
        if not math.isfinite(loss):
            step = self.round_control.step if self.round_control is not None else batch + 1
            raise NonFiniteLossError(
                f"non-finite training loss ({loss}) at step {step}; lower --learning-rate "
                f"(--resume restarts from the last backup before this step)")


class ValidationMetrics(keras.callbacks.Callback):
    """Adds the task's validation metrics to each round's logs as ``val_<name>``.

    Args:
        task: :class:`mll_tf.tasks.base.Task`; ``task.validation_metrics(model)``
            returns ``{name: float}`` (fractions in [0, 1]).
        monitor: str, the log key that selects checkpoints (``val_...``);
            checked after the first validation.

    Raises:
        ValueError: naming ``--monitor`` and the computed keys, if the
            monitor is not among them.
    """

    def __init__(self, task, monitor):
        super().__init__()
        self.task = task
        self.monitor = monitor

    def on_epoch_end(self, epoch, logs=None):
        metrics = self.task.validation_metrics(self.model)
        if logs is not None:
            logs.update({f"val_{k}": float(v) for k, v in metrics.items()})
            if self.monitor not in logs:
                keys = sorted(k for k in logs if k.startswith("val_"))
                raise ValueError(f"--monitor {self.monitor!r} is not computed by --method "
                                 f"{self.task.name}; choose one of {', '.join(keys)}")


class AdaptiveLearningRate(keras.callbacks.Callback):
    """LESA / IMCL ``LearningRate.adapt`` after each validation round.

    Calls ``rule.adapt(logs[monitor])`` at the end of every round (after the
    validation, as the references call it after each evaluation) and assigns
    the result to the optimizer's learning rate. Its state is part of the
    run's backup.

    Args:
        rule: :class:`mll_tf.training.schedules.AdaptiveLearningRate`.
        monitor: str, log key of the metric (higher is better).
        optimizers: optional list of further optimizers whose rate follows
            the same rule scaled by their initial ratio (none by default:
            only ``model.optimizer``).
    """

    def __init__(self, rule, monitor):
        super().__init__()
        self.rule = rule
        self.monitor = monitor

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        self.model.optimizer.learning_rate.assign(self.rule.adapt(float(value)))

    def state_dict(self):
        return self.rule.state_dict()

    def load_state_dict(self, state):
        self.rule.load_state_dict(state)

    def restore_learning_rate(self, model):
        """Set ``model.optimizer``'s rate to the restored rule's (after :meth:`load_state_dict`)."""
        model.optimizer.learning_rate.assign(self.rule.learning_rate)


class LastModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """``keras.callbacks.ModelCheckpoint`` that writes the ``.keras`` file atomically.

    The model goes to a temporary name and is renamed over ``filepath`` when
    complete, so a kill while saving leaves the previous file intact.
    """

    def __init__(self, filepath, **kwargs):
        super().__init__(filepath, **kwargs)

    def _save_model(self, epoch, batch, logs):
        from mll_tf.training.atomic import save_keras_model

        filepath = self._get_file_path(epoch, batch, logs)
        if self._should_save_model(epoch, batch, logs, filepath):
            save_keras_model(self.model, filepath)
            self._saved(filepath)

    def _saved(self, filepath):
        pass


class BestModelCheckpoint(LastModelCheckpoint):
    """``ModelCheckpoint(save_best_only=True, mode="max")`` that also saves on ties, atomically.

    The LESA reference keeps the best model when the monitored value is at
    least the best so far (``>=``); Keras' own comparison is strict. The best
    value is part of the run's backup, so a resumed run keeps comparing
    against it; with ``weights_copy`` the best weights are also written there
    (``backup/best.weights.h5``), so that a lost or damaged ``best.keras`` can
    be re-created by ``--resume``.
    """

    def __init__(self, filepath, monitor, weights_copy=None):
        super().__init__(filepath, monitor=monitor, mode="max", save_best_only=True)
        self.weights_copy = weights_copy

    def _is_improvement(self, monitor_value, reference_value):
        if reference_value is None:
            return True
        return bool(np.greater_equal(monitor_value, reference_value))

    def _saved(self, filepath):
        if self.weights_copy:
            from mll_tf.training.atomic import atomic_path

            with atomic_path(self.weights_copy, suffix=".weights.h5") as tmp:
                self.model.save_weights(tmp)

    def state_dict(self):
        best = self.best
        return {"best": None if best is None or not np.isfinite(best) else float(best)}

    def load_state_dict(self, state):
        if state.get("best") is not None:
            self.best = float(state["best"])


class TensorBoard(keras.callbacks.TensorBoard):
    """``keras.callbacks.TensorBoard`` with round summaries always written, cheap steps, and resumable.

    Writes what Keras' callback writes -- ``epoch_<name>`` scalars of each
    round in ``tb/train`` and (the ``val_`` logs) ``tb/validation``, the
    learning rate, and ``batch_<name>`` scalars every ``update_freq`` steps --
    with three changes:

    * Keras 3.15 writes the round summaries inside the ``record_if`` context
      of the round's last step, so they are dropped unless that step falls
      on ``update_freq``; here they are always recorded;
    * Keras enters and leaves a summary context and calls ``tf.summary.scalar``
      for every log at EVERY step (about 2 ms per step here, 3% of a clip-art
      LESA step); here the steps that write nothing cost nothing;
    * batch-level scalars use the global step, which continues after a resume.

    Args:
        log_dir: str, ``<run>/tb``.
        update_freq: int, steps between batch-level scalars.
        start_step: int, steps done before this ``fit`` (a resumed run).
    """

    def __init__(self, log_dir, update_freq, start_step=0):
        super().__init__(log_dir, update_freq=update_freq, write_graph=False)
        self.start_step = int(start_step)
        self._step = self._round_start = self.start_step

    def on_train_begin(self, logs=None):
        self._global_train_batch = self.start_step

    def on_epoch_begin(self, epoch, logs=None):
        self._round_start = self._step

    def on_train_batch_begin(self, batch, logs=None):
        pass

    def on_train_batch_end(self, batch, logs=None):
        import tensorflow as tf

        previous, self._step = self._step, self._round_start + batch + 1
        freq = int(self.update_freq)
        if self._step // freq == previous // freq or not isinstance(logs, dict):
            return
        with self._train_writer.as_default(step=self._step), tf.summary.record_if(True):
            for name, value in logs.items():
                tf.summary.scalar(f"batch_{name}", value)

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf

        with tf.summary.record_if(True):
            super().on_epoch_end(epoch, logs)
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        self._close_writers()

    def abort(self):
        """Close the writers after ``fit`` raised (Keras calls no callback then)."""
        self._close_writers()


class HistoryCSV(keras.callbacks.CSVLogger):
    """``keras.callbacks.CSVLogger`` writing 1-based round numbers.

    ``history.csv`` has one row per validation round: ``epoch`` (1 for the
    first round, as the console's "round 1/N"), then the sorted log keys
    (``loss`` and the method's loss terms as training means, ``step``,
    ``learning_rate``, ``examples_per_sec``, the ``val_`` metrics). It is
    appended to; the rows of the rounds a backup covers are also kept in the
    backup, and a resumed run rewrites the file from them
    (:func:`write_history`), so a row lost or cut short by a kill comes back
    and a round repeated after a kill appears once.

    On a non-local run directory (``gs://...``: no appending to objects)
    the file is rewritten atomically after every round from ``rows`` (the
    rounds before this ``fit``) and the rounds of this ``fit``.
    """

    def __init__(self, filename, rows=None):
        from mll_tf.data import fs

        super().__init__(filename, append=True)
        self._remote = not fs.is_local(filename)
        self._rows = list(rows or [])

    def on_train_begin(self, logs=None):
        if not self._remote:
            super().on_train_begin(logs)

    def on_epoch_end(self, epoch, logs=None):
        if not self._remote:
            super().on_epoch_end(epoch + 1, logs)
            return
        row = {"epoch": epoch + 1}
        row.update({k: float(v) if isinstance(v, (int, float, np.number)) else v for k, v in (logs or {}).items()})
        self._rows = [r for r in self._rows if r.get("epoch") != epoch + 1] + [row]
        write_history(self.filename, self._rows)

    def on_train_end(self, logs=None):
        if not self._remote:
            super().on_train_end(logs)


def write_history(path, rows):
    """Write ``history.csv`` atomically from round logs (the backup's ``history``).

    Args:
        path: str.
        rows: list of dicts, one per completed round in order (log key ->
            value); ``epoch`` is the 1-based round number.
    """
    import csv
    import io

    from mll_tf.training.atomic import write_text

    if not rows:
        write_text(path, "")
        return
    keys = sorted({k for r in rows for k in r if k != "epoch"})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["epoch"] + keys, lineterminator="\r\n")
    w.writeheader()
    for i, r in enumerate(rows, 1):
        w.writerow({"epoch": r.get("epoch", i), **{k: r.get(k, "NA") for k in keys}})
    write_text(path, buf.getvalue())


class RoundLogger(keras.callbacks.Callback):
    """One line per round (for logs that are not a terminal: CI, ``nohup``).

    Prints ``round 3/8 (step 480): loss 1.2345  val_seen_mAP 0.4631 ...
    (250 ex/s) *best`` -- every value a fraction or a plain number, as in
    ``history.csv`` and TensorBoard.

    Args:
        num_rounds: int.
        keys: list of log keys to show (default: ``loss`` and every ``val_``
            key).
        best: optional :class:`BestModelCheckpoint`, to mark improved rounds.
        stream: file object (default ``sys.stdout``).
    """

    def __init__(self, num_rounds, keys=None, best=None, stream=None):
        super().__init__()
        self.num_rounds = int(num_rounds)
        self.keys = keys
        self.best = best
        self.stream = stream or sys.stdout
        self._best_before = None

    def on_epoch_begin(self, epoch, logs=None):
        self._best_before = None if self.best is None else self.best.best

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        keys = self.keys or (["loss"] + sorted(k for k in logs if k.startswith("val_")))
        parts = [f"{k} {logs[k]:.4f}" for k in keys if k in logs and isinstance(logs[k], (int, float))]
        mark = ""
        if self.best is not None and self.best.best is not None and (
                self._best_before is None or self.best.best != self._best_before
                or logs.get(self.best.monitor) == self.best.best):
            mark = "  *best"
        rate = logs.get("examples_per_sec")
        rate = f"  ({rate:.0f} ex/s)" if rate is not None else ""
        print(f"round {epoch + 1}/{self.num_rounds} (step {logs.get('step', '?')}): "
              + "  ".join(parts) + rate + mark, file=self.stream, flush=True)


class RunBackup(keras.callbacks.BackupAndRestore):
    """``keras.callbacks.BackupAndRestore`` that resumes at the saved step, with callback state.

    Keras' own callback backs up the model (its variables and those of the
    optimizers it holds) but resumes at the start of the interrupted epoch.
    This one also records the global step and the state of every stateful
    callback, keeps the two newest backups, writes each file under a
    temporary name and renames it when complete (a kill while saving leaves
    the previous backup intact), and is restored by the runner *before*
    ``fit`` builds its input pipeline, so that the pipeline can start at the
    saved step (:func:`mll_tf.data.feature_store.make_dataset`'s
    ``start_example``).

    Files: ``<backup_dir>/step-<N>.weights.h5`` and ``step-<N>.json``
    (``{"step": N, "rounds_done": R, "callbacks": {name: state}, "history":
    [round logs], "metrics": {name: [values]}}``): the backup is the run's
    source of truth, from which ``--resume`` re-creates ``history.csv`` and
    ``final_metrics.json``. A backup taken inside a round also holds the
    state of the model's running metrics (the round's loss means), which is
    put back when the resumed round begins: the round's logged losses then
    average all its steps, as without the interruption.

    Args:
        backup_dir: str.
        save_every: int >= 1, steps between backups (a backup is also made
            at the end of every round).
        stateful: dict name -> callback with ``state_dict`` /
            ``load_state_dict``.
        round_control: :class:`RoundControl`, the source of the step count.
    """

    def __init__(self, backup_dir, save_every, stateful=None, round_control=None):
        super().__init__(backup_dir, save_freq=int(save_every), delete_checkpoint=False)
        self.stateful = dict(stateful or {})
        self.round_control = round_control
        self.rounds_done = 0
        self.history = []

    # -- restoring (called by the runner before fit) --------------------------------------
    @staticmethod
    def _steps(backup_dir):
        from mll_tf.data import fs

        found = []
        names = set(fs.listdir(backup_dir)) if fs.isdir(backup_dir) else set()
        for name in names:
            m = re.fullmatch(r"step-(\d+)\.json", name)
            if m and f"step-{m.group(1)}.weights.h5" in names:
                found.append(int(m.group(1)))
        return sorted(found)

    @classmethod
    def read_state(cls, backup_dir):
        """The newest complete backup's state dict, or None."""
        steps = cls._steps(backup_dir)
        if not steps:
            return None
        from mll_tf.data import fs

        state = json.loads(fs.read_text(os.path.join(backup_dir, f"step-{steps[-1]}.json")))
        state["weights"] = os.path.join(backup_dir, f"step-{steps[-1]}.weights.h5")
        return state

    def restore(self, model, state):
        """Load the model/optimizer variables and callback states of ``state`` (from :meth:`read_state`)."""
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        from mll_tf.training.atomic import load_weights

        load_weights(model, state["weights"])
        for name, cb in self.stateful.items():
            if name in state.get("callbacks", {}):
                cb.load_state_dict(state["callbacks"][name])
        self.rounds_done = int(state.get("rounds_done", 0))
        self.history = list(state.get("history", []))[:self.rounds_done]
        self._pending_metrics = state.get("metrics") or None

    def on_epoch_begin(self, epoch, logs=None):
        # fit resets the metrics just before this call: a resumed round gets back the running
        # means of its steps before the interruption.
        pending, self._pending_metrics = getattr(self, "_pending_metrics", None), None
        if not pending:
            return
        for m in self.model.metrics:
            values = pending.get(m.name)
            if values is not None and len(values) == len(m.variables):
                for v, x in zip(m.variables, values):
                    v.assign(np.asarray(x, dtype=v.dtype))

    def on_train_begin(self, logs=None):
        pass  # restored by the runner before fit (the input pipeline depends on the step)

    # -- saving -----------------------------------------------------------------------------
    def on_epoch_end(self, epoch, logs=None):
        self.rounds_done = epoch + 1
        row = {"epoch": epoch + 1}
        for k, v in (logs or {}).items():
            if isinstance(v, (bool, np.bool_)):
                continue
            if isinstance(v, (int, np.integer)):
                row[k] = int(v)
            elif isinstance(v, (float, np.floating)):
                row[k] = float(v)
        self.history = self.history[:epoch] + [row]
        self._last_batch_seen = 0
        self._save_model(round_end=True)

    def on_train_batch_end(self, batch, logs=None):
        if self._should_save_on_batch(batch):
            self._save_model()

    def _save_model(self, round_end=False):
        from mll_tf.data import fs
        from mll_tf.training.atomic import atomic_path, write_text

        fs.makedirs(self.backup_dir)
        step = self.round_control.step if self.round_control is not None else \
            int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        weights = os.path.join(self.backup_dir, f"step-{step}.weights.h5")
        meta = os.path.join(self.backup_dir, f"step-{step}.json")
        with atomic_path(weights, suffix=".weights.h5") as tmp:
            self.model.save_weights(tmp, overwrite=True)
        state = {"step": step, "rounds_done": self.rounds_done,
                 "callbacks": {n: cb.state_dict() for n, cb in self.stateful.items()},
                 "history": self.history}
        if not round_end:  # the round's running means, restored when the resumed round begins
            state["metrics"] = {m.name: [keras.ops.convert_to_numpy(v).tolist() for v in m.variables]
                                for m in self.model.metrics}
        write_text(meta, json.dumps(state))
        for old in self._steps(self.backup_dir)[:-2]:
            for ext in (".weights.h5", ".json"):
                fs.remove(os.path.join(self.backup_dir, f"step-{old}{ext}"), missing_ok=True)

    def on_train_end(self, logs=None):
        pass  # keep the backup: a finished run resumed with more rounds continues from it
