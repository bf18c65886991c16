import dataclasses
import os
import pickle

import numpy as np
import pytest

from mll_tf.data.adapter import ImageRecord
from mll_tf.data.datasets import _oi_common as oi
from mll_tf.data.datasets.openimages_v6 import OpenImagesV6
from mll_tf.data.datasets import get_dataset
from tests.data.oi_cub_fixtures import IMAGE_DIRS, make_openimages_tree


@pytest.fixture
def tree(tmp_path):
    return str(tmp_path), make_openimages_tree(str(tmp_path), "v6")


def _by_id(p):
    return {r.image_id: r for recs in p.splits.values() for r in recs}


def test_prepare_labels_splits_and_counts(tree):
    root, want = tree
    p = OpenImagesV6(root=root).prepare()
    assert get_dataset("openimages_v6") is OpenImagesV6
    assert p.name == "openimages_v6"
    assert p.label_names == want["classes"]
    assert p.extra["label_text"] == want["label_text"]          # with header, quoted, comma
    assert set(p.splits) == {"train", "val", "test"}
    for split, ids in want["split_ids"].items():
        assert [r.image_id for r in p.splits[split]] == ids
        for r in p.splits[split]:
            assert isinstance(r, ImageRecord)
            assert r.labels.dtype == np.int8 and r.labels.shape == (4,)
            np.testing.assert_array_equal(r.labels, want["labels"][r.image_id])
            assert r.path == os.path.join(root, IMAGE_DIRS[split], r.image_id + ".jpg")
    assert p.extra["label_counts_by_split"] == want["positives"]
    assert p.extra["negative_counts_by_split"] == want["negatives"]
    for split, stats in want["csv_stats"].items():
        got = p.extra["csv_stats"][split]
        assert {k: got[k] for k in stats} == stats, split
    assert p.extra["ignored_rows_by_split"] == {"train": 2, "val": 0, "test": 1}
    assert p.skipped == {"train": [{"image_id": "t5", "reason": "missing image file t5.jpg"}]}
    assert p.extra["skipped_counts"]["train"] == {"missing image file": 1}
    assert p.extra["root"] == os.path.abspath(root)
    assert p.extra["label_files"] == want["label_files"]
    assert p.extra["class_source"] == want["classes_file"]


def test_extra_is_json_serialisable_and_loader_picklable(tree):
    import json

    root, _ = tree
    p = OpenImagesV6(root=root).prepare()
    json.dumps(p.extra)
    load = pickle.loads(pickle.dumps(p.load_image))
    im = load(p.splits["train"][0].path, 8)
    assert im.shape == (8, 8, 3) and im.dtype == np.uint8
    assert load(p.splits["train"][0].path, 8, resize_shorter=10).shape == (8, 8, 3)


@pytest.mark.parametrize("conflict,value", [("positive", 1), ("negative", 0), ("unknown", -1)])
def test_conflict_policy(tree, conflict, value):
    root, _ = tree
    t3 = _by_id(OpenImagesV6(root=root, conflict=conflict, splits=["train"]).prepare())["t3"]
    assert t3.labels[0] == value and t3.labels[1] == 1


def test_chunk_boundaries_do_not_change_the_result(tree):
    root, _ = tree
    a = OpenImagesV6(root=root).prepare()
    b = OpenImagesV6(root=root, chunksize=2).prepare()
    assert a.extra["csv_stats"] == b.extra["csv_stats"]
    for s in a.splits:
        assert [r.image_id for r in a.splits[s]] == [r.image_id for r in b.splits[s]]
        for x, y in zip(a.splits[s], b.splits[s]):
            np.testing.assert_array_equal(x.labels, y.labels)


def test_explicit_class_order_and_drop_empty_false(tree):
    root, want = tree
    order = ["/m/d4", "/m/a1"]
    p = OpenImagesV6(root=root, classes=order, drop_empty=False).prepare()
    assert p.label_names == order and p.extra["label_text"] == ["Dog", "Apple"]
    recs = _by_id(p)
    np.testing.assert_array_equal(recs["t2"].labels, [0, -1])      # c3 is now ignored
    np.testing.assert_array_equal(recs["t4"].labels, [-1, -1])     # kept, all unknown
    assert p.extra["csv_stats"]["train"]["ignored_rows"] == 6


def test_descriptions_csv_as_class_list(tree):
    root, _ = tree
    p = OpenImagesV6(root=root, classes_file="oidv6-class-descriptions.csv",
                     splits=["val"]).prepare()
    # the header is skipped; the description file's order is kept
    assert p.label_names == ["/m/zz", "/m/a1", "/m/b2", "/m/c3", "/m/d4", "/m/yy"]


def test_only_requested_splits_are_read(tree):
    root, want = tree
    os.remove(want["label_files"]["train"])
    p = OpenImagesV6(root=root, splits=("val", "test")).prepare()
    assert p.splits["train"] == [] and len(p.splits["val"]) == 2
    with pytest.raises(FileNotFoundError, match="oidv6-train-annotations-human-imagelabels.csv"):
        OpenImagesV6(root=root).prepare()


def test_max_skipped_listed_still_counts(tree):
    root, _ = tree
    p = OpenImagesV6(root=root, max_skipped_listed=0, splits=["train"]).prepare()
    assert p.skipped == {} and p.extra["skipped_counts"]["train"] == {"missing image file": 1}


def test_bad_confidence_names_file_and_line(tree):
    root, want = tree
    path = want["label_files"]["val"]
    with open(path, "a") as f:
        f.write("v3,verification,/m/a1,0.7\n")
    with pytest.raises(ValueError, match=r"validation-annotations-human-imagelabels\.csv: line 5"):
        OpenImagesV6(root=root, splits=["val"]).prepare()


def test_bad_header_and_garbage_name_the_file(tree):
    root, want = tree
    path = want["label_files"]["test"]
    with open(path, "w") as f:
        f.write("ImageID,LabelName\ns1,/m/a1\n")
    with pytest.raises(ValueError, match=r"test-annotations-human-imagelabels\.csv.*Confidence"):
        OpenImagesV6(root=root, splits=["test"]).prepare()
    with open(path, "w") as f:
        f.write("ImageID,Source,LabelName,Confidence\ns1,x,/m/a1,yes\n")
    with pytest.raises(ValueError, match=r"test-annotations-human-imagelabels\.csv"):
        OpenImagesV6(root=root, splits=["test"]).prepare()


def test_missing_description_names_the_file(tree):
    root, _ = tree
    with pytest.raises(ValueError, match=r"oidv6-class-descriptions\.csv.*/m/new"):
        OpenImagesV6(root=root, classes=["/m/a1", "/m/new"], splits=[]).prepare()


def test_missing_files_and_folders(tmp_path, tree):
    root, _ = tree
    with pytest.raises(FileNotFoundError, match="dataset root"):
        OpenImagesV6(root=str(tmp_path / "nothing")).prepare()
    with pytest.raises(FileNotFoundError, match="oidv6-classes-trainable.txt"):
        OpenImagesV6(root=root, classes_file="nope/oidv6-classes-trainable.txt").prepare()
    with pytest.raises(FileNotFoundError, match="image folder.*'val'"):
        OpenImagesV6(root=root, image_dirs={"val": "elsewhere"}, splits=["val"]).prepare()
    with pytest.raises(ValueError, match="unknown split"):
        OpenImagesV6(root=root, splits=["validation"])


def test_read_class_list_rejects_duplicates_and_non_mids(tmp_path):
    p = tmp_path / "classes.txt"
    p.write_text("/m/a\n\n/m/b\n")
    assert oi.read_class_list(str(p)) == ["/m/a", "/m/b"]
    p.write_text("/m/a\n/m/b\n/m/a\n")
    with pytest.raises(ValueError, match=r"classes\.txt: line 3: duplicate class '/m/a'"):
        oi.read_class_list(str(p))
    p.write_text("/m/a\nbanana\n")
    with pytest.raises(ValueError, match=r"classes\.txt: line 2"):
        oi.read_class_list(str(p))


def test_read_class_descriptions_header_optional(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('\ufeffLabelName,DisplayName\n/m/a,"x, y"\n/m/b,B\n')
    assert oi.read_class_descriptions(str(p)) == {"/m/a": "x, y", "/m/b": "B"}
    p.write_text("/m/a,A\n/m/b\n")
    with pytest.raises(ValueError, match=r"d\.csv: line 2"):
        oi.read_class_descriptions(str(p))


def test_sparse_record_behaves_like_image_record():
    r = oi.SparseLabelRecord("x", "/p/x.jpg", classes=np.array([2, 0]),
                             values=np.array([1, 0], np.int8), num_classes=4)
    np.testing.assert_array_equal(r.labels, [0, -1, 1, -1])
    r.labels[3] = 1                                   # a fresh array each time
    assert r.labels[3] == -1
    assert dataclasses.asdict(r)["labels"].tolist() == [0, -1, 1, -1]
    q = dataclasses.replace(r, labels=np.array([1, 1, 1, 1]))
    assert q.labels.tolist() == [1, 1, 1, 1] and q.image_id == "x"
    r.labels = np.array([0, 0, 0, 0])
    assert r.labels.tolist() == [0, 0, 0, 0]
    assert pickle.loads(pickle.dumps(r)).labels.tolist() == [0, 0, 0, 0]
