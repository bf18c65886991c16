import json
import os

import numpy as np
import pytest
from PIL import Image

from mll_tf.data.datasets.fashion_mnist_grid import (
    CLASS_NAMES, FashionMNISTGrid, compose_grids, load_split, read_idx, split_pools)
from mll_tf.data.datasets import get_dataset
from tests.data.partial_fixtures import make_fmnist_idx, write_idx

REAL_ROOT = "/usr/share/datasets/fashion-mnist"


def _decode_item(block):
    """Global item number of a fixture item block (see ``fmnist_items``)."""
    return int(block[4, 4]) - 1 + 250 * (int(np.sum(block[0] == 255)) - 1)


def _cells(grid):
    return [grid[r * 28:(r + 1) * 28, c * 28:(c + 1) * 28] for r in range(2) for c in range(2)]


def _adapter(fx, cache, **kw):
    opts = dict(root=fx["root"], cache_dir=str(cache), num_train=6, num_val=3, num_test=4)
    opts.update(kw)
    return FashionMNISTGrid(**opts)


def test_read_idx_validates_magic_and_gzip(tmp_path):
    p = str(tmp_path / "x-labels-idx1-ubyte.gz")
    write_idx(p, np.arange(5), 0x00000801)
    np.testing.assert_array_equal(read_idx(p, 0x00000801), np.arange(5))
    with pytest.raises(ValueError, match="x-labels-idx1-ubyte.gz.*magic"):
        read_idx(p, 0x00000803)
    bad = tmp_path / "plain.gz"
    bad.write_bytes(b"\x00\x00\x08\x01not gzip")
    with pytest.raises(ValueError, match="plain.gz"):
        read_idx(str(bad), 0x00000801)
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        read_idx(str(tmp_path / "nothing.gz"), 0x00000801)


def test_compose_grids_blocks_are_the_items():
    images = np.random.default_rng(0).integers(1, 256, (12, 28, 28), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 0], np.uint8)
    grids, y, items = compose_grids(images, labels, np.arange(12), 7, seed=3, split_id=0,
                                    min_items=1, max_items=4)
    assert grids.shape == (7, 56, 56) and grids.dtype == np.uint8 and y.dtype == np.int8
    for g, row, it in zip(grids, y, items):
        for cell, j in zip(_cells(g), it):
            np.testing.assert_array_equal(cell, images[j] if j >= 0 else 0)
        want = np.zeros(10, np.int8)
        want[labels[it[it >= 0]]] = 1
        np.testing.assert_array_equal(row, want)
        assert 1 <= (it >= 0).sum() <= 4


def test_prepare_exact_labels_pixels_and_pools(tmp_path):
    fx = make_fmnist_idx(str(tmp_path / "fm"), n_train=40, n_test=20, seed=1)
    p = _adapter(fx, tmp_path / "cache").prepare()
    assert p.label_names == CLASS_NAMES and len(p.label_names) == 10
    assert {s: len(r) for s, r in p.splits.items()} == {"train": 6, "val": 3, "test": 4}
    assert [r.image_id for r in p.splits["val"]] == ["val/000000", "val/000001", "val/000002"]
    assert p.extra["root"] == os.path.abspath(fx["root"])
    used = {}
    for split, recs in p.splits.items():
        src_images = fx["test_images"] if split == "test" else fx["train_images"]
        src_labels = fx["test_labels"] if split == "test" else fx["train_labels"]
        offset = 5000 if split == "test" else 0
        for r in recs:
            assert r.path == os.path.join(str(tmp_path / "cache"), "0", split,
                                          r.image_id.split("/")[1] + ".png")
            grid = np.asarray(Image.open(r.path))
            assert grid.shape == (56, 56)
            want = np.zeros(10, np.int8)
            n_items = 0
            for cell in _cells(grid):
                if not cell.any():
                    continue  # empty cell: black
                j = _decode_item(cell) - offset
                np.testing.assert_array_equal(cell, src_images[j])
                want[src_labels[j]] = 1
                used.setdefault(split, set()).add(j)
                n_items += 1
            assert 1 <= n_items <= 4
            assert r.labels.dtype == np.int8
            np.testing.assert_array_equal(r.labels, want)
    train_pool, val_pool = split_pools(40, 0, 0.1)
    assert used["train"] <= set(train_pool.tolist()) and used["val"] <= set(val_pool.tolist())
    assert not used["train"] & used["val"]
    counts = p.extra["label_counts_by_split"]
    assert counts["train"] == dict(zip(CLASS_NAMES, np.sum(
        [r.labels for r in p.splits["train"]], axis=0).tolist()))
    assert p.extra["grid"]["pool_sizes"] == {"train": 36, "val": 4, "test": 20}
    assert p.extra["class_names_text"][9] == "ankle boot"
    json.dumps(p.extra)
    im = p.load_image(p.splits["test"][0].path, 32)
    assert im.shape == (32, 32, 3) and im.dtype == np.uint8


def test_determinism_by_seed(tmp_path):
    fx = make_fmnist_idx(str(tmp_path / "fm"), n_train=40, n_test=20)
    a = _adapter(fx, tmp_path / "a").prepare()
    b = _adapter(fx, tmp_path / "b").prepare()
    c = _adapter(fx, tmp_path / "c", seed=1).prepare()

    def pixels(p):
        return np.stack([np.asarray(Image.open(r.path)) for recs in p.splits.values()
                         for r in recs])
    np.testing.assert_array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))
    assert all(np.array_equal(x.labels, y.labels)
               for s in a.splits for x, y in zip(a.splits[s], b.splits[s]))


def test_resume_reuses_files_and_checks_options(tmp_path):
    fx = make_fmnist_idx(str(tmp_path / "fm"), n_train=40, n_test=20)
    cache = tmp_path / "cache"
    first = _adapter(fx, cache)
    p = first.prepare()
    assert first.pngs_written == 13
    old = 1_000_000_000
    for recs in p.splits.values():
        for r in recs:
            os.utime(r.path, (old, old))
    bigger = _adapter(fx, cache, num_train=8)   # grid i does not depend on num_train
    q = bigger.prepare()
    assert bigger.pngs_written == 2
    for recs in p.splits.values():
        for r in recs:
            assert os.stat(r.path).st_mtime == old
    for x, y in zip(p.splits["train"], q.splits["train"]):
        np.testing.assert_array_equal(x.labels, y.labels)
    with pytest.raises(ValueError, match="grid_config.json"):
        _adapter(fx, cache, max_items=2).prepare()


def test_registry_and_bad_options(tmp_path):
    assert get_dataset("fashion_mnist_grid") is FashionMNISTGrid
    with pytest.raises(ValueError, match="min_items"):
        FashionMNISTGrid(min_items=3, max_items=2)


@pytest.mark.skipif(not os.path.exists(REAL_ROOT), reason="Debian dataset-fashion-mnist absent")
def test_real_fashion_mnist_smoke(tmp_path):
    _, labels = load_split(REAL_ROOT, "test")
    assert np.bincount(labels, minlength=10).tolist() == [1000] * 10
    p = FashionMNISTGrid(cache_dir=str(tmp_path), num_train=40, num_val=20,
                         num_test=200).prepare()
    y = np.stack([r.labels for r in p.splits["test"]])
    assert set(np.unique(y).tolist()) == {0, 1}
    assert 1 <= y.sum(axis=1).min() and y.sum(axis=1).max() <= 4
    freq = y.mean(axis=0)            # about 1 - (9/10)^2.5 ~ 0.23 per class
    assert (freq > 0.08).all() and (freq < 0.45).all(), freq
    im = p.load_image(p.splits["test"][0].path, 64)
    assert im.shape == (64, 64, 3) and im.max() > 0 and (im[..., 0] == im[..., 1]).all()
