"""Tests for mll_tf.data.simulation (docs/partial_labels.md §6, coco_simulation.py)."""

import json

import numpy as np
import pytest

from mll_tf.data import simulation
from mll_tf.data.simulation import (
    parse_scheme,
    partial_label_stats,
    simulate,
    simulate_fpc,
    simulate_rps,
)


def _full_labels(n=40, c=5, seed=0):
    rng = np.random.default_rng(seed)
    # class c has positive rate (c + 1) / (c + 2): very different counts
    rates = (np.arange(c) + 1) / (np.arange(c) + 2)
    y = (rng.random((n, c)) < rates).astype(np.int8)
    y[:, 0] = 0
    y[:2, 0] = 1                       # class 0: exactly 2 positives
    return y


# ---------------------------------------------------------------------------
# FPC
# ---------------------------------------------------------------------------


def test_fpc_exact_counts_and_kept_labels():
    y = _full_labels()
    out = simulate_fpc(y, 3, seed=1)
    assert out.dtype == np.int8 and out.shape == y.shape
    for c in range(y.shape[1]):
        n_pos, n_neg = int((y[:, c] == 1).sum()), int((y[:, c] == 0).sum())
        assert (out[:, c] == 1).sum() == min(3, n_pos)
        assert (out[:, c] == 0).sum() == min(3, n_neg)
    # class 0 has 2 positives: both kept
    np.testing.assert_array_equal(out[:2, 0], [1, 1])
    # every kept entry has its original label; the rest is -1
    kept = out != -1
    np.testing.assert_array_equal(out[kept], y[kept])
    assert kept.sum() == sum(min(3, int((y[:, c] == v).sum()))
                             for c in range(5) for v in (0, 1))


def test_fpc_hand_sized_example():
    y = np.array([[1, 0],
                  [1, 0],
                  [0, 0],
                  [1, 1]], np.int8)
    out = simulate_fpc(y, 1, seed=0)
    # per class: 1 positive and 1 negative kept; class 1 has one positive
    np.testing.assert_array_equal((out == 1).sum(0), [1, 1])
    np.testing.assert_array_equal((out == 0).sum(0), [1, 1])
    assert out[3, 1] == 1 and out[2, 0] == 0     # the only candidates
    np.testing.assert_array_equal(simulate_fpc(y, 0, seed=0), -np.ones_like(y))
    np.testing.assert_array_equal(simulate_fpc(y, 4, seed=0), y)


def test_fpc_deterministic_and_seed_dependent():
    y = _full_labels(n=200, c=6)
    a = simulate_fpc(y, 10, seed=7)
    np.testing.assert_array_equal(a, simulate_fpc(y, 10, seed=7))
    assert not np.array_equal(a, simulate_fpc(y, 10, seed=8))


def test_fpc_selection_is_uniform():
    # one class, 10 positives, keep 2: each positive is kept with prob 0.2
    y = np.ones((10, 1), np.int8)
    hits = np.zeros(10)
    for seed in range(500):
        hits += simulate_fpc(y, 2, seed=seed)[:, 0] == 1
    # 500 draws, p = 0.2 -> mean 100, sd ~ 8.9; 5 sd bound
    assert np.all(np.abs(hits - 100) < 45), hits


def test_fpc_keeps_input_unknowns():
    y = np.array([[1, -1],
                  [-1, 0],
                  [0, 1],
                  [1, -1]], np.int8)
    out = simulate_fpc(y, 5, seed=3)
    np.testing.assert_array_equal(out, y)       # all known entries fit
    out = simulate_fpc(y, 1, seed=3)
    assert np.all(out[y == -1] == -1)
    # class 0: 2 known positives -> 1 kept, 1 negative; class 1: 1 and 1
    np.testing.assert_array_equal((out == 1).sum(0), [1, 1])
    np.testing.assert_array_equal((out == 0).sum(0), [1, 1])


def test_fpc_errors():
    y = _full_labels()
    for bad in (-1, 2.5, "10", True):
        with pytest.raises(ValueError, match="num_per_class"):
            simulate_fpc(y, bad)
    with pytest.raises(ValueError, match="2-D"):
        simulate_fpc(y[0], 3)
    with pytest.raises(ValueError, match=r"found \[2\]"):
        simulate_fpc(y + 1, 3)
    with pytest.raises(ValueError, match="seed"):
        simulate_fpc(y, 3, seed=-4)


# ---------------------------------------------------------------------------
# RPS
# ---------------------------------------------------------------------------


def test_rps_follows_the_uniform_draw_rule(monkeypatch):
    y = _full_labels(n=30, c=7)
    y[0, 0] = -1
    expected = np.where(np.random.default_rng(5).random(y.shape) < 0.4, -1, y)
    np.testing.assert_array_equal(simulate_rps(y, 0.4, seed=5), expected)
    # the result does not depend on the row chunking
    monkeypatch.setattr(simulation, "_CHUNK_ENTRIES", 10)
    np.testing.assert_array_equal(simulate_rps(y, 0.4, seed=5), expected)


def test_rps_fraction_within_binomial_bound_and_reproducible():
    n, c, p = 20000, 5, 0.3
    y = (np.random.default_rng(0).random((n, c)) < 0.5).astype(np.int8)
    out = simulate_rps(y, p, seed=11)
    dropped = int((out == -1).sum())
    k = n * c
    sd = np.sqrt(k * p * (1 - p))                     # ~145
    assert abs(dropped - k * p) < 5 * sd
    kept = out != -1
    np.testing.assert_array_equal(out[kept], y[kept])
    np.testing.assert_array_equal(out, simulate_rps(y, p, seed=11))
    assert not np.array_equal(out, simulate_rps(y, p, seed=12))
    # per class too (n = 20000 each, sd ~ 65)
    per_class = (out == -1).sum(0)
    assert np.all(np.abs(per_class - n * p) < 5 * np.sqrt(n * p * (1 - p)))


def test_rps_edge_fractions_and_unknowns():
    y = np.array([[1, 0, -1], [0, -1, 1]], np.int8)
    np.testing.assert_array_equal(simulate_rps(y, 0.0, seed=0), y)
    np.testing.assert_array_equal(simulate_rps(y, 1.0, seed=0),
                                  -np.ones_like(y))
    for seed in range(20):
        assert np.all(simulate_rps(y, 0.5, seed=seed)[y == -1] == -1)
    for bad in (-0.1, 1.5, float("nan"), "x"):
        with pytest.raises(ValueError, match="drop_fraction"):
            simulate_rps(y, bad)


# ---------------------------------------------------------------------------
# Statistics and the scheme string
# ---------------------------------------------------------------------------


def test_partial_label_stats_values():
    full = np.array([[1, 0, 1],
                     [1, 1, 0],
                     [0, 0, -1],
                     [1, 0, 0]], np.int8)
    partial = np.array([[1, -1, -1],
                        [-1, 1, 0],
                        [0, 0, -1],
                        [-1, -1, -1]], np.int8)
    stats = partial_label_stats(full, partial)
    assert stats["num_images"] == 4 and stats["num_classes"] == 3
    per = stats["per_class"]
    assert per["positives"] == [3, 1, 1]
    assert per["negatives"] == [1, 3, 2]
    assert per["unknown_in_full"] == [0, 0, 1]
    assert per["kept_positives"] == [1, 1, 0]
    assert per["kept_negatives"] == [1, 1, 1]
    assert per["unknown"] == [2, 2, 3]
    np.testing.assert_allclose(per["kept_positive_fraction"], [1 / 3, 1, 0])
    np.testing.assert_allclose(per["kept_negative_fraction"], [1, 1 / 3, 0.5])
    np.testing.assert_allclose(per["unknown_fraction"], [0.5, 0.5, 0.75])
    np.testing.assert_allclose(per["annotated_fraction"], [0.5, 0.5, 0.25])
    ov = stats["overall"]
    assert (ov["positives"], ov["negatives"], ov["unknown_in_full"]) == (5, 6, 1)
    assert (ov["kept_positives"], ov["kept_negatives"], ov["unknown"]) == (2, 3, 7)
    np.testing.assert_allclose(
        [ov["kept_positive_fraction"], ov["kept_negative_fraction"],
         ov["unknown_fraction"], ov["annotated_fraction"]],
        [2 / 5, 3 / 6, 7 / 12, 5 / 12])
    # JSON round trip with plain Python types
    assert json.loads(json.dumps(stats)) == stats
    assert isinstance(ov["positives"], int)
    assert isinstance(ov["unknown_fraction"], float)


def test_partial_label_stats_zero_denominators_and_errors():
    full = np.array([[0], [0]], np.int8)
    stats = partial_label_stats(full, full)
    assert stats["per_class"]["kept_positive_fraction"] == [0.0]
    assert stats["overall"]["kept_negative_fraction"] == 1.0
    with pytest.raises(ValueError, match=r"partial\[1, 0\] = 1 but full"):
        partial_label_stats(full, np.array([[0], [1]]))
    with pytest.raises(ValueError, match="shapes differ"):
        partial_label_stats(full, np.zeros((3, 1)))


@pytest.mark.parametrize("text,expected", [
    ("none", ("none", None)), ("NONE", ("none", None)),
    ("fpc:1000", ("fpc", 1000)), (" fpc : 5 ", ("fpc", 5)),
    ("fix_per_class:7", ("fpc", 7)), ("rps:0.5", ("rps", 0.5)),
    ("random_per_sample:0", ("rps", 0.0)), ("rps:1", ("rps", 1.0)),
])
def test_parse_scheme(text, expected):
    assert parse_scheme(text) == expected


@pytest.mark.parametrize("text", ["", "fpc", "fpc:-1", "fpc:1.5", "fpc:1e3",
                                  "rps", "rps:1.5", "rps:-0.1", "rps:nan",
                                  "rps:abc", "none:3", "random:0.5", None, 5])
def test_parse_scheme_errors(text):
    with pytest.raises(ValueError, match="expected 'none', 'fpc:<N>'"):
        parse_scheme(text)


def test_simulate_dispatch_and_stats():
    y = _full_labels(n=50, c=4)
    part, stats = simulate(y, "fpc:3", seed=2)
    np.testing.assert_array_equal(part, simulate_fpc(y, 3, seed=2))
    assert stats["scheme"] == "fpc:3" and stats["seed"] == 2
    assert stats["per_class"]["kept_positives"] == [
        min(3, int((y[:, c] == 1).sum())) for c in range(4)]
    part, stats = simulate(y, "rps:0.25", seed=2)
    np.testing.assert_array_equal(part, simulate_rps(y, 0.25, seed=2))
    assert stats["scheme"] == "rps:0.25"
    assert stats["overall"]["unknown"] == int((part == -1).sum())
    part, stats = simulate(y, "none")
    np.testing.assert_array_equal(part, y)
    assert part is not y and stats["overall"]["unknown_fraction"] == 0.0
    json.dumps(stats)
    with pytest.raises(ValueError, match="bad partial-label scheme 'fpc:x'"):
        simulate(y, "fpc:x")
