"""Partial-label trainer: every method learns on a small store; exact distributed normalisation."""

import csv
import json

import numpy as np
import pytest
import tensorflow as tf
import keras

from mll_tf.data.feature_store import FeatureStoreWriter, Manifest
from mll_tf.losses.partial import MaskedBinaryCrossentropy
from mll_tf.models.heads import MultiLabelHead
from mll_tf.training.config import TrainConfig
from mll_tf.training.multilabel_trainer import make_train_step, train_multilabel
from mll_tf.training.priors import load_prior_csv
from tests.conftest import two_cpu_strategy

NAMES = ["cat", "dog", "car", "tree", "boat"]
R, D = 4, 8


def _write_split(root, split, n, rng, centers):
    labels = (rng.random((n, len(NAMES))) < 0.35).astype(np.int8)
    labels[labels.sum(1) == 0, 0] = 1
    man = Manifest(dataset="toy", split=split, backbone="toy", weights="none", input_size=[8, 8],
                   preprocessing="synthetic", feature_shape=[R, D], feature_grid=[2, 2],
                   feature_dtype="float32", label_names=NAMES, extra_label_names={})
    with FeatureStoreWriter(root / "toy" / "toy_8" / split, man) as w:
        for i in range(n):
            f = rng.normal(scale=0.5, size=(R, D)) + labels[i] @ centers
            w.write(f"{split}/{i:04d}", f.astype(np.float32), labels[i])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(len(NAMES), D))
    for split, n in (("train", 192), ("val", 64), ("test", 64)):
        _write_split(root, split, n, rng, centers)
    return root


def _cfg(store, tmp_path, method, **kw):
    base = dict(method=method, dataset="toy", backbone="toy", input_size=8, features_root=str(store),
                run_dir=str(tmp_path / method), batch_size=16, epochs=4, learning_rate=1e-2,
                shuffle_buffer=64, log_every=5)
    base.update(kw)
    return TrainConfig(**base)


def _history(run_dir):
    return list(csv.DictReader(open(f"{run_dir}/history.csv")))


@pytest.mark.parametrize("method", ["ignore", "negative", "asl", "csl", "logistic"])
def test_each_method_loss_falls_and_learns(store, tmp_path, method):
    cfg = _cfg(store, tmp_path, method, partial_labels="rps:0.5")
    metrics = train_multilabel(cfg, progress=False)
    rows = _history(cfg.run_dir)
    assert len(rows) == 4
    assert float(rows[-1]["train/loss"]) < float(rows[0]["train/loss"])
    assert metrics["val/mAP"] > 0.7  # separable toy data; chance is ~0.35
    stats = json.load(open(f"{cfg.run_dir}/partial_labels.json"))
    assert stats["scheme"] == "rps:0.5"
    prior = load_prior_csv(f"{cfg.run_dir}/prior.csv", list(reversed(NAMES)))  # matched by name
    assert prior.shape == (5,) and np.all((prior > 0) & (prior < 1))


def test_fpc_counts_and_csl_with_prior(store, tmp_path):
    ign = _cfg(store, tmp_path, "ignore", partial_labels="fpc:10", epochs=2)
    train_multilabel(ign, progress=False)
    stats = json.load(open(f"{ign.run_dir}/partial_labels.json"))
    assert stats["per_class"]["kept_positives"] == [10] * 5  # FPC(10): N positives + N negatives per class
    assert stats["per_class"]["kept_negatives"] == [10] * 5
    assert stats["overall"]["unknown"] == 192 * 5 - 100
    csl = _cfg(store, tmp_path, "csl", partial_labels="fpc:10", epochs=2,
               prior_path=f"{ign.run_dir}/prior.csv", prior_threshold=0.3)
    m = train_multilabel(csl, progress=False)
    assert np.isfinite(m["val/mAP"])


def test_resume_continues(store, tmp_path):
    cfg = _cfg(store, tmp_path, "ignore", epochs=1)
    train_multilabel(cfg, progress=False)
    cfg2 = _cfg(store, tmp_path, "ignore", epochs=2)
    train_multilabel(cfg2, resume=True, progress=False)
    assert [r["epoch"] for r in _history(cfg.run_dir)] == ["1", "2"]
    assert keras.models.load_model(f"{cfg.run_dir}/best.keras").num_classes == 5


def test_observed_normaliser_two_replicas_equals_one():
    """logistic: sum over observed entries / #observed of the GLOBAL batch, on 1 and 2 replicas."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, R, D)).astype(np.float32)
    y = rng.choice(np.array([1, 0, -1, -1], np.int8), size=(8, 5))
    y[:4] = -1  # replica 0 sees no labels at all: a per-replica mean would be wrong
    y[4, 0] = 1

    def run(strategy):
        with strategy.scope():
            model = MultiLabelHead(5)
            model(tf.zeros([1, R, D]))
            model.set_weights([np.full((D, 5), 0.1, np.float32), np.zeros(5, np.float32)])
            opt = keras.optimizers.SGD(0.5)
            opt.build(model.trainable_variables)
        step = make_train_step(strategy, model, opt, MaskedBinaryCrossentropy("ignore", reduction="none"),
                               "observed", 8)
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
        out = step(next(iter(strategy.experimental_distribute_dataset(ds))))
        return float(out["loss"]), model.get_weights()

    one, w1 = run(tf.distribute.OneDeviceStrategy("/cpu:0"))
    two, w2 = run(two_cpu_strategy())
    logits = x.mean(1) @ np.full((D, 5), 0.1)
    known = y != -1
    t = (y == 1).astype(np.float64)
    bce = np.maximum(logits, 0) - logits * t + np.log1p(np.exp(-np.abs(logits)))
    np.testing.assert_allclose(one, bce[known].sum() / known.sum(), rtol=1e-5)
    np.testing.assert_allclose(two, one, rtol=1e-5)
    for a, b in zip(w1, w2):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
