"""Tests for mll_tf.ops.omp.batched_omp against a plain NumPy greedy loop."""

import numpy as np
import pytest
import tensorflow as tf

from mll_tf.ops.omp import batched_omp

B, N, C, D, K = 4, 20, 6, 5, 3


def np_omp(y, f, Y, F, k, lam_l, lam_f, threshold, balance=False, tol=1e-3,
           normalize=True):
    """Straightforward per-image OMP in float64 (docs/imcl.md §2)."""
    y, f, Y, F = (np.asarray(a, np.float64) for a in (y, f, Y, F))
    if normalize:
        den = max(lam_l, lam_f) + 1e-4
        lam_l, lam_f = lam_l / den, lam_f / den
    n = Y.shape[0]
    idx = -np.ones((len(y), k), np.int64)
    coef_l = np.zeros((len(y), k))
    coef_f = np.zeros((len(y), k))
    for i in range(len(y)):
        eligible = [j for j in range(n) if np.linalg.norm(F[j] - f[i]) >= tol]
        support, r_l, r_f = [], y[i].copy(), f[i].copy()
        p_l = p_f = np.zeros(0)
        for _ in range(k):
            a, b = Y @ r_l, F @ r_f
            s_l = a ** 2 / np.sum(Y ** 2, axis=1)
            s_f = b ** 2 / np.sum(F ** 2, axis=1)
            if balance:
                s_l = s_l / max(s_l[eligible])
                s_f = s_f / max(s_f[eligible])
            score = (lam_l * s_l + lam_f * s_f) * (
                np.sign(a) * np.sign(lam_l) + np.sign(b) * np.sign(lam_f))
            best, best_score = None, -np.inf
            for j in eligible:
                if j not in support and score[j] > best_score:
                    best, best_score = j, score[j]
            if best is None or best_score < threshold:
                break
            support.append(best)
            ya, fa = Y[support], F[support]
            # p = y Y_A^T (Y_A Y_A^T)^-1, i.e. least squares of y on Y_A's rows.
            p_l = np.linalg.solve(ya @ ya.T, ya @ y[i])
            p_f = np.linalg.solve(fa @ fa.T, fa @ f[i])
            r_l = y[i] - p_l @ ya
            r_f = f[i] - p_f @ fa
        m = len(support)
        idx[i, :m] = support
        coef_l[i, :m] = p_l
        coef_f[i, :m] = p_f
    return idx, coef_l, coef_f


def _problem(seed):
    rng = np.random.default_rng(seed)
    y = rng.uniform(-0.5, 1.0, size=(B, C))
    f = rng.normal(size=(B, D))
    Y = rng.uniform(-0.5, 1.0, size=(N, C))
    F = rng.normal(size=(N, D))
    F[7] = f[1]                          # exact duplicate of image 1
    F[11] = f[2] + 2e-4                  # near-duplicate of image 2
    Y[7] = y[1]                          # would be a perfect label match
    return [a.astype(np.float32) for a in (y, f, Y, F)]


def _check(args, expected_idx=None, **kw):
    y, f, Y, F = args
    idx, cl, cf, num = (t.numpy() for t in batched_omp(y, f, Y, F, **kw))
    ref_kw = dict(k=kw["k"], lam_l=float(kw["lambda_label"]),
                  lam_f=float(kw["lambda_feature"]),
                  threshold=float(kw["threshold"]),
                  balance=kw.get("balance", False))
    ridx, rcl, rcf = np_omp(y, f, Y, F, **ref_kw)
    np.testing.assert_array_equal(idx, ridx)
    np.testing.assert_array_equal(num, (ridx >= 0).sum(1))
    np.testing.assert_allclose(cl, rcl, atol=2e-4, rtol=1e-3)
    np.testing.assert_allclose(cf, rcf, atol=2e-4, rtol=1e-3)
    assert idx.dtype == np.int32 and num.dtype == np.int32
    return idx, num


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_numpy_and_excludes_duplicates(seed):
    args = _problem(seed)
    idx, num = _check(args, k=K, lambda_label=1.0, lambda_feature=0.5,
                      threshold=1e-3)
    assert 7 not in idx[1] and 11 not in idx[2]
    assert (num > 0).all()
    # Unused slots are a suffix of -1.
    for row, m in zip(idx, num):
        assert (row[:m] >= 0).all() and (row[m:] == -1).all()
        assert len(set(row[:m])) == m


def test_threshold_stops_early():
    args = _problem(3)
    idx_all, num_all = _check(args, k=K, lambda_label=1.0, lambda_feature=0.5,
                              threshold=0.0)
    # A threshold between the scores makes some images stop before k.
    idx, num = _check(args, k=K, lambda_label=1.0, lambda_feature=0.5,
                      threshold=0.6)
    assert num.min() < K and num.sum() < num_all.sum()
    idx, num = _check(args, k=K, lambda_label=1.0, lambda_feature=0.5,
                      threshold=1e9)
    assert (num == 0).all() and (idx == -1).all()


@pytest.mark.parametrize("lam_f", [0.0, "tensor"])
def test_zero_feature_weight(lam_f):
    args = _problem(4)
    lam = tf.constant(0.0) if lam_f == "tensor" else lam_f
    idx, cl, cf, num = batched_omp(*args, k=K, lambda_label=2.0,
                                   lambda_feature=lam, threshold=1e-3)
    ridx, rcl, rcf = np_omp(*args, k=K, lam_l=2.0, lam_f=0.0, threshold=1e-3)
    np.testing.assert_array_equal(idx.numpy(), ridx)
    np.testing.assert_allclose(cl.numpy(), rcl, atol=2e-4, rtol=1e-3)
    np.testing.assert_allclose(cf.numpy(), rcf, atol=2e-4, rtol=1e-3)


def test_balance_and_label_only_weight():
    args = _problem(5)
    _check(args, k=K, lambda_label=1.0, lambda_feature=1.0, threshold=1e-3,
           balance=True)
    _check(args, k=2, lambda_label=0.0, lambda_feature=3.0, threshold=1e-3)


def test_jit_compiled_matches_eager():
    args = _problem(6)
    kw = dict(k=K, lambda_label=1.0, lambda_feature=0.5, threshold=1e-3)
    eager = batched_omp(*args, **kw)
    fn = tf.function(lambda *a: batched_omp(*a, **kw), jit_compile=True)
    compiled = fn(*[tf.constant(a) for a in args])
    np.testing.assert_array_equal(eager[0].numpy(), compiled[0].numpy())
    for a, b in zip(eager[1:3], compiled[1:3]):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_duplicate_detected_for_large_norm_features():
    # ReLU-like features, |f|^2 ~ 2e4: the matmul distance
    # |f|^2 + |F|^2 - 2<f, F> of an exact duplicate is off by ~4e-3 in float32
    # on this machine, far above tol^2 = 1e-6; the exact re-check catches it.
    rng = np.random.default_rng(7)
    f = (np.abs(rng.normal(size=(8, 2048))) * 3).astype(np.float32)
    F = (np.abs(rng.normal(size=(12, 2048))) * 3).astype(np.float32)
    F[:8] = f[::-1]
    y = rng.uniform(0, 1, size=(8, 3)).astype(np.float32)
    Y = rng.uniform(0, 1, size=(12, 3)).astype(np.float32)
    Y[:8] = y[::-1]
    idx, _, _, _ = batched_omp(y, f, Y, F, k=3, lambda_label=1.0,
                               lambda_feature=1.0, threshold=-1e30)
    idx = idx.numpy()
    for i in range(8):
        assert 7 - i not in idx[i]
    assert (idx >= 0).all()   # 11 eligible atoms each, threshold never stops


def test_gradient_is_stopped_and_bad_args():
    args = [tf.constant(a) for a in _problem(0)]
    with tf.GradientTape() as tape:
        tape.watch(args)
        out = batched_omp(*args, k=2, lambda_label=1.0, lambda_feature=1.0,
                          threshold=0.0)
        total = tf.reduce_sum(out[1]) + tf.reduce_sum(out[2])
    assert all(g is None for g in tape.gradient(total, args))
    with pytest.raises(ValueError, match="k must be"):
        batched_omp(*args, k=0, lambda_label=1.0, lambda_feature=1.0,
                    threshold=0.0)
    with pytest.raises(ValueError, match="label dimension"):
        batched_omp(args[0][:, :3], *args[1:], k=1, lambda_label=1.0,
                    lambda_feature=1.0, threshold=0.0)
