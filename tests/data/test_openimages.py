import datetime
import json
import os
import pickle

import numpy as np
import pytest

from mll_tf.data.adapter import ImageRecord
from mll_tf.data.datasets.openimages import (OpenImages, RestrictedUnpickler, load_mid_list_pickle,
                                             read_top_unseen)
from mll_tf.data.datasets import get_dataset
from tests.data.lesa_fixtures import make_openimages_tree


@pytest.fixture
def oi(tmp_path):
    root = str(tmp_path / "OpenImages")
    return root, make_openimages_tree(root)


def _check(p, root, exp):
    assert p.label_names == exp["label_names"]
    assert {s: [r.image_id for r in recs] for s, recs in p.splits.items()} == exp["splits"]
    for recs in p.splits.values():
        for r in recs:
            assert r.labels.dtype == np.int8 and r.labels.shape == (10,)
            assert r.labels.tolist() == exp["labels"][r.image_id], r.image_id
            assert r.path == os.path.join(root, r.image_id) and os.path.isfile(r.path)
    got = {s: {d["image_id"]: d["reason"] for d in v} for s, v in p.skipped.items()}
    assert got == exp["skipped"]


def test_registered():
    assert get_dataset("openimages") is OpenImages


def test_prepare_labels_splits_and_extras(oi):
    root, exp = oi
    p = OpenImages(root=root).prepare()
    _check(p, root, exp)
    assert p.label_names[:4] == exp["unseen"]          # unseen first
    e = p.extra
    assert e["label_split"] == {"unseen": exp["unseen"], "seen": exp["seen"],
                                "unseen_eval": exp["unseen_eval"]}
    assert e["label_text"] == exp["label_text"]
    assert "Ducks, geese and swans" in e["label_text"]
    assert e["eval_k"] == [10, 20] and e["protocol"] == "lesa_openimages"
    assert e["root"] == os.path.abspath(root)
    assert e["unknown_mid_rows"] == exp["unknown_mid_rows"]
    assert e["unknown_mid_examples"] == ["/m/0bogus"]
    assert e["duplicate_rows"] == exp["duplicate_rows"]
    assert e["conflicting_pairs"] == exp["conflicting_pairs"] and e["conflict"] == "positive"
    assert e["train_images_without_positive_seen"] == exp["train_images_without_positive_seen"]
    assert e["labels_without_description"] == 0
    for s, recs in p.splits.items():
        want = np.sum([np.array(exp["labels"][r.image_id]) == 1 for r in recs], axis=0)
        assert [e["label_counts_by_split"][s][n] for n in p.label_names] == want.tolist()
    json.dumps(e)


@pytest.mark.parametrize("chunk_rows", [1, 4, 1_000_000])
def test_conflicting_rows_positive_wins_in_any_order(oi, chunk_rows):
    # Image B's pair (B, /m/0s03) is given 1, then 0. This adapter used to keep the later
    # row (0, as the LESA extraction assigns rows in file order); now a positive wins, the
    # one rule of every OpenImages adapter (openimages, openimages_v3, openimages_v6),
    # independent of row order and of chunking: reversing the CSV changes nothing.
    root, exp = oi
    b = exp["splits"]["train"][1]
    csv_path = os.path.join(exp["meta_dir"], "train-annotations-human-imagelabels.csv")
    header, *rows = open(csv_path).read().splitlines(keepends=True)
    for data in (rows, rows[::-1]):
        with open(csv_path, "w") as f:
            f.write(header + "".join(data))
        p = OpenImages(root=root, splits=["train"], chunk_rows=chunk_rows).prepare()
        got = {r.image_id: r.labels.tolist() for r in p.splits["train"]}
        assert got == {i: exp["labels"][i] for i in exp["splits"]["train"]}
        assert got[b][p.label_names.index("/m/0s03")] == 1
        assert p.extra["duplicate_rows"]["train"] == 1
        assert p.extra["conflicting_pairs"]["train"] == 1


def test_sparse_record_pickles_dense(oi):
    root, _ = oi
    r = OpenImages(root=root, splits=["test"]).prepare().splits["test"][0]
    q = pickle.loads(pickle.dumps(r))
    assert type(q) is ImageRecord and q.image_id == r.image_id and q.path == r.path
    np.testing.assert_array_equal(q.labels, r.labels)


def test_txt_unseen_list_drop_unseen_and_split_subset(tmp_path):
    root = str(tmp_path / "oi")
    exp = make_openimages_tree(root, unseen_format="txt")
    p = OpenImages(root=root, splits=("train", "val"), drop_unseen_train_val=True).prepare()
    assert set(p.splits) == {"train", "val"} and p.extra["unseen_list_file"] == "unseen_labels.txt"
    for recs in p.splits.values():
        for r in recs:
            want = exp["labels"][r.image_id]
            assert r.labels.tolist() == [-1] * 4 + want[4:]
    # top_unseen_file=None: all unseen labels are evaluated
    q = OpenImages(root=root, splits=["test"], top_unseen_file=None).prepare()
    assert q.extra["label_split"]["unseen_eval"] == exp["unseen"]


def test_load_image_resize_shorter(oi):
    root, _ = oi
    p = OpenImages(root=root, splits=["val"]).prepare()
    im = p.load_image(p.splits["val"][0].path, 12, resize_shorter=14)
    assert im.shape == (12, 12, 3) and im.dtype == np.uint8


def test_restricted_unpickler_refuses_other_globals(tmp_path):
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps([datetime.date(2020, 1, 1)], protocol=2))
    with pytest.raises(ValueError, match=r"bad\.pkl: .*refused global datetime\.date"):
        load_mid_list_pickle(str(bad))
    with open(bad, "rb") as f, pytest.raises(pickle.UnpicklingError, match="refused global"):
        RestrictedUnpickler(f).load()
    bad.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(ValueError, match="expected a list/array of MID strings"):
        load_mid_list_pickle(str(bad))
    ok = tmp_path / "ok.pkl"
    ok.write_bytes(pickle.dumps(np.array(["/m/1", "/m/2"], dtype=object), protocol=2))
    assert load_mid_list_pickle(str(ok)) == ["/m/1", "/m/2"]
    for protocol in (4, 5):   # unicode dtype; protocol 5 uses numeric._frombuffer
        ok.write_bytes(pickle.dumps(np.array(["/m/1", "/m/2"]), protocol=protocol))
        assert load_mid_list_pickle(str(ok)) == ["/m/1", "/m/2"]


def test_refused_pickle_in_dataset(oi):
    root, exp = oi
    with open(os.path.join(exp["meta_dir"], "unseen_labels.pkl"), "wb") as f:
        pickle.dump(datetime.date(2020, 1, 1), f, protocol=2)
    with pytest.raises(ValueError, match=r"unseen_labels\.pkl: .*refused global"):
        OpenImages(root=root).prepare()


def test_top_unseen_bom_and_errors(tmp_path):
    p = tmp_path / "top.csv"
    p.write_bytes("\ufeff3\r\n0\r\n".encode("utf-8"))
    assert read_top_unseen(str(p), 4) == [3, 0]
    p.write_text("3\n4\n")
    with pytest.raises(ValueError, match=r"top\.csv: line 2: index 4 outside \[0, 4\)"):
        read_top_unseen(str(p), 4)
    p.write_text("1\n1\n")
    with pytest.raises(ValueError, match="line 2: index 1 repeated"):
        read_top_unseen(str(p), 4)


def test_bad_csv_errors(oi):
    root, exp = oi
    csv_path = os.path.join(exp["meta_dir"], "validation-annotations-human-imagelabels.csv")
    text = open(csv_path).read()
    with open(csv_path, "w") as f:
        f.write(text + "00000000a000000f,verification,/m/0s01,0.5\n")
    with pytest.raises(ValueError, match=r"validation-annotations.*line 6: Confidence"):
        OpenImages(root=root, splits=["val"]).prepare()
    with open(csv_path, "w") as f:
        f.write("ImageID,Source,Label,Confidence\nx,y,/m/0s01,1\n")
    with pytest.raises(ValueError, match=r"validation-annotations.*need columns"):
        OpenImages(root=root, splits=["val"]).prepare()
    os.remove(csv_path)
    with pytest.raises(FileNotFoundError, match="val annotation CSV"):
        OpenImages(root=root).prepare()


def test_seen_unseen_overlap_and_duplicates(oi):
    root, exp = oi
    with open(os.path.join(exp["meta_dir"], "classes-trainable.txt"), "a") as f:
        f.write("/m/0u02\n")
    with pytest.raises(ValueError, match=r"MIDs also in .*classes-trainable\.txt: \['/m/0u02'\]"):
        OpenImages(root=root).prepare()
    with open(os.path.join(exp["meta_dir"], "classes-trainable.txt"), "a") as f:
        f.write("/m/0s01\n")
    with pytest.raises(ValueError, match=r"classes-trainable\.txt: duplicated MIDs"):
        OpenImages(root=root).prepare()


def test_bad_options():
    with pytest.raises(ValueError, match="splits"):
        OpenImages(splits=["training"])
    with pytest.raises(ValueError, match="image_dir"):
        OpenImages(image_dir="images")
