"""mll_tf: multi-label image classification with partial and unseen labels.

TensorFlow 2 / Keras 3 ports of LESA, IMCL, CSL, ML-Decoder/ML-GCN heads and
OASS. One label convention everywhere: ``1`` present, ``0`` absent, ``-1``
unknown (see :mod:`mll_tf.labels`).
"""

__version__ = "0.1.0"
