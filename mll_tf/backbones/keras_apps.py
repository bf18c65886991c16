"""Keras Applications backbones: VGG19, ResNet-50/101, EfficientNetV2-S/L.

These are the feature extractors of the reference methods, rebuilt from
``keras.applications`` (docs/lesa.md §1, docs/imcl.md §1, docs/ml_heads.md):

* ``vgg19``: LESA's frozen VGG19 ``conv5_4`` map (after ReLU), 14x14x512 at
  224x224. Keras layer ``block5_conv4``.
* ``resnet101``: IMCL's ResNet-101 ``pool5`` vector (2048-d, global average
  pool), returned as a ``[B, 1, 1, 2048]`` map so that the feature store's
  ``[regions, D]`` layout still holds (1 region).
* ``resnet50``: the ResNet-50 ``conv5_block3_out`` map (stride 32, 2048
  channels; 14x14x2048 at 448), a spatial map for the attention heads.
* ``resnet50_os16``: the same ResNet-50 and weights with the conv5 stage at
  stride 1, output stride 16 (32x32x2048 at 512): Puzzle-CAM's backbone
  (Jo & Yu 2021) for the OASS methods (docs/oass.md).
* ``efficientnetv2_s`` / ``efficientnetv2_l``: the EfficientNetV2-S / -L
  ``top_activation`` map (stride 32, 1280 channels; 14x14x1280 at 448, the
  input size of Prokofiev & Sovrasov 2022, Sec. 4.1). Their preprocessing is
  Keras' ``include_preprocessing=True`` layer, ``x / 128 - 1`` (RGB in [0, 255]
  -> [-1, 0.99]); the paper's PyTorch pipeline uses mean = std = 0.5 on
  [0, 1], i.e. ``x / 127.5 - 1``, a relative difference below 0.4 %.
  The paper's weights are timm's ImageNet-21k (and OpenImages) checkpoints;
  Keras ships ImageNet-1k weights, so these are a stand-in. TResNet-L (the
  paper's third backbone) is not in ``keras.applications``.

VGG19 and ResNet-101/50 take float32 **RGB** images in [0, 255] and do the caffe-style
normalisation of the Keras ImageNet weights themselves (:class:`CaffePreprocess`:
RGB -> BGR, minus the BGR means), so every caller passes the same pixels as
for the other backbones (``mll_tf.backbones``).

Weights (``weights`` argument):

* ``"imagenet"``: the Keras ImageNet file, fetched by ``keras.utils.get_file``
  into the Keras cache (``~/.keras/models`` or ``$KERAS_HOME/models``); a file
  already there is used without the network. When the download fails (no
  internet) :class:`WeightsUnavailableError` names the
  file and its URL.
* a path: a local weight file, loaded by the Keras application itself
  (``keras.applications.VGG19(weights=PATH)``): the legacy ``.h5`` file Keras
  downloads, or a ``.weights.h5`` saved from the same ``keras.applications``
  model with ``include_top=False``.
* None: random initialisation (shape and pipeline tests only).

Source: ``keras.applications`` (Keras 3.15), weight files and MD5 hashes as
in ``keras/src/applications/{vgg19,resnet,efficientnet_v2}.py``.
"""
import collections
import os
import socket

import keras

__all__ = [
    "CAFFE_BGR_MEANS",
    "CaffePreprocess",
    "KERAS_WEIGHTS",
    "WeightsUnavailableError",
    "efficientnetv2_backbone",
    "resnet101_backbone",
    "RESNET50_CONV5_3X3",
    "RESNET50_CONV5_STRIDED",
    "resnet50_backbone",
    "resnet50_conv5_stride1",
    "resnet50_os16_backbone",
    "resolve_weights",
    "vgg19_backbone",
]

#: Per-channel means subtracted by ``preprocess_input(mode="caffe")``, in
#: **BGR** order (B, G, R).
CAFFE_BGR_MEANS = (103.939, 116.779, 123.68)

#: Seconds a socket may block while Keras downloads weights, so that a
#: network that drops packets fails in bounded time instead of hanging.
DOWNLOAD_TIMEOUT = 30.0

_KERAS_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/"

WeightsFile = collections.namedtuple("WeightsFile", "model fname url md5")
WeightsFile.__doc__ = """A Keras Applications ImageNet weight file (``include_top=False``).

Attributes:
    model: str, the ``keras.applications`` constructor name.
    fname: str, file name in the Keras cache.
    url: str, where Keras downloads it from.
    md5: str, the hash Keras checks.
"""

#: The ``include_top=False`` ImageNet files Keras downloads for each backbone.
KERAS_WEIGHTS = {
    "vgg19": WeightsFile(
        "VGG19", "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _KERAS_BASE + "vgg19/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "253f8cb515780f3b799900260a226db6"),
    "resnet101": WeightsFile(
        "ResNet101", "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _KERAS_BASE + "resnet/resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "88cf7a10940856eca736dc7b7e228a21"),
    "resnet50": WeightsFile(
        "ResNet50", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _KERAS_BASE + "resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "4d473c1dd8becc155b73f8504c6f6626"),
    "efficientnetv2_s": WeightsFile(
        "EfficientNetV2S", "efficientnetv2-s_notop.h5",
        _KERAS_BASE + "efficientnet_v2/efficientnetv2-s_notop.h5",
        "af0682fb74e8c54910f2d4393339c070"),
    "efficientnetv2_l": WeightsFile(
        "EfficientNetV2L", "efficientnetv2-l_notop.h5",
        _KERAS_BASE + "efficientnet_v2/efficientnetv2-l_notop.h5",
        "b0b66b5c863aef5b46e8608fe1711615"),
}


class WeightsUnavailableError(RuntimeError):
    """The Keras ImageNet weights could not be downloaded (e.g. no internet).

    Attributes:
        fname: str, the file Keras wanted (e.g.
            ``vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5``).
        url: str, where Keras tried to download it from.
    """

    def __init__(self, spec, cause):
        self.fname = spec.fname
        self.url = spec.url
        super().__init__(
            f"ImageNet weights for keras.applications.{spec.model} are not "
            f"available: downloading {spec.fname} from {spec.url} failed "
            f"({type(cause).__name__}: {cause}). This machine probably has no "
            f"internet access. Download {spec.url} on a machine that can reach "
            f"it (md5 {spec.md5}), copy it here and pass "
            f"`--weights /path/to/{spec.fname}` (weights=PATH), or put it in the "
            f"Keras cache (~/.keras/models/{spec.fname}, or "
            f"$KERAS_HOME/models/); or pass `--weights none` (weights=None) for "
            f"random weights, which are only good for pipeline tests.")


def _download(spec):
    """Path of the cached Keras weight file, downloading it if needed."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
    try:
        return keras.utils.get_file(spec.fname, spec.url, cache_subdir="models",
                                    file_hash=spec.md5)
    except Exception as e:  # keras raises a bare Exception on URL errors
        raise WeightsUnavailableError(spec, e) from e
    finally:
        socket.setdefaulttimeout(old)


def resolve_weights(name, weights):
    """Turn a ``weights`` argument into a file path and a provenance string.

    Args:
        name: str, a key of :data:`KERAS_WEIGHTS` (``"vgg19"``, ``"resnet101"``,
            ``"resnet50"``, ``"efficientnetv2_s"``, ``"efficientnetv2_l"``).
        weights: ``"imagenet"``, None, or a path (str / os.PathLike) to a
            local weight file.

    Returns:
        ``(path, provenance)``: path is a str or None (random init);
        provenance a human-readable str for ``Backbone.weights``.

    Raises:
        WeightsUnavailableError: ``"imagenet"`` and the file is neither in the
            Keras cache nor downloadable; the message names the file and URL.
        FileNotFoundError: ``weights`` is a path that does not exist.
        ValueError: ``weights`` is of another type.
    """
    spec = KERAS_WEIGHTS[name]
    if weights is None:
        return None, "random initialisation (weights=None)"
    if isinstance(weights, str) and weights == "imagenet":
        path = _download(spec)
        return path, (f"imagenet: keras.applications.{spec.model} {spec.fname} "
                      f"(md5 {spec.md5}, {spec.url})")
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            f"{name}: weights must be 'imagenet', None or a file path, got {weights!r}")
    path = os.path.abspath(os.fspath(weights))
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{name}: weights file {path!r} does not exist (expected the Keras file "
            f"{spec.fname} from {spec.url}, or 'imagenet' / 'none')")
    return path, f"file: {path}"


@keras.saving.register_keras_serializable(package="mll_tf")
class CaffePreprocess(keras.layers.Layer):
    """RGB [0, 255] -> caffe-style BGR with the ImageNet means subtracted.

    Equals ``keras.applications.vgg19.preprocess_input`` (and ``resnet``'s;
    ``imagenet_utils.preprocess_input(mode="caffe")``) for channels-last
    input: channels reversed, then :data:`CAFFE_BGR_MEANS` subtracted, no
    scaling.

    Call args:
        inputs: float tensor ``[..., 3]``, RGB in [0, 255].

    Returns:
        float32 tensor of the same shape, BGR, roughly in [-124, 152].
    """

    def call(self, inputs):
        x = keras.ops.cast(inputs, "float32")
        x = keras.ops.flip(x, axis=-1)
        mean = keras.ops.convert_to_tensor(CAFFE_BGR_MEANS, dtype="float32")
        return x - mean

    def compute_output_shape(self, input_shape):
        return input_shape


def _resize_shorter(input_size):
    return int(round(256 / 224 * min(input_size)))


def _input_shape(input_size):
    return (int(input_size[0]), int(input_size[1]), 3)


def vgg19_backbone(weights="imagenet", input_size=(224, 224)):
    """VGG19 up to ``block5_conv4`` (ReLU included), LESA's feature map.

    Args:
        weights: ``"imagenet"`` (Keras' caffe-converted VGG19 ImageNet file,
            downloaded), None (random init) or a path to a local weight file;
            see :func:`resolve_weights`.
        input_size: ``(H, W)`` in pixels, each >= 32.

    Returns:
        mll_tf.backbones.Backbone named ``"vgg19"`` whose model maps float32
        RGB ``[B, H, W, 3]`` in [0, 255] to float32 ``[B, H/16, W/16, 512]``
        (>= 0, after ReLU); 14x14x512 at 224. ``resize_shorter`` is
        ``round(256/224 * min(H, W))`` (256 at 224): LESA's "shorter side to
        256, central 224 crop" (slim ``vgg_preprocessing``).

    Raises:
        WeightsUnavailableError, FileNotFoundError, ValueError: see
            :func:`resolve_weights`.
    """
    path, provenance = resolve_weights("vgg19", weights)
    shape = _input_shape(input_size)
    # the inner net takes any size: OASS clones the backbone on tiles and patches (flexible_input)
    app = keras.applications.VGG19(include_top=False, weights=path, input_shape=(None, None, 3))
    tap = keras.Model(app.input, app.get_layer("block5_conv4").output,
                      name="vgg19_block5_conv4")
    rs = _resize_shorter(input_size)
    return _caffe_backbone(
        "vgg19", tap, input_size, provenance,
        f"RGB in [0,255]; loader: shorter side resized to {rs} "
        f"(round(256/224 x input size)), central {shape[0]}x{shape[1]} crop, as "
        "LESA's slim vgg_preprocessing (eval); inside the model: caffe-style "
        "RGB->BGR flip and subtraction of the BGR means (103.939, 116.779, 123.68), "
        "= keras.applications.vgg19.preprocess_input. Keras' VGG19 weights are the "
        "Caffe (BGR) release; LESA's slim vgg_19_2016_08_28 checkpoint takes RGB "
        "minus the RGB means (123.68, 116.78, 103.94): both come from the Caffe VGG19 "
        "release with the first conv's input channels in opposite order, so with "
        "each one's own preprocessing they should compute the same features "
        "(expected, not verified)",
        resize_shorter=rs)


def resnet101_backbone(weights="imagenet", input_size=(224, 224)):
    """ResNet101 global-average-pooled features (``pool5``), IMCL's vector.

    Keras' ``ResNet101`` is the port of the original MSRA Caffe ResNet-101
    ("v1": stride 2 on the first 1x1 conv of a stage, biased convolutions,
    caffe BGR preprocessing). IMCL used slim ``resnet_v1_101`` (its
    ``oidv2-resnet_v1_101`` OpenImages checkpoint; docs/imcl.md §1), whose
    stride sits on the 3x3 conv and which takes RGB minus the means, so these
    ImageNet features are a stand-in, not IMCL's features.

    Args:
        weights: ``"imagenet"``, None or a path; see :func:`resolve_weights`.
        input_size: ``(H, W)`` in pixels, each >= 32.

    Returns:
        mll_tf.backbones.Backbone named ``"resnet101"`` whose model maps
        float32 RGB ``[B, H, W, 3]`` in [0, 255] to float32
        ``[B, 1, 1, 2048]`` (>= 0: the mean of post-ReLU maps).
        ``resize_shorter`` is ``round(256/224 * min(H, W))`` (256 at 224),
        because slim's ``preprocessing_factory`` maps ``resnet_v1_101`` to
        the same ``vgg_preprocessing`` as LESA's VGG19.

    Raises:
        WeightsUnavailableError, FileNotFoundError, ValueError: see
            :func:`resolve_weights`.
    """
    path, provenance = resolve_weights("resnet101", weights)
    shape = _input_shape(input_size)
    app = keras.applications.ResNet101(include_top=False, weights=path,
                                       input_shape=shape, pooling="avg")

    def pool5_map(x):
        x = app(x)
        return keras.layers.Reshape((1, 1, x.shape[-1]), name="pool5_map")(x)

    rs = _resize_shorter(input_size)
    return _caffe_backbone(
        "resnet101", pool5_map, input_size, provenance,
        f"RGB in [0,255]; loader: shorter side resized to {rs} "
        f"(round(256/224 x input size)), central {shape[0]}x{shape[1]} crop "
        "(slim vgg_preprocessing, which slim uses for resnet_v1_101); inside the "
        "model: caffe-style RGB->BGR flip and subtraction of the BGR means "
        "(103.939, 116.779, 123.68), = keras.applications.resnet.preprocess_input. "
        "Keras ResNet101 is the MSRA Caffe ResNet-101 port (stride on the first 1x1 "
        "conv), not slim resnet_v1_101 (stride on the 3x3 conv, RGB input) as used "
        "by IMCL; output = global average pool (pool5), 2048-d, as a 1x1 map",
        resize_shorter=rs)


def resnet50_backbone(weights="imagenet", input_size=(448, 448)):
    """ResNet-50 ``conv5_block3_out`` feature map (after the last ReLU).

    Keras' ``ResNet50`` is the MSRA Caffe ResNet-50 port (caffe BGR
    preprocessing, done here by :class:`CaffePreprocess`). Unlike
    ``resnet101`` (IMCL's pooled vector) this keeps the spatial map, which
    the ML-Decoder / ML-GCN heads attend over.

    Args:
        weights: ``"imagenet"``, None or a path; see :func:`resolve_weights`.
        input_size: ``(H, W)`` in pixels, each >= 32 (default 448, as the
            multi-label heads of Prokofiev & Sovrasov 2022).

    Returns:
        mll_tf.backbones.Backbone named ``"resnet50"`` whose model maps
        float32 RGB ``[B, H, W, 3]`` in [0, 255] to float32
        ``[B, ceil(H/32), ceil(W/32), 2048]`` (>= 0); 14x14x2048 at 448.
        ``resize_shorter`` is None (shorter side to the input size, then the
        central crop).

    Raises:
        WeightsUnavailableError, FileNotFoundError, ValueError: see
            :func:`resolve_weights`.
    """
    path, provenance = resolve_weights("resnet50", weights)
    # the inner net takes any size: OASS clones the backbone on tiles and patches (flexible_input)
    app = keras.applications.ResNet50(include_top=False, weights=path, input_shape=(None, None, 3))
    return _resnet50_backbone("resnet50", app, input_size, provenance,
                              "output = conv5_block3_out (stride 32, 2048 channels)")


def _resnet50_backbone(name, net, input_size, provenance, output):
    """A Backbone ``name``: RGB [0, 255] -> caffe preprocessing -> ``net`` (a ResNet-50 trunk)."""
    return _caffe_backbone(
        name, net, input_size, provenance,
        "RGB in [0,255]; loader: shorter side resized to the input size, central crop; "
        "inside the model: caffe-style RGB->BGR flip and subtraction of the BGR means "
        "(103.939, 116.779, 123.68), = keras.applications.resnet50.preprocess_input; " + output)


def _caffe_backbone(name, net, input_size, provenance, preprocessing, resize_shorter=None):
    """A Backbone ``name``: RGB [0, 255] -> :class:`CaffePreprocess` -> ``net``.

    ``net`` is a Keras model or a callable on Keras tensors; the model is
    ``<name>_features`` with the input ``rgb_0_255`` of ``input_size``.
    """
    from mll_tf.backbones import Backbone

    shape = _input_shape(input_size)
    inputs = keras.Input(shape=shape, name="rgb_0_255")
    model = keras.Model(inputs, net(CaffePreprocess(name="caffe_preprocess")(inputs)), name=f"{name}_features")
    return Backbone(
        name=name,
        model=model,
        input_size=tuple(input_size),
        feature_shape=tuple(model.output.shape[1:]),
        weights=provenance,
        preprocessing=preprocessing,
        resize_shorter=resize_shorter,
    )


#: The two stride-2 convolutions of Keras' ResNet-50 conv5 stage, both 1x1:
#: the first conv of the first bottleneck and its projection shortcut.
RESNET50_CONV5_STRIDED = ("conv5_block1_0_conv", "conv5_block1_1_conv")
#: The 3x3 convolutions of the conv5 stage ("same" padding).
RESNET50_CONV5_3X3 = ("conv5_block1_2_conv", "conv5_block2_2_conv", "conv5_block3_2_conv")


def _check_dilation(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def resnet50_conv5_stride1(app, dilation=1):
    """A copy of a Keras ``ResNet50`` whose conv5 stage runs at stride 1.

    Made with ``keras.models.clone_model``: the configs of
    :data:`RESNET50_CONV5_STRIDED` get ``strides=1`` and those of
    :data:`RESNET50_CONV5_3X3` ``dilation_rate=dilation`` (padding stays
    "same"); then the original's weights are copied (no shape changes).

    Args:
        app: keras.Model, ``keras.applications.ResNet50(include_top=False)``
            (``pooling=None``).
        dilation: int >= 1, the dilation of conv5's 3x3 convs. 1 (as
            Puzzle-CAM's ``strides=(2, 2, 2, 1)``) leaves them as they are;
            2 is the "a trous" variant, whose output at even positions
            equals the stride-32 output.

    Returns:
        keras.Model named ``"resnet50_os16"`` with ``app``'s input and a
        float32 ``[B, ceil(H/16), ceil(W/16), 2048]`` output.

    Raises:
        ValueError: ``dilation`` is not an int >= 1, or ``app`` lacks the
            expected conv5 layers (1x1 convs at stride 2, "same" 3x3 convs).
    """
    _check_dilation("dilation", dilation)
    seen = set()

    def clone_layer(layer):
        config = layer.get_config()
        if layer.name in RESNET50_CONV5_STRIDED:
            if tuple(config["kernel_size"]) != (1, 1) or tuple(config["strides"]) != (2, 2):
                raise ValueError(f"{layer.name}: expected a 1x1 conv at stride 2, got kernel "
                                 f"{config['kernel_size']} stride {config['strides']}")
            config["strides"] = (1, 1)
            seen.add(layer.name)
        elif layer.name in RESNET50_CONV5_3X3:
            if tuple(config["kernel_size"]) != (3, 3) or str(config["padding"]).lower() != "same":
                raise ValueError(f"{layer.name}: expected a 3x3 'same' conv, got kernel "
                                 f"{config['kernel_size']} padding {config['padding']}")
            config["dilation_rate"] = (dilation, dilation)
            seen.add(layer.name)
        return layer.__class__.from_config(config)

    clone = keras.models.clone_model(app, clone_function=clone_layer)
    missing = set(RESNET50_CONV5_STRIDED + RESNET50_CONV5_3X3) - seen
    if missing:
        raise ValueError(f"not a Keras ResNet50: no layer(s) {sorted(missing)}")
    clone.set_weights(app.get_weights())
    return keras.Model(clone.input, clone.output, name="resnet50_os16")


def resnet50_os16_backbone(weights="imagenet", input_size=(448, 448), conv5_dilation=1):
    """ResNet-50 ``conv5_block3_out`` at output stride 16, Puzzle-CAM's backbone.

    Puzzle-CAM (Jo & Yu, "Puzzle-CAM: Improved localization via matching
    partial and full features", ICIP 2021, arXiv 2101.11253; code
    ``shjo-april/PuzzleCAM``, ``core/networks.py`` class ``Backbone``) builds
    ``resnet.ResNet(Bottleneck, [3, 4, 6, 3], strides=(2, 2, 2, 1))`` of
    ``core/arch_resnet/resnet.py``: layer4 (Keras' conv5) at stride 1, and
    **not dilated** (``dilations`` keeps its default ``(1, 1, 1, 1)``). This
    is Keras' ``ResNet50`` (the MSRA Caffe port; caffe BGR preprocessing by
    :class:`CaffePreprocess`) with the same change, made by
    :func:`resnet50_conv5_stride1`: ``conv5_block1_1_conv`` and the shortcut
    ``conv5_block1_0_conv`` (the stage's only stride-2 convs, both 1x1) at
    stride 1, same weights as ``resnet50``. Without dilation conv5's 3x3
    convs cover half the image extent they were trained on, as in
    Puzzle-CAM. Not as in Puzzle-CAM: its weights are torchvision's ImageNet
    ResNet-50 (stride on the 3x3 conv in conv3/conv4, RGB mean/std input),
    these are Keras' Caffe ResNet-50 weights; its frozen-BatchNorm mode is
    not part of the backbone.

    Args:
        weights: ``"imagenet"`` (the same Keras file as ``resnet50``), None
            (random init) or a path to a weight file of
            ``keras.applications.ResNet50(include_top=False)``; see
            :func:`resolve_weights`.
        input_size: ``(H, W)`` in pixels, each >= 32 (default 448; Puzzle-CAM
            and OASS train at 512 -> a 32x32 map).
        conv5_dilation: int >= 1, the dilation of conv5's 3x3 convs: 1 (the
            registered ``resnet50_os16``, as Puzzle-CAM) or e.g. 2 (the
            "a trous" variant: its output at even positions equals
            ``resnet50``'s).

    Returns:
        mll_tf.backbones.Backbone named ``"resnet50_os16"`` whose model maps
        float32 RGB ``[B, H, W, 3]`` in [0, 255] to float32
        ``[B, ceil(H/16), ceil(W/16), 2048]`` (>= 0, after the last ReLU);
        28x28x2048 at 448, 32x32x2048 at 512. The inner ``"resnet50_os16"``
        model has a ``[None, None, 3]`` input, so a clone of ``model`` on
        another input size (``mll_tf.tasks.oass.flexible_input``) works.
        ``resize_shorter`` is None (shorter side to the input size, then the
        central crop).

    Raises:
        WeightsUnavailableError, FileNotFoundError, ValueError: see
            :func:`resolve_weights`.
        ValueError: ``conv5_dilation`` is not an int >= 1, or a side of
            ``input_size`` is below 32.
    """
    _check_dilation("conv5_dilation", conv5_dilation)
    path, provenance = resolve_weights("resnet50", weights)
    shape = _input_shape(input_size)
    if min(shape[:2]) < 32:
        raise ValueError(f"input_size {tuple(input_size)}: each side must be >= 32")
    # The inner net takes any size, so that a clone of the model on a
    # [None, None] input (the OASS tasks' tiles and patches) runs.
    app = keras.applications.ResNet50(include_top=False, weights=path, input_shape=(None, None, 3))
    os16 = resnet50_conv5_stride1(app, dilation=conv5_dilation)
    conv5 = ("not dilated, as Puzzle-CAM's strides=(2, 2, 2, 1)" if conv5_dilation == 1
             else f"dilation {conv5_dilation}")
    return _resnet50_backbone(
        "resnet50_os16", os16, input_size, provenance,
        "output = conv5_block3_out at stride 16 (conv5_block1_0_conv and conv5_block1_1_conv "
        f"at stride 1, conv5's 3x3 convs {conv5}), 2048 channels")


_V2 = {"efficientnetv2_s": "EfficientNetV2S", "efficientnetv2_l": "EfficientNetV2L"}


def efficientnetv2_backbone(name, weights="imagenet", input_size=(448, 448)):
    """EfficientNetV2-S or -L feature map (``top_activation``, 1280 channels).

    The backbones of Prokofiev & Sovrasov 2022 (Sec. 4.1, Table 1; the
    original's ``efficientnetv2_{s,l}_21k`` timm models in
    ``torchreid/models/timm_wrapper.py``), at their 448 px input.

    Args:
        name: ``"efficientnetv2_s"`` or ``"efficientnetv2_l"``.
        weights: ``"imagenet"`` (Keras' ImageNet-1k file), None or a path to a
            weight file saved from the same ``keras.applications`` model with
            ``include_top=False``; see :func:`resolve_weights`.
        input_size: ``(H, W)`` in pixels, each >= 32 (default 448).

    Returns:
        mll_tf.backbones.Backbone whose model maps float32 RGB
        ``[B, H, W, 3]`` in [0, 255] to float32 ``[B, ceil(H/32),
        ceil(W/32), 1280]`` (SiLU outputs, >= -0.279); 14x14x1280 at 448.
        Normalisation is Keras' ``include_preprocessing`` layer inside the
        model: ``Rescaling(1/128, offset=-1)``.

    Raises:
        KeyError: unknown ``name``.
        WeightsUnavailableError, FileNotFoundError, ValueError: see
            :func:`resolve_weights`.
    """
    from mll_tf.backbones import Backbone

    ctor = _V2[name]
    path, provenance = resolve_weights(name, weights)
    shape = _input_shape(input_size)
    app = getattr(keras.applications, ctor)(include_top=False, weights=path, input_shape=(None, None, 3),
                                            include_preprocessing=True)   # any size, as resnet50
    inputs = keras.Input(shape=shape, name="rgb_0_255")
    outputs = app(inputs)
    model = keras.Model(inputs, outputs, name=f"{name}_features")
    return Backbone(
        name=name,
        model=model,
        input_size=tuple(input_size),
        feature_shape=tuple(model.output.shape[1:]),
        weights=provenance,
        preprocessing=(
            "RGB in [0,255]; loader: shorter side resized to the input size, central crop; "
            "inside the model: keras.applications include_preprocessing, x / 128 - 1 "
            "(the paper: (x/255 - 0.5) / 0.5 = x / 127.5 - 1); weights: Keras ImageNet-1k, "
            "not the paper's ImageNet-21k / OpenImages timm checkpoints"),
    )
