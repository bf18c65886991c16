"""The ml_decoder / ml_gcn / linear_head Tasks: learning, AAM probabilities, the GCN's inputs, options."""

import csv
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from mll_tf.tasks import get_task
from mll_tf.tasks.ml_heads import ScaledInputLoss, TrainableMLHead, parse_scale
from tests.conftest import TOY_NAMES as NAMES
from tests.conftest import two_cpu_strategy
from tests.helpers import fit_on, toy_task

R, D = 4, 8
SMALL_DECODER = dict(decoder_dim=16, decoder_ffn=32, decoder_heads=2)


def _task(store, tmp_path, method, loss, run_name=None, run=None, **task):
    if method == "ml_decoder":
        task = {**SMALL_DECODER, **task}
    return toy_task(store, tmp_path, method, run_name=run_name or f"{method}_{loss}", **{"epochs": 3, **(run or {})},
                    task=dict(loss=loss, **task))


@pytest.mark.parametrize("loss", ["asl", "aam"])
@pytest.mark.parametrize("method", ["linear_head", "ml_gcn", "ml_decoder"])
def test_each_head_and_loss_learns(toy_store, tmp_path, method, loss):
    task = _task(toy_store, tmp_path, method, loss)
    metrics = task.fit(verbose=0)
    rows = list(csv.DictReader(open(f"{task.run.run_dir}/history.csv")))
    assert len(rows) == 3 and float(rows[-1]["loss"]) < float(rows[0]["loss"])
    assert metrics["val_mAP"] > 0.7  # separable toy data; chance is ~0.35
    model = task.load_model(task.run.run_dir)
    assert isinstance(model, TrainableMLHead) and model.num_classes == len(NAMES)
    assert model.head.cosine == (loss == "aam")


def test_aam_outputs_are_scaled_cosines_and_probabilities_their_sigmoid(toy_store, tmp_path):
    """linear_head + AAM: logits = s * cos (cos in [-1, 1]); infer's probabilities = sigmoid(s * cos)."""
    from mll_tf.losses.aam import AMBinaryLoss

    task = _task(toy_store, tmp_path, "linear_head", "aam", aam_scale="11")
    task.fit(verbose=0)
    model = task.load_model(task.run.run_dir)
    assert model.scale == 11.0
    x = np.random.default_rng(0).normal(size=(6, R, D)).astype(np.float32)
    # independent cosine: mean-pooled features against the classifier's columns
    w = model.head.classifier.kernel.numpy().astype(np.float64)
    f = x.mean(1).astype(np.float64)
    cos = (f / np.linalg.norm(f, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0, keepdims=True))
    np.testing.assert_allclose(model(x).numpy(), 11.0 * cos, rtol=1e-5, atol=1e-5)
    probs = task.predictor(task.run.run_dir).score(x)
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-11.0 * cos)), rtol=1e-5, atol=1e-6)
    assert not np.allclose(probs, 1 / (1 + np.exp(-cos)), atol=1e-2)  # not sigmoid of the raw cosine
    # the compiled loss sees the cosines
    y = np.random.default_rng(1).choice(np.array([1, 0, -1], np.int8), size=(6, len(NAMES)))
    loss = task.build_loss()
    assert isinstance(loss, ScaledInputLoss) and loss.inner.s == 11.0
    want = AMBinaryLoss(s=11.0, m=0.0, k=0.7, gamma_pos=0.0, gamma_neg=0.0, reduction="none")(
        y, tf.constant(cos, tf.float32))
    np.testing.assert_allclose(loss(y, model(x)).numpy(), want.numpy(), rtol=1e-5)


def test_aam_scale_auto_is_compute_s(toy_store, tmp_path):
    task = _task(toy_store, tmp_path, "linear_head", "aam", aam_scale="auto")
    task.label_names = NAMES
    assert task.scale() == 7.0  # min(max(sqrt(5) ln(5 - 1), 7), 30) = max(3.10, 7)
    task.label_names = [f"c{i}" for i in range(1000)]
    assert task.scale() == pytest.approx(math.sqrt(5) * math.log(999))  # 15.44
    assert _task(toy_store, tmp_path, "linear_head", "asl").scale() == 1.0
    assert parse_scale(" 17 ") == 17.0 and parse_scale("AUTO") is None
    for bad in ("0", "-3", "big", "nan"):
        with pytest.raises(ValueError, match="--aam-scale"):
            parse_scale(bad)


def test_ml_gcn_uses_training_labels_and_glove_rows_in_label_order(toy_store, tmp_path):
    from mll_tf.data.word_vectors import load_word_vectors
    from mll_tf.models.ml_gcn import gcn_adjacency
    from mll_tf.tasks.multilabel import read_ids_and_labels

    task = _task(toy_store, tmp_path, "ml_gcn", "asl", run=dict(partial_labels="rps:0.5"), graph_threshold=0.15)
    task.check()
    task.prepare(task.run.run_dir)
    model = task.build_model()
    _, full = read_ids_and_labels(task.features_dir("train"))
    assert (task.train_labels == -1).any() and (full != -1).all()  # the simulated partial labels
    adj = gcn_adjacency(task.train_labels, 0.15, 0.25)
    np.testing.assert_allclose(model.head.adjacency.numpy(), adj, rtol=1e-6)
    assert not np.allclose(adj, np.eye(len(NAMES)))
    assert not np.allclose(gcn_adjacency(full, 0.15, 0.25), adj)
    wv = load_word_vectors("glove-6b-50d")
    want = np.stack([wv.get(n) for n in NAMES])
    np.testing.assert_allclose(model.head.label_embeddings.numpy(), want, rtol=1e-6)


def test_ml_gcn_saved_graph_is_matched_by_name(toy_store, tmp_path):
    from mll_tf.graphs import label_graph
    from mll_tf.models.ml_gcn import gcn_adjacency
    from mll_tf.tasks.multilabel import read_ids_and_labels

    _, full = read_ids_and_labels(str(toy_store / "toy" / "efficientnet_lite0_8" / "train"))
    p = label_graph.conditional_probability(label_graph.cooccurrence_graph(full))
    rev = p[::-1, ::-1]  # the saved file lists the labels in reverse order
    label_graph.save_graph(str(tmp_path / "g.npz"), rev, list(reversed(NAMES)))
    task = _task(toy_store, tmp_path, "ml_gcn", "aam", graph=str(tmp_path / "g.npz"), graph_threshold=0.15)
    task.check()
    task.prepare(task.run.run_dir)
    adj = task.build_model().head.adjacency.numpy()
    np.testing.assert_allclose(adj, gcn_adjacency(full, 0.15, 0.25), rtol=1e-6)
    assert not np.allclose(adj, np.eye(len(NAMES)))


def test_ml_gcn_npy_embeddings_and_their_errors(toy_store, tmp_path):
    emb = np.arange(len(NAMES) * 3, dtype=np.float32).reshape(len(NAMES), 3) + 1
    path = tmp_path / "emb.npy"
    np.save(path, emb)
    task = _task(toy_store, tmp_path, "ml_gcn", "aam", label_embeddings=str(path), graph_threshold=0.15)
    task.check()
    task.prepare(task.run.run_dir)
    np.testing.assert_array_equal(task.build_model().head.label_embeddings.numpy(), emb)
    np.save(path, emb[:-1])
    with pytest.raises(ValueError, match=r"--label-embeddings .*emb\.npy: expected a numeric \[5, E\]"):
        task.build_head(D)
    bad = _task(toy_store, tmp_path, "ml_gcn", "aam", label_embeddings=str(tmp_path / "no.npy"))
    with pytest.raises(ValueError, match="--label-embeddings: no file"):
        bad.check()
    with pytest.raises(ValueError, match="--label-embeddings: expected 'glove' or a .npy"):
        _task(toy_store, tmp_path, "ml_gcn", "aam", label_embeddings="word2vec").check()


def test_glove_missing_words_are_refused_by_name(toy_store, tmp_path):
    task = _task(toy_store, tmp_path, "ml_gcn", "asl")
    task.label_names = ["cat", "qzxqzx", "dog"]
    with pytest.raises(ValueError, match=r"1 labels have no vector .*'qzxqzx'.*--allow-missing-embeddings"):
        task.label_embedding_rows()
    task.config.allow_missing_embeddings = True
    rows = task.label_embedding_rows()
    assert rows.shape == (3, 50) and not rows[1].any() and rows[0].any()


def test_decoder_heads_must_divide_dim(toy_store, tmp_path):
    with pytest.raises(ValueError, match="--decoder-heads 3 must divide --decoder-dim 16"):
        _task(toy_store, tmp_path, "ml_decoder", "asl", decoder_heads=3).check()


def test_decoder_queries_capped_for_few_classes(toy_store, tmp_path):
    task = _task(toy_store, tmp_path, "ml_decoder", "aam", num_queries=100)
    task.check()
    task.prepare(task.run.run_dir)
    model = task.build_model()
    assert model.head.num_queries == len(NAMES) and model.head.cosine
    assert model(np.zeros((2, R, D), np.float32)).shape == (2, len(NAMES))


def test_two_replicas_equal_one_with_the_aam_loss():
    """The AAM loss through PartialLabelSteps: per-image sums over the GLOBAL batch on 1 and 2 replicas."""
    from mll_tf.losses.aam import AMBinaryLoss
    from mll_tf.models.heads import PooledHead

    # CosineClassifier's default initializer draws from Keras' global seed generator: make a new
    # one outside both strategies (made inside one, it cannot be used under the other)
    keras.utils.set_random_seed(0)
    keras.random.uniform((1,))
    rng = np.random.default_rng(3)
    x = rng.normal(size=(8, R, D)).astype(np.float32)
    y = rng.choice(np.array([1, 0, 0, -1], np.int8), size=(8, 5))
    w0 = rng.normal(size=(D, 5)).astype(np.float32)

    def build():
        model = TrainableMLHead(PooledHead(5, cosine=True), scale=9.0, input_shape=[R, D])
        model(tf.zeros([1, R, D]))
        model.head.classifier.kernel.assign(w0)
        return model

    loss = ScaledInputLoss(AMBinaryLoss(s=9.0, m=0.1, k=0.7, reduction="none"), 9.0)
    opt = lambda: keras.optimizers.SGD(0.5)  # noqa: E731
    _, one, w1 = fit_on(tf.distribute.MirroredStrategy(["/cpu:0"]), build, loss, (x, y), opt)
    _, two, w2 = fit_on(two_cpu_strategy(), build, loss, (x, y), opt)
    # NumPy: the loss of the first global batch (per-image sums / 4)
    f = x[:4].mean(1).astype(np.float64)
    cos = (f / np.linalg.norm(f, axis=1, keepdims=True)) @ (w0 / np.linalg.norm(w0, axis=0, keepdims=True))
    t, known = (y[:4] == 1).astype(np.float64), (y[:4] != -1)
    lp = -np.logaddexp(0, -9.0 * (cos - 0.1))
    ln = -np.logaddexp(0, 9.0 * (cos + 0.1))
    first = -((0.7 / 9) * t * lp + (0.3 / 9) * (1 - t) * ln)[known].sum() / 4
    model = build()
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=loss)
    logs = model.evaluate(x[:4], y[:4], batch_size=4, verbose=0, return_dict=True)
    assert logs["loss"] == pytest.approx(first, rel=1e-5)
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-5)
    for a, b in zip(w1, w2):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert not np.allclose(w1[0], w0)


def test_registered_with_options():
    for name in ("ml_decoder", "ml_gcn", "linear_head"):
        cls = get_task(name)
        assert cls.Config().loss == "aam" and cls.supports_finetune and cls.supports_sam
    assert get_task("ml_gcn").Config().graph_threshold == 0.4
    assert get_task("ml_decoder").Config().decoder_dim == 768
