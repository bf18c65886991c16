"""Reliability of the feature store: identity, corrupt shards, non-finite features, odd ids, one writer.

Every store is tiny and written in ``tmp_path``; crashes are simulated by
injecting a failure at a named write (monkeypatch), never by timing. The CLI
tests replace the backbone by a 2x2 average pool so they run in about a second.
"""

import collections
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from mll_tf.data import extraction, feature_store, schema
from mll_tf.data.adapter import ImageRecord
from mll_tf.data.feature_store import FeatureStoreWriter, Manifest, make_dataset, read_manifest

R, D, C = 2, 3, 4
IDS = [f"img/{i:03d}.jpg" for i in range(24)]


def _manifest(**kw):
    args = dict(dataset="toy", split="train", backbone="tiny", weights="none", input_size=[8, 8],
                preprocessing="scale01", feature_shape=[R, D], feature_grid=[1, 2],
                feature_dtype="float16", label_names=list("abcd"))
    args.update(kw)
    return Manifest(**args)


def _example(image_id):
    i = int(image_id[4:7])
    feat = (((np.arange(R * D) * 7 + i) % 13 - 3) * 0.5).reshape(R, D).astype(np.float32)
    labels = ((np.arange(C) + i) % 3 - 1).astype(np.int8)
    return feat, labels


def _write_store(split_dir, ids=IDS, max_shard_bytes=300, **kw):
    with FeatureStoreWriter(split_dir, _manifest(**kw), max_shard_bytes=max_shard_bytes) as w:
        for image_id in ids:
            w.write(image_id, *_example(image_id))
    return w.manifest


def _read_ids(split_dir, **kw):
    return [x.decode() for b in make_dataset(split_dir, 4, as_dict=True, **kw)
            for x in b["image_id"].numpy()]


def _snapshot(split_dir):
    """{file name: bytes} of a split directory (to show a refused run changed nothing)."""
    return {n: open(os.path.join(split_dir, n), "rb").read() for n in sorted(os.listdir(split_dir))}


# ----------------------------------------------------------------------------- CLI helpers
def _fake_backbone(monkeypatch):
    """build_backbone -> a 2x2 average pool ([B, S, S, 3] -> [B, 2, 2, 3]): no weights, instant."""
    import keras

    from mll_tf import backbones

    def build(name, weights=None, input_size=224):
        inp = keras.Input((input_size, input_size, 3))
        out = keras.layers.AveragePooling2D(input_size // 2)(inp)
        return backbones.Backbone(name=name, model=keras.Model(inp, out), input_size=(input_size, input_size),
                                  feature_shape=(2, 2, 3), weights="random initialisation (weights=None)",
                                  preprocessing="none (test average pool)", resize_shorter=None)

    monkeypatch.setattr(backbones, "build_backbone", build)


def _extract(argv, capsys):
    from mll_tf.cli import extract

    capsys.readouterr()
    rc = extract.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _fmnist_argv(root, seed, *extra):
    opts = f"num_train=6,num_val=3,num_test=4,cache_dir={root / 'grids'},seed={seed}"
    return ["--dataset", "fashion_mnist_grid", "--data-root", str(root / "idx"), "--dataset-options", opts,
            "--out-dir", str(root / "features"), "--input-size", "16", "--workers", "0", "--no-progress",
            *extra]


def _json_tree(root, labels):
    """A DOR-ML json dataset: train.json with one 20x20 PNG per entry of ``labels`` (id -> label list)."""
    from PIL import Image

    os.makedirs(root / "images", exist_ok=True)
    images = []
    for k, (image_id, labs) in enumerate(sorted(labels.items())):
        path = root / image_id
        if not path.exists():
            Image.new("RGB", (20, 20), (10 * k, 200 - 10 * k, 50)).save(path)
        images.append([image_id, labs])
    (root / "train.json").write_text(json.dumps({"classes": ["cat", "dog", "car"], "images": images}))


def _json_argv(root, *extra):
    return ["--dataset", "json", "--data-root", str(root / "data"), "--out-dir", str(root / "features"),
            "--input-size", "16", "--workers", "0", "--no-progress", *extra]


# ============================================================================ 6. store identity
def test_changed_labels_are_refused_naming_split_and_image(tmp_path, monkeypatch, capsys):
    _fake_backbone(monkeypatch)
    labels = {f"images/{k}.png": ["cat"] if k % 2 else ["dog", "car"] for k in range(6)}
    _json_tree(tmp_path / "data", labels)
    rc, out, err = _extract(_json_argv(tmp_path), capsys)
    assert rc == 0, err
    split_dir = tmp_path / "features" / "json" / "efficientnet_lite0_16" / "train"
    before = _snapshot(split_dir)
    labels["images/3.png"] = ["car"]  # the annotation file changes one image's labels
    _json_tree(tmp_path / "data", labels)
    rc, out, err = _extract(_json_argv(tmp_path), capsys)
    assert rc == 2, out + err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "train" in lines[0] and "images/3.png" in lines[0] and "1 of 6" in lines[0]
    assert "--overwrite" in lines[0] and "--out-dir" in lines[0]
    assert _snapshot(split_dir) == before  # refused: the store is untouched
    rc, out, err = _extract(_json_argv(tmp_path, "--overwrite"), capsys)
    assert rc == 0, err
    got = {i.decode(): y for b in make_dataset(split_dir, 8, as_dict=True)
           for i, y in zip(b["image_id"].numpy(), b["labels"].numpy())}
    np.testing.assert_array_equal(got["images/3.png"], [1, 0, 0])  # columns: car, cat, dog


def test_changed_dataset_options_are_refused(tmp_path, monkeypatch, capsys):
    from tests.data.partial_fixtures import make_fmnist_idx

    _fake_backbone(monkeypatch)
    make_fmnist_idx(str(tmp_path / "idx"), n_train=30, n_test=10)
    rc, out, err = _extract(_fmnist_argv(tmp_path, 0), capsys)
    assert rc == 0, err
    base = tmp_path / "features" / "fashion_mnist_grid" / "efficientnet_lite0_16"
    before = {s: _snapshot(base / s) for s in ("train", "val", "test")}
    rc, out, err = _extract(_fmnist_argv(tmp_path, 1), capsys)
    assert rc == 2, out + err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "seed" in lines[0] and "--overwrite" in lines[0] and "--out-dir" in lines[0]
    assert {s: _snapshot(base / s) for s in before} == before
    # The same options resume (nothing to do), and the manifest records them.
    rc, out, err = _extract(_fmnist_argv(tmp_path, 0), capsys)
    assert rc == 0, err
    m = read_manifest(base / "train")
    assert m.adapter_options["seed"] == 0 and m.adapter_options["root"] == str(tmp_path / "idx")
    assert len(m.records_sha256) == 64 and m.records_count == 6


def test_store_without_identity_fields_is_accepted_with_one_note(tmp_path):
    _write_store(tmp_path, IDS[:10])
    path = tmp_path / "manifest.json"
    old = json.loads(path.read_text())
    for key in ("adapter_options", "records_sha256", "records_count"):
        old.pop(key, None)  # a store made before these fields existed
    path.write_text(json.dumps(old))
    assert sorted(_read_ids(tmp_path)) == IDS[:10]  # readers do not care
    records = [ImageRecord(i, "", _example(i)[1]) for i in IDS[:12]]
    sha, count = feature_store.records_digest(records)
    new = _manifest(adapter_options={"seed": 0}, records_sha256=sha, records_count=count)
    with pytest.warns(UserWarning) as caught:
        w = FeatureStoreWriter(tmp_path, new, max_shard_bytes=300, records=records)
    notes = [str(c.message) for c in caught]
    assert len(notes) == 1 and "adapter options" in notes[0] and str(tmp_path) in notes[0]
    with w:
        for i in IDS[10:12]:
            w.write(i, *_example(i))
    assert sorted(_read_ids(tmp_path)) == IDS[:12]
    assert read_manifest(tmp_path).records_sha256 == sha


def test_records_digest_is_order_free_and_sees_labels():
    recs = [ImageRecord(i, "", _example(i)[1]) for i in IDS]
    sha, n = feature_store.records_digest(recs)
    assert n == len(IDS) and feature_store.records_digest(recs[::-1])[0] == sha
    changed = list(recs)
    changed[5] = ImageRecord(IDS[5], "", -changed[5].labels)
    assert feature_store.records_digest(changed)[0] != sha


# ============================================================================ 7. readers name the file
def _corrupt(split_dir, how):
    m = read_manifest(split_dir)
    assert len(m.shards) >= 3
    name = m.shards[1]["file"]
    path = os.path.join(split_dir, name)
    data = bytearray(open(path, "rb").read())
    if how == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[:len(data) * 2 // 3]
    open(path, "wb").write(bytes(data))
    return name


@pytest.mark.parametrize("how", ["flip", "truncate"])
@pytest.mark.parametrize("compression", ["ZLIB", ""])
def test_corrupt_shard_error_names_shard_and_store(tmp_path, how, compression):
    _write_store(tmp_path, compression=compression)
    name = _corrupt(tmp_path, how)
    with pytest.raises(tf.errors.OpError) as e:
        _read_ids(tmp_path)
    msg = str(e.value)
    assert name in msg and str(tmp_path) in msg and "--verify" in msg
    with pytest.raises(tf.errors.OpError, match=name):  # shuffled, cached and repeated readers too
        _read_ids(tmp_path, shuffle=True, seed=2, cache=True)


def test_shard_cut_at_a_record_boundary_is_detected(tmp_path):
    """An uncompressed shard cut between two records reads without any error today: records are lost."""
    _write_store(tmp_path, compression="", max_shard_bytes=600)
    m = read_manifest(tmp_path)
    shard = m.shards[1]
    assert shard["num_examples"] >= 2
    path = tmp_path / shard["file"]
    data = path.read_bytes()
    first = 8 + 4 + int.from_bytes(data[:8], "little") + 4  # one whole record
    path.write_bytes(data[:first])
    with pytest.raises(tf.errors.OpError) as e:
        _read_ids(tmp_path)
    assert shard["file"] in str(e.value) and str(tmp_path) in str(e.value)


def test_huge_finite_float32_features_are_read(tmp_path):
    """The cheap per-batch sum overflows here; the exact check must not call them non-finite."""
    with FeatureStoreWriter(tmp_path, _manifest(feature_dtype="float32")) as w:
        for i in IDS[:8]:
            w.write(i, np.full((R, D), 3e38, np.float32), _example(i)[1])
    feats = np.concatenate([f.numpy() for f, _ in make_dataset(tmp_path, 8)])
    assert feats.shape == (8, R, D) and np.all(feats == np.float32(3e38))


def test_corrupt_shard_error_names_shard_inside_fit(tmp_path):
    import keras

    _write_store(tmp_path)
    name = _corrupt(tmp_path, "flip")
    ds = make_dataset(tmp_path, 4).map(lambda f, y: (f, tf.cast(tf.equal(y, 1), tf.float32)))
    model = keras.Sequential([keras.Input((R, D)), keras.layers.Flatten(), keras.layers.Dense(C)])
    model.compile("sgd", "binary_crossentropy")
    with pytest.raises(Exception) as e:
        model.fit(ds, epochs=1, verbose=0)
    assert name in str(e.value) and str(tmp_path) in str(e.value)


def _verify(argv, capsys, out_dir):
    return _extract(["--verify", "--dataset", "toy", "--backbone", "efficientnet_lite0", "--input-size", "8",
                     "--out-dir", str(out_dir), *argv], capsys)


def test_verify_reports_each_bad_shard(tmp_path, capsys):
    base = tmp_path / "toy" / "efficientnet_lite0_8"
    for split in ("train", "val"):
        _write_store(base / split, split=split)
    rc, out, err = _verify([], capsys, tmp_path)
    assert rc == 0, out + err
    assert "train" in out and "val" in out
    flipped = _corrupt(base / "train", "flip")
    m = read_manifest(base / "val")
    truncated = _corrupt(base / "val", "truncate")
    # A shard whose records hold another feature size than the manifest says.
    odd = m.shards[0]["file"]
    feat = np.zeros((R, D + 1), np.float32)
    rec = schema.serialize_example("x", feat, np.zeros(C, np.int8))
    with tf.io.TFRecordWriter(str(base / "val" / odd), "ZLIB") as w:
        for _ in range(m.shards[0]["num_examples"]):
            w.write(rec)
    rc, out, err = _verify([], capsys, tmp_path)
    assert rc == 2, out + err
    bad = [ln for ln in out.splitlines() if ln.startswith("BAD ")]
    assert len(bad) == 3, out
    by_file = {name: [ln for ln in bad if name in ln] for name in (flipped, truncated, odd)}
    assert all(len(v) == 1 for v in by_file.values()), bad
    assert "byte" in by_file[odd][0] or "shape" in by_file[odd][0]
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    rc, out, err = _verify(["--splits", "train"], capsys, tmp_path)
    assert rc == 2 and flipped in out and truncated not in out


def test_verify_counts_records_against_the_manifest(tmp_path, capsys):
    split_dir = tmp_path / "toy" / "efficientnet_lite0_8" / "train"
    _write_store(split_dir)
    m = json.loads((split_dir / "manifest.json").read_text())
    m["shards"][0]["num_examples"] += 1
    (split_dir / "manifest.json").write_text(json.dumps(m))
    rc, out, err = _verify([], capsys, tmp_path)
    assert rc == 2
    assert [ln for ln in out.splitlines() if ln.startswith("BAD ") and m["shards"][0]["file"] in ln]


def test_edited_manifest_shape_with_same_size_is_refused(tmp_path):
    _write_store(tmp_path)
    path = tmp_path / "manifest.json"
    m = json.loads(path.read_text())
    m["feature_shape"], m["feature_grid"] = [D, R], None  # same element count, other shape
    path.write_text(json.dumps(m))
    with pytest.raises(tf.errors.OpError) as e:
        _read_ids(tmp_path)
    assert str(tmp_path) in str(e.value) and "feature_shape" in str(e.value)


def test_records_without_shape_are_still_read(tmp_path, monkeypatch):
    """Stores written before records carried their shape."""
    original = schema.serialize_example

    def old_style(*a, **kw):
        ex = tf.train.Example.FromString(original(*a, **kw))
        if schema.FEATURE_SHAPE_KEY in ex.features.feature:
            del ex.features.feature[schema.FEATURE_SHAPE_KEY]
        return ex.SerializeToString()

    monkeypatch.setattr(schema, "FEATURE_SHAPE_KEY", "feature_shape", raising=False)
    monkeypatch.setattr(schema, "serialize_example", old_style)
    _write_store(tmp_path)
    monkeypatch.undo()
    assert sorted(_read_ids(tmp_path)) == IDS
    rec = tf.data.TFRecordDataset(str(tmp_path / "train-00000.tfrecord"), "ZLIB").take(1).get_single_element()
    assert "feature_shape" not in tf.train.Example.FromString(rec.numpy()).features.feature


def test_new_records_carry_their_shape(tmp_path):
    _write_store(tmp_path)
    rec = tf.data.TFRecordDataset(str(tmp_path / "train-00000.tfrecord"), "ZLIB").take(1).get_single_element()
    ex = tf.train.Example.FromString(rec.numpy())
    assert list(ex.features.feature[schema.FEATURE_SHAPE_KEY].int64_list.value) == [R, D]


# ============================================================================ 8. non-finite features
def _store_with_nan(split_dir, monkeypatch, bad_id, value=np.nan):
    original = schema.serialize_example

    def poisoned(image_id, *a, **kw):
        rec = original(image_id, *a, **kw)
        if image_id != bad_id:
            return rec
        ex = tf.train.Example.FromString(rec)
        feat = np.full((R, D), value, np.float16)
        ex.features.feature[schema.FEATURE_KEY].bytes_list.value[0] = feat.tobytes()
        return ex.SerializeToString()

    monkeypatch.setattr(schema, "serialize_example", poisoned)
    _write_store(split_dir)
    monkeypatch.undo()


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_feature_stops_reading_naming_store_and_image(tmp_path, monkeypatch, value):
    _store_with_nan(tmp_path, monkeypatch, IDS[13], value)
    with pytest.raises(tf.errors.OpError) as e:
        _read_ids(tmp_path)
    assert IDS[13] in str(e.value) and str(tmp_path) in str(e.value)
    with pytest.raises(tf.errors.OpError, match=IDS[13]):
        list(make_dataset(tmp_path, 4, shuffle=True, seed=0))  # the tuple form too
    assert len(_read_ids(tmp_path, check_finite=False)) == len(IDS)  # can be switched off


def test_writer_refuses_non_finite_naming_the_image(tmp_path):
    with FeatureStoreWriter(tmp_path, _manifest()) as w:
        feat, labels = _example(IDS[0])
        feat[1, 2] = np.inf
        with pytest.raises(schema.NonFiniteFeatureError, match=IDS[0]):
            w.write(IDS[0], feat, labels)
        w.write(IDS[1], *_example(IDS[1]))
    assert _read_ids(tmp_path) == [IDS[1]]


def _records(tmp_path, ids):
    return [ImageRecord(i, str(tmp_path / "none.png"), _example(i)[1]) for i in ids]


def _load_grey(path, size):
    return np.full((size, size, 3), 100, np.uint8)


def test_extraction_skips_non_finite_features_with_reason(tmp_path):
    ids = IDS[:9]
    calls = {"n": 0}

    def nan_in_second_batch(images):  # the backbone returns NaN for one image (ids[5])
        calls["n"] += 1
        out = np.ones((len(images), R, D), np.float32)
        if calls["n"] == 2:
            out[1, 0, 0] = np.nan
        return out

    nan_in_second_batch.batch_size = 4
    with FeatureStoreWriter(tmp_path, _manifest()) as w:
        stats = extraction.extract_records(_records(tmp_path, ids), _load_grey, 8, nan_in_second_batch, w,
                                           num_workers=0, progress=False)
    assert stats["written"] == 8 and stats["skipped"] == 1
    m = w.manifest
    assert m.complete and m.num_examples == 8
    assert [s["image_id"] for s in m.skipped] == [ids[5]]
    assert "NaN" in m.skipped[0]["reason"] or "non-finite" in m.skipped[0]["reason"]


# ============================================================================ 9. line breaks in ids
def test_line_break_in_image_id_is_a_counted_skip(tmp_path):
    ids = IDS[:5] + ["img/odd\nname.jpg", "img/cr\rname.jpg"] + IDS[5:8]

    def features(images):
        return np.ones((len(images), R, D), np.float32)

    features.batch_size = 4
    with FeatureStoreWriter(tmp_path, _manifest()) as w:
        recs = [ImageRecord(i, "x", np.zeros(C, np.int8)) for i in ids]
        stats = extraction.extract_records(recs, _load_grey, 8, features, w, num_workers=0, progress=False)
    assert stats["written"] == 8 and stats["skipped"] == 2
    reasons = {s["image_id"]: s["reason"] for s in w.manifest.skipped}
    assert set(reasons) == {"img/odd\nname.jpg", "img/cr\rname.jpg"}
    assert all("line break" in r for r in reasons.values())
    assert sorted(_read_ids(tmp_path)) == sorted(IDS[:8])
    # Resuming does not retry them.
    with FeatureStoreWriter(tmp_path, _manifest()) as w2:
        stats = extraction.extract_records(recs, _load_grey, 8, features, w2, num_workers=0, progress=False)
    assert stats["already_done"] == len(ids) and stats.get("written", 0) == 0


# ============================================================================ 10. one writer per store
LOCK_NAME = "writer.lock"


def _lock_path(split_dir):
    return os.path.join(split_dir, LOCK_NAME)


_SECOND_WRITER = """
import sys
from mll_tf.data.feature_store import FeatureStoreWriter, Manifest
m = Manifest(dataset="toy", split="train", backbone="tiny", weights="none", input_size=[8, 8],
             preprocessing="scale01", feature_shape=[2, 3], feature_grid=[1, 2], feature_dtype="float16",
             label_names=list("abcd"))
try:
    FeatureStoreWriter(sys.argv[1], m, max_shard_bytes=300).close()
except ValueError as e:
    print(type(e).__name__, e)
    sys.exit(2)
"""


def test_concurrent_extraction_in_another_process_is_refused(tmp_path):
    """Two processes, one split: the second is refused and the first finishes its shard."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    w = FeatureStoreWriter(tmp_path, _manifest(), max_shard_bytes=300)
    for i in IDS[:5]:
        w.write(i, *_example(i))
    assert w._writer is not None  # a shard is being written
    proc = subprocess.run([sys.executable, "-c", _SECOND_WRITER, str(tmp_path)], capture_output=True,
                          text=True, cwd=repo, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr[-2000:]
    assert "StoreLockedError" in proc.stdout and str(os.getpid()) in proc.stdout
    assert str(tmp_path) in proc.stdout
    for i in IDS[5:]:
        w.write(i, *_example(i))
    w.close()
    assert sorted(_read_ids(tmp_path)) == IDS
    assert feature_store.LOCK_NAME == LOCK_NAME


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_second_writer_is_refused_naming_store_and_pid(tmp_path):
    w = FeatureStoreWriter(tmp_path, _manifest(), max_shard_bytes=300)
    for i in IDS[:5]:
        w.write(i, *_example(i))
    lock = _lock_path(tmp_path)
    held = json.loads(open(lock).read())
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
    # The lock now belongs to another live process (as when a second extraction starts).
    other = os.getppid()
    open(lock, "w").write(json.dumps(dict(held, pid=other)))
    with pytest.raises(feature_store.StoreLockedError) as e:
        FeatureStoreWriter(tmp_path, _manifest(), max_shard_bytes=300)
    assert str(tmp_path) in str(e.value) and str(other) in str(e.value)
    assert isinstance(e.value, ValueError)  # the CLIs print one error line for it
    for i in IDS[5:]:  # the first writer is unharmed
        w.write(i, *_example(i))
    w.close()
    assert not os.path.exists(lock)
    assert sorted(_read_ids(tmp_path)) == IDS


def test_cli_refuses_a_store_being_written(tmp_path, monkeypatch, capsys):
    _fake_backbone(monkeypatch)
    labels = {f"images/{k}.png": ["cat"] for k in range(3)}
    _json_tree(tmp_path / "data", labels)
    split_dir = tmp_path / "features" / "json" / "efficientnet_lite0_16" / "train"
    os.makedirs(split_dir)
    open(_lock_path(split_dir), "w").write(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    rc, out, err = _extract(_json_argv(tmp_path), capsys)
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(os.getppid()) in lines[0]
    assert str(split_dir) in lines[0]


def test_stale_lock_is_taken_over(tmp_path):
    _write_store(tmp_path, IDS[:6])
    dead = _dead_pid()
    open(_lock_path(tmp_path), "w").write(json.dumps({"pid": dead, "host": socket.gethostname()}))
    with pytest.warns(UserWarning, match=f"stale.*{dead}|{dead}.*stale"):
        w = FeatureStoreWriter(tmp_path, _manifest(), max_shard_bytes=300)
    with w:
        for i in IDS[6:]:
            w.write(i, *_example(i))
    assert not os.path.exists(_lock_path(tmp_path))
    assert sorted(_read_ids(tmp_path)) == IDS


def test_empty_lock_left_by_a_crash_is_taken_over(tmp_path):
    open(_lock_path(tmp_path), "w").close()  # died between creating the lock and writing it
    os.utime(_lock_path(tmp_path), (0, 0))
    with pytest.warns(UserWarning, match="stale"):
        w = FeatureStoreWriter(tmp_path, _manifest())
    w.close()
    assert not os.path.exists(_lock_path(tmp_path))


class Boom(Exception):
    pass


def test_lock_released_when_a_write_fails(tmp_path, monkeypatch):
    original = schema.serialize_example
    calls = collections.Counter()

    def failing(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 7:
            raise Boom("disk gone")
        return original(*a, **kw)

    monkeypatch.setattr(schema, "serialize_example", failing)
    with pytest.raises(Boom):
        with FeatureStoreWriter(tmp_path, _manifest(), max_shard_bytes=300) as w:
            for i in IDS:
                w.write(i, *_example(i))
    assert not os.path.exists(_lock_path(tmp_path))
    monkeypatch.undo()
    # A failure while opening (identity refused) releases it too, and leaves the store as it was.
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError, match="backbone"):
        FeatureStoreWriter(tmp_path, _manifest(backbone="other"))
    assert not os.path.exists(_lock_path(tmp_path))
    assert _snapshot(tmp_path) == before
    with FeatureStoreWriter(tmp_path, _manifest(), max_shard_bytes=300) as w2:
        assert w2.done_ids == set(IDS[:6])
        for i in IDS[6:]:
            w2.write(i, *_example(i))
    assert sorted(_read_ids(tmp_path)) == IDS


def test_lock_released_when_close_fails(tmp_path, monkeypatch):
    """A failure at the final manifest save: the store stays resumable (incomplete) and unlocked."""
    original = Manifest.save

    def failing_save(self, split_dir):
        if self.complete:
            raise OSError(28, "No space left on device")
        return original(self, split_dir)

    w = FeatureStoreWriter(tmp_path, _manifest(), max_shard_bytes=300)
    for i in IDS[:7]:
        w.write(i, *_example(i))
    monkeypatch.setattr(Manifest, "save", failing_save)
    with pytest.raises(OSError, match="No space"):
        w.close()
    monkeypatch.undo()
    assert not os.path.exists(_lock_path(tmp_path))
    assert not read_manifest(tmp_path).complete
    assert sorted(_read_ids(tmp_path, require_complete=False)) == IDS[:7]
    with FeatureStoreWriter(tmp_path, _manifest(), max_shard_bytes=300) as w2:
        assert w2.done_ids == set(IDS[:7])


def test_train_cli_answers_a_corrupt_validation_shard_with_one_line(tmp_path, capsys):
    """The reader's check fails inside fit's validation; the tool prints one ``error:`` line naming
    the store and the shard (and the --verify command) and exits 2, no traceback."""
    from mll_tf.cli import train
    from tests.helpers import write_toy_store

    write_toy_store(tmp_path / "features")
    val = tmp_path / "features" / "toy" / "efficientnet_lite0_8" / "val"
    name = read_manifest(str(val)).shards[0]["file"]
    data = bytearray(open(val / name, "rb").read())
    open(val / name, "wb").write(bytes(data[:len(data) // 2]))
    capsys.readouterr()
    rc = train.main(["--method", "ignore", "--dataset", "toy", "--backbone", "efficientnet_lite0",
                     "--input-size", "8", "--features-root", str(tmp_path / "features"),
                     "--run-dir", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "16",
                     "--noprogress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: feature store ") and name in err[0]
    assert str(val) in err[0] and "--verify" in err[0] and "Traceback" not in err[0]
