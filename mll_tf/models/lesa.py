"""LESA: shared multi-attention for multi-label zero-shot learning.

Port of ``AttentionClassifier.build_model_rank(is_conv=True)`` from
``core/model_share_attention.py`` of hbdat/cvpr20_LESA (Huynh & Elhamifar,
CVPR 2020). The shape flow is in docs/lesa.md §2; the losses live in
:mod:`mll_tf.losses.lesa_loss` (docs/lesa.md §3).
"""

import math

import keras
import numpy as np
from keras import ops

_L2_EPS = 1e-12  # tf.nn.l2_normalize's epsilon on the squared norm.


def _l2_normalize_np(vectors):
    """Row-wise L2 normalisation in NumPy (zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    sq = np.sum(np.square(vectors), axis=-1, keepdims=True)
    return (vectors / np.sqrt(np.maximum(sq, _L2_EPS))).astype(np.float32)


def _l2_normalize(vectors):
    """Row-wise L2 normalisation with ``keras.ops`` (as tf.nn.l2_normalize)."""
    sq = ops.sum(ops.square(vectors), axis=-1, keepdims=True)
    return vectors * ops.rsqrt(ops.maximum(sq, _L2_EPS))


@keras.saving.register_keras_serializable(package="mll_tf")
class LESA(keras.Model):
    """LESA shared multi-attention model on precomputed feature maps.

    Shape flow (docs/lesa.md §2; reference ``build_model_rank(is_conv=True)``,
    ``_conv``, ``_attention_layer_MLP``, ``_predict_frac``):

    1. ``features`` [B, R, D] -> reshape [B, h, w, D] -> 2x2 conv (SAME, no
       bias, ``conv_channels`` = C' outputs, Glorot-uniform) -> synchronized
       BatchNormalization (momentum 0.99, eps 1e-3) -> ReLU -> reshape
       [B, R, C']. Call the result F.
    2. F_a = [F, 1] (``_augment_1``), [B, R, C'+1].
    3. H = tanh(F_a W1), W1 = ``w_att_1`` [C'+1, C'] (HeNormal, the folded
       bias row is random as in the reference).
    4. e = [H, 1] W2, W2 = ``w_att_2`` [C'+1, M], transposed to [B, M, R].
    5. alpha = softmax of e over regions.
    6. z_m = sum_r alpha_{m,r} F_a[r], [B, M, C'+1].
    7. theta_c = [W v_hat_c ; 0] with W = ``W`` [C', d_w] (HeNormal) and
       v_hat_c = v_c / ||v_c||_2, [C, C'+1] (``_predict_frac``, ``_augment_0``).
    8. s_{m,c} = z_m . theta_c, [B, M, C] (``att_logits``).
    9. s_c = max_m s_{m,c}, [B, C] (``logits``).
    g. g_c = (mean_r F_a[r]) . theta_c, [B, C] (``logits_global``).

    The trailing 0 of theta_c cancels the constant channel of z_m and of
    mean_r F_a, so the implementation computes steps 6-9 and g on F directly
    (``alpha @ F`` and ``mean_r F`` against W v_hat); the values are identical.
    Steps 3-4 are computed as ``F W1[:C'] + W1[C']`` and
    ``H W2[:C'] + W2[C']``, which equal the augmented products exactly in
    exact arithmetic (one variable each, same shapes as the reference).

    The seen word vectors are L2-normalised once and stored as the
    non-trainable weight ``seen_embeddings`` [C, d_w] (the reference's
    ``trainable_vecs=False`` constant), so a ``.keras`` file restores them.
    Passing ``label_embeddings`` to :meth:`call` replaces them for that call,
    which gives the zero-shot scores (unseen vectors) and the generalized
    zero-shot scores (``concat([unseen, seen])``, unseen first, docs/metrics.md
    §5) from the same W.

    Args:
        label_embeddings: float array-like [C, d_w] or None. Raw (unnormalised)
            word vectors of the seen labels. May be None when ``num_labels``
            and ``embedding_dim`` are given (the weight is then filled by
            loading a checkpoint / ``.keras`` file, e.g. in ``from_config``).
        num_labels: int or None. C, the number of seen labels. Inferred from
            ``label_embeddings`` when None.
        embedding_dim: int or None. d_w, the word-vector dimension. Inferred
            from ``label_embeddings`` when None.
        num_heads: int. M, the number of shared attention heads (``T``;
            default 10).
        conv_channels: int or None. C', the output channels of the 2x2 conv;
            None means D (the input feature dimension, 512 in the reference).
        grid_size: (int, int) or None. (h, w) of the backbone grid with
            R = h * w, regions in row-major order r = w_count * h + w. None
            means sqrt(R) x sqrt(R).
        **kwargs: passed to ``keras.Model`` (e.g. ``name``).

    Attributes:
        seen_embeddings: non-trainable float32 variable [C, d_w], the
            L2-normalised seen word vectors.
        conv, bn: the conv and BatchNormalization layers of step 1.
        w_att_1, w_att_2, W: the weights of steps 3, 4 and 7 (created by
            ``build``).

    Call args:
        features: float32 tensor [B, R, D], backbone feature map (e.g. VGG19
            conv5_4 after ReLU, [B, 196, 512]).
        training: bool. BatchNormalization uses batch statistics (and updates
            its moving statistics) when True.
        label_embeddings: optional float32 tensor [C'', d_w] of raw word
            vectors (normalised inside) replacing the seen vectors for this
            call; all outputs then have C'' label columns.

    Precision: the model and its conv/BN follow the Keras dtype policy
    (``dtype=`` or ``keras.mixed_precision.set_global_policy``). Under
    ``mixed_bfloat16`` / ``mixed_float16`` the weights stay float32 and the
    matrix products run in the 16-bit type, while BatchNormalization's
    statistics, the softmax over regions and every output are float32 (so the
    losses and metrics are computed in float32). Under ``float32`` the casts
    are no-ops and the numbers are unchanged.

    Returns (from ``call``): dict of float32 tensors
        ``"logits"`` [B, C] = max over heads of ``head_logits`` (unbounded);
        ``"head_logits"`` [B, M, C] = s_{m,c};
        ``"attention_logits"`` [B, M, R] = e, the pre-softmax attention;
        ``"attention"`` [B, M, R] = alpha, each row in [0, 1] summing to 1;
        ``"global_logits"`` [B, C] = g_c.

    Raises:
        ValueError: if neither ``label_embeddings`` nor both ``num_labels`` and
            ``embedding_dim`` are given, if they disagree, if
            ``label_embeddings`` is not 2-D, if ``num_heads`` < 1, if R is not
            a perfect square and ``grid_size`` is None, or if
            ``grid_size[0] * grid_size[1] != R``.

    Example:
        >>> model = LESA(np.random.randn(925, 300), num_heads=10)
        >>> out = model(np.zeros((2, 196, 512), "float32"))
        >>> out["logits"].shape
        TensorShape([2, 925])
    """

    def __init__(self, label_embeddings=None, num_labels=None,
                 embedding_dim=None, num_heads=10, conv_channels=None,
                 grid_size=None, **kwargs):
        super().__init__(**kwargs)
        if label_embeddings is not None:
            label_embeddings = np.asarray(label_embeddings, dtype=np.float32)
            if label_embeddings.ndim != 2:
                raise ValueError(
                    "LESA: label_embeddings must be 2-D [num_labels, "
                    f"embedding_dim], got shape {label_embeddings.shape}")
            c, d_w = label_embeddings.shape
            if num_labels is not None and int(num_labels) != c:
                raise ValueError(f"LESA: num_labels={num_labels} but "
                                 f"label_embeddings has {c} rows")
            if embedding_dim is not None and int(embedding_dim) != d_w:
                raise ValueError(f"LESA: embedding_dim={embedding_dim} but "
                                 f"label_embeddings has {d_w} columns")
            num_labels, embedding_dim = c, d_w
        elif num_labels is None or embedding_dim is None:
            raise ValueError("LESA: give label_embeddings, or both num_labels "
                             "and embedding_dim")
        if int(num_heads) < 1:
            raise ValueError(f"LESA: num_heads must be >= 1, got {num_heads}")
        if grid_size is not None:
            grid_size = tuple(int(g) for g in grid_size)
            if len(grid_size) != 2:
                raise ValueError(f"LESA: grid_size must be (h, w), got "
                                 f"{grid_size}")

        # === Config (public attributes named as the arguments) ===
        # ``label_embeddings`` keeps the raw constructor argument (or None);
        # the normalised vectors the model uses are ``seen_embeddings``.
        self.label_embeddings = label_embeddings
        self.num_labels = int(num_labels)
        self.embedding_dim = int(embedding_dim)
        self.num_heads = int(num_heads)
        self.conv_channels = (None if conv_channels is None
                              else int(conv_channels))
        self.grid_size = grid_size

        # === Seen word vectors: constant, restored by save/load ===
        init = ("zeros" if label_embeddings is None else
                keras.initializers.Constant(
                    _l2_normalize_np(label_embeddings)))
        self.seen_embeddings = self.add_weight(
            shape=(self.num_labels, self.embedding_dim), initializer=init,
            trainable=False, name="seen_embeddings")

        # === Layers (step 1); weights created in build() ===
        self.conv = None
        # The sublayers follow the model's dtype policy (``dtype=`` argument or
        # the global Keras policy): a mixed policy computes the conv in
        # bfloat16/float16 while Keras' BatchNormalization keeps its moments
        # and moving statistics in float32.
        self.bn = keras.layers.BatchNormalization(
            synchronized=True, momentum=0.99, epsilon=1e-3, name="conv_bn",
            dtype=self.dtype_policy)
        self._grid = None

    def build(self, input_shape):
        """Creates the weights for features of shape [B, R, D]."""
        if len(input_shape) != 3:
            raise ValueError(f"LESA expects features [B, R, D], got shape "
                             f"{input_shape}")
        regions, dim = int(input_shape[1]), int(input_shape[2])
        if self.grid_size is None:
            side = math.isqrt(regions)
            if side * side != regions:
                raise ValueError(
                    f"LESA: R={regions} regions is not a perfect square; "
                    "pass grid_size=(h, w)")
            self._grid = (side, side)
        else:
            if self.grid_size[0] * self.grid_size[1] != regions:
                raise ValueError(f"LESA: grid_size={self.grid_size} does not "
                                 f"match R={regions}")
            self._grid = tuple(self.grid_size)
        channels = dim if self.conv_channels is None else self.conv_channels
        self._channels = channels

        self.conv = keras.layers.Conv2D(
            channels, (2, 2), padding="same", use_bias=False,
            kernel_initializer="glorot_uniform", name="conv",
            dtype=self.dtype_policy)
        self.conv.build((None, self._grid[0], self._grid[1], dim))
        self.bn.build((None, self._grid[0], self._grid[1], channels))
        he = keras.initializers.HeNormal
        self.w_att_1 = self.add_weight(
            shape=(channels + 1, channels), initializer=he(), name="w_att_1")
        self.w_att_2 = self.add_weight(
            shape=(channels + 1, self.num_heads), initializer=he(),
            name="w_att_2")
        self.W = self.add_weight(
            shape=(channels, self.embedding_dim), initializer=he(), name="W")
        self.built = True

    def classifiers(self, label_embeddings=None):
        """Returns theta = [W v_hat ; 0], the augmented class weights.

        Args:
            label_embeddings: optional float32 tensor [C'', d_w] of raw word
                vectors; None uses ``seen_embeddings``.

        Returns:
            float32 tensor [C'' or C, C'+1] whose last column is exactly 0
            (reference ``_predict_frac`` + ``_augment_0``).
        """
        theta = self._projected(label_embeddings)
        return ops.concatenate(
            [theta, ops.zeros_like(theta[:, :1])], axis=-1)

    def _projected(self, label_embeddings):
        """W v_hat for each label, [C, C'] (theta without the trailing 0)."""
        if label_embeddings is None:
            vecs = ops.convert_to_tensor(self.seen_embeddings)
        else:
            vecs = _l2_normalize(
                ops.cast(ops.convert_to_tensor(label_embeddings), "float32"))
        # Mixed precision: the product runs in the compute dtype (a no-op
        # cast in float32).
        return ops.matmul(ops.cast(vecs, self.compute_dtype),
                          ops.cast(ops.transpose(self.W), self.compute_dtype))

    def conv_features(self, features, training=False):
        """Step 1: conv + BN + ReLU, [B, R, D] -> [B, R, C'] (compute dtype).

        Inference under a mixed policy folds the BatchNormalization into the
        conv (kernel scaled by gamma / sqrt(var + eps) per output channel,
        bias beta - mean * that scale, computed in float32 and cast once), so
        the 16-bit conv output is not cast to float32 and back for the BN.
        In float32, and in training, the conv and the BN layer run as they
        are (the float32 numbers are unchanged).
        """
        h, w = self._grid
        x = ops.reshape(features, (-1, h, w, ops.shape(features)[-1]))
        if not training and self.compute_dtype != "float32":
            x = self._fused_conv_bn(x)
        elif self.compute_dtype != "float32":
            x = self._conv_as_matmul(x, ops.convert_to_tensor(self.conv.kernel.value))
            x = self.bn(x, training=training)
        else:
            x = self.conv(x)
            x = self.bn(x, training=training)
        x = ops.relu(x)
        return ops.reshape(x, (-1, h * w, self._channels))

    def _fused_conv_bn(self, x):
        """conv then BN in inference mode as one conv with a bias (mixed precision only)."""
        bn = self.bn

        def f32(variable):   # the kernel reads as the compute dtype inside call()
            return ops.cast(ops.convert_to_tensor(variable.value), "float32")

        scale = ops.rsqrt(f32(bn.moving_variance) + bn.epsilon) * f32(bn.gamma)
        bias = f32(bn.beta) - f32(bn.moving_mean) * scale
        kernel = f32(self.conv.kernel) * scale
        dtype = self.compute_dtype
        # Forward only: here oneDNN's 16-bit conv beats the matmul form (batch 256).
        y = ops.conv(ops.cast(x, dtype), ops.cast(kernel, dtype), strides=1, padding="same")
        return y + ops.cast(bias, dtype)

    def _conv_as_matmul(self, x, kernel):
        """The 2x2 SAME conv as one matrix product (mixed precision only).

        SAME padding of a 2x2 kernel pads one row and one column after the
        grid, so output (i, j) = sum_{a, b in {0, 1}} x[i + a, j + b] K[a, b]:
        the four shifted grids are concatenated on channels [B, h, w, 4 D]
        (order (a, b) = (0, 0), (0, 1), (1, 0), (1, 1), as the kernel's
        row-major (a, b, D) reshape) and multiplied by K as [4 D, C']. Used in
        training: on this CPU oneDNN's 16-bit matmul forward + kernel gradient
        is faster than its 16-bit conv's (inference keeps the conv, faster
        there); float32 keeps the Conv2D layer.
        """
        dtype = self.compute_dtype
        x = ops.cast(x, dtype)
        kh, kw, d, c = kernel.shape
        if (kh, kw) != (2, 2):
            return ops.conv(x, ops.cast(kernel, dtype), strides=1, padding="same")
        h, w = self._grid
        xp = ops.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        cols = ops.concatenate([xp[:, :h, :w], xp[:, :h, 1:w + 1],
                                xp[:, 1:h + 1, :w], xp[:, 1:h + 1, 1:w + 1]], axis=-1)
        y = ops.matmul(ops.reshape(cols, (-1, 4 * d)),
                       ops.reshape(ops.cast(kernel, dtype), (4 * d, c)))
        return ops.reshape(y, (-1, h, w, c))

    def call(self, features, training=False, label_embeddings=None):
        c = self._channels
        f = self.conv_features(features, training=training)   # [B, R, C']
        # Step 3: tanh([F, 1] W1) with the folded bias row W1[C'].
        hidden = ops.tanh(ops.matmul(f, self.w_att_1[:c]) + self.w_att_1[c])
        # Step 4: e = [H, 1] W2, [B, R, M] -> [B, M, R].
        e = ops.matmul(hidden, self.w_att_2[:c]) + self.w_att_2[c]
        # The softmax over regions is taken in float32 under a mixed policy.
        e = ops.cast(ops.transpose(e, (0, 2, 1)), "float32")
        alpha = ops.softmax(e, axis=-1)                        # [B, M, R]
        # Steps 6-8: z_m = sum_r alpha F_a; its constant channel (= 1) meets
        # the trailing 0 of theta and drops out.
        z = ops.matmul(ops.cast(alpha, f.dtype), f)            # [B, M, C']
        theta = self._projected(label_embeddings)              # [C, C']
        head_logits = ops.einsum("bmk,ck->bmc", z, theta)      # [B, M, C]
        logits = ops.max(head_logits, axis=1)                  # [B, C]
        f_global = ops.mean(f, axis=1)                         # [B, C']
        global_logits = ops.matmul(f_global, ops.transpose(theta))
        # Outputs are float32 whatever the policy, so that losses and metrics
        # are computed in float32 (casts are no-ops in float32).
        return {
            "logits": ops.cast(logits, "float32"),
            "head_logits": ops.cast(head_logits, "float32"),
            "attention_logits": e,
            "attention": alpha,
            "global_logits": ops.cast(global_logits, "float32"),
        }

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_labels": self.num_labels,
            "embedding_dim": self.embedding_dim,
            "num_heads": self.num_heads,
            "conv_channels": self.conv_channels,
            "grid_size": (None if self.grid_size is None
                          else list(self.grid_size)),
        })
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("label_embeddings", None)
        return cls(**config)
