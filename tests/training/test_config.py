"""Experiment configuration: packaged configs (the LESA protocols), config files, flags override, ranges."""

import pytest
import yaml

from experiments.train import main as train_main  # noqa: F401  (the CLI module loads)
from mll_tf.cli.train import build_flags, resolve_task
from mll_tf.protocols import EVAL_K, eval_k_for
from mll_tf.tasks import build_task, load_task
from mll_tf.training.config import RunConfig, load_config_file, packaged_configs


def test_eval_k_per_dataset():
    assert eval_k_for("nus_wide") == (3, 5)
    assert eval_k_for("openimages") == (10, 20)
    assert eval_k_for("openclipart") == (3, 5)
    assert eval_k_for("mine", {"eval_k": [1, 2]}) == (1, 2)
    assert set(EVAL_K) == {"nus_wide", "openimages"}


def test_lesa_nus_wide_config_values():
    # LESA on NUS-WIDE: RMSProp(0.9, 0.9, eps 1) lr 1e-3, 200k iterations, eval every 4000, patience 5
    assert {"lesa_nus_wide", "lesa_openimages"} <= set(packaged_configs())
    task = build_task(load_config_file("lesa_nus_wide")[0])
    r = task.run
    assert (r.optimizer, r.learning_rate, r.batch_size) == ("rmsprop_tf1", 1e-3, 32)
    assert (r.max_steps, r.eval_every, r.lr_patience, r.lr_signal) == (200_000, 4000, 5, 0.3)
    assert r.shuffle is False and task.monitor == "val_seen_F1@5" and r.backbone == "vgg19"
    assert build_task(load_config_file("lesa_openimages")[0]).config.eval_k == (10, 20)
    with pytest.raises(ValueError, match="--config: no file 'nope'"):
        load_config_file("nope")


def _resolve(argv):
    fs = build_flags()
    assert fs.parse(argv) is not None
    return resolve_task(fs)[0]


def test_config_then_explicit_flags_win(tmp_path):
    task = _resolve(["--config", "lesa_nus_wide", "--max-steps", "100", "--num-heads", "4",
                     "--run-dir", str(tmp_path / "r")])
    assert task.run.max_steps == 100 and task.config.num_heads == 4   # explicit
    assert task.run.eval_every == 4000 and task.run.optimizer == "rmsprop_tf1"
    assert task.run.lr_schedule == "adaptive" and task.config.eval_k == (3, 5)


def test_yaml_and_python_config_files(tmp_path):
    flat = tmp_path / "flat.yaml"
    flat.write_text("method: csl\nepochs: 3\ngamma_neg: 2.0\n")          # task options may sit at the top
    task = _resolve(["--config", str(flat)])
    assert task.name == "csl" and task.run.epochs == 3 and task.config.gamma_neg == 2.0
    py = tmp_path / "exp.py"
    py.write_text("def get_config():\n    return {'method': 'imcl', 'task': {'imcl_k': 2}, 'batch_size': 8}\n")
    task = _resolve(["--config", str(py), "--epochs", "2"])
    assert task.name == "imcl" and task.config.imcl_k == 2 and task.run.batch_size == 8 and task.run.epochs == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: csl\nnum_heads: 3\n")
    with pytest.raises(ValueError, match="unknown key 'num_heads'"):
        _resolve(["--config", str(bad)])


def test_saved_config_round_trips(tmp_path):
    from mll_tf.training.config import config_to_dict

    task = build_task({"method": "lesa", "epochs": 3, "run_dir": str(tmp_path),
                       "task": {"num_heads": 4, "eval_k": [3, 5]}})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(task.run, task.config)))
    again = load_task(str(tmp_path))
    assert again.run == task.run and again.config == task.config


def test_old_flat_config_files_still_load(tmp_path):
    (tmp_path / "config.yaml").write_text(
        "method: lesa\nprotocol: ''\nnum_heads: 2\nmonitor: val/seen/F1@5\neval_k: [3, 5]\n")
    task = load_task(str(tmp_path))
    assert task.config.num_heads == 2 and task.monitor == "val_seen_F1@5"


def test_ranges_are_checked_with_the_flag_named():
    for field, value, message in (("batch_size", 0, "--batch-size: must be >= 1"),
                                  ("epochs", -1, "--epochs: must be >= 1"),
                                  ("learning_rate", 0.0, "--learning-rate: must be > 0.0"),
                                  ("partial_labels", "half", "--partial-labels"),
                                  ("optimizer", "sgdx", "--optimizer: 'sgdx' is not one of")):
        with pytest.raises(ValueError, match=message):
            RunConfig(**{field: value}).validate()
    with pytest.raises(ValueError, match="--num-heads: must be >= 1"):
        build_task({"method": "lesa", "task": {"num_heads": 0}}).check()


def test_rounds_from_steps():
    cfg = RunConfig(batch_size=32, eval_every=0, epochs=3)
    assert (cfg.steps_per_round(1000), cfg.num_rounds(1000), cfg.total_steps(1000)) == (31, 3, 93)
    cfg = RunConfig(batch_size=32, eval_every=4000, max_steps=200_000)
    assert (cfg.steps_per_round(10), cfg.num_rounds(10)) == (4000, 50)
    cfg = RunConfig(batch_size=32, eval_every=30, max_steps=100)
    assert cfg.num_rounds(10) == 4 and cfg.total_steps(10) == 100  # 30 + 30 + 30 + 10
