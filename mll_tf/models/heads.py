"""Multi-label classification heads on precomputed features or on a backbone.

:class:`MultiLabelHead` is the fast path of the partial-label methods (CSL,
ASL, Ignore/Negative BCE, the IMCL logistic baseline): global average pooling
of a stored feature map, dropout, and one linear layer giving per-class
logits, as CSL's TResNet head (global average pooling + ``Linear(C)``;
Alibaba-MIIL/PartialLabelingCSL). :class:`FineTuneClassifier` puts the same
head on a trainable backbone for end-to-end fine-tuning (``--finetune``).

The metric-learning heads of Prokofiev & Sovrasov 2022 ("Combining Metric
Learning and Attention Heads for Accurate and Efficient Multilabel Image
Classification", Sec. 3) share this module's conventions (docs/ml_decoder.md):

* :class:`CosineClassifier` (alias :data:`AngleSimpleLinear`): cos of the
  angle between the L2-normalised features and the L2-normalised class
  weights, in [-1, 1] (deep-object-reid ``torchreid/losses/am_softmax.py``);
* :class:`PooledHead`: the linear / cosine baseline on pooled features, with
  the call signature of :class:`mll_tf.models.ml_decoder.MLDecoderHead` and
  :class:`mll_tf.models.ml_gcn.MLGCNHead` (``[B, R, D]`` or ``[B, h, w, D]``
  -> float32 ``[B, C]``).
"""

import keras
import tensorflow as tf


def _check_head_args(num_classes, dropout):
    """Raises ValueError unless ``num_classes >= 1`` and ``dropout`` is in [0, 1)."""
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


@keras.saving.register_keras_serializable(package="mll_tf")
class MultiLabelHead(keras.Model):
    """Pool -> dropout -> ``Dense(C)`` logits.

    Args:
        num_classes: int C >= 1.
        dropout: float in [0, 1), dropout rate before the linear layer.
        hidden_units: int, 0 for a single linear layer; > 0 adds a linear
            bottleneck ``Dense(hidden_units)`` without activation, as CSL's
            OpenImages ``do_bottleneck_head`` (``parse_args`` in
            ``src/helper_functions/helper_functions.py``).

    Call:
        features: float ``[B, R, D]`` region features (averaged over R) or
        ``[B, D]`` pooled features. Returns float32 logits ``[B, C]``.

    Raises:
        ValueError: ``num_classes < 1`` or ``dropout`` outside [0, 1).
    """

    def __init__(self, num_classes, dropout=0.0, hidden_units=0, **kwargs):
        super().__init__(**kwargs)
        _check_head_args(num_classes, dropout)
        self.num_classes = int(num_classes)
        self.dropout_rate = float(dropout)
        self.hidden_units = int(hidden_units)
        self.drop = keras.layers.Dropout(self.dropout_rate)
        self.bottleneck = keras.layers.Dense(self.hidden_units, name="bottleneck") if self.hidden_units else None
        self.classifier = keras.layers.Dense(self.num_classes, name="classifier")

    def call(self, features, training=False):
        x = tf.cast(features, tf.float32)
        if x.shape.rank == 3:
            x = tf.reduce_mean(x, axis=1)
        elif x.shape.rank == 4:
            x = tf.reduce_mean(x, axis=[1, 2])
        x = self.drop(x, training=training)
        if self.bottleneck is not None:
            x = self.bottleneck(x)
        return self.classifier(x)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "dropout": self.dropout_rate, "hidden_units": self.hidden_units}


@keras.saving.register_keras_serializable(package="mll_tf")
class FineTuneClassifier(keras.Model):
    """A backbone feature map followed by :class:`MultiLabelHead`, trained end to end.

    Args:
        backbone: keras.Model mapping float32 RGB ``[B, H, W, 3]`` in [0, 255]
            to ``[B, h, w, D]`` (``mll_tf.backbones.build_backbone(...).model``).
        num_classes: int C.
        dropout: float in [0, 1).

    Call:
        images float ``[B, H, W, 3]`` in [0, 255] -> float32 logits ``[B, C]``.
    """

    def __init__(self, backbone, num_classes, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.head = MultiLabelHead(num_classes, dropout=dropout, name="head")

    def call(self, images, training=False):
        return self.head(self.backbone(images, training=training), training=training)

    def get_config(self):
        return {**super().get_config(), "backbone": keras.saving.serialize_keras_object(self.backbone),
                "num_classes": self.head.num_classes, "dropout": self.head.dropout_rate}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)


# --------------------------------------------------------------------------
# Metric-learning heads (Prokofiev & Sovrasov 2022): shared helpers.
# --------------------------------------------------------------------------

#: F.normalize's epsilon on the norm (torch: x / max(||x||, 1e-12)); applied
#: as ``rsqrt(max(sum x^2, eps^2))`` by ``tf.math.l2_normalize``.
NORM_EPS = 1e-12


def l2_normalize(x, axis):
    """``x / max(||x||_2, 1e-12)`` along ``axis`` (torch ``F.normalize``).

    Args:
        x: float tensor (any dtype; computed in float32 if x is float16 /
            bfloat16, the result is float32 then).
        axis: int or list of int.

    Returns:
        float32 (or float64 for float64 input) tensor of x's shape.
    """
    x = tf.convert_to_tensor(x)
    if x.dtype in (tf.float16, tf.bfloat16):
        x = tf.cast(x, tf.float32)
    return tf.math.l2_normalize(x, axis=axis, epsilon=NORM_EPS ** 2)


def region_tokens(features, dtype=tf.float32):
    """Region features ``[B, R, D]`` or a feature map ``[B, h, w, D]`` -> ``[B, R, D]``.

    Args:
        features: float tensor of rank 3 or 4 (a rank-4 map is reshaped row
            by row, R = h * w; the spatial shape may be dynamic).
        dtype: the dtype to cast to (the layer's compute dtype).

    Returns:
        ``dtype`` tensor ``[B, R, D]``.

    Raises:
        ValueError: for another rank.
    """
    x = tf.cast(features, dtype)
    rank = x.shape.rank
    if rank == 3:
        return x
    if rank == 4:
        shape = tf.shape(x)
        return tf.reshape(x, [shape[0], shape[1] * shape[2], x.shape[-1]])
    raise ValueError(f"features must be [B, R, D] region features or a [B, h, w, D] feature map, "
                     f"got rank {rank} (shape {x.shape})")


def pool_features(features, dtype=tf.float32):
    """Global average pooling: ``[B, R, D]`` / ``[B, h, w, D]`` -> ``[B, D]`` (``[B, D]`` passes).

    Raises:
        ValueError: for a rank other than 2, 3 or 4.
    """
    x = tf.cast(features, dtype)
    if x.shape.rank == 2:
        return x
    return tf.reduce_mean(region_tokens(x, dtype), axis=1)


@keras.saving.register_keras_serializable(package="mll_tf")
class UnitColumnUniform(keras.initializers.Initializer):
    """U(-1, 1) entries, then every column (last axis indexes columns) scaled to unit L2 norm.

    AngleSimpleLinear's ``uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)``
    (deep-object-reid ``torchreid/losses/am_softmax.py``) for a ``[D, C]``
    weight: each class vector ``W[:, c]`` has norm 1.
    """

    def __init__(self, seed=None):
        self.seed = seed

    def __call__(self, shape, dtype=None):
        # Keras' own initializer draws statelessly from an integer seed (a fresh one when seed is None):
        # no global seed-generator variable, so building under any tf.distribute strategy works.
        w = keras.initializers.RandomUniform(-1.0, 1.0, seed=self.seed)(shape, dtype="float32")
        norm = keras.ops.sqrt(keras.ops.sum(keras.ops.square(w), axis=0, keepdims=True))
        return keras.ops.cast(w / keras.ops.maximum(norm, 1e-12), dtype or "float32")

    def get_config(self):
        return {"seed": self.seed}


@keras.saving.register_keras_serializable(package="mll_tf")
class CosineClassifier(keras.layers.Layer):
    """AngleSimpleLinear: ``cos theta = normalize(x) . normalize(W)``, clipped to [-1, 1].

    ``out[b, c] = <x_b / ||x_b||, W[:, c] / ||W[:, c]||>`` with norms floored
    at 1e-12 (torch ``F.normalize``), then clipped to [-1, 1] as the
    original (deep-object-reid ``torchreid/losses/am_softmax.py``
    ``AngleSimpleLinear``; used with the AAM loss, paper Sec. 3.3). No bias.
    The AAM loss takes these cosines; probabilities are
    ``sigmoid(s * cos)`` with the loss's scale s, NOT ``sigmoid(cos)``.

    Args:
        units: int C >= 1, the number of classes.
        kernel_initializer: a Keras initializer for the ``[D, C]`` weight;
            default :class:`UnitColumnUniform` (unit class vectors).

    Call:
        x: float ``[..., D]`` (any float dtype). Returns float32
        ``[..., C]`` in [-1, 1] (float64 for float64 input).

    Raises:
        ValueError: ``units < 1``.
    """

    def __init__(self, units, kernel_initializer=None, **kwargs):
        super().__init__(**kwargs)
        if int(units) < 1:
            raise ValueError(f"units must be >= 1, got {units}")
        self.units = int(units)
        self.kernel_initializer = keras.initializers.get(kernel_initializer or UnitColumnUniform())

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(int(input_shape[-1]), self.units),
                                      initializer=self.kernel_initializer, trainable=True)

    def call(self, x):
        x = l2_normalize(x, axis=-1)
        w = l2_normalize(tf.cast(self.kernel, x.dtype), axis=0)
        return tf.clip_by_value(tf.matmul(x, w), -1.0, 1.0)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        return {**super().get_config(), "units": self.units,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}


#: The deep-object-reid name of :class:`CosineClassifier`.
AngleSimpleLinear = CosineClassifier


@keras.saving.register_keras_serializable(package="mll_tf")
class PooledHead(keras.Model):
    """Baseline head: global average pooling -> dropout -> linear or cosine classifier.

    The "linear / AngleSimpleLinear on pooled features" baseline of
    Prokofiev & Sovrasov 2022 (Sec. 4; deep-object-reid
    ``torchreid/models/timm_wrapper.py``: pooled backbone features ->
    ``nn.Linear`` or ``AngleSimpleLinear``). With ``cosine=False`` and the
    same weights it computes exactly :class:`MultiLabelHead` (without a
    bottleneck).

    Args:
        num_classes: int C >= 1.
        cosine: bool. False: ``Dense(C)`` logits (for ASL/BCE). True:
            :class:`CosineClassifier` cosines in [-1, 1] (for the AAM loss,
            which applies its scale s; no bias).
        dropout: float in [0, 1), dropout on the pooled features (training
            only).

    Call:
        features: float (float16/bfloat16/float32) ``[B, R, D]`` region
        features, ``[B, h, w, D]`` feature map or ``[B, D]`` pooled
        features. Returns float32 ``[B, C]``: logits, or cosines in [-1, 1]
        with ``cosine=True``.

    Raises:
        ValueError: ``num_classes < 1`` or ``dropout`` outside [0, 1).
    """

    def __init__(self, num_classes, cosine=False, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        _check_head_args(num_classes, dropout)
        self.num_classes = int(num_classes)
        self.cosine = bool(cosine)
        self.dropout_rate = float(dropout)
        self.drop = keras.layers.Dropout(self.dropout_rate)
        self.classifier = (CosineClassifier(self.num_classes, name="classifier") if self.cosine
                           else keras.layers.Dense(self.num_classes, name="classifier"))

    def build(self, input_shape):
        self.classifier.build((None, int(input_shape[-1])))

    def call(self, features, training=False):
        x = pool_features(features, tf.float32)
        x = self.drop(x, training=training)
        return tf.cast(self.classifier(x), tf.float32)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "cosine": self.cosine,
                "dropout": self.dropout_rate}
