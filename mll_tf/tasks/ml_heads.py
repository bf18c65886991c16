"""Attention heads with metric learning (Prokofiev & Sovrasov 2022) as Tasks.

"Combining Metric Learning and Attention Heads for Accurate and Efficient
Multilabel Image Classification" (Prokofiev & Sovrasov 2022; PyTorch code on
the ``multilabel`` branch of openvinotoolkit/deep-object-reid). Three heads,
each on the feature store's region features ``[B, R, D]`` or, with
``--finetune``, on a backbone's feature map ``[B, h, w, D]`` trained end to end:

============  ===========================================================================
method        head
============  ===========================================================================
ml_decoder    :class:`mll_tf.models.ml_decoder.MLDecoderHead`: frozen queries cross-attend
              to the region tokens, group fully-connected pooling (paper Sec. 3.1;
              ``torchreid/models/ml_decoder.py``)
ml_gcn        :class:`mll_tf.models.ml_gcn.MLGCNHead`: a two-layer GCN over label
              embeddings and the training-label co-occurrence graph gives a channel
              attention before pooling (paper Sec. 3.2; ``torchreid/models/gcn.py``)
linear_head   :class:`mll_tf.models.heads.PooledHead`: global average pooling and a linear
              classifier, or with ``--loss aam`` the cosine classifier
              ``AngleSimpleLinear`` (the paper's baseline)
============  ===========================================================================

Every method takes ``--loss asl|aam``:

* ``asl``: :class:`mll_tf.losses.partial.AsymmetricLoss` (Ridnik et al. 2021,
  Eq. 1-4) on logits, ``-1`` entries ignored (DOR-ML removes targets < 0).
* ``aam``: :class:`mll_tf.losses.aam.AMBinaryLoss` (asymmetric angular margin,
  paper Sec. 3.3, Eq. 4-6; ``torchreid/losses/asl.py``) on cosines; the heads
  use their cosine variants. The model's output is ``s * cos`` (s =
  ``--aam-scale``, or ``compute_s(C)`` with ``--aam-scale auto``), so every
  consumer of the output -- validation, ``evaluate.py``, ``infer.py``, the
  running class prior -- sees logits whose sigmoid is the probability
  ``sigmoid(s * cos)``; the loss receives ``output / s`` = the cosines. (The
  original exports raw cosines and its README applies the sigmoid to them,
  which gives wrong probabilities.)

Training, validation (mAP, CF1, OF1, ...), evaluation, inference and the
``prior.csv`` file are those of the partial-label methods
(:class:`~mll_tf.tasks.multilabel.MultiLabelTask`,
:class:`~mll_tf.tasks.partial.PartialLabelSteps`): losses are per-image sums
averaged over the global batch.

Unlike the other methods, only the ``train`` and ``val`` feature stores are
required to train (the original's json datasets have ``train.json`` and
``val.json`` only); ``evaluate.py --split val`` evaluates such a run.
"""

import dataclasses
import os

import keras
import numpy as np
import tensorflow as tf

from mll_tf.tasks.base import register_task
from mll_tf.tasks.multilabel import MultiLabelConfig, MultiLabelTask
from mll_tf.tasks.partial import PartialLabelSteps, PriorCSV
from mll_tf.training.config import option

__all__ = ["LinearHeadTask", "MLDecoderConfig", "MLDecoderTask", "MLGCNConfig", "MLGCNTask", "MLHeadConfig",
           "MLHeadTask", "ScaledInputLoss", "TrainableMLHead", "parse_scale"]

LOSSES = ("asl", "aam")


def parse_scale(value):
    """``--aam-scale``: ``"auto"`` -> None (``compute_s(C)``), else a float > 0.

    Raises:
        ValueError: naming ``--aam-scale``.
    """
    text = str(value).strip().lower()
    if text == "auto":
        return None
    try:
        s = float(text)
    except ValueError:
        raise ValueError(f"--aam-scale: expected 'auto' or a number > 0, got {value!r}") from None
    if not np.isfinite(s) or s <= 0:
        raise ValueError(f"--aam-scale: expected 'auto' or a number > 0, got {value!r}")
    return s


@dataclasses.dataclass
class MLHeadConfig(MultiLabelConfig):
    """Options shared by the ``ml_decoder``, ``ml_gcn`` and ``linear_head`` methods."""
    loss: str = option("aam", "asl (asymmetric loss on logits) | aam (asymmetric angular margin on cosines)",
                       choices=LOSSES)
    aam_scale: str = option("23", "aam: scale s of the cosines ('auto': compute_s(C) = "
                            "min(max(sqrt(5) ln(C - 1), 7), 30)); the released COCO config: 23")
    aam_margin: float = option(0.0, "aam: angular margin m (released configs: 0)", min=0.0, max=1.0)
    aam_k: float = option(0.7, "aam: weight k of the positive term, 1 - k of the negative one",
                          min=0.0, max=1.0)
    aam_gamma_pos: float = option(0.0, "aam: focusing exponent of positives (released configs: 0)", min=0.0)
    aam_gamma_neg: float = option(0.0, "aam: focusing exponent of negatives (released configs: 0)", min=0.0)
    aam_clip: float = option(0.05, "aam: probability shift of negatives when focusing", min=0.0, max=1.0)
    aam_label_smoothing: float = option(0.0, "aam: label smoothing eps (1 -> 1 - eps, 0 -> eps)", min=0.0,
                                    max=0.5)
    asl_gamma_pos: float = option(0.0, "asl: focusing exponent of positives", min=0.0)
    asl_gamma_neg: float = option(4.0, "asl: focusing exponent of negatives", min=0.0)
    asl_clip: float = option(0.05, "asl: probability margin of negatives", min=0.0, max=1.0)
    dropout: float = option(0.0, "dropout before the classifier (linear_head, ml_gcn)", min=0.0, max=0.99)
    backbone_weights: str = option("imagenet", "--finetune: the backbone's weights: imagenet | none | a "
                                   "weight file")


@dataclasses.dataclass
class MLDecoderConfig(MLHeadConfig):
    """ML-Decoder options (Ridnik et al. 2023, Sec. 3; the paper's defaults)."""
    num_queries: int = option(100, "queries Q (capped at the number of classes)", min=1)
    decoder_dim: int = option(768, "token / query embedding size", min=1)
    decoder_heads: int = option(8, "cross-attention heads (must divide --decoder-dim)", min=1)
    decoder_ffn: int = option(2048, "feed-forward hidden size", min=1)
    decoder_dropout: float = option(0.1, "dropout inside the decoder layer", min=0.0, max=0.99)


@dataclasses.dataclass
class MLGCNConfig(MLHeadConfig):
    """ML-GCN channel-attention options (paper Sec. 3.2; ``gen_A(t=0.4, rho=0.25)``)."""
    label_embeddings: str = option("glove", "node features: 'glove' (the run's --word-vectors) or a .npy "
                                   "[C, E] whose rows are in the store's label order")
    allow_missing_embeddings: bool = option(False, "glove: keep labels without a word vector (zero node "
                                            "features) instead of refusing them")
    graph: str = option("", "adjacency: '' -> co-occurrence of the TRAINING labels; or a label-graph .npz "
                        "(P(j|i) from experiments/build_label_graph.py --kind cooccurrence --conditional; "
                        "rows matched by name)")
    graph_threshold: float = option(0.4, "binarise P(j|i) at this threshold t", min=0.0, max=1.0)
    graph_rho: float = option(0.25, "re-weighting rho of the neighbours", min=0.0, max=1.0)
    gcn_hidden: int = option(0, "width of the first GCN layer (0: the feature dimension D)", min=0)


class ScaledInputLoss(keras.losses.Loss):
    """``inner(y, y_pred / scale)``: the AAM loss on the cosines of a model that outputs ``s * cos``.

    Args:
        inner: a ``keras.losses.Loss`` returning per-example values ``[B]``
            (``reduction="none"``).
        scale: float s > 0.

    Call: ``y_true`` ``[B, C]`` in {1, 0, -1}, ``y_pred`` float ``[B, C]`` =
    s * cos. Returns ``inner(y_true, y_pred / s)``, float32 ``[B]``.
    """

    def __init__(self, inner, scale, **kwargs):
        super().__init__(reduction="none", **kwargs)
        self.inner = inner
        self.scale = float(scale)

    def call(self, y_true, y_pred):
        return self.inner(y_true, tf.cast(y_pred, tf.float32) / self.scale)


@keras.saving.register_keras_serializable(package="mll_tf")
class TrainableMLHead(PartialLabelSteps, keras.Model):
    """A head (optionally on a backbone) with the partial-label steps; outputs ``scale * head(x)``.

    Args:
        head: keras.Model ``[B, R, D]`` / ``[B, h, w, D]`` -> float32
            ``[B, C]`` with a ``num_classes`` attribute (``MLDecoderHead``,
            ``MLGCNHead``, ``PooledHead``).
        backbone: optional keras.Model, float32 RGB ``[B, H, W, 3]`` in
            [0, 255] -> ``[B, h, w, D]`` (``--finetune``); None on stored
            features.
        scale: float > 0; the AAM scale s for cosine heads (so the output is
            a logit ``s * cos``), 1 for logit heads.
        normalizer: ``"batch"`` (per-image sums averaged over the global batch).
        input_shape: optional list, the shape of one input without the batch
            axis (``[R, D]`` features or ``[H, W, 3]`` images); the head is
            then built at construction (and again when a saved model is
            loaded).

    Call: features or images -> float32 logits ``[B, C]``; probabilities are
    their sigmoid.
    """

    def __init__(self, head, backbone=None, scale=1.0, normalizer="batch", input_shape=None, **kwargs):
        super().__init__(**kwargs)
        if not float(scale) > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.head = head
        self.backbone = backbone
        self.scale = float(scale)
        self.num_classes = int(head.num_classes)
        self.input_shape_ = None if input_shape is None else [int(v) for v in input_shape]
        if self.input_shape_ is not None and not head.built:
            # Build the head on its own, outside this model's call: the cosine classifier's
            # initializer draws from Keras' global seed generator, which cannot be created
            # while an enclosing layer is being called.
            feat = (self.input_shape_ if backbone is None
                    else [int(v) for v in backbone.compute_output_shape((1, *self.input_shape_))[1:]])
            head(tf.zeros([1, *feat]), training=False)
        self._init_steps(self.num_classes, normalizer)

    def call(self, x, training=False):
        if self.backbone is not None:
            x = self.backbone(x, training=training)
        out = tf.cast(self.head(x, training=training), tf.float32)
        return out * self.scale if self.scale != 1.0 else out

    def get_config(self):
        return {**super().get_config(), "head": keras.saving.serialize_keras_object(self.head),
                "backbone": (None if self.backbone is None
                             else keras.saving.serialize_keras_object(self.backbone)),
                "scale": self.scale, "normalizer": self.normalizer, "input_shape": self.input_shape_}

    @classmethod
    def from_config(cls, config):
        import importlib

        for module in ("heads", "ml_decoder", "ml_gcn"):  # register the head classes
            try:
                importlib.import_module(f"mll_tf.models.{module}")
            except ImportError:  # pragma: no cover
                pass

        config = dict(config)
        config["head"] = keras.saving.deserialize_keras_object(config["head"])
        if config.get("backbone") is not None:
            config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)


class MLHeadTask(MultiLabelTask):
    """Base of the three heads: loss choice, AAM scaling, model building (subclasses make the head)."""

    Config = MLHeadConfig
    #: the standard gradient step of PartialLabelSteps (SAM two-pass update: mll_tf.training.recipe)
    supports_sam = True

    #: MixUp targets in [0, 1]: both losses take soft targets (-1 stays "unknown")
    supports_soft_targets = True

    # --- configuration -------------------------------------------------------------------------
    def check(self):
        self.run.validate()
        from mll_tf.training.config import validate_fields
        validate_fields(self.config)
        parse_scale(self.config.aam_scale)
        if not self.run.finetune:
            for split in ("train", "val"):  # test only when evaluated
                self.read_manifest(split)
        if self.config.loss == "aam":
            self._aam_module()

    @staticmethod
    def _aam_module():
        try:
            from mll_tf.losses import aam
        except ImportError as e:  # pragma: no cover - present in a complete checkout
            raise ValueError(f"--loss aam: the AAM loss module is not available ({e})") from None
        return aam

    @property
    def cosine(self):
        """The head outputs cosines (``--loss aam``)."""
        return self.config.loss == "aam"

    def scale(self):
        """The AAM scale s (``--aam-scale``, or ``compute_s(C)`` for ``auto``); 1.0 with ``--loss asl``."""
        if not self.cosine:
            return 1.0
        s = parse_scale(self.config.aam_scale)
        if s is None:
            s = float(self._aam_module().compute_s(len(self.label_names)))
        return float(s)

    def describe(self):
        c = self.config
        loss = (f"AMBinaryLoss(s={self.scale():g}, m={c.aam_margin:g}, k={c.aam_k:g}, "
                f"gamma+={c.aam_gamma_pos:g}, gamma-={c.aam_gamma_neg:g}, eps={c.aam_label_smoothing:g})"
                if self.cosine else
                f"AsymmetricLoss(gamma+={c.asl_gamma_pos:g}, gamma-={c.asl_gamma_neg:g}, clip={c.asl_clip:g})")
        return (f"{self.name}: {len(self.label_names)} classes, {self.num_train_examples} training "
                f"{'images' if self.run.finetune else 'examples'}; loss {loss}")

    # --- loss ------------------------------------------------------------------------------------
    def build_loss(self):
        c = self.config
        if not self.cosine:
            from mll_tf.losses.partial import AsymmetricLoss
            return AsymmetricLoss(gamma_pos=c.asl_gamma_pos, gamma_neg=c.asl_gamma_neg, clip=c.asl_clip,
                                  ignore_unknown=True, reduction="none")
        aam = self._aam_module()
        s = self.scale()
        inner = aam.AMBinaryLoss(s=s, m=c.aam_margin, k=c.aam_k, gamma_pos=c.aam_gamma_pos,
                                 gamma_neg=c.aam_gamma_neg, clip=c.aam_clip,
                                 label_smoothing=c.aam_label_smoothing, reduction="none")
        return ScaledInputLoss(inner, s)

    # --- model -----------------------------------------------------------------------------------
    def build_head(self, feature_dim):
        """The head for ``feature_dim``-channel inputs (subclasses)."""
        raise NotImplementedError

    def _backbone_weights(self):
        w = self.config.backbone_weights
        return None if str(w).lower() == "none" else w

    def build_model(self):
        if self.run.finetune:
            from mll_tf.backbones import build_backbone

            try:
                bb = build_backbone(self.run.backbone, weights=self._backbone_weights(),
                                    input_size=self.run.input_size)
            except (FileNotFoundError, ValueError) as e:
                raise ValueError(f"--backbone-weights {self.config.backbone_weights}: {e}") from None
            head = self.build_head(bb.feature_shape[-1])
            size = self.run.input_size
            model = TrainableMLHead(head, backbone=bb.model, scale=self.scale(), input_shape=[size, size, 3])
            model(tf.zeros([1, self.run.input_size, self.run.input_size, 3]), training=False)
            return model
        r, d = self.manifest.feature_shape
        model = TrainableMLHead(self.build_head(d), scale=self.scale(), input_shape=[r, d])
        model(tf.zeros([1, r, d]), training=False)
        return model

    def callbacks(self, run_dir):
        return [PriorCSV(os.path.join(run_dir, "prior.csv"), self.label_names)]


@register_task("linear_head")
class LinearHeadTask(MLHeadTask):
    """Baseline: global average pooling + linear classifier (ASL) or cosine classifier (AAM)."""

    def build_head(self, feature_dim):
        from mll_tf.models.heads import PooledHead
        return PooledHead(len(self.label_names), cosine=self.cosine, dropout=self.config.dropout, name="head")


@register_task("ml_decoder")
class MLDecoderTask(MLHeadTask):
    """ML-Decoder head (one decoder layer without self-attention, group FC; cosine variant with AAM)."""

    Config = MLDecoderConfig

    def check(self):
        super().check()
        if self.config.decoder_dim % self.config.decoder_heads:
            raise ValueError(f"--decoder-heads {self.config.decoder_heads} must divide --decoder-dim "
                             f"{self.config.decoder_dim}")

    def build_head(self, feature_dim):
        from mll_tf.models.ml_decoder import MLDecoderHead

        c = self.config
        return MLDecoderHead(len(self.label_names), num_queries=c.num_queries, embed_dim=c.decoder_dim,
                             num_heads=c.decoder_heads, ffn_dim=c.decoder_ffn, dropout=c.decoder_dropout,
                             cosine=self.cosine, name="head")


@register_task("ml_gcn")
class MLGCNTask(MLHeadTask):
    """ML-GCN channel attention from label embeddings and the training-label graph."""

    Config = MLGCNConfig

    def check(self):
        super().check()
        e = self.config.label_embeddings
        if e != "glove":
            if not e.endswith(".npy"):
                raise ValueError(f"--label-embeddings: expected 'glove' or a .npy file, got {e!r}")
            if not os.path.isfile(e):
                raise ValueError(f"--label-embeddings: no file {e}")
            if not self.run.finetune:  # the label count is known: check the file before anything is written
                self.label_names = list(self.read_manifest("train").label_names)
                self.label_embedding_rows()
        if self.config.graph and not os.path.isfile(self.config.graph):
            raise ValueError(f"--graph: no file {self.config.graph}")

    def label_embedding_rows(self):
        """float32 ``[C, E]`` node features in label order.

        Raises:
            ValueError: a ``.npy`` of another shape or with non-finite values
                (naming ``--label-embeddings``).
        """
        names = list(self.label_names)
        src = self.config.label_embeddings
        if src == "glove":
            from mll_tf.data.word_vectors import label_embeddings, load_word_vectors

            emb, missing = label_embeddings(names, load_word_vectors(self.run.word_vectors, labels=names))
            if missing and not self.config.allow_missing_embeddings:
                raise ValueError(f"--label-embeddings glove: {len(missing)} labels have no vector in "
                                 f"{self.run.word_vectors} (first: {missing[:5]}); pass "
                                 "--allow-missing-embeddings or a .npy")
            return emb
        try:
            emb = np.load(src, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"--label-embeddings {src}: not a readable .npy ({e})") from None
        if emb.ndim != 2 or emb.shape[0] != len(names) or not np.issubdtype(emb.dtype, np.number):
            raise ValueError(f"--label-embeddings {src}: expected a numeric [{len(names)}, E] array (one row per "
                             f"label, in the store's label order), got shape {emb.shape}")
        if not np.isfinite(emb).all():
            raise ValueError(f"--label-embeddings {src}: row {int(np.argwhere(~np.isfinite(emb))[0, 0])} "
                             "is not finite")
        return emb.astype(np.float32)

    def build_head(self, feature_dim):
        from mll_tf.models.ml_gcn import build_ml_gcn_head

        c = self.config
        names = list(self.label_names)
        return build_ml_gcn_head(
            names, (names, self.label_embedding_rows()),
            graph=c.graph or None, train_labels=None if c.graph else self.train_labels,
            t=c.graph_threshold, rho=c.graph_rho, hidden_dim=c.gcn_hidden or None, cosine=self.cosine,
            dropout=c.dropout, allow_missing_embeddings=c.allow_missing_embeddings,
            reorder=bool(c.graph), name="head")  # a saved graph's rows are matched by name
