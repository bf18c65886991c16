import json
import os
import pickle

import numpy as np
import pytest

from mll_tf.data.datasets.cub import CUB, attribute_text
from mll_tf.data.datasets import get_dataset
from tests.data.oi_cub_fixtures import make_cub_tree


@pytest.fixture
def tree(tmp_path):
    return str(tmp_path), make_cub_tree(str(tmp_path))


def _records(p):
    return {r.image_id: (s, r) for s, recs in p.splits.items() for r in recs}


def test_attribute_text():
    assert attribute_text("has_bill_shape::curved_(up_or_down)") == "bill shape curved up or down"
    assert attribute_text("has_size::small_(5_-_9_in)") == "size small 5 9 in"
    assert attribute_text("has_wing_shape::rounded-wings") == "wing shape rounded wings"


def test_prepare_official_layout(tree):
    root, want = tree
    p = CUB(root=root, val_fraction=0.5).prepare()
    assert get_dataset("cub") is CUB
    assert p.label_names == want["attributes"]
    assert p.extra["attribute_text"] == p.extra["label_text"] == want["attribute_text"]
    assert p.extra["attributes_file"] == want["names_file"]            # top level of the tarball
    recs = _records(p)
    # every present, non-empty image in exactly one split; test = is_train 0
    listed = {rel for k, rel in want["paths"].items() if rel not in want["skipped"]}
    assert set(recs) == listed
    for k, rel in want["paths"].items():
        if rel in recs:
            split, r = recs[rel]
            assert (split == "test") == (not want["is_train"][k])
            assert r.labels.dtype == np.int8
            np.testing.assert_array_equal(r.labels, want["labels"][rel])
            assert r.path == os.path.join(want["cub_dir"], "images", rel)
    assert p.splits["val"] and p.splits["train"]
    ids = [r.image_id for r in p.splits["train"]]
    assert ids == sorted(ids, key=lambda rel: [k for k, v in want["paths"].items() if v == rel][0])
    skipped = {s["image_id"]: s["reason"] for v in p.skipped.values() for s in v}
    assert skipped == want["skipped"]
    st = p.extra["attribute_file_stats"]
    assert st["rows_with_6_fields"] == want["six_field_rows"] == 2
    assert st["missing_pairs"] == 1 and st["duplicate_rows"] == 0
    missing_rel = want["paths"][want["missing_pair"][0]]
    assert recs[missing_rel][1].labels[want["missing_pair"][1] - 1] == -1
    for split, recs_ in p.splits.items():
        y = np.array([r.labels for r in recs_])
        want_pos = dict(zip(p.label_names, (y == 1).sum(0).tolist()))
        assert p.extra["label_counts_by_split"][split] == want_pos
        assert p.extra["observed_by_split"][split] == int((y >= 0).sum())
    json.dumps(p.extra)
    im = pickle.loads(pickle.dumps(p.load_image))(p.splits["test"][0].path, 8)
    assert im.shape == (8, 8, 3) and im.dtype == np.uint8


def test_val_split_is_deterministic(tree):
    root, _ = tree
    a, b = CUB(root=root).prepare(), CUB(root=root).prepare()
    assert {s: [r.image_id for r in v] for s, v in a.splits.items()} == \
        {s: [r.image_id for r in v] for s, v in b.splits.items()}
    c = CUB(root=root, val_fraction=0.0).prepare()
    assert c.splits["val"] == []
    assert len(c.splits["train"]) == sum(len(a.splits[s]) for s in ("train", "val"))


def test_label_fraction_exact_count_and_seed(tree):
    root, _ = tree
    full = CUB(root=root, val_fraction=0.5).prepare()
    part = CUB(root=root, val_fraction=0.5, label_fraction=0.3, seed=7).prepare()
    n_obs = full.extra["observed_by_split"]["train"]
    assert part.extra["observed_by_split"]["train"] == int(np.floor(0.3 * n_obs + 0.5))
    assert part.extra["train_entries_masked"] == n_obs - part.extra["observed_by_split"]["train"]
    for s in ("val", "test"):
        assert part.extra["observed_by_split"][s] == full.extra["observed_by_split"][s]
    yf = np.array([r.labels for r in full.splits["train"]])
    yp = np.array([r.labels for r in part.splits["train"]])
    kept = yp >= 0
    np.testing.assert_array_equal(yp[kept], yf[kept])                 # kept entries unchanged
    again = np.array([r.labels for r in CUB(root=root, val_fraction=0.5, label_fraction=0.3,
                                            seed=7).prepare().splits["train"]])
    other = np.array([r.labels for r in CUB(root=root, val_fraction=0.5, label_fraction=0.3,
                                            seed=8).prepare().splits["train"]])
    np.testing.assert_array_equal(again, yp)
    assert (other != yp).any()


def test_min_certainty(tree):
    root, want = tree
    p = CUB(root=root, val_fraction=0.0, min_certainty=3).prepare()
    for k, rel in want["paths"].items():
        recs = _records(p)
        if rel not in recs:
            continue
        y = recs[rel][1].labels
        exp = np.array(want["labels"][rel])
        exp[want["certainty"][k - 1] < 3] = -1
        np.testing.assert_array_equal(y, exp)
    assert p.extra["attribute_file_stats"]["below_min_certainty"] > 0


def test_root_can_be_the_cub_folder_with_imcl_attribute_path(tmp_path):
    want = make_cub_tree(str(tmp_path), attributes_at="inside")
    p = CUB(root=want["cub_dir"]).prepare()
    assert p.label_names == want["attributes"]
    assert p.extra["attributes_file"] == want["names_file"]


def test_malformed_attribute_rows_name_the_file_and_line(tree):
    root, want = tree
    path = want["label_file"]
    lines = open(path).read().splitlines()
    bad = list(lines)
    bad[3] = "1 4 2 3 1.5"
    open(path, "w").write("\n".join(bad) + "\n")
    with pytest.raises(ValueError, match=r"image_attribute_labels\.txt: line 4: is_present"):
        CUB(root=root).prepare()
    bad = list(lines)
    bad[0] = "1 1 1 3 0 1.5 9"
    open(path, "w").write("\n".join(bad) + "\n")
    with pytest.raises(ValueError, match=r"image_attribute_labels\.txt"):
        CUB(root=root).prepare()
    bad = list(lines)
    bad[9] = "1 1 1 3 0 1.5 9"
    open(path, "w").write("\n".join(bad) + "\n")
    with pytest.raises(ValueError, match=r"image_attribute_labels\.txt: malformed"):
        CUB(root=root).prepare()
    bad = list(lines)
    bad[6] = "999 1 1 3 1.5"
    open(path, "w").write("\n".join(bad) + "\n")
    with pytest.raises(ValueError, match=r"image_attribute_labels\.txt: line 7: unknown image id"):
        CUB(root=root).prepare()


def test_missing_metadata(tree, tmp_path):
    root, want = tree
    os.remove(want["names_file"])
    with pytest.raises(FileNotFoundError, match="attributes.txt"):
        CUB(root=root).prepare()
    with pytest.raises(FileNotFoundError, match="images.txt"):
        CUB(root=str(tmp_path / "none")).prepare()
    with pytest.raises(ValueError, match="label_fraction"):
        CUB(root=root, label_fraction=0)


def test_split_file_must_cover_every_image(tree):
    root, want = tree
    split = os.path.join(want["cub_dir"], "train_test_split.txt")
    lines = open(split).read().splitlines()
    open(split, "w").write("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match=r"train_test_split\.txt: no entry for image id"):
        CUB(root=root).prepare()
