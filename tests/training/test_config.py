"""Reference protocols: one place for K values and settings; flags still win."""

import pytest

from experiments.train import build_parser, resolve_config
from mll_tf.protocols import EVAL_K, PROTOCOLS, eval_k_for, get_protocol
from mll_tf.training.config import TrainConfig


def test_eval_k_per_dataset():
    assert eval_k_for("nus_wide") == (3, 5)
    assert eval_k_for("openimages") == (10, 20)
    assert eval_k_for("openclipart") == (3, 5)
    assert eval_k_for("mine", {"eval_k": [1, 2]}) == (1, 2)
    assert set(EVAL_K) == {"nus_wide", "openimages"}


def test_lesa_nus_wide_protocol_values():
    p = get_protocol("lesa_nus_wide").train
    # METHODS.md §1.4: RMSProp(0.9, 0.9, eps 1) lr 1e-3, 200k iterations, eval every 4000, patience 5
    assert (p["optimizer"], p["learning_rate"], p["batch_size"]) == ("rmsprop_tf1", 1e-3, 32)
    assert (p["max_steps"], p["eval_every"], p["lr_patience"], p["lr_signal"]) == (200_000, 4000, 5, 0.3)
    assert p["shuffle"] is False and p["monitor"] == "val/seen/F1@5" and p["backbone"] == "vgg19"
    assert get_protocol("lesa_openimages").train["eval_k"] == (10, 20)
    with pytest.raises(KeyError, match="--protocol"):
        get_protocol("nope")


def test_cli_protocol_then_explicit_flags_win(tmp_path):
    args = build_parser().parse_args(["--method", "lesa", "--dataset", "nus_wide", "--protocol", "lesa_nus_wide",
                                      "--max-steps", "100", "--run-dir", str(tmp_path / "r")])
    cfg = resolve_config(args)
    assert cfg.max_steps == 100  # explicit
    assert cfg.eval_every == 4000 and cfg.optimizer == "rmsprop_tf1" and cfg.lr_schedule == "adaptive"
    cfg.save(tmp_path / "c.yaml")
    again = TrainConfig.load(tmp_path / "c.yaml")
    assert again == cfg


def test_rounds_from_steps():
    cfg = TrainConfig(batch_size=32, eval_every=0, epochs=3)
    assert (cfg.steps_per_round(1000), cfg.num_rounds(1000)) == (31, 3)
    cfg = TrainConfig(batch_size=32, eval_every=4000, max_steps=200_000)
    assert (cfg.steps_per_round(10), cfg.num_rounds(10)) == (4000, 50)
    cfg = TrainConfig(batch_size=32, eval_every=30, max_steps=100)
    assert cfg.num_rounds(10) == 4  # 30 + 30 + 30 + 10
    assert set(PROTOCOLS) == {"lesa_nus_wide", "lesa_openimages"}
