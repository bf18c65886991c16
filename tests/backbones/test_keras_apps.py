"""Tests for mll_tf.backbones.keras_apps (vgg19 and resnet101 backbones).

Nothing here touches the network: ``weights="imagenet"`` is only called with
``keras.utils.get_file`` replaced by a function that raises.
"""
import socket

import keras
import numpy as np
import pytest

from mll_tf.backbones import backbone_names, build_backbone
from mll_tf.backbones import keras_apps
from mll_tf.backbones.keras_apps import (CaffePreprocess, KERAS_WEIGHTS,
                                         WeightsUnavailableError)


def _rgb(n, size, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n, size, size, 3)).astype(np.float32)


def test_registered():
    assert {"vgg19", "resnet101"} <= set(backbone_names())


def test_vgg19_block5_conv4_at_224():
    bb = build_backbone("vgg19", weights=None, input_size=224)
    assert bb.name == "vgg19"
    assert bb.feature_shape == (14, 14, 512)
    assert bb.input_size == (224, 224)
    assert bb.resize_shorter == 256
    assert "random" in bb.weights
    assert "BGR" in bb.preprocessing and "256" in bb.preprocessing
    y = np.asarray(bb.model(_rgb(1, 224)))
    assert y.shape == (1, 14, 14, 512) and y.dtype == np.float32
    assert y.min() >= 0.0  # block5_conv4 includes its ReLU


def test_resize_shorter_scales_with_input_size():
    bb = build_backbone("vgg19", weights=None, input_size=448)
    assert bb.feature_shape == (28, 28, 512)
    assert bb.resize_shorter == 512


def test_caffe_preprocess_equals_keras_preprocess_input():
    x = _rgb(2, 8)
    layer = CaffePreprocess()
    got = np.asarray(layer(x))
    for fn in (keras.applications.vgg19.preprocess_input,
               keras.applications.resnet.preprocess_input):
        np.testing.assert_allclose(got, fn(x.copy()), atol=1e-4)
    np.testing.assert_allclose(got[..., 0], x[..., 2] - 103.939, atol=1e-4)
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(clone, CaffePreprocess)


def test_vgg19_model_is_keras_app_on_caffe_input():
    bb = build_backbone("vgg19", weights=None, input_size=32)
    x = _rgb(2, 32, seed=1)
    tap = bb.model.get_layer("vgg19_block5_conv4")
    assert tap.layers[-1].name == "block5_conv4"
    want = np.asarray(tap(keras.applications.vgg19.preprocess_input(x.copy())))
    np.testing.assert_allclose(np.asarray(bb.model(x)), want, rtol=1e-4, atol=1e-4)


def test_resnet101_pool5_as_1x1_map():
    bb = build_backbone("resnet101", weights=None, input_size=224)
    assert bb.name == "resnet101"
    assert bb.feature_shape == (1, 1, 2048)
    assert bb.resize_shorter == 256
    assert "Caffe" in bb.preprocessing
    x = _rgb(1, 224, seed=2)
    y = np.asarray(bb.model(x))
    assert y.shape == (1, 1, 1, 2048) and y.dtype == np.float32
    app = bb.model.get_layer("resnet101")
    want = np.asarray(app(keras.applications.resnet.preprocess_input(x.copy())))
    np.testing.assert_allclose(y.reshape(1, 2048), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["vgg19", "resnet101"])
def test_imagenet_download_failure_names_the_file(monkeypatch, name):
    calls = []

    def offline_get_file(fname, origin, **kwargs):
        calls.append((fname, origin, kwargs))
        raise Exception(f"URL fetch failure on {origin}: None -- "
                        "[Errno -2] Name or service not known")

    monkeypatch.setattr(keras.utils, "get_file", offline_get_file)
    spec = KERAS_WEIGHTS[name]
    old_timeout = socket.getdefaulttimeout()
    with pytest.raises(WeightsUnavailableError) as info:
        build_backbone(name, weights="imagenet", input_size=32)
    err = info.value
    assert isinstance(err, RuntimeError)
    assert err.fname == spec.fname and err.url == spec.url
    msg = str(err)
    assert spec.fname in msg and spec.url in msg
    assert f"--weights /path/to/{spec.fname}" in msg
    assert "--weights none" in msg
    assert calls == [(spec.fname, spec.url,
                      {"cache_subdir": "models", "file_hash": spec.md5})]
    assert socket.getdefaulttimeout() == old_timeout


def test_vgg19_weight_file_names():
    assert KERAS_WEIGHTS["vgg19"].fname == \
        "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert KERAS_WEIGHTS["vgg19"].url.endswith("/vgg19/" + KERAS_WEIGHTS["vgg19"].fname)


def test_loads_a_local_keras_h5_file(tmp_path):
    """A legacy .h5 (the format Keras downloads) saved from a random VGG19."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    src = keras.applications.VGG19(include_top=False, weights=None,
                                   input_shape=(32, 32, 3))
    path = tmp_path / KERAS_WEIGHTS["vgg19"].fname
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, src)
    bb = build_backbone("vgg19", weights=str(path), input_size=32)
    assert bb.weights == f"file: {path}"
    tap = bb.model.get_layer("vgg19_block5_conv4")
    for layer in ("block1_conv1", "block5_conv4"):
        for got, want in zip(tap.get_layer(layer).get_weights(),
                             src.get_layer(layer).get_weights()):
            np.testing.assert_array_equal(got, want)


def test_bad_weights_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        keras_apps.resolve_weights("vgg19", str(tmp_path / "missing.h5"))
    with pytest.raises(ValueError, match="weights"):
        keras_apps.resolve_weights("resnet101", 3)


@pytest.mark.parametrize("name,size,cells", [("vgg19", 64, 4), ("resnet50", 64, 2), ("efficientnetv2_s", 64, 2)])
def test_flexible_clone_runs_at_other_sizes(name, size, cells):
    """OASS rebuilds the backbone on a [None, None] input (tiles, keypoint patches): the inner Keras app takes any
    size, so the clone runs at half the built size, with the built size's output unchanged."""
    from mll_tf.tasks.oass import flexible_input

    bb = build_backbone(name, weights=None, input_size=size)
    flex = flexible_input(bb.model)
    x = np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(flex(x)), np.asarray(bb.model(x)), rtol=1e-5, atol=1e-5)
    assert np.asarray(flex(x[:, : size // 2, : size // 2])).shape[1:3] == (cells // 2, cells // 2)
