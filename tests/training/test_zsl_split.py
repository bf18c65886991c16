import pytest

from mll_tf.training.zsl_split import LabelSplit, choose_unseen_labels


def test_choose_unseen_rule(tmp_path):
    names = ["icons", "icon", "cat", "dog", "car", "tree", "sun", "xyzzy"]
    train = {"icons": 90, "icon": 80, "cat": 70, "dog": 60, "car": 50, "tree": 40, "sun": 30, "xyzzy": 20}
    test = {"icons": 30, "icon": 20, "cat": 15, "dog": 12, "car": 3, "tree": 11, "sun": 10, "xyzzy": 50}
    s = choose_unseen_labels(names, ["xyzzy"], train, test, unseen_fraction=0.3, min_test_images=10)
    # usable = 7 -> round(2.1) = 2 unseen; candidates (test >= 10, no singular twin, with vector)
    # by train count: cat, dog, tree, sun -> step 4 // 2 = 2 -> [1::2] = dog, sun
    assert s.unseen == ["dog", "sun"]
    assert s.seen == ["icons", "icon", "cat", "car", "tree"]
    assert s.excluded == {"xyzzy": "no word vector"}
    assert s.gzsl_names() == ["dog", "sun", "icons", "icon", "cat", "car", "tree"]
    seen_idx, unseen_idx = s.indices(names)
    assert unseen_idx == [3, 6] and seen_idx == [0, 1, 2, 4, 5]
    s.save(tmp_path / "split.json")
    assert LabelSplit.load(tmp_path / "split.json") == s


def test_no_candidate_raises():
    with pytest.raises(ValueError, match="no label qualifies"):
        choose_unseen_labels(["a", "b"], [], {"a": 5, "b": 5}, {"a": 1, "b": 1}, min_test_images=10)
