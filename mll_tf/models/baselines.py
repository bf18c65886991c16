"""Simple zero-shot baselines, scored with the same protocol as LESA.

* :func:`random_scores`: a random ranking (the chance level of every metric).
* :class:`LinearEmbeddingBaseline`: a DeViSE/ConSE-style linear map from the
  region-averaged feature to the word-vector space, fitted by ridge regression
  on seen labels; a label scores the cosine between the projected image and
  its word vector. It uses the same features, word vectors and seen labels as
  LESA but no attention and no ranking loss.
"""

import numpy as np


def random_scores(num_images, num_labels, seed=0):
    """float32 ``[N, C]`` i.i.d. uniform scores (a random ranking)."""
    return np.random.default_rng(seed).random((num_images, num_labels), dtype=np.float32)


def _l2n(x, axis=-1):
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


class LinearEmbeddingBaseline:
    """Ridge regression image feature -> mean word vector of its positive labels.

    Args:
        alpha: float > 0, ridge penalty (features are standardised first).

    Source: the linear-embedding zero-shot baselines compared in LESA
    (Huynh & Elhamifar, CVPR 2020, §5, e.g. ConSE / Fast0Tag family).
    """

    def __init__(self, alpha=10.0):
        self.alpha = alpha

    def fit(self, features, labels, label_vectors):
        """Fit on seen labels.

        Args:
            features: float ``[N, D]`` region-averaged features.
            labels: int ``[N, S]`` in {1, 0, -1} over seen labels.
            label_vectors: float ``[S, d]`` raw word vectors of the seen labels.

        Raises:
            ValueError: if no image has a positive label.
        """
        from sklearn.linear_model import Ridge
        from sklearn.preprocessing import StandardScaler

        pos = (np.asarray(labels) == 1).astype(np.float32)
        keep = pos.sum(1) > 0
        if not keep.any():
            raise ValueError("LinearEmbeddingBaseline.fit: no image has a positive label")
        v = _l2n(np.asarray(label_vectors, np.float32))
        target = _l2n(pos[keep] @ v / pos[keep].sum(1, keepdims=True))
        self.scaler = StandardScaler().fit(features[keep])
        self.ridge = Ridge(alpha=self.alpha).fit(self.scaler.transform(features[keep]), target)
        return self

    def scores(self, features, label_vectors):
        """Cosine scores float32 ``[N, C]`` for any label vectors ``[C, d]``."""
        proj = _l2n(self.ridge.predict(self.scaler.transform(features)))
        return (proj @ _l2n(np.asarray(label_vectors, np.float32)).T).astype(np.float32)
