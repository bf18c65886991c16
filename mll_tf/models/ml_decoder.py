"""ML-Decoder head with group fully-connected pooling (and its cosine variant).

ML-Decoder (Ridnik et al., "ML-Decoder: Scalable and Versatile Classification
Head", WACV 2023, Sec. 3; Alibaba-MIIL/ML_Decoder
``src_files/ml_decoder/ml_decoder.py``) as used by Prokofiev & Sovrasov 2022
("Combining Metric Learning and Attention Heads ...", Sec. 3.2; deep-object-reid
``multilabel`` branch, ``torchreid/models/ml_decoder.py``). Forward pass, for
tokens ``X [B, R, D_in]`` (region features, or a feature map flattened row by
row), Q queries, embedding size E (768), G = ceil(C / Q) outputs per query:

1. token projection ``T = act(X W_p + b_p)``, ``[B, R, E]``; act = ReLU, or
   LeakyReLU(0.2) in the AAM (cosine) setting (deep-object-reid ``llrelu``);
2. frozen queries ``q [Q, E]`` (non-trainable, N(0, 1) as ``nn.Embedding``),
   tiled over the batch;
3. one decoder layer WITHOUT self-attention ("TransformerDecoderLayerOptimal"):

   ``t = LN1(q + dropout(q))``  (the original's query path, kept as is)
   ``t = LN2(t + dropout(MHA(t, T, T)))``  (8 heads, attention dropout)
   ``t = LN3(t + dropout(W2 dropout(relu(W1 t + b1)) + b2))``  (FFN 2048)

   LayerNorm epsilon 1e-5, dropout 0.1 everywhere (training only);
4. group fully-connected pooling with ``P [Q, E, G]`` and ``b [C]``:
   ``z[b, q, g] = <t[b, q], P[q, :, g]>``, flattened to ``[B, Q * G]`` (query
   major), the first C kept, plus b. Cosine variant (deep-object-reid
   ``GroupASL``): ``z[b, q, g] = <t[b,q] / ||t[b,q]||, P[q,:,g] / ||P[q,:,g]||>``
   (norms floored at 1e-12, NOT clipped), plus b.

Class c is thus scored by query ``c // G`` with its own weight column
``c % G``; the cost of step 4 is B * Q * E * G ~ B * E * C multiply-adds and
everything before it is independent of C once Q = 100 (C >= 100).
"""

import math

import keras
import tensorflow as tf

from mll_tf.models.heads import l2_normalize, region_tokens

#: The original's fixed sizes (Ridnik et al. Sec. 3; deep-object-reid ``MLDecoder``).
DEFAULT_QUERIES = 100
TOKEN_ACTIVATIONS = ("relu", "leaky_relu")
LEAKY_SLOPE = 0.2
LAYER_NORM_EPS = 1e-5


def default_num_queries(num_classes, num_queries=None):
    """Q = min(100, C) unless given; a given Q is capped at C (as the original)."""
    q = DEFAULT_QUERIES if num_queries is None else int(num_queries)
    return min(q, int(num_classes))


@keras.saving.register_keras_serializable(package="mll_tf")
class MLDecoderHead(keras.Model):
    """ML-Decoder head: queries cross-attend to region tokens, then group FC pooling.

    Args:
        num_classes: int C >= 1.
        num_queries: int Q >= 1 or None for min(100, C); capped at C.
        embed_dim: int E, token / query embedding size (768); divisible by
            ``num_heads``.
        num_heads: int, attention heads (8); key size E / num_heads.
        ffn_dim: int, hidden size of the feed-forward block (2048).
        dropout: float in [0, 1), every dropout of the decoder layer and the
            attention weights (0.1). Active only with ``training=True``.
        cosine: bool. False: group FC logits (for ASL/BCE). True: the AAM
            variant, cosines of normalised query outputs and normalised group
            weights plus the bias.
        token_activation: "relu", "leaky_relu" (slope 0.2) or None for
            "leaky_relu" if ``cosine`` else "relu" (deep-object-reid).

    Call:
        features: float16/bfloat16/float32 ``[B, R, D_in]`` region features
        (feature store) or ``[B, h, w, D_in]`` backbone feature map (R = h w).
        training: bool, dropout on/off.

    Returns:
        float32 ``[B, C]``. ``cosine=False``: logits. ``cosine=True``:
        ``cos_c + b_c`` where ``cos_c`` in [-1, 1] and the bias ``b`` starts at
        0 (the original's ``GroupASL`` + ``duplicate_pooling_bias``): this is
        what the AAM loss receives as its "cos theta", so it lies in
        [-1 + b_c, 1 + b_c], and scores are ``sigmoid(s * (cos_c + b_c))``.

    Raises:
        ValueError: bad sizes, dropout outside [0, 1), an unknown
            activation, ``embed_dim`` not divisible by ``num_heads``, or a
            feature rank other than 3 or 4.

    Weights: ``queries`` [Q, E] (non-trainable), ``group_kernel`` [Q, E, G]
    (normal, std sqrt(2 / (G (E + Q))) like torch's xavier_normal_ on that
    tensor), ``group_bias`` [C] (zeros), and the Keras sub-layers
    ``token_proj``, ``attention`` (keras MultiHeadAttention), ``ffn1``,
    ``ffn2``, ``norm1..3``.
    """

    def __init__(self, num_classes, num_queries=None, embed_dim=768, num_heads=8, ffn_dim=2048,
                 dropout=0.1, cosine=False, token_activation=None, **kwargs):
        super().__init__(**kwargs)
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if num_queries is not None and int(num_queries) < 1:
            raise ValueError(f"num_queries must be >= 1 or None, got {num_queries}")
        for name, value in (("embed_dim", embed_dim), ("num_heads", num_heads), ("ffn_dim", ffn_dim)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if int(embed_dim) % int(num_heads):
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if token_activation is None:
            token_activation = "leaky_relu" if cosine else "relu"
        if token_activation not in TOKEN_ACTIVATIONS:
            raise ValueError(f"token_activation must be one of {TOKEN_ACTIVATIONS}, got {token_activation!r}")
        self.num_classes = int(num_classes)
        self.num_queries = default_num_queries(self.num_classes, num_queries)
        self.group_size = math.ceil(self.num_classes / self.num_queries)
        self.embed_dim = int(embed_dim)
        self.num_heads = int(num_heads)
        self.ffn_dim = int(ffn_dim)
        self.dropout_rate = float(dropout)
        self.cosine = bool(cosine)
        self.token_activation = token_activation

        e = self.embed_dim
        self.token_proj = keras.layers.Dense(e, name="token_proj")
        self.attention = keras.layers.MultiHeadAttention(
            num_heads=self.num_heads, key_dim=e // self.num_heads, dropout=self.dropout_rate, name="attention")
        self.ffn1 = keras.layers.Dense(self.ffn_dim, activation="relu", name="ffn1")
        self.ffn2 = keras.layers.Dense(e, name="ffn2")
        self.norm1 = keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPS, name="norm1")
        self.norm2 = keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPS, name="norm2")
        self.norm3 = keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPS, name="norm3")
        self.drop_query = keras.layers.Dropout(self.dropout_rate)
        self.drop_attn = keras.layers.Dropout(self.dropout_rate)
        self.drop_ffn_hidden = keras.layers.Dropout(self.dropout_rate)
        self.drop_ffn = keras.layers.Dropout(self.dropout_rate)

    def build(self, input_shape):
        d_in = int(input_shape[-1])
        e, q, g = self.embed_dim, self.num_queries, self.group_size
        self.token_proj.build((None, None, d_in))
        self.attention.build((None, q, e), (None, None, e))
        self.ffn1.build((None, q, e))
        self.ffn2.build((None, q, self.ffn_dim))
        for norm in (self.norm1, self.norm2, self.norm3):
            norm.build((None, q, e))
        self.queries = self.add_weight(name="queries", shape=(q, e), trainable=False,
                                       initializer=keras.initializers.RandomNormal(stddev=1.0))
        self.group_kernel = self.add_weight(
            name="group_kernel", shape=(q, e, g), trainable=True,
            initializer=keras.initializers.RandomNormal(stddev=math.sqrt(2.0 / (g * (e + q)))))
        self.group_bias = self.add_weight(name="group_bias", shape=(self.num_classes,), trainable=True,
                                          initializer="zeros")

    def decode(self, features, training=False):
        """Steps 1-3: the query outputs ``[B, Q, E]`` (compute dtype) for ``features``."""
        tokens = self.token_proj(region_tokens(features, self.compute_dtype))
        if self.token_activation == "relu":
            tokens = tf.nn.relu(tokens)
        else:
            tokens = tf.nn.leaky_relu(tokens, alpha=LEAKY_SLOPE)
        batch = tf.shape(tokens)[0]
        q = tf.cast(self.queries, tokens.dtype)
        t = tf.tile(q[None], [batch, 1, 1])
        t = self.norm1(t + self.drop_query(t, training=training))
        attn = self.attention(t, tokens, tokens, training=training)
        t = self.norm2(t + self.drop_attn(attn, training=training))
        ff = self.ffn2(self.drop_ffn_hidden(self.ffn1(t), training=training))
        return self.norm3(t + self.drop_ffn(ff, training=training))

    def group_pool(self, decoded):
        """Step 4: ``[B, Q, E]`` query outputs -> float32 ``[B, C]`` (see the class doc)."""
        h = tf.cast(decoded, tf.float32)
        w = tf.cast(self.group_kernel, tf.float32)
        if self.cosine:
            h = l2_normalize(h, axis=-1)
            w = l2_normalize(w, axis=1)
        z = tf.einsum("bqe,qeg->bqg", h, w)
        z = tf.reshape(z, [-1, self.num_queries * self.group_size])[:, :self.num_classes]
        return z + tf.cast(self.group_bias, tf.float32)

    def call(self, features, training=False):
        return self.group_pool(self.decode(features, training=training))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "num_queries": self.num_queries,
                "embed_dim": self.embed_dim, "num_heads": self.num_heads, "ffn_dim": self.ffn_dim,
                "dropout": self.dropout_rate, "cosine": self.cosine,
                "token_activation": self.token_activation}
