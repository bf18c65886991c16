"""Tests for the ``resnet50_os16`` backbone (Puzzle-CAM's ResNet-50 at output stride 16).

Random weights only: nothing here touches the network (``weights="imagenet"``
is only called with ``keras.utils.get_file`` replaced by a function that
raises).

Puzzle-CAM's layer4 has stride 1 and no dilation (``core/arch_resnet/resnet.py``:
``strides=(2, 2, 2, 1)``, ``dilations`` left at ``(1, 1, 1, 1)``), so the
registered backbone's output is *not* the stride-32 output at a finer grid:
its conv5 3x3 convs mix neighbours 16 px apart instead of 32. What does hold
exactly: (a) the maps entering conv5's first 3x3 conv, taken at even
positions, are the stride-32 ones (the stride-2 convs are 1x1, so moving
their stride only adds the odd positions); (b) with dilation 2 (the "a trous"
variant, ``conv5_dilation=2``) the whole output at even positions is the
stride-32 output, because "same" zero padding of a dilated 3x3 conv on the
fine grid lines up with that of the plain 3x3 conv on the coarse grid.
"""
import keras
import numpy as np
import pytest

from mll_tf.backbones import backbone_names, backbone_resize_shorter, build_backbone
from mll_tf.backbones import keras_apps
from mll_tf.backbones.keras_apps import (CaffePreprocess, RESNET50_CONV5_3X3,
                                         RESNET50_CONV5_STRIDED, WeightsUnavailableError)

#: A non-square input with odd map sizes at both strides: 5x3 at 16, 3x2 at 32.
SIZE = (80, 48)
#: The maps entering conv5's first 3x3 conv (and the shortcut): block (a) above.
PRE_3X3 = ("conv5_block1_1_relu", "conv5_block1_0_bn")


def _rgb(n, h, w, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n, h, w, 3)).astype(np.float32)


def _upsample2(y, h, w):
    return np.repeat(np.repeat(y, 2, axis=1), 2, axis=2)[:, :h, :w]


def _taps(bb, inner, names, x):
    """Outputs of ``inner``'s layers ``names`` for the RGB images ``x``."""
    app = bb.model.get_layer(inner)
    sub = keras.Model(app.input, [app.get_layer(n).output for n in names])
    return [np.asarray(t) for t in sub(CaffePreprocess()(x))]


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """``resnet50`` with random weights and those weights saved to a file."""
    keras.utils.set_random_seed(3)
    bb = build_backbone("resnet50", weights=None, input_size=64)
    path = tmp_path_factory.mktemp("resnet50") / "resnet50.weights.h5"
    bb.model.get_layer("resnet50").save_weights(str(path))
    return bb, str(path)


@pytest.fixture(scope="module")
def outputs(src):
    """Stride-32, stride-16 and dilated stride-16 models at SIZE, same weights file, same input."""
    _, path = src
    x = _rgb(2, *SIZE, seed=5)
    os32 = build_backbone("resnet50", weights=path, input_size=SIZE)
    os16 = build_backbone("resnet50_os16", weights=path, input_size=SIZE)
    atrous = keras_apps.resnet50_os16_backbone(weights=path, input_size=SIZE, conv5_dilation=2)
    return {
        "x": x,
        "os32": np.asarray(os32.model(x)),
        "os16": np.asarray(os16.model(x)),
        "atrous": np.asarray(atrous.model(x)),
        "os32_pre": _taps(os32, "resnet50", PRE_3X3, x),
        "os16_pre": _taps(os16, "resnet50_os16", PRE_3X3, x),
        "atrous_pre": _taps(atrous, "resnet50_os16", PRE_3X3, x),
    }


def test_registered_random_weights():
    assert "resnet50_os16" in backbone_names()
    assert backbone_resize_shorter("resnet50_os16", 64) is None
    bb = build_backbone("resnet50_os16", weights=None, input_size=64)
    assert bb.name == "resnet50_os16"
    assert bb.input_size == (64, 64)
    assert bb.feature_shape == (4, 4, 2048)
    assert "random" in bb.weights
    assert "stride 16" in bb.preprocessing and "not dilated" in bb.preprocessing
    assert bb.resize_shorter is None


def test_stride16_shape_and_the_resnet50_weights(src):
    ref, path = src
    bb = build_backbone("resnet50_os16", weights=path, input_size=64)
    assert bb.weights == f"file: {path}"
    assert bb.feature_shape == (4, 4, 2048)
    y = np.asarray(bb.model(_rgb(2, 64, 64, seed=1)))
    assert y.shape == (2, 4, 4, 2048) and y.dtype == np.float32
    assert y.min() >= 0.0 and y.max() > 0.0  # after the last ReLU
    want, got = ref.model.get_weights(), bb.model.get_weights()
    assert len(got) == len(want) == 318  # 53 convs (kernel, bias) + 53 BNs (4 each)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    # Layer by layer, only the two strides differ from Keras' ResNet50.
    def layers(app):  # the input layers have automatic names
        return [la for la in app.layers if not isinstance(la, keras.layers.InputLayer)]

    old, new = layers(ref.model.get_layer("resnet50")), layers(bb.model.get_layer("resnet50_os16"))
    assert [la.name for la in new] == [la.name for la in old]
    for a, b in zip(old, new):
        ca, cb = a.get_config(), b.get_config()
        if a.name in RESNET50_CONV5_STRIDED:
            assert tuple(ca["strides"]) == (2, 2) and tuple(cb["strides"]) == (1, 1)
            ca["strides"] = cb["strides"]
        if a.name in RESNET50_CONV5_3X3:
            assert tuple(cb["dilation_rate"]) == (1, 1) and cb["padding"] == "same"
        assert ca == cb, a.name


def test_odd_sizes_give_ceil_h_over_16(outputs):
    assert outputs["os32"].shape == (2, 3, 2, 2048)
    assert outputs["os16"].shape == (2, 5, 3, 2048)
    assert outputs["atrous"].shape == (2, 5, 3, 2048)


def test_conv5_input_at_even_positions_is_the_stride32_one(outputs):
    """(a): the stride sat on 1x1 convs, so stride 1 only adds the odd positions."""
    for os16 in (outputs["os16_pre"], outputs["atrous_pre"]):
        for got, want in zip(os16, outputs["os32_pre"]):
            assert got.shape[1:3] == (5, 3) and want.shape[1:3] == (3, 2)
            assert np.abs(want).max() > 0
            np.testing.assert_allclose(got[:, ::2, ::2], want, rtol=1e-4, atol=1e-4)


def test_atrous_identity_with_dilation_2(outputs):
    """(b): dilation 2 makes the stride-16 output at even positions the stride-32 output."""
    want = outputs["os32"]
    assert want.max() > 0
    np.testing.assert_allclose(outputs["atrous"][:, ::2, ::2], want, rtol=1e-4, atol=1e-4)


def test_puzzle_cam_os16_is_not_an_upsampled_os32(outputs):
    """No dilation (Puzzle-CAM): neither the even positions nor a 2x upsampling give the stride-32 map."""
    os16, os32, atrous = outputs["os16"], outputs["os32"], outputs["atrous"]
    scale = np.abs(os32).max()

    def rel(a, b):
        return np.abs(a - b).max() / scale

    assert rel(os16[:, ::2, ::2], os32) > 0.05
    assert rel(os16, _upsample2(os32, 5, 3)) > 0.05
    assert rel(os16, atrous) > 0.05
    # The a trous map is not an upsampling either: its odd positions are new values.
    assert rel(atrous, _upsample2(os32, 5, 3)) > 0.05


def test_flexible_input_keeps_stride16(src):
    """The OASS tasks rebuild the backbone on a [None, None] input (clone_model from the configs)."""
    from mll_tf.tasks.oass import flexible_input

    _, path = src
    bb = build_backbone("resnet50_os16", weights=path, input_size=64)
    flex = flexible_input(bb.model)
    x = _rgb(1, 64, 64, seed=2)
    np.testing.assert_allclose(np.asarray(flex(x)), np.asarray(bb.model(x)), rtol=1e-5, atol=1e-5)
    assert np.asarray(flex(_rgb(1, 96, 96, seed=3))).shape == (1, 6, 6, 2048)


def test_one_oass_training_step():
    """One OASS training step (32 px tiles and patches of a 64 px image -> 2x2 maps) on the backbone."""
    import tensorflow as tf

    from mll_tf.models.puzzle_cam import PuzzleCAMModel
    from mll_tf.tasks.oass import flexible_input

    bb = build_backbone("resnet50_os16", weights=None, input_size=64)
    m = PuzzleCAMModel(flexible_input(bb.model), 3, method="oass", keypoints="cmax", patch_cells=2,
                       patches_per_image=2, alpha_schedule_re=0.0, total_steps=1)
    m.build((None, 64, 64, 3))
    m.compile(optimizer=keras.optimizers.SGD(0.01))
    m.copy_to_teacher()
    y = np.array([[1, 0, 1], [0, 1, 0]], np.int8)
    ds = tf.data.Dataset.from_tensor_slices((_rgb(2, 64, 64, seed=6), y)).batch(2)
    logs = {k: v[-1] for k, v in m.fit(ds, epochs=1, verbose=0).history.items()}
    assert all(np.isfinite(v) for v in logs.values()), logs
    assert logs["patches_per_image"] > 0 and logs["loss_re"] > 0
    assert m(_rgb(1, 64, 64)).shape[-1] == 3


def test_bad_arguments(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="conv5_dilation"):
        keras_apps.resnet50_os16_backbone(weights=None, input_size=(64, 64), conv5_dilation=0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_backbone("resnet50_os16", weights=str(tmp_path / "missing.h5"), input_size=64)

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(WeightsUnavailableError) as info:
        build_backbone("resnet50_os16", weights="imagenet", input_size=64)
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in str(info.value)
