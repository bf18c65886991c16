"""fashion_mnist_scatter: items at random positions and scales, labels complete, boxes tight and recorded."""

import json

import numpy as np
import pytest
from PIL import Image

from mll_tf.data.datasets import get_dataset
from mll_tf.data.datasets.fashion_mnist_scatter import load_boxes
from tests.data.partial_fixtures import make_fmnist_idx


@pytest.fixture(scope="module")
def idx(tmp_path_factory):
    root = tmp_path_factory.mktemp("fm_idx")
    make_fmnist_idx(str(root), n_train=40, n_test=20)
    return root


def _prepare(idx, cache, **kw):
    opts = dict(root=str(idx), cache_dir=str(cache), num_train=12, num_val=4, num_test=6, canvas=64,
                min_items=1, max_items=3, min_scale=1.0, max_scale=1.5)
    opts.update(kw)
    return get_dataset("fashion_mnist_scatter")(**opts).prepare()


def test_boxes_labels_and_pixels(idx, tmp_path):
    p = _prepare(idx, tmp_path / "c")
    assert p.label_names[0] == "T-shirt/top" and set(p.splits) == {"train", "val", "test"}
    n_boxes = 0
    for split, recs in p.splits.items():
        boxes = load_boxes(p.extra["boxes_files"][split])
        assert len(recs) == len(boxes)
        for r in recs:
            img = np.asarray(Image.open(r.path))
            assert img.shape == (64, 64)
            bx = boxes[r.image_id.split("/")[1]]
            assert 1 <= len(bx) <= 3
            # labels are exactly the classes of the boxes (complete, never -1)
            assert sorted(np.flatnonzero(r.labels).tolist()) == sorted({b[0] for b in bx})
            inside = np.zeros_like(img, bool)
            for cls, y0, x0, y1, x1 in bx:
                assert 0 <= y0 < y1 <= 1 and 0 <= x0 < x1 <= 1
                # tight: the box's side is at most 1.5 * 28 pixels, and it touches item pixels on each border
                ys, xs = slice(round(y0 * 64), round(y1 * 64)), slice(round(x0 * 64), round(x1 * 64))
                sub = img[ys, xs]
                assert sub.shape[0] <= 42 and sub.shape[1] <= 42
                assert sub[0].any() and sub[-1].any() and sub[:, 0].any() and sub[:, -1].any()
                inside[ys, xs] = True
                n_boxes += 1
            assert not img[~inside].any()          # every non-black pixel is in a box
    assert n_boxes > 22


def test_deterministic_and_cache_refuses_other_options(idx, tmp_path):
    a = _prepare(idx, tmp_path / "a")
    b = _prepare(idx, tmp_path / "b", num_train=5)
    for ra, rb in zip(a.splits["train"][:5], b.splits["train"]):
        np.testing.assert_array_equal(np.asarray(Image.open(ra.path)), np.asarray(Image.open(rb.path)))
        np.testing.assert_array_equal(ra.labels, rb.labels)
    assert json.load(open(a.extra["boxes_files"]["train"]))["000004"] == \
        json.load(open(b.extra["boxes_files"]["train"]))["000004"]
    with pytest.raises(ValueError, match="scatter_config.json"):
        _prepare(idx, tmp_path / "a", max_scale=2.0)
    with pytest.raises(ValueError, match="28 \\* max_scale"):
        _prepare(idx, tmp_path / "x", max_scale=3.0)
