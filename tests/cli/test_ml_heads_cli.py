"""ml_decoder / ml_gcn / linear_head end to end through the CLIs on a tiny store made by the test."""

import json

import numpy as np
import pytest

from evaluation import evaluate
from experiments import train
from tests.helpers import write_toy_store

NAMES = ["cat", "dog", "car", "tree", "boat"]
HEAD_OPTS = {"ml_decoder": ["--decoder-dim", "16", "--decoder-ffn", "32", "--decoder-heads", "2"],
             "ml_gcn": ["--graph-threshold", "0.2"], "linear_head": []}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlh_features")
    write_toy_store(root, names=NAMES)
    return root


def _argv(store, run, method, loss, *extra):
    return ["--method", method, "--loss", loss, "--dataset", "toy", "--input-size", "8", "--features-root",
            str(store), "--run-dir", str(run), "--epochs", "2", "--batch-size", "16", "--learning-rate", "0.01",
            "--no-progress", *HEAD_OPTS[method], *extra]


@pytest.mark.parametrize("method, loss", [("linear_head", "asl"), ("ml_gcn", "aam"), ("ml_decoder", "aam")])
def test_train_then_evaluate_prints_map(store, tmp_path, capsys, method, loss):
    run = tmp_path / method
    assert train.main(_argv(store, run, method, loss)) == 0
    out = capsys.readouterr().out
    assert f"{method}: {method}: 5 classes" in out and ("AMBinaryLoss(s=23" in out) == (loss == "aam")
    saved = (run / "config.yaml").read_text()
    assert f"method: {method}" in saved and f"loss: {loss}" in saved
    assert evaluate.main(["--run", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"[{method}]" in out and "mAP" in out and "CF1" in out
    res = json.loads((run / "eval_test" / "summary.json").read_text())["results"]
    assert res["num_images"] == 64 and 0.5 < res["mAP"] <= 1.0  # separable toy data; chance ~0.35


def test_aam_scale_auto_and_a_bad_embeddings_file(store, tmp_path, capsys):
    run = tmp_path / "auto"
    assert train.main(_argv(store, run, "linear_head", "aam", "--aam-scale", "auto", "--epochs", "1")) == 0
    assert "AMBinaryLoss(s=7," in capsys.readouterr().out  # compute_s(5) = 7
    np.save(tmp_path / "emb.npy", np.ones((4, 3), np.float32))  # 4 rows for 5 labels
    assert train.main(_argv(store, tmp_path / "bad", "ml_gcn", "aam", "--label-embeddings",
                            str(tmp_path / "emb.npy"))) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "--label-embeddings" in err and "[5, E]" in err
    assert "Traceback" not in err
    assert train.main(_argv(store, tmp_path / "bad2", "linear_head", "aam", "--aam-scale", "huge")) == 2
    assert "--aam-scale" in capsys.readouterr().err
