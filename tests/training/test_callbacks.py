"""The one loop's callbacks: rounds, mid-round resume, best checkpoint on ties, history rows."""

import csv
import json
import os

import keras
import numpy as np
import pytest

from mll_tf.training.callbacks import BestModelCheckpoint, RunBackup, write_history
from tests.helpers import toy_task

from tests.conftest import TOY_NAMES as NAMES  # noqa: E402


@pytest.fixture
def store(toy_store):
    return toy_store


class Interrupt(Exception):
    pass


class InterruptAt(keras.callbacks.Callback):
    """Raises after ``step`` training steps (a simulated kill: nothing after it runs)."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) >= self.step:
            raise Interrupt(f"killed at step {self.step}")


def _final_weights(run_dir):
    return keras.models.load_model(os.path.join(run_dir, "last.keras")).get_weights()


def test_interrupted_mid_round_resumes_at_the_saved_step(store, tmp_path):
    """A run killed in the middle of round 2 resumes from its last backup (step 15 of 24, not 12)
    and ends with the weights of an uninterrupted run: the input stream restarts at the saved
    step, the optimizer state and the running prior come back with the model."""
    kw = dict(epochs=2, backup_every=5, partial_labels="rps:0.5")
    straight = toy_task(store, tmp_path, "ignore", run_name="straight", **kw)
    straight.fit(verbose=0)

    broken = toy_task(store, tmp_path, "ignore", run_name="broken", **kw)
    own = broken.callbacks
    broken.callbacks = lambda run_dir: own(run_dir) + [InterruptAt(17)]
    with pytest.raises(Interrupt):
        broken.fit(verbose=0)
    run_dir = str(tmp_path / "broken")
    state = RunBackup.read_state(os.path.join(run_dir, "backup"))
    assert state["step"] == 15 and state["rounds_done"] == 1   # mid-round, not the round start (12)
    assert [r["epoch"] for r in csv.DictReader(open(os.path.join(run_dir, "history.csv")))] == ["1"]

    resumed = toy_task(store, tmp_path, "ignore", run_name="broken", **kw)
    resumed.fit(resume=True, verbose=0)
    rows = list(csv.DictReader(open(os.path.join(run_dir, "history.csv"))))
    assert [r["epoch"] for r in rows] == ["1", "2"] and rows[-1]["step"] == "24"
    # the resumed round's training loss averages all 12 of its steps, as the uninterrupted run's
    # (not only the 9 after the backup): the backup holds the running means.
    assert "metrics" in state and state["metrics"]["loss"][1] == 3.0   # 3 steps of round 2 counted
    straight_rows = list(csv.DictReader(open(tmp_path / "straight" / "history.csv")))
    for a, b in zip(straight_rows, rows):
        np.testing.assert_allclose(float(a["loss"]), float(b["loss"]), rtol=1e-5)
    for a, b in zip(_final_weights(str(tmp_path / "straight")), _final_weights(run_dir)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    prior_a = open(tmp_path / "straight" / "prior.csv").read()
    prior_b = open(os.path.join(run_dir, "prior.csv")).read()
    assert prior_a.splitlines()[0] == prior_b.splitlines()[0]
    np.testing.assert_allclose([float(r.split(",")[1]) for r in prior_a.splitlines()[1:]],
                               [float(r.split(",")[1]) for r in prior_b.splitlines()[1:]], rtol=1e-5)


def test_max_steps_ends_with_a_short_round_and_a_finished_run_trains_nothing(store, tmp_path):
    task = toy_task(store, tmp_path, "logistic", max_steps=30, eval_every=12)
    m = task.fit(verbose=0)
    rows = list(csv.DictReader(open(tmp_path / "logistic" / "history.csv")))
    assert [r["step"] for r in rows] == ["12", "24", "30"]    # rounds of 12 steps up to 30
    again = toy_task(store, tmp_path, "logistic", max_steps=30, eval_every=12)
    assert again.fit(resume=True, verbose=0) == m            # nothing left to train
    assert len(list(csv.DictReader(open(tmp_path / "logistic" / "history.csv")))) == 3


def test_steps_per_execution_must_divide_the_round(store, tmp_path):
    task = toy_task(store, tmp_path, "ignore", steps_per_execution=5)
    with pytest.raises(ValueError, match="--steps-per-execution 5 must divide"):
        task.fit(verbose=0)
    ok = toy_task(store, tmp_path, "ignore", run_name="spe", steps_per_execution=4, epochs=2)
    m = ok.fit(verbose=0)
    assert m["step"] == 24


def test_best_checkpoint_keeps_ties_and_its_state(tmp_path):
    best = BestModelCheckpoint(str(tmp_path / "best.keras"), "val_x")
    assert best._is_improvement(0.5, None) and best._is_improvement(0.5, 0.5)   # ">=" as the reference
    assert not best._is_improvement(0.4, 0.5)
    best.best = 0.75
    again = BestModelCheckpoint(str(tmp_path / "best.keras"), "val_x")
    again.load_state_dict(json.loads(json.dumps(best.state_dict())))
    assert again.best == 0.75


def test_history_is_written_from_the_backups_rows(tmp_path):
    path = tmp_path / "history.csv"
    write_history(str(path), [{"epoch": 1, "loss": 0.5, "step": 12}, {"epoch": 2, "loss": 0.25, "step": 24}])
    assert list(csv.DictReader(open(path))) == [{"epoch": "1", "loss": "0.5", "step": "12"},
                                                 {"epoch": "2", "loss": "0.25", "step": "24"}]
    write_history(str(path), [])
    assert path.read_text() == ""


def _scalar_steps(logdir, tag):
    import glob

    import tensorflow as tf

    steps = []
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            steps += [event.step for v in event.summary.value if v.tag == tag]
    return sorted(steps)


def test_tensorboard_rounds_and_steps_continue_after_resume(store, tmp_path):
    """Round scalars are written every round, batch scalars every --log-every steps at the GLOBAL step."""
    kw = dict(epochs=2, log_every=5)
    toy_task(store, tmp_path, "ignore", run_name="tb", **kw).fit(verbose=0)
    train, val = str(tmp_path / "tb" / "tb" / "train"), str(tmp_path / "tb" / "tb" / "validation")
    assert _scalar_steps(train, "epoch_loss") == [0, 1]
    assert _scalar_steps(val, "epoch_mAP_partial") == [0, 1]
    assert _scalar_steps(train, "batch_loss") == [5, 10, 15, 20]       # 24 steps, every 5th
    toy_task(store, tmp_path, "ignore", run_name="tb", epochs=3, log_every=5).fit(resume=True, verbose=0)
    assert _scalar_steps(train, "batch_loss") == [5, 10, 15, 20, 25, 30, 35]
    assert _scalar_steps(train, "epoch_loss") == [0, 1, 2]
