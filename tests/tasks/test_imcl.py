"""IMCL as a Task: learns, keeps G's pattern, writes its run directory; 2 replicas = 1 replica."""

import csv
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from mll_tf.losses.imcl_loss import IMCLLoss
from mll_tf.models.imcl import IMCLDictionary
from mll_tf.tasks.imcl import TrainableIMCL
from tests.conftest import two_cpu_strategy
from tests.helpers import toy_task

from tests.conftest import TOY_NAMES as NAMES  # noqa: E402


@pytest.fixture
def store(toy_store):
    return toy_store


def test_imcl_trains_and_keeps_graph_pattern(store, tmp_path):
    task = toy_task(store, tmp_path, "imcl", partial_labels="rps:0.5", epochs=3,
                    task=dict(imcl_dict_size=64, imcl_k=2))
    m = task.fit(verbose=0)
    run_dir = task.run.run_dir
    rows = list(csv.DictReader(open(f"{run_dir}/history.csv")))
    assert len(rows) == 3
    assert float(rows[-1]["logistic"]) < float(rows[0]["logistic"])
    assert m["val_mAP"] > 0.45  # chance is ~0.35 (positives are 35% of entries)
    assert 0.0 <= m["graph_min"] and m["graph_max"] <= 1.0
    model = keras.models.load_model(f"{run_dir}/best.keras")
    g = model.label_dependency.dense().numpy()
    assert g.shape == (5, 5)
    assert json.load(open(f"{run_dir}/partial_labels.json"))["scheme"] == "rps:0.5"
    assert np.count_nonzero(g) <= model.num_nonzero  # only the preprocessed graph's pattern is learnable
    assert float(model.lambda_colab) > 0  # calibrated on the first batch, saved with the model


def test_imcl_resumes_with_its_lambdas(store, tmp_path):
    task = toy_task(store, tmp_path, "imcl", epochs=1, task=dict(imcl_dict_size=64, imcl_k=2, imcl_refresh=3))
    task.fit(verbose=0)
    lam = float(task.load_model(task.run.run_dir, "last").lambda_colab)
    again = toy_task(store, tmp_path, "imcl", epochs=2, task=dict(imcl_dict_size=64, imcl_k=2, imcl_refresh=3))
    again.fit(resume=True, verbose=0)
    assert float(again.load_model(again.run.run_dir, "last").lambda_colab) == pytest.approx(lam)
    rows = list(csv.DictReader(open(f"{again.run.run_dir}/history.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]


def test_imcl_bad_graph_flag(store, tmp_path):
    task = toy_task(store, tmp_path, "imcl", task=dict(imcl_graph="nonsense"), epochs=1)
    with pytest.raises(ValueError, match="--imcl-graph"):
        task.fit(verbose=0)
    assert not (tmp_path / "imcl").exists()  # refused before anything was written


def test_two_cpu_replicas_match_one():
    """Each replica runs the OMP of its images over the whole dictionary; the terms add up exactly."""
    rng = np.random.default_rng(3)
    c, d, n = 5, 6, 20
    x = rng.normal(size=(16, d)).astype(np.float32)
    y = rng.choice(np.array([1, 0, -1], np.int8), size=(16, c))
    dict_x = rng.normal(size=(n, d)).astype(np.float32)
    dict_y = rng.choice(np.array([1, 0, -1], np.int8), size=(n, c))
    graph = (rng.random((c, c)) < 0.5).astype(np.float32)

    def run(strategy, weights=None):
        with strategy.scope():
            keras.utils.set_random_seed(3)
            model = TrainableIMCL(c, graph=graph, feature_dim=d, k=2)
            model(tf.zeros([1, d]))
            model.compile(optimizer=keras.optimizers.SGD(0.1), loss=IMCLLoss())
            model.optimizer.build(model.variable_groups()["classifier"])
            model.attach(IMCLDictionary(dict_x, dict_y), graph_optimizer=keras.optimizers.SGD(0.05))
            if weights is not None:
                model.set_weights(weights)
            model.lambda_colab.assign(0.7)
            model.lambda_feature.assign(0.2)
        w0 = model.get_weights()
        hist = model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=1, verbose=0,
                         shuffle=False)
        return w0, hist.history, model.get_weights()

    w0, one, w_one = run(tf.distribute.MirroredStrategy(["/cpu:0"]))
    _, two, w_two = run(two_cpu_strategy(), w0)
    for k in ("loss", "logistic", "colab", "feature"):
        np.testing.assert_allclose(two[k], one[k], rtol=1e-4, err_msg=k)
    for a, b in zip(w_one, w_two):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    before = [a for a in w0 if a.shape == (d, c)]
    after = [a for a in w_one if a.shape == (d, c)]
    assert len(before) == 1 and not np.allclose(after[0], before[0])  # Theta was trained
