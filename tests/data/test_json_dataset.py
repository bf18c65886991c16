import json
import os

import numpy as np
import pytest

from mll_tf.data.datasets.json_dataset import JSONDataset
from mll_tf.data.datasets import get_dataset
from tests.data.lesa_fixtures import make_json_tree


def _write(root, name, data):
    with open(os.path.join(root, name), "w") as f:
        json.dump(data, f)


@pytest.fixture
def tree(tmp_path):
    root = str(tmp_path / "ds")
    return root, make_json_tree(root)


def test_registered():
    assert get_dataset("json") is JSONDataset


def test_prepare_sorted_classes_labels_and_skips(tree):
    root, exp = tree
    p = JSONDataset(root=root).prepare()
    assert p.label_names == exp["label_names"]            # sorted, as DOR-ML
    assert set(p.splits) == {"train", "val"}              # test.json absent
    assert {s: [r.image_id for r in recs] for s, recs in p.splits.items()} == exp["splits"]
    for s, recs in p.splits.items():
        for r in recs:
            assert r.labels.dtype == np.int8 and r.labels.tolist() == exp["labels"][s][r.image_id]
            assert r.path == os.path.join(root, r.image_id)
    got = {s: {d["image_id"]: d["reason"] for d in v} for s, v in p.skipped.items()}
    assert set(got) == set(exp["skipped"])
    for s, want in exp["skipped"].items():
        assert set(got[s]) == set(want)
        for k, prefix in want.items():
            assert got[s][k].startswith(prefix)
    e = p.extra
    assert e["root"] == os.path.abspath(root) and e["files"] == {"train": "train.json",
                                                                 "val": "val.json"}
    assert e["label_counts_by_split"]["train"] == {"bird": 0, "cat": 1, "dog": 1, "person": 1}
    assert e["images_without_labels"] == {"train": 1, "val": 0}
    assert e["images_in_several_splits"] == 1
    json.dumps(e)
    im = p.load_image(p.splits["val"][0].path, 16, resize_shorter=18)
    assert im.shape == (16, 16, 3) and im.dtype == np.uint8


def test_integer_classes_sort_numerically(tmp_path):
    root = str(tmp_path)
    make_json_tree(root)
    os.remove(os.path.join(root, "val.json"))
    _write(root, "train.json", {"classes": [10, 2, 1], "images": [["images/a.jpg", [10, 1]]]})
    p = JSONDataset(root=root).prepare()
    assert p.label_names == ["1", "2", "10"]
    assert p.splits["train"][0].labels.tolist() == [1, 0, 1]


def test_requested_split_and_missing_files(tmp_path, tree):
    root, _ = tree
    p = JSONDataset(root=root, splits=["val"]).prepare()
    assert list(p.splits) == ["val"]
    with pytest.raises(FileNotFoundError, match="split 'test' requested"):
        JSONDataset(root=root, splits=["test"]).prepare()
    with pytest.raises(FileNotFoundError, match="none of"):
        JSONDataset(root=str(tmp_path / "empty")).prepare()
    with pytest.raises(ValueError, match="no dataset root"):
        JSONDataset()
    with pytest.raises(ValueError, match="splits"):
        JSONDataset(root=root, splits=["training"])


def test_unknown_label_names_file_index_and_label(tree):
    root, _ = tree
    _write(root, "val.json", {"classes": ["bird", "cat", "dog", "person"],
                              "images": [["images/d.jpg", ["cat"]], ["images/a.jpg", ["horse"]]]})
    with pytest.raises(ValueError, match=r"val\.json: image 1 \(images/a\.jpg\): label 'horse'"):
        JSONDataset(root=root).prepare()


def test_class_sets_must_agree(tree):
    root, _ = tree
    _write(root, "val.json", {"classes": ["bird", "cat", "dog", "horse"], "images": []})
    with pytest.raises(ValueError, match=r"val\.json: class set differs .*extra \['horse'\]"):
        JSONDataset(root=root).prepare()


@pytest.mark.parametrize("bad", ["/etc/passwd", "../outside.jpg", "images/../../outside.jpg"])
def test_paths_confined_to_root(tree, bad):
    root, _ = tree
    with open(os.path.join(os.path.dirname(root), "outside.jpg"), "wb") as f:
        f.write(b"x")
    _write(root, "val.json", {"classes": ["bird", "cat", "dog", "person"],
                              "images": [["images/d.jpg", []], [bad, ["cat"]]]})
    with pytest.raises(ValueError, match=r"val\.json: image 1: .*" + bad.replace(".", r"\.")):
        JSONDataset(root=root).prepare()


def test_symlink_escaping_root_is_refused(tree):
    root, _ = tree
    outside = os.path.join(os.path.dirname(root), "secret.jpg")
    with open(outside, "wb") as f:
        f.write(b"x")
    os.symlink(outside, os.path.join(root, "images", "link.jpg"))
    _write(root, "val.json", {"classes": ["bird", "cat", "dog", "person"],
                              "images": [["images/link.jpg", []]]})
    with pytest.raises(ValueError, match="resolves outside the dataset root"):
        JSONDataset(root=root).prepare()


@pytest.mark.parametrize("data, match", [
    ("not json", "not valid JSON"),
    ({"images": []}, "expected an object with 'classes' and 'images'"),
    ({"classes": [], "images": []}, "'classes' must be a non-empty list"),
    ({"classes": ["a", "a"], "images": []}, "repeated classes"),
    ({"classes": ["a", 1], "images": []}, "mixes strings and integers"),
    ({"classes": ["a"], "images": [["x.jpg"]]}, r"image 0: expected \[path, \[labels\]\]"),
])
def test_malformed_files(tmp_path, data, match):
    with open(tmp_path / "test.json", "w") as f:
        f.write(data if isinstance(data, str) else json.dumps(data))
    with pytest.raises(ValueError, match=r"test\.json: .*" + match):
        JSONDataset(root=str(tmp_path)).prepare()
