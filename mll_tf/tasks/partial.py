"""Partial-label methods as Tasks: CSL, ASL, Ignore, Negative and IMCL's logistic baseline.

One model -- :class:`mll_tf.models.heads.MultiLabelHead` on stored features
(global average pooling + ``Dense(C)``, as CSL's TResNet head), or with
``--finetune`` :class:`~mll_tf.models.heads.FineTuneClassifier` (backbone +
that head) -- and a loss per method:

=========  ========================================================  ==============
method     loss                                                      reduction
=========  ========================================================  ==============
csl        PartialAsymmetricLoss, mode ``selective`` (Ben-Baruch      per-image sum
           et al. 2021, Sec. 3, Eq. 3-6)
asl        AsymmetricLoss, unknown labels as negatives (Ridnik et     per-image sum
           al. 2021, Eq. 1-4; CSL's "Negative-ASL" baseline)
ignore     binary cross-entropy, unknown entries weight 0             per-image sum
negative   binary cross-entropy, unknown entries as negatives         per-image sum
logistic   BCE on observed entries divided by their number (IMCL's    sum / #observed
           baseline; TF1 ``SUM_BY_NONZERO_WEIGHTS``)
=========  ========================================================  ==============

"per-image sum": the references sum over batch and classes; here the sum over
classes is averaged over the global batch, so the learning rate does not
depend on the batch size (the gradient is the reference's divided by B).
Under ``tf.distribute`` the observed-entry count of ``logistic`` is
all-reduced, so 2 replicas give the 1-replica loss exactly.

Every run estimates the class prior (the running mean of the sigmoid outputs
over all training batches, CSL ``ComputePrior`` in
``src/loss_functions/partial_asymmetric_loss.py``) and writes ``prior.csv``
keyed by class name after every round: the prior of an ``ignore`` run is what
``--method csl --prior-path`` expects.
"""

import dataclasses
import os

import keras
import numpy as np
import tensorflow as tf

from mll_tf.models.heads import FineTuneClassifier, MultiLabelHead
from mll_tf.tasks.base import OwnLossSteps, register_task
from mll_tf.tasks.multilabel import MultiLabelConfig, MultiLabelTask
from mll_tf.training.config import option

__all__ = ["ASLTask", "CSLTask", "IgnoreTask", "LogisticTask", "NegativeTask", "PartialLabelConfig",
           "PartialLabelTask", "TrainableFineTuneClassifier", "TrainableHead"]

_MODES = ("", "negative", "ignore", "ignore_normalize_classes", "selective")


@dataclasses.dataclass
class PartialLabelConfig(MultiLabelConfig):
    """Options of the partial-label losses (a negative value means: the method's default)."""
    partial_mode: str = option("", "'' -> the method's; negative | ignore | ignore_normalize_classes | "
                               "selective", choices=_MODES)
    gamma_pos: float = option(-1.0, "focusing exponent of positives (< 0: the method's; CSL 0, ASL 0)")
    gamma_neg: float = option(-1.0, "focusing exponent of negatives (< 0: the method's; CSL 1, ASL 4)")
    gamma_unann: float = option(-1.0, "focusing exponent of un-annotated entries (< 0: the method's; "
                                "CSL 4)")
    loss_clip: float = option(-1.0, "probability margin of negatives (< 0: the method's; CSL 0, ASL 0.05)",
                              max=1.0)
    likelihood_topk: int = option(5, "CSL selective: un-annotated entries per image ignored as likely "
                                  "positives", min=0)
    prior_path: str = option("", "CSL selective: class-prior CSV (Classes,avg_pred), matched by class name")
    prior_threshold: float = option(0.05, "CSL selective: classes with a prior above this are not treated "
                                    "as negatives", min=0.0, max=1.0)
    dropout: float = option(0.0, "dropout rate before the classifier", min=0.0, max=0.99)


class PartialLabelSteps(OwnLossSteps):
    """Mixin: the partial-label training and test steps for ``keras.Model.fit``.

    The compiled loss returns per-example values ``[B]``; the step divides
    their sum by the global batch size (``normalizer="batch"``) or by the
    global number of observed labels (``"observed"``, all-reduced), adds the
    model's regularisation losses and applies the gradients. It also adds
    the batch's sigmoid outputs to the running class prior (``prior_sum``,
    ``prior_count``: float64, kept across rounds and backed up).
    Logged: ``loss`` (the global batch's normalised loss, averaged over the
    round). With ``sam_rho > 0`` the gradient is SAM's
    (:func:`mll_tf.training.recipe.sam_gradients`: a second pass at the
    perturbed weights) and ``loss`` and the prior are the first pass's.
    """

    def _init_steps(self, num_classes, normalizer):
        if normalizer not in ("batch", "observed"):
            raise ValueError(f"normalizer must be 'batch' or 'observed', got {normalizer!r}")
        self.normalizer = normalizer
        self.prior_sum = self.add_weight(shape=(num_classes,), initializer="zeros", trainable=False,
                                         dtype="float64", aggregation="mean", name="prior_sum")
        self.prior_count = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                           dtype="float64", aggregation="mean", name="prior_count")
        self._loss_tracker = keras.metrics.Mean(name="loss")

    @property
    def metrics(self):
        return [self._loss_tracker]

    def prior(self):
        """The class prior float32 ``[C]`` in [0, 1] (NaN before any batch)."""
        n = float(keras.ops.convert_to_numpy(self.prior_count))
        s = keras.ops.convert_to_numpy(self.prior_sum)
        return (s / n).astype(np.float32) if n > 0 else np.full(s.shape, np.nan, np.float32)

    def _loss(self, x, y, training):
        ctx = tf.distribute.get_replica_context()
        logits = self(x, training=training)
        total = tf.reduce_sum(self.loss(y, logits))
        if self.normalizer == "observed":
            local = tf.reduce_sum(tf.cast(tf.not_equal(y, -1), tf.float32))
            loss = total / tf.maximum(ctx.all_reduce(tf.distribute.ReduceOp.SUM, local), 1.0)
        else:
            batch = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.shape(y)[0], tf.float32))
            loss = total / batch
        return logits, loss

    #: SAM radius and variant (``--sam-rho``, ``--sam-adaptive``; set by the runner): 0 = one gradient pass
    sam_rho = 0.0
    sam_adaptive = False

    def train_step(self, data):
        x, y = data
        ctx = tf.distribute.get_replica_context()

        def compute():
            logits, loss = self._loss(x, y, training=True)
            reg = tf.add_n(self.losses) / ctx.num_replicas_in_sync if self.losses else 0.0
            return self.optimizer.scale_loss(loss + reg), (logits, loss)

        if self.sam_rho > 0:
            from mll_tf.training.recipe import sam_gradients

            grads, _, (logits, loss) = sam_gradients(compute, self.trainable_variables, self.sam_rho,
                                                     self.sam_adaptive)
        else:
            with tf.GradientTape() as tape:
                scaled, (logits, loss) = compute()
            grads = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        probs = tf.reduce_sum(tf.sigmoid(tf.cast(logits, tf.float32)), axis=0)
        self.prior_sum.assign_add(tf.cast(ctx.all_reduce(tf.distribute.ReduceOp.SUM, probs), tf.float64))
        n = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.shape(y)[0], tf.float32))
        self.prior_count.assign_add(tf.cast(n, tf.float64))
        self._loss_tracker.update_state(ctx.all_reduce(tf.distribute.ReduceOp.SUM, loss))
        return {"loss": self._loss_tracker.result()}

    def test_step(self, data):
        x, y = data
        ctx = tf.distribute.get_replica_context()
        _, loss = self._loss(x, y, training=False)
        self._loss_tracker.update_state(ctx.all_reduce(tf.distribute.ReduceOp.SUM, loss))
        return {"loss": self._loss_tracker.result()}


@keras.saving.register_keras_serializable(package="mll_tf")
class TrainableHead(PartialLabelSteps, MultiLabelHead):
    """:class:`~mll_tf.models.heads.MultiLabelHead` with the partial-label steps (see :class:`PartialLabelSteps`).

    Args:
        num_classes, dropout, hidden_units: as ``MultiLabelHead``.
        normalizer: ``"batch"`` or ``"observed"``.
    """

    def __init__(self, num_classes, dropout=0.0, hidden_units=0, normalizer="batch", **kwargs):
        super().__init__(num_classes, dropout=dropout, hidden_units=hidden_units, **kwargs)
        self._init_steps(self.num_classes, normalizer)

    def get_config(self):
        return {**super().get_config(), "normalizer": self.normalizer}


@keras.saving.register_keras_serializable(package="mll_tf")
class TrainableFineTuneClassifier(PartialLabelSteps, FineTuneClassifier):
    """:class:`~mll_tf.models.heads.FineTuneClassifier` with the partial-label steps."""

    def __init__(self, backbone, num_classes, dropout=0.0, normalizer="batch", **kwargs):
        super().__init__(backbone, num_classes, dropout=dropout, **kwargs)
        self._init_steps(num_classes, normalizer)

    def get_config(self):
        return {**super().get_config(), "normalizer": self.normalizer}


class PriorCSV(keras.callbacks.Callback):
    """Writes the running class prior to ``prior.csv`` (``Classes,avg_pred``) after every round."""

    def __init__(self, path, class_names):
        super().__init__()
        self.path = path
        self.class_names = list(class_names)

    def on_epoch_end(self, epoch, logs=None):
        from mll_tf.training.priors import save_prior_csv

        prior = self.model.prior()
        if np.all(np.isfinite(prior)):
            save_prior_csv(self.path, self.class_names, prior)


class PartialLabelTask(MultiLabelTask):
    """A linear head trained with one of the partial-label losses (subclasses set the loss)."""

    Config = PartialLabelConfig
    #: the step runs SAM with --sam-rho (mll_tf.training.recipe.check_recipe)
    supports_sam = True
    #: the method's loss settings (a config value >= 0 overrides each)
    loss_defaults = {}
    normalizer = "batch"

    def loss_settings(self):
        """The loss settings with the config's explicit values applied."""
        out = dict(self.loss_defaults)
        for k in ("gamma_pos", "gamma_neg", "gamma_unann", "loss_clip"):
            v = getattr(self.config, k)
            if v is not None and v >= 0:
                out[k] = float(v)
        if self.config.partial_mode:
            out["partial_mode"] = self.config.partial_mode
        return out

    def check(self):
        super().check()
        from mll_tf.data import fs

        if self.config.prior_path and not fs.isfile(self.config.prior_path):
            raise ValueError(f"--prior-path: no file {self.config.prior_path}")

    def describe(self):
        return (f"{len(self.label_names)} classes, {self.num_train_examples} training "
                f"{'images' if self.run.finetune else 'examples'}; loss {type(self.build_loss()).__name__} "
                f"{self.loss_settings()}")

    def build_loss(self):
        from mll_tf.losses.partial import MaskedBinaryCrossentropy
        return MaskedBinaryCrossentropy(mode="ignore", reduction="none")

    def build_model(self):
        c = len(self.label_names)
        if self.run.finetune:
            from mll_tf.backbones import build_backbone

            bb = build_backbone(self.run.backbone, weights="imagenet", input_size=self.run.input_size)
            model = TrainableFineTuneClassifier(bb.model, c, dropout=self.config.dropout,
                                                normalizer=self.normalizer)
            model(tf.zeros([1, self.run.input_size, self.run.input_size, 3]), training=False)
            return model
        r, d = self.manifest.feature_shape
        model = TrainableHead(c, dropout=self.config.dropout, normalizer=self.normalizer)
        model(tf.zeros([1, r, d]), training=False)
        return model

    def callbacks(self, run_dir):
        return [PriorCSV(os.path.join(run_dir, "prior.csv"), self.label_names)]


class _PartialAsymmetricMixin:
    def build_loss(self):
        from mll_tf.losses.partial import PartialAsymmetricLoss

        s = self.loss_settings()
        prior = None
        if self.config.prior_path:
            from mll_tf.training.priors import load_prior_csv
            prior = load_prior_csv(self.config.prior_path, self.label_names)
        elif s["partial_mode"] == "selective" and not getattr(self, "_warned", False):
            self._warned = True
            print("csl: no --prior-path; the selective loss uses only the likelihood top-k rule "
                  "(train --method ignore first and pass its prior.csv for the class-prior rule)")
        return PartialAsymmetricLoss(
            mode=s["partial_mode"], gamma_pos=s["gamma_pos"], gamma_neg=s["gamma_neg"],
            gamma_unann=s["gamma_unann"], clip=s["loss_clip"], likelihood_topk=self.config.likelihood_topk,
            prior=prior, prior_threshold=self.config.prior_threshold, reduction="none")


@register_task("csl")
class CSLTask(_PartialAsymmetricMixin, PartialLabelTask):
    """CSL: class-aware selective loss (CSL README, RPS setting: gamma- 1, gamma_u 4, selective, top-k 5)."""
    loss_defaults = dict(partial_mode="selective", gamma_pos=0.0, gamma_neg=1.0, gamma_unann=4.0,
                         loss_clip=0.0)


@register_task("asl")
class ASLTask(PartialLabelTask):
    """ASL (Ridnik et al. defaults gamma- 4, clip 0.05) with unknown labels as negatives."""
    loss_defaults = dict(partial_mode="negative", gamma_pos=0.0, gamma_neg=4.0, gamma_unann=4.0,
                         loss_clip=0.05)

    def build_loss(self):
        s = self.loss_settings()
        if s["partial_mode"] not in ("negative", "ignore"):
            return _PartialAsymmetricMixin.build_loss(self)
        from mll_tf.losses.partial import AsymmetricLoss
        return AsymmetricLoss(gamma_pos=s["gamma_pos"], gamma_neg=s["gamma_neg"], clip=s["loss_clip"],
                              ignore_unknown=s["partial_mode"] == "ignore", reduction="none")


@register_task("ignore")
class IgnoreTask(PartialLabelTask):
    """Binary cross-entropy on the annotated entries only."""
    supports_soft_targets = True   # --mixup/--cutmix: BCE takes targets in [0, 1]
    loss_defaults = dict(partial_mode="ignore", gamma_pos=0.0, gamma_neg=0.0, gamma_unann=0.0, loss_clip=0.0)


@register_task("negative")
class NegativeTask(PartialLabelTask):
    """Binary cross-entropy with un-annotated entries as negatives."""
    supports_soft_targets = True
    loss_defaults = dict(partial_mode="negative", gamma_pos=0.0, gamma_neg=0.0, gamma_unann=0.0,
                         loss_clip=0.0)

    def build_loss(self):
        from mll_tf.losses.partial import MaskedBinaryCrossentropy
        return MaskedBinaryCrossentropy(mode="negative", reduction="none")


@register_task("logistic")
class LogisticTask(PartialLabelTask):
    """IMCL's baseline: BCE on observed entries divided by their number."""
    supports_soft_targets = True
    loss_defaults = dict(partial_mode="ignore", gamma_pos=0.0, gamma_neg=0.0, gamma_unann=0.0, loss_clip=0.0)
    normalizer = "observed"
