"""Asymmetric angular-margin binary loss (AAM) for cosine classifiers.

Prokofiev & Sovrasov, "Combining Metric Learning and Attention Heads for
Accurate and Efficient Multilabel Image Classification" (2022), Sec. 3.2
(Eq. 2-4); reference implementation ``torchreid/losses/asl.py::AMBinaryLoss``
on the ``multilabel`` branch of deep-object-reid. The classifier outputs the
cosine between a normalised feature and a normalised class proxy
(``AngleSimpleLinear``); the loss is a binary, SphereFace2-style sigmoid loss
on the scaled, margin-shifted cosine, with optional asymmetric focusing.

Labels use the mll_tf convention: ``1`` present, ``0`` absent, ``-1`` unknown
(weight 0). Soft targets in [0, 1] (label smoothing, mixup) are accepted.
"""

import math

import keras
from keras import ops

from mll_tf.losses.partial import _focal_power

__all__ = ["AMBinaryLoss", "compute_s", "smooth_labels"]


def compute_s(num_classes):
    """The scale ``s`` chosen from the number of classes (the reference's ``compute_s``).

    ``s = min(max(sqrt(5) * ln(C - 1), 7), 30)`` -- reference
    ``torchreid/models/common.py::ModelInterface.compute_s`` (used when the
    config sets ``loss.softmax.compute_s: True``; the released configs fix s
    instead: 23 for COCO with ML-Decoder, 17 for VOC with ML-GCN).

    Args:
        num_classes: int >= 1, C. For C = 1 or 2 the logarithm is -inf or 0
            and the lower bound 7 applies.

    Returns:
        float in [7, 30].

    Raises:
        ValueError: if ``num_classes`` is not an integer >= 1.
    """
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"compute_s: num_classes must be an integer >= 1, got {num_classes!r}")
    if num_classes <= 2:
        return 7.0
    return float(min(max(math.sqrt(5.0) * math.log(num_classes - 1), 7.0), 30.0))


def smooth_labels(y_true, epsilon):
    """Label smoothing of multi-label targets that keeps unknown entries unknown.

    ``1 -> 1 - epsilon``, ``0 -> epsilon``, a soft target t in (0, 1) ->
    ``t * (1 - epsilon)`` (the reference's ``label_smoothing`` in
    ``torchreid/losses/asl.py``: scale by 1 - epsilon, then set the entries
    that are exactly 0 to epsilon), ``-1`` (unknown) stays ``-1``. Usable with
    any loss of ``mll_tf.losses`` that reads ``y < 0`` as unknown (ASL with
    ``ignore_unknown``, :class:`AMBinaryLoss`).

    Args:
        y_true: tensor [B, C] in {1, 0, -1} or soft targets in [0, 1].
        epsilon: float in [0, 1).

    Returns:
        float32 tensor [B, C].

    Raises:
        ValueError: ``epsilon`` outside [0, 1).
    """
    if not 0.0 <= float(epsilon) < 1.0:
        raise ValueError(f"smooth_labels: epsilon must be in [0, 1), got {epsilon}")
    y = ops.cast(ops.convert_to_tensor(y_true), "float32")
    if epsilon == 0:
        return y
    known = ops.greater_equal(y, 0.0)
    t = y * (1.0 - epsilon)
    t = ops.where(ops.equal(y, 0.0), ops.cast(epsilon, "float32"), t)
    return ops.where(known, t, -1.0)


@keras.saving.register_keras_serializable(package="mll_tf")
class AMBinaryLoss(keras.losses.Loss):
    """Asymmetric angular-margin binary loss on cosines, unknown labels ignored.

    With cosines c in [-1, 1], targets t in [0, 1] (after label smoothing),
    scale s, margin m, balance k::

        p_pos = sigmoid( s * (c - m))          # probability of "present"
        p_neg = sigmoid(-s * (c + m))          # probability of "absent" (!= 1 - p_pos if m != 0)
        if gamma_pos > 0 or gamma_neg > 0:     # asymmetric focusing
            p_neg = min(p_neg + clip, 1)       # probability shift of negatives (clip = 0.05)
            w     = (t * p_neg + (1 - t) * p_pos) ** (gamma_pos * t + gamma_neg * (1 - t))
        else:
            w     = 1
        loss_i = - sum_c known_ic * w_ic * [ (k / s) * t * log p_pos + ((1 - k) / s) * (1 - t) * log p_neg ]

    where ``known = [y >= 0]`` (``-1`` entries have weight 0). A positive is
    thus weighted by its (shifted) probability of being absent to the power
    gamma_pos, a negative by its probability of being present to the power
    gamma_neg. The gradient flows through w, as in the reference. The
    shifted p_neg is used in the log term too (the reference overwrites
    ``xs_neg`` before taking ``torch.log(xs_neg)``); without focusing there is
    no shift.

    Numerics: ``log p_pos`` and (unshifted) ``log p_neg`` are computed as
    ``log_sigmoid`` (the reference takes ``torch.log(torch.sigmoid(.))``,
    which is -inf once the sigmoid underflows; the values agree wherever the
    reference is finite). The focusing power has a finite gradient where its
    base is 0 (see ``mll_tf.losses.partial._focal_power``), so the gradient
    is finite for every c in [-1, 1] and for probabilities that are exactly 0
    or 1 in float32.

    Reduction: ``call`` returns the per-example loss ``[B]`` (the sum over
    classes), like the other losses of :mod:`mll_tf.losses.partial`; with
    ``reduction="none"`` a training step divides the sum over the global batch
    by the global batch size (``mll_tf.tasks.partial.PartialLabelSteps``).
    The reference returns ``-loss.sum()`` over the kept entries of the whole
    batch (no division by B), so this loss summed over the batch equals the
    reference value.

    Not ported: the reference's ``t`` argument (unused in its ``forward``),
    its ``eps`` (unused), and the mixup/cutmix target mixing inside the loss
    (``mll_tf.training.recipe`` mixes targets in the input pipeline instead).

    Source: Prokofiev & Sovrasov 2022, Sec. 3.2; deep-object-reid
    (``multilabel`` branch) ``torchreid/losses/asl.py::AMBinaryLoss``.
    Released settings: s = 23 (COCO) or 17 (VOC), m = 0, k = 0.7,
    gamma_pos = gamma_neg = 0.

    Args:
        s: float > 0, the scale of the cosine (use :func:`compute_s` to take
            it from the number of classes).
        m: float >= 0, the angular margin on the cosine (reference default
            0.35; the released configs use 0).
        k: float in [0, 1], weight of the positive term (``amb_k``); the
            negative term has weight 1 - k. Both are divided by s.
        gamma_pos: float >= 0, focusing exponent of positives.
        gamma_neg: float >= 0, focusing exponent of negatives.
        clip: float in [0, 1], the probability shift of negatives when
            focusing (reference ``probability_margin`` 0.05; 0 = no shift).
        label_smoothing: float in [0, 1): ``1 -> 1 - eps``, ``0 -> eps``
            (:func:`smooth_labels`), unknown entries stay ignored.
        name: str.
        **kwargs: ``keras.losses.Loss`` arguments (``reduction``, ``dtype``).

    Call args:
        y_true: tensor [B, C] in {1, 0, -1} or soft targets in [0, 1].
        y_pred: float tensor [B, C], COSINES in [-1, 1] (not logits).

    Returns (``call``):
        float32 tensor [B], per-example losses (>= 0).

    Raises:
        ValueError: s <= 0, m < 0, k outside [0, 1], a negative gamma,
            ``clip`` outside [0, 1] or ``label_smoothing`` outside [0, 1).
    """

    def __init__(self, s=30.0, m=0.35, k=0.8, gamma_pos=0.0, gamma_neg=0.0, clip=0.05,
                 label_smoothing=0.0, name="am_binary_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        if not float(s) > 0.0 or not math.isfinite(float(s)):
            raise ValueError(f"AMBinaryLoss: s must be a finite number > 0, got {s}")
        if not float(m) >= 0.0:
            raise ValueError(f"AMBinaryLoss: m must be >= 0, got {m}")
        if not 0.0 <= float(k) <= 1.0:
            raise ValueError(f"AMBinaryLoss: k must be in [0, 1], got {k}")
        if not (float(gamma_pos) >= 0.0 and float(gamma_neg) >= 0.0):
            raise ValueError(f"AMBinaryLoss: gammas must be >= 0, got gamma_pos={gamma_pos}, "
                             f"gamma_neg={gamma_neg}")
        if not 0.0 <= float(clip) <= 1.0:
            raise ValueError(f"AMBinaryLoss: clip must be in [0, 1], got {clip}")
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ValueError(f"AMBinaryLoss: label_smoothing must be in [0, 1), got {label_smoothing}")
        self.s = float(s)
        self.m = float(m)
        self.k = float(k)
        self.gamma_pos = float(gamma_pos)
        self.gamma_neg = float(gamma_neg)
        self.clip = float(clip)
        self.label_smoothing = float(label_smoothing)

    @property
    def focusing(self):
        """bool, asymmetric focusing is on (gamma_pos > 0 or gamma_neg > 0)."""
        return self.gamma_pos > 0 or self.gamma_neg > 0

    def probabilities(self, cosines):
        """Scores of a trained cosine classifier: ``sigmoid(s * cos)`` (the reference's inference rule).

        Args:
            cosines: float tensor [..., C] in [-1, 1].

        Returns:
            float32 tensor of the same shape, in [0, 1].
        """
        return ops.sigmoid(self.s * ops.cast(cosines, "float32"))

    def call(self, y_true, y_pred):
        shape = getattr(y_pred, "shape", None)
        if shape is None or len(shape) != 2:
            raise ValueError(f"AMBinaryLoss: y_pred must be a 2-D tensor [B, C] of cosines, got shape {shape}")
        y = ops.cast(ops.convert_to_tensor(y_true), "float32")
        c = ops.cast(ops.convert_to_tensor(y_pred), "float32")
        known = ops.greater_equal(y, 0.0)
        t = smooth_labels(y, self.label_smoothing) if self.label_smoothing > 0 else y
        t = ops.where(known, t, 0.0)
        z_pos = self.s * (c - self.m)
        z_neg = -self.s * (c + self.m)
        log_pos = ops.log_sigmoid(z_pos)
        if self.focusing:
            p_pos = ops.sigmoid(z_pos)
            p_neg = ops.sigmoid(z_neg)
            if self.clip > 0:
                p_neg = ops.minimum(p_neg + self.clip, 1.0)
                log_neg = ops.log(p_neg)          # >= log(clip): finite
            else:
                log_neg = ops.log_sigmoid(z_neg)
            base = t * p_neg + (1.0 - t) * p_pos
            weight = _focal_power(base, self.gamma_pos * t + self.gamma_neg * (1.0 - t))
        else:
            log_neg = ops.log_sigmoid(z_neg)
            weight = 1.0
        per_entry = (self.k / self.s) * t * log_pos + ((1.0 - self.k) / self.s) * (1.0 - t) * log_neg
        per_entry = per_entry * weight * ops.cast(known, "float32")
        return -ops.sum(per_entry, axis=1)

    def get_config(self):
        config = super().get_config()
        config.update({"s": self.s, "m": self.m, "k": self.k, "gamma_pos": self.gamma_pos,
                       "gamma_neg": self.gamma_neg, "clip": self.clip,
                       "label_smoothing": self.label_smoothing})
        return config
