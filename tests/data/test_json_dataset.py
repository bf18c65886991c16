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


# ---------------------------------------------------------------------------------------------------
# The original's split layouts (deep-object-reid, branch ``multilabel``, ``datasets/*/{train,val}.json``
# and datasets/README.md): ``<root>/{train,val}.json`` (no test.json), ``"images"`` listed before
# ``"classes"``; VOC-07 under ``data/`` with one label per object (repeats) and the 20 classes in
# alphabetical order; NUS-WIDE under ``images/`` with the 81 concepts in the file's own unsorted order
# and sorted, non-repeated labels per image (some images have none); VG-500 under ``images/`` with
# INTEGER classes 0..499 and integer labels; COCO-14 (json not committed upstream; built from the
# loader's format) with category names containing spaces, repeated per object, train2014/val2014
# file names under ``images/``.

VOC = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
       "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
NUS = ["running", "temple", "sky", "glacier", "wedding", "sun", "dancing", "bear", "person", "animal"]
COCO = ["person", "bicycle", "car", "traffic light", "fire hydrant", "hot dog", "dog", "cat"]


def _image(path, seed, size=24):
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)).save(path, "JPEG", quality=90)


def _write_ordered(root, name, images, classes):
    with open(os.path.join(root, name), "w") as f:  # "images" first, as the original's files
        json.dump({"images": images, "classes": classes}, f)


def make_original_layout(root, layout):
    """Write ``train.json``/``val.json`` and real tiny JPEGs in the original's layout of ``layout``.

    Returns:
        dict: ``label_names`` (the adapter's sorted str columns) and
        ``labels`` split -> image_id -> list of 0/1, computed here from the
        lists written (independently of the adapter).
    """
    rng = np.random.default_rng(sum(map(ord, layout)))
    if layout == "voc07":
        classes, folder, name = list(VOC), "data", "{:06d}.jpg"
        ids = {"train": [5, 7, 9, 12, 16, 17, 19, 20], "val": [1, 2, 3, 4, 6, 8]}
    elif layout == "nus_wide":
        classes, folder, name = list(NUS), "images", "{}_1158315062_02a15f03aa_m.jpg"
        ids = {"train": [123940, 5685, 44750, 163045, 122592, 40641, 157670, 35042],
               "val": [263482, 60332, 239956, 227403, 265131, 125126]}
    elif layout == "vg500":
        classes, folder, name = list(range(12)), "images", "{}.jpg"  # 0..11 stand for 0..499
        ids = {"train": [2328403, 2336863, 2389780, 2346564, 2348654, 2414016, 2409207, 1680],
               "val": [2342857, 2365505, 2405014, 2329464, 1592810, 512]}
    elif layout == "coco14":
        classes, folder = list(COCO), "images"
        ids = {"train": [9, 25, 30, 34, 36, 42, 49, 61], "val": [42, 73, 74, 133, 136, 139]}
        name = None
    else:
        raise ValueError(layout)
    labels = {}
    seed = 0
    for split in ("train", "val"):
        images, labels[split] = [], {}
        for k, i in enumerate(ids[split]):
            if layout == "coco14":
                rel = f"{folder}/COCO_{split}2014_{i:012d}.jpg"
            else:
                rel = f"{folder}/{name.format(i)}"
            # 1-3 labels per image; one NUS image without labels (all-negative)
            present = sorted({classes[(k + j) % len(classes)] for j in range(1 + k % 3)}, key=str)
            if layout == "nus_wide" and k == 1:
                present = []
            listed = list(present)
            if layout in ("voc07", "coco14") and present:
                listed = [present[0]] * 3 + present[1:] + [present[-1]]  # one entry per object
                rng.shuffle(listed)
            if layout == "vg500":
                listed = list(rng.permutation(present)) if present else []
                listed = [int(v) for v in listed]
            images.append([rel, listed])
            _image(os.path.join(root, rel), seed)
            seed += 1
            labels[split][rel] = present
        _write_ordered(root, f"{split}.json", images, classes)  # NUS: the file's own unsorted order
    columns = sorted(classes)
    names = [str(c) for c in columns]
    onehot = {s: {rel: [int(c in present) for c in columns] for rel, present in d.items()}
              for s, d in labels.items()}
    return {"label_names": names, "labels": onehot}


LAYOUTS = ["voc07", "nus_wide", "vg500", "coco14"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_original_layouts_read(tmp_path, layout):
    root = str(tmp_path / layout)
    exp = make_original_layout(root, layout)
    p = JSONDataset(root=root).prepare()
    assert p.label_names == exp["label_names"]
    if layout == "vg500":
        assert p.label_names[:3] == ["0", "1", "2"] and p.label_names[-1] == "11"  # numeric order
    assert set(p.splits) == {"train", "val"} and not p.skipped
    for split, want in exp["labels"].items():
        got = {r.image_id: r.labels.tolist() for r in p.splits[split]}
        assert got == want
        assert [r.image_id for r in p.splits[split]] == list(want)  # file order kept
    assert p.extra["files"] == {"train": "train.json", "val": "val.json"}
    img = p.load_image(p.splits["train"][0].path, 16)
    assert img.shape == (16, 16, 3) and img.dtype == np.uint8


# End to end on two layouts (label names with spaces; classes in the file's own order, unlabelled images);
# every layout's reading is checked above.
@pytest.mark.parametrize("layout", ["coco14", "nus_wide"])
def test_original_layouts_extract_and_train(tmp_path, layout, capsys):
    """extract (train + val stores) -> train linear_head (AAM) -> evaluate --split val prints mAP."""
    from evaluation import evaluate
    from experiments import train
    from extract import build_tfrecords

    root = str(tmp_path / layout)
    exp = make_original_layout(root, layout)
    feats = tmp_path / "features"
    assert build_tfrecords.main(["--dataset", "json", "--data-root", root, "--out-dir", str(feats),
                                 "--backbone", "efficientnet_lite0", "--weights", "none", "--input-size", "32",
                                 "--workers", "0", "--batch-size", "4", "--no-progress"]) == 0
    store = feats / "json" / "efficientnet_lite0_32"
    assert sorted(os.listdir(store)) >= ["train", "val"] and not (store / "test").exists()
    run = tmp_path / "run"
    assert train.main(["--method", "linear_head", "--loss", "aam", "--dataset", "json", "--features-root",
                       str(feats), "--input-size", "32", "--run-dir", str(run), "--epochs", "2", "--batch-size",
                       "4", "--learning-rate", "0.01", "--no-progress"]) == 0
    capsys.readouterr()
    assert evaluate.main(["--run", str(run), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "[linear_head]" in out and "mAP" in out
    res = json.load(open(run / "eval_val" / "summary.json"))["results"]
    assert res["num_images"] == len(exp["labels"]["val"]) and res["num_labels"] == len(exp["label_names"])
    assert 0.0 <= res["mAP"] <= 1.0


def test_voc_layout_finetunes_an_attention_head_on_images(tmp_path, capsys):
    """--finetune: EfficientNet-Lite0 (random weights, --backbone-weights none) + ML-Decoder on the JPEGs.

    64 px: a 2x2 feature map, so the queries attend over 4 tokens."""
    from evaluation import evaluate
    from experiments import train

    root = str(tmp_path / "voc")
    make_original_layout(root, "voc07")
    run = tmp_path / "ft"
    assert train.main(["--method", "ml_decoder", "--loss", "asl", "--finetune", "--dataset", "json",
                       "--data-root", root, "--backbone-weights", "none", "--input-size", "64",
                       "--decoder-dim", "16", "--decoder-ffn", "32", "--decoder-heads", "2", "--run-dir",
                       str(run), "--epochs", "1", "--batch-size", "4", "--no-progress"]) == 0
    assert "8 training images" in capsys.readouterr().out
    assert evaluate.main(["--run", str(run), "--split", "val"]) == 0
    res = json.load(open(run / "eval_val" / "summary.json"))["results"]
    assert res["num_images"] == 6 and 0.0 <= res["mAP"] <= 1.0
