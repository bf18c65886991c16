"""Build a label graph for IMCL's G or an ML-GCN adjacency and save it by name.

    python experiments/build_label_graph.py --kind cooccurrence \\
        --features-dir data/features/nus_wide/vgg19/train --out graphs/nus_cooc.npz
    python experiments/build_label_graph.py --kind word_knn --k 5 \\
        --features-dir data/features/nus_wide/vgg19/train --out graphs/nus_knn5.npz
    python experiments/build_label_graph.py --kind identity \\
        --features-dir data/features/cub/resnet101/train --out graphs/cub_id.npz

The label names (and, for ``cooccurrence``, the labels) come from the
feature-store split ``--features-dir``; only the ``labels`` field of the
records is parsed. Kinds (``mll_tf.graphs.label_graph``):

* ``cooccurrence``: counts M_ij of images where both labels are present
  (unknown = not present); ``--conditional`` saves ML-GCN's P(j|i) instead;
* ``word_knn``: each label linked to its k nearest labels by word-vector
  cosine (``--word-vectors glove-6b-50d`` offline, or a GloVe text file);
  labels without a vector stay unconnected;
* ``identity``: I (IMCL on CUB).

The graph is saved raw (IMCL's column normalisation and ML-GCN's gen_A are
applied when the graph is used) as ``.npz`` with ``graph``, ``label_names``
and a JSON ``meta``; load it with ``mll_tf.graphs.load_graph(path, names)``.
"""

import os
import sys

from mll_tf.cli._flags import FlagSet, UsageError, cli_main, import_tensorflow_quietly

__all__ = ["main", "read_labels"]

PROG = "experiments/build_label_graph.py"
KINDS = ("cooccurrence", "word_knn", "identity")


def build_flags():
    fs = FlagSet(PROG, __doc__)
    fs.define("kind", None, "graph kind", choices=KINDS, required=True)
    fs.define("features_dir", None, "feature-store split directory (with manifest.json)", required=True)
    fs.define("label_set", None, "use the extra label set labels/<NAME> instead of the main labels")
    fs.define("conditional", False, "cooccurrence: save P(j|i) = M_ij / count_i with a zero diagonal")
    fs.define("word_vectors", "glove-6b-50d", "word_knn: 'glove-6b-50d' (offline package) or a GloVe text file")
    fs.define("k", 5, "word_knn: neighbours per label", min=1)
    fs.define("batch_size", 1024, "records parsed per batch", min=1)
    fs.define("out", None, "output .npz", required=True)
    return fs


def read_labels(split_dir, label_set=None, batch_size=1024):
    """int8 [N, C] labels of a feature-store split (features are not decoded)."""
    import numpy as np
    import tensorflow as tf
    from mll_tf.data import schema
    from mll_tf.data.feature_store import read_manifest

    manifest = read_manifest(split_dir)
    key = schema.LABELS_KEY if label_set is None else schema.EXTRA_LABELS_PREFIX + label_set
    num = (len(manifest.label_names) if label_set is None
           else len(manifest.extra_label_names[label_set]))
    files = [os.path.join(split_dir, s["file"]) for s in manifest.shards]
    ds = tf.data.TFRecordDataset(files, compression_type=manifest.compression or None)
    spec = {key: tf.io.FixedLenFeature([], tf.string)}

    def parse(serialized):
        raw = tf.io.parse_example(serialized, spec)[key]
        return tf.reshape(tf.io.decode_raw(raw, tf.int8), [-1, num])

    chunks = [y.numpy() for y in ds.batch(batch_size).map(parse)]
    return np.concatenate(chunks) if chunks else np.zeros((0, num), np.int8)


def _run(argv):
    args = build_flags()
    if args.parse(argv) is None:
        return 0
    import_tensorflow_quietly()
    import numpy as np
    from mll_tf.data.feature_store import read_manifest
    from mll_tf.graphs import label_graph as lg

    manifest = read_manifest(args.features_dir)
    if args.label_set is None:
        names = list(manifest.label_names)
    elif args.label_set in manifest.extra_label_names:
        names = list(manifest.extra_label_names[args.label_set])
    else:
        raise UsageError(f"--label-set: {args.features_dir} has no label set {args.label_set!r} "
                         f"(available: {sorted(manifest.extra_label_names)})")
    meta = {"kind": args.kind, "features_dir": os.path.abspath(args.features_dir),
            "dataset": manifest.dataset, "split": manifest.split,
            "label_set": args.label_set or "labels"}

    if args.kind == "cooccurrence":
        labels = read_labels(args.features_dir, args.label_set, args.batch_size)
        graph = lg.cooccurrence_graph(labels)
        meta.update(num_images=int(labels.shape[0]), conditional=bool(args.conditional))
        if args.conditional:
            graph = lg.conditional_probability(graph)
        summary = f"{labels.shape[0]} images, {int(np.count_nonzero(graph))} non-zero entries"
    elif args.kind == "word_knn":
        from mll_tf.data.word_vectors import label_embeddings, load_word_vectors

        if not 1 <= args.k <= len(names) - 1:
            raise UsageError(f"--k must be in [1, {len(names) - 1}]")
        wv = load_word_vectors(args.word_vectors, labels=names)
        vectors, missing = label_embeddings(names, wv)
        graph = lg.word_vector_knn_graph(vectors, args.k, allow_zero=True)
        meta.update(k=args.k, word_vectors=wv.source, missing=missing)
        summary = f"k={args.k}, {len(missing)} labels without a word vector (unconnected)"
        if missing:
            print(f"warning: no word vector for {len(missing)} labels, e.g. {missing[:5]}",
                  file=sys.stderr)
    else:
        graph = lg.identity_graph(len(names))
        summary = "identity"

    path = lg.save_graph(args.out, graph, names, meta)
    print(f"{args.kind} graph over {len(names)} labels ({summary}) -> {path}")
    return 0


def main(argv=None):
    """Entry point; returns the exit code (0, or 2 with one ``error:`` line for bad input)."""
    return cli_main(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
