"""Tests for mll_tf.training.schedules (docs/lesa.md §4, docs/imcl.md §5)."""

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from mll_tf.training.schedules import AdaptiveLearningRate, InverseSqrtDecay


def reference_adapt(lr0, metrics, signal_strength=0.3, patient=2,
                    limit_lr_scale=1e-3, decay=0.8):
    """Literal transcription of LESA core/utils.py::LearningRate.adapt."""
    ema_old = ema_new = 0.0
    m = 0
    lr = lr0
    limit = lr0 * limit_lr_scale
    out = []
    for x in metrics:
        ema_old = ema_new
        ema_new = ema_new * (1 - signal_strength) + x * signal_strength
        if ema_new < ema_old and lr >= limit and m <= 0:
            lr = lr * decay
            m = patient
        m -= 1
        out.append(lr)
    return out


def test_hand_computed_sequence_patience_2():
    # s = 0.3, decay 0.8, patience 2, lr0 = 1e-3:
    #  x     ema                                   drop?  m before  lr
    #  0.5   0.15                                  no     0 -> -1   1e-3
    #  0.6   0.7*0.15 + 0.18 = 0.285               no     -> -2     1e-3
    #  0.55  0.7*0.285 + 0.165 = 0.3645            no     -> -3     1e-3
    #  0.4   0.7*0.3645 + 0.12 = 0.37515           no     -> -4     1e-3
    #  0.3   0.7*0.37515 + 0.09 = 0.352605         yes    -4: decay 8e-4, m=2->1
    #  0.3   0.7*0.352605 + 0.09 = 0.3368235       yes    1: wait, m -> 0
    #  0.3   0.7*0.3368235 + 0.09 = 0.32577645     yes    0: decay 6.4e-4, m->1
    #  0.5   0.7*0.32577645 + 0.15 = 0.378043515   no     -> 0
    #  0.1   0.7*0.378043515 + 0.03 = 0.2946304605 yes    0: decay 5.12e-4, m->1
    rule = AdaptiveLearningRate(1e-3, signal_strength=0.3, patience=2)
    metrics = [0.5, 0.6, 0.55, 0.4, 0.3, 0.3, 0.3, 0.5, 0.1]
    lrs, emas, cooldowns = [], [], []
    for x in metrics:
        lrs.append(rule.adapt(x))
        emas.append(rule.ema)
        cooldowns.append(rule.cooldown)
    np.testing.assert_allclose(
        lrs, [1e-3] * 4 + [8e-4, 8e-4, 6.4e-4, 6.4e-4, 5.12e-4], rtol=1e-12)
    np.testing.assert_allclose(
        emas, [0.15, 0.285, 0.3645, 0.37515, 0.352605, 0.3368235,
               0.32577645, 0.378043515, 0.2946304605], rtol=1e-12)
    assert cooldowns == [-1, -2, -3, -4, 1, 0, 1, 0, 1]
    assert rule.num_calls == 9
    assert isinstance(lrs[0], float)


def test_matches_reference_transcription_on_random_metrics():
    rng = np.random.default_rng(0)
    metrics = np.cumsum(rng.normal(0.0, 0.05, size=200)) + 0.5
    for patience, s in [(2, 0.3), (5, 0.3), (0, 0.1)]:
        rule = AdaptiveLearningRate(1e-3, signal_strength=s,
                                    patience=patience)
        got = [rule.adapt(x) for x in metrics]
        want = reference_adapt(1e-3, metrics, signal_strength=s,
                               patient=patience)
        assert got == want
        assert min(got) < 1e-3  # the sequence does trigger decays


def test_floor_fraction_respected_and_inclusive():
    # lr0 = 1, floor = 0.5 * 1, decay 0.5, patience 0; metrics 1, 0, 0, ...
    # ema: 0.3, 0.21, 0.147, ... (drops from call 2 on).
    # call 2: lr 1 >= 0.5 -> 0.5; call 3: 0.5 >= 0.5 (inclusive) -> 0.25;
    # call 4+: 0.25 < 0.5 -> stays 0.25 (one decay below the floor).
    rule = AdaptiveLearningRate(1.0, decay=0.5, patience=0,
                                floor_fraction=0.5)
    got = [rule.adapt(x) for x in [1.0] + [0.0] * 6]
    assert got == [1.0, 0.5, 0.25, 0.25, 0.25, 0.25, 0.25]
    assert rule.floor == 0.5


def test_absolute_floor_overrides_fraction():
    # floor = 0.6 absolute: call 2: 1 >= 0.6 -> 0.5; call 3: 0.5 < 0.6 stop.
    rule = AdaptiveLearningRate(1.0, decay=0.5, patience=0,
                                floor_fraction=0.9, floor=0.6)
    got = [rule.adapt(x) for x in [1.0] + [0.0] * 4]
    assert got == [1.0, 0.5, 0.5, 0.5, 0.5]
    assert rule.floor == 0.6
    # IMCL interactive setting: signal 0.1, floor 1.25e-4 absolute.
    imcl = AdaptiveLearningRate(1e-3, signal_strength=0.1, floor=1.25e-4)
    assert imcl.floor == 1.25e-4


def test_decay_argument_is_honoured():
    # The reference hard-codes 0.8; here decay=0.5 gives 1 -> 0.5.
    rule = AdaptiveLearningRate(1.0, decay=0.5, patience=0)
    assert [rule.adapt(x) for x in (1.0, 0.0)] == [1.0, 0.5]
    default = AdaptiveLearningRate(1.0, patience=0)
    assert [default.adapt(x) for x in (1.0, 0.0)] == [1.0, 0.8]


def test_state_round_trip_through_json():
    metrics = [0.5, 0.6, 0.55, 0.4, 0.3, 0.3, 0.3, 0.5, 0.1, 0.05, 0.6]
    rule = AdaptiveLearningRate(1e-3, patience=2)
    for x in metrics[:6]:
        rule.adapt(x)
    state = json.loads(json.dumps(rule.state_dict()))
    assert state["learning_rate"] == 8e-4 and state["cooldown"] == 0
    assert state["num_calls"] == 6
    resumed = AdaptiveLearningRate(1e-3, patience=2)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == rule.state_dict()
    tail_a = [rule.adapt(x) for x in metrics[6:]]
    tail_b = [resumed.adapt(x) for x in metrics[6:]]
    assert tail_a == tail_b
    assert tail_a == reference_adapt(1e-3, metrics, patient=2)[6:]
    with pytest.raises(KeyError):
        resumed.load_state_dict({"ema": 0.1})


def test_non_finite_metric_is_ignored():
    rule = AdaptiveLearningRate(1e-3)
    rule.adapt(0.5)
    before = rule.state_dict()
    with pytest.warns(RuntimeWarning, match="non-finite"):
        assert rule.adapt(float("nan")) == 1e-3
    assert rule.state_dict() == before


def test_accepts_numpy_and_tensor_metrics_and_repr():
    rule = AdaptiveLearningRate(1e-3, floor=1.25e-4)
    rule.adapt(np.float32(0.5))
    rule.adapt(tf.constant(0.25))
    np.testing.assert_allclose(rule.ema, 0.7 * 0.15 + 0.075, rtol=1e-7)
    text = repr(rule)
    assert text.startswith("AdaptiveLearningRate(initial_learning_rate=0.001")
    assert "floor=0.000125" in text and "num_calls=2" in text
    assert "floor_fraction" in repr(AdaptiveLearningRate())


@pytest.mark.parametrize("kwargs", [
    {"initial_learning_rate": 0.0}, {"signal_strength": 0.0},
    {"signal_strength": 1.5}, {"decay": 0.0}, {"decay": 1.5},
    {"patience": -1}, {"patience": 1.5}, {"floor_fraction": -1.0},
    {"floor": -1.0}])
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        AdaptiveLearningRate(**kwargs)


def test_inverse_sqrt_decay_values():
    # lr0 / (sqrt(step) + 1): steps 0, 1, 4, 9 -> lr0, lr0/2, lr0/3, lr0/4.
    sched = InverseSqrtDecay(1e-3)
    got = [float(sched(s)) for s in (0, 1, 4, 9)]
    np.testing.assert_allclose(got, [1e-3, 5e-4, 1e-3 / 3, 2.5e-4],
                               rtol=1e-6)
    np.testing.assert_allclose(float(sched(tf.constant(2, tf.int64))),
                               1e-3 / (math.sqrt(2) + 1), rtol=1e-6)


def test_inverse_sqrt_decay_drives_optimizer_from_step_zero():
    # SGD with gradient 1: the updates are lr(0), lr(1), lr(2)
    # = 1, 1/2, 1/(sqrt 2 + 1) = 0.41421356 -> var = 10 - 1.91421356.
    opt = keras.optimizers.SGD(InverseSqrtDecay(1.0))
    var = keras.Variable(10.0)
    for _ in range(3):
        opt.apply_gradients([(tf.constant(1.0), var)])
    np.testing.assert_allclose(float(var.numpy()), 8.08578644, rtol=1e-6)


def test_inverse_sqrt_decay_serialization():
    sched = InverseSqrtDecay(0.002, name="isd")
    config = sched.get_config()
    assert config == {"initial_learning_rate": 0.002, "name": "isd"}
    assert InverseSqrtDecay.from_config(config).get_config() == config
    restored = keras.optimizers.schedules.deserialize(
        keras.optimizers.schedules.serialize(sched))
    assert isinstance(restored, InverseSqrtDecay)
    assert restored.get_config() == config
    opt = keras.optimizers.deserialize(keras.optimizers.serialize(
        keras.optimizers.RMSprop(sched)))
    assert isinstance(opt._learning_rate, InverseSqrtDecay)
    with pytest.raises(ValueError):
        InverseSqrtDecay(0.0)
