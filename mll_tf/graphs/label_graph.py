"""Label graphs: co-occurrence, word-vector kNN, identity; IMCL / ML-GCN prep.

Builders (NumPy, float64 unless stated):

* :func:`cooccurrence_graph` counts M_ij = #images where labels i and j are
  both present (diagonal = count_i);
* :func:`conditional_probability` turns M into ML-GCN's adjacency
  P(j|i) = M_ij / count_i with a zero diagonal (as deep-object-reid's
  ``gan_tools/adj_matrieses/adj_matrix_*.npy``);
* :func:`word_vector_knn_graph` links each label to its k nearest labels by
  word-vector cosine (in the spirit of IMCL's COCO graph
  ``graph_label_wiki_MSCOCO_k_5``, which used k = 5 Wikipedia relations);
* :func:`identity_graph` (IMCL on CUB).

Preparation for the heads:

* :func:`preprocess_graph`: IMCL's ``D_utility.preprocessing_graph``
  (diagonal 1, then every column divided by its sum; docs/imcl.md §1);
* :func:`gen_adj`: DOR-ML / ML-GCN ``gen_A`` (binarise at t, reweight by
  rho / column sum, add I; deep-object-reid ``torchreid/models/gcn.py``);
* :func:`normalized_adjacency`: ML-GCN's ``gen_adj`` normalisation.

Graphs are stored as ``.npz`` with their label names (:func:`save_graph`) and
loaded by name (:func:`load_graph`), never by row position (deep-object-reid's
committed COCO and NUS-WIDE word embeddings are in another row order than its
adjacency matrices).
"""

import json
import os

import numpy as np

from mll_tf import labels as mll_labels

#: ``.npz`` keys written by :func:`save_graph`.
GRAPH_KEY = "graph"
NAMES_KEY = "label_names"
META_KEY = "meta"


def _square(graph, name="graph"):
    g = np.asarray(graph)
    if g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"{name} must be a square [C, C] matrix, got shape "
                         f"{g.shape}")
    if g.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {g.dtype}")
    return g


def cooccurrence_graph(labels):
    """Label co-occurrence counts.

    Args:
        labels: int array [N, C] in the mll_tf convention (1 present,
            0 absent, -1 unknown). Only 1 counts as present; unknown labels
            count as not present.

    Returns:
        float64 [C, C] symmetric M with M_ij = #images with labels i and j
        both present and M_ii = count_i = #images with label i present.

    Raises:
        ValueError: if ``labels`` is not 2-D or holds values outside
            {1, 0, -1}.
    """
    y = mll_labels.validate(labels, "labels")
    if y.ndim != 2:
        raise ValueError(f"labels must be [N, C], got shape {y.shape}")
    present = (y == 1).astype(np.float64)
    return present.T @ present


def conditional_probability(cooccurrence, counts=None):
    """ML-GCN adjacency P(j|i) = M_ij / count_i with a zero diagonal.

    Args:
        cooccurrence: float [C, C] counts M (:func:`cooccurrence_graph`).
        counts: optional float [C], count_i; defaults to ``diag(M)``. (The
            DOR-ML matrices count per-object duplicate labels; pass those
            counts to reproduce them.)

    Returns:
        float64 [C, C], row i = P(. | i) in [0, 1]; a label that never occurs
        (count_i = 0) has an all-zero row.

    Raises:
        ValueError: if M is not square or ``counts`` has the wrong length.
    """
    m = _square(cooccurrence, "cooccurrence").astype(np.float64)
    c = np.diag(m).copy() if counts is None else np.asarray(counts, np.float64)
    if c.shape != (m.shape[0],):
        raise ValueError(f"counts must have shape ({m.shape[0]},), got "
                         f"{c.shape}")
    safe = np.where(c > 0, c, 1.0)
    p = np.where(c[:, None] > 0, m / safe[:, None], 0.0)
    np.fill_diagonal(p, 0.0)
    return p


def word_vector_knn_graph(vectors, k, allow_zero=False):
    """Directed k-nearest-neighbour graph of labels by word-vector cosine.

    ``A[i, j] = 1`` if j is one of the k labels most cosine-similar to i
    (j != i); ties go to the smaller index. The graph is not symmetrised
    (``A`` or ``A.T`` or ``max(A, A.T)`` are all reasonable; IMCL's
    preprocessing normalises columns, i.e. the in-edges of each label).

    Args:
        vectors: float [C, d] raw word vectors (not necessarily normalised).
        k: int in [1, C - 1] (fewer when zero rows are allowed: each row gets
            min(k, #other non-zero rows) neighbours).
        allow_zero: bool. Zero rows (labels without a vector, see
            :func:`mll_tf.data.word_vectors.label_embeddings`) raise unless
            True; then they get no edges and are nobody's neighbour.

    Returns:
        float32 [C, C] with values in {0, 1} and a zero diagonal.

    Raises:
        ValueError: if ``vectors`` is not 2-D, k is out of range, or (without
            ``allow_zero``) a row is zero (the message lists the rows).
    """
    v = np.asarray(vectors, np.float64)
    if v.ndim != 2:
        raise ValueError(f"vectors must be [C, d], got shape {v.shape}")
    c = v.shape[0]
    k = int(k)
    if not 1 <= k <= c - 1:
        raise ValueError(f"k must be in [1, C - 1] = [1, {c - 1}], got {k}")
    norms = np.linalg.norm(v, axis=1)
    zero = norms == 0
    if zero.any() and not allow_zero:
        raise ValueError(f"word_vector_knn_graph: rows {np.flatnonzero(zero)[:10].tolist()} "
                         f"are zero vectors (labels without a word vector); "
                         f"pass allow_zero=True to leave them unconnected")
    unit = v / np.where(zero, 1.0, norms)[:, None]
    sim = unit @ unit.T
    sim[:, zero] = -np.inf
    np.fill_diagonal(sim, -np.inf)
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    graph = np.zeros((c, c), np.float32)
    rows = np.repeat(np.arange(c), k)
    cols = order.reshape(-1)
    keep = np.isfinite(sim[rows, cols]) & ~zero[rows]
    graph[rows[keep], cols[keep]] = 1.0
    return graph


def identity_graph(num_labels):
    """float32 [C, C] identity (IMCL's CUB graph, docs/imcl.md §1)."""
    num_labels = int(num_labels)
    if num_labels < 1:
        raise ValueError(f"num_labels must be >= 1, got {num_labels}")
    return np.eye(num_labels, dtype=np.float32)


def preprocess_graph(graph):
    """IMCL's ``preprocessing_graph``: diagonal 1, columns sum to 1.

    ``G = graph`` with ``G_ii = 1``, then ``G[:, j] /= sum_i G[i, j]``
    (hbdat/cvpr20_IMCL ``D_utility.preprocessing_graph``). The input is not
    modified (the reference works in place).

    Args:
        graph: float [C, C], non-negative weights (counts, 0/1, P(j|i), ...).

    Returns:
        float32 [C, C]; every column sums to 1 and the non-zero pattern is
        that of ``graph`` plus the diagonal.

    Raises:
        ValueError: if ``graph`` is not square, holds NaN/inf, or a column
            sums to 0 after setting the diagonal (possible only with negative
            entries).
    """
    g = _square(graph).astype(np.float64)
    if not np.all(np.isfinite(g)):
        raise ValueError("graph holds NaN or inf")
    g = g.copy()
    np.fill_diagonal(g, 1.0)
    colsum = g.sum(axis=0)
    if np.any(colsum == 0):
        raise ValueError(f"preprocess_graph: columns {np.flatnonzero(colsum == 0)[:10].tolist()} "
                         "sum to 0 after setting the diagonal to 1")
    return (g / colsum[None, :]).astype(np.float32)


def gen_adj(adjacency, t=0.4, rho=0.25):
    """ML-GCN / DOR-ML ``gen_A``: binarise, reweight, add the identity.

    ``A' = [A >= t]`` (0/1), then, if ``rho != 0``,
    ``A' = A' * rho / (colsum(A') + 1e-6) + I`` (deep-object-reid
    ``torchreid/models/gcn.py::gen_A`` with ``smoothing='full'``). Note the
    name: ML-GCN calls this ``gen_A``; its ``gen_adj`` is
    :func:`normalized_adjacency`.

    Args:
        adjacency: float [C, C], typically P(j|i) from
            :func:`conditional_probability`.
        t: float, binarisation threshold (0.4).
        rho: float, re-weighting of the neighbours (0.25); 0 returns the 0/1
            matrix without the identity.

    Returns:
        float64 [C, C].
    """
    a = _square(adjacency, "adjacency").astype(np.float64)
    a = (a >= t).astype(np.float64)
    if rho != 0.0:
        a = a * rho / (a.sum(axis=0, keepdims=True) + 1e-6)
        a = a + np.eye(a.shape[0])
    return a


def normalized_adjacency(adjacency):
    """ML-GCN's ``gen_adj``: ``(A D)^T D`` with ``D = diag(rowsum(A))^-1/2``.

    Equals ``D A^T D``; for a symmetric A this is the usual
    ``D^-1/2 A D^-1/2`` (ML-GCN, Chen et al., CVPR 2019). Rows summing to 0
    give 0 (the
    reference would produce inf).

    Args:
        adjacency: float [C, C], e.g. :func:`gen_adj`'s output.

    Returns:
        float64 [C, C].
    """
    a = _square(adjacency, "adjacency").astype(np.float64)
    rowsum = a.sum(axis=1)
    d = np.where(rowsum > 0, 1.0 / np.sqrt(np.where(rowsum > 0, rowsum, 1.0)),
                 0.0)
    return d[:, None] * a.T * d[None, :]


def save_graph(path, graph, label_names, meta=None):
    """Write ``graph`` with its label names to an ``.npz`` file.

    Keys: ``graph`` [C, C] (dtype kept), ``label_names`` (unicode [C]) and
    ``meta`` (a JSON string). The parent directory is created.

    Args:
        path: str or path-like (``.npz`` is appended by NumPy if missing).
        graph: numeric [C, C].
        label_names: sequence of C unique str, the order of rows/columns.
        meta: optional JSON-serialisable dict (how the graph was built).

    Returns:
        str, the path written.

    Raises:
        ValueError: if the names are not unique or their number is not C.
    """
    g = _square(graph)
    names = [str(n) for n in label_names]
    if len(names) != g.shape[0]:
        raise ValueError(f"{len(names)} label names for a {g.shape[0]}x"
                         f"{g.shape[0]} graph")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})[:5]
        raise ValueError(f"label names are not unique: {dup}")
    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    np.savez(path, **{GRAPH_KEY: g, NAMES_KEY: np.asarray(names, dtype=str),
                      META_KEY: np.asarray(json.dumps(meta or {}))})
    return path


def load_graph(path, label_names=None, allow_subset=False, return_meta=False):
    """Read a graph saved by :func:`save_graph`, reordered BY NAME.

    Args:
        path: str or path-like ``.npz``.
        label_names: optional sequence of str, the wanted row/column order.
            None keeps the stored order.
        allow_subset: bool. False (default): the stored names must be exactly
            ``label_names`` (any order). True: stored labels not in
            ``label_names`` are dropped (the sub-graph is returned).
        return_meta: bool, also return the stored names and meta dict.

    Returns:
        ``graph`` [C, C] in the order of ``label_names`` (stored dtype), or
        ``(graph, names, meta)`` with ``return_meta``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        KeyError: if the file lacks a key of :func:`save_graph`.
        ValueError: naming (up to 10 of) the missing labels (wanted but not
            stored), the extra labels (stored but not wanted, unless
            ``allow_subset``), or duplicated wanted names.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"label graph {path!r} does not exist")
    with np.load(path, allow_pickle=False) as z:
        for key in (GRAPH_KEY, NAMES_KEY):
            if key not in z:
                raise KeyError(f"label graph {path!r} has no {key!r} array "
                               f"(keys: {sorted(z.keys())}); write it with "
                               "save_graph")
        graph = z[GRAPH_KEY]
        stored = [str(n) for n in z[NAMES_KEY].tolist()]
        meta = json.loads(str(z[META_KEY])) if META_KEY in z else {}
    if label_names is None:
        names = stored
    else:
        names = [str(n) for n in label_names]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})[:10]
            raise ValueError(f"label_names are not unique: {dup}")
        index = {n: i for i, n in enumerate(stored)}
        missing = [n for n in names if n not in index]
        wanted = set(names)
        extra = [n for n in stored if n not in wanted]
        if missing:
            raise ValueError(f"label graph {path!r} lacks {len(missing)} of the "
                             f"wanted labels, e.g. {missing[:10]}")
        if extra and not allow_subset:
            raise ValueError(f"label graph {path!r} has {len(extra)} labels "
                             f"that are not wanted, e.g. {extra[:10]}; pass "
                             "allow_subset=True to take the sub-graph")
        order = np.asarray([index[n] for n in names], np.int64)
        graph = graph[np.ix_(order, order)]
    if return_meta:
        return graph, names, meta
    return graph
