"""Learning-rate rules of the LESA and IMCL references.

* :class:`AdaptiveLearningRate`: LESA ``core/utils.py::LearningRate.adapt``
  (copied as IMCL ``D_utility.LearningRate``), a host-side rule called once
  per evaluation with the monitored validation metric (docs/lesa.md §4,
  docs/imcl.md §5).
* :class:`InverseSqrtDecay`: the IMCL OpenImages logistic baseline,
  ``lr0 / (sqrt(global_step) + 1)`` (docs/imcl.md §5), as a Keras
  ``LearningRateSchedule``.
"""

import math
import warnings

import keras
from keras import ops


class AdaptiveLearningRate:
    """EMA-driven learning-rate decay of LESA / IMCL ``LearningRate.adapt``.

    State: ``ema`` (starts at 0), ``cooldown`` (the reference's ``m``, starts
    at 0) and ``learning_rate`` (starts at ``initial_learning_rate``). Each
    call ``adapt(x)`` with the monitored metric x (higher is better, e.g.
    top-5 micro F1 or mAP) does::

        ema_old = ema
        ema     = (1 - signal_strength) * ema + signal_strength * x
        if ema < ema_old and learning_rate >= floor and cooldown <= 0:
            learning_rate = decay * learning_rate
            cooldown = patience
        cooldown = cooldown - 1

    Notes on the reference (hbdat/cvpr20_LESA ``core/utils.py``):

    * the EMA starts at 0, so it rises during the first evaluations and early
      decays are unlikely;
    * after a decay the next one needs at least ``patience`` more calls;
    * the floor test is ``>=`` on the rate BEFORE decaying, so the rate can
      end one decay below the floor;
    * the reference ignores its ``decay_rate`` argument and always uses 0.8
      (docs/lesa.md §6, item 4); this class honours ``decay`` (default 0.8,
      so the defaults reproduce the reference);
    * the reference keeps the rate in a float32 variable, i.e. rounds it to
      float32 after every decay; here it is a Python float (float64), which
      differs in the 8th significant digit at most (the optimizer's float32
      learning-rate variable rounds it anyway);
    * the reference's ``is_reset`` branch is never taken and is not ported.

    Reference settings: LESA ``signal_strength=0.3``, ``decay=0.8``,
    ``floor_fraction=1e-3``, ``patience=5`` (NUS-WIDE) or 2 (OpenImages,
    the constructor default); IMCL interactive ``signal_strength=0.1``,
    absolute ``floor=1.25e-4`` (docs/lesa.md §4, docs/imcl.md §5).

    Args:
        initial_learning_rate: float > 0, lr0.
        signal_strength: float in (0, 1], the EMA weight of the newest value.
        decay: float in (0, 1], the factor applied on a decay.
        patience: int >= 0, calls to wait after a decay (reference
            ``patient``).
        floor_fraction: float >= 0; the floor is ``floor_fraction * lr0``
            (reference ``limit_lr_scale``). Ignored when ``floor`` is given.
        floor: optional float >= 0, an absolute floor (IMCL: 1.25e-4).

    Attributes:
        learning_rate: float, the current rate.
        ema: float, the current EMA of the metric.
        cooldown: int, the reference's ``m``.
        num_calls: int, how many times :meth:`adapt` ran.
        floor: float, the effective absolute floor.

    Raises:
        ValueError: for arguments outside the ranges above.

    Example:
        >>> rule = AdaptiveLearningRate(1e-3, patience=5)
        >>> lr = rule.adapt(0.31)          # call after each evaluation
        >>> optimizer.learning_rate.assign(lr)
    """

    def __init__(self, initial_learning_rate=1e-3, signal_strength=0.3,
                 decay=0.8, patience=2, floor_fraction=1e-3, floor=None):
        initial_learning_rate = float(initial_learning_rate)
        if not initial_learning_rate > 0:
            raise ValueError("AdaptiveLearningRate: initial_learning_rate "
                             f"must be > 0, got {initial_learning_rate}")
        if not 0.0 < float(signal_strength) <= 1.0:
            raise ValueError("AdaptiveLearningRate: signal_strength must be "
                             f"in (0, 1], got {signal_strength}")
        if not 0.0 < float(decay) <= 1.0:
            raise ValueError("AdaptiveLearningRate: decay must be in (0, 1], "
                             f"got {decay}")
        if int(patience) != patience or int(patience) < 0:
            raise ValueError("AdaptiveLearningRate: patience must be an "
                             f"integer >= 0, got {patience}")
        if not float(floor_fraction) >= 0.0:
            raise ValueError("AdaptiveLearningRate: floor_fraction must be "
                             f">= 0, got {floor_fraction}")
        if floor is not None and not float(floor) >= 0.0:
            raise ValueError(f"AdaptiveLearningRate: floor must be >= 0, got "
                             f"{floor}")
        self.initial_learning_rate = initial_learning_rate
        self.signal_strength = float(signal_strength)
        self.decay = float(decay)
        self.patience = int(patience)
        self.floor_fraction = float(floor_fraction)
        self.floor = (self.floor_fraction * initial_learning_rate
                      if floor is None else float(floor))
        self._absolute_floor = floor is not None
        self.learning_rate = initial_learning_rate
        self.ema = 0.0
        self.cooldown = 0
        self.num_calls = 0

    def adapt(self, metric):
        """Updates the EMA with ``metric`` and maybe decays the rate.

        Args:
            metric: float (or scalar array/tensor), the monitored validation
                value; higher is better. Must be finite.

        Returns:
            float, the learning rate to use from now on.

        A NaN or infinite ``metric`` is ignored with a ``RuntimeWarning``
        (no state changes). In the reference a NaN (e.g. an F1 of 0/0) makes
        the EMA NaN for good, so the rate never decays again.
        """
        x = float(metric)
        if not math.isfinite(x):
            warnings.warn(f"AdaptiveLearningRate.adapt: ignoring non-finite "
                          f"metric {x}", RuntimeWarning, stacklevel=2)
            return self.learning_rate
        ema_old = self.ema
        self.ema = self.ema * (1.0 - self.signal_strength) \
            + x * self.signal_strength
        if (self.ema < ema_old and self.learning_rate >= self.floor
                and self.cooldown <= 0):
            self.learning_rate *= self.decay
            self.cooldown = self.patience
        self.cooldown -= 1
        self.num_calls += 1
        return self.learning_rate

    def state_dict(self):
        """The state as a JSON-serialisable dict of Python scalars.

        Returns:
            dict with ``learning_rate`` (float), ``ema`` (float),
            ``cooldown`` (int), ``num_calls`` (int) and the configuration
            (``initial_learning_rate``, ``signal_strength``, ``decay``,
            ``patience``, ``floor``) for checking on load.
        """
        return {
            "learning_rate": self.learning_rate,
            "ema": self.ema,
            "cooldown": self.cooldown,
            "num_calls": self.num_calls,
            "initial_learning_rate": self.initial_learning_rate,
            "signal_strength": self.signal_strength,
            "decay": self.decay,
            "patience": self.patience,
            "floor": self.floor,
        }

    def load_state_dict(self, state):
        """Restores the state saved by :meth:`state_dict`.

        Only ``learning_rate``, ``ema``, ``cooldown`` and ``num_calls`` are
        restored; the configuration stays the constructor's (so a resumed
        run may change e.g. ``patience`` on purpose).

        Args:
            state: dict from :meth:`state_dict` (e.g. read back from JSON).

        Raises:
            KeyError: if one of the four state keys is missing.
        """
        self.learning_rate = float(state["learning_rate"])
        self.ema = float(state["ema"])
        self.cooldown = int(state["cooldown"])
        self.num_calls = int(state["num_calls"])

    def __repr__(self):
        floor = (f"floor={self.floor!r}" if self._absolute_floor
                 else f"floor_fraction={self.floor_fraction!r}")
        return (f"AdaptiveLearningRate(initial_learning_rate="
                f"{self.initial_learning_rate!r}, signal_strength="
                f"{self.signal_strength!r}, decay={self.decay!r}, "
                f"patience={self.patience!r}, {floor}; learning_rate="
                f"{self.learning_rate!r}, ema={self.ema!r}, "
                f"cooldown={self.cooldown!r}, num_calls={self.num_calls!r})")


@keras.saving.register_keras_serializable(package="mll_tf")
class InverseSqrtDecay(keras.optimizers.schedules.LearningRateSchedule):
    """``lr(step) = initial_learning_rate / (sqrt(step) + 1)``.

    The IMCL OpenImages logistic baseline, ``1.0/(tf.sqrt(global_step)+1.0)
    * learning_rate_base`` with the TF1 global step (0 at the first update,
    like ``optimizer.iterations``), docs/imcl.md §5 (reference
    ``OpenImages_experiments/baseline_logistic_OpenImages.py``).

    Args:
        initial_learning_rate: float > 0, lr0 (0.001 in the reference).
        name: optional str.

    Call args:
        step: int or float scalar (tensor) >= 0, the optimizer iteration.

    Returns (from ``__call__``):
        float32 scalar tensor in (0, lr0].

    Raises:
        ValueError: if ``initial_learning_rate`` <= 0.
    """

    def __init__(self, initial_learning_rate=1e-3, name=None):
        if not float(initial_learning_rate) > 0:
            raise ValueError("InverseSqrtDecay: initial_learning_rate must be "
                             f"> 0, got {initial_learning_rate}")
        self.initial_learning_rate = float(initial_learning_rate)
        self.name = name

    def __call__(self, step):
        step = ops.cast(step, "float32")
        return self.initial_learning_rate / (ops.sqrt(step) + 1.0)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "name": self.name}


def build_lr_schedule(run):
    """The per-round learning-rate rule of a run configuration.

    Args:
        run: :class:`mll_tf.training.config.RunConfig`.

    Returns:
        None for ``--lr-schedule constant``, else an
        :class:`AdaptiveLearningRate` (EMA of the monitored metric with weight
        ``lr_signal``, x ``lr_decay`` on a drop, ``lr_patience`` rounds
        between decays, floor ``lr_floor_fraction * learning_rate``).

    Raises:
        ValueError: naming ``--lr-schedule`` for an unknown rule.
    """
    if run.lr_schedule == "constant":
        return None
    if run.lr_schedule == "adaptive":
        return AdaptiveLearningRate(run.learning_rate, signal_strength=run.lr_signal, decay=run.lr_decay,
                                    patience=run.lr_patience, floor_fraction=run.lr_floor_fraction)
    raise ValueError(f"--lr-schedule: unknown {run.lr_schedule!r} (constant, adaptive)")
