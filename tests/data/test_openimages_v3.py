import os
import shutil

import numpy as np
import pytest

from mll_tf.data.datasets.openimages_v3 import OpenImagesV3
from mll_tf.labels import from_pm1
from mll_tf.data.datasets import get_dataset
from tests.data.oi_cub_fixtures import make_openimages_tree


@pytest.fixture
def tree(tmp_path):
    return str(tmp_path), make_openimages_tree(str(tmp_path), "v3")


def imcl_reference_label(rows, labelmap, image_id):
    """IMCL's label for one image: 2*Confidence-1 at the MID's index, 0 elsewhere,
    later rows overwriting earlier ones (docs/labels_and_data.md §3)."""
    y = np.zeros(len(labelmap), np.int32)
    for img, mid, conf in rows:
        if img == image_id and mid in labelmap:
            y[labelmap.index(mid)] = 2 * conf - 1
    return y


def test_prepare_2017_11_layout(tree):
    root, want = tree
    p = OpenImagesV3(root=root).prepare()
    assert get_dataset("openimages_v3") is OpenImagesV3
    assert p.label_names == want["classes"]
    assert p.extra["label_text"] == want["label_text"]           # no header, quoted name
    assert p.extra["version"] == "2017_11"
    for split, ids in want["split_ids"].items():                  # t4 kept: drop_empty=False
        assert [r.image_id for r in p.splits[split]] == ids
        for r in p.splits[split]:
            np.testing.assert_array_equal(r.labels, want["labels"][r.image_id])
    assert p.extra["label_counts_by_split"] == want["positives"]
    assert p.extra["negative_counts_by_split"] == want["negatives"]
    for split, stats in want["csv_stats"].items():
        got = p.extra["csv_stats"][split]
        assert {k: got[k] for k in stats} == stats, split
    assert [s["image_id"] for s in p.skipped["train"]] == want["missing"]["train"]
    assert p.extra["label_files"] == want["label_files"]


def test_matches_imcl_labels_converted(tree):
    root, want = tree
    p = OpenImagesV3(root=root).prepare()
    for split, recs in p.splits.items():
        for r in recs:
            if r.image_id == "t3":
                continue  # conflicting rows: IMCL keeps the last one, we keep the positive
            ref = imcl_reference_label(want["rows"][split], want["classes"], r.image_id)
            np.testing.assert_array_equal(r.labels, from_pm1(ref))
    t3 = next(r for r in p.splits["train"] if r.image_id == "t3")
    ref = from_pm1(imcl_reference_label(want["rows"]["train"], want["classes"], "t3"))
    assert ref[0] == 0 and t3.labels[0] == 1
    assert OpenImagesV3(root=root, conflict="negative").prepare().splits["train"][2].labels[0] == 0


def test_imcl_folder_layout_through_options(tmp_path):
    base = tmp_path / "imcl"
    make_openimages_tree(str(base / "src"), "v3")
    # IMCL: data/2017_11/... and image_data/OpenImages/<split>/
    os.makedirs(base / "data")
    shutil.move(str(base / "src" / "2017_11"), str(base / "data" / "2017_11"))
    os.makedirs(base / "image_data" / "OpenImages")
    for d in ("train", "validation", "test"):
        shutil.move(str(base / "src" / d), str(base / "image_data" / "OpenImages" / d))
    p = OpenImagesV3(
        root=str(base), classes_file="data/2017_11/classes-trainable.txt",
        descriptions_file="data/2017_11/class-descriptions.csv",
        label_files={s: f"data/2017_11/{d}/annotations-human.csv"
                     for s, d in (("train", "train"), ("val", "validation"), ("test", "test"))},
        image_dirs={s: f"image_data/OpenImages/{d}"
                    for s, d in (("train", "train"), ("val", "validation"), ("test", "test"))},
    ).prepare()
    assert [len(p.splits[s]) for s in ("train", "val", "test")] == [4, 2, 2]


def test_drop_empty(tree):
    root, _ = tree
    p = OpenImagesV3(root=root, drop_empty=True, splits=["train"]).prepare()
    assert [r.image_id for r in p.splits["train"]] == ["t1", "t2", "t3"]
    assert p.extra["csv_stats"]["train"]["dropped_without_class_labels"] == 1


def test_errors_name_the_file(tree):
    root, want = tree
    with open(want["label_files"]["train"], "a") as f:
        f.write("t9,verification,/m/a1,\n")
    with pytest.raises(ValueError, match=r"2017_11/train/annotations-human\.csv: line 13"):
        OpenImagesV3(root=root, splits=["train"]).prepare()
    with pytest.raises(FileNotFoundError, match=r"2017_11/no-descriptions\.csv"):
        OpenImagesV3(root=root, descriptions_file="2017_11/no-descriptions.csv").prepare()
