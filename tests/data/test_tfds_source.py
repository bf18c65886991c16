"""Tests for mll_tf.data.datasets.tfds_source (TFDS datasets as a source).

Only ``tfds.testing.mock_data`` examples are read; sockets are blocked in the
dataset tests so any network access fails loudly instead of hanging.
"""
import functools
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from mll_tf.data.datasets import tfds_source  # noqa: E402
from mll_tf.data.datasets.tfds_source import (  # noqa: E402
    TFDSDataset, find_label_feature, labels_to_multi_hot)
from mll_tf.data.images import decode_image  # noqa: E402
from mll_tf.data.datasets import dataset_names, get_dataset  # noqa: E402

VOC_LABELS = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor"]
N = 3  # mocked examples per split


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(f"test tried the network: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(params=["voc/2007", "voc/2012"])
def voc_metadata(request, tmp_path, no_network):
    """(name, data_dir holding only that VOC config's metadata with three splits): 2007 and 2012 (OASS's)."""
    data_dir = tmp_path / "tfds"
    builder = tfds.builder(request.param, data_dir=str(data_dir))
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=s, shard_lengths=[N], num_bytes=0)
        for s in ("train", "validation", "test")]))
    os.makedirs(builder.data_dir, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)
    return request.param, str(data_dir)


def test_registry_tfds_names():
    factory = get_dataset("tfds:voc/2007")
    assert isinstance(factory, functools.partial)
    assert factory.func is TFDSDataset and factory.keywords == {"name": "voc/2007"}
    adapter = factory(root="/some/tfds_dir")
    assert adapter.name == "voc/2007" and adapter.root == "/some/tfds_dir"
    assert get_dataset("tfds:voc/2007:5.0.0")().name == "voc/2007:5.0.0"
    assert not any(n.startswith("tfds") for n in dataset_names())
    with pytest.raises(KeyError, match="tfds:voc/2007"):
        get_dataset("tfds:")


def test_registry_import_does_not_import_tfds():
    code = ("import sys, mll_tf.data.datasets as r; r.get_dataset('tfds:voc/2007'); "
            "assert 'tensorflow_datasets' not in sys.modules, 'imported'")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_labels_to_multi_hot():
    np.testing.assert_array_equal(labels_to_multi_hot([2, 0, 2], 4), [1, 0, 1, 0])
    np.testing.assert_array_equal(labels_to_multi_hot(np.int64(3), 4), [0, 0, 0, 1])
    np.testing.assert_array_equal(labels_to_multi_hot(-1, 3), [-1, -1, -1])
    np.testing.assert_array_equal(labels_to_multi_hot(np.zeros(0, np.int64), 2), [0, 0])
    assert labels_to_multi_hot([1], 2).dtype == np.int8
    with pytest.raises(ValueError, match="classes"):
        labels_to_multi_hot([5], 3)


def test_find_label_feature():
    f = tfds.features
    names = ["cat", "dog", "sky"]
    multi = f.FeaturesDict({"image": f.Image(),
                            "labels": f.Sequence(f.ClassLabel(names=names)),
                            "tags": f.Sequence(f.ClassLabel(names=["a", "b"]))})
    path, cl = find_label_feature(multi)
    assert path == ("labels",) and cl.names == names
    assert find_label_feature(multi, "tags")[0] == ("tags",)
    single = f.FeaturesDict({"image": f.Image(), "label": f.ClassLabel(names=names)})
    assert find_label_feature(single)[0] == ("label",)
    detection = f.FeaturesDict({"image": f.Image(), "objects": f.Sequence({
        "label": f.ClassLabel(names=names), "bbox": f.BBoxFeature()})})
    assert find_label_feature(detection)[0] == ("objects", "label")
    none = f.FeaturesDict({"image": f.Image(), "caption": f.Text()})
    with pytest.raises(ValueError, match="image: Image; caption: Text"):
        find_label_feature(none)


def _expected(split, name="voc/2007"):
    """Mocked VOC examples read independently: (multi-hot, decoded image)."""
    ds = tfds.builder(name).as_dataset(split=split)
    out = []
    for ex in tfds.as_numpy(ds):
        y = np.zeros(20, np.int8)
        y[ex["objects"]["label"]] = 1
        out.append((y, ex["image"]))
    return out


def test_voc_from_mock_data(voc_metadata, tmp_path):
    name, data_dir = voc_metadata
    cache = tmp_path / "cache"
    # keep_encoded=False: the mock's encoded-example generator cannot encode
    # VOC's Sequence-of-dict `objects` (random sub-feature lengths), so the
    # original-bytes path is tested on mnist below.
    adapter = get_dataset(f"tfds:{name}")(root="/ignored/by/mock", cache_dir=str(cache),
                                          keep_encoded=False)
    with tfds.testing.mock_data(num_examples=N, policy=tfds.testing.MockPolicy.USE_FILES,
                                data_dir=data_dir):
        prepared = adapter.prepare()
        expected = {s: _expected(s, name) for s in ("train", "validation", "test")}
        again = adapter.prepare()

    assert prepared.name == f"tfds:{name}"
    assert prepared.label_names == VOC_LABELS
    assert set(prepared.splits) == {"train", "val", "test"}
    assert {s: len(r) for s, r in prepared.splits.items()} == {"train": N, "val": N, "test": N}
    assert prepared.skipped == {}
    assert prepared.load_image is decode_image
    extra = prepared.extra
    assert extra["source"] == "tfds" and extra["tfds_name"] == name
    assert extra["tfds_version"] == "5.0.0"
    assert extra["label_feature"] == "objects/label"
    assert extra["split_map"] == {"train": "train", "validation": "val", "test": "test"}
    assert "difficult_objects" in extra
    for tfds_split, split in extra["split_map"].items():
        records = prepared.splits[split]
        # mock_data yields the same examples in every split, so the
        # image/filename feature is not unique and ids fall back to split/index.
        assert [r.image_id for r in records] == [f"{tfds_split}/{i}" for i in range(N)]
        for rec, (y, image) in zip(records, expected[tfds_split]):
            assert rec.labels.dtype == np.int8
            np.testing.assert_array_equal(rec.labels, y)
            assert rec.path.startswith(str(cache / name.replace("/", "_") / "5.0.0" / tfds_split))
            from PIL import Image
            with Image.open(rec.path) as im:
                np.testing.assert_array_equal(np.asarray(im.convert("RGB")), image)
            out = prepared.load_image(rec.path, 16)
            assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert sum(extra["label_counts_by_split"]["train"].values()) == sum(
        int(y.sum()) for y, _ in expected["train"])

    # A second prepare() reuses every cached image and gives the same records.
    assert adapter.cache_stats == {"written": 0, "reused": 3 * N}
    for split, records in prepared.splits.items():
        for a, b in zip(records, again.splits[split]):
            assert (a.image_id, a.path) == (b.image_id, b.path)
            np.testing.assert_array_equal(a.labels, b.labels)


def test_keep_encoded_writes_original_bytes(tmp_path, no_network):
    """mnist: a top-level ClassLabel; the mocked images are PNG bytes."""
    adapter = TFDSDataset("mnist", cache_dir=str(tmp_path), splits=["train", "test"])
    with tfds.testing.mock_data(num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE):
        prepared = adapter.prepare()
        raw = [ex for ex in tfds.as_numpy(tfds.builder("mnist").as_dataset(
            split="test", decoders={"image": tfds.decode.SkipDecoding()}))]
    assert adapter.cache_stats == {"written": 4, "reused": 0}
    assert prepared.label_names == [str(i) for i in range(10)]
    assert set(prepared.splits) == {"train", "test"}
    assert prepared.extra["label_feature"] == "label"
    assert prepared.extra["image_format"] == "original encoded bytes"
    for rec, ex in zip(prepared.splits["test"], raw):
        assert rec.path.endswith(".png")
        with open(rec.path, "rb") as f:
            assert f.read() == ex["image"]
        np.testing.assert_array_equal(rec.labels, np.eye(10, dtype=np.int8)[ex["label"]])
        assert prepared.load_image(rec.path, 8).shape == (8, 8, 3)


def test_unprepared_dataset_says_how_to_build_it(tmp_path, no_network):
    adapter = TFDSDataset("voc/2007", cache_dir=str(tmp_path))
    with tfds.testing.mock_data(num_examples=1, policy=tfds.testing.MockPolicy.USE_CODE):
        with pytest.raises(FileNotFoundError, match="tfds build voc/2007"):
            adapter.prepare()


def test_unknown_label_key_lists_features(tmp_path, no_network):
    adapter = TFDSDataset("voc/2007", cache_dir=str(tmp_path), label_key="nope",
                          splits=["train"])
    with tfds.testing.mock_data(num_examples=1, policy=tfds.testing.MockPolicy.USE_CODE):
        with pytest.raises(ValueError, match="objects/label: Sequence\\(ClassLabel\\(20\\)\\)"):
            adapter.prepare()
    assert tfds_source.SPLIT_NAMES["validation"] == "val"
