"""Multi-worker training: 2 worker processes on 127.0.0.1 (MultiWorkerMirroredStrategy from TF_CONFIG).

One step on 2 workers (each reading its own shard file, 8 examples) equals one step on one worker with the
same global batch of 16; a 2-worker job resumed from its backup continues as one uninterrupted process.
"""

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

from mll_tf.data.feature_store import FeatureStoreWriter, Manifest, input_shard, make_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAMES = ["cat", "dog", "car", "tree", "boat"]


def write_store(root, seed=0):
    """dataset "toy": train = 2 shard files of 8 records, val and test 8 records (features [4, 8])."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(len(NAMES), 8))
    for split, n in (("train", 16), ("val", 8), ("test", 8)):
        labels = (rng.random((n, len(NAMES))) < 0.4).astype(np.int8)
        labels[labels.sum(1) == 0, 0] = 1
        man = Manifest(dataset="toy", split=split, backbone="efficientnet_lite0", weights="none", input_size=[8, 8],
                       preprocessing="synthetic", feature_shape=[4, 8], feature_grid=[2, 2], feature_dtype="float32",
                       label_names=NAMES)
        with FeatureStoreWriter(os.path.join(root, "toy", "efficientnet_lite0_8", split), man) as w:
            for i, y in enumerate(labels):
                w.write(f"{split}/{i:04d}", (rng.normal(scale=0.5, size=(4, 8)) + y @ centers).astype(np.float32), y)
                if split == "train" and i == 7:
                    w._finish_shard()   # two shard files: one per worker


def make_task(features_root, run_dir, epochs):
    from mll_tf.tasks import build_task

    return build_task(dict(method="ignore", dataset="toy", backbone="efficientnet_lite0", input_size=8,
                           features_root=str(features_root), run_dir=str(run_dir), batch_size=16, epochs=epochs,
                           learning_rate=0.1, shuffle_buffer=4, log_every=1, seed=3), task={})


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def run_workers(tmp_path, features_root, run_dir, epochs, timeout=900):
    """Start 2 workers on 127.0.0.1, wait for both; returns their outputs."""
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    procs, logs = [], []
    for i in range(2):
        spec = {"tf_config": {"cluster": cluster, "task": {"type": "worker", "index": i}},
                "features_root": str(features_root), "run_dir": str(run_dir), "epochs": epochs}
        log = open(tmp_path / f"worker{i}-{epochs}.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen([sys.executable, "-m", "tests.distributed.mw_worker", json.dumps(spec)],
                                      cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        codes = [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for log in logs:
            log.close()
    outs = [open(tmp_path / f"worker{i}-{epochs}.log").read() for i in range(2)]
    assert codes == [0, 0], "\n\n".join(o[-3000:] for o in outs)
    return outs


def _weights(run_dir):
    return keras.models.load_model(os.path.join(run_dir, "last.keras"), compile=False).get_weights()


def test_input_shard_reads_whole_files_and_refuses_too_few(tmp_path):
    write_store(tmp_path)
    split = tmp_path / "toy" / "efficientnet_lite0_8" / "train"
    seen = []
    for i in range(2):
        with input_shard(2, i):
            ds = make_dataset(split, 16, as_dict=True)
        seen.append(sorted(x.decode() for d in ds for x in d["image_id"].numpy()))
    assert seen == [[f"train/{i:04d}" for i in range(8)], [f"train/{i:04d}" for i in range(8, 16)]]
    with input_shard(3, 0), pytest.raises(ValueError, match="2 shard file.*fewer than the 3 workers"):
        make_dataset(split, 4)
    assert len(list(make_dataset(split, 16))) == 1   # outside the block: every file


def test_two_workers_one_step_equals_one_worker_and_resume_continues(tmp_path, monkeypatch):
    from mll_tf.training.runner import fit_task

    monkeypatch.delenv("TF_CONFIG", raising=False)
    features = tmp_path / "features"
    write_store(features)
    # one process, one replica, global batch 16: one round of one step, then a second round
    fit_task(make_task(features, tmp_path / "one", 1), verbose=0)
    one_step = _weights(tmp_path / "one")
    fit_task(make_task(features, tmp_path / "one", 2), resume=True, verbose=0)
    two_steps = _weights(tmp_path / "one")
    fit_task(make_task(features, tmp_path / "straight", 2), verbose=0)
    for a, b in zip(two_steps, _weights(tmp_path / "straight")):   # the single-process resume is exact
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)

    run_dir = tmp_path / "multi"
    outs = run_workers(tmp_path, features, run_dir, epochs=1)
    assert all("DONE" in o for o in outs)
    assert "2 replica(s)" in outs[0]
    for a, b in zip(_weights(run_dir), one_step):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # only the chief (worker 0) wrote the run directory; worker 1's temporary directory is gone
    assert sorted(os.listdir(run_dir / "backup")) == ["best.weights.h5", "step-1.json", "step-1.weights.h5"]
    assert "workertemp" not in " ".join(os.listdir(tmp_path))
    # the 2-worker job resumed from its backup continues exactly as the single process
    run_workers(tmp_path, features, run_dir, epochs=2)
    for a, b in zip(_weights(run_dir), two_steps):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    history = (run_dir / "history.csv").read_text().splitlines()
    assert len(history) == 3 and history[1].startswith("1,") and history[2].startswith("2,")


def test_two_worker_job_with_a_worker_killed_resumes(tmp_path, monkeypatch):
    """Worker 1 is SIGKILLed mid-run; the job (both workers, same command) is restarted and resumes from
    the chief's backup; its final weights are those of one uninterrupted process."""
    import signal
    import time

    from mll_tf.training.runner import fit_task

    monkeypatch.delenv("TF_CONFIG", raising=False)
    features = tmp_path / "features"
    write_store(features)
    epochs = 12   # 12 rounds of one step, a backup after each
    run_dir = tmp_path / "multi"
    ports = _free_ports(2)
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    procs = []
    for i in range(2):
        spec = {"tf_config": {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                              "task": {"type": "worker", "index": i}},
                "features_root": str(features), "run_dir": str(run_dir), "epochs": epochs}
        procs.append(subprocess.Popen([sys.executable, "-m", "tests.distributed.mw_worker", json.dumps(spec)],
                                      cwd=ROOT, env=env, stdout=open(tmp_path / f"k{i}.log", "w"),
                                      stderr=subprocess.STDOUT))
    deadline = time.monotonic() + 900
    backup = run_dir / "backup"
    try:
        while time.monotonic() < deadline and procs[0].poll() is None:
            steps = [int(n[5:-5]) for n in (os.listdir(backup) if backup.is_dir() else [])
                     if n.startswith("step-") and n.endswith(".json")]
            if steps and max(steps) >= 3:
                break
            time.sleep(0.02)
        assert procs[0].poll() is None and procs[1].poll() is None, (tmp_path / "k0.log").read_text()[-3000:]
        procs[1].send_signal(signal.SIGKILL)
        try:   # the chief's next all-reduce fails without its peer (or hangs: the job is then stopped)
            procs[0].wait(timeout=120)
        except subprocess.TimeoutExpired:
            procs[0].kill()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    assert procs[0].returncode != 0
    done = max(int(n[5:-5]) for n in os.listdir(backup) if n.endswith(".json"))
    assert 3 <= done < epochs
    outs = run_workers(tmp_path, features, run_dir, epochs=epochs)   # the same command, restarted
    assert f"(step {done}," in outs[0] and f"(step {done}," in outs[1]   # both resumed from the chief's backup
    fit_task(make_task(features, tmp_path / "straight", epochs), verbose=0)
    for a, b in zip(_weights(run_dir), _weights(tmp_path / "straight")):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    history = (run_dir / "history.csv").read_text().splitlines()
    assert len(history) == epochs + 1


def test_data_service_input_gives_the_same_run(tmp_path, monkeypatch):
    """--data-service: a dispatcher and one worker on loopback run the input pipeline; the run is the same."""
    import tensorflow as tf

    from mll_tf.training.runner import fit_task

    monkeypatch.delenv("TF_CONFIG", raising=False)
    features = tmp_path / "features"
    write_store(features)
    service = tf.data.experimental.service
    dispatcher = service.DispatchServer(service.DispatcherConfig(port=0))
    worker = service.WorkerServer(service.WorkerConfig(dispatcher_address=dispatcher.target.split("://")[1]))
    fit_task(make_task(features, tmp_path / "here", 3), verbose=0)
    task = make_task(features, tmp_path / "served", 3)
    task.run.data_service = dispatcher.target
    fit_task(task, verbose=0)
    for a, b in zip(_weights(tmp_path / "served"), _weights(tmp_path / "here")):
        np.testing.assert_array_equal(a, b)
    assert worker._num_tasks() >= 1   # the served run's input came from the tf.data worker
    bad = make_task(features, tmp_path / "bad", 1)
    bad.run.data_service = "localhost"
    with pytest.raises(ValueError, match="--data-service 'localhost'"):
        fit_task(bad, verbose=0)
    assert not (tmp_path / "bad").exists()
