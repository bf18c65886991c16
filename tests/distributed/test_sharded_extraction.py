"""Sharded extraction: N workers each write a deterministic 1/N of a split, a killed worker resumes,
``--finalize`` merges the parts and checks every image was written exactly once."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mll_tf.data.feature_store import FeatureStoreWriter, Manifest, make_dataset, read_manifest, verify_store
from mll_tf.data.sharding import (ShardingError, cluster_from_tf_config, finalize_split, part_dir,
                                  records_of_worker, worker_of)
from tests.helpers import make_clipart_tree

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_worker_of_is_the_documented_hash_and_partitions():
    ids = [f"img_{i:03d}" for i in range(40)]
    for image_id in ids:
        want = int(hashlib.sha1(image_id.encode()).hexdigest()[:16], 16) % 3
        assert worker_of(image_id, 3) == want
    assert worker_of("a", 1) == 0

    class R:
        def __init__(self, image_id):
            self.image_id = image_id

    records = [R(i) for i in ids]
    parts = [records_of_worker(records, 3, k) for k in range(3)]
    got = sorted(r.image_id for p in parts for r in p)
    assert got == sorted(ids) and all(parts)   # disjoint, complete, no empty part for 40 ids
    # the order of the records does not change who extracts what
    assert [r.image_id for r in records_of_worker(records[::-1], 3, 1)] == [r.image_id for r in parts[1]][::-1]
    with pytest.raises(ShardingError, match="--worker-index"):
        records_of_worker(records, 3, 3)


def test_cluster_from_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert cluster_from_tf_config() is None
    cluster = {"chief": ["h0:1"], "worker": ["h1:1", "h2:1"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "chief", "index": 0}}))
    assert cluster_from_tf_config() == (3, 0)
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    assert cluster_from_tf_config() == (3, 2)
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:1"]},
                                                "task": {"type": "worker", "index": 1}}))
    assert cluster_from_tf_config() == (2, 1)


def _manifest(label_names, sha="x" * 64):
    return Manifest(dataset="toy", split="train", backbone="b", weights="none", input_size=[8, 8],
                    feature_shape=[1, 2], feature_dtype="float32", label_names=label_names,
                    records_sha256=sha)


def _write_part(split_dir, index, count, ids, close=True):
    w = FeatureStoreWriter(part_dir(split_dir, index, count), _manifest(["a", "b"]))
    for k, image_id in enumerate(ids):
        w.write(image_id, np.full((1, 2), k, np.float32), np.array([1, 0], np.int8))
    if close:
        w.close()
    else:
        w._fail()   # what a killed worker leaves: complete shards, an incomplete manifest


def test_finalize_refuses_unfinished_duplicate_and_missing_then_merges(tmp_path):
    split_dir = str(tmp_path / "train")
    _write_part(split_dir, 0, 2, ["a", "b"])
    with pytest.raises(ShardingError, match=r"worker\(s\) 1 of 2 wrote nothing"):
        finalize_split(split_dir, ["a", "b", "c"], 2, "x" * 64)
    _write_part(split_dir, 1, 2, ["c"], close=False)
    with pytest.raises(ShardingError, match=r"worker\(s\) 1 of 2 did not finish"):
        finalize_split(split_dir, ["a", "b", "c"], 2, "x" * 64)
    _write_part(split_dir, 1, 2, ["b"])   # resumes the part: "c" is kept, "b" written again
    with pytest.raises(ShardingError) as e:
        finalize_split(split_dir, ["a", "b", "c", "d"], 2, "x" * 64)
    msg = str(e.value)
    assert "1 image(s) written more than once: 'b' (e.g. 'b' by workers 0, 1)" in msg
    assert "1 image(s) never written: 'd'" in msg
    with pytest.raises(ShardingError, match="records_sha256"):
        finalize_split(split_dir, ["a", "b", "c"], 2, "y" * 64)
    assert not os.path.exists(os.path.join(split_dir, "manifest.json"))   # nothing written on refusal
    with pytest.raises(FileNotFoundError, match="sharded extraction .* not finalized.*--num-workers 2 --finalize"):
        make_dataset(split_dir, 2)


def test_finalize_merges_parts_into_one_readable_store(tmp_path):
    split_dir = str(tmp_path / "train")
    _write_part(split_dir, 0, 2, ["a", "b"])
    _write_part(split_dir, 1, 2, ["c"])
    merged = finalize_split(split_dir, ["a", "b", "c"], 2, "x" * 64)
    assert merged.complete and merged.num_examples == 3
    assert [s["file"] for s in merged.shards] == ["part-00000-of-00002/train-00000.tfrecord",
                                                  "part-00001-of-00002/train-00000.tfrecord"]
    assert read_manifest(split_dir).num_examples == 3 and verify_store(split_dir) == []
    ids = sorted(i.decode() for d in make_dataset(split_dir, 2, as_dict=True) for i in d["image_id"].numpy())
    assert ids == ["a", "b", "c"]
    with pytest.raises(ShardingError, match="another number of workers"):
        _write_part(split_dir, 0, 3, ["a"])
        finalize_split(split_dir, ["a", "b", "c"], 2, "x" * 64)


def _cli(*args):
    return [sys.executable, os.path.join(ROOT, "extract", "build_tfrecords.py"), *args]


def test_two_worker_processes_one_killed_and_rerun_then_finalize(tmp_path):
    """Two extraction processes; worker 1 is SIGKILLed mid-way and re-run; --finalize merges; --verify passes."""
    make_clipart_tree(str(tmp_path / "svg"), n=16)
    out = str(tmp_path / "features")
    common = ["--dataset", "openclipart", "--data-root", str(tmp_path / "svg"), "--min-count", "1",
              "--dataset-options", "test_percent=0,val_percent=0", "--splits", "train",
              "--backbone", "efficientnet_lite0", "--weights", "none", "--input-size", "32",
              "--out-dir", out, "--workers", "0", "--batch-size", "1", "--max-shard-mb", "0.001",
              "--noprogress"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    env.pop("TF_CONFIG", None)
    logs = [open(tmp_path / f"w{i}.log", "w") for i in range(2)]
    procs = [subprocess.Popen(_cli(*common, "--num-workers", "2", "--worker-index", str(i)), env=env,
                              stdout=logs[i], stderr=subprocess.STDOUT) for i in range(2)]
    split_dir = os.path.join(out, "openclipart", "efficientnet_lite0_32", "train")
    part1 = os.path.join(split_dir, "part-00001-of-00002")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and procs[1].poll() is None:   # kill worker 1 after its first shard
        try:
            if read_manifest(part1).shards:
                break
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.02)
    assert procs[1].poll() is None, open(tmp_path / "w1.log").read()
    procs[1].send_signal(signal.SIGKILL)
    procs[1].wait()
    killed = read_manifest(part1)
    assert not killed.complete and killed.shards
    assert procs[0].wait(timeout=600) == 0, open(tmp_path / "w0.log").read()
    # finalize before worker 1 is done: refused with one error line, nothing merged
    r = subprocess.run(_cli(*common, "--num-workers", "2", "--finalize"), env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "worker(s) 1 of 2 did not finish" in r.stderr, r.stderr
    assert not os.path.exists(os.path.join(split_dir, "manifest.json"))
    # worker 1 re-run: resumes (keeps its complete shards)
    r = subprocess.run(_cli(*common, "--num-workers", "2", "--worker-index", "1"), env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{killed.num_examples} done before this run" in r.stdout or killed.skipped, r.stdout
    r = subprocess.run(_cli(*common, "--num-workers", "2", "--finalize"), env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    merged = read_manifest(split_dir)
    assert merged.complete
    from mll_tf.data.datasets.openclipart import OpenClipArt

    prepared = OpenClipArt(root=str(tmp_path / "svg"), min_count=1, test_percent=0, val_percent=0).prepare()
    want = {r.image_id for r in prepared.splits["train"]}
    stored = [i.decode() for d in make_dataset(split_dir, 8, as_dict=True) for i in d["image_id"].numpy()]
    skipped = [s["image_id"] for s in merged.skipped]
    assert len(stored) == len(set(stored)) == merged.num_examples
    assert set(stored) | set(skipped) == want | {s["image_id"] for s in prepared.skipped.get("train", [])}
    from mll_tf.data.feature_store import _stored_ids

    for i in (0, 1):   # each worker stored only its own images
        d = part_dir(split_dir, i, 2)
        ids = _stored_ids(d, read_manifest(d))
        assert ids and all(worker_of(image_id, 2) == i for image_id in ids)
    r = subprocess.run(_cli(*common, "--verify"), env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr
