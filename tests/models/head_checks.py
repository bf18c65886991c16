"""Shared checks for the classification-head tests (not collected by pytest).

Every head test supplies an INDEPENDENT NumPy forward ``np_forward(W, x)``
(float64) and ``weights(model) -> {name: keras variable}``; these helpers
compare values, gradients (TF tape vs central finite differences of the NumPy
forward), save/load round trips and 2-replica vs 1-replica steps.
"""

import keras
import numpy as np
import tensorflow as tf


def numpy_weights(variables):
    return {k: np.asarray(v.numpy(), np.float64) for k, v in variables.items()}


def loss_weights(shape, seed=0):
    """Fixed random R: the scalar objective is sum(out * R)."""
    return np.random.default_rng(seed).normal(size=shape)


def tf_gradients(model, x, r, variables, training=False):
    """d sum(model(x) * r) / d (x, variables) in float32, as NumPy float64."""
    xt = tf.constant(x, tf.float32)
    vs = list(variables.values())
    with tf.GradientTape() as tape:
        tape.watch(xt)
        obj = tf.reduce_sum(model(xt, training=training) * tf.constant(r, tf.float32))
    grads = tape.gradient(obj, [xt] + vs)
    out = {"x": np.asarray(grads[0], np.float64)}
    for k, g in zip(variables, grads[1:]):
        out[k] = None if g is None else np.asarray(tf.convert_to_tensor(g), np.float64)
    return out


def fd_gradients(np_forward, w, x, r, names, eps=1e-5):
    """Central differences of sum(np_forward(w, x) * r) w.r.t. x and w[name] for name in names (float64)."""
    def obj(ww, xx):
        return float(np.sum(np_forward(ww, xx) * r))

    out = {}
    for name in ["x"] + list(names):
        base = x if name == "x" else w[name]
        grad = np.zeros_like(base)
        for idx in np.ndindex(base.shape):
            plus, minus = base.copy(), base.copy()
            plus[idx] += eps
            minus[idx] -= eps
            if name == "x":
                grad[idx] = (obj(w, plus) - obj(w, minus)) / (2 * eps)
            else:
                grad[idx] = (obj({**w, name: plus}, x) - obj({**w, name: minus}, x)) / (2 * eps)
        out[name] = grad
    return out


def assert_gradients_match(model, np_forward, variables, x, r, trainable, rtol=1e-5):
    """Tape gradients (float32) equal finite differences of the NumPy forward (float64).

    The comparison is per tensor, relative in the L2 norm (||g_tf - g_fd|| <=
    rtol ||g_fd||), and element-wise with atol = rtol * max|g_fd|.
    """
    got = tf_gradients(model, x, r, variables)
    want = fd_gradients(np_forward, numpy_weights(variables), np.asarray(x, np.float64), r, trainable)
    for name, g_fd in want.items():
        g_tf = got[name]
        assert g_tf is not None, f"no gradient for {name}"
        scale = np.linalg.norm(g_fd)
        assert scale > 0, f"{name}: zero gradient (the check could not fail)"
        rel = np.linalg.norm(g_tf - g_fd) / scale
        assert rel <= rtol, f"{name}: relative gradient error {rel:.2e} > {rtol:.0e}"
        np.testing.assert_allclose(g_tf, g_fd, rtol=0, atol=rtol * np.abs(g_fd).max(), err_msg=name)
    return got


def assert_save_load(model, x, tmp_path, name="head"):
    """``model.save(.keras)`` -> ``keras.saving.load_model`` gives the same outputs and weights."""
    path = str(tmp_path / f"{name}.keras")
    want = model(x).numpy()
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model)
    np.testing.assert_array_equal(loaded(x).numpy(), want)
    assert [w.path for w in loaded.weights] == [w.path for w in model.weights]
    for a, b in zip(loaded.weights, model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        assert a.trainable == b.trainable
    return loaded


def assert_two_replicas_equal_one(strategy, make_model, x, r, rtol=1e-5):
    """Forward + gradient of sum(out * r) split over 2 replicas (batch halves) equals 1 replica.

    ``make_model()`` builds an unbuilt head; the 2-replica copy is built in the
    strategy's scope and given the 1-replica weights.
    """
    single = make_model()
    single(x)
    xs = tf.constant(x, tf.float32)
    rs = tf.constant(r, tf.float32)
    with tf.GradientTape() as tape:
        out1 = single(xs)
        obj1 = tf.reduce_sum(out1 * rs)
    g1 = tape.gradient(obj1, single.trainable_variables)

    with strategy.scope():
        dist = make_model()
        dist(x)
        dist.set_weights(single.get_weights())
    half = x.shape[0] // 2

    def replica_fn():
        ctx = tf.distribute.get_replica_context()
        sl = tf.cond(tf.equal(ctx.replica_id_in_sync_group, 0), lambda: tf.constant([0, half]),
                     lambda: tf.constant([half, x.shape[0]]))
        xb, rb = xs[sl[0]:sl[1]], rs[sl[0]:sl[1]]
        with tf.GradientTape() as tape:
            out = dist(xb)
            obj = tf.reduce_sum(out * rb)
        grads = tape.gradient(obj, dist.trainable_variables)
        return out, ctx.all_reduce("sum", grads)

    @tf.function
    def step():
        return strategy.run(replica_fn)

    outs, grads = step()
    parts = [o.numpy() for o in strategy.experimental_local_results(outs)]
    assert len(parts) == 2
    np.testing.assert_allclose(np.concatenate(parts), out1.numpy(), rtol=rtol, atol=1e-6)
    g2 = [strategy.experimental_local_results(g)[0] for g in grads]
    assert len(g1) == len(g2) and len(g1) > 0
    g1 = [np.asarray(tf.convert_to_tensor(b)) for b in g1]
    # atol from the largest gradient entry: tensors whose true gradient is 0
    # (e.g. an attention key bias) hold only round-off.
    atol = rtol * max(np.abs(b).max() for b in g1)
    for a, b, v in zip(g2, g1, single.trainable_variables):
        a = np.asarray(tf.convert_to_tensor(a))
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=v.path)
