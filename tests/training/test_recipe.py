"""The training recipe: SAM, EMA, one-cycle rate, weight-decay exclusions, early stopping, mixing."""

import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from mll_tf.losses import MaskedBinaryCrossentropy
from mll_tf.tasks.partial import TrainableHead
from mll_tf.training import recipe
from mll_tf.training.config import RunConfig
from mll_tf.training.schedules import OneCycle
from tests.helpers import fit_on, toy_task


# ------------------------------------------------------------------------------------------ SAM
def _sig(z):
    return 1 / (1 + np.exp(-z))


def _np_grads(w, b, x, y):
    """Gradient of sum(BCE over known entries) / B for logits = mean_R(x) @ w + b (float64)."""
    xb = x.mean(axis=1)
    z = xb @ w + b
    d = (_sig(z) - np.where(y >= 0, y, 0)) * (y >= 0) / len(x)
    return xb.T @ d, d.sum(axis=0)


def _np_sam_run(w, b, batches, lr, rho, adaptive):
    """Plain-SGD steps with the SAM gradient, as torchreid/optim/sam.py (first_step/second_step)."""
    w, b = w.astype(np.float64), b.astype(np.float64)
    for x, y in batches:
        gw, gb = _np_grads(w, b, x, y)
        tw, tb = (np.abs(w), np.abs(b)) if adaptive else (1.0, 1.0)
        norm = math.sqrt(((tw * gw) ** 2).sum() + ((tb * gb) ** 2).sum())
        ew = (w ** 2 if adaptive else 1.0) * gw * rho / (norm + 1e-12)
        eb = (b ** 2 if adaptive else 1.0) * gb * rho / (norm + 1e-12)
        gw2, gb2 = _np_grads(w + ew, b + eb, x, y)
        w, b = w - lr * gw2, b - lr * gb2
    return w, b


def _toy_batches(seed=0, n=8, r=3, d=4, c=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, r, d)).astype(np.float32)
    y = rng.choice([1.0, 0.0, -1.0], size=(n, c), p=[0.4, 0.4, 0.2]).astype(np.float32)
    return x, y


def _kb(weights):
    """(kernel, bias) of a TrainableHead's get_weights() (the classifier's variables)."""
    m = TrainableHead(3)
    m(tf.zeros([1, 3, 4]))
    names = [v.path for v in m.weights]
    k = [i for i, n in enumerate(names) if n.endswith("classifier/kernel")][0]
    b = [i for i, n in enumerate(names) if n.endswith("classifier/bias")][0]
    return weights[k], weights[b]


def _head(rho, adaptive, seed=1):
    def build():
        m = TrainableHead(3)
        m(tf.zeros([1, 3, 4]))
        rng = np.random.default_rng(seed)
        m.classifier.set_weights([rng.normal(size=(4, 3)).astype(np.float32),
                                  rng.normal(size=(3,)).astype(np.float32)])
        m.sam_rho, m.sam_adaptive = rho, adaptive
        return m
    return build


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_step_matches_the_numpy_two_pass_update(adaptive):
    x, y = _toy_batches()
    rho, lr = 0.3, 0.5
    w0, _, w1 = fit_on(tf.distribute.get_strategy(), _head(rho, adaptive),
                       MaskedBinaryCrossentropy(mode="ignore", reduction="none"), (x, y),
                       lambda: keras.optimizers.SGD(lr))
    k0, b0 = _kb(w0)
    want_w, want_b = _np_sam_run(k0, b0, [(x[:4], y[:4]), (x[4:], y[4:])], lr, rho, adaptive)
    np.testing.assert_allclose(_kb(w1)[0], want_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_kb(w1)[1], want_b, rtol=1e-5, atol=1e-6)
    # and SAM moved the weights differently from a plain step
    _, _, plain = fit_on(tf.distribute.get_strategy(), _head(0.0, False),
                         MaskedBinaryCrossentropy(mode="ignore", reduction="none"), (x, y),
                         lambda: keras.optimizers.SGD(lr))
    assert np.abs(_kb(plain)[0] - _kb(w1)[0]).max() > 1e-3


def test_sam_two_replicas_equal_one(strategy2):
    x, y = _toy_batches(seed=4)
    args = (_head(0.2, True, seed=2), MaskedBinaryCrossentropy(mode="ignore", reduction="none"), (x, y),
            lambda: keras.optimizers.SGD(0.3, momentum=0.9))
    _, h1, one = fit_on(tf.distribute.get_strategy(), *args)
    _, h2, two = fit_on(strategy2, *args)
    for a, b in zip(one, two):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert h1["loss"][0] == pytest.approx(h2["loss"][0], rel=1e-5)


# ------------------------------------------------------------------------------------------ EMA
def test_ema_update_values():
    v = keras.Variable(np.array([1.0, -2.0], np.float32))
    opt = keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=0.9)
    opt.build([v])
    grads = [np.array([1.0, 0.5]), np.array([-2.0, 1.0]), np.array([0.5, 0.5])]
    w = np.array([1.0, -2.0])
    avg = None
    for g in grads:
        opt.apply([tf.constant(g, tf.float32)], [v])
        w = w - 0.1 * g
        avg = w.copy() if avg is None else 0.9 * avg + 0.1 * w    # the first update copies w
    np.testing.assert_allclose(recipe.ema_pairs(opt)[0][1].numpy(), avg, rtol=1e-6)
    # swapping twice is the identity; once puts the EMA in the model
    recipe.swap_ema_weights(opt)
    np.testing.assert_allclose(v.numpy(), avg, rtol=1e-6)
    recipe.swap_ema_weights(opt)
    np.testing.assert_allclose(v.numpy(), w, rtol=1e-6)


class _Record(keras.callbacks.Callback):
    """Raw weights after every step; at round end (between the EMA swaps) what validation sees."""

    def __init__(self):
        super().__init__()
        self.steps, self.validated = [], []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append([keras.ops.convert_to_numpy(v).copy() for v in self.model.trainable_variables])

    def on_epoch_end(self, epoch, logs=None):
        self.validated.append([keras.ops.convert_to_numpy(v).copy() for v in self.model.trainable_variables])


def test_validation_and_checkpoints_use_the_ema_weights(toy_store, tmp_path):
    d = 0.8
    task = toy_task(toy_store, tmp_path, "ignore", epochs=2, ema_decay=d, optimizer="sgd", learning_rate=0.1)
    rec = _Record()
    own = task.callbacks
    task.callbacks = lambda run_dir: own(run_dir) + [rec]
    task.fit(verbose=0)
    avg = None
    for w in rec.steps:
        avg = [x.astype(np.float64) for x in w] if avg is None else [d * a + (1 - d) * x for a, x in zip(avg, w)]
    assert len(rec.steps) == 24
    for a, v in zip(avg, rec.validated[-1]):
        np.testing.assert_allclose(v, a, rtol=1e-5, atol=1e-6)
    assert np.abs(rec.validated[-1][0] - rec.steps[-1][0]).max() > 1e-4   # EMA != raw
    saved = keras.models.load_model(os.path.join(str(tmp_path / "ignore"), "last.keras"), compile=False)
    for a, v in zip([keras.ops.convert_to_numpy(v) for v in saved.trainable_variables], rec.validated[-1]):
        np.testing.assert_array_equal(a, v)
    best = keras.models.load_model(os.path.join(str(tmp_path / "ignore"), "best.keras"), compile=False)
    best_w = [keras.ops.convert_to_numpy(v) for v in best.trainable_variables]
    assert any(all(np.array_equal(a, v) for a, v in zip(best_w, val)) for val in rec.validated)


class Interrupt(Exception):
    pass


class InterruptAt(keras.callbacks.Callback):
    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) >= self.step:
            raise Interrupt()


def test_resume_keeps_ema_sam_and_one_cycle_state(toy_store, tmp_path):
    kw = dict(epochs=2, backup_every=5, ema_decay=0.7, sam_rho=0.05, sam_adaptive=True, optimizer="sgd",
              lr_schedule="one_cycle", weight_decay=1e-3)
    straight = toy_task(toy_store, tmp_path, "ignore", run_name="straight", **kw)
    straight.fit(verbose=0)
    broken = toy_task(toy_store, tmp_path, "ignore", run_name="broken", **kw)
    own = broken.callbacks
    broken.callbacks = lambda run_dir: own(run_dir) + [InterruptAt(17)]
    with pytest.raises(Interrupt):
        broken.fit(verbose=0)
    toy_task(toy_store, tmp_path, "ignore", run_name="broken", **kw).fit(resume=True, verbose=0)
    a = keras.models.load_model(str(tmp_path / "straight" / "last.keras"), compile=False).get_weights()
    b = keras.models.load_model(str(tmp_path / "broken" / "last.keras"), compile=False).get_weights()
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------ one-cycle
def _torch_one_cycle(step, max_lr, total, pct, div, final_div):
    """PyTorch OneCycleLR.get_lr (two phases, cos), written from its documented algorithm."""
    initial = max_lr / div
    low = initial / final_div
    phases = [(float(pct * total) - 1, initial, max_lr), (total - 1, max_lr, low)]
    start = 0
    for i, (end, a, b) in enumerate(phases):
        if step <= end or i == len(phases) - 1:
            f = (step - start) / (end - start)
            return b + (a - b) / 2 * (math.cos(math.pi * f) + 1)
        start = end


def test_one_cycle_values():
    s = OneCycle(1.0, 100, warmup_fraction=0.2, div_factor=100, final_div_factor=1000)
    assert s(3).dtype == "float32"
    val = lambda t: float(s(t))  # noqa: E731
    assert val(0) == pytest.approx(0.01, rel=1e-6)             # max / div_factor
    assert val(19) == pytest.approx(1.0, rel=1e-6)             # peak at 0.2 * 100 - 1
    assert val(9.5) == pytest.approx((0.01 + 1.0) / 2, rel=1e-6)
    assert val(59) == pytest.approx((1.0 + 1e-5) / 2, rel=1e-6)
    assert val(99) == pytest.approx(1e-5, rel=1e-4)            # initial / final_div_factor
    assert val(150) == pytest.approx(1e-5, rel=1e-4)
    for total, pct in ((100, 0.2), (37, 0.3), (5, 0.1), (1000, 0.25)):
        sched = OneCycle(0.007, total, warmup_fraction=pct, div_factor=100, final_div_factor=1000)
        for t in sorted({0, 1, total // 3, total // 2, total - 2, total - 1} - {-1}):
            if t < 0:
                continue
            assert float(sched(t)) == pytest.approx(_torch_one_cycle(t, 0.007, total, pct, 100, 1000),
                                                    rel=1e-5), (total, pct, t)
    clone = OneCycle.from_config(s.get_config())
    assert float(clone(30)) == pytest.approx(val(30))
    with pytest.raises(ValueError):
        OneCycle(1.0, 10, warmup_fraction=1.0)


def test_run_optimizer_one_cycle_ema_and_decay_exclusions():
    run = RunConfig(optimizer="sgd", learning_rate=1.0, weight_decay=0.1, lr_schedule="one_cycle", ema_decay=0.99)
    kernel = keras.Variable(np.ones((2, 2), np.float32), name="kernel")
    bias = keras.Variable(np.ones((2,), np.float32), name="bias")
    scale = keras.Variable(np.ones((2,), np.float32), name="scale")   # 1-D, not named bias/gamma/beta
    opt = recipe.build_run_optimizer(run, 100, [kernel, bias, scale])
    assert isinstance(opt, keras.optimizers.SGD) and opt.nesterov and opt.momentum == 0.9
    assert opt.use_ema and opt.ema_momentum == pytest.approx(0.99)
    assert isinstance(opt._learning_rate, OneCycle)
    opt.build([kernel, bias, scale])
    zeros = [tf.zeros_like(v) for v in (kernel, bias, scale)]
    opt.apply(zeros, [kernel, bias, scale])
    lr0 = 0.01                                        # the one-cycle rate at step 0
    np.testing.assert_allclose(kernel.numpy(), 1 - lr0 * 0.1, rtol=1e-6)   # decayed
    np.testing.assert_array_equal(bias.numpy(), 1.0)                      # not decayed
    np.testing.assert_array_equal(scale.numpy(), 1.0)
    assert [v.name for v in recipe.decay_exclusions([kernel, bias, scale])] == ["bias", "scale"]
    plain = recipe.build_run_optimizer(RunConfig(optimizer="sgd", sgd_nesterov=False), 10, [kernel])
    assert not plain.nesterov and plain.momentum == 0.9 and not plain.use_ema
    assert float(plain.learning_rate) == pytest.approx(1e-4)


def test_run_optimizer_poly_schedule_and_plain_sgd():
    """--lr-schedule poly: lr (1 - t/T)^0.9 at the step count before the update (Puzzle-CAM's PolyOptimizer:
    0.1 * 0.5^0.9 = 0.05359 at t = T/2, 0 at T); --sgd-momentum 0: plain SGD."""
    kernel = keras.Variable(np.ones((2, 2), np.float32), name="kernel")
    opt = recipe.build_run_optimizer(RunConfig(optimizer="sgd", learning_rate=0.1, lr_schedule="poly",
                                               sgd_momentum=0.0), 4950, [kernel])
    assert opt.momentum == 0.0 and not opt.nesterov
    sched = opt._learning_rate
    assert float(sched(0)) == pytest.approx(0.1)
    assert float(sched(2475)) == pytest.approx(0.1 * 0.5 ** 0.9, rel=1e-6)
    assert float(sched(2475)) == pytest.approx(0.05359, abs=1e-5)
    assert float(sched(4950)) == 0.0
    opt.build([kernel])
    opt.iterations.assign(2475)
    opt.apply([tf.ones_like(kernel)], [kernel])       # w -= lr(t) * g, no momentum
    np.testing.assert_allclose(kernel.numpy(), 1 - 0.1 * 0.5 ** 0.9, rtol=1e-6)


# -------------------------------------------------------------------------------- early stopping
def test_early_stopping_rule_and_state():
    es = recipe.EarlyStopping("val_mAP", patience=2)
    es.set_model(keras.Sequential([keras.layers.Dense(1)]))
    es.model.stop_training = False
    es.on_train_begin()
    for epoch, v in enumerate([0.5, 0.6, 0.6, 0.55]):
        es.on_epoch_end(epoch, {"val_mAP": v})
        if epoch < 3:
            assert not es.model.stop_training, epoch
    assert es.model.stop_training and es.stopped
    state = es.state_dict()
    assert state == {"wait": 2, "stopped": True, "best": 0.6}
    again = recipe.EarlyStopping("val_mAP", patience=2)
    again.load_state_dict(state)
    again.on_train_begin()                      # a resumed run keeps the restored state
    assert again.wait == 2 and again.best == 0.6
    assert recipe.early_stopped({"callbacks": {"early_stopping": state}})


def test_early_stopping_ends_the_run_and_resume_trains_nothing(toy_store, tmp_path, capsys):
    # a rate so small that the validation mAP cannot improve after round 1
    task = toy_task(toy_store, tmp_path, "ignore", epochs=6, early_stopping_patience=2, learning_rate=1e-30,
                    optimizer="sgd")
    task.fit(verbose=0)
    rows = open(str(tmp_path / "ignore" / "history.csv")).read().strip().splitlines()
    assert len(rows) - 1 == 3                  # rounds 1 (best), 2 and 3 (no gain) -> stop
    toy_task(toy_store, tmp_path, "ignore", epochs=6, early_stopping_patience=2, learning_rate=1e-30,
             optimizer="sgd").fit(resume=True, verbose=0)
    assert "stopped early" in capsys.readouterr().out


# --------------------------------------------------------------------------------------- checks
@pytest.mark.parametrize("method,over,flag", [
    ("lesa", dict(sam_rho=0.05), "--sam-rho"),
    ("imcl", dict(ema_decay=0.99), "--ema-decay"),
    ("ignore", dict(sam_adaptive=True), "--sam-adaptive"),
    ("csl", dict(mixup=0.2), "--mixup"),
    ("ignore", dict(weight_decay=1e-4, optimizer="adam"), "--weight-decay"),
    ("ignore", dict(sgd_momentum=0.0, optimizer="adam"), "--sgd-momentum"),
    ("imcl", dict(lr_schedule="poly"), "--lr-schedule poly"),
])
def test_refused_flags_name_the_flag(toy_store, tmp_path, method, over, flag):
    task = toy_task(toy_store, tmp_path, method, **over)
    with pytest.raises(ValueError) as e:
        recipe.check_recipe(task)
    assert str(e.value).startswith(flag) and "\n" not in str(e.value)
    with pytest.raises(ValueError):
        task.fit(verbose=0)
    assert not os.path.exists(task.run.run_dir)            # refused before anything was written


# --------------------------------------------------------------------------------------- mixing
def test_mix_targets_keeps_unknowns():
    y = tf.constant([[1.0, 0.0, -1.0, 1.0]])
    yp = tf.constant([[0.0, 0.0, 1.0, -1.0]])
    out = recipe.mix_targets(y, yp, tf.constant([0.7])).numpy()
    np.testing.assert_allclose(out, [[0.7, 0.0, -1.0, -1.0]], atol=1e-7)


def test_mixup_of_features_is_consistent_and_resumable():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6 * 4, 3, 2)).astype(np.float32)
    y = rng.choice([1.0, 0.0], size=(24, 5)).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    mixed = list(recipe.mix_batches(ds, "mixup", 0.4, seed=3).as_numpy_iterator())
    for (xm, ym), (xo, yo) in zip(mixed, ds.as_numpy_iterator()):
        # each mixed row is lam * row_i + (1 - lam) * row_j for one j and the same lam as its target
        for i in range(4):
            found = False
            for j in range(4):
                d = xo[i] - xo[j]
                if np.abs(d).max() < 1e-6:
                    lam = None
                    ok = np.allclose(xm[i], xo[i], atol=1e-5)
                else:
                    lam = float(np.sum((xm[i] - xo[j]) * d) / np.sum(d * d))
                    ok = np.allclose(xm[i], lam * xo[i] + (1 - lam) * xo[j], atol=1e-5)
                if ok and (lam is None or np.allclose(ym[i], np.clip(lam * yo[i] + (1 - lam) * yo[j], 0, 1),
                                                      atol=1e-5)):
                    found = True
                    break
            assert found, (i,)
    resumed = list(recipe.mix_batches(ds.skip(2), "mixup", 0.4, seed=3, start_step=2).as_numpy_iterator())
    for (a, b), (c, d) in zip(mixed[2:], resumed):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)


def test_cutmix_of_images_pastes_a_box_and_mixes_targets_by_area():
    x = np.stack([np.full((8, 8, 3), float(i), np.float32) for i in range(4)])
    y = np.eye(4, dtype=np.float32)
    ds = tf.data.Dataset.from_tensors((x, y))
    xm, ym = next(iter(recipe.mix_batches(ds, "cutmix", 1.0, seed=1)))
    xm, ym = xm.numpy(), ym.numpy()
    for i in range(4):
        kept = float(np.mean(xm[i, ..., 0] == i))
        others = set(np.unique(xm[i])) - {float(i)}
        assert len(others) <= 1
        assert ym[i, i] == pytest.approx(kept, abs=1e-5) or others == set()
        if others:
            j = int(others.pop())
            assert ym[i, j] == pytest.approx(1 - kept, abs=1e-5)


# ------------------------------------------------------------------------------------------- CLI
def test_recipe_flags_through_the_cli(toy_store, tmp_path, capsys):
    from experiments import train

    base = ["--dataset", "toy", "--backbone", "efficientnet_lite0", "--input-size", "8", "--features-root",
            str(toy_store), "--batch-size", "16", "--epochs", "2", "--learning-rate", "0.05", "--no-progress"]
    argv = ["--method", "ignore", "--run-dir", str(tmp_path / "run"), "--optimizer", "sgd", "--nosgd-nesterov",
            "--weight-decay", "5e-4", "--sam-rho", "0.05", "--sam-adaptive", "--ema-decay", "0.9",
            "--lr-schedule", "one_cycle", "--early-stopping-patience", "5", "--mixup", "0.4", *base]
    assert train.main(argv) == 0
    import yaml

    saved = yaml.safe_load(open(tmp_path / "run" / "config.yaml"))
    assert (saved["sam_rho"], saved["sam_adaptive"], saved["ema_decay"], saved["lr_schedule"], saved["mixup"],
            saved["sgd_nesterov"]) == (0.05, True, 0.9, "one_cycle", 0.4, False)
    rows = open(tmp_path / "run" / "history.csv").read().strip().splitlines()
    assert len(rows) == 3
    capsys.readouterr()
    rc = train.main(["--method", "lesa", "--run-dir", str(tmp_path / "lesa"), "--sam-rho", "0.05", *base])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --sam-rho") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "lesa").exists()
