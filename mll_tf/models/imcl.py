"""IMCL: interactive multi-label CNN learning with partial labels.

Port of hbdat/cvpr20_IMCL (Huynh & Elhamifar, CVPR 2020): the model of
docs/imcl.md §1 (linear classifier Theta on [f, 1], optional linear feature
map Theta_1, asymmetric sigmoid, label clamping, learnable label-dependency
matrix G restricted to the graph's non-zero pattern) and the alternating
training step of docs/imcl.md §4 (OMP sparse coding without gradient, then one gradient
step on ``L_log + lambda_c L_colab + lambda_f L_feat`` with separate
optimisers for Theta, G and the backbone).

Reference files: ``colaborative_loss.py`` (``asym_sigmoid``, the OMP and the
residuals), ``D_utility.py`` (``preprocessing_graph``),
``OpenImages_experiments/interactive_learning_OpenImages.py`` (fixed-feature
model, G variables, lambda calibration, optimisers, G clipping) and
``OpenImages_experiments/e2e_interactive_learning_OpenImages.py`` (backbone).

Label conventions. Public inputs use the mll_tf convention (``1`` present,
``0`` absent, ``-1`` unknown). IMCL's formulas use y = +1 / -1 / 0
(docs/labels_and_data.md §1); the conversion happens at the boundary:
:class:`IMCLDictionary` converts the dictionary labels once with
:func:`mll_tf.labels.to_pm1`, and the batch labels are converted in-graph by
:func:`labels_to_pm1` (the same rule ``where(y < 0, 0, 2y - 1)``, tested to
agree). :func:`clamp_labels` takes +1/-1/0 targets, as in the reference.

The model and losses use ``keras.ops``; the training-step builders use
``tf`` (tf.function, GradientTape, tf.Variable), like the other training code.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from mll_tf import labels as mll_labels
from mll_tf.graphs.label_graph import identity_graph, preprocess_graph

#: Upper clip of the clamped targets (reference ``upper_bound``).
TARGET_UPPER_BOUND = 10.0
#: Clip of the asymmetric sigmoid's argument (reference).
ASYM_SIGMOID_CLIP = 80.0


def asym_sigmoid(x, c):
    """Asymmetric sigmoid sigma_c with range (-1/c, 1) (docs/imcl.md §1).

    ``y = clip(x + 0.5 ln(1/c), -80, 80)``,
    ``sigma_c(x) = (e^y - (1/c) e^-y) / (e^y + e^-y)``
    (reference ``colaborative_loss.asym_sigmoid``). Equivalently
    ``sigma_c(x) = (e^{2x} - 1) / (e^{2x} + c)`` before the clip: c = 1 gives
    tanh; c = 2 (OpenImages, CUB) maps to (-0.5, 1) with sigma_c(0) = 0.

    Args:
        x: float tensor of any shape (logits).
        c: float > 0.

    Returns:
        float32 tensor of the same shape, values in [-1/c, 1] (the bounds
        are reached only through float rounding at the clip).
    """
    c = float(c)
    x = ops.cast(x, "float32")
    y = ops.clip(x + 0.5 * np.log(1.0 / c), -ASYM_SIGMOID_CLIP,
                 ASYM_SIGMOID_CLIP)
    ep, en = ops.exp(y), ops.exp(-y)
    return (ep - en / c) / (ep + en)


def clamp_labels(pred, y_pm1, c):
    """Keep observed labels, fill unknown ones with the prediction.

    ``(1 - |clip(y, -1, 1)|) * pred + clip(y, -1/c, 10)`` (docs/imcl.md §1;
    reference ``is_clamp_label``): an entry with y = +1 becomes 1, y = -1
    becomes -1/c and y = 0 (unknown) becomes ``pred``.

    Args:
        pred: float tensor [..., C], e.g. ``asym_sigmoid(logits, c)``.
        y_pm1: tensor broadcastable to ``pred`` in the IMCL coding +1 present,
            -1 absent, 0 unknown (use :func:`labels_to_pm1` on mll_tf labels).
        c: float > 0.

    Returns:
        float32 tensor shaped like ``pred``.
    """
    y = ops.cast(y_pm1, "float32")
    keep = 1.0 - ops.abs(ops.clip(y, -1.0, 1.0))
    return keep * ops.cast(pred, "float32") + ops.clip(
        y, -1.0 / float(c), TARGET_UPPER_BOUND)


def labels_to_pm1(labels):
    """In-graph mll_tf {1, 0, -1} -> IMCL {+1, -1, 0}, float32.

    The rule of :func:`mll_tf.labels.to_pm1` (``where(y < 0, 0, 2y - 1)``,
    docs/labels_and_data.md §1) for tensors; values are not validated here.
    """
    y = ops.cast(labels, "float32")
    return ops.where(y < 0, ops.zeros_like(y), 2.0 * y - 1.0)


#: :class:`LabelDependency` multiplies over its nnz entries (gather + segment sum) instead of
#: the dense [C, C] matrix when nnz * this < C^2 (a sparse graph) ...
SPARSE_PRODUCT_DENSITY = 8
#: ... and the [nnz, rows] intermediate has at most this many elements (the selected atoms of
#: a training step; a dictionary refresh over N rows keeps the dense matmul) ...
SPARSE_PRODUCT_MAX_ELEMENTS = 1 << 22
#: ... and there are at least this many labels (below, the dense [C, C] product is cheaper than
#: the gather and segment sum).
SPARSE_PRODUCT_MIN_LABELS = 512


@keras.saving.register_keras_serializable(package="mll_tf")
class UnitInterval(keras.constraints.Constraint):
    """Clips a weight to [0, 1] after each optimiser update.

    IMCL clips G to [0, 1] after every step on OpenImages (``is_nonzero_G``,
    ``op_G_nonnegative``; docs/imcl.md §1).
    """

    def __call__(self, w):
        return ops.clip(w, 0.0, 1.0)


@keras.saving.register_keras_serializable(package="mll_tf")
class LabelDependency(keras.layers.Layer):
    """Learnable label-dependency matrix G on a fixed sparsity pattern.

    ``G = scatter(indices, values, [C, C])``: only the non-zero entries of the
    preprocessed graph are variables (``values`` [nnz], trainable) at fixed
    positions (``indices`` [nnz, 2] int32, non-trainable), as the reference's
    ``G_var`` + ``tf.scatter_nd`` with ``is_optimize_all_G=True`` (the
    diagonal is learnable too). Every other entry of G is exactly 0 for ever;
    a learnable entry may reach 0 through clipping but keeps its slot.
    Calling the layer computes ``inputs @ G``.

    Why values + scatter (not a dense masked variable): the optimiser state
    and update touch only nnz entries, and the pattern is exact by
    construction. The product ``inputs @ G`` runs over the nnz entries
    (a gather and a segment sum, O(rows nnz)) when G is sparse
    (``nnz * SPARSE_PRODUCT_DENSITY < C^2``) and the rows are few (the
    selected atoms of a step); otherwise (a dictionary refresh over N rows,
    a dense graph, unknown shapes) G is rebuilt densely with one scatter and
    multiplied (O(rows C^2)). Both give the same products summed in a
    different order (float32 round-off).

    Args:
        graph: float array-like [C, C] or None. The raw graph (counts, 0/1,
            P(j|i), ...), preprocessed with
            :func:`mll_tf.graphs.label_graph.preprocess_graph` (diagonal 1,
            columns summing to 1) unless ``preprocess=False``. None: the
            identity when ``num_nonzero`` is None, otherwise zero placeholders
            of size ``num_nonzero`` to be filled from saved weights
            (``from_config``).
        num_labels: int or None, C (inferred from ``graph``).
        num_nonzero: int or None, nnz (inferred from ``graph``).
        preprocess: bool, apply ``preprocess_graph`` to ``graph``. Do not
            preprocess twice (the diagonal is reset to 1).
        clip: bool, attach :class:`UnitInterval` to ``values`` so each
            optimiser update is followed by clipping to [0, 1].
        **kwargs: passed to ``keras.layers.Layer``.

    Call args:
        inputs: float tensor [..., C].

    Returns:
        float32 tensor [..., C], ``inputs @ G``.

    Raises:
        ValueError: if ``graph`` is not square, disagrees with
            ``num_labels``, or neither is given.
    """

    def __init__(self, graph=None, num_labels=None, num_nonzero=None,
                 preprocess=True, clip=True, **kwargs):
        super().__init__(**kwargs)
        if graph is None and num_nonzero is None:
            if num_labels is None:
                raise ValueError("LabelDependency: give graph or num_labels")
            graph = identity_graph(num_labels)
        if graph is not None:
            graph = np.asarray(graph)
            if graph.ndim != 2 or graph.shape[0] != graph.shape[1]:
                raise ValueError(f"LabelDependency: graph must be [C, C], got "
                                 f"shape {graph.shape}")
            if num_labels is not None and int(num_labels) != graph.shape[0]:
                raise ValueError(f"LabelDependency: num_labels={num_labels} "
                                 f"but graph is {graph.shape[0]}x"
                                 f"{graph.shape[0]}")
            g = (preprocess_graph(graph) if preprocess
                 else np.asarray(graph, np.float32))
            rows, cols = np.nonzero(g)
            init_values = g[rows, cols].astype(np.float32)
            init_indices = np.stack([rows, cols], axis=1).astype(np.int32)
            num_labels, num_nonzero = g.shape[0], len(init_values)
        else:
            if num_labels is None:
                raise ValueError("LabelDependency: num_nonzero needs "
                                 "num_labels")
            init_values = init_indices = None
        self.num_labels = int(num_labels)
        self.num_nonzero = int(num_nonzero)
        self.preprocess = bool(preprocess)
        self.clip = bool(clip)
        self.values = self.add_weight(
            shape=(self.num_nonzero,), initializer="zeros",
            constraint=UnitInterval() if self.clip else None, name="values")
        self.indices = self.add_weight(
            shape=(self.num_nonzero, 2), initializer="zeros", dtype="int32",
            trainable=False, name="indices")
        if init_values is not None:
            self.values.assign(init_values)
            self.indices.assign(init_indices)
        self.built = True

    def dense(self):
        """The dense G, float32 [C, C]."""
        return ops.scatter(ops.convert_to_tensor(self.indices),
                           ops.convert_to_tensor(self.values),
                           (self.num_labels, self.num_labels))

    def clip_to_unit(self):
        """Clip the learnable entries to [0, 1] in place."""
        self.values.assign(ops.clip(self.values, 0.0, 1.0))

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        rows = 1
        for d in x.shape[:-1]:
            rows = None if d is None or rows is None else rows * int(d)
        if (rows is not None and self.num_labels >= SPARSE_PRODUCT_MIN_LABELS
                and self.num_nonzero * SPARSE_PRODUCT_DENSITY < self.num_labels ** 2
                and rows * self.num_nonzero <= SPARSE_PRODUCT_MAX_ELEMENTS):
            return self._sparse_product(x)
        return ops.matmul(x, self.dense())

    def _sparse_product(self, x):
        """``x @ G`` over the nnz entries only: O(rows nnz) instead of O(rows C^2).

        ``out[:, c] = sum over entries (r, c) of x[:, r] * G[r, c]``: a gather of
        the entries' source columns and a segment sum into their target columns
        (the same products as the dense matmul, summed in another order, so the
        result differs by float32 round-off). Differentiable in ``x`` and
        ``values``.
        """
        shape = tf.shape(x)
        xt = tf.transpose(tf.reshape(x, [-1, self.num_labels]))            # [C, R]
        idx = tf.convert_to_tensor(self.indices)
        terms = tf.gather(xt, idx[:, 0]) * tf.convert_to_tensor(self.values)[:, None]   # [nnz, R]
        out = tf.math.unsorted_segment_sum(terms, idx[:, 1], self.num_labels)           # [C, R]
        return tf.reshape(tf.transpose(out), shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"num_labels": self.num_labels,
                       "num_nonzero": self.num_nonzero,
                       "preprocess": self.preprocess, "clip": self.clip})
        return config


@keras.saving.register_keras_serializable(package="mll_tf")
class IMCLModel(keras.Model):
    """IMCL classifier with a learnable label-dependency matrix.

    Forward pass (docs/imcl.md §1):

    1. ``pool``: the optional ``backbone`` maps inputs to [B, h, w, D] (mean
       over h, w) or [B, D]; without a backbone the inputs are features
       [B, D] or regions [B, R, D] (mean over R).
    2. ``embed``: with ``feature_map=True`` the linear map
       ``Theta_1`` (``Dense(D)``, identity kernel, zero bias, i.e. the
       reference's [f, 1] Theta_1 with Theta_1 = eye(D+1, D)); else identity.
    3. logits ``s = [e, 1] Theta`` (``Dense(C)`` with bias = the folded row).
    4. ``predictions``: ``asym_sigmoid(s, c)``, clamped where labels are
       given; ``propagated``: ``asym_sigmoid(s, c) @ G`` then clamped (the
       dictionary side of the OMP and of L_colab, and the reference's
       ``validate_Prediction_G``).
    5. ``omp_features``: ``[e, 1]``, the feature vectors of the OMP and of
       L_feat (reference ``F_f = [F Theta_1, 1]``).

    Args:
        num_labels: int, C.
        graph: float array-like [C, C] or None, the raw label graph for
            :class:`LabelDependency` (None: identity, or placeholders when
            ``num_nonzero`` is given).
        num_nonzero: int or None, see :class:`LabelDependency`.
        c: float > 0, the asymmetric sigmoid's c (2: OpenImages/CUB, 1: COCO).
        feature_map: bool, add the linear map Theta_1 (fixed-feature variant).
        feature_dim: int or None, D, the pooled feature dimension. Needed only
            when it cannot be inferred (a backbone without
            ``compute_output_shape``).
        backbone: optional ``keras.Model`` mapping images to [B, h, w, D] or
            [B, D] (end-to-end variant).
        clip_graph: bool, clip G to [0, 1] after each update.
        preprocess_graph: bool, column-normalise ``graph`` (see
            :class:`LabelDependency`).
        **kwargs: passed to ``keras.Model``.

    Call args:
        inputs: float32 [B, D] / [B, R, D] features, or backbone inputs.
        training: bool, passed to the backbone.

    Returns (``call``):
        float32 logits [B, C] (unbounded).

    Raises:
        ValueError: for invalid ``num_labels``, ``c`` or inputs of rank < 2.

    Example:
        >>> model = IMCLModel(3, graph=np.ones((3, 3)), feature_map=True)
        >>> model(np.zeros((2, 5), "float32")).shape
        TensorShape([2, 3])
    """

    def __init__(self, num_labels, graph=None, num_nonzero=None, c=2.0,
                 feature_map=False, feature_dim=None, backbone=None,
                 clip_graph=True, preprocess_graph=True, **kwargs):
        super().__init__(**kwargs)
        if int(num_labels) < 1:
            raise ValueError(f"IMCLModel: num_labels must be >= 1, got "
                             f"{num_labels}")
        if not float(c) > 0:
            raise ValueError(f"IMCLModel: c must be > 0, got {c}")
        self.num_labels = int(num_labels)
        self.c = float(c)
        self.feature_map = bool(feature_map)
        self.feature_dim = None if feature_dim is None else int(feature_dim)
        self.backbone = backbone
        self.clip_graph = bool(clip_graph)
        self.preprocess_graph = bool(preprocess_graph)
        self.label_dependency = LabelDependency(
            graph, num_labels=self.num_labels, num_nonzero=num_nonzero,
            preprocess=self.preprocess_graph, clip=self.clip_graph,
            name="label_dependency")
        self.num_nonzero = self.label_dependency.num_nonzero
        self.classifier = keras.layers.Dense(self.num_labels, name="theta")
        self.theta_1 = None

    def _pooled_dim(self, input_shape):
        if self.feature_dim is not None:
            return self.feature_dim
        shape = input_shape
        if self.backbone is not None:
            try:
                shape = self.backbone.compute_output_shape(input_shape)
            except Exception as e:  # noqa: BLE001 - any failure: ask for D
                raise ValueError("IMCLModel: cannot infer the backbone's "
                                 "output dimension; pass feature_dim") from e
        if shape[-1] is None:
            raise ValueError("IMCLModel: the feature dimension is unknown; "
                             "pass feature_dim")
        return int(shape[-1])

    def build(self, input_shape):
        if len(input_shape) < 2:
            raise ValueError(f"IMCLModel expects inputs of rank >= 2, got "
                             f"shape {input_shape}")
        dim = self._pooled_dim(input_shape)
        self.feature_dim = dim
        if self.feature_map and self.theta_1 is None:
            self.theta_1 = keras.layers.Dense(
                dim, kernel_initializer="identity", bias_initializer="zeros",
                name="theta_1")
            self.theta_1.build((None, dim))
        self.classifier.build((None, dim))
        self.built = True

    # --- pieces of the forward pass -------------------------------------
    def pool(self, inputs, training=False):
        """Backbone (if any) and mean pooling: -> float32 [B, D]."""
        x = inputs
        if self.backbone is not None:
            x = self.backbone(x, training=training)
        x = ops.cast(x, "float32")
        rank = len(x.shape)
        if rank == 4:
            x = ops.mean(x, axis=(1, 2))
        elif rank == 3:
            x = ops.mean(x, axis=1)
        elif rank != 2:
            raise ValueError(f"IMCLModel: pooled features must have rank 2-4, "
                             f"got shape {x.shape}")
        return x

    def embed(self, pooled):
        """Theta_1 map (identity without ``feature_map``): [B, D] -> [B, D]."""
        return pooled if self.theta_1 is None else self.theta_1(pooled)

    def omp_features(self, embedded):
        """``[e, 1]``: [..., D] -> [..., D + 1] (reference ``padding_one``)."""
        return ops.concatenate(
            [embedded, ops.ones_like(embedded[..., :1])], axis=-1)

    def logits_from_pooled(self, pooled):
        """Logits [B, C] from pooled features [B, D]."""
        return self.classifier(self.embed(pooled))

    def call(self, inputs, training=False):
        return self.logits_from_pooled(self.pool(inputs, training=training))

    def predictions(self, logits, labels=None):
        """``asym_sigmoid(logits, c)``, clamped where ``labels`` are known.

        Args:
            logits: float [..., C].
            labels: optional tensor [..., C] in the mll_tf convention.

        Returns:
            float32 [..., C] in [-1/c, 1].
        """
        pred = asym_sigmoid(logits, self.c)
        if labels is None:
            return pred
        return clamp_labels(pred, labels_to_pm1(labels), self.c)

    def propagated(self, x, labels=None, from_logits=False, training=False,
                   labels_pm1=None):
        """``clamp(asym_sigmoid(s, c) @ G)``: predictions through G.

        Args:
            x: inputs of :meth:`call`, or logits [..., C] with
                ``from_logits=True``.
            labels: optional mll_tf labels [..., C]; observed entries are
                clamped to +1 / -1/c after the propagation (reference).
            from_logits: bool, ``x`` holds logits.
            training: bool, passed to the backbone.
            labels_pm1: optional labels already in +1/-1/0 (instead of
                ``labels``).

        Returns:
            float32 [..., C].
        """
        logits = x if from_logits else self(x, training=training)
        out = self.label_dependency(asym_sigmoid(logits, self.c))
        if labels is not None:
            labels_pm1 = labels_to_pm1(labels)
        if labels_pm1 is not None:
            out = clamp_labels(out, labels_pm1, self.c)
        return out

    def variable_groups(self):
        """Trainable variables by optimiser group.

        Returns:
            dict ``{"classifier": Theta (+ Theta_1), "graph": [G values],
            "backbone": backbone variables}`` (lists, possibly empty).
        """
        classifier = list(self.classifier.trainable_variables)
        if self.theta_1 is not None:
            classifier = list(self.theta_1.trainable_variables) + classifier
        backbone = ([] if self.backbone is None
                    else list(self.backbone.trainable_variables))
        return {"classifier": classifier,
                "graph": list(self.label_dependency.trainable_variables),
                "backbone": backbone}

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_labels": self.num_labels,
            "num_nonzero": self.num_nonzero,
            "c": self.c,
            "feature_map": self.feature_map,
            "feature_dim": self.feature_dim,
            "backbone": (None if self.backbone is None else
                         keras.saving.serialize_keras_object(self.backbone)),
            "clip_graph": self.clip_graph,
            "preprocess_graph": self.preprocess_graph,
        })
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("graph", None)
        if config.get("backbone") is not None:
            config["backbone"] = keras.saving.deserialize_keras_object(
                config["backbone"])
        return cls(**config)


class IMCLDictionary:
    """The OMP dictionary: pooled features and IMCL-coded labels as Variables.

    Holds ``features`` (float32 [N, D], what :meth:`IMCLModel.pool` returns:
    the fixed features, or the backbone features of the end-to-end variant)
    and ``labels_pm1`` (float32 [N, C] in +1/-1/0, converted once from mll_tf
    labels with :func:`mll_tf.labels.to_pm1`). Both are non-trainable
    ``tf.Variable``s so a training step traced once keeps working after
    :meth:`assign` / :meth:`refresh_features` (e.g. every 250 iterations in
    the reference's e2e OpenImages run).

    Args:
        features: float array-like [N, D] (or [N, R, D], mean-pooled here).
        labels: int array-like [N, C] in {1, 0, -1}.

    Raises:
        ValueError: on bad shapes or label values.
    """

    def __init__(self, features, labels):
        feats = self._pool(features)
        pm1 = self._labels(labels, feats.shape[0])
        self.features = tf.Variable(feats, trainable=False,
                                    name="dictionary_features")
        self.labels_pm1 = tf.Variable(pm1, trainable=False,
                                      name="dictionary_labels_pm1")

    @staticmethod
    def _pool(features):
        f = np.asarray(features, np.float32)
        if f.ndim == 3:
            f = f.mean(axis=1)
        if f.ndim != 2:
            raise ValueError(f"dictionary features must be [N, D] or "
                             f"[N, R, D], got shape {f.shape}")
        return f

    @staticmethod
    def _labels(labels, n):
        y = mll_labels.to_pm1(np.asarray(labels)).astype(np.float32)
        if y.ndim != 2 or y.shape[0] != n:
            raise ValueError(f"dictionary labels must be [N={n}, C], got "
                             f"shape {y.shape}")
        return y

    @property
    def num_entries(self):
        return int(self.features.shape[0])

    def assign(self, features=None, labels=None):
        """Replace features and/or labels (same shapes as before)."""
        if features is not None:
            self.features.assign(self._pool(features))
        if labels is not None:
            self.labels_pm1.assign(self._labels(labels, self.num_entries))

    def refresh_features(self, model, inputs, batch_size=32):
        """Recompute ``features`` as ``model.pool(inputs)`` (inference mode).

        Args:
            model: :class:`IMCLModel` (with its backbone, end-to-end variant).
            inputs: array-like [N, ...] of backbone inputs (images), in the
                dictionary's order.
            batch_size: int, images per forward pass.
        """
        out = []
        for start in range(0, self.num_entries, int(batch_size)):
            batch = inputs[start:start + int(batch_size)]
            out.append(np.asarray(model.pool(batch, training=False)))
        self.features.assign(np.concatenate(out).astype(np.float32))
