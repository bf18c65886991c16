"""Tests for the ResNet-50 and EfficientNetV2-S/L backbones (mll_tf.backbones.keras_apps).

Nothing here touches the network: ``weights="imagenet"`` is only called with
``keras.utils.get_file`` replaced by a function that raises.
"""
import keras
import numpy as np
import pytest

from mll_tf.backbones import backbone_names, build_backbone
from mll_tf.backbones.keras_apps import KERAS_WEIGHTS, WeightsUnavailableError

NEW = ["resnet50", "efficientnetv2_s", "efficientnetv2_l"]


def _rgb(n, size, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n, size, size, 3)).astype(np.float32)


def test_registered():
    assert set(NEW) <= set(backbone_names())


@pytest.mark.parametrize("name, depth", [("resnet50", 2048), ("efficientnetv2_s", 1280),
                                         ("efficientnetv2_l", 1280)])
def test_feature_map_shapes(name, depth):
    bb = build_backbone(name, weights=None, input_size=64)
    assert bb.name == name and bb.input_size == (64, 64)
    assert bb.feature_shape == (2, 2, depth)  # stride 32
    assert "random" in bb.weights and bb.resize_shorter is None
    y = np.asarray(bb.model(_rgb(1, 64)))
    assert y.shape == (1, 2, 2, depth) and y.dtype == np.float32 and np.all(np.isfinite(y))


def test_feature_shape_at_the_papers_448():
    # 448 / 32 = 14: the map the heads of Prokofiev & Sovrasov attend over (not run, only built)
    bb = build_backbone("efficientnetv2_s", weights=None, input_size=448)
    assert bb.feature_shape == (14, 14, 1280)


def test_efficientnetv2_normalisation_is_keras_include_preprocessing():
    bb = build_backbone("efficientnetv2_s", weights=None, input_size=32)
    app = bb.model.get_layer("efficientnetv2-s")
    resc = [layer for layer in app.layers if isinstance(layer, keras.layers.Rescaling)]
    assert len(resc) == 1
    assert resc[0].scale == pytest.approx(1 / 128) and resc[0].offset == pytest.approx(-1.0)
    x = np.array([[[[0.0, 128.0, 255.0]]]], np.float32)
    np.testing.assert_allclose(np.asarray(resc[0](x)), [[[[-1.0, 0.0, 255 / 128 - 1]]]], atol=1e-6)


def test_resnet50_is_keras_app_on_caffe_input():
    bb = build_backbone("resnet50", weights=None, input_size=64)
    x = _rgb(2, 64, seed=3)
    app = bb.model.get_layer("resnet50")
    want = np.asarray(app(keras.applications.resnet50.preprocess_input(x.copy())))
    np.testing.assert_allclose(np.asarray(bb.model(x)), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name, inner", [("resnet50", "resnet50"), ("efficientnetv2_s", "efficientnetv2-s")])
def test_weights_path_round_trip(tmp_path, name, inner):
    """Random include_top=False weights saved to a file and loaded by PATH give the same features."""
    keras.utils.set_random_seed(1)
    src = build_backbone(name, weights=None, input_size=64)
    path = tmp_path / f"{name}.weights.h5"
    src.model.get_layer(inner).save_weights(str(path))
    keras.utils.set_random_seed(2)  # a different random init, overwritten by the file
    got = build_backbone(name, weights=str(path), input_size=64)
    assert got.weights == f"file: {path}"
    x = _rgb(2, 64, seed=4)
    a, b = np.asarray(src.model(x)), np.asarray(got.model(x))
    assert np.abs(a).max() > 0
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    other = build_backbone(name, weights=None, input_size=64)
    assert not np.allclose(np.asarray(other.model(x)), a)  # the file, not the seed, made them equal


@pytest.mark.parametrize("name, fname", [
    ("resnet50", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    ("efficientnetv2_s", "efficientnetv2-s_notop.h5"),
    ("efficientnetv2_l", "efficientnetv2-l_notop.h5")])
def test_offline_imagenet_error_names_file_and_url(monkeypatch, name, fname):
    calls = []

    def offline_get_file(fname, origin, **kwargs):
        calls.append((fname, origin, kwargs))
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -2] Name or service not known")

    monkeypatch.setattr(keras.utils, "get_file", offline_get_file)
    spec = KERAS_WEIGHTS[name]
    assert spec.fname == fname
    assert spec.url.startswith("https://storage.googleapis.com/tensorflow/keras-applications/")
    assert spec.url.endswith("/" + fname)
    with pytest.raises(WeightsUnavailableError) as info:
        build_backbone(name, weights="imagenet", input_size=64)
    msg = str(info.value)
    assert fname in msg and spec.url in msg and spec.md5 in msg
    assert f"--weights /path/to/{fname}" in msg and "--weights none" in msg
    assert calls == [(fname, spec.url, {"cache_subdir": "models", "file_hash": spec.md5})]


def test_md5_match_the_keras_sources():
    from keras.src.applications import efficientnet_v2, resnet

    assert KERAS_WEIGHTS["resnet50"].md5 == resnet.WEIGHTS_HASHES["resnet50"][1]
    assert KERAS_WEIGHTS["efficientnetv2_s"].md5 == efficientnet_v2.WEIGHTS_HASHES["-s"][1]
    assert KERAS_WEIGHTS["efficientnetv2_l"].md5 == efficientnet_v2.WEIGHTS_HASHES["-l"][1]
    assert efficientnet_v2.BASE_WEIGHTS_PATH + KERAS_WEIGHTS["efficientnetv2_l"].fname == \
        KERAS_WEIGHTS["efficientnetv2_l"].url


def test_missing_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="efficientnetv2-s_notop.h5"):
        build_backbone("efficientnetv2_s", weights=str(tmp_path / "nope.h5"), input_size=64)
