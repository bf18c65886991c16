"""Optimizers by name (``--optimizer``), including TF1-compatible RMSprop.

``rmsprop_tf1`` reproduces TF1's ``RMSPropOptimizer`` (mean-square slots
start at ones, epsilon inside the square root), with which the LESA and IMCL
references were trained; see :class:`TF1RMSprop`.
"""

from mll_tf.optimizers.rmsprop_tf1 import TF1RMSprop

__all__ = ["TF1RMSprop", "build_optimizer", "optimizer_names"]

_OPTIMIZERS = ("adam", "adamw", "rmsprop", "rmsprop_tf1", "sgd")


def optimizer_names():
    """Names :func:`build_optimizer` accepts (tuple of str)."""
    return _OPTIMIZERS


def build_optimizer(name, learning_rate, weight_decay=0.0):
    """A Keras optimizer by name.

    * ``rmsprop_tf1``: TF1 ``RMSPropOptimizer(lr, decay=0.9, momentum=0.9,
      epsilon=1.0)`` exactly (LESA / IMCL; hbdat/cvpr20_LESA
      ``core/...`` training scripts);
    * ``rmsprop``: Keras RMSprop with the same hyper-parameters (its
      mean-square slots start at zeros instead of ones);
    * ``adam``: Adam;
    * ``adamw``: AdamW with ``weight_decay`` on kernels only (not on
      biases or normalisation parameters; CSL's Adam with weight decay on
      non-bias parameters);
    * ``sgd``: SGD with Nesterov momentum 0.9.

    Args:
        name: str, one of :func:`optimizer_names`.
        learning_rate: float > 0, or a Keras ``LearningRateSchedule``.
        weight_decay: float >= 0 (``adamw`` only).

    Returns:
        keras.optimizers.Optimizer (unbuilt).

    Raises:
        ValueError: naming ``--optimizer`` for an unknown name.
    """
    import keras

    if name == "rmsprop_tf1":
        return TF1RMSprop(learning_rate, rho=0.9, momentum=0.9, epsilon=1.0)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate, rho=0.9, momentum=0.9, epsilon=1.0)
    if name == "adamw":
        opt = keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay)
        opt.exclude_from_weight_decay(var_names=["bias", "beta", "gamma"])
        return opt
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True)
    raise ValueError(f"--optimizer: unknown {name!r} ({', '.join(_OPTIMIZERS)})")
