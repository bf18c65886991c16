"""LESA losses: ranking, attention distribution, global relevance, span.

Port of the loss terms of ``AttentionClassifier`` in
``core/model_share_attention.py`` (hbdat/cvpr20_LESA): ``_ranking_loss``,
``_attention_distribution_soft_cardinality``,
``_attention_global_regularizer`` and ``_attention_ortho_span_regularizer``.
The math is METHODS.md §1.3.

Labels use the mll_tf convention (``1`` present, ``0`` absent, ``-1``
unknown; any integer or float dtype). Internally they are mapped to LESA's
y_pm1 = +1 / -1 / 0 (METHODS.md §6.2), so the formulas read exactly as in
METHODS.md §1.3.
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


def ranking_loss(labels, logits, margin=1.0):
    """Per-image pairwise hinge ranking loss normalised by violating pairs.

    For image i with positives P_i = {c: labels_ic = 1} and negatives
    N_i = {c: labels_ic = 0} (unknown -1 is ignored)::

        h_i(p, n) = max(0, margin + s_in - s_ip)     p in P_i, n in N_i
        V_i       = #{(p, n): h_i(p, n) > 0}          (no gradient)
        loss_i    = sum_{p,n} h_i(p, n) / (V_i + 1e-8)

    An image without positive/negative pairs gives 0. The reference batch
    loss is ``mean_i loss_i`` (METHODS.md §1.3; reference ``_ranking_loss``;
    paper Eq. for L_rank). The reference's gathering of the columns labelled
    somewhere in the batch is an optimisation that does not change the value
    and is not done here.

    Memory: the pairs are a dense [B, C, C] float32 tensor (plus a few fused
    temporaries of the same size): B=32, C=925 (NUS-WIDE seen) is 27.4M
    entries = 110 MB each; C=1000 is 128 MB; OpenImages' C=7186 would need
    6.6 GB and calls for chunking over images.

    Args:
        labels: tensor [B, C] in {1, 0, -1} (any numeric dtype).
        logits: float32 tensor [B, C], unbounded scores s.
        margin: float, the hinge margin (1.0 in the reference).

    Returns:
        float32 tensor [B], per-image losses (>= 0).
    """
    positive, negative = _positive_negative(labels)
    logits = ops.cast(logits, "float32")
    # pair[b, n, p] = positive p and negative n (reference layout [B, n, p]).
    pair = negative[:, :, None] * positive[:, None, :]
    hinge = ops.relu(margin + logits[:, :, None] - logits[:, None, :]) * pair
    violations = ops.stop_gradient(
        ops.sum(ops.cast(ops.greater(hinge, 0.0), "float32"), axis=(1, 2)))
    return ops.sum(hinge, axis=(1, 2)) / (violations + _PAIR_EPS)


def attention_distribution_loss(labels, head_logits):
    """Per-image attention-distribution loss ("soft cardinality", no norm).

    ``pi_{i,m,c} = softmax_m(s_{i,m,c})`` over heads,
    ``P_{i,m} = sum_{c: labels_ic = 1} pi_{i,m,c}``,
    ``loss_i = mean_m P_{i,m}^2``. The reference batch loss is
    ``mean_i loss_i`` (METHODS.md §1.3; reference
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
    the batch SUM of ``loss_i`` (METHODS.md §1.3; reference
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
    (METHODS.md §1.3; reference ``_attention_ortho_span_regularizer``).

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
    import tensorflow as tf  # distribution code only (CONVENTIONS §3.2.13)

    return tf.distribute.get_strategy().num_replicas_in_sync


@keras.saving.register_keras_serializable(package="mll_tf")
class LESALoss(keras.losses.Loss):
    """Full LESA training loss with per-term outputs.

    ``total = ranking + distribution_weight * distribution
    + global_weight * global + span_weight * span`` (METHODS.md §1.3; the
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
