"""RMSprop with TF1 ``tf.train.RMSPropOptimizer`` semantics.

TF1 ``RMSPropOptimizer(lr, decay=0.9, momentum=0.9,
epsilon=1.0)`` -- the optimizer of the LESA and IMCL references -- and Keras 3
``RMSprop(rho=0.9, momentum=0.9, epsilon=1.0)`` apply the same update with
epsilon inside the square root and the learning rate inside the momentum
buffer. The one difference is the initial mean-square slot: ones in TF1,
zeros in Keras. For the same gradients, after t steps the TF1 slot is larger
by exactly rho^t, so
with epsilon = 1 the TF1 step is smaller by the factor
sqrt((ms_keras + 1) / (ms_keras + rho^t + 1)), which is 1/sqrt(1.9) for a
tiny first gradient (rho = 0.9) and tends to 1 over a few tens of steps
(the ratio is bounded by sqrt(2), the limit rho -> 1; see docs/lesa.md §4).
"""

import keras


@keras.saving.register_keras_serializable(package="mll_tf")
class TF1RMSprop(keras.optimizers.RMSprop):
    """Keras RMSprop whose mean-square slots start at ONES, as in TF1.

    Per variable, with gradient g, learning rate lr and slots ``ms``
    (Keras ``velocity``, initialised to 1), ``mom`` (initialised to 0) and,
    if ``centered``, ``mg`` (initialised to 0)::

        ms  <- rho * ms + (1 - rho) * g^2
        den <- ms + epsilon                  (centered: ms - mg^2 + epsilon)
        mom <- momentum * mom + lr * g / sqrt(den)
        var <- var - mom                     (momentum 0: var - lr*g/sqrt(den))

    This is ``tf.compat.v1.train.RMSPropOptimizer`` exactly (TensorFlow's
    ``training_ops.ApplyRMSProp`` / ``ApplyCenteredRMSProp``). As in TF1,
    changing the learning rate (``optimizer.learning_rate.assign(...)``) does
    not rescale the momentum already accumulated: lr multiplies only the
    newest increment. Only the slot initialiser differs from
    ``keras.optimizers.RMSprop``; the slots are created with a ``"ones"``
    initialiser (no assignment after creation), so the optimizer behaves the
    same when built under ``tf.distribute`` strategies, when built lazily by
    the first ``apply_gradients``, and when restored from a checkpoint or a
    ``.keras`` file (which overwrite the slots).

    Defaults are the LESA / IMCL reference values (docs/lesa.md §4, docs/imcl.md §5),
    not Keras' (``momentum=0.0, epsilon=1e-7``).

    Args:
        learning_rate: float, ``LearningRateSchedule`` or callable; lr > 0
            (1e-3 in LESA).
        rho: float in [0, 1), the TF1 ``decay`` of the mean square (0.9).
        momentum: float in [0, 1), the momentum coefficient (0.9).
        epsilon: float > 0, added to ms INSIDE the square root (1.0).
        centered: bool, TF1 ``centered=True`` (ms - mg^2 in the denominator).
        name: str, optimizer name (default ``"tf1_rmsprop"``).
        **kwargs: the other ``keras.optimizers.Optimizer`` arguments
            (``clipnorm``, ``weight_decay``, ``use_ema``, ...).

    Raises:
        ValueError: from ``keras.optimizers.Optimizer`` for invalid base
            arguments (e.g. both ``clipnorm`` and ``global_clipnorm``).

    Example:
        >>> opt = TF1RMSprop(learning_rate=0.1)
        >>> v = keras.Variable([1.0, 2.0])
        >>> opt.apply_gradients([(keras.ops.array([1.0, 1.0]), v)])
        >>> # ms = 0.9*1 + 0.1*1^2 = 1; step = 0.1*1/sqrt(1 + 1) = 0.0707107
        >>> v.numpy().round(5)
        array([0.92929, 1.92929], dtype=float32)
    """

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.9,
                 epsilon=1.0, centered=False, name="tf1_rmsprop", **kwargs):
        super().__init__(learning_rate=learning_rate, rho=rho,
                         momentum=momentum, epsilon=epsilon,
                         centered=centered, name=name, **kwargs)

    def add_optimizer_variables(self, trainable_variables, name,
                                initializer="zeros"):
        """Creates slots; the ``"velocity"`` (mean-square) slots get ones.

        ``keras.optimizers.RMSprop.build`` creates its mean-square slots with
        ``add_optimizer_variables(var_list, "velocity")`` (Keras 3.15); all
        other slots keep their initialiser.
        """
        if isinstance(name, str) and name == "velocity":
            initializer = "ones"
        return super().add_optimizer_variables(trainable_variables, name,
                                               initializer=initializer)

    def build(self, var_list):
        """Builds the slots for ``var_list`` (mean squares = 1, others 0).

        Raises:
            RuntimeError: if Keras stopped creating the mean-square slots
                through ``add_optimizer_variables(..., "velocity")`` (a Keras
                upgrade broke the override; they would silently be zeros).
        """
        if self.built:
            return
        super().build(var_list)
        velocities = getattr(self, "_velocities", None)
        if velocities is None or len(velocities) != len(var_list):
            raise RuntimeError(
                "TF1RMSprop: keras.optimizers.RMSprop no longer exposes one "
                "`_velocities` slot per variable; cannot guarantee the TF1 "
                "ones initialisation (docs/lesa.md §4)")
