"""Per-class thresholds: hand-computed values, name-keyed files, the run-level tuning on val."""

import json

import numpy as np
import pytest

from mll_tf.export.thresholds import group_report
from mll_tf.metrics.threshold import (group_predictions, thresholds_from_dict, thresholds_to_dict,
                                      tune_thresholds)

# validation scores of 2 classes, 5 images
VS = np.array([[0.9, 0.2], [0.6, 0.7], [0.4, 0.3], [0.3, 0.8], [0.1, 0.6]])
VY = np.array([[1, 0], [0, 1], [1, -1], [0, 1], [0, 0]], np.int8)


def test_tuned_thresholds_by_hand():
    # class 0, candidates (predict iff s >= t), positives at .9 and .4:
    #   t=.9: TP1 FP0 FN1 -> F1 2/3; t=.6: TP1 FP1 FN1 -> 1/2; t=.4: TP2 FP1 FN0 -> 4/5;
    #   t=.3: TP2 FP2 -> 2/3; t=.1: TP2 FP3 -> 4/7  => .4
    # class 1 (row 2 unknown), positives .7 and .8: t=.8: TP1 FN1 -> 2/3; t=.7: TP2 -> 1;
    #   t=.6: TP2 FP1 -> 4/5; t=.2: 2/3 => .7
    np.testing.assert_allclose(tune_thresholds(VS, VY), [0.4, 0.7])


def test_thresholds_keyed_by_name_round_trip_and_refusals():
    d = thresholds_to_dict(["cat", "dog"], [0.4, 0.7])
    assert d == {"cat": 0.4, "dog": 0.7}
    # another class order reads back in the model's order
    np.testing.assert_allclose(thresholds_from_dict({"thresholds": d}, ["dog", "cat"]), [0.7, 0.4])
    with pytest.raises(ValueError, match="missing: bird"):
        thresholds_from_dict(d, ["cat", "dog", "bird"])
    with pytest.raises(ValueError, match="unknown: dog"):
        thresholds_from_dict(d, ["cat"])
    with pytest.raises(ValueError, match="'dog' must be a finite number"):
        thresholds_from_dict({"cat": 0.1, "dog": "x"}, ["cat", "dog"])
    with pytest.raises(ValueError, match="unique"):
        thresholds_to_dict(["a", "a"], [0.1, 0.2])


def test_group_argmax_with_na_below_the_winners_threshold():
    s = np.array([[0.2, 0.7, 0.1, 0.5], [0.3, 0.25, 0.9, 0.4], [0.6, 0.1, 0.2, 0.3]])
    groups = {"colour": [0, 1, 2], "size": [3]}
    thr = np.array([0.5, 0.8, 0.5, 0.45])
    got = group_predictions(s, groups, thr)
    # colour: winners 1 (.7 < .8 -> N/A), 2 (.9 >= .5), 0 (.6 >= .5); size: .5>=.45, .4<.45, .3<.45
    np.testing.assert_array_equal(got["colour"], [-1, 2, 0])
    np.testing.assert_array_equal(got["size"], [3, -1, -1])
    np.testing.assert_array_equal(group_predictions(s, groups)["colour"], [1, 2, 0])
    y = np.array([[0, 1, 0, 1], [0, 0, 1, -1], [0, 1, 0, 0]], np.int8)
    rep = group_report(s, y, groups, thr)
    # colour known in all 3: answers N/A, 2 (right), 0 (wrong: truth 1) -> acc 1/3, coverage 2/3
    assert rep["colour"] == pytest.approx({"accuracy": 1 / 3, "coverage": 2 / 3})
    # size known where exactly one 1: row 0 only -> answered 3 == truth 3
    assert rep["size"] == pytest.approx({"accuracy": 1.0, "coverage": 1.0})


def test_evaluate_tune_thresholds_on_val(toy_store, tmp_path, capsys):
    from mll_tf.cli import evaluate
    from mll_tf.export.inference import split_scores
    from mll_tf.metrics.threshold import threshold_metrics
    from tests.helpers import toy_task

    task = toy_task(toy_store, tmp_path, "ignore", epochs=1)
    task.fit(verbose=0)
    run = tmp_path / "ignore"
    capsys.readouterr()
    assert evaluate.main(["--run", str(run), "--tune-thresholds"]) == 0
    out = capsys.readouterr().out
    assert "tuned" in out and "CF1" in out
    rec = json.loads((run / "thresholds.json").read_text())
    assert rec["tuned_on"] == "val" and list(rec["thresholds"]) == ["cat", "dog", "car", "tree", "boat"]
    # independent recomputation: tuned on val scores, compared on test
    vp, vl = split_scores(task, str(run), "val")
    np.testing.assert_allclose(list(rec["thresholds"].values()), tune_thresholds(vp, vl))
    tp, tl = split_scores(task, str(run), "test")
    comp = json.loads((run / "eval_test" / "threshold_comparison.json").read_text())
    assert comp["at_tuned"] == pytest.approx(threshold_metrics(tp, tl, tune_thresholds(vp, vl)))
    assert comp["at_0.5"] == pytest.approx(threshold_metrics(tp, tl, 0.5))
    assert evaluate.main(["--run", str(run), "--tune-thresholds", "--split", "val"]) == 2
    assert "--tune-thresholds" in capsys.readouterr().err
