import json
import os

import numpy as np
import pytest

from mll_tf.data.datasets.nus_wide import NUSWIDE, read_binary_table
from mll_tf.data.datasets import get_dataset
from tests.data.lesa_fixtures import make_nus_wide_tree


@pytest.fixture
def nus(tmp_path):
    root = str(tmp_path / "NUS_WIDE")
    exp = make_nus_wide_tree(root)
    return root, exp


def test_registered():
    assert get_dataset("nus_wide") is NUSWIDE


def test_prepare_splits_labels_and_skips(nus):
    root, exp = nus
    p = NUSWIDE(root=root, **exp["options"]).prepare()
    # label order: unseen concepts (Concepts81 order) first, then seen tags (TagList order)
    assert p.label_names == exp["label_names"]
    assert p.label_names[:4] == ["animal", "beach", "cat", "sky"]
    assert "beach" not in p.label_names[4:] and len(p.label_names) == 4 + 9
    # splits: val = first 2 usable training images in list order, rows mapped by file name
    assert {s: [r.image_id for r in recs] for s, recs in p.splits.items()} == exp["splits"]
    for recs in p.splits.values():
        for r in recs:
            assert r.labels.dtype == np.int8 and r.labels.shape == (13,)
            assert r.labels.tolist() == exp["labels"][r.image_id]
            assert r.path == os.path.join(root, r.image_id) and os.path.isfile(r.path)
    # skipped with reasons, in the split where the image would have gone
    got = {s: {d["image_id"]: d["reason"] for d in v} for s, v in p.skipped.items()}
    assert set(got) == set(exp["skipped"])
    for s, want in exp["skipped"].items():
        assert set(got[s]) == set(want)
        for image_id, prefix in want.items():
            assert got[s][image_id].startswith(prefix), got[s][image_id]
    # protocol metadata
    e = p.extra
    assert e["label_split"] == {"unseen": exp["unseen"], "seen": exp["seen"],
                                "unseen_eval": exp["unseen"]}
    assert e["eval_k"] == [3, 5] and e["protocol"] == "lesa_nus_wide"
    assert e["root"] == os.path.abspath(root)
    assert e["concepts_not_in_tags"] == ["animal"] and e["duplicate_file_names"] == 0
    assert "label_text" not in e
    for s, recs in p.splits.items():
        want = np.sum([exp["labels"][r.image_id] for r in recs], axis=0)
        assert [e["label_counts_by_split"][s][n] for n in p.label_names] == want.tolist()
    json.dumps(e)  # JSON-serialisable (copied into every manifest)


def test_without_placeholder_option(nus):
    root, exp = nus
    p = NUSWIDE(root=root, val_size=2).prepare()
    assert [r.image_id for r in p.splits["train"]] == exp["train_without_placeholder"]
    assert "placeholder_note" in p.extra and p.extra["placeholder"] is None


def test_val_size_zero_and_larger_than_train(nus):
    root, exp = nus
    p = NUSWIDE(root=root, val_size=0, placeholder=exp["placeholder"]).prepare()
    assert p.splits["val"] == [] and len(p.splits["train"]) == 5
    p = NUSWIDE(root=root, val_size=100, placeholder=exp["placeholder"]).prepare()
    assert p.splits["train"] == [] and len(p.splits["val"]) == 5
    assert p.skipped["val"] and "train" not in p.skipped


def test_load_image_resize_shorter(nus):
    root, exp = nus
    p = NUSWIDE(root=root, **exp["options"]).prepare()
    im = p.load_image(p.splits["test"][0].path, 32, resize_shorter=40)
    assert im.shape == (32, 32, 3) and im.dtype == np.uint8
    assert p.load_image(p.splits["test"][0].path, 24).shape == (24, 24, 3)


def test_bad_metadata_errors(nus):
    root, exp = nus
    tags = os.path.join(root, "NUS_WID_Tags", "AllTags1k.txt")
    lines = open(tags).read().splitlines(keepends=True)
    with open(tags, "w") as f:
        f.writelines(lines[:3] + ["1\t0\n"] + lines[4:])
    with pytest.raises(ValueError, match=r"AllTags1k\.txt: row 4 has 2 values, expected 12"):
        NUSWIDE(root=root).prepare()
    with open(tags, "w") as f:
        f.writelines(lines[:-1])
    with pytest.raises(ValueError, match=r"AllTags1k\.txt: 11 rows, but .*lists 12 images"):
        NUSWIDE(root=root).prepare()
    with open(tags, "w") as f:
        f.writelines(lines)
    lab = os.path.join(root, "AllLabels", "Labels_cat.txt")
    with open(lab, "a") as f:
        f.write("2\n")
    with pytest.raises(ValueError, match=r"Labels_cat\.txt: row 13: values must be 0 or 1"):
        NUSWIDE(root=root).prepare()
    os.remove(lab)
    with pytest.raises(FileNotFoundError, match=r"Labels_cat\.txt"):
        NUSWIDE(root=root).prepare()
    imagelist = os.path.join(root, "ImageList", "Imagelist.txt")
    lines = open(imagelist).read().splitlines(keepends=True)
    with open(imagelist, "w") as f:
        f.writelines(lines[:2] + ["\r\n"] + lines[2:])
    with pytest.raises(ValueError, match=r"Imagelist\.txt: line 3 is blank"):
        NUSWIDE(root=root).prepare()


def test_unknown_train_entry_names_file_and_line(tmp_path):
    root = str(tmp_path / "n")
    make_nus_wide_tree(root)
    with open(os.path.join(root, "ImageList", "TestImagelist.txt"), "a") as f:
        f.write("actor\\9999_1.jpg\r\n")
    with pytest.raises(ValueError, match=r"TestImagelist\.txt: line 5: .*9999_1\.jpg"):
        NUSWIDE(root=root).prepare()
    with pytest.raises(FileNotFoundError, match="missing file"):
        NUSWIDE(root=str(tmp_path / "nothing")).prepare()
    with pytest.raises(FileNotFoundError, match="placeholder"):
        NUSWIDE(root=root, placeholder=str(tmp_path / "nope.jpg"))


def test_read_binary_table(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes(b"\xef\xbb\xbf1\t0\t\r\n0\t1\t\r\n\r\n")
    assert read_binary_table(str(p), 2).tolist() == [[1, 0], [0, 1]]
    p.write_bytes(b"1 0\n\n0 1\n")
    with pytest.raises(ValueError, match="row 2 is blank"):
        read_binary_table(str(p), 2)
    p.write_bytes(b"1 0\n10 1\n")
    with pytest.raises(ValueError, match="row 2: values must be 0 or 1"):
        read_binary_table(str(p), 2)
