"""IMCL losses: masked logistic loss, label / feature residuals, lambdas.

Port of the loss terms of hbdat/cvpr20_IMCL
(``OpenImages_experiments/interactive_learning_OpenImages.py`` and
``colaborative_loss.e2e_OMP_asym_sigmoid_loss_Feature_Graph``; docs/imcl.md
§3; paper Eq. (5)-(7))::

    L = L_log + lambda_c * L_colab + lambda_f * L_feat
    L_log   = sum_ic xent(clip(y,0,1), s_ic) |y_ic| / max(#observed, 1)
    L_colab = sum_i ||y_hat_i - sum_a P_L[i,a] Y_hat_a||^2 / B
    L_feat  = sum_i ||f_i - sum_a P_F[i,a] F_a||^2 / B

Labels use the mll_tf convention (``1`` present, ``0`` absent, ``-1``
unknown). In the reference's +1/-1/0 coding, ``clip(y, 0, 1)`` is
``labels == 1`` and ``|y|`` is ``labels != -1``; the residual terms receive
predictions that were already clamped with +1/-1/0 targets by
:mod:`mll_tf.models.imcl` (which converts with :func:`mll_tf.labels.to_pm1`'s
rule at its boundary).
"""

import math
import warnings

import keras
from keras import ops


def _xent_with_logits(targets, logits):
    """Element-wise tf.nn.sigmoid_cross_entropy_with_logits (stable form)."""
    return (ops.relu(logits) - logits * targets
            + ops.log1p(ops.exp(-ops.abs(logits))))


def masked_logistic_sums(labels, logits, per_example=False,
                         unknown_as_negative=False):
    """Sum and count of the masked sigmoid cross-entropy.

    ``sum = sum_ic xent(labels_ic == 1, logits_ic) * w_ic`` with
    ``w_ic = 1`` for observed labels (1 or 0) and 0 for unknown (-1), and
    ``count = sum_ic w_ic``. ``sum / max(count, 1)`` is TF1's
    ``tf.losses.sigmoid_cross_entropy(..., weights=|y|)`` with its default
    ``SUM_BY_NONZERO_WEIGHTS`` reduction (docs/imcl.md §3). Returning the two
    parts lets a distributed trainer all-reduce both and divide once, which is
    exact (a mean of per-replica means is not).

    Args:
        labels: tensor [B, C] in {1, 0, -1} (any numeric dtype).
        logits: float tensor [B, C], unbounded scores.
        per_example: bool, return [B] vectors (sums over classes) instead of
            scalars.
        unknown_as_negative: bool, MSCOCO's unweighted loss: every entry has
            weight 1 and only 1 is positive (docs/imcl.md §3).

    Returns:
        ``(sum, count)``: float32 scalars (or [B] with ``per_example``); the
        sum is >= 0 and the count is an integer-valued float.
    """
    labels = ops.convert_to_tensor(labels)
    logits = ops.cast(logits, "float32")
    targets = ops.cast(ops.equal(labels, 1), "float32")
    if unknown_as_negative:
        weights = ops.ones_like(logits)
    else:
        weights = ops.cast(ops.not_equal(labels, -1), "float32")
    xent = _xent_with_logits(targets, logits) * weights
    axis = 1 if per_example else None
    return ops.sum(xent, axis=axis), ops.sum(weights, axis=axis)


def masked_logistic_loss(labels, logits, unknown_as_negative=False):
    """IMCL's logistic loss: masked xent sum / max(#observed, 1).

    Args:
        labels: tensor [B, C] in {1, 0, -1}.
        logits: float tensor [B, C].
        unknown_as_negative: bool, see :func:`masked_logistic_sums`.

    Returns:
        float32 scalar >= 0 (0 when no label is observed).
    """
    total, count = masked_logistic_sums(
        labels, logits, unknown_as_negative=unknown_as_negative)
    return total / ops.maximum(count, 1.0)


def _atoms(dictionary, indices):
    """[B, k, E] atoms: ``dictionary`` if already gathered, else gathered."""
    dictionary = ops.convert_to_tensor(dictionary)
    if len(dictionary.shape) == 3:
        return ops.cast(dictionary, "float32")
    safe = ops.maximum(ops.cast(indices, "int32"), 0)
    return ops.cast(ops.take(dictionary, safe, axis=0), "float32")


def _residual_sum(target, dictionary, indices, coefs):
    atoms = _atoms(dictionary, indices)
    valid = ops.cast(ops.greater_equal(indices, 0), "float32")
    coefs = ops.cast(coefs, "float32") * valid
    recon = ops.einsum("bk,bke->be", coefs, atoms)
    return ops.sum(ops.square(ops.cast(target, "float32") - recon))


def _denominator(target, global_batch_size):
    if global_batch_size is None:
        return ops.cast(ops.shape(target)[0], "float32")
    return ops.cast(global_batch_size, "float32")


def label_residual_loss(y_hat, dict_y_hat, indices, coefs,
                        global_batch_size=None):
    """L_colab = sum_i ||y_hat_i - sum_a coef_ia Y_hat_{j(i,a)}||^2 / B.

    (docs/imcl.md §3; reference ``loss_colaborative = ||R_L||^2 / batch``.)
    Slots with ``indices == -1`` contribute nothing.

    Args:
        y_hat: float [B, C], the clamped predictions of the batch.
        dict_y_hat: float [N, C] dictionary predictions (gathered with
            ``indices``) or [B, k, C] atoms already gathered per image.
        indices: int [B, k], dictionary rows, -1 for unused slots.
        coefs: float [B, k], the OMP label coefficients P_L.
        global_batch_size: optional int or scalar tensor replacing B (for
            per-replica terms that are summed across replicas).

    Returns:
        float32 scalar >= 0.
    """
    return (_residual_sum(y_hat, dict_y_hat, indices, coefs)
            / _denominator(y_hat, global_batch_size))


def feature_residual_loss(features, dict_features, indices, coefs,
                          global_batch_size=None):
    """L_feat = sum_i ||f_i - sum_a coef_ia F_{j(i,a)}||^2 / B.

    Same as :func:`label_residual_loss` on the OMP features (IMCL:
    ``[f Theta_1, 1]``) with the feature coefficients P_F.

    Args:
        features: float [B, E].
        dict_features: float [N, E] or gathered atoms [B, k, E].
        indices: int [B, k], -1 for unused slots.
        coefs: float [B, k].
        global_batch_size: optional, see :func:`label_residual_loss`.

    Returns:
        float32 scalar >= 0.
    """
    return (_residual_sum(features, dict_features, indices, coefs)
            / _denominator(features, global_batch_size))


def _check_loss(value, name):
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"calibrate_lambdas: {name} must be finite and >= 0, "
                         f"got {value}")
    return value


def calibrate_lambdas(l_log, l_colab, l_feat, alpha_c, alpha_f):
    """IMCL's loss-ratio weights: lambda = alpha * L_log / L at initialisation.

    ``lambda_c = alpha_c * L_log / L_colab``,
    ``lambda_f = alpha_f * L_log / L_feat`` (docs/imcl.md §3; reference
    ``ratio_loss_coloborative * alpha_colaborative_o``), computed once on the
    first batch before training.

    Zero-denominator rule: if ``alpha == 0`` the weight is 0 (the term is
    off). If ``alpha > 0`` but the residual is exactly 0 at initialisation
    (e.g. no atom passed the OMP threshold), the ratio is undefined: the
    weight falls back to ``alpha`` itself (ratio taken as 1) and a
    ``RuntimeWarning`` is issued.

    Args:
        l_log, l_colab, l_feat: float scalars (Python or 0-d tensors), the
            three unweighted losses at initialisation.
        alpha_c, alpha_f: float >= 0 (OpenImages: 1 and 0.5; e2e: 1 and 0;
            COCO: 0.5 and 0.25).

    Returns:
        ``(lambda_c, lambda_f)``, Python floats >= 0.

    Raises:
        ValueError: if a loss is negative or not finite, an alpha is
            negative, or ``l_log == 0`` while an alpha is positive (calibrate
            on a batch with observed labels).
    """
    l_log = _check_loss(l_log, "l_log")
    out = []
    for alpha, loss, name in ((alpha_c, l_colab, "l_colab"),
                              (alpha_f, l_feat, "l_feat")):
        alpha = float(alpha)
        if not math.isfinite(alpha) or alpha < 0:
            raise ValueError(f"calibrate_lambdas: alpha for {name} must be "
                             f">= 0, got {alpha}")
        loss = _check_loss(loss, name)
        if alpha == 0.0:
            out.append(0.0)
            continue
        if l_log == 0.0:
            raise ValueError("calibrate_lambdas: l_log is 0 (no observed "
                             "label in the batch); calibrate on a batch with "
                             "observed labels")
        if loss == 0.0:
            warnings.warn(f"calibrate_lambdas: {name} is 0 at initialisation; "
                          f"using lambda = alpha = {alpha}", RuntimeWarning,
                          stacklevel=2)
            out.append(alpha)
        else:
            out.append(alpha * l_log / loss)
    return tuple(out)


@keras.saving.register_keras_serializable(package="mll_tf")
class IMCLLoss(keras.losses.Loss):
    """IMCL training loss with per-term outputs.

    ``total = logistic + lambda_colab * colab + lambda_feature * feature``
    (docs/imcl.md §3). Reductions (so that per-replica values summed over a
    ``MirroredStrategy`` equal the single-device reference on the global
    batch, when the optional global arguments are given):

    * logistic: local masked xent sum / max(``global_observed_count``, 1)
      (default: the local count, i.e. the reference);
    * colab, feature: local squared-residual sums / ``global_batch_size``
      (default: the local batch size).

    Args:
        lambda_colab: float >= 0, lambda_c (see :func:`calibrate_lambdas`).
        lambda_feature: float >= 0, lambda_f (0: the term is not computed,
            as MSCOCO's ``is_feature_propagate=False``).
        unknown_as_negative: bool, MSCOCO's unweighted logistic loss.
        name: str.
        **kwargs: passed to ``keras.losses.Loss``.

    Call args (``__call__``):
        labels: tensor [B, C] in {1, 0, -1} (mll_tf convention).
        outputs: dict with ``"logits"`` [B, C]; for the residual terms also
            ``"indices"`` int [B, k] (-1 unused), ``"y_hat"`` [B, C],
            ``"atom_y_hat"`` [B, k, C], ``"coef_label"`` [B, k] and
            ``"omp_features"`` [B, E], ``"atom_features"`` [B, k, E],
            ``"coef_feature"`` [B, k] (see
            :class:`mll_tf.models.imcl.IMCLTrainStep`). Without
            ``"indices"`` only the logistic term is computed.
        global_batch_size, global_observed_count: optional scalars (above).
        lambda_colab, lambda_feature: optional overrides (e.g. tf.Variables
            set by calibration) of the constructor values.

    Returns:
        dict of float32 scalars ``"logistic"``, ``"colab"``, ``"feature"``
        (unweighted, reduced as above) and ``"total"``.
    """

    def __init__(self, lambda_colab=0.0, lambda_feature=0.0,
                 unknown_as_negative=False, name="imcl_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.lambda_colab = float(lambda_colab)
        self.lambda_feature = float(lambda_feature)
        self.unknown_as_negative = bool(unknown_as_negative)

    def __call__(self, labels, outputs, global_batch_size=None,
                 global_observed_count=None, lambda_colab=None,
                 lambda_feature=None):
        lam_c = self.lambda_colab if lambda_colab is None else lambda_colab
        lam_f = (self.lambda_feature if lambda_feature is None
                 else lambda_feature)
        total_xent, count = masked_logistic_sums(
            labels, outputs["logits"],
            unknown_as_negative=self.unknown_as_negative)
        if global_observed_count is not None:
            count = ops.cast(global_observed_count, "float32")
        logistic = total_xent / ops.maximum(count, 1.0)
        zero = ops.zeros((), "float32")
        colab = feature = zero
        if "indices" in outputs:
            indices = outputs["indices"]
            colab = label_residual_loss(
                outputs["y_hat"], outputs["atom_y_hat"], indices,
                outputs["coef_label"], global_batch_size)
            if not (isinstance(lam_f, (int, float)) and lam_f == 0.0):
                feature = feature_residual_loss(
                    outputs["omp_features"], outputs["atom_features"],
                    indices, outputs["coef_feature"], global_batch_size)
        lam_c = ops.cast(lam_c, "float32")
        lam_f = ops.cast(lam_f, "float32")
        return {"logistic": logistic, "colab": colab, "feature": feature,
                "total": logistic + lam_c * colab + lam_f * feature}

    def call(self, y_true, y_pred):
        """Keras ``Loss.call`` hook: the scalar total of :meth:`__call__`."""
        return self.__call__(y_true, y_pred)["total"]

    def get_config(self):
        config = super().get_config()
        config.update({"lambda_colab": self.lambda_colab,
                       "lambda_feature": self.lambda_feature,
                       "unknown_as_negative": self.unknown_as_negative})
        return config
