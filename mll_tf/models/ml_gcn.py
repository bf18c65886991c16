"""The modified ML-GCN head of Prokofiev & Sovrasov 2022: a label graph as channel attention.

ML-GCN (Chen et al., "Multi-Label Image Recognition with Graph Convolutional
Networks", CVPR 2019) generates the classifier from a GCN over label
embeddings. Prokofiev & Sovrasov 2022 ("Combining Metric Learning and
Attention Heads ...", Sec. 3.1; deep-object-reid ``multilabel`` branch,
``torchreid/models/gcn.py::Image_GCNN``) instead use the GCN output as a
**channel attention** on the backbone's feature map:

* ``A = gen_A(P, t=0.4, rho=0.25)``: the conditional-probability adjacency
  P(j|i) of the training labels binarised at t, re-weighted by
  ``rho / colsum`` and plus I (:func:`mll_tf.graphs.label_graph.gen_adj`);
* ``A_hat = D^-1/2 A^T D^-1/2`` with ``D = diag(rowsum A)``
  (:func:`mll_tf.graphs.label_graph.normalized_adjacency`), fixed;
* ``H1 = LeakyReLU_0.2(A_hat X W1)`` (E -> hidden, no bias),
  ``H2 = LeakyReLU_0.2(A_hat H1 W2)`` (hidden -> D, no bias), X the fixed
  label embeddings ``[C, E]`` (GloVe in the paper);
* ``w = sigmoid(max_c H2[c, :])`` ``[D]``; ``f = avgpool(w * F)`` for the
  feature map F (or the region features); ``y = classifier(f)`` with a
  linear layer or the cosine :class:`mll_tf.models.heads.CosineClassifier`
  (AAM).

The attention does not depend on the image: it is one learned re-weighting of
the D channels, shared by all images, that the label graph parameterises.
The original's "graph attention" layer type is never selected by its
released configs (plain GCN runs); only GCN layers are provided here.

Row order: the original loads its word embeddings and adjacency as two
``.npy`` files without names, and for COCO and NUS-WIDE their rows are in
different class orders. :func:`build_ml_gcn_head` takes both WITH their label
names and refuses a mismatch.
"""

import math
import os
from collections.abc import Mapping

import keras
import numpy as np
import tensorflow as tf

from mll_tf.graphs import label_graph
from mll_tf.models.heads import CosineClassifier, pool_features, region_tokens

LEAKY_SLOPE = 0.2


def gcn_adjacency(train_labels, t=0.4, rho=0.25):
    """The normalised propagation matrix ``A_hat`` ``[C, C]`` from training labels.

    ``normalized_adjacency(gen_adj(conditional_probability(cooccurrence_graph(y)), t, rho))``
    (deep-object-reid ``gen_A`` + ``Image_GCNN.gen_adj``; the adjacency
    files ``adj_matrix_*.npy`` hold the conditional probabilities).

    Args:
        train_labels: int ``[N, C]`` in {1, 0, -1} (only 1 counts as present).
        t: float in [0, 1], binarisation threshold (0.4).
        rho: float, neighbour re-weighting (0.25).

    Returns:
        float32 ``[C, C]`` in the column order of ``train_labels``.
    """
    p = label_graph.conditional_probability(label_graph.cooccurrence_graph(train_labels))
    return label_graph.normalized_adjacency(label_graph.gen_adj(p, t=t, rho=rho)).astype(np.float32)


@keras.saving.register_keras_serializable(package="mll_tf")
class MLGCNHead(keras.Model):
    """Label-graph channel attention, global average pooling, linear or cosine classifier.

    Args:
        label_embeddings: float ``[C, E]`` node features (label word vectors),
            row c = class c. Stored as a non-trainable weight (saved with the
            model); the original keeps them out of its optimiser.
        adjacency: float ``[C, C]`` the NORMALISED propagation matrix
            ``A_hat`` (:func:`gcn_adjacency`, or
            ``normalized_adjacency(gen_adj(P))``), same class order.
            Non-trainable weight.
        hidden_dim: int or None, the first GCN layer's width; None = the
            feature dimension D (the original's ``hidden_dim_scale=1``).
        cosine: bool. False: ``Dense(C)`` logits; True: cosines in [-1, 1]
            (:class:`~mll_tf.models.heads.CosineClassifier`) for the AAM loss.
        dropout: float in [0, 1), dropout on the pooled features before the
            classifier (training only; the original has none: 0).

    Call:
        features: float16/bfloat16/float32 ``[B, R, D]`` region features or
        ``[B, h, w, D]`` feature map; ``training`` switches dropout.

    Returns:
        float32 ``[B, C]`` logits, or cosines in [-1, 1] with ``cosine=True``.

    Raises:
        ValueError: shapes that do not agree, non-finite inputs, dropout
            outside [0, 1), a feature rank other than 3 or 4.

    Weights: ``gcn1`` ``[E, hidden]`` and ``gcn2`` ``[hidden, D]`` (uniform
    in +-1/sqrt(fan_out) as the original's ``GraphConvolution``), the
    classifier, and the non-trainable ``label_embeddings`` and ``adjacency``.
    :meth:`channel_attention` returns ``w`` ``[D]``.
    """

    def __init__(self, label_embeddings, adjacency, hidden_dim=None, cosine=False, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        emb = np.asarray(label_embeddings, np.float32)
        adj = np.asarray(adjacency, np.float32)
        if emb.ndim != 2 or emb.shape[0] < 1 or emb.shape[1] < 1:
            raise ValueError(f"label_embeddings must be [C, E] with C, E >= 1, got shape {emb.shape}")
        if adj.shape != (emb.shape[0], emb.shape[0]):
            raise ValueError(f"adjacency must be [C, C] = [{emb.shape[0]}, {emb.shape[0]}] "
                             f"to match label_embeddings, got shape {adj.shape}")
        for name, arr in (("label_embeddings", emb), ("adjacency", adj)):
            if not np.isfinite(arr).all():
                raise ValueError(f"{name} holds NaN or inf (row {int(np.argwhere(~np.isfinite(arr))[0, 0])})")
        if hidden_dim is not None and int(hidden_dim) < 1:
            raise ValueError(f"hidden_dim must be >= 1 or None, got {hidden_dim}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.num_classes, self.embedding_dim = emb.shape
        self.hidden_dim = None if hidden_dim is None else int(hidden_dim)
        self.cosine = bool(cosine)
        self.dropout_rate = float(dropout)
        self._init_embeddings = emb
        self._init_adjacency = adj
        self.drop = keras.layers.Dropout(self.dropout_rate)
        self.classifier = (CosineClassifier(self.num_classes, name="classifier") if self.cosine
                           else keras.layers.Dense(self.num_classes, name="classifier"))

    def build(self, input_shape):
        d = int(input_shape[-1])
        hidden = self.hidden_dim or d
        self.label_embeddings = self.add_weight(
            name="label_embeddings", shape=self._init_embeddings.shape, trainable=False,
            initializer=keras.initializers.Constant(self._init_embeddings))
        self.adjacency = self.add_weight(
            name="adjacency", shape=self._init_adjacency.shape, trainable=False,
            initializer=keras.initializers.Constant(self._init_adjacency))
        self.gcn1 = self.add_weight(name="gcn1", shape=(self.embedding_dim, hidden), trainable=True,
                                    initializer=keras.initializers.RandomUniform(-1 / math.sqrt(hidden),
                                                                                 1 / math.sqrt(hidden)))
        self.gcn2 = self.add_weight(name="gcn2", shape=(hidden, d), trainable=True,
                                    initializer=keras.initializers.RandomUniform(-1 / math.sqrt(d),
                                                                                 1 / math.sqrt(d)))
        self.classifier.build((None, d))

    def channel_attention(self):
        """``w = sigmoid(max_c H2)``: float32 ``[D]`` in (0, 1), the same for every image."""
        a = tf.cast(self.adjacency, tf.float32)
        h = tf.nn.leaky_relu(a @ (tf.cast(self.label_embeddings, tf.float32) @ tf.cast(self.gcn1, tf.float32)),
                             alpha=LEAKY_SLOPE)
        h = tf.nn.leaky_relu(a @ (h @ tf.cast(self.gcn2, tf.float32)), alpha=LEAKY_SLOPE)
        return tf.sigmoid(tf.reduce_max(h, axis=0))

    def call(self, features, training=False):
        x = region_tokens(features, tf.float32)
        pooled = pool_features(x * self.channel_attention(), tf.float32)
        pooled = self.drop(pooled, training=training)
        return tf.cast(self.classifier(pooled), tf.float32)

    def get_config(self):
        # The arrays travel as (non-trainable) weights, not in the config:
        # from_config rebuilds placeholders of the right shapes.
        return {**super().get_config(), "num_classes": int(self.num_classes),
                "embedding_dim": int(self.embedding_dim), "hidden_dim": self.hidden_dim,
                "cosine": self.cosine, "dropout": self.dropout_rate}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        c, e = int(config.pop("num_classes")), int(config.pop("embedding_dim"))
        return cls(np.zeros((c, e), np.float32), np.eye(c, dtype=np.float32), **config)


def _named_rows(value, what, square=False):
    """(names or None, float32 array) from a (names, array|path) pair, a mapping or an .npz/.npy path."""
    if isinstance(value, Mapping):
        names = [str(n) for n in value.keys()]
        return names, np.stack([np.asarray(value[n], np.float32) for n in value]) if names else None
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        if path.endswith(".npz"):
            graph, names, _ = label_graph.load_graph(path, return_meta=True)
            return names, np.asarray(graph, np.float32)
        raise ValueError(f"{what} {path!r}: a bare array file has no label names; pass (names, {path!r})")
    if isinstance(value, tuple) and len(value) == 2:
        names, arr = value
        if isinstance(arr, (str, os.PathLike)):
            if not os.path.isfile(arr):
                raise FileNotFoundError(f"{what} file {os.fspath(arr)!r} does not exist")
            arr = np.load(arr, allow_pickle=False)
        arr = np.asarray(arr, np.float32)
        names = [str(n) for n in names]
        if arr.ndim != 2 or arr.shape[0] != len(names) or (square and arr.shape[1] != arr.shape[0]):
            raise ValueError(f"{what}: {len(names)} names for an array of shape {arr.shape}")
        return names, arr
    raise TypeError(f"{what} must be a (names, array-or-.npy-path) pair, a name -> row mapping"
                    f"{' or a save_graph .npz path' if square else ''}; got {type(value).__name__}")


def _check_order(label_names, names, what, reorder):
    """Index array putting ``names`` rows in ``label_names`` order, or ValueError at the first mismatch."""
    if names == label_names:
        return None
    index = {n: i for i, n in enumerate(names)}
    missing = [n for n in label_names if n not in index]
    if missing:
        raise ValueError(f"{what} has no row for class {missing[0]!r} ({len(missing)} classes missing)")
    extra = [n for n in names if n not in set(label_names)]
    if extra:
        raise ValueError(f"{what} has a row for {extra[0]!r}, which is not a class of the model")
    if not reorder:
        first = next(i for i, (a, b) in enumerate(zip(label_names, names)) if a != b)
        raise ValueError(f"{what} rows are not in the class order: row {first} is {names[first]!r} but class "
                         f"{first} is {label_names[first]!r}; reorder it by name (reorder=True) or fix the file")
    return np.asarray([index[n] for n in label_names], np.int64)


def build_ml_gcn_head(label_names, embeddings, graph=None, train_labels=None, t=0.4, rho=0.25,
                      graph_is_normalized=False, hidden_dim=None, cosine=False, dropout=0.0,
                      reorder=False, allow_missing_embeddings=False, **kwargs):
    """An :class:`MLGCNHead` whose embedding and adjacency rows are checked to be in class order.

    Args:
        label_names: list of C unique str, the model's class order (the order
            of the label columns and of the outputs).
        embeddings: the label embeddings keyed by name: a ``(names, array)``
            pair (array float ``[C, E]`` or a path to a ``.npy``), or a
            mapping name -> ``[E]`` vector, looked up by name (e.g. from
            ``mll_tf.data.word_vectors.label_embeddings(label_names, wv)``:
            ``(label_names, emb)``).
        graph: the adjacency keyed by name: a ``(names, array)`` pair or a
            :func:`mll_tf.graphs.label_graph.save_graph` ``.npz`` path;
            the array is P(j|i) (``conditional_probability``), to which
            ``gen_adj(t, rho)`` and ``normalized_adjacency`` are applied, or
            with ``graph_is_normalized=True`` the final ``A_hat``. None: built
            from ``train_labels`` by :func:`gcn_adjacency`.
        train_labels: int ``[N, C]`` in {1, 0, -1}, columns in ``label_names``
            order (used only when ``graph`` is None).
        t, rho: ``gen_adj`` parameters (0.4, 0.25).
        graph_is_normalized: bool, see ``graph``.
        hidden_dim, cosine, dropout, **kwargs: passed to :class:`MLGCNHead`.
        reorder: bool. False (default): rows whose names are in another order
            than ``label_names`` raise. True: such rows are reordered by name.
        allow_missing_embeddings: bool. All-zero embedding rows (labels with
            no word vector) raise unless True; then the node gets only its
            neighbours' features.

    Returns:
        :class:`MLGCNHead` (unbuilt: its feature dimension comes from the
        first call).

    Raises:
        ValueError: duplicated ``label_names``; an embedding or graph row
            order that differs from ``label_names`` (naming the first
            mismatching row and class), a missing or extra class, zero
            embedding rows, or neither ``graph`` nor ``train_labels``.
        TypeError: an unsupported ``embeddings``/``graph`` value.
        FileNotFoundError: a missing file.
    """
    label_names = [str(n) for n in label_names]
    if len(set(label_names)) != len(label_names):
        dup = sorted({n for n in label_names if label_names.count(n) > 1})[:5]
        raise ValueError(f"label_names are not unique: {dup}")
    e_names, emb = _named_rows(embeddings, "label embeddings")
    # A mapping is looked up by name: its iteration order does not matter.
    order = _check_order(label_names, e_names, "label embeddings",
                         reorder or isinstance(embeddings, Mapping))
    if order is not None:
        emb = emb[order]
    zero = np.flatnonzero(~np.any(emb != 0, axis=1))
    if zero.size and not allow_missing_embeddings:
        raise ValueError(f"label embeddings: class {label_names[zero[0]]!r} (and {zero.size - 1} more) has an "
                         "all-zero row (no word vector); pass allow_missing_embeddings=True to keep it")
    if graph is None:
        if train_labels is None:
            raise ValueError("build_ml_gcn_head needs a graph or train_labels")
        y = np.asarray(train_labels)
        if y.ndim != 2 or y.shape[1] != len(label_names):
            raise ValueError(f"train_labels must be [N, {len(label_names)}], got shape {y.shape}")
        adj = gcn_adjacency(y, t=t, rho=rho)
    else:
        g_names, adj = _named_rows(graph, "label graph", square=True)
        order = _check_order(label_names, g_names, "label graph", reorder)
        if order is not None:
            adj = adj[np.ix_(order, order)]
        if not graph_is_normalized:
            adj = label_graph.normalized_adjacency(label_graph.gen_adj(adj, t=t, rho=rho)).astype(np.float32)
    return MLGCNHead(emb, adj, hidden_dim=hidden_dim, cosine=cosine, dropout=dropout, **kwargs)
