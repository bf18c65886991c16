"""Multi-label classification heads on precomputed features or on a backbone.

:class:`MultiLabelHead` is the fast path of the partial-label methods (CSL,
ASL, Ignore/Negative BCE, the IMCL logistic baseline): global average pooling
of a stored feature map, dropout, and one linear layer giving per-class
logits, as CSL's TResNet head (global average pooling + ``Linear(C)``;
Alibaba-MIIL/PartialLabelingCSL). :class:`FineTuneClassifier` puts the same
head on a trainable backbone for end-to-end fine-tuning (``--finetune``).
"""

import keras
import tensorflow as tf


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
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
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
