"""batched_omp(prefilter=M): each image's M best atoms by the first greedy score, pooled over the batch, then
exact OMP over the pool; screen_dtype="bfloat16" screens in bfloat16."""

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
@pytest.mark.parametrize("m", [7, 40, 64])
def test_prefilter_pool_covering_the_dictionary_equals_exact(m, balance, screen):
    """6 images x M >= 40 atoms: the pool is the whole dictionary, so the result is exact OMP's (a bfloat16
    screen only chooses the pool; the scores over it are float32)."""
    qy, qf, dy, df = _random_problem()
    qf[2] = df[7]   # an image that is in the dictionary: excluded in both paths
    kw = dict(k=4, lambda_label=1.0, lambda_feature=0.5, threshold=1e-6, balance=balance)
    exact = batched_omp(qy, qf, dy, df, **kw)
    pre = batched_omp(qy, qf, dy, df, prefilter=m, screen_dtype=screen, **kw)
    np.testing.assert_array_equal(pre[0].numpy(), exact[0].numpy())
    assert not np.any(exact[0].numpy()[2] == 7)
    np.testing.assert_allclose(pre[1].numpy(), exact[1].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pre[2].numpy(), exact[2].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(pre[3].numpy(), exact[3].numpy())


@pytest.mark.parametrize("screen", ["float32", "bfloat16"])
def test_pool_covering_the_dictionary_with_a_dynamic_batch_equals_exact(screen):
    """A batch size unknown when traced: the pool path runs and, 6 x 7 >= 40, covers the dictionary."""
    qy, qf, dy, df = _random_problem(seed=5)
    kw = dict(k=3, lambda_label=1.0, lambda_feature=0.5, threshold=1e-6)
    spec = [tf.TensorSpec([None, qy.shape[1]], tf.float32), tf.TensorSpec([None, qf.shape[1]], tf.float32)]
    fn = tf.function(lambda a, b: batched_omp(a, b, dy, df, prefilter=7, screen_dtype=screen, **kw),
                     input_signature=spec)
    got, exact = fn(qy, qf), batched_omp(qy, qf, dy, df, **kw)
    np.testing.assert_array_equal(got[0].numpy(), exact[0].numpy())
    np.testing.assert_allclose(got[1].numpy(), exact[1].numpy(), rtol=1e-4, atol=1e-5)


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


def test_prefilter_one_candidate_per_image_searches_the_batch_pool():
    """M = 1: the pool is the 6 images' exact first atoms; every image's first atom is exact and its later
    atoms come from the pool, chosen exactly as OMP restricted to the pool would."""
    qy, qf, dy, df = _random_problem(seed=3)
    kw = dict(k=3, lambda_label=1.0, lambda_feature=0.5, threshold=1e-6)
    exact = batched_omp(qy, qf, dy, df, **kw)[0].numpy()
    pre = batched_omp(qy, qf, dy, df, prefilter=1, **kw)[0].numpy()
    np.testing.assert_array_equal(pre[:, 0], exact[:, 0])   # the first step is exact
    union = set(exact[:, 0].tolist())       # two images share their first atom here: 5 distinct
    pool = np.array(sorted(union | set([j for j in range(40) if j not in union][:6 - len(union)])))
    assert len(union) == 5 and len(pool) == 6   # padded to B M = 6 with the first other atom
    on_pool = batched_omp(qy, qf, dy[pool], df[pool], **kw)[0].numpy()
    np.testing.assert_array_equal(pre, np.where(on_pool >= 0, pool[np.maximum(on_pool, 0)], -1))


def test_prefilter_traces_under_xla_and_rejects_negative():
    qy, qf, dy, df = _random_problem(seed=4)
    kw = dict(k=2, lambda_label=1.0, lambda_feature=0.5, threshold=1e-6)
    # 6 images x 3 candidates < 40 atoms: the pool path (scatter of the pool, static sizes) under XLA
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
