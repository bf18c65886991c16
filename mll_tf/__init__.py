"""mll_tf: multi-label image classification with partial and unseen labels (TensorFlow 2 / Keras 3).

Methods, each a Task trained by ``keras.Model.fit`` (:mod:`mll_tf.tasks`):
LESA (zero-shot, seen/unseen labels), the partial-label losses CSL, ASL,
Ignore, Negative and IMCL's logistic baseline, and IMCL. Around them: a
TFRecord feature store and its dataset adapters (:mod:`mll_tf.data`),
backbones (:mod:`mll_tf.backbones`), losses, metrics and the command-line
tools (:mod:`mll_tf.cli`). One label convention everywhere: ``1`` present,
``0`` absent, ``-1`` unknown (see :mod:`mll_tf.labels`).
"""

__version__ = "0.2.0"
