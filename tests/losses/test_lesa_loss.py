"""Tests for mll_tf.losses.lesa_loss (docs/lesa.md §3)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mll_tf.labels import to_pm1
from mll_tf.losses.lesa_loss import (
    LESALoss,
    attention_distribution_loss,
    attention_span_sum_of_squares,
    global_relevance_loss,
    ranking_loss,
)
from tests.conftest import two_cpu_strategy


# ---------------------------------------------------------------------------
# Independent NumPy versions, written from docs/lesa.md §3 in LESA's own
# {+1, -1, 0} convention with explicit loops.
# ---------------------------------------------------------------------------

def np_ranking(labels, logits, margin=1.0):
    y = to_pm1(labels)
    out = np.zeros(len(y))
    for i in range(len(y)):
        total, count = 0.0, 0
        for p in np.flatnonzero(y[i] == 1):
            for n in np.flatnonzero(y[i] == -1):
                h = max(0.0, margin + logits[i, n] - logits[i, p])
                total += h
                count += h > 0
        out[i] = total / (count + 1e-8)
    return out


def np_distribution(labels, head_logits):
    y = to_pm1(labels)
    out = np.zeros(len(y))
    for i in range(len(y)):
        ex = np.exp(head_logits[i] - head_logits[i].max(axis=0))
        pi = ex / ex.sum(axis=0)                       # softmax over heads
        p = pi[:, y[i] == 1].sum(axis=1)               # [M]
        out[i] = np.mean(p ** 2)
    return out


def np_global(labels, logits, global_logits):
    y = to_pm1(labels).astype(np.float64)
    return np.maximum(-(logits - global_logits) * y, 0.0).sum(axis=1)


def np_span_sum_of_squares(attention_logits):
    total = 0.0
    for e in attention_logits:
        e_hat = e / np.linalg.norm(e, axis=1, keepdims=True)
        g = e_hat @ e_hat.T
        for m in range(g.shape[0]):
            for k in range(g.shape[0]):
                if m != k:
                    total += g[m, k] ** 2
    return total


def _random_case(seed, b=5, c=7, m=4, r=6):
    rng = np.random.default_rng(seed)
    labels = rng.integers(-1, 2, size=(b, c)).astype(np.int8)
    labels[-1] = -1                                    # an image with no pairs
    return dict(
        labels=labels,
        logits=rng.normal(size=(b, c)).astype(np.float32),
        head_logits=rng.normal(size=(b, m, c)).astype(np.float32) * 2,
        global_logits=rng.normal(size=(b, c)).astype(np.float32),
        attention_logits=rng.normal(size=(b, m, r)).astype(np.float32),
    )


# ---------------------------------------------------------------------------
# Hand-computed values
# ---------------------------------------------------------------------------

RANK_LABELS = np.array([[1, 0, -1, 0],
                        [1, 1, 0, 0],
                        [1, 1, -1, 1]], np.int8)
RANK_LOGITS = np.array([[2.0, 0.5, 9.0, 1.5],
                        [0.0, 3.0, 0.5, -0.5],
                        [0.0, 1.0, 2.0, 3.0]], np.float32)


def test_ranking_loss_hand_computed():
    # Image 0: P={0}, N={1,3}; class 2 is unknown (ignored; as a negative it
    #   would give 1 + 9 - 2 = 8).
    #   (p0,n1): max(0, 1 + 0.5 - 2) = 0;  (p0,n3): max(0, 1 + 1.5 - 2) = 0.5
    #   V = 1 -> 0.5 / (1 + 1e-8) = 0.5
    # Image 1: P={0,1}, N={2,3}
    #   (p0,n2): 1 + 0.5 - 0 = 1.5;  (p0,n3): 1 - 0.5 - 0 = 0.5
    #   (p1,n2): 1 + 0.5 - 3 < 0;    (p1,n3): 1 - 0.5 - 3 < 0
    #   V = 2 -> (1.5 + 0.5) / 2 = 1.0
    # Image 2: no negatives -> 0.
    got = ranking_loss(RANK_LABELS, RANK_LOGITS).numpy()
    np.testing.assert_allclose(got, [0.5, 1.0, 0.0], rtol=1e-6)


def test_ranking_loss_exact_zero_margin_not_counted():
    # (p0, n1): 1 + (-1) - 0 = 0 exactly -> not a violation.
    # (p0, n2): 1 + 0.5 - 0 = 1.5 -> V = 1, loss 1.5 (2 pairs would give 0.75).
    got = ranking_loss(np.array([[1, 0, 0]], np.int8),
                       np.array([[0.0, -1.0, 0.5]], np.float32)).numpy()
    np.testing.assert_allclose(got, [1.5], rtol=1e-6)


def test_ranking_loss_margin_argument():
    # margin 2, image 1 of RANK_*: (p0,n2) 2.5, (p0,n3) 1.5, (p1,n2) -0.5 -> 0,
    # (p1,n3) 2 - 0.5 - 3 < 0 -> V=2, (2.5 + 1.5) / 2 = 2.0
    got = ranking_loss(RANK_LABELS[1:2], RANK_LOGITS[1:2], margin=2.0).numpy()
    np.testing.assert_allclose(got, [2.0], rtol=1e-6)


def test_ranking_loss_ignores_unknown_labels():
    # Changing the score of an unknown class changes nothing, value or
    # gradient; marking it absent instead does.
    logits = tf.Variable(RANK_LOGITS)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(ranking_loss(RANK_LABELS, logits))
    grad = tape.gradient(loss, logits).numpy()
    # Image 0: loss = (1 + s3 - s0) / 1 -> ds0 = -1, ds3 = +1, ds2 = 0.
    np.testing.assert_allclose(grad[0], [-1.0, 0.0, 0.0, 1.0], atol=1e-6)
    # Image 1: (1.5 + 0.5)/2 with pairs (0,2), (0,3) -> ds0 = -1, ds2 = ds3 =
    # 0.5 (V is a constant).
    np.testing.assert_allclose(grad[1], [-1.0, 0.0, 0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(grad[2], 0.0)

    shifted = RANK_LOGITS.copy()
    shifted[0, 2] = -50.0
    np.testing.assert_allclose(ranking_loss(RANK_LABELS, shifted).numpy(),
                               ranking_loss(RANK_LABELS, RANK_LOGITS).numpy())
    as_negative = RANK_LABELS.copy()
    as_negative[0, 2] = 0
    # Now (p0,n2) = 8 also violates: (0.5 + 8) / 2 = 4.25
    np.testing.assert_allclose(ranking_loss(as_negative, RANK_LOGITS)[0],
                               4.25, rtol=1e-6)


def test_attention_distribution_hand_computed():
    ln3 = np.log(3.0)
    # [B=2, M=2, C=3]; columns are classes, rows heads.
    head_logits = np.array([
        [[0.0, ln3, 5.0],
         [0.0, 0.0, -5.0]],
        [[1.0, 2.0, 0.0],
         [7.0, -2.0, 0.0]],
    ], np.float32)
    labels = np.array([[1, 1, 0],
                       [-1, 0, 1]], np.int8)
    # Image 0: pi(class 0) = (1/2, 1/2); pi(class 1) = (3/4, 1/4);
    #   class 2 absent -> ignored. P = (1/2 + 3/4, 1/2 + 1/4) = (1.25, 0.75)
    #   loss = (1.5625 + 0.5625) / 2 = 1.0625
    # Image 1: only class 2 positive, pi = (1/2, 1/2) -> (0.25 + 0.25)/2 = 0.25
    got = attention_distribution_loss(labels, head_logits).numpy()
    np.testing.assert_allclose(got, [1.0625, 0.25], rtol=1e-6)


GLOB_LABELS = np.array([[1, 0, -1, 0],
                        [0, 1, 1, -1]], np.int8)
GLOB_S = np.array([[1.0, 2.0, 3.0, -1.0],
                   [0.5, 0.0, 2.0, 7.0]], np.float32)
GLOB_G = np.array([[2.0, 1.0, 0.0, -3.0],
                   [1.0, 1.0, 1.0, 0.0]], np.float32)


def test_global_relevance_hand_computed():
    # max(0, -(s - g) * y), y = +1 present, -1 absent, 0 unknown.
    # Image 0: c0 y=+1: -(1-2) = 1;  c1 y=-1: (2-1) = 1;  c2 unknown: 0;
    #          c3 y=-1: (-1+3) = 2                        -> 4
    # Image 1: c0 y=-1: (0.5-1) < 0 -> 0;  c1 y=+1: -(0-1) = 1;
    #          c2 y=+1: -(2-1) < 0 -> 0;  c3 unknown: 0 (absent would be 7) -> 1
    got = global_relevance_loss(GLOB_LABELS, GLOB_S, GLOB_G).numpy()
    np.testing.assert_allclose(got, [4.0, 1.0], rtol=1e-6)


def test_span_sum_of_squares_hand_computed():
    # [B=3, M=2, R=3]
    e = np.array([
        [[3.0, 0.0, 4.0], [0.0, 0.0, 2.0]],   # e_hat = (.6,0,.8), (0,0,1): G01 = .8
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],   # orthogonal: G01 = 0
        [[2.0, 2.0, 0.0], [1.0, 1.0, 0.0]],   # parallel: G01 = 1
    ], np.float32)
    # S = 2 * (0.8^2) + 0 + 2 * 1^2 = 1.28 + 2 = 3.28 (both G01 and G10)
    s = attention_span_sum_of_squares(e)
    np.testing.assert_allclose(float(s), 3.28, rtol=1e-6)
    # Single device span = sqrt(3.28) = 1.811077
    span = LESALoss().span_term(e)
    np.testing.assert_allclose(float(span), np.sqrt(3.28), rtol=1e-6)


def test_total_weighting_matches_reference_log():
    # NUS-WIDE released log, iteration 0 (hbdat/cvpr20_LESA
    # results/release_zs_NUS_WIDE_log_GPU_7_1587185916d2570488/log.csv):
    # 1.11435 + 0.1 * 0.74215 + 0.001 * 5818.378 + 0.01 * 16.5616
    # = 1.11435 + 0.074215 + 5.818378 + 0.165616 = 7.172559 ~ logged 7.17256
    total = LESALoss().weighted_total(1.11435, 0.74215, 5818.378, 16.5616)
    np.testing.assert_allclose(total, 7.17256, atol=1e-5)


def test_lesa_loss_call_hand_computed():
    # Combine the hand cases: B=2, C=4, M=2, R=3.
    labels = GLOB_LABELS
    head_logits = np.stack([GLOB_S, GLOB_S - 1.0], axis=1)   # max = GLOB_S
    e = np.array([[[3.0, 0.0, 4.0], [0.0, 0.0, 2.0]],
                  [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], np.float32)
    outputs = {"logits": GLOB_S, "head_logits": head_logits,
               "global_logits": GLOB_G, "attention_logits": e}
    # Ranking, image 0: P={0}, N={1,3}: (p0,n1) 1+2-1 = 2; (p0,n3) 1-1-1 < 0
    #   -> 2 / 1 = 2.  Image 1: P={1,2}, N={0}: (p1,n0) 1+0.5-0 = 1.5;
    #   (p2,n0) 1+0.5-2 < 0 -> 1.5.  Mean = 1.75
    # Distribution: heads differ by exactly 1 for every class, so
    #   pi = (e/(e+1), 1/(e+1)) = (0.7310586, 0.2689414) per class.
    #   Image 0: 1 positive -> (0.7310586^2 + 0.2689414^2)/2
    #            = (0.5344466 + 0.0723295)/2 = 0.3033881
    #   Image 1: 2 positives, P = (2a, 2(1-a)) -> 4 * 0.3033881 = 1.2135522
    #   Mean = 0.7584701
    # Global: 4 + 1 = 5 (batch sum). Span: S = 1.28 -> sqrt = 1.1313708
    a = np.e / (np.e + 1.0)
    dist0 = (a ** 2 + (1 - a) ** 2) / 2
    expected = {"ranking": 1.75, "distribution": (dist0 + 4 * dist0) / 2,
                "global": 5.0, "span": np.sqrt(1.28)}
    np.testing.assert_allclose(expected["distribution"], 0.7584701,
                               rtol=1e-6)
    expected["total"] = (1.75 + 0.1 * expected["distribution"] + 0.001 * 5.0
                         + 0.01 * np.sqrt(1.28))
    got = LESALoss()(labels, outputs)
    assert set(got) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(float(got[key]), value, rtol=1e-6,
                                   err_msg=key)
    # global_batch_size = 4: ranking/distribution halve, global/span do not.
    got4 = LESALoss()(labels, outputs, global_batch_size=4)
    np.testing.assert_allclose(float(got4["ranking"]), 1.75 / 2, rtol=1e-6)
    np.testing.assert_allclose(float(got4["distribution"]),
                               expected["distribution"] / 2, rtol=1e-6)
    np.testing.assert_allclose(float(got4["global"]), 5.0, rtol=1e-6)
    np.testing.assert_allclose(float(got4["span"]), np.sqrt(1.28), rtol=1e-6)


# ---------------------------------------------------------------------------
# Against the NumPy versions on random inputs
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_terms_match_numpy(seed):
    case = _random_case(seed)
    np.testing.assert_allclose(
        ranking_loss(case["labels"], case["logits"]).numpy(),
        np_ranking(case["labels"], case["logits"]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        attention_distribution_loss(case["labels"],
                                    case["head_logits"]).numpy(),
        np_distribution(case["labels"], case["head_logits"]),
        rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        global_relevance_loss(case["labels"], case["logits"],
                              case["global_logits"]).numpy(),
        np_global(case["labels"], case["logits"], case["global_logits"]),
        rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        float(attention_span_sum_of_squares(case["attention_logits"])),
        np_span_sum_of_squares(case["attention_logits"]), rtol=1e-5)


def test_lesa_loss_matches_numpy():
    case = _random_case(3)
    outputs = {"logits": case["logits"], "head_logits": case["head_logits"],
               "global_logits": case["global_logits"],
               "attention_logits": case["attention_logits"]}
    got = LESALoss(distribution_weight=0.2, global_weight=0.3,
                   span_weight=0.4, margin=0.5)(case["labels"], outputs)
    rank = np_ranking(case["labels"], case["logits"], margin=0.5).mean()
    dist = np_distribution(case["labels"], case["head_logits"]).mean()
    glob = np_global(case["labels"], case["logits"],
                     case["global_logits"]).sum()
    span = np.sqrt(np_span_sum_of_squares(case["attention_logits"]))
    for key, value in [("ranking", rank), ("distribution", dist),
                       ("global", glob), ("span", span),
                       ("total", rank + 0.2 * dist + 0.3 * glob + 0.4 * span)]:
        np.testing.assert_allclose(float(got[key]), value, rtol=1e-5,
                                   err_msg=key)


# ---------------------------------------------------------------------------
# Splitting a batch over replicas
# ---------------------------------------------------------------------------

def _loss_and_grads(loss_fn, labels, variables, **kwargs):
    with tf.GradientTape() as tape:
        outputs = {k: v for k, v in variables.items()}
        result = loss_fn(labels, outputs, **kwargs)
    grads = tape.gradient(result["total"], list(variables.values()))
    return result, grads


def test_span_split_value_and_gradient_add_up():
    rng = np.random.default_rng(7)
    e = tf.Variable(rng.normal(size=(4, 3, 5)).astype(np.float32))
    loss = LESALoss()
    with tf.GradientTape() as tape:
        full = loss.span_term(e)
    full_grad = tape.gradient(full, e).numpy()

    s_tot = (attention_span_sum_of_squares(e[:2])
             + attention_span_sum_of_squares(e[2:]))
    with tf.GradientTape() as tape:
        part_a = loss.span_term(e[:2], span_sum_of_squares=s_tot,
                                num_replicas=2)
        part_b = loss.span_term(e[2:], span_sum_of_squares=s_tot,
                                num_replicas=2)
        summed = part_a + part_b
    split_grad = tape.gradient(summed, e).numpy()

    np.testing.assert_allclose(float(summed), float(full), rtol=1e-6)
    # Each half alone is sqrt(S_tot)/2 in value ...
    np.testing.assert_allclose(float(part_a), float(full) / 2, rtol=1e-6)
    np.testing.assert_allclose(split_grad, full_grad, rtol=1e-5, atol=1e-7)
    # ... while sqrt(S_half) per half would not add up (S is not additive
    # under the square root).
    naive = float(loss.span_term(e[:2]) + loss.span_term(e[2:]))
    assert abs(naive - float(full)) > 1e-3


def test_full_loss_split_over_two_replicas_adds_up():
    case = _random_case(11, b=6, c=5, m=3, r=4)
    variables = {
        "logits": tf.Variable(case["logits"]),
        "head_logits": tf.Variable(case["head_logits"]),
        "global_logits": tf.Variable(case["global_logits"]),
        "attention_logits": tf.Variable(case["attention_logits"]),
    }
    loss = LESALoss()
    labels = case["labels"]
    full, full_grads = _loss_and_grads(loss, labels, variables)

    halves = (slice(0, 3), slice(3, 6))
    s_tot = sum(attention_span_sum_of_squares(case["attention_logits"][h])
                for h in halves)
    with tf.GradientTape() as tape:
        parts = [loss(labels[h], {k: v[h] for k, v in variables.items()},
                      global_batch_size=6, span_sum_of_squares=s_tot,
                      num_replicas=2) for h in halves]
        total = parts[0]["total"] + parts[1]["total"]
    grads = tape.gradient(total, list(variables.values()))
    for key in full:
        np.testing.assert_allclose(float(parts[0][key] + parts[1][key]),
                                   float(full[key]), rtol=1e-5, err_msg=key)
    for got, want in zip(grads, full_grads):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5,
                                   atol=1e-7)


def test_span_num_replicas_from_strategy():
    # Inside a 2-replica MirroredStrategy, num_replicas defaults to 2.
    strategy = two_cpu_strategy()
    e = np.random.default_rng(0).normal(size=(4, 3, 5)).astype(np.float32)
    s_tot = float(attention_span_sum_of_squares(e))
    loss = LESALoss()

    def replica_fn(x):
        return loss.span_term(x, span_sum_of_squares=s_tot)

    dataset = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices(e).batch(4))
    per_replica = strategy.run(replica_fn, args=(next(iter(dataset)),))
    values = [float(v) for v in strategy.experimental_local_results(
        per_replica)]
    np.testing.assert_allclose(values, [np.sqrt(s_tot) / 2] * 2, rtol=1e-6)


def test_span_zero_has_finite_gradient():
    # M = 1: no off-diagonal entries, S = 0; the gradient must be 0, not NaN.
    e = tf.Variable(np.ones((2, 1, 3), np.float32))
    with tf.GradientTape() as tape:
        span = LESALoss().span_term(e)
    grad = tape.gradient(span, e).numpy()
    assert float(span) == 0.0
    np.testing.assert_array_equal(grad, 0.0)


# ---------------------------------------------------------------------------
# Serialisation
# ---------------------------------------------------------------------------

def test_lesa_loss_config_round_trip():
    loss = LESALoss(distribution_weight=0.2, global_weight=0.01,
                    span_weight=0.5, margin=2.0, name="my_lesa")
    config = loss.get_config()
    assert config["distribution_weight"] == 0.2
    assert config["global_weight"] == 0.01
    assert config["span_weight"] == 0.5
    assert config["margin"] == 2.0
    assert config["name"] == "my_lesa"
    clone = LESALoss.from_config(config)
    assert clone.get_config() == config
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, LESALoss)
    assert restored.get_config() == config


def test_lesa_loss_defaults():
    loss = LESALoss()
    assert (loss.distribution_weight, loss.global_weight, loss.span_weight,
            loss.margin) == (0.1, 0.001, 0.01, 1.0)


# ---------------------------------------------------------------------------
# Ranking loss: the dense [B, C, C] path and the sorted O(C log C) path
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["dense", "sorted"])
def test_ranking_loss_hand_computed_both_methods(method):
    # Same hand values as test_ranking_loss_hand_computed,
    # test_ranking_loss_exact_zero_margin_not_counted and
    # test_ranking_loss_margin_argument.
    np.testing.assert_allclose(
        ranking_loss(RANK_LABELS, RANK_LOGITS, method=method).numpy(),
        [0.5, 1.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(
        ranking_loss(np.array([[1, 0, 0]], np.int8),
                     np.array([[0.0, -1.0, 0.5]], np.float32),
                     method=method).numpy(), [1.5], rtol=1e-6)
    np.testing.assert_allclose(
        ranking_loss(RANK_LABELS[1:2], RANK_LOGITS[1:2], margin=2.0,
                     method=method).numpy(), [2.0], rtol=1e-6)
    # Gradients of image 0 and 1 (see test_ranking_loss_ignores_unknown_labels).
    logits = tf.Variable(RANK_LOGITS)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(ranking_loss(RANK_LABELS, logits, method=method))
    grad = tape.gradient(loss, logits).numpy()
    np.testing.assert_allclose(grad, [[-1.0, 0.0, 0.0, 1.0],
                                      [-1.0, 0.0, 0.5, 0.5],
                                      [0.0, 0.0, 0.0, 0.0]], atol=1e-6)


def _tied_case(seed, b=8, c=37):
    """Scores on a 0.5 grid (many ties, many exact-margin pairs) and labels
    with rows that are all-positive, all-negative, all-unknown, and one
    positive / one negative."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(-1, 2, size=(b, c)).astype(np.int8)
    labels[0] = 1
    labels[1] = 0
    labels[2] = -1
    labels[3] = -1
    labels[3, 4], labels[3, 9] = 1, 0
    logits = (rng.integers(-6, 7, size=(b, c)) * 0.5).astype(np.float32)
    return labels, logits


def _loss_and_grad(labels, logits, **kwargs):
    var = tf.Variable(logits)
    weights = np.arange(1.0, len(logits) + 1.0, dtype=np.float32)
    with tf.GradientTape() as tape:
        per_image = ranking_loss(labels, var, **kwargs)
        total = tf.reduce_sum(per_image * weights)
    return per_image.numpy(), tape.gradient(total, var).numpy()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("margin", [1.0, 0.5])
def test_ranking_sorted_matches_dense_with_ties(seed, margin):
    labels, logits = _tied_case(seed)
    dense, dense_grad = _loss_and_grad(labels, logits, margin=margin,
                                       method="dense")
    sorted_, sorted_grad = _loss_and_grad(labels, logits, margin=margin,
                                          method="sorted")
    np.testing.assert_allclose(sorted_, dense, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sorted_grad, dense_grad, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sorted_, np_ranking(labels, logits, margin),
                               rtol=1e-5, atol=1e-6)
    # Rows without pairs give exactly 0 and no gradient.
    np.testing.assert_array_equal(sorted_[:3], 0.0)
    np.testing.assert_array_equal(sorted_grad[:3], 0.0)
    # One pair (p=4, n=9): h = max(0, margin + s9 - s4), V in {0, 1}.
    h = max(0.0, margin + float(logits[3, 9]) - float(logits[3, 4]))
    np.testing.assert_allclose(sorted_[3], h / ((h > 0) + 1e-8), rtol=1e-6)


@pytest.mark.parametrize("seed,offset", [(4, 0.0), (5, 0.0), (6, 100.0)])
def test_ranking_sorted_matches_dense_random_continuous(seed, offset):
    # offset: scores far from 0 (the sorted path sums t_n before subtracting
    # s_p, so it must not lose precision with the magnitude of the scores).
    rng = np.random.default_rng(seed)
    labels = rng.choice([-1, 0, 1], size=(5, 300),
                        p=[0.2, 0.6, 0.2]).astype(np.int8)
    logits = (rng.normal(size=(5, 300)) * 3 + offset).astype(np.float32)
    dense, dense_grad = _loss_and_grad(labels, logits, method="dense")
    sorted_, sorted_grad = _loss_and_grad(labels, logits, method="sorted")
    np.testing.assert_allclose(sorted_, dense, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sorted_grad, dense_grad, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sorted_, np_ranking(labels, logits),
                               rtol=1e-5, atol=1e-5)
    # "auto" picks the sorted path above DENSE_RANKING_MAX_CLASSES.
    auto, _ = _loss_and_grad(labels, logits)
    np.testing.assert_array_equal(auto, sorted_)


def test_ranking_sorted_large_c_is_memory_light(monkeypatch):
    # OpenImages size: B=4, C=7186, a few positives / negatives per image;
    # the dense path (4 * 7186^2 floats = 826 MB per temporary) is disabled.
    import mll_tf.losses.lesa_loss as lesa_loss

    def no_dense(*args, **kwargs):
        raise AssertionError("dense path used for C=7186")

    monkeypatch.setattr(lesa_loss, "_ranking_loss_dense", no_dense)
    b, c = 4, 7186
    rng = np.random.default_rng(0)
    labels = np.full((b, c), -1, np.int8)
    logits = rng.normal(size=(b, c)).astype(np.float32)
    for i in range(b - 1):
        cols = rng.choice(c, size=12, replace=False)
        labels[i, cols[:4]] = 1
        labels[i, cols[4:]] = 0
    labels[b - 1, :5] = 0                             # no positives
    var = tf.Variable(logits)
    with tf.GradientTape() as tape:
        per_image = ranking_loss(labels, var)
        total = tf.reduce_sum(per_image)
    grad = tape.gradient(total, var).numpy()
    np.testing.assert_allclose(per_image.numpy(), np_ranking(labels, logits),
                               rtol=1e-5, atol=1e-6)
    # Gradient by hand per image: -cnt_p / V for positives,
    # #{p violated by n} / V for negatives, 0 elsewhere.
    want = np.zeros_like(logits)
    for i in range(b):
        pos = np.flatnonzero(labels[i] == 1)
        neg = np.flatnonzero(labels[i] == 0)
        viol = (1.0 + logits[i, neg][None, :] - logits[i, pos][:, None]) > 0
        if viol.sum():
            want[i, pos] = -viol.sum(axis=1) / viol.sum()
            want[i, neg] = viol.sum(axis=0) / viol.sum()
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-6)
    # LESALoss on the same logits uses the sorted path too.
    outputs = {"logits": logits,
               "head_logits": np.stack([logits, logits - 1.0], axis=1),
               "global_logits": logits,
               "attention_logits": np.ones((b, 1, 3), np.float32)}
    np.testing.assert_allclose(float(LESALoss()(labels, outputs)["ranking"]),
                               np_ranking(labels, logits).mean(), rtol=1e-5)


def test_ranking_sorted_xla_and_dynamic_shape():
    labels, logits = _tied_case(7, b=4, c=20)
    dense = ranking_loss(labels, logits, method="dense").numpy()
    xla = tf.function(lambda y, s: ranking_loss(y, s, method="sorted"),
                      jit_compile=True)
    np.testing.assert_allclose(xla(labels, logits).numpy(), dense, rtol=1e-5,
                               atol=1e-6)
    # C unknown when tracing: "auto" takes the sorted path (31-step search).
    dynamic = tf.function(
        lambda y, s: ranking_loss(y, s),
        input_signature=[tf.TensorSpec([None, None], tf.int8),
                         tf.TensorSpec([None, None], tf.float32)])
    np.testing.assert_allclose(dynamic(labels, logits).numpy(), dense,
                               rtol=1e-5, atol=1e-6)


def test_ranking_loss_unknown_method():
    with pytest.raises(ValueError, match="method"):
        ranking_loss(RANK_LABELS, RANK_LOGITS, method="sparse")
