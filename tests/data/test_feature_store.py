"""Tests for mll_tf.data.feature_store (manifest, resumable writer, make_dataset)."""

import collections
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from mll_tf.data import feature_store as fs
from mll_tf.data.feature_store import (FeatureStoreWriter, IncompleteStoreError, Manifest,
                                       make_dataset, read_manifest)

R, D, C, U = 2, 3, 4, 2
IDS = [f"img/{i:03d}.jpg" for i in range(30)]


def _manifest(**kw):
    args = dict(dataset="toy", split="train", backbone="tiny", weights="none",
                input_size=[8, 8], preprocessing="scale01", feature_shape=[R, D],
                feature_grid=[1, 2], feature_dtype="float16", label_names=list("abcd"),
                extra_label_names={"unseen": ["u0", "u1"]}, extra={"threshold": 3})
    args.update(kw)
    return Manifest(**args)


def _example(image_id):
    i = int(image_id[4:7])
    feat = (((np.arange(R * D) * 7 + i) % 13 - 3) * 0.5).reshape(R, D).astype(np.float32)
    labels = ((np.arange(C) + i) % 3 - 1).astype(np.int8)
    unseen = ((np.arange(U) + 2 * i) % 3 - 1).astype(np.int8)
    return feat, labels, {"unseen": unseen}


def _write(writer, ids):
    for image_id in ids:
        feat, labels, extra = _example(image_id)
        writer.write(image_id, feat, labels, extra)


def _read_all(split_dir, **kw):
    kw.setdefault("batch_size", 4)
    out = collections.defaultdict(list)
    for batch in make_dataset(split_dir, as_dict=True, **kw):
        for k, v in batch.items():
            out[k].extend(list(v.numpy()))
    return out


def _check_contents(split_dir, expected_ids, **kw):
    got = _read_all(split_dir, **kw)
    ids = [b.decode("utf-8") for b in got["image_id"]]
    assert collections.Counter(ids) == collections.Counter(expected_ids)
    assert len(ids) == len(set(ids))
    for k, image_id in enumerate(ids):
        feat, labels, extra = _example(image_id)
        np.testing.assert_array_equal(got["features"][k], feat)
        np.testing.assert_array_equal(got["labels"][k], labels)
        np.testing.assert_array_equal(got["labels/unseen"][k], extra["unseen"])
    return ids


def _sidecar_ids(split_dir, manifest):
    ids = []
    for s in manifest.shards:
        with open(os.path.join(split_dir, s["file"].replace(".tfrecord", ".ids.txt"))) as f:
            ids += f.read().splitlines()
    return ids


def _no_tmp(split_dir):
    return not [n for n in os.listdir(split_dir) if n.endswith(".tmp")]


# ------------------------------------------------------------------ manifest
def test_manifest_save_load_round_trip(tmp_path):
    m = _manifest()
    m.save(tmp_path)
    assert _no_tmp(tmp_path)
    loaded = Manifest.load(tmp_path)
    assert loaded == m
    assert loaded.created and loaded.updated
    assert read_manifest(str(tmp_path)) == m
    spec = loaded.feature_spec()
    assert spec.feature_shape == (R, D) and spec.num_labels == C
    assert spec.extra_labels == {"unseen": U} and spec.feature_dtype == "float16"


def test_manifest_load_errors_name_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        Manifest.load(missing)
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json.*corrupt"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text('{"dataset": "x", "split": "t", "bogus": 1}')
    with pytest.raises(ValueError, match="corrupt"):
        Manifest.load(tmp_path)


def test_manifest_feature_grid_checked():
    with pytest.raises(ValueError, match="feature_grid"):
        _manifest(feature_grid=[2, 2]).feature_spec()


# ------------------------------------------------------------------ writing
def test_write_close_read_round_trip(tmp_path):
    with FeatureStoreWriter(tmp_path, _manifest()) as w:
        assert w.done_ids == set()
        _write(w, IDS[:10])
        w.skip("img/999.jpg", "unreadable")
    m = w.manifest
    assert m.complete and m.num_examples == 10
    assert m.skipped == [{"image_id": "img/999.jpg", "reason": "unreadable"}]
    assert read_manifest(tmp_path) == m
    assert m.compression == "ZLIB" and m.compression_level == 1
    assert m.extra == {"threshold": 3}
    assert _no_tmp(tmp_path)
    assert [s["file"] for s in m.shards] == ["train-00000.tfrecord"]
    assert m.shards[0]["num_bytes"] == os.path.getsize(tmp_path / "train-00000.tfrecord")
    assert _sidecar_ids(tmp_path, m) == IDS[:10]
    ids = _check_contents(tmp_path, IDS[:10])
    assert ids == IDS[:10]  # one shard: write order


def test_shards_respect_size_bound(tmp_path):
    bound = 600
    with FeatureStoreWriter(tmp_path, _manifest(), max_shard_bytes=bound) as w:
        _write(w, IDS)
    m = w.manifest
    assert len(m.shards) >= 4
    assert [s["file"] for s in m.shards] == [f"train-{k:05d}.tfrecord"
                                             for k in range(len(m.shards))]
    for s in m.shards:
        assert s["num_examples"] >= 1
        assert s["num_bytes"] == os.path.getsize(tmp_path / s["file"]) <= bound
    assert sum(s["num_examples"] for s in m.shards) == m.num_examples == len(IDS)
    assert _sidecar_ids(tmp_path, m) == IDS
    _check_contents(tmp_path, IDS)


def test_uncompressed_store(tmp_path):
    m = _manifest(compression="", feature_dtype="float32")
    with FeatureStoreWriter(tmp_path, m, max_shard_bytes=500) as w:
        _write(w, IDS[:12])
    assert len(w.manifest.shards) > 1
    assert all(s["num_bytes"] <= 500 for s in w.manifest.shards)
    _check_contents(tmp_path, IDS[:12])


def test_duplicates_and_invalid_examples_rejected(tmp_path):
    with FeatureStoreWriter(tmp_path, _manifest()) as w:
        _write(w, IDS[:2])
        with pytest.raises(ValueError, match="img/000.jpg.*already"):
            _write(w, IDS[:1])
        w.skip(IDS[2], "no labels")
        with pytest.raises(ValueError, match="already"):
            _write(w, IDS[2:3])
        with pytest.raises(ValueError, match="already"):
            w.skip(IDS[0], "again")
        feat, labels, extra = _example(IDS[3])
        with pytest.raises(ValueError, match=r"img/003.jpg.*'feature'"):
            w.write(IDS[3], feat.T, labels, extra)
        with pytest.raises(ValueError, match=r"img/003.jpg.*'labels'"):
            w.write(IDS[3], feat, labels[:-1], extra)
        with pytest.raises(ValueError, match=r"img/003.jpg.*extra label sets"):
            w.write(IDS[3], feat, labels)
        with pytest.raises(ValueError, match="line break"):
            w.write("a\nb", feat, labels, extra)
        w.write(IDS[3], feat, labels, extra)  # failed attempts did not mark it done
    _check_contents(tmp_path, [IDS[0], IDS[1], IDS[3]])
    with pytest.raises(ValueError, match="closed"):
        w.write(IDS[4], feat, labels, extra)


def test_empty_store(tmp_path):
    with FeatureStoreWriter(tmp_path, _manifest()) as w:
        pass
    assert w.manifest.complete and w.manifest.shards == []
    assert list(make_dataset(tmp_path, 4)) == []


# ------------------------------------------------------------------ resume
def test_resume_after_exception_in_with_block(tmp_path):
    manifest = _manifest()
    with pytest.raises(RuntimeError, match="boom"):
        with FeatureStoreWriter(tmp_path, manifest, max_shard_bytes=600) as w:
            _write(w, IDS[:11])
            w.skip(IDS[11], "corrupt jpeg")
            raise RuntimeError("boom")
    m = read_manifest(tmp_path)
    assert not m.complete
    assert m.num_examples == 11  # the current shard was closed properly
    assert m.skipped == [{"image_id": IDS[11], "reason": "corrupt jpeg"}]
    assert _no_tmp(tmp_path)
    with pytest.raises(IncompleteStoreError, match="interrupted.*resumes"):
        make_dataset(tmp_path, 4)
    _check_contents(tmp_path, IDS[:11], require_complete=False)

    with FeatureStoreWriter(tmp_path, manifest, max_shard_bytes=600) as w2:
        assert w2.done_ids == set(IDS[:12])
        _write(w2, [i for i in IDS if i not in w2.done_ids])
    m = w2.manifest
    assert m.complete and m.num_examples == 29
    assert m.skipped == [{"image_id": IDS[11], "reason": "corrupt jpeg"}]
    assert sorted(_sidecar_ids(tmp_path, m)) == sorted(IDS[:11] + IDS[12:])
    _check_contents(tmp_path, IDS[:11] + IDS[12:])
    assert m.created == read_manifest(tmp_path).created


def test_resume_after_hard_crash(tmp_path):
    """Abandoned writer, stale manifest, orphan shards, garbage temp files."""
    manifest = _manifest()
    w = FeatureStoreWriter(tmp_path, manifest, max_shard_bytes=600)
    stale = None
    for image_id in IDS[:20]:
        _write(w, [image_id])
        if image_id == IDS[1]:
            w.skip("img/998.jpg", "empty")  # saved with the first shard
        if image_id == IDS[15]:
            w.skip("img/997.jpg", "broken")  # lost with the crash
        if stale is None and len(w.manifest.shards) == 1:
            stale = (tmp_path / "manifest.json").read_text()
    assert len(w.manifest.shards) >= 3 and w._writer is not None
    # Crash: the writer is never closed; a .tmp shard is left behind, and the
    # manifest on disk predates the last shards (crash between rename and save).
    (tmp_path / "manifest.json").write_text(stale)
    stale_m = Manifest.from_dict(json.loads(stale))
    assert len(stale_m.shards) == 1 and not stale_m.complete
    assert stale_m.skipped == [{"image_id": "img/998.jpg", "reason": "empty"}]
    orphans = [s["file"] for s in w.manifest.shards[1:]]
    # One orphan lost its ids sidecar: it cannot be trusted and is deleted.
    os.remove(tmp_path / orphans[-1].replace(".tfrecord", ".ids.txt"))
    # Garbage: a half-written shard and sidecar, and an orphan with bad content.
    (tmp_path / "train-00042.tfrecord.tmp").write_bytes(b"\x00garbage")
    (tmp_path / "train-00042.ids.txt.tmp").write_text("img/000.jpg\n")
    (tmp_path / "train-00043.tfrecord").write_bytes(b"\x01not a tfrecord")
    (tmp_path / "train-00043.ids.txt").write_text("img/029.jpg\n")
    (tmp_path / "train-00044.ids.txt").write_text("img/028.jpg\n")
    with pytest.raises(IncompleteStoreError):
        make_dataset(tmp_path, 4)

    w2 = FeatureStoreWriter(tmp_path, manifest, max_shard_bytes=600)
    assert _no_tmp(tmp_path)
    files = sorted(os.listdir(tmp_path))
    adopted = {s["file"] for s in w2.manifest.shards}
    assert adopted == {stale_m.shards[0]["file"], *orphans[:-1]}
    for bad in (orphans[-1], "train-00043.tfrecord", "train-00043.ids.txt",
                "train-00044.ids.txt"):
        assert bad not in files
    stored = _sidecar_ids(tmp_path, w2.manifest)
    assert w2.done_ids == set(stored) | {"img/998.jpg"}
    assert w2.manifest.num_examples == len(stored) < 20
    remaining = [i for i in IDS + ["img/997.jpg"] if i not in w2.done_ids]
    with w2:
        for image_id in remaining:
            if image_id == "img/997.jpg":
                w2.skip(image_id, "broken")
            else:
                _write(w2, [image_id])
    m = read_manifest(tmp_path)
    assert m.complete and m.num_examples == len(IDS)
    assert m.skipped == [{"image_id": "img/998.jpg", "reason": "empty"},
                         {"image_id": "img/997.jpg", "reason": "broken"}]
    assert sorted(_sidecar_ids(tmp_path, m)) == IDS
    for s in m.shards:
        assert s["num_bytes"] == os.path.getsize(tmp_path / s["file"])
    _check_contents(tmp_path, IDS)
    del w  # the abandoned writer's handle points at a deleted temp file


def test_resume_orphan_duplicating_stored_ids_is_deleted(tmp_path):
    manifest = _manifest()
    with FeatureStoreWriter(tmp_path, manifest) as w:
        _write(w, IDS[:5])
    # An orphan shard holding ids that are already stored must not be adopted.
    shutil.copy(tmp_path / "train-00000.tfrecord", tmp_path / "train-00001.tfrecord")
    shutil.copy(tmp_path / "train-00000.ids.txt", tmp_path / "train-00001.ids.txt")
    with FeatureStoreWriter(tmp_path, manifest) as w2:
        assert w2.done_ids == set(IDS[:5])
        _write(w2, IDS[5:8])
    assert [s["file"] for s in w2.manifest.shards] == ["train-00000.tfrecord",
                                                       "train-00001.tfrecord"]
    _check_contents(tmp_path, IDS[:8])


def test_resume_missing_listed_shard_warns_and_reextracts(tmp_path):
    manifest = _manifest()
    with FeatureStoreWriter(tmp_path, manifest, max_shard_bytes=600) as w:
        _write(w, IDS[:10])
    first = w.manifest.shards[0]
    os.remove(tmp_path / first["file"])
    with pytest.raises(FileNotFoundError, match=first["file"]):
        make_dataset(tmp_path, 4)
    with pytest.warns(UserWarning, match="missing"):
        w2 = FeatureStoreWriter(tmp_path, manifest, max_shard_bytes=600)
    assert len(w2.done_ids) == 10 - first["num_examples"]
    with w2:
        _write(w2, [i for i in IDS[:10] if i not in w2.done_ids])
    _check_contents(tmp_path, IDS[:10])


def test_resume_corrupt_listed_shard_raises(tmp_path):
    with FeatureStoreWriter(tmp_path, _manifest()) as w:
        _write(w, IDS[:3])
    with open(tmp_path / "train-00000.tfrecord", "ab") as f:
        f.write(b"xx")
    with pytest.raises(ValueError, match="train-00000.tfrecord.*corrupt"):
        FeatureStoreWriter(tmp_path, _manifest())


@pytest.mark.parametrize("field, value", [
    ("backbone", "other"), ("feature_shape", [R, D + 1]), ("feature_dtype", "float32"),
    ("label_names", list("abce")), ("extra_label_names", {}), ("input_size", [16, 16]),
    ("weights", "v2"), ("preprocessing", "caffe"), ("dataset", "toy2"),
])
def test_resume_metadata_mismatch(tmp_path, field, value):
    with FeatureStoreWriter(tmp_path, _manifest()) as w:
        _write(w, IDS[:3])
    with pytest.raises(ValueError) as e:
        FeatureStoreWriter(tmp_path, _manifest(**{field: value}))
    assert f"'{field}'" in str(e.value)
    assert "overwrite=True" in str(e.value) and "new directory" in str(e.value)
    # overwrite=True starts again from scratch.
    with FeatureStoreWriter(tmp_path, _manifest(**{field: value}), overwrite=True) as w2:
        assert w2.done_ids == set()
    assert w2.manifest.num_examples == 0
    assert sorted(os.listdir(tmp_path)) == ["manifest.json"]


def test_resume_of_complete_store_appends(tmp_path):
    with FeatureStoreWriter(tmp_path, _manifest()) as w:
        _write(w, IDS[:3])
    w2 = FeatureStoreWriter(tmp_path, _manifest(extra={"threshold": 4}))
    assert w2.done_ids == set(IDS[:3])
    assert not read_manifest(tmp_path).complete  # writing again: incomplete until close
    with w2:
        pass
    assert read_manifest(tmp_path).complete
    assert read_manifest(tmp_path).extra == {"threshold": 4}
    _check_contents(tmp_path, IDS[:3])


def test_directory_with_shards_but_no_manifest(tmp_path):
    (tmp_path / "train-00000.tfrecord").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="overwrite=True"):
        FeatureStoreWriter(tmp_path, _manifest())
    with FeatureStoreWriter(tmp_path, _manifest(), overwrite=True):
        pass
    assert sorted(os.listdir(tmp_path)) == ["manifest.json", "notes.txt"]


# ------------------------------------------------------------------ reading
@pytest.fixture
def store(tmp_path):
    with FeatureStoreWriter(tmp_path, _manifest(), max_shard_bytes=600) as w:
        _write(w, IDS)
    assert len(w.manifest.shards) >= 4
    return tmp_path


def test_make_dataset_shapes_and_dtypes(store):
    ds = make_dataset(store, 8)
    feats, labels = ds.element_spec
    assert feats.dtype == tf.float32 and feats.shape.as_list() == [None, R, D]
    assert labels.dtype == tf.int8 and labels.shape.as_list() == [None, C]
    batches = list(ds)
    assert [b[0].shape[0] for b in batches] == [8, 8, 8, 6]
    assert all(b[1].shape == (b[0].shape[0], C) for b in batches)
    dropped = list(make_dataset(store, 8, drop_remainder=True))
    assert len(dropped) == 3
    assert make_dataset(store, 8, drop_remainder=True).element_spec[0].shape.as_list() == [8, R, D]


def test_make_dataset_as_dict(store):
    spec = make_dataset(store, 4, as_dict=True).element_spec
    assert set(spec) == {"image_id", "features", "labels", "labels/unseen"}
    assert spec["image_id"].dtype == tf.string
    assert spec["labels/unseen"].dtype == tf.int8
    assert spec["labels/unseen"].shape.as_list() == [None, U]
    _check_contents(store, IDS)


def test_make_dataset_deterministic_without_shuffle(store):
    a = _check_contents(store, IDS)
    ds = make_dataset(store, 5, as_dict=True)
    b = [x.decode() for batch in ds for x in batch["image_id"].numpy()]
    c = [x.decode() for batch in ds for x in batch["image_id"].numpy()]
    assert a == b == c
    # Features follow their ids in the tuple form too.
    feats = np.concatenate([f.numpy() for f, _ in make_dataset(store, 5)])
    np.testing.assert_array_equal(feats, np.stack([_example(i)[0] for i in a]))


def test_make_dataset_shuffle_cache_repeat(store):
    ids = _read_all(store, shuffle=True, seed=1, shuffle_buffer=64)["image_id"]
    assert sorted(x.decode() for x in ids) == IDS
    ds = make_dataset(store, 7, shuffle=True, seed=3, cache=True, repeat=True, as_dict=True)
    seen = [x.decode() for batch in ds.take(9) for x in batch["image_id"].numpy()]
    assert len(seen) == 63
    assert sorted(seen[:30]) == IDS and sorted(seen[30:60]) == IDS  # epoch boundaries kept
    _check_contents(store, IDS, cache=True)


def test_make_dataset_missing_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing_split"):
        make_dataset(tmp_path / "missing_split", 4)
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        make_dataset(tmp_path, 4)
    with pytest.raises(ValueError, match="batch_size"):
        make_dataset(tmp_path, 0)


def test_is_used_inside_tf_function(store):
    @tf.function
    def total(ds):
        s = tf.constant(0.0)
        for f, _ in ds:
            s += tf.reduce_sum(f)
        return s
    expected = sum(_example(i)[0].sum() for i in IDS)
    assert float(total(make_dataset(store, 4))) == pytest.approx(expected)


def test_identity_fields_constant():
    assert {"dataset", "split", "backbone", "weights", "input_size", "preprocessing",
            "feature_shape", "feature_dtype", "label_names",
            "extra_label_names"} <= set(fs.IDENTITY_FIELDS)
