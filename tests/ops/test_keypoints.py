"""CAM keypoints (Max, cMax, cTopk, cTopk-w) and grid-aligned windows on hand-built maps."""

import numpy as np
import pytest
import tensorflow as tf

from mll_tf.ops.keypoints import crop_windows, grid_windows, keypoints, local_maxima, make_cam


def _gauss_map(peaks, size=32, background=-0.5):
    """[size, size]: background + sum of unit-sigma Gaussians; a peak (r, c, v) has value v + background."""
    r, c = np.mgrid[:size, :size]
    out = np.full((size, size), background, np.float64)
    for pr, pc, v in peaks:
        out += v * np.exp(-((r - pr) ** 2 + (c - pc) ** 2) / 2.0)
    return out


@pytest.fixture(scope="module")
def cam():
    """Class 0: 4.0@(5,5), 3.6@(5,25), 2.0@(25,15); class 1: 6.0@(20,20); class 2 (absent): 50@(10,10)."""
    f = np.stack([_gauss_map([(5, 5, 4.0), (5, 25, 3.6), (25, 15, 2.0)]),
                  _gauss_map([(20, 20, 6.0)]), _gauss_map([(10, 10, 50.0)])], axis=-1)
    return f[None].astype(np.float32), np.array([[1, 1, 0]], np.int8)


def _run(cam, strategy, k=3):
    p, v = keypoints(tf.constant(cam[0]), tf.constant(cam[1]), strategy, k)
    return p.numpy()[0], v.numpy()[0]


def test_max_ignores_absent_class(cam):
    p, v = _run(cam, "max")
    assert v.tolist() == [False, True, False]
    np.testing.assert_array_equal(p[1], [20, 20])
    np.testing.assert_array_equal(p[[0, 2]], 0)


def test_cmax(cam):
    p, v = _run(cam, "cmax")
    assert v.tolist() == [True, True, False]
    np.testing.assert_array_equal(p[:2], [[5, 5], [20, 20]])


def test_ctopk_centroids_and_fewer_than_k(cam):
    p, v = _run(cam, "ctopk", k=2)
    np.testing.assert_allclose(p[0], [5, 15])
    p, v = _run(cam, "ctopk", k=3)
    np.testing.assert_allclose(p[0], [35 / 3, 15], rtol=1e-6)
    np.testing.assert_allclose(p[1], [20, 20])          # one maximum only: k = 3 is allowed
    assert v.tolist() == [True, True, False]


def test_ctopk_w_weighted_centroid(cam):
    p, _ = _run(cam, "ctopk_w", k=3)
    # normalised weights 1, 31/35, 15/35 (peaks 3.5, 3.1, 1.5 after the -0.5 background)
    exp = (35 * np.array([5, 5]) + 31 * np.array([5, 25]) + 15 * np.array([25, 15])) / 81
    np.testing.assert_allclose(p[0], exp, atol=1e-4)
    np.testing.assert_allclose(p[0], [8.704, 14.506], atol=1e-3)
    # scaling the map scales the weights only: same point
    p2, _ = keypoints(tf.constant(cam[0] * 3.0), tf.constant(cam[1]), "ctopk_w", 3)
    np.testing.assert_allclose(p2.numpy()[0, 0], p[0], atol=1e-4)


def test_ties_flat_maps_and_border_peaks():
    f = np.full((1, 4, 5, 4), -1.0, np.float32)
    f[0, :, :, 0] = 2.0                       # flat positive map: every cell is a maximum, first wins
    f[0, 1, 3, 1] = f[0, 2, 1, 1] = 5.0       # tie between two peaks: row-major first
    f[0, 3, 4, 2] = 1.0                       # border (corner) peak
    # channel 3 stays flat negative: no keypoint
    y = np.ones((1, 4), np.int8)
    for s in ("cmax", "ctopk", "ctopk_w"):
        p, v = keypoints(f, y, s, 1)
        p, v = p.numpy()[0], v.numpy()[0]
        assert v.tolist() == [True, True, True, False], s
        np.testing.assert_array_equal(p[0], [0, 0])
        np.testing.assert_array_equal(p[1], [1, 3])
        np.testing.assert_array_equal(p[2], [3, 4])
        np.testing.assert_array_equal(p[3], [0, 0])
    # flat map with k = 2: the first two cells of the plateau
    p, _ = keypoints(f, y, "ctopk", 2)
    np.testing.assert_allclose(p.numpy()[0, 0], [0, 0.5])
    p, _ = keypoints(f, y, "ctopk", 2)
    np.testing.assert_allclose(p.numpy()[0, 1], [1.5, 2])   # both tied peaks
    # Max: the merged-map peak (5.0 at (1,3) first), owner = first positive class with the largest value
    p, v = keypoints(f, y, "max")
    assert v.numpy()[0].tolist() == [False, True, False, False]
    np.testing.assert_array_equal(p.numpy()[0, 1], [1, 3])
    # no positive class / no positive activation: nothing valid
    _, v = keypoints(f, np.array([[0, 0, 0, 1]], np.int8), "max")
    assert not v.numpy().any()
    _, v = keypoints(f, -np.ones((1, 4), np.int8), "cmax")
    assert not v.numpy().any()


def test_local_maxima_and_make_cam_match_numpy():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(2, 5, 6, 3)).astype(np.float32)
    a = make_cam(f).numpy()
    r = np.maximum(f, 0)
    exp = np.maximum(r - 1e-5, 0) / (r.max(axis=(1, 2), keepdims=True) + 1e-5)
    np.testing.assert_allclose(a, exp, rtol=1e-6)
    lm = local_maxima(tf.constant(a)).numpy()
    pad = np.pad(a, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    nb = np.max([pad[:, i:i + 5, j:j + 6] for i in range(3) for j in range(3)], axis=0)
    np.testing.assert_array_equal(lm, (a == nb) & (a > 0))


def test_unknown_strategy_and_k():
    with pytest.raises(ValueError, match="--keypoints"):
        keypoints(np.zeros((1, 2, 2, 1), np.float32), np.ones((1, 1)), "mean")
    with pytest.raises(ValueError, match="--topk"):
        keypoints(np.zeros((1, 2, 2, 1), np.float32), np.ones((1, 1)), "ctopk", 0)


def test_grid_windows_at_borders():
    pts = tf.constant([[5.0, 15.0], [20.0, 20.0], [31.0, 31.0], [11.667, 14.506], [0.5, 7.49]])
    got = grid_windows(pts, 32, 16).numpy()
    np.testing.assert_array_equal(got, [[0, 7], [12, 12], [16, 16], [4, 7], [0, 0]])
    np.testing.assert_array_equal(grid_windows(tf.constant([[1.0, 2.0]]), (4, 6), 2).numpy(), [[0, 1]])
    with pytest.raises(ValueError, match="--patch-cells"):
        grid_windows(pts, 8, 9)


def test_crop_windows_exact_pixels():
    x = np.arange(2 * 8 * 8 * 2, dtype=np.float32).reshape(2, 8, 8, 2)
    got = crop_windows(tf.constant(x), tf.constant([1, 0]), tf.constant([[0, 1], [2, 2]]), side=4,
                       stride=2).numpy()
    np.testing.assert_array_equal(got[0], x[1, 0:4, 2:6])
    np.testing.assert_array_equal(got[1], x[0, 4:8, 4:8])   # the bottom-right corner window
