"""Partial-label Tasks: every method learns on a small store; exact distributed normalisation; resume."""

import csv
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from mll_tf.losses.partial import MaskedBinaryCrossentropy
from mll_tf.tasks.partial import TrainableHead
from mll_tf.training.priors import load_prior_csv
from tests.conftest import two_cpu_strategy
from tests.helpers import fit_on, toy_task

from tests.conftest import TOY_NAMES as NAMES  # noqa: E402
R, D = 4, 8


@pytest.fixture
def store(toy_store):
    return toy_store


def _history(run_dir):
    return list(csv.DictReader(open(f"{run_dir}/history.csv")))


@pytest.mark.parametrize("method", ["ignore", "negative", "asl", "csl", "logistic"])
def test_each_method_loss_falls_and_learns(store, tmp_path, method):
    task = toy_task(store, tmp_path, method, partial_labels="rps:0.5")
    metrics = task.fit(verbose=0)
    run_dir = task.run.run_dir
    rows = _history(run_dir)
    assert len(rows) == 4
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    assert metrics["val_mAP"] > 0.7  # separable toy data; chance is ~0.35
    stats = json.load(open(f"{run_dir}/partial_labels.json"))
    assert stats["scheme"] == "rps:0.5"
    prior = load_prior_csv(f"{run_dir}/prior.csv", list(reversed(NAMES)))  # matched by name
    assert prior.shape == (len(NAMES),) and np.all((prior > 0) & (prior < 1))


def test_fpc_counts_and_csl_with_prior(store, tmp_path):
    ign = toy_task(store, tmp_path, "ignore", partial_labels="fpc:10", epochs=2)
    ign.fit(verbose=0)
    stats = json.load(open(f"{ign.run.run_dir}/partial_labels.json"))
    n = len(NAMES)
    assert stats["per_class"]["kept_positives"] == [10] * n  # FPC(10): N positives + N negatives per class
    assert stats["per_class"]["kept_negatives"] == [10] * n
    assert stats["overall"]["unknown"] == 192 * n - 20 * n
    csl = toy_task(store, tmp_path, "csl", partial_labels="fpc:10", epochs=2,
                   task=dict(prior_path=f"{ign.run.run_dir}/prior.csv", prior_threshold=0.3))
    m = csl.fit(verbose=0)
    assert np.isfinite(m["val_mAP"])


def test_resume_continues(store, tmp_path):
    toy_task(store, tmp_path, "ignore", epochs=1).fit(verbose=0)
    toy_task(store, tmp_path, "ignore", epochs=2).fit(resume=True, verbose=0)
    run_dir = tmp_path / "ignore"
    assert [r["epoch"] for r in _history(run_dir)] == ["1", "2"]
    assert keras.models.load_model(f"{run_dir}/best.keras").num_classes == len(NAMES)


def test_evaluate_and_predictor(store, tmp_path):
    task = toy_task(store, tmp_path, "ignore", epochs=1)
    task.fit(verbose=0)
    rec, text = task.evaluate(task.run.run_dir, threshold=0.3)
    assert rec["threshold"] == 0.3 and 0.0 <= rec["results"]["mAP_partial"] <= 1.0
    rows = list(csv.DictReader(open(f"{task.run.run_dir}/eval_test/per_class.csv")))
    assert [r["label"] for r in rows] == NAMES
    pred = task.predictor(task.run.run_dir)
    probs = pred.score(np.zeros((2, R, D), np.float32))
    assert probs.shape == (2, len(NAMES)) and pred.is_probability and ((probs > 0) & (probs < 1)).all()


def test_observed_normaliser_two_replicas_equals_one():
    """logistic: sum over observed entries / #observed of the GLOBAL batch, on 1 and 2 replicas."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, R, D)).astype(np.float32)
    y = rng.choice(np.array([1, 0, -1, -1], np.int8), size=(8, 5))
    y[:2] = -1  # replica 0 of the first batch sees no labels at all: a per-replica mean would be wrong
    y[4, 0] = 1

    def build():
        model = TrainableHead(5, normalizer="observed")
        model(tf.zeros([1, R, D]))
        model.classifier.set_weights([np.full((D, 5), 0.1, np.float32), np.zeros(5, np.float32)])
        return model

    loss = MaskedBinaryCrossentropy("ignore", reduction="none")
    opt = lambda: keras.optimizers.SGD(0.5)  # noqa: E731
    _, one, w1 = fit_on(tf.distribute.MirroredStrategy(["/cpu:0"]), build, loss, (x, y), opt)
    _, two, w2 = fit_on(two_cpu_strategy(), build, loss, (x, y), opt)
    # NumPy: two SGD steps on the observed-entry mean of the two global batches of 4
    w, b = np.full((D, 5), 0.1), np.zeros(5)
    losses = []
    for rows in (slice(0, 4), slice(4, 8)):
        xm, yy = x[rows].mean(1).astype(np.float64), y[rows]
        logits = xm @ w + b
        known, t = (yy != -1), (yy == 1).astype(np.float64)
        bce = np.maximum(logits, 0) - logits * t + np.log1p(np.exp(-np.abs(logits)))
        losses.append(bce[known].sum() / known.sum())
        g = (1 / (1 + np.exp(-logits)) - t) * known / known.sum()
        w, b = w - 0.5 * xm.T @ g, b - 0.5 * g.sum(0)
    assert one["loss"][0] == pytest.approx(np.mean(losses), rel=1e-5)   # the round's mean
    kernel = next(a for a in w1 if a.shape == (D, 5))
    np.testing.assert_allclose(kernel, w, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-5)
    for a, b in zip(w1, w2):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_first_step_loss_is_the_observed_mean():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, R, D)).astype(np.float32)
    y = rng.choice(np.array([1, 0, -1], np.int8), size=(4, 5))
    model = TrainableHead(5, normalizer="observed")
    model(tf.zeros([1, R, D]))
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=MaskedBinaryCrossentropy("ignore", reduction="none"))
    logs = model.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)
    logits = model(x).numpy().astype(np.float64)
    known = y != -1
    t = (y == 1).astype(np.float64)
    bce = np.maximum(logits, 0) - logits * t + np.log1p(np.exp(-np.abs(logits)))
    assert logs["loss"] == pytest.approx(bce[known].sum() / known.sum(), rel=1e-5)


@pytest.mark.parametrize("method", ["csl", "asl", "ignore", "negative"])
def test_batch_normaliser_two_replicas_equals_one(method):
    """The per-image loss sums divided by the GLOBAL batch: 2 replicas give the 1-replica losses and weights."""
    from mll_tf.tasks import get_task

    rng = np.random.default_rng(4)
    x = rng.normal(size=(8, R, D)).astype(np.float32)
    y = rng.choice(np.array([1, 0, 0, -1], np.int8), size=(8, 5))
    cls = get_task(method)
    loss = cls(config=cls.Config(likelihood_topk=1)).build_loss()

    def build():
        keras.utils.set_random_seed(4)
        model = TrainableHead(5)
        model(tf.zeros([1, R, D]))
        return model

    opt = lambda: keras.optimizers.Adam(0.05)  # noqa: E731
    w0, one, w1 = fit_on(tf.distribute.MirroredStrategy(["/cpu:0"]), build, loss, (x, y), opt)
    _, two, w2 = fit_on(two_cpu_strategy(), build, loss, (x, y), opt, weights=w0)
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-5)
    for a, b in zip(w1, w2):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    kernel0 = next(a for a in w0 if a.shape == (D, 5))
    assert not np.allclose(next(a for a in w1 if a.shape == (D, 5)), kernel0)
