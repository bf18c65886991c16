"""batched_omp(prefilter=M): each image's M best atoms by the first greedy score are its candidates, then
exact OMP over them; screen_dtype="bfloat16" screens in bfloat16."""

import numpy as np
import pytest
import tensorflow as tf

from mll_tf.ops.omp import batched_omp


def _random_problem(seed=0, b=6, n=40, c=12, e=9):
    rng = np.random.default_rng(seed)
    return (rng.uniform(-0.5, 1, (b, c)).astype(np.float32), rng.normal(size=(b, e)).astype(np.float32),
            rng.uniform(-0.5, 1, (n, c)).astype(np.float32), rng.normal(size=(n, e)).astype(np.float32))


@pytest.mark.parametrize("screen", ["float32", "bfloat16"])
@pytest.mark.parametrize("balance", [False, True])
@pytest.mark.parametrize("m,k", [(40, 4), (64, 4), (40, 1)])
def test_prefilter_covering_the_dictionary_equals_exact(m, k, balance, screen):
    """M >= N = 40 candidates: the candidates would be the whole dictionary, so exact OMP runs (k = 1: the
    candidates' rows are not gathered in one block)."""
    qy, qf, dy, df = _random_problem()
    qf[2] = df[7]   # an image that is in the dictionary: excluded in both paths
    kw = dict(k=k, lambda_label=1.0, lambda_feature=0.5, threshold=1e-6, balance=balance)
    exact = batched_omp(qy, qf, dy, df, **kw)
    pre = batched_omp(qy, qf, dy, df, prefilter=m, screen_dtype=screen, **kw)
    for got, want in zip(pre, exact):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    assert not np.any(exact[0].numpy()[2] == 7)


def _first_scores(qy, qf, dy, df, lam_l=1.0, lam_f=0.5):
    """The first greedy score of every atom, by the formula of batched_omp's docstring (NumPy, float64)."""
    den = max(lam_l, lam_f) + 1e-4
    lam_l, lam_f = lam_l / den, lam_f / den
    a, b = qy.astype(np.float64) @ dy.T, qf.astype(np.float64) @ df.T
    s_l, s_f = a ** 2 / (dy.astype(np.float64) ** 2).sum(1), b ** 2 / (df.astype(np.float64) ** 2).sum(1)
    return (lam_l * s_l + lam_f * s_f) * (np.sign(a) + np.sign(b))


@pytest.mark.parametrize("screen", ["float32", "bfloat16"])
@pytest.mark.parametrize("k", [3, 1])
def test_prefilter_searches_each_images_own_candidates(k, screen):
    """M = 6 of 40 atoms: image i's support is exact OMP run on the dictionary restricted to its 6 best atoms
    by the first score (worked out in NumPy), its near-duplicate removed; the first atom is exact OMP's."""
    qy, qf, dy, df = _random_problem(seed=3)
    qf[1] = df[int(np.argmax(_first_scores(qy, qf, dy, df)[1]))]   # image 1 is its own best candidate
    kw = dict(k=k, lambda_label=1.0, lambda_feature=0.5, threshold=1e-6)
    m = 6
    exact = batched_omp(qy, qf, dy, df, **kw)[0].numpy()
    pre = batched_omp(qy, qf, dy, df, prefilter=m, screen_dtype=screen, **kw)
    scores = _first_scores(qy, qf, dy, df)
    for i in range(len(qy)):
        cand = np.argsort(-scores[i], kind="stable")[:m]
        cand = np.array([j for j in cand if np.sum((df[j] - qf[i]) ** 2) >= 1e-6])
        assert len(cand) == (m - 1 if i == 1 else m)
        own = batched_omp(qy[i:i + 1], qf[i:i + 1], dy[cand], df[cand], **kw)
        want = np.where(own[0].numpy()[0] >= 0, cand[np.maximum(own[0].numpy()[0], 0)], -1)
        np.testing.assert_array_equal(pre[0].numpy()[i], want)
        np.testing.assert_allclose(pre[1].numpy()[i], own[1].numpy()[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(pre[2].numpy()[i], own[2].numpy()[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(pre[0].numpy()[:, 0], exact[:, 0])   # the first step is exact here


@pytest.mark.parametrize("screen", ["float32", "bfloat16"])
def test_prefilter_with_a_dynamic_batch_equals_the_static_batch(screen):
    """A batch size unknown when traced gives the same supports and coefficients as a static one."""
    qy, qf, dy, df = _random_problem(seed=5)
    kw = dict(k=3, lambda_label=1.0, lambda_feature=0.5, threshold=1e-6)
    spec = [tf.TensorSpec([None, qy.shape[1]], tf.float32), tf.TensorSpec([None, qf.shape[1]], tf.float32)]
    fn = tf.function(lambda a, b: batched_omp(a, b, dy, df, prefilter=7, screen_dtype=screen, **kw),
                     input_signature=spec)
    got, static = fn(qy, qf), batched_omp(qy, qf, dy, df, prefilter=7, screen_dtype=screen, **kw)
    np.testing.assert_array_equal(got[0].numpy(), static[0].numpy())
    np.testing.assert_allclose(got[1].numpy(), static[1].numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("screen", ["float32", "bfloat16"])
def test_planted_support_recovered_with_few_candidates(screen):
    """Queries built from 3 planted atoms of a 500-atom dictionary: M = 20 candidates find them all."""
    rng = np.random.default_rng(1)
    b, n, c, e, k = 16, 500, 30, 24, 3
    dy = rng.normal(size=(n, c)).astype(np.float32)
    df = rng.normal(size=(n, e)).astype(np.float32)
    support = np.stack([rng.choice(n, k, replace=False) for _ in range(b)])
    coef = rng.uniform(1.0, 2.0, size=(b, k)).astype(np.float32)
    qy = np.einsum("bk,bkc->bc", coef, dy[support]).astype(np.float32)
    qf = np.einsum("bk,bke->be", coef, df[support]).astype(np.float32)
    kw = dict(k=k, lambda_label=1.0, lambda_feature=1.0, threshold=1e-6)
    exact = batched_omp(qy, qf, dy, df, **kw)[0].numpy()
    pre, coef_l, _, num = batched_omp(qy, qf, dy, df, prefilter=20, screen_dtype=screen, **kw)
    pre = pre.numpy()
    recall_exact = np.mean([len(set(exact[i]) & set(support[i])) / k for i in range(b)])
    recall = np.mean([len(set(pre[i]) & set(support[i])) / k for i in range(b)])
    assert recall_exact == 1.0 and recall == 1.0
    np.testing.assert_array_equal(num.numpy(), np.full(b, k))
    # the refit on the true support recovers the planted coefficients
    order = np.argsort(pre, axis=1)
    got = np.take_along_axis(coef_l.numpy(), order, axis=1)
    want = np.take_along_axis(coef, np.argsort(support, axis=1), axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-3)


def test_prefilter_traces_under_xla_and_rejects_negative():
    qy, qf, dy, df = _random_problem(seed=4)
    kw = dict(k=2, lambda_label=1.0, lambda_feature=0.5, threshold=1e-6)
    # 3 candidates of 40 atoms per image: the candidate path (static sizes) under XLA
    fn = tf.function(lambda: batched_omp(qy, qf, dy, df, prefilter=3, **kw), jit_compile=True)
    np.testing.assert_array_equal(fn()[0].numpy(), batched_omp(qy, qf, dy, df, prefilter=3, **kw)[0].numpy())
    with pytest.raises(ValueError, match="prefilter"):
        batched_omp(qy, qf, dy, df, prefilter=-1, **kw)
    with pytest.raises(ValueError, match="screen_dtype"):
        batched_omp(qy, qf, dy, df, prefilter=8, screen_dtype="float16", **kw)


@pytest.mark.parametrize("refresh,screen", [(1, "float32"), (2, "bfloat16")])
def test_imcl_task_with_prefilter_at_dictionary_size_equals_exact(toy_store, tmp_path, refresh, screen):
    """--imcl-prefilter M >= the dictionary size trains exactly like exact OMP (same losses per round), also
    with a bfloat16 screen held in the dictionary cache (--imcl-refresh 2)."""
    import csv

    import keras

    from tests.helpers import toy_task

    rows = {}
    for m in (0, 64):
        task = toy_task(toy_store, tmp_path, "imcl", run_name=f"imcl_m{m}", epochs=2,
                        task=dict(imcl_dict_size=64, imcl_k=2, imcl_prefilter=m, imcl_refresh=refresh,
                                  imcl_prefilter_dtype=screen if m else "float32"))
        task.fit(verbose=0)
        rows[m] = list(csv.DictReader(open(f"{task.run.run_dir}/history.csv")))
        model = keras.models.load_model(f"{task.run.run_dir}/best.keras")
        assert (model.omp_prefilter, model.omp_screen_dtype) == (m, screen if m else "float32")   # the flags reached OMP
    for a, b in zip(rows[0], rows[64]):
        for key in ("logistic", "colab", "num_selected"):
            np.testing.assert_allclose(float(b[key]), float(a[key]), rtol=1e-4, err_msg=key)


def test_screen_dtype_without_prefilter_is_refused(toy_store, tmp_path):
    from tests.helpers import toy_task

    task = toy_task(toy_store, tmp_path, "imcl", task=dict(imcl_prefilter_dtype="bfloat16"))
    with pytest.raises(ValueError, match="--imcl-prefilter-dtype bfloat16: applies to the pre-filter"):
        task.check()


@pytest.mark.parametrize("k", [2, 1])
def test_bfloat16_screen_decides_the_first_step_in_float32(k):
    """Six atoms whose first scores differ by ~1e-4 relative (below bfloat16's ~4e-3 resolution), M = 30 of 40
    candidates: the first atom is still exact OMP's, because the best candidates by the rounded screen are
    re-scored in float32 (FIRST_STEP_RESCORED); the rounded scores alone pick another atom for some images."""
    import mll_tf.ops.omp as omp

    rng = np.random.default_rng(5)
    b, n, c, e = 8, 40, 6, 64
    base = rng.normal(size=e)
    df = rng.normal(size=(n, e))
    df[:6] = base + 1e-3 * rng.normal(size=(6, e))              # six near-ties (fewer than FIRST_STEP_RESCORED)
    qf = base + 1e-2 * rng.normal(size=(b, e))
    dy, qy = np.zeros((n, c)), np.zeros((b, c))
    dy[:, 0], qy[:, 0] = 1.0, 1.0                                 # equal label terms for every atom
    qy, qf, dy, df = (a.astype(np.float32) for a in (qy, qf, dy, df))
    kw = dict(k=k, lambda_label=1.0, lambda_feature=0.5, threshold=1e-9)
    exact = batched_omp(qy, qf, dy, df, **kw)[0].numpy()
    pre = batched_omp(qy, qf, dy, df, prefilter=30, screen_dtype="bfloat16", **kw)[0].numpy()
    assert omp.FIRST_STEP_RESCORED < 30
    np.testing.assert_array_equal(pre[:, 0], exact[:, 0])
    rounded = lambda x: tf.cast(tf.cast(x, tf.bfloat16), tf.float32).numpy().astype(np.float64)
    a, bb = rounded(qy) @ rounded(dy).T, rounded(qf) @ rounded(df).T
    screen = (a ** 2 / (dy.astype(np.float64) ** 2).sum(1) + 0.5 * bb ** 2 / (df.astype(np.float64) ** 2).sum(1))
    assert np.any(np.argmax(screen, axis=1) != exact[:, 0])
