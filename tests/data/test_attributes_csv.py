import json
import os

import numpy as np
import pytest
from PIL import Image

from mll_tf.data.augment_np import split_aug_suffix
from mll_tf.data.datasets.attributes_csv import (
    AttributesCSV, _hash_split, class_distribution, format_distribution, load_spec,
    plot_class_distribution)
from mll_tf.data.datasets import get_dataset
from tests.data.partial_fixtures import ATTRIBUTE_SPEC, make_attributes_tree, write_csv

NAMES = ["neck=round", "neck=v", "neck=collar", "sleeve=short", "sleeve=long",
         "pattern=plain", "pattern=striped", "pattern=dotted", "pattern=floral"]


@pytest.mark.parametrize("spec_format", ["json", "yaml"])
def test_exact_labels_with_spec(tmp_path, spec_format):
    fx = make_attributes_tree(str(tmp_path), spec_format=spec_format)
    p = AttributesCSV(root=str(tmp_path), spec=fx["spec_path"]).prepare()
    assert get_dataset("attributes_csv") is AttributesCSV
    assert p.label_names == NAMES
    recs = {r.image_id: r for r in p.splits["train"]}
    assert list(recs) == list(fx["labels"])
    for image_id, want in fx["labels"].items():
        assert recs[image_id].labels.dtype == np.int8
        np.testing.assert_array_equal(recs[image_id].labels, want)
    assert recs["sub/f.png"].path == os.path.join(str(tmp_path), "images", "sub", "f.png")
    skipped = {s["image_id"]: s["reason"] for s in p.skipped["train"]}
    assert skipped["missing.png"] == "missing file"
    assert skipped["broken.png"].startswith("unreadable image")
    assert p.splits["val"] == []
    test = {r.image_id: r.labels.tolist() for r in p.splits["test"]}
    assert test == {"t1.png": [0, 0, 1, 0, 1, 0, 0, 0, 1], "t2.png": [-1] * 9}
    x = p.extra
    assert x["attribute_groups"] == {"neck": [0, 1, 2], "sleeve": [3, 4], "pattern": [5, 6, 7, 8]}
    assert x["attribute_classes"] == ATTRIBUTE_SPEC
    assert x["image_column"] == "filename" and x["ignored_columns"] == ["note"]
    assert x["root"] == os.path.abspath(str(tmp_path)) and x["split_source"] == "files"
    assert x["label_counts_by_split"]["train"]["sleeve=short"] == 3
    assert x["unknown_counts_by_split"]["train"] == {"neck": 2, "sleeve": 1, "pattern": 1}
    assert x["oversampling"] is None
    json.dumps(x)
    im = p.load_image(recs["a.png"].path, 16)
    assert im.shape == (16, 16, 3) and im.dtype == np.uint8


def test_classes_without_spec(tmp_path):
    make_attributes_tree(str(tmp_path))
    p = AttributesCSV(root=str(tmp_path)).prepare()
    cls = p.extra["attribute_classes"]
    assert list(cls) == ["neck", "sleeve", "pattern", "note"]
    assert cls["neck"] == ["0", "1", "2", "collar", "v"]
    assert cls["sleeve"] == ["0", "1", "long", "short"]
    assert cls["note"] == ["x"]
    single = tmp_path / "single"
    make_attributes_tree(str(single), layout="single")
    q = AttributesCSV(root=str(single)).prepare()
    assert q.extra["attribute_classes"]["pattern"] == ["0", "1", "2", "3"]  # numeric order


def test_single_file_hash_split(tmp_path):
    fx = make_attributes_tree(str(tmp_path), layout="single")
    p = AttributesCSV(root=str(tmp_path), spec=fx["spec_path"]).prepare()
    assert p.extra["split_source"] == "hash"
    got = {r.image_id: s for s, recs in p.splits.items() for r in recs}
    assert got == {r[0]: _hash_split(r[0], 0.1, 0.2) for r in fx["rows"]}
    assert len(set(got.values())) == 3
    q = AttributesCSV(root=str(tmp_path), spec=fx["spec_path"]).prepare()
    assert {s: [r.image_id for r in v] for s, v in q.splits.items()} == \
        {s: [r.image_id for r in v] for s, v in p.splits.items()}


def test_value_outside_spec_names_row(tmp_path):
    fx = make_attributes_tree(str(tmp_path))
    rows = list(fx["rows"])
    rows[1] = ("b.png", "v", "1", "7", "")
    write_csv(os.path.join(str(tmp_path), "train.csv"), fx["header"], rows)
    with pytest.raises(ValueError, match=r"train\.csv row 2 \(line 3\).*'pattern'.*'7'"):
        AttributesCSV(root=str(tmp_path), spec=fx["spec_path"]).prepare()
    rows[1] = ("b.png", "polo", "1", "2", "")
    write_csv(os.path.join(str(tmp_path), "train.csv"), fx["header"], rows)
    with pytest.raises(ValueError, match=r"row 2 .*'neck'.*'polo'"):
        AttributesCSV(root=str(tmp_path), spec=fx["spec_path"]).prepare()


@pytest.mark.parametrize("bad", ["../outside.png", "/etc/hostname", "sub/../../x.png"])
def test_path_escape_names_row_and_path(tmp_path, bad):
    fx = make_attributes_tree(str(tmp_path))
    rows = list(fx["rows"]) + [(bad, "0", "0", "0", "")]
    write_csv(os.path.join(str(tmp_path), "train.csv"), fx["header"], rows)
    with pytest.raises(ValueError, match=rf"row 9 .*{bad!r}.*outside"):
        AttributesCSV(root=str(tmp_path), spec=fx["spec_path"]).prepare()


def test_bad_spec_and_missing_csv(tmp_path):
    with pytest.raises(FileNotFoundError, match="attributes.csv"):
        AttributesCSV(root=str(tmp_path)).prepare()
    (tmp_path / "s.yaml").write_text("answer: [yes, no]\n")
    with pytest.raises(ValueError, match="s.yaml.*answer"):
        load_spec(str(tmp_path / "s.yaml"))
    (tmp_path / "s.json").write_text("{bad")
    with pytest.raises(ValueError, match="s.json"):
        load_spec(str(tmp_path / "s.json"))


def test_distribution_table_and_plot(tmp_path):
    fx = make_attributes_tree(str(tmp_path))
    p = AttributesCSV(root=str(tmp_path), spec=fx["spec_path"]).prepare()
    df = class_distribution(p, "train")
    assert list(df.columns) == ["attribute", "class", "count", "fraction_of_known",
                                "fraction_of_all"]
    neck = df[df["attribute"] == "neck"]
    assert neck["class"].tolist() == ["round", "v", "collar", "unknown"]
    assert neck["count"].tolist() == [2, 1, 1, 2]
    np.testing.assert_allclose(neck["fraction_of_known"].tolist()[:3], [0.5, 0.25, 0.25])
    assert np.isnan(neck["fraction_of_known"].tolist()[3])
    np.testing.assert_allclose(neck["fraction_of_all"].tolist(), [2 / 6, 1 / 6, 1 / 6, 2 / 6])
    pattern = df[df["attribute"] == "pattern"]
    assert pattern["count"].tolist() == [2, 1, 1, 1, 1]
    assert len(df) == 3 + 1 + 2 + 1 + 4 + 1
    text = format_distribution(df)
    assert "unknown" in text and "0.500" in text and "collar" in text
    out = plot_class_distribution(df, str(tmp_path / "plots" / "dist.png"), title="train")
    assert os.path.getsize(out) > 1000
    with Image.open(out) as im:
        assert im.size[0] > 100 and im.size[1] > 100


def _small_tree(root):
    os.makedirs(os.path.join(root, "images"))
    rows = [("1.png", "red", "S"), ("2.png", "red", "S"), ("3.png", "red", "M"),
            ("4.png", "red", "#N/A"), ("5.png", "blue", "S"), ("6.png", "#N/A", "L")]
    for i, r in enumerate(rows):
        arr = np.random.default_rng(i).integers(0, 256, (20, 24, 3), dtype=np.uint8)
        Image.fromarray(arr).save(os.path.join(root, "images", r[0]))
    write_csv(os.path.join(root, "train.csv"), ["filename", "color", "size"], rows)
    return {"color": ["red", "blue"], "size": ["S", "M", "L"]}


def test_oversampling_counts_exact(tmp_path):
    spec = _small_tree(str(tmp_path))
    p = AttributesCSV(root=str(tmp_path), spec=spec, oversample_to=3).prepare()
    o = p.extra["oversampling"]
    assert o["before"]["color"] == {"counts": {"red": 4, "blue": 1}, "unknown": 1,
                                    "unknown_share": 1 / 6, "images": 6}
    assert o["before"]["size"]["counts"] == {"S": 3, "M": 1, "L": 1}
    # blue: 5.png x2 (S rides along: 5); M: 3.png x2 (red: 6); L: 6.png x2 (color unknown: 3)
    assert o["after"]["color"] == {"counts": {"red": 6, "blue": 3}, "unknown": 3,
                                   "unknown_share": 0.25, "images": 12}
    assert o["after"]["size"] == {"counts": {"S": 5, "M": 3, "L": 3}, "unknown": 1,
                                  "unknown_share": 1 / 12, "images": 12}
    assert o["copies"] == 6
    ids = [r.image_id for r in p.splits["train"]]
    assert ids[6:] == ["5.png#aug1", "5.png#aug2", "3.png#aug1", "3.png#aug2",
                       "6.png#aug1", "6.png#aug2"]
    recs = {r.image_id: r for r in p.splits["train"]}
    np.testing.assert_array_equal(recs["6.png#aug2"].labels, [-1, -1, 0, 0, 1])
    assert recs["6.png#aug2"].path == recs["6.png"].path + "#aug2"
    json.dumps(p.extra)
    # max_repeat caps each image at 2 appearances
    q = AttributesCSV(root=str(tmp_path), spec=spec, oversample_to=3, max_repeat=2).prepare()
    after = q.extra["oversampling"]["after"]
    assert after["color"]["counts"] == {"red": 5, "blue": 2} and after["color"]["unknown"] == 2
    assert after["size"]["counts"] == {"S": 4, "M": 2, "L": 2}


def test_oversampling_deterministic_and_augmented_load(tmp_path):
    fx = make_attributes_tree(str(tmp_path))
    a = AttributesCSV(root=str(tmp_path), spec=fx["spec_path"], oversample_to=3, seed=1).prepare()
    b = AttributesCSV(root=str(tmp_path), spec=fx["spec_path"], oversample_to=3, seed=1).prepare()
    assert [r.image_id for r in a.splits["train"]] == [r.image_id for r in b.splits["train"]]
    after = a.extra["oversampling"]["after"]
    assert all(n >= 3 for st in after.values() for n in st["counts"].values())
    assert [r.image_id for r in a.splits["test"]] == ["t1.png", "t2.png"]  # train only
    copy = next(r for r in a.splits["train"] if "#aug" in r.image_id)
    base, k = split_aug_suffix(copy.path)
    assert k >= 1 and os.path.exists(base)
    orig = a.load_image(base, 24)
    aug = a.load_image(copy.path, 24)
    assert aug.shape == orig.shape == (24, 24, 3) and aug.dtype == np.uint8
    assert not np.array_equal(aug, orig)
    np.testing.assert_array_equal(aug, a.load_image(copy.path, 24))
    assert not np.array_equal(aug, a.load_image(f"{base}#aug{k + 1}", 24))
