"""Tests for mll_tf.losses.partial (docs/partial_labels.md §1, §2)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mll_tf.losses import (
    AsymmetricLoss,
    MaskedBinaryCrossentropy,
    PartialAsymmetricLoss,
)

# ---------------------------------------------------------------------------
# Independent NumPy versions (float64, explicit loops) written from the
# formulas of docs/partial_labels.md §1 / the ASL paper.
# ---------------------------------------------------------------------------


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


def np_partial(labels, logits, mode="negative", gamma_pos=0.0, gamma_neg=1.0,
               gamma_unann=2.0, alpha_pos=1.0, alpha_neg=1.0, alpha_unann=1.0,
               clip=0.0, likelihood_topk=5, prior=None, prior_threshold=0.05):
    """Per-example P-ASL loss [B]."""
    y = np.asarray(labels, np.float64)
    p = _sigmoid(logits)
    p_neg = 1.0 - p
    if clip > 0:
        p_neg = np.minimum(p_neg + clip, 1.0)
    b, c = y.shape
    w = np.ones((b, c))
    if mode == "ignore":
        w[y == -1] = 0
    elif mode == "ignore_normalize_classes":
        for i in range(b):
            w[i] = 1.0 / (1 + np.sum(y[i] != -1)) + 1.0
        w[y == -1] = 0
    elif mode == "selective":
        if prior is not None and prior_threshold:
            for j in range(c):
                if prior[j] > prior_threshold:
                    w[:, j] = 0
            w[y != -1] = 1
        # flattened un-annotated entries, smallest p_neg first, ties by index
        flat = [(p_neg[i, j], i * c + j) for i in range(b) for j in range(c)
                if y[i, j] == -1]
        flat.sort()
        for _, f in flat[:likelihood_topk * b]:
            w[f // c, f % c] = 0
    out = np.zeros(b)
    for i in range(b):
        for j in range(c):
            if y[i, j] == 1:
                term = alpha_pos * (1 - p[i, j]) ** gamma_pos * np.log(
                    max(p[i, j], 1e-8))
            elif y[i, j] == 0:
                term = alpha_neg * (1 - p_neg[i, j]) ** gamma_neg * np.log(
                    max(p_neg[i, j], 1e-8))
            elif y[i, j] == -1:
                term = alpha_unann * (1 - p_neg[i, j]) ** gamma_unann * np.log(
                    max(p_neg[i, j], 1e-8))
            else:
                term = 0.0
            out[i] -= w[i, j] * term
    return out


def np_asl(labels, logits, gamma_pos=0.0, gamma_neg=4.0, clip=0.05, eps=1e-8,
           ignore_unknown=True):
    """Per-example ASL [B] (reference formula; soft targets allowed)."""
    y = np.asarray(labels, np.float64)
    p = _sigmoid(logits)
    out = np.zeros(len(y))
    for i in range(y.shape[0]):
        for j in range(y.shape[1]):
            t = y[i, j]
            if t < 0:
                if ignore_unknown:
                    continue
                t = 0.0
            p_m = max(p[i, j] - clip, 0.0) if clip > 0 else p[i, j]
            ce = t * np.log(max(p[i, j], eps)) + (1 - t) * np.log(
                max(1 - p_m, eps))
            # one weight for both terms (reference): 1 - pt with
            # pt = t p + (1 - t)(1 - p_m); for t in {0, 1} this is
            # (1 - p)^gamma_pos or p_m^gamma_neg.
            w = 1.0
            if gamma_pos > 0 or gamma_neg > 0:
                pt = t * p[i, j] + (1 - t) * (1 - p_m)
                w = (1 - pt) ** (gamma_pos * t + gamma_neg * (1 - t))
            out[i] -= w * ce
    return out


def _logit(p):
    p = np.asarray(p, np.float64)
    return np.log(p / (1 - p)).astype(np.float32)


# Hand example: B=2, C=4, every label kind; probabilities chosen so that the
# logs are simple numbers.
LABELS = np.array([[1, 0, -1, -1],
                   [-1, 1, 0, -1]], np.int8)
PROBS = np.array([[0.75, 0.25, 0.9, 0.1],
                  [0.5, 0.5, 0.75, 0.25]])
LOGITS = _logit(PROBS)

LN = np.log
# Per-entry terms with the defaults (gamma 0/1/2, alpha 1, clip 0):
#   positive p:      -log p
#   negative p:      -p^1 * log(1 - p)
#   un-annotated p:  -p^2 * log(1 - p)
T_POS_075 = -LN(0.75)                   # 0.287682
T_NEG_025 = -0.25 * LN(0.75)            # 0.071921
T_UN_09 = -0.81 * LN(0.1)               # 1.865094
T_UN_01 = -0.01 * LN(0.9)               # 0.001054
T_UN_05 = -0.25 * LN(0.5)               # 0.173287
T_POS_05 = -LN(0.5)                     # 0.693147
T_NEG_075 = -0.75 * LN(0.25)            # 1.039721
T_UN_025 = -0.0625 * LN(0.75)           # 0.017980


def per_example(loss, labels=LABELS, logits=LOGITS):
    return loss.call(tf.constant(labels, tf.float32),
                     tf.constant(logits)).numpy()


def _random_case(seed, b=3, c=5):
    rng = np.random.default_rng(seed)
    labels = rng.integers(-1, 2, size=(b, c)).astype(np.int8)
    logits = rng.normal(scale=2.0, size=(b, c)).astype(np.float32)
    return labels, logits


# ---------------------------------------------------------------------------
# PartialAsymmetricLoss: hand values per mode
# ---------------------------------------------------------------------------


def test_negative_mode_hand_computed():
    got = per_example(PartialAsymmetricLoss(mode="negative"))
    expected = [T_POS_075 + T_NEG_025 + T_UN_09 + T_UN_01,    # 2.225750
                T_UN_05 + T_POS_05 + T_NEG_075 + T_UN_025]    # 1.924135
    np.testing.assert_allclose(expected, [2.2257502, 1.9241349], rtol=1e-6)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_ignore_mode_hand_computed():
    got = per_example(PartialAsymmetricLoss(mode="ignore"))
    np.testing.assert_allclose(
        got, [T_POS_075 + T_NEG_025, T_POS_05 + T_NEG_075], rtol=1e-5)


def test_ignore_normalize_classes_hand_computed():
    # Two annotated entries per row: w = 1/(1 + 2) + 1 = 4/3.
    got = per_example(PartialAsymmetricLoss(mode="ignore_normalize_classes"))
    np.testing.assert_allclose(
        got, [4 / 3 * (T_POS_075 + T_NEG_025), 4 / 3 * (T_POS_05 + T_NEG_075)],
        rtol=1e-5)


def test_selective_topk_removes_highest_p_unannotated():
    # K = 1 * B = 2 un-annotated entries with the highest p over the batch:
    # p = .9 (0,2), .1 (0,3), .5 (1,0), .25 (1,3) -> (0,2) and (1,0) removed.
    got = per_example(PartialAsymmetricLoss(mode="selective",
                                            likelihood_topk=1))
    np.testing.assert_allclose(
        got, [T_POS_075 + T_NEG_025 + T_UN_01,
              T_POS_05 + T_NEG_075 + T_UN_025], rtol=1e-5)


def test_selective_topk_larger_than_unannotated_count():
    # K = 5 * 2 = 10 > 4 un-annotated entries: all removed = "ignore" mode;
    # annotated entries are never removed.
    got = per_example(PartialAsymmetricLoss(mode="selective",
                                            likelihood_topk=5))
    np.testing.assert_allclose(
        got, per_example(PartialAsymmetricLoss(mode="ignore")), rtol=1e-6)


def test_selective_ties_lower_flat_index_first():
    # All 6 entries un-annotated with p = 0.5; K = 1 * 2 = 2 -> the first two
    # in row-major order, (0,0) and (0,1), are removed.
    labels = -np.ones((2, 3), np.int8)
    logits = np.zeros((2, 3), np.float32)
    got = per_example(PartialAsymmetricLoss(mode="selective",
                                            likelihood_topk=1),
                      labels, logits)
    np.testing.assert_allclose(got, [T_UN_05, 3 * T_UN_05], rtol=1e-6)
    # A tie inside a row with a clear winner elsewhere: (1,2) has the highest
    # p; the second slot goes to the lower index (0,1) among p = .5 ties.
    logits2 = np.array([[-3.0, 0.0, 0.0], [0.0, -3.0, 2.0]], np.float32)
    w = per_example(PartialAsymmetricLoss(mode="selective",
                                          likelihood_topk=1),
                    labels, logits2)
    np.testing.assert_allclose(
        w, np_partial(labels, logits2, "selective", likelihood_topk=1),
        rtol=1e-5)
    p0 = _sigmoid(-3.0)
    np.testing.assert_allclose(
        w, [-p0 ** 2 * LN(1 - p0) + T_UN_05, T_UN_05 - p0 ** 2 * LN(1 - p0)],
        rtol=1e-5)


def test_selective_ranks_by_clipped_p_neg():
    # clip 0.3: p_neg = min(1 - p + 0.3, 1) = 1 for p = .1, .25 (these give
    # log(1) = 0 whatever their weight); K = 2 removes the two smallest
    # p_neg: (0,1) p = .8 -> .5 and (1,1) p = .6 -> .7.
    loss = PartialAsymmetricLoss(mode="selective", likelihood_topk=1, clip=0.3)
    labels = np.array([[-1, -1, 0], [-1, -1, 1]], np.int8)
    logits = _logit([[0.1, 0.8, 0.2], [0.25, 0.6, 0.7]])
    # kept: (0,2) negative p=.2 -> p_neg = 1 -> 0; (1,2) positive -log .7
    np.testing.assert_allclose(per_example(loss, labels, logits),
                               [0.0, -LN(0.7)], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        per_example(loss, labels, logits),
        np_partial(labels, logits, "selective", likelihood_topk=1, clip=0.3),
        rtol=1e-5, atol=1e-7)


def test_selective_prior_threshold():
    prior = [0.1, 0.6, 0.7, 0.01]       # classes 1 and 2 above 0.5
    no_topk = PartialAsymmetricLoss(mode="selective", likelihood_topk=0,
                                    prior=prior, prior_threshold=0.5)
    # Un-annotated (0,2) is in class 2 -> removed. (1,1) positive and (1,2)
    # negative are annotated -> kept although their classes are above.
    np.testing.assert_allclose(
        per_example(no_topk),
        [T_POS_075 + T_NEG_025 + T_UN_01,
         T_UN_05 + T_POS_05 + T_NEG_075 + T_UN_025], rtol=1e-5)
    # With K = 2 the top-k picks (0,2) (already removed) and (1,0): the count
    # includes the entry zeroed by the prior (reference rule).
    with_topk = PartialAsymmetricLoss(mode="selective", likelihood_topk=1,
                                      prior=prior, prior_threshold=0.5)
    np.testing.assert_allclose(
        per_example(with_topk),
        [T_POS_075 + T_NEG_025 + T_UN_01,
         T_POS_05 + T_NEG_075 + T_UN_025], rtol=1e-5)
    # Strict ">": a prior equal to the threshold keeps the class.
    eq = PartialAsymmetricLoss(mode="selective", likelihood_topk=0,
                               prior=[0.5, 0.5, 0.5, 0.5], prior_threshold=0.5)
    np.testing.assert_allclose(
        per_example(eq), per_example(PartialAsymmetricLoss(mode="negative")),
        rtol=1e-6)
    # prior_threshold 0 (or None) disables the prior step (reference
    # ``if args.prior_threshold``).
    off = PartialAsymmetricLoss(mode="selective", likelihood_topk=0,
                                prior=prior, prior_threshold=0.0)
    np.testing.assert_allclose(
        per_example(off), per_example(PartialAsymmetricLoss(mode="negative")),
        rtol=1e-6)
    # The prior is ignored outside "selective" mode.
    neg = PartialAsymmetricLoss(mode="negative", prior=prior,
                                prior_threshold=0.5)
    np.testing.assert_allclose(
        per_example(neg), per_example(PartialAsymmetricLoss(mode="negative")),
        rtol=1e-6)


@pytest.mark.parametrize("mode", ["negative", "ignore",
                                  "ignore_normalize_classes", "selective"])
@pytest.mark.parametrize("clip", [0.0, 0.05])
def test_modes_match_numpy(mode, clip):
    labels, logits = _random_case(3)
    kw = dict(gamma_pos=1.0, gamma_neg=3.0, gamma_unann=4.0, alpha_pos=1.5,
              alpha_neg=0.5, alpha_unann=2.0, clip=clip, likelihood_topk=1,
              prior=[0.2, 0.8, 0.4, 0.9, 0.1], prior_threshold=0.5)
    got = per_example(PartialAsymmetricLoss(mode=mode, **kw), labels, logits)
    np.testing.assert_allclose(got, np_partial(labels, logits, mode, **kw),
                               rtol=1e-5, atol=1e-7)


def test_log_clamp_at_1e8():
    # Positive with logit -40: p ~ 4e-18 -> log(max(p, 1e-8)) = log(1e-8).
    loss = PartialAsymmetricLoss(mode="negative")
    got = per_example(loss, np.array([[1]], np.int8),
                      np.array([[-40.0]], np.float32))
    np.testing.assert_allclose(got, [-np.log(1e-8)], rtol=1e-6)


def test_int_and_float_labels_agree():
    loss = PartialAsymmetricLoss(mode="selective", likelihood_topk=1)
    a = loss(LABELS, LOGITS)
    b = loss(LABELS.astype(np.float32), LOGITS)
    c = loss(tf.constant(LABELS, tf.int32), LOGITS)
    np.testing.assert_allclose([float(a), float(b)], float(c), rtol=1e-7)


# ---------------------------------------------------------------------------
# Gradients: the focusing factor and the weights are constants
# ---------------------------------------------------------------------------


def _analytic_partial_grad(labels, logits, w, clip, **kw):
    """dL/dz with the focusing factor f and the weights w held constant."""
    y = labels.astype(np.float64)
    p = _sigmoid(logits)
    p_neg = 1 - p
    if clip > 0:
        p_neg = np.minimum(p_neg + clip, 1.0)
    pos, neg, un = (y == 1), (y == 0), (y == -1)
    f = np.where(pos, (1 - p) ** kw["gamma_pos"],
                 np.where(neg, (1 - p_neg) ** kw["gamma_neg"],
                          (1 - p_neg) ** kw["gamma_unann"]))
    dlog_pos = 1 - p                                 # d log p / dz
    # d log p_neg / dz = -p (1 - p) / p_neg while not clamped at 1, else 0
    dlog_neg = np.where(p_neg < 1.0, -p * (1 - p) / p_neg, 0.0)
    g = (kw["alpha_pos"] * pos * dlog_pos
         + (kw["alpha_neg"] * neg + kw["alpha_unann"] * un) * dlog_neg)
    return -w * f * g


@pytest.mark.parametrize("mode", ["negative", "ignore",
                                  "ignore_normalize_classes", "selective"])
def test_focusing_weight_has_no_gradient(mode):
    labels, logits = _random_case(5, b=2, c=4)
    kw = dict(gamma_pos=1.0, gamma_neg=2.0, gamma_unann=3.0, alpha_pos=1.0,
              alpha_neg=0.7, alpha_unann=1.3)
    loss = PartialAsymmetricLoss(mode=mode, clip=0.05, likelihood_topk=1, **kw)
    z = tf.Variable(logits)
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(loss.call(tf.constant(labels, tf.float32), z))
    grad = tape.gradient(total, z).numpy()
    # the mode weights w, from the NumPy rule
    y = labels.astype(np.float64)
    if mode == "negative":
        w = np.ones_like(y)
    elif mode == "ignore":
        w = (y != -1).astype(float)
    elif mode == "ignore_normalize_classes":
        w = (1 / (1 + (y != -1).sum(1, keepdims=True)) + 1) * (y != -1)
    else:
        p_neg = np.minimum(1 - _sigmoid(logits) + 0.05, 1)
        w = np.ones_like(y)
        flat = sorted((p_neg.flat[f], f) for f in np.flatnonzero(y == -1))
        for _, f in flat[:2]:
            w.flat[f] = 0
    expected = _analytic_partial_grad(labels, logits, w, 0.05, **kw)
    np.testing.assert_allclose(grad, expected, rtol=2e-4, atol=1e-6)


# ---------------------------------------------------------------------------
# Reduction, prior handling, errors, config
# ---------------------------------------------------------------------------


def test_reduction_is_mean_over_batch_of_class_sums():
    loss = PartialAsymmetricLoss(mode="negative")
    per = per_example(loss)
    # reference: sum over batch and classes; here / B.
    np.testing.assert_allclose(float(loss(LABELS, LOGITS)), per.sum() / 2,
                               rtol=1e-6)
    # batch-size independent: the batch repeated twice gives the same value
    np.testing.assert_allclose(
        float(loss(np.tile(LABELS, (2, 1)), np.tile(LOGITS, (2, 1)))),
        float(loss(LABELS, LOGITS)), rtol=1e-6)
    none = PartialAsymmetricLoss(mode="negative", reduction="none")
    np.testing.assert_allclose(none(LABELS, LOGITS).numpy(), per, rtol=1e-6)
    np.testing.assert_allclose(
        float(tf.nn.compute_average_loss(none(LABELS, LOGITS),
                                         global_batch_size=4)),
        per.sum() / 4, rtol=1e-6)


def test_compiled_step_sees_set_prior():
    loss = PartialAsymmetricLoss(mode="selective", likelihood_topk=0,
                                 prior=[0.0, 0.0, 0.0, 0.0],
                                 prior_threshold=0.5)
    step = tf.function(lambda y, z: loss(y, z))
    y = tf.constant(LABELS, tf.float32)
    z = tf.constant(LOGITS)
    full = float(step(y, z))
    loss.set_prior([0.1, 0.6, 0.7, 0.01])
    after = float(step(y, z))
    np.testing.assert_allclose(full, (2.2257502 + 1.9241349) / 2, rtol=1e-5)
    np.testing.assert_allclose(after, (2.2257502 - T_UN_09 + 1.9241349) / 2,
                               rtol=1e-5)
    np.testing.assert_allclose(loss.prior, [0.1, 0.6, 0.7, 0.01], rtol=1e-7)


def test_selective_under_xla_matches_eager():
    loss = PartialAsymmetricLoss(mode="selective", likelihood_topk=1)
    labels, logits = _random_case(11, b=4, c=6)
    xla = tf.function(lambda y, z: loss.call(y, z), jit_compile=True)
    np.testing.assert_allclose(
        xla(tf.constant(labels, tf.float32), tf.constant(logits)).numpy(),
        np_partial(labels, logits, "selective", likelihood_topk=1),
        rtol=1e-5, atol=1e-7)


def test_partial_loss_errors():
    with pytest.raises(ValueError, match="unknown mode 'selectve'"):
        PartialAsymmetricLoss(mode="selectve")
    with pytest.raises(ValueError, match="gamma_neg"):
        PartialAsymmetricLoss(gamma_neg=-1)
    with pytest.raises(ValueError, match="clip"):
        PartialAsymmetricLoss(clip=1.5)
    with pytest.raises(ValueError, match="likelihood_topk"):
        PartialAsymmetricLoss(likelihood_topk=-1)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        PartialAsymmetricLoss(prior=[0.1, 1.2])
    with pytest.raises(ValueError, match="1-D"):
        PartialAsymmetricLoss(prior=[[0.1, 0.2]])
    loss = PartialAsymmetricLoss(mode="selective", prior=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="prior has 3 classes but y_pred has 4"):
        loss(LABELS, LOGITS)
    with pytest.raises(ValueError, match="has 3 classes, the new one 4"):
        loss.set_prior([0.1, 0.2, 0.3, 0.4])


def test_partial_loss_config_round_trip():
    loss = PartialAsymmetricLoss(mode="selective", gamma_pos=1.0,
                                 gamma_neg=3.0, gamma_unann=4.0, clip=0.05,
                                 likelihood_topk=2, prior=[0.1, 0.6, 0.7, 0.01],
                                 prior_threshold=0.5, reduction="sum",
                                 name="csl")
    config = loss.get_config()
    clone = PartialAsymmetricLoss.from_config(config)
    assert clone.get_config() == config
    assert config["mode"] == "selective" and config["reduction"] == "sum"
    np.testing.assert_allclose(config["prior"], [0.1, 0.6, 0.7, 0.01],
                               rtol=1e-7)
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss))
    assert isinstance(revived, PartialAsymmetricLoss)
    np.testing.assert_allclose(float(revived(LABELS, LOGITS)),
                               float(loss(LABELS, LOGITS)), rtol=1e-7)
    assert PartialAsymmetricLoss().get_config()["prior"] is None


# ---------------------------------------------------------------------------
# AsymmetricLoss
# ---------------------------------------------------------------------------


def test_asl_hand_computed():
    # gamma_pos 0, gamma_neg 4, clip 0.05, unknown removed.
    # (0,0) positive p=.75: -log .75
    # (0,1) negative p=.25: p_m = .20 -> -(.2^4) log(.8)
    # (1,1) positive p=.5: -log .5
    # (1,2) negative p=.75: p_m = .70 -> -(.7^4) log(.3)
    got = per_example(AsymmetricLoss())
    expected = [-LN(0.75) - 0.2 ** 4 * LN(0.8),
                -LN(0.5) - 0.7 ** 4 * LN(0.3)]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # ignore_unknown=False: -1 -> negative. (0,2) p=.9 -> p_m=.85,
    # (0,3) p=.1 -> .05, (1,0) p=.5 -> .45, (1,3) p=.25 -> .2
    got = per_example(AsymmetricLoss(ignore_unknown=False))
    extra = [-(0.85 ** 4) * LN(0.15) - 0.05 ** 4 * LN(0.95),
             -(0.45 ** 4) * LN(0.55) - 0.2 ** 4 * LN(0.8)]
    np.testing.assert_allclose(got, np.add(expected, extra), rtol=1e-5)


def test_asl_clip_zeroes_easy_negatives_and_eps_clamp():
    labels = np.array([[0, 0, 1]], np.float32)
    logits = _logit([[0.04, 0.05, 0.5]])
    # p <= clip -> p_m = 0: weight 0^4 = 0, log(1) = 0; only the positive.
    np.testing.assert_allclose(per_example(AsymmetricLoss(), labels, logits),
                               [-LN(0.5)], rtol=1e-5)
    # eps clamp: clip 0, negative with logit 40 -> 1 - p = 0 in float32
    # -> -(1^4) * log(1e-8)
    loss = AsymmetricLoss(clip=0.0)
    got = per_example(loss, np.array([[0]], np.int8),
                      np.array([[40.0]], np.float32))
    np.testing.assert_allclose(got, [-np.log(1e-8)], rtol=1e-6)


@pytest.mark.parametrize("ignore_unknown", [True, False])
@pytest.mark.parametrize("clip,gammas", [(0.05, (0.0, 4.0)), (0.0, (1.0, 2.0)),
                                         (0.1, (0.0, 0.0))])
def test_asl_matches_numpy(ignore_unknown, clip, gammas):
    labels, logits = _random_case(7)
    loss = AsymmetricLoss(gamma_pos=gammas[0], gamma_neg=gammas[1], clip=clip,
                          ignore_unknown=ignore_unknown)
    np.testing.assert_allclose(
        per_example(loss, labels, logits),
        np_asl(labels, logits, gammas[0], gammas[1], clip,
               ignore_unknown=ignore_unknown), rtol=1e-5, atol=1e-7)


def test_asl_soft_targets_match_numpy():
    rng = np.random.default_rng(2)
    labels = rng.uniform(size=(2, 3)).astype(np.float32)
    labels[0, 1] = -1
    logits = rng.normal(size=(2, 3)).astype(np.float32)
    loss = AsymmetricLoss(gamma_pos=1.0, gamma_neg=2.0, clip=0.05)
    np.testing.assert_allclose(
        per_example(loss, labels, logits),
        np_asl(labels, logits, 1.0, 2.0, 0.05), rtol=1e-5)


def test_asl_focusing_gradient():
    labels, logits = _random_case(9, b=2, c=4)
    y = labels.astype(np.float64)
    p = _sigmoid(logits)
    p_m = np.maximum(p - 0.05, 0.0)
    known = (y >= 0).astype(np.float64)
    # stop-gradient weight: dL/dz = -w * (t (1 - p) - (1 - t) p (1-p)/(1-p_m))
    # (the shifted log has zero gradient where p_m = 0)
    w = np.where(y == 1, (1 - p) ** 1.0, p_m ** 4.0)
    dlog = np.where(y == 1, 1 - p,
                    np.where(p_m > 0, -p * (1 - p) / (1 - p_m), 0.0))
    expected = -known * w * dlog
    z = tf.Variable(logits)
    loss = AsymmetricLoss(gamma_pos=1.0, gamma_neg=4.0, clip=0.05)
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(loss.call(tf.constant(labels, tf.float32), z))
    np.testing.assert_allclose(tape.gradient(total, z).numpy(), expected,
                               rtol=2e-4, atol=1e-6)
    # With the gradient through the weight (ASL "optimized"/DOR-ML): central
    # finite differences of the float64 NumPy loss.
    loss_g = AsymmetricLoss(gamma_pos=1.0, gamma_neg=4.0, clip=0.05,
                            disable_focal_gradient=False)
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(loss_g.call(tf.constant(labels, tf.float32), z))
    grad = tape.gradient(total, z).numpy()
    numeric = np.zeros_like(y)
    h = 1e-5
    for idx in np.ndindex(*y.shape):
        up, down = logits.astype(np.float64), logits.astype(np.float64)
        up[idx] += h
        down[idx] -= h
        numeric[idx] = (np_asl(labels, up, 1.0, 4.0, 0.05).sum()
                        - np_asl(labels, down, 1.0, 4.0, 0.05).sum()) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-5)
    assert not np.allclose(grad, expected, atol=1e-4)


def test_asl_config_and_errors():
    loss = AsymmetricLoss(gamma_pos=1.0, gamma_neg=3.0, clip=0.1, eps=1e-6,
                          ignore_unknown=False, disable_focal_gradient=False)
    config = loss.get_config()
    assert AsymmetricLoss.from_config(config).get_config() == config
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss))
    assert isinstance(revived, AsymmetricLoss) and revived.clip == 0.1
    with pytest.raises(ValueError, match="clip"):
        AsymmetricLoss(clip=-0.1)
    with pytest.raises(ValueError, match="gammas"):
        AsymmetricLoss(gamma_neg=-2)
    with pytest.raises(ValueError, match="eps"):
        AsymmetricLoss(eps=0)


# ---------------------------------------------------------------------------
# MaskedBinaryCrossentropy
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["ignore", "negative"])
def test_bce_fully_labelled_matches_keras(mode):
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, size=(3, 5)).astype(np.float32)
    logits = rng.normal(scale=3.0, size=(3, 5)).astype(np.float32)
    keras_bce = keras.losses.BinaryCrossentropy(from_logits=True)
    ours = MaskedBinaryCrossentropy(mode=mode)
    # keras averages over classes, ours sums: factor C = 5.
    np.testing.assert_allclose(float(ours(labels, logits)),
                               5 * float(keras_bce(labels, logits)), rtol=1e-5)


def test_bce_modes_hand_computed():
    # BCE per entry: positive p -> -log p; negative p -> -log(1 - p).
    ign = per_example(MaskedBinaryCrossentropy(mode="ignore"))
    np.testing.assert_allclose(
        ign, [-LN(0.75) - LN(0.75), -LN(0.5) - LN(0.25)], rtol=1e-5)
    neg = per_example(MaskedBinaryCrossentropy(mode="negative"))
    np.testing.assert_allclose(
        neg, [ign[0] - LN(0.1) - LN(0.9), ign[1] - LN(0.5) - LN(0.75)],
        rtol=1e-5)
    # negative == Keras BCE with -1 -> 0
    as_zero = np.where(LABELS < 0, 0, LABELS).astype(np.float32)
    keras_bce = keras.losses.BinaryCrossentropy(from_logits=True)
    np.testing.assert_allclose(
        float(MaskedBinaryCrossentropy(mode="negative")(LABELS, LOGITS)),
        4 * float(keras_bce(as_zero, LOGITS)), rtol=1e-5)


def test_bce_stable_for_large_logits_and_config():
    got = per_example(MaskedBinaryCrossentropy(),
                      np.array([[1, 0]], np.int8),
                      np.array([[-100.0, 100.0]], np.float32))
    np.testing.assert_allclose(got, [200.0], rtol=1e-6)
    loss = MaskedBinaryCrossentropy(mode="negative", reduction="sum")
    config = loss.get_config()
    assert MaskedBinaryCrossentropy.from_config(config).get_config() == config
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss))
    assert isinstance(revived, MaskedBinaryCrossentropy)
    assert revived.mode == "negative"
    with pytest.raises(ValueError, match="unknown mode 'ignored'"):
        MaskedBinaryCrossentropy(mode="ignored")


def test_losses_train_a_keras_model():
    # One compiled fit step per loss (registered, serialisable, finite).
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3)).astype(np.float32)
    y = rng.integers(-1, 2, size=(8, 4)).astype(np.float32)
    for loss in (PartialAsymmetricLoss(mode="selective", likelihood_topk=1,
                                       prior=[0.1, 0.6, 0.2, 0.9],
                                       prior_threshold=0.5),
                 AsymmetricLoss(), MaskedBinaryCrossentropy()):
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
        model.compile(optimizer="sgd", loss=loss)
        hist = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
        assert np.isfinite(hist.history["loss"][0])


def test_distributed_average_equals_single_device(strategy2):
    # reduction="none" + compute_average_loss(global batch) per replica,
    # summed over the 2 replicas = the single-device mean over the batch.
    labels, logits = _random_case(13, b=4, c=5)
    for loss in (PartialAsymmetricLoss(mode="ignore", reduction="none"),
                 PartialAsymmetricLoss(mode="selective", likelihood_topk=0,
                                       prior=[0.1, 0.9, 0.2, 0.8, 0.3],
                                       prior_threshold=0.5, reduction="none"),
                 AsymmetricLoss(reduction="none"),
                 MaskedBinaryCrossentropy(reduction="none")):
        ds = tf.data.Dataset.from_tensor_slices(
            (labels.astype(np.float32), logits)).batch(4)
        dist = strategy2.experimental_distribute_dataset(ds)

        @tf.function
        def step(batch):
            def replica_fn(y, z):
                return tf.nn.compute_average_loss(loss(y, z),
                                                  global_batch_size=4)
            per = strategy2.run(replica_fn, args=batch)
            return strategy2.reduce(tf.distribute.ReduceOp.SUM, per, axis=None)

        got = float(step(next(iter(dist))))
        np.testing.assert_allclose(got, float(np.mean(loss(labels, logits))),
                                   rtol=1e-6)
