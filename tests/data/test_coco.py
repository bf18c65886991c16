import json
import os

import numpy as np
import pytest

from mll_tf.data.datasets.coco import (
    COCO2014, STOP_WORDS, caption_vocabulary, hash_fraction, tokenize)
from mll_tf.data.datasets import get_dataset
from tests.data.partial_fixtures import make_coco_tree


def _by_id(p):
    return {r.image_id: (s, r) for s, recs in p.splits.items() for r in recs}


def test_instances_labels_order_splits_and_skips(tmp_path):
    fx = make_coco_tree(str(tmp_path))
    p = COCO2014(root=str(tmp_path), val_fraction=0.5).prepare()
    assert get_dataset("coco") is COCO2014
    assert p.label_names == ["person", "car", "dog", "toothbrush"]  # sorted by category id
    assert p.extra["category_ids"] == [1, 3, 18, 90]
    recs = _by_id(p)
    missing = fx["missing"][0]
    assert missing not in recs
    assert p.skipped == {"train": [], "val": [], "test": []} | {
        s: [{"image_id": missing, "reason": "missing file"}]
        for s in ["val" if hash_fraction(3) < 0.5 else "train"]}
    assert set(recs) == set(fx["train_ids"] + fx["test_ids"]) - {missing}
    for image_id, (split, r) in recs.items():
        np.testing.assert_array_equal(r.labels, fx["labels"][image_id])
        assert r.labels.dtype == np.int8
        assert r.path == os.path.join(str(tmp_path), image_id)
        if image_id.startswith("val2014/"):
            assert split == "test"
        else:
            iid = int(image_id[-16:-4])
            assert split == ("val" if hash_fraction(iid) < 0.5 else "train")
    assert p.splits["train"] and p.splits["val"]  # the fixture has both at 0.5
    # images without annotations are kept, all-negative
    assert not recs["train2014/COCO_train2014_000000000002.jpg"][1].labels.any()
    counts = p.extra["label_counts_by_split"]["test"]
    assert counts == {"person": 1, "car": 1, "dog": 0, "toothbrush": 1}
    assert p.extra["images_without_positives_by_split"]["test"] == 1
    assert p.extra["root"] == os.path.abspath(str(tmp_path))
    json.dumps(p.extra)
    im = p.load_image(p.splits["test"][0].path, 16)
    assert im.shape == (16, 16, 3) and im.dtype == np.uint8


def test_default_val_fraction_is_deterministic(tmp_path):
    make_coco_tree(str(tmp_path), n_train=30)
    a = COCO2014(root=str(tmp_path)).prepare()
    b = COCO2014(root=str(tmp_path)).prepare()
    assert [r.image_id for r in a.splits["val"]] == [r.image_id for r in b.splits["val"]]
    n_val = sum(hash_fraction(i) < 0.05 for i in range(1, 31) if i != 3)
    assert len(a.splits["val"]) == n_val
    assert len(a.splits["train"]) + n_val == 29


def test_caption_vocabulary(tmp_path):
    fx = make_coco_tree(str(tmp_path))
    p = COCO2014(root=str(tmp_path), vocab="captions", caption_vocab_size=5).prepare()
    counts = {w: c for w, c in fx["word_counts"].items() if w not in STOP_WORDS}
    want = sorted(counts, key=lambda w: (-counts[w], w))[:5]
    assert p.label_names == want
    assert p.extra["caption_word_counts"] == {w: counts[w] for w in want}
    assert "a" not in p.label_names and "the" not in p.label_names
    for image_id, (_, r) in _by_id(p).items():
        words = fx["caption_labels"][image_id]
        np.testing.assert_array_equal(r.labels, [int(w in words) for w in want])
    json.dumps(p.extra)


def test_tokenize_and_ties():
    assert tokenize("A Man, riding a bike!") == ["a", "man", "riding", "a", "bike"]
    data = {"annotations": [{"caption": "zebra apple"}, {"caption": "apple zebra the cat"}]}
    vocab, counts, coverage = caption_vocabulary(data, "x.json", 2)
    assert vocab == ["apple", "zebra"] and counts == {"apple": 2, "zebra": 2}
    assert coverage == pytest.approx(4 / 5)


def test_malformed_and_missing_json(tmp_path):
    make_coco_tree(str(tmp_path))
    bad = tmp_path / "annotations" / "instances_val2014.json"
    bad.write_text('{"images": [')
    with pytest.raises(ValueError, match="instances_val2014.json"):
        COCO2014(root=str(tmp_path)).prepare()
    os.remove(bad)
    with pytest.raises(FileNotFoundError, match="instances_val2014.json"):
        COCO2014(root=str(tmp_path)).prepare()
    with pytest.raises(ValueError, match="vocab"):
        COCO2014(root=str(tmp_path), vocab="words")


def test_unknown_category_names_the_file(tmp_path):
    make_coco_tree(str(tmp_path))
    path = tmp_path / "annotations" / "instances_train2014.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["category_id"] = 7
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="instances_train2014.json.*unknown"):
        COCO2014(root=str(tmp_path)).prepare()
