"""Partial-label multi-label losses: CSL's P-ASL/selective loss, ASL, masked BCE.

* :class:`PartialAsymmetricLoss`: CSL ``PartialSelectiveLoss`` with its four
  ``partial_loss_mode`` values (Ben-Baruch et al., CVPR 2022;
  docs/partial_labels.md §1; reference
  ``src/loss_functions/partial_asymmetric_loss.py`` of
  Alibaba-MIIL/PartialLabelingCSL).
* :class:`AsymmetricLoss`: ASL (Ridnik et al., ICCV 2021; reference
  ``src/loss_functions/losses.py::AsymmetricLoss`` of Alibaba-MIIL/ASL, and
  ``torchreid/losses/asl.py`` of DOR-ML; docs/partial_labels.md §2), with unknown
  targets removed.
* :class:`MaskedBinaryCrossentropy`: plain BCE from logits with the unknown
  labels ignored or treated as negatives.

Labels use the mll_tf convention (docs/labels_and_data.md §1): ``1`` present, ``0``
annotated absent, ``-1`` unknown (any numeric dtype).

Reduction (all three losses). The references return the SUM over batch and
classes. Here ``call()`` returns the per-example loss ``[B]`` = the sum over
classes, and the Keras ``reduction`` (default ``"sum_over_batch_size"``)
averages it over the batch: ``loss(y, z) == reference_sum / B``, independent
of the batch size (DOR-ML's ``multilabel``-branch ``torchreid/losses/asl.py``
also returns a plain sum, ``-loss.sum()``, with no division by B; the division
is this project's choice). Distributed training uses
``reduction="none"`` and ``tf.nn.compute_average_loss(per_example,
global_batch_size=...)``, which averages the per-image sums over the global
batch and so gives the same value as one device.
"""

import keras
import numpy as np
import tensorflow as tf  # the prior is a tf.Variable (see PartialAsymmetricLoss)
from keras import ops

__all__ = [
    "PartialAsymmetricLoss",
    "AsymmetricLoss",
    "MaskedBinaryCrossentropy",
]

_LOG_EPS = 1e-8   # reference ``torch.clamp(x, min=1e-8)`` before the log
PARTIAL_LOSS_MODES = ("negative", "ignore", "ignore_normalize_classes",
                      "selective")


def _as_float32(x):
    return ops.cast(ops.convert_to_tensor(x), "float32")


def _check_prior(prior, where):
    """float32 [C] copy of ``prior`` or ValueError (1-D, finite, in [0, 1])."""
    arr = np.asarray(prior, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(
            f"{where}: `prior` must be a non-empty 1-D array [C], got shape "
            f"{arr.shape}")
    bad = ~np.isfinite(arr) | (arr < 0.0) | (arr > 1.0)
    if bad.any():
        idx = np.flatnonzero(bad)[:5].tolist()
        raise ValueError(
            f"{where}: `prior` values must be in [0, 1]; bad class indices "
            f"{idx} (values {arr[idx].tolist()})")
    return arr.astype(np.float32)


def _focal_power(base, exponent):
    """``base ** exponent`` for base >= 0, exponent >= 0, with a finite gradient at base 0.

    The values are those of ``ops.power`` (``0 ** 0 = 1``, ``0 ** g = 0`` for
    g > 0; unchanged wherever base != 0). The gradient with respect to
    ``base`` is 0 where base == 0: TF's ``pow`` gradient there is
    ``exponent * 0 ** (exponent - 1)`` = ``0 * inf`` (NaN) for exponent 0 and
    inf for 0 < exponent < 1, and the chain with ``d(1 - p)/dz = -p (1 - p) = 0``
    made the loss gradient NaN. The true derivative of ``(1 - p) ** g`` with
    respect to the logit, ``-g p (1 - p) ** g``, is 0 there, and PyTorch's
    ``pow`` backward (the references) masks exponent 0 to 0.
    """
    zero = ops.equal(base, 0.0)
    safe = ops.where(zero, ops.ones_like(base), base)
    at_zero = ops.where(ops.equal(exponent, 0.0), 1.0, 0.0)
    return ops.where(zero, ops.broadcast_to(at_zero, ops.shape(base)), ops.power(safe, exponent))


def _static_num_classes(y_pred):
    shape = getattr(y_pred, "shape", None)
    if shape is None or len(shape) != 2:
        raise ValueError(
            f"y_pred must be a 2-D tensor [B, C] of logits, got shape {shape}")
    return shape[-1]


def _global_top_k_mask(key, topk_per_image, num_classes):
    """The selective rule's top-k over the global batch under ``tf.distribute``.

    Args:
        key: float32 ``[B_local * C]``, this replica's ranking keys (flattened
            row-major; un-annotated entries hold p_neg, the others 2).
        topk_per_image: int, K = topk_per_image * global B.
        num_classes: int or scalar tensor C.

    Returns:
        None outside a multi-replica replica context; else float32
        ``[B_local * C]``, 1 where this replica's entry is among the K
        smallest keys of all replicas (ties: lower global flattened index
        first, replicas' rows in replica order, as the distributed dataset
        splits a global batch).
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return None
    n_local = tf.shape(key)[0]
    sizes = ctx.all_gather(tf.reshape(n_local, [1]), axis=0)              # [R]
    keys = ctx.all_gather(key, axis=0)                                     # [B_global * C]
    total = tf.shape(keys)[0]
    batch = total // tf.cast(num_classes, tf.int32)
    k = tf.minimum(topk_per_image * batch, total)
    _, idx = tf.math.top_k(-keys, k=k, sorted=True)
    picked = tf.scatter_nd(tf.expand_dims(idx, 1), tf.ones_like(idx, tf.float32), tf.expand_dims(total, 0))
    replica = tf.cast(ctx.replica_id_in_sync_group, tf.int32)
    start = tf.reduce_sum(sizes[:replica])
    return picked[start:start + n_local]


@keras.saving.register_keras_serializable(package="mll_tf")
class PartialAsymmetricLoss(keras.losses.Loss):
    """CSL partial asymmetric loss (P-ASL) with the selective mode.

    With p = sigmoid(z), p_neg = min(1 - p + clip, 1) if ``clip > 0`` else
    1 - p, and the masks pos = [y = 1], neg = [y = 0], unann = [y = -1]
    (other values contribute nothing), the per-example loss is::

        loss_i = - sum_c w_ic * f_ic * (
                     alpha_pos   * pos   * log(max(p,     1e-8))
                   + alpha_neg   * neg   * log(max(p_neg, 1e-8))
                   + alpha_unann * unann * log(max(p_neg, 1e-8)) )

        f_ic   = stop_gradient((1 - p*pos - p_neg*(neg + unann))
                               ** (gamma_pos*pos + gamma_neg*neg
                                   + gamma_unann*unann))

    i.e. (1-p)^gamma_pos for positives, p_neg's complement (1-p_neg)^gamma
    for negatives and un-annotated entries. The focusing factor f carries no
    gradient (the reference computes it under ``torch.no_grad()``). The
    weights w (also without gradient) depend on ``mode``:

    * ``"negative"``: w = 1, un-annotated entries are negatives with
      gamma_unann.
    * ``"ignore"``: w = 0 where y = -1, else 1.
    * ``"ignore_normalize_classes"``: w = 1 / (1 + #annotated in the row) + 1
      (Durand et al.), and 0 where y = -1. "Annotated" means y != -1.
    * ``"selective"`` (CSL):

      1. w = 1.
      2. If a prior is loaded and ``prior_threshold`` is truthy (the
         reference tests ``if args.prior_threshold``, so 0 or None disables
         this step): w[:, c] = 0 for every class with prior[c] >
         prior_threshold (strict), then w = 1 wherever y != -1 (annotated
         entries are always kept).
      3. Without gradient: among ALL un-annotated entries of the flattened
         [B*C] batch, the K = min(likelihood_topk * B, B * C) entries with
         the smallest p_neg (the highest p; with ``clip > 0`` the ranking
         uses the clipped p_neg, as in the reference, so entries with
         p <= clip tie at p_neg = 1) get w = 0. As in the reference
         ``negative_backprop_fun_jit``, the K entries are chosen among all
         un-annotated entries, including those already zeroed in step 2,
         so fewer than K new entries may be removed. Ties are broken
         deterministically: equal p_neg -> lower flattened index first
         (row-major: image, then class), the rule of ``tf.math.top_k``
         (the reference's ``torch.argsort`` leaves ties unspecified).
      4. The remaining un-annotated entries are negatives with gamma_unann.

      Under ``tf.distribute`` (several replicas in a replica context) the
      keys of all replicas are gathered and the top-k runs over the GLOBAL
      batch (K = likelihood_topk * global B, indices in global row order),
      each replica keeping its own slice: the selection is the one a single
      device makes on the whole batch (tested: 2 replicas = 1).

    The prior is used only in ``"selective"`` mode. It is stored in a
    non-trainable ``tf.Variable`` so that a compiled (``tf.function``) step
    sees later :meth:`set_prior` updates of the same length. If the loss is
    built without a prior, call :meth:`set_prior` before the first traced
    call (a graph traced without a prior never uses one). Unlike the
    reference (docs/partial_labels.md §8, item 1), the prior is indexed by the model's
    class index; load it by class name with
    :func:`mll_tf.training.priors.load_prior_csv`.

    Reduction: ``call`` returns the per-example loss [B] (the sum over
    classes); the default Keras reduction ``"sum_over_batch_size"`` averages
    it over the batch, i.e. the reference ``-BCE_loss.sum()`` divided by B.
    Use ``reduction="none"`` with ``tf.nn.compute_average_loss`` under
    ``tf.distribute``.

    Source: docs/partial_labels.md §1; reference ``PartialSelectiveLoss``,
    ``edit_targets_parital_labels`` and ``negative_backprop_fun_jit`` in
    Alibaba-MIIL/PartialLabelingCSL
    ``src/loss_functions/partial_asymmetric_loss.py``. Reference defaults
    are used here; the README's CSL commands use ``mode="selective"``,
    ``gamma_unann=4``, ``likelihood_topk=5``, ``prior_threshold=0.5`` and
    ``gamma_neg=1`` (RPS) or 3 (FPC).

    Args:
        mode: str, one of ``"negative"``, ``"ignore"``,
            ``"ignore_normalize_classes"``, ``"selective"``.
        gamma_pos: float >= 0, focusing exponent of positives.
        gamma_neg: float >= 0, focusing exponent of annotated negatives.
        gamma_unann: float >= 0, focusing exponent of un-annotated entries.
        alpha_pos, alpha_neg, alpha_unann: float, per-kind weights.
        clip: float in [0, 1], probability margin added to p_neg (0 = off).
        likelihood_topk: int >= 0, un-annotated entries removed per image in
            ``"selective"`` mode (K = likelihood_topk * B per batch).
        prior: None or float array [C] in [0, 1], the class prior (mean
            sigmoid output per class, see
            :class:`mll_tf.training.priors.PriorEstimator`).
        prior_threshold: None or float in [0, 1]; classes whose prior
            exceeds it are ignored for un-annotated entries.
        name: str, loss name.
        **kwargs: passed to ``keras.losses.Loss`` (``reduction``, ``dtype``).

    Call args:
        y_true: tensor [B, C] in {1, 0, -1} (int or float).
        y_pred: float tensor [B, C], LOGITS.

    Returns (``call``):
        float32 tensor [B], per-example losses (>= 0 for alphas >= 0).

    Raises:
        ValueError: for an unknown ``mode``, a negative gamma or
            ``likelihood_topk``, ``clip`` or ``prior_threshold`` outside
            [0, 1], a prior that is not 1-D or has values outside [0, 1], or
            (at call time) a prior whose length differs from C.
    """

    def __init__(self, mode="negative", gamma_pos=0.0, gamma_neg=1.0,
                 gamma_unann=2.0, alpha_pos=1.0, alpha_neg=1.0,
                 alpha_unann=1.0, clip=0.0, likelihood_topk=5, prior=None,
                 prior_threshold=0.05, name="partial_asymmetric_loss",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        if mode not in PARTIAL_LOSS_MODES:
            raise ValueError(
                f"PartialAsymmetricLoss: unknown mode {mode!r}; expected one "
                f"of {list(PARTIAL_LOSS_MODES)}")
        for key, value in (("gamma_pos", gamma_pos), ("gamma_neg", gamma_neg),
                           ("gamma_unann", gamma_unann)):
            if not float(value) >= 0.0:
                raise ValueError(
                    f"PartialAsymmetricLoss: `{key}` must be >= 0, got {value}")
        if not 0.0 <= float(clip) <= 1.0:
            raise ValueError(
                f"PartialAsymmetricLoss: `clip` must be in [0, 1], got {clip}")
        if int(likelihood_topk) != likelihood_topk or likelihood_topk < 0:
            raise ValueError(
                "PartialAsymmetricLoss: `likelihood_topk` must be an integer "
                f">= 0, got {likelihood_topk}")
        if prior_threshold is not None and not (
                0.0 <= float(prior_threshold) <= 1.0):
            raise ValueError(
                "PartialAsymmetricLoss: `prior_threshold` must be None or in "
                f"[0, 1], got {prior_threshold}")
        self.mode = mode
        self.gamma_pos = float(gamma_pos)
        self.gamma_neg = float(gamma_neg)
        self.gamma_unann = float(gamma_unann)
        self.alpha_pos = float(alpha_pos)
        self.alpha_neg = float(alpha_neg)
        self.alpha_unann = float(alpha_unann)
        self.clip = float(clip)
        self.likelihood_topk = int(likelihood_topk)
        self.prior_threshold = (None if prior_threshold is None
                                else float(prior_threshold))
        self._prior = None
        if prior is not None:
            self.set_prior(prior)

    # -- prior ---------------------------------------------------------------

    @property
    def prior(self):
        """float32 NumPy array [C], the loaded prior, or None."""
        return None if self._prior is None else self._prior.numpy().copy()

    def set_prior(self, prior):
        """Load (or replace) the class prior.

        The first call creates a non-trainable ``tf.Variable`` [C]; later
        calls assign in place, so a compiled step sees the new values.

        Args:
            prior: float array-like [C] with values in [0, 1], in the
                model's class order.

        Raises:
            ValueError: if ``prior`` is not 1-D, has values outside [0, 1] or
                NaN, or its length differs from the prior already loaded.
        """
        value = _check_prior(prior, "PartialAsymmetricLoss.set_prior")
        if self._prior is None:
            with tf.init_scope():
                self._prior = tf.Variable(value, trainable=False,
                                          name="class_prior")
        else:
            if self._prior.shape[0] != value.shape[0]:
                raise ValueError(
                    "PartialAsymmetricLoss.set_prior: the loaded prior has "
                    f"{self._prior.shape[0]} classes, the new one "
                    f"{value.shape[0]}")
            self._prior.assign(value)

    # -- loss ----------------------------------------------------------------

    def _mode_weights(self, y, p_neg, unann):
        """Partial-label weights w [B, C] (no gradient)."""
        annotated = ops.cast(ops.not_equal(y, -1.0), "float32")
        if self.mode == "negative":
            return ops.ones_like(p_neg)
        if self.mode == "ignore":
            return annotated
        if self.mode == "ignore_normalize_classes":
            n_annotated = 1.0 + ops.sum(annotated, axis=1, keepdims=True)
            return (1.0 / n_annotated + 1.0) * annotated
        # selective
        weights = ops.ones_like(p_neg)
        if self._prior is not None and self.prior_threshold:
            prior = ops.convert_to_tensor(self._prior)
            kept_class = ops.cast(
                ops.logical_not(ops.greater(prior, self.prior_threshold)),
                "float32")
            weights = ops.maximum(weights * kept_class[None, :], annotated)
        if self.likelihood_topk > 0:
            batch = ops.shape(p_neg)[0]
            num_classes = ops.shape(p_neg)[1]
            total = batch * num_classes
            k = ops.minimum(self.likelihood_topk * batch, total)
            # k smallest p_neg among the un-annotated entries; the others get
            # the sentinel 2 > any p_neg and are never removed below.
            key = ops.reshape(
                ops.where(ops.greater(unann, 0.0), p_neg, 2.0), (-1,))
            picked = _global_top_k_mask(key, self.likelihood_topk, num_classes)
            if picked is None:
                _, idx = ops.top_k(-key, k=k, sorted=True)
                picked = ops.scatter(ops.expand_dims(idx, 1),
                                     ops.ones_like(idx, dtype="float32"),
                                     ops.expand_dims(total, 0))
            removed = ops.reshape(picked, ops.shape(p_neg)) * unann
            weights = weights * (1.0 - removed)
        return weights

    def call(self, y_true, y_pred):
        num_classes = _static_num_classes(y_pred)
        if (self._prior is not None and self.mode == "selective"
                and num_classes is not None
                and self._prior.shape[0] != num_classes):
            raise ValueError(
                f"PartialAsymmetricLoss: the prior has {self._prior.shape[0]} "
                f"classes but y_pred has {num_classes}")
        y = _as_float32(y_true)
        z = _as_float32(y_pred)
        pos = ops.cast(ops.equal(y, 1.0), "float32")
        neg = ops.cast(ops.equal(y, 0.0), "float32")
        unann = ops.cast(ops.equal(y, -1.0), "float32")

        p = ops.sigmoid(z)
        p_neg = 1.0 - p
        if self.clip > 0:
            p_neg = ops.minimum(p_neg + self.clip, 1.0)

        log_pos = ops.log(ops.maximum(p, _LOG_EPS))
        log_neg = ops.log(ops.maximum(p_neg, _LOG_EPS))
        bce = (self.alpha_pos * pos * log_pos
               + self.alpha_neg * neg * log_neg
               + self.alpha_unann * unann * log_neg)

        p_sg = ops.stop_gradient(p)
        p_neg_sg = ops.stop_gradient(p_neg)
        base = 1.0 - p_sg * pos - p_neg_sg * (neg + unann)
        exponent = (self.gamma_pos * pos + self.gamma_neg * neg
                    + self.gamma_unann * unann)
        # base is built from stop_gradient'ed p: pow's gradient (0 * inf = NaN
        # at base 0, exponent 0) never reaches the logits, unlike in ASL.
        focusing = ops.power(base, exponent)
        weights = ops.stop_gradient(self._mode_weights(y, p_neg_sg, unann))
        return -ops.sum(bce * focusing * weights, axis=1)

    def get_config(self):
        config = super().get_config()
        config.update({
            "mode": self.mode,
            "gamma_pos": self.gamma_pos,
            "gamma_neg": self.gamma_neg,
            "gamma_unann": self.gamma_unann,
            "alpha_pos": self.alpha_pos,
            "alpha_neg": self.alpha_neg,
            "alpha_unann": self.alpha_unann,
            "clip": self.clip,
            "likelihood_topk": self.likelihood_topk,
            "prior": (None if self._prior is None
                      else [float(v) for v in self._prior.numpy()]),
            "prior_threshold": self.prior_threshold,
        })
        return config


@keras.saving.register_keras_serializable(package="mll_tf")
class AsymmetricLoss(keras.losses.Loss):
    """Asymmetric loss (ASL) for multi-label classification, unknowns removed.

    With p = sigmoid(z), the shifted negative probability
    p_neg = min(1 - p + clip, 1) if ``clip > 0`` else 1 - p (equivalently
    1 - p_m with p_m = max(p - clip, 0), the paper's probability shifting),
    targets t in [0, 1] and known = [y >= 0]::

        L_ic   = t * log(max(p, eps)) + (1 - t) * log(max(p_neg, eps))
        w_ic   = (1 - p*t - p_neg*(1 - t)) ** (gamma_pos*t + gamma_neg*(1 - t))
                 (only if gamma_pos > 0 or gamma_neg > 0, else 1)
        loss_i = - sum_c known_ic * w_ic * L_ic

    so a negative gets p_m^gamma_neg * log(1 - p_m) and a positive
    (1 - p)^gamma_pos * log(p). The clip applies to negatives only, both in
    the log term and in the focusing weight; ``eps`` clamps both log
    arguments.

    Unknown targets (y < 0, i.e. -1) contribute 0 when ``ignore_unknown``
    (DOR-ML's ``filter_input`` "removes targets < 0"); otherwise they are
    treated as negatives (t = 0). Soft targets in [0, 1] (label smoothing,
    mixup) follow the same formula.

    Focusing gradient: with ``disable_focal_gradient=True`` (default) the
    weight w goes through ``stop_gradient``, as the ASL paper's
    ``AsymmetricLoss(disable_torch_grad_focal_loss=True)``. The ASL repo's
    ``AsymmetricLossOptimized`` (default False) and DOR-ML's ``asl.py``
    back-propagate through w; pass ``False`` to match them. Where the base
    1 - p*t - p_neg*(1 - t) is exactly 0 (a positive with p = 1 in float32,
    logit >= 17; a negative with p_neg = 1), the gradient through w is 0
    (the limit; PyTorch's ``pow`` backward gives 0 for exponent 0), not
    TF's ``0 * inf`` = NaN; the values are unchanged.

    Reduction: ``call`` returns the per-example loss [B] (sum over classes);
    the default Keras reduction averages it over the batch (the global batch
    under ``tf.distribute``). Both references return a plain sum,
    ``-loss.sum()``: ASL ``losses.py`` over batch and classes, DOR-ML's
    ``multilabel``-branch ``asl.py`` over the kept entries, neither divided
    by B. So this loss is the reference value divided by B.

    Source: Ridnik et al., ICCV 2021; docs/partial_labels.md §2; Alibaba-MIIL/ASL
    ``src/loss_functions/losses.py::AsymmetricLoss``; DOR-ML
    ``torchreid/losses/asl.py``.

    Args:
        gamma_pos: float >= 0, focusing exponent of positives.
        gamma_neg: float >= 0, focusing exponent of negatives.
        clip: float in [0, 1], probability margin m (0 = no shifting).
        eps: float > 0, lower clamp of the log arguments.
        ignore_unknown: bool, drop y < 0 (True) or treat it as 0 (False).
        disable_focal_gradient: bool, stop the gradient through w.
        name: str, loss name.
        **kwargs: passed to ``keras.losses.Loss`` (``reduction``, ``dtype``).

    Call args:
        y_true: tensor [B, C], values in [0, 1] or -1 (unknown).
        y_pred: float tensor [B, C], LOGITS.

    Returns (``call``):
        float32 tensor [B], per-example losses (>= 0).

    Raises:
        ValueError: for a negative gamma, ``clip`` outside [0, 1] or
            ``eps <= 0``.
    """

    def __init__(self, gamma_pos=0.0, gamma_neg=4.0, clip=0.05, eps=1e-8,
                 ignore_unknown=True, disable_focal_gradient=True,
                 name="asymmetric_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        if not (float(gamma_pos) >= 0.0 and float(gamma_neg) >= 0.0):
            raise ValueError(
                f"AsymmetricLoss: gammas must be >= 0, got gamma_pos="
                f"{gamma_pos}, gamma_neg={gamma_neg}")
        if not 0.0 <= float(clip) <= 1.0:
            raise ValueError(f"AsymmetricLoss: `clip` must be in [0, 1], got {clip}")
        if not float(eps) > 0.0:
            raise ValueError(f"AsymmetricLoss: `eps` must be > 0, got {eps}")
        self.gamma_pos = float(gamma_pos)
        self.gamma_neg = float(gamma_neg)
        self.clip = float(clip)
        self.eps = float(eps)
        self.ignore_unknown = bool(ignore_unknown)
        self.disable_focal_gradient = bool(disable_focal_gradient)

    def call(self, y_true, y_pred):
        _static_num_classes(y_pred)
        y = _as_float32(y_true)
        z = _as_float32(y_pred)
        known_bool = ops.greater_equal(y, 0.0)
        t = ops.where(known_bool, y, 0.0)
        p = ops.sigmoid(z)
        p_neg = 1.0 - p
        if self.clip > 0:
            p_neg = ops.minimum(p_neg + self.clip, 1.0)
        loss = (t * ops.log(ops.maximum(p, self.eps))
                + (1.0 - t) * ops.log(ops.maximum(p_neg, self.eps)))
        if self.gamma_pos > 0 or self.gamma_neg > 0:
            if self.disable_focal_gradient:
                p, p_neg = ops.stop_gradient(p), ops.stop_gradient(p_neg)
            pt = p * t + p_neg * (1.0 - t)
            weight = _focal_power(1.0 - pt, self.gamma_pos * t
                                  + self.gamma_neg * (1.0 - t))
            loss = loss * weight
        if self.ignore_unknown:
            loss = loss * ops.cast(known_bool, "float32")
        return -ops.sum(loss, axis=1)

    def get_config(self):
        config = super().get_config()
        config.update({
            "gamma_pos": self.gamma_pos,
            "gamma_neg": self.gamma_neg,
            "clip": self.clip,
            "eps": self.eps,
            "ignore_unknown": self.ignore_unknown,
            "disable_focal_gradient": self.disable_focal_gradient,
        })
        return config


@keras.saving.register_keras_serializable(package="mll_tf")
class MaskedBinaryCrossentropy(keras.losses.Loss):
    """Binary cross-entropy from logits with partial labels.

    Per entry, with t the target::

        bce(z, t) = max(z, 0) - z * t + log(1 + exp(-|z|))
                  = -(t log sigmoid(z) + (1 - t) log(1 - sigmoid(z)))

    computed in this stable form (no clamping, unlike the CSL/ASL losses).

    * ``mode="ignore"``: unknown entries (y < 0) get weight 0 (the "ignore"
      baseline of CSL, docs/partial_labels.md §3).
    * ``mode="negative"``: unknown entries are negatives, t = 0 (the
      "negative" baseline; also IMCL's MSCOCO convention,
      docs/labels_and_data.md §1).

    Targets in [0, 1] may be soft. Reduction: ``call`` returns the
    per-example SUM over classes [B] (not the mean over classes of
    ``keras.losses.BinaryCrossentropy``: on fully labelled data this loss is
    C times Keras' value), then the Keras reduction averages over the batch.
    The number of known entries does not normalise the sum.

    Args:
        mode: str, ``"ignore"`` or ``"negative"``.
        name: str, loss name.
        **kwargs: passed to ``keras.losses.Loss`` (``reduction``, ``dtype``).

    Call args:
        y_true: tensor [B, C], values in [0, 1] or -1 (unknown).
        y_pred: float tensor [B, C], LOGITS.

    Returns (``call``):
        float32 tensor [B], per-example losses (>= 0).

    Raises:
        ValueError: for an unknown ``mode``.
    """

    MODES = ("ignore", "negative")

    def __init__(self, mode="ignore", name="masked_binary_crossentropy",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        if mode not in self.MODES:
            raise ValueError(
                f"MaskedBinaryCrossentropy: unknown mode {mode!r}; expected "
                f"one of {list(self.MODES)}")
        self.mode = mode

    def call(self, y_true, y_pred):
        _static_num_classes(y_pred)
        y = _as_float32(y_true)
        z = _as_float32(y_pred)
        known = ops.greater_equal(y, 0.0)
        t = ops.where(known, y, 0.0)
        bce = ops.relu(z) - z * t + ops.log1p(ops.exp(-ops.abs(z)))
        if self.mode == "ignore":
            bce = bce * ops.cast(known, "float32")
        return ops.sum(bce, axis=1)

    def get_config(self):
        config = super().get_config()
        config["mode"] = self.mode
        return config
