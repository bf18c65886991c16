"""VOC adapter on a devkit-layout fixture written by the test."""

import os

import numpy as np
import pytest
from PIL import Image

from mll_tf.data.datasets import get_dataset
from mll_tf.data.datasets.voc import CLASS_NAMES

XML = """<annotation><filename>{id}.jpg</filename>{objects}</annotation>"""
OBJ = "<object><name>{name}</name><difficult>{d}</difficult><bndbox><xmin>1</xmin><ymin>1</ymin>" \
      "<xmax>5</xmax><ymax>5</ymax></bndbox></object>"


def _write(root, objects_by_id, lists, jpg_missing=()):
    for d in ("JPEGImages", "Annotations", "ImageSets/Main", "ImageSets/Segmentation"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    for i, objs in objects_by_id.items():
        with open(os.path.join(root, "Annotations", f"{i}.xml"), "w") as f:
            f.write(XML.format(id=i, objects="".join(OBJ.format(name=n, d=d) for n, d in objs)))
        if i not in jpg_missing:
            Image.fromarray(np.full((6, 8, 3), 90, np.uint8)).save(os.path.join(root, "JPEGImages", f"{i}.jpg"))
    for name, ids in lists.items():
        with open(os.path.join(root, "ImageSets", name + ".txt"), "w") as f:
            f.write("".join(f"{i}\n" for i in ids) + "\n")


@pytest.fixture
def voc(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    objs = {"2008_000001": [("dog", 0), ("person", 1)], "2008_000002": [("cat", 0), ("cat", 0)],
            "2008_000003": [("tvmonitor", 1)], "2008_000004": [("aeroplane", 0)],
            "2008_000005": [("bus", 0)]}
    _write(str(root), objs, {"Main/train": ["2008_000001", "2008_000002", "2008_000003", "2008_000009"],
                             "Main/val": ["2008_000004", "2008_000005"], "Segmentation/val": ["2008_000005"]},
           jpg_missing=("2008_000003",))
    return tmp_path


def test_labels_difficult_kept_and_splits(voc):
    p = get_dataset("voc")(root=str(voc / "VOCdevkit"), val_fraction=0.0).prepare()   # the VOCdevkit folder works
    assert p.label_names == CLASS_NAMES and len(CLASS_NAMES) == 20
    recs = {r.image_id: r for s in p.splits.values() for r in s}
    assert np.flatnonzero(recs["2008_000001"].labels).tolist() == [CLASS_NAMES.index("dog"),
                                                                   CLASS_NAMES.index("person")]
    assert recs["2008_000002"].labels.sum() == 1 and set(np.unique(recs["2008_000002"].labels)) == {0, 1}
    assert [r.image_id for r in p.splits["test"]] == ["2008_000004", "2008_000005"]
    assert [r.image_id for r in p.splits["train"]] == ["2008_000001", "2008_000002"]
    reasons = {s["image_id"]: s["reason"] for s in p.skipped["train"]}
    assert reasons == {"2008_000003": "missing file", "2008_000009": "missing annotation"}
    p = get_dataset("voc")(root=str(voc / "VOCdevkit"), val_fraction=0.0, keep_difficult=False).prepare()
    assert np.flatnonzero(p.splits["train"][0].labels).tolist() == [CLASS_NAMES.index("dog")]


def test_train_aug_list_file_val_holdout_and_leak_refusal(voc, tmp_path):
    aug = tmp_path / "train_aug.txt"
    aug.write_text("2008_000001\n2008_000002\n2008_000004\n")
    p = get_dataset("voc")(root=str(voc / "VOCdevkit" / "VOC2012"), train_list=str(aug),
                           test_list="Segmentation/val", val_fraction=0.5).prepare()
    ids = [r.image_id for r in p.splits["train"]] + [r.image_id for r in p.splits["val"]]
    assert sorted(ids) == ["2008_000001", "2008_000002", "2008_000004"]
    with pytest.raises(ValueError, match="share 1 ids"):
        get_dataset("voc")(root=str(voc / "VOCdevkit"), train_list=str(aug)).prepare()
    with pytest.raises(FileNotFoundError, match="Main/nope"):
        get_dataset("voc")(root=str(voc / "VOCdevkit"), train_list="Main/nope").prepare()


def test_unknown_object_name_names_the_file(tmp_path):
    _write(str(tmp_path), {"a": [("unicorn", 0)]}, {"Main/train": ["a"], "Main/val": []})
    with pytest.raises(ValueError, match="a.xml.*unicorn"):
        get_dataset("voc")(root=str(tmp_path)).prepare()
