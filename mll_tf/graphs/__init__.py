"""Label graphs for IMCL (label-dependency G) and ML-GCN heads (adjacency)."""

from mll_tf.graphs.label_graph import (
    conditional_probability, cooccurrence_graph, gen_adj, identity_graph,
    load_graph, normalized_adjacency, preprocess_graph, save_graph,
    word_vector_knn_graph)

__all__ = ["conditional_probability", "cooccurrence_graph", "gen_adj",
           "identity_graph", "load_graph", "normalized_adjacency",
           "preprocess_graph", "save_graph", "word_vector_knn_graph"]
