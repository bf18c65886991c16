"""Pseudo-unseen seen labels for zero-shot model selection (--selection zsl_holdout)."""

import json
import random

import pytest

from mll_tf.training.zsl_split import LabelSplit, choose_holdout_labels

SEEN = ["icons", "icon", "cat", "dog", "car", "tree", "sun"]
TRAIN = {"icons": 90, "icon": 80, "cat": 70, "dog": 60, "car": 50, "tree": 40, "sun": 30}
VAL = {"icons": 9, "icon": 9, "cat": 6, "dog": 5, "car": 2, "tree": 7, "sun": 8}


def test_holdout_rule_by_hand():
    # candidates: val >= 5 and no singular/plural twin in the whole vocabulary:
    # icons/icon are twins, sun has the (unseen) twin "suns", car has 2 val positives
    # -> cat, dog, tree by train count; round(0.3 * 7) = 2 -> step 3 // 2 = 1 -> [1::1][:2] = dog, tree
    held = choose_holdout_labels(SEEN, SEEN + ["suns"], TRAIN, VAL, fraction=0.3, min_val_images=5)
    assert held == ["dog", "tree"]


def test_holdout_is_deterministic_and_disjoint_from_training_labels():
    shuffled_train = dict(random.Random(1).sample(sorted(TRAIN.items()), len(TRAIN)))
    a = choose_holdout_labels(SEEN, SEEN, TRAIN, VAL, fraction=0.3)
    b = choose_holdout_labels(SEEN, list(reversed(SEEN)), shuffled_train, dict(VAL), fraction=0.3)
    assert a == b and a
    split = LabelSplit(seen=SEEN, unseen=["moon"], excluded={}, rule="r", holdout=a)
    assert set(split.trained()).isdisjoint(a)
    assert sorted(split.trained() + a) == sorted(SEEN)
    assert split.trained() == [n for n in SEEN if n not in a]  # seen order kept


def test_holdout_in_split_file_and_old_files_load(tmp_path):
    split = LabelSplit(seen=["a", "b"], unseen=["c"], excluded={}, rule="r", holdout=["b"])
    split.save(tmp_path / "s.json")
    assert LabelSplit.load(tmp_path / "s.json") == split
    old = {"seen": ["a", "b"], "unseen": ["c"], "excluded": {}, "rule": "r"}  # before the holdout field
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = LabelSplit.load(tmp_path / "old.json")
    assert loaded.holdout == [] and loaded.trained() == ["a", "b"]


def test_holdout_errors():
    with pytest.raises(ValueError, match="fraction"):
        choose_holdout_labels(SEEN, SEEN, TRAIN, VAL, fraction=1.0)
    with pytest.raises(ValueError, match="no seen label qualifies"):
        choose_holdout_labels(SEEN, SEEN, TRAIN, VAL, min_val_images=100)
    with pytest.raises(ValueError, match="no seen label to train"):
        choose_holdout_labels(["cat"], ["cat"], TRAIN, VAL, fraction=0.9)
