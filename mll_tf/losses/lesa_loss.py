"""LESA losses: ranking, attention distribution, global relevance, span.

Port of the loss terms of ``AttentionClassifier`` in
``core/model_share_attention.py`` (hbdat/cvpr20_LESA): ``_ranking_loss``,
``_attention_distribution_soft_cardinality``,
``_attention_global_regularizer`` and ``_attention_ortho_span_regularizer``.
The math is in docs/lesa.md §3 (Huynh & Elhamifar, CVPR 2020).

Labels use the mll_tf convention (``1`` present, ``0`` absent, ``-1``
unknown; any integer or float dtype). Internally they are mapped to LESA's
y_pm1 = +1 / -1 / 0 (docs/labels_and_data.md §1), so the formulas read exactly
as in the reference code.
"""

import keras
from keras import ops

_PAIR_EPS = 1e-8   # reference ``_ranking_loss`` eps
_L2_EPS = 1e-12    # tf.nn.l2_normalize's epsilon on the squared norm
_SPAN_EPS = 1e-12  # guards the span gradient split against S_tot = 0


def _positive_negative(labels):
    """mll_tf labels -> float32 (positive, negative) masks, same shape."""
    labels = ops.convert_to_tensor(labels)
    positive = ops.cast(ops.equal(labels, 1), "float32")
    negative = ops.cast(ops.equal(labels, 0), "float32")
    return positive, negative


def _safe_sqrt(x):
    """sqrt(x) for x >= 0 with a zero (not NaN/inf) gradient at x = 0."""
    positive = ops.greater(x, 0.0)
    root = ops.sqrt(ops.where(positive, x, ops.ones_like(x)))
    return ops.where(positive, root, ops.zeros_like(x))


# Largest C for which method="auto" uses the dense [B, C, C] pairs; above it
# the sorted O(B C log C) path. Measured on CPU (TF 2.21, B=32, loss +
# gradient in a tf.function): dense is faster only up to C ~ 32-64 (C=8:
# 0.46 vs 0.62 ms; C=128: 7 vs 2.6 ms; C=925: ~90-300 vs ~6-17 ms). On a GPU
# the dense path may stay competitive longer; re-measure before raising it.
DENSE_RANKING_MAX_CLASSES = 64


def ranking_loss(labels, logits, margin=1.0, method="auto"):
    """Per-image pairwise hinge ranking loss normalised by violating pairs.

    For image i with positives P_i = {c: labels_ic = 1} and negatives
    N_i = {c: labels_ic = 0} (unknown -1 is ignored)::

        h_i(p, n) = max(0, margin + s_in - s_ip)     p in P_i, n in N_i
        V_i       = #{(p, n): h_i(p, n) > 0}          (no gradient)
        loss_i    = sum_{p,n} h_i(p, n) / (V_i + 1e-8)

    An image without positive/negative pairs gives 0. The reference batch
    loss is ``mean_i loss_i`` (docs/lesa.md §3; reference ``_ranking_loss``;
    paper Eq. for L_rank). The reference's gathering of the columns labelled
    somewhere in the batch is an optimisation that does not change the value
    and is not done here.

    Two exact implementations:

    * ``"dense"``: the pairs as a dense [B, C, C] float32 tensor (plus a few
      temporaries of that size): B=32, C=925 (NUS-WIDE seen) is 27.4M
      entries = 110 MB each; OpenImages' C=7186 would need 6.6 GB each.
    * ``"sorted"``: per image, the negatives' t_n = margin + s_n sorted in
      descending order; for positive p the violators are the
      cnt_p = #{n: t_n > s_p} largest (a vectorised binary search), and
      ``sum_n h_i(p, n) = T_i[cnt_p] - cnt_p * (s_p - c_i)`` with T_i the
      exclusive cumulative sum of the sorted t_n - c_i (c_i = max_n t_n, a
      constant that keeps the float32 sums small); V_i = sum_p cnt_p.
      O(B C log C)
      time and O(B C) memory; gradients flow through the sorted (gathered)
      scores: d/ds_p = -cnt_p, d/ds_n = #{p: t_n > s_p}, as in the dense
      form. The violation test ``margin + s_n > s_p`` is the dense path's
      ``h > 0`` exactly (same float32 rounding), so ties count alike; the
      sums differ only by float32 rounding.

    Args:
        labels: tensor [B, C] in {1, 0, -1} (any numeric dtype).
        logits: float32 tensor [B, C], unbounded finite scores s.
        margin: float, the hinge margin (1.0 in the reference).
        method: ``"auto"`` (dense if the static C <=
            ``DENSE_RANKING_MAX_CLASSES`` = 64, else sorted; sorted when C
            is not known statically), ``"dense"`` or ``"sorted"``.

    Returns:
        float32 tensor [B], per-image losses (>= 0).

    Raises:
        ValueError: if ``method`` is not one of the three names.
    """
    if method not in ("auto", "dense", "sorted"):
        raise ValueError(f"ranking_loss: method must be 'auto', 'dense' or "
                         f"'sorted', got {method!r}")
    positive, negative = _positive_negative(labels)
    logits = ops.cast(logits, "float32")
    if method == "auto":
        num_classes = logits.shape[-1]
        method = ("dense" if num_classes is not None
                  and num_classes <= DENSE_RANKING_MAX_CLASSES else "sorted")
    if method == "dense":
        return _ranking_loss_dense(positive, negative, logits, margin)
    return _ranking_loss_sorted(positive, negative, logits, margin)


def _ranking_loss_dense(positive, negative, logits, margin):
    """ranking_loss on the dense [B, n, p] pair tensor (reference layout)."""
    pair = negative[:, :, None] * positive[:, None, :]
    hinge = ops.relu(margin + logits[:, :, None] - logits[:, None, :]) * pair
    violations = ops.stop_gradient(
        ops.sum(ops.cast(ops.greater(hinge, 0.0), "float32"), axis=(1, 2)))
    return ops.sum(hinge, axis=(1, 2)) / (violations + _PAIR_EPS)


def _count_greater(sorted_desc, queries):
    """#{j: sorted_desc[b, j] > queries[b, k]} by a vectorised binary search.

    Args:
        sorted_desc: float tensor [B, N], each row non-increasing.
        queries: float tensor [B, K].

    Returns:
        int32 tensor [B, K] in [0, N].

    keras.ops' ``searchsorted`` is 1-D only, and TF's batched one lowers to
    an O(N K) comparison under XLA; this is ceil(log2(N + 1)) gathers (31
    when N is not known statically, enough for any int32 N).
    """
    n = sorted_desc.shape[-1]
    steps = 31 if n is None else max(1, int(n).bit_length())
    size = ops.shape(sorted_desc)[-1]
    lo = ops.zeros_like(queries, dtype="int32")
    hi = ops.zeros_like(queries, dtype="int32") + ops.cast(size, "int32")
    # Invariant: sorted_desc[:lo] > q >= sorted_desc[hi:].
    for _ in range(steps):
        mid = (lo + hi) // 2
        probe = ops.take_along_axis(
            sorted_desc, ops.minimum(mid, ops.cast(size, "int32") - 1),
            axis=-1)
        right = ops.logical_and(ops.greater(probe, queries),
                                ops.less(lo, hi))
        lo = ops.where(right, mid + 1, lo)
        hi = ops.where(right, hi, mid)
    return lo


def _ranking_loss_sorted(positive, negative, logits, margin):
    """ranking_loss by sorting the negatives: O(B C log C), O(B C) memory."""
    # t_n = margin + s_n for negatives, -inf elsewhere (never a violator).
    key = ops.where(negative > 0, margin + logits, float("-inf"))
    num_classes = ops.shape(logits)[-1]
    key_desc, _ = ops.top_k(key, k=num_classes, sorted=True)   # [B, C]
    # cnt_p = #{n: t_n > s_p}: the cnt_p largest t_n are the violators.
    count = _count_greater(ops.stop_gradient(key_desc), logits)
    # Sums are taken relative to c = the largest t_n of the row (a constant:
    # the c terms cancel), so float32 rounding scales with the spread of the
    # scores, not with their magnitude.
    finite = ops.isfinite(key_desc)
    shift = ops.stop_gradient(
        ops.where(finite[:, :1], key_desc[:, :1], 0.0))
    centred = ops.where(finite, key_desc - shift, 0.0)
    # T[k] = sum of the k largest (t_n - c) (exclusive cumsum).
    top_sums = ops.concatenate(
        [ops.zeros_like(centred[:, :1]), ops.cumsum(centred, axis=-1)],
        axis=-1)
    violator_sum = ops.take_along_axis(top_sums, count, axis=-1)
    count = ops.cast(count, "float32") * positive
    per_positive = (violator_sum - count * (logits - shift)) * positive
    violations = ops.stop_gradient(ops.sum(count, axis=-1))
    return ops.sum(per_positive, axis=-1) / (violations + _PAIR_EPS)


def attention_distribution_loss(labels, head_logits):
    """Per-image attention-distribution loss ("soft cardinality", no norm).

    ``pi_{i,m,c} = softmax_m(s_{i,m,c})`` over heads,
    ``P_{i,m} = sum_{c: labels_ic = 1} pi_{i,m,c}``,
    ``loss_i = mean_m P_{i,m}^2``. The reference batch loss is
    ``mean_i loss_i`` (docs/lesa.md §3; reference
    ``_attention_distribution_soft_cardinality``). Unknown and absent labels
    contribute nothing.

    Args:
        labels: tensor [B, C] in {1, 0, -1}.
        head_logits: float32 tensor [B, M, C], per-head scores s_{m,c}.

    Returns:
        float32 tensor [B], per-image losses in [0, (#positives)^2].
    """
    positive, _ = _positive_negative(labels)
    pi = ops.softmax(ops.cast(head_logits, "float32"), axis=1)
    per_head = ops.sum(pi * positive[:, None, :], axis=2)      # [B, M]
    return ops.mean(ops.square(per_head), axis=1)


def global_relevance_loss(labels, logits, global_logits):
    """Per-image global-relevance loss (margin 0).

    ``loss_i = sum_c max(0, -(s_ic - g_ic) * y_ic)`` with y_pm1 = +1 present,
    -1 absent, 0 unknown (so unknown labels give 0). The reference term is
    the batch SUM of ``loss_i`` (docs/lesa.md §3; reference
    ``_attention_global_regularizer`` with ``margin_att_global = 0``).

    Args:
        labels: tensor [B, C] in {1, 0, -1}.
        logits: float32 tensor [B, C], attention scores s (max over heads).
        global_logits: float32 tensor [B, C], global scores g.

    Returns:
        float32 tensor [B], per-image losses (>= 0).
    """
    positive, negative = _positive_negative(labels)
    y_pm1 = positive - negative
    diff = ops.cast(logits, "float32") - ops.cast(global_logits, "float32")
    return ops.sum(ops.relu(-diff * y_pm1), axis=1)


def attention_span_sum_of_squares(attention_logits):
    """Sum of squared off-diagonal attention correlations, S.

    ``e_hat = e / ||e||_2`` over regions (tf.nn.l2_normalize, eps 1e-12 on
    the squared norm), ``G_i = e_hat_i e_hat_i^T`` [M, M] with the diagonal
    zeroed, ``S = sum_i sum_{m != m'} G_{i,m,m'}^2``. The reference span term
    is ``sqrt(S)`` over the whole batch, the Frobenius norm of the [B, M, M]
    tensor: not squared and not averaged, so it is not additive over images
    (docs/lesa.md §3; reference ``_attention_ortho_span_regularizer``).

    Args:
        attention_logits: float32 tensor [B, M, R], the PRE-softmax e.

    Returns:
        float32 scalar tensor S >= 0 (additive over images, unlike sqrt(S)).
    """
    e = ops.cast(attention_logits, "float32")
    sq = ops.sum(ops.square(e), axis=-1, keepdims=True)
    e_hat = e * ops.rsqrt(ops.maximum(sq, _L2_EPS))
    gram = ops.matmul(e_hat, ops.transpose(e_hat, (0, 2, 1)))  # [B, M, M]
    heads = ops.shape(gram)[-1]
    off_diagonal = 1.0 - ops.eye(heads, dtype="float32")
    return ops.sum(ops.square(gram * off_diagonal))


def _num_replicas_in_sync():
    """Replicas of the current tf.distribute strategy (1 outside one)."""
    import tensorflow as tf  # distribution code only

    return tf.distribute.get_strategy().num_replicas_in_sync


@keras.saving.register_keras_serializable(package="mll_tf")
class LESALoss(keras.losses.Loss):
    """Full LESA training loss with per-term outputs.

    ``total = ranking + distribution_weight * distribution
    + global_weight * global + span_weight * span`` (docs/lesa.md §3; the
    reference ``AttentionClassifier.build_model_rank`` with
    ``lamb_att_dist=0.1, lamb_att_global=0.001, lamb_att_span=0.01,
    lamb_w2v_diff=0``).

    Reductions, chosen so that per-replica values SUMMED over a
    ``MirroredStrategy`` equal the single-device reference on the global
    batch:

    * ranking, distribution: sum over the local images / ``global_batch_size``
      (defaults to the local batch size, i.e. the reference mean);
    * global: sum over the local images (the reference sums; additive);
    * span: the reference is sqrt(S) of the whole batch, not additive. If
      ``span_sum_of_squares`` (S_tot = the cross-replica SUM of
      :func:`attention_span_sum_of_squares`, e.g. from
      ``replica_ctx.all_reduce(SUM, S_local)``; its gradient is not used) is
      given, the per-replica contribution is::

          sg(sqrt(S_tot)) / R + (S_local - sg(S_local)) / (2 sg(sqrt(S_tot)) + eps)

      whose value is sqrt(S_tot)/R (the second part is 0) and whose gradient
      is dS_local / (2 sqrt(S_tot)); summed over the R replicas this is
      exactly sqrt(S_tot) and d sqrt(S_tot). R is the ``num_replicas``
      argument, or ``tf.distribute.get_strategy().num_replicas_in_sync`` when
      None (1 outside a strategy). Without ``span_sum_of_squares`` the term is
      sqrt(S_local) (single device = reference; the gradient at S = 0 is 0).

    Args:
        distribution_weight: float, weight of the distribution term (0.1).
        global_weight: float, weight of the global term (0.001).
        span_weight: float, weight of the span term (0.01).
        margin: float, ranking hinge margin (1.0).
        name: str, loss name.
        **kwargs: passed to ``keras.losses.Loss`` (``dtype``; the Keras
            ``reduction`` is not used by ``__call__``).

    Call args (``__call__``):
        labels: tensor [B, C] in {1, 0, -1} (mll_tf convention) for the seen
            classes that produced ``outputs["logits"]``.
        outputs: dict from :class:`mll_tf.models.lesa.LESA` with
            ``"logits"`` [B, C], ``"head_logits"`` [B, M, C],
            ``"attention_logits"`` [B, M, R], ``"global_logits"`` [B, C].
        global_batch_size: optional int or scalar tensor, the number of images
            over all replicas.
        span_sum_of_squares: optional float32 scalar, S_tot (see above).
        num_replicas: optional int, R (see above).

    Returns:
        dict of float32 scalars ``"ranking"``, ``"distribution"``,
        ``"global"``, ``"span"`` (each already reduced as above, unweighted)
        and ``"total"`` (weighted sum).

    Raises:
        KeyError: if ``outputs`` lacks one of the keys above.
    """

    def __init__(self, distribution_weight=0.1, global_weight=0.001,
                 span_weight=0.01, margin=1.0, name="lesa_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.distribution_weight = float(distribution_weight)
        self.global_weight = float(global_weight)
        self.span_weight = float(span_weight)
        self.margin = float(margin)

    def weighted_total(self, ranking, distribution, global_, span):
        """Returns ranking + w_d * distribution + w_g * global_ + w_s * span.

        Args:
            ranking, distribution, global_, span: float scalars or tensors
                of the same shape (the reduced terms).

        Returns:
            The weighted sum, same type/shape as the inputs.
        """
        return (ranking + self.distribution_weight * distribution
                + self.global_weight * global_ + self.span_weight * span)

    def span_term(self, attention_logits, span_sum_of_squares=None,
                  num_replicas=None):
        """The span contribution of this replica (see the class docstring).

        Args:
            attention_logits: float32 tensor [B, M, R], pre-softmax e.
            span_sum_of_squares: optional float32 scalar S_tot.
            num_replicas: optional int R.

        Returns:
            float32 scalar.
        """
        local = attention_span_sum_of_squares(attention_logits)
        if span_sum_of_squares is None:
            return _safe_sqrt(local)
        if num_replicas is None:
            num_replicas = _num_replicas_in_sync()
        total = ops.stop_gradient(
            ops.cast(ops.convert_to_tensor(span_sum_of_squares), "float32"))
        root = ops.sqrt(ops.maximum(total, 0.0))
        return (root / float(num_replicas)
                + (local - ops.stop_gradient(local)) / (2.0 * root + _SPAN_EPS))

    def __call__(self, labels, outputs, global_batch_size=None,
                 span_sum_of_squares=None, num_replicas=None):
        logits = outputs["logits"]
        rank_i = ranking_loss(labels, logits, margin=self.margin)
        dist_i = attention_distribution_loss(labels, outputs["head_logits"])
        glob_i = global_relevance_loss(labels, logits,
                                       outputs["global_logits"])
        if global_batch_size is None:
            denominator = ops.cast(ops.shape(rank_i)[0], "float32")
        else:
            denominator = ops.cast(global_batch_size, "float32")
        ranking = ops.sum(rank_i) / denominator
        distribution = ops.sum(dist_i) / denominator
        global_ = ops.sum(glob_i)
        span = self.span_term(outputs["attention_logits"],
                              span_sum_of_squares, num_replicas)
        return {
            "ranking": ranking,
            "distribution": distribution,
            "global": global_,
            "span": span,
            "total": self.weighted_total(ranking, distribution, global_, span),
        }

    def call(self, y_true, y_pred):
        """Keras ``Loss.call`` hook: the scalar total of :meth:`__call__`."""
        return self.__call__(y_true, y_pred)["total"]

    def get_config(self):
        config = super().get_config()
        config.update({
            "distribution_weight": self.distribution_weight,
            "global_weight": self.global_weight,
            "span_weight": self.span_weight,
            "margin": self.margin,
        })
        return config
