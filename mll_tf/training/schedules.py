"""Learning-rate rules of the LESA and IMCL references.

* :class:`AdaptiveLearningRate`: LESA ``core/utils.py::LearningRate.adapt``
  (copied as IMCL ``D_utility.LearningRate``), a host-side rule called once
  per evaluation with the monitored validation metric (docs/lesa.md §4,
  docs/imcl.md §5).
* :class:`OneCycle`: the cosine one-cycle rate of DOR-ML (PyTorch
  ``OneCycleLR``), ``--lr-schedule one_cycle``.
* :class:`InverseSqrtDecay`: the IMCL OpenImages logistic baseline,
  ``lr0 / (sqrt(global_step) + 1)`` (docs/imcl.md §5), as a Keras
  ``LearningRateSchedule``.
"""

import math
import warnings

import keras
import numpy as np
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


@keras.saving.register_keras_serializable(package="mll_tf")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """Cosine one-cycle learning rate (Smith & Topin 2019), as PyTorch's ``OneCycleLR``.

    Two cosine phases over ``total_steps`` optimizer steps (``anneal_strategy
    ="cos"``, ``three_phase=False``): from ``initial = max_lr / div_factor``
    up to ``max_lr`` at step ``e1 = warmup_fraction * total_steps - 1``, then
    down to ``final = initial / final_div_factor`` at step ``total_steps - 1``::

        cos_anneal(a, b, f) = b + (a - b) / 2 * (1 + cos(pi * f))
        lr(t) = cos_anneal(initial, max_lr, t / e1)                         t <= e1
        lr(t) = cos_anneal(max_lr, final, (t - e1) / (total_steps - 1 - e1)) t > e1

    Steps past ``total_steps - 1`` keep ``final``; with ``e1 <= 0`` the run
    starts at ``max_lr``. Step t is ``optimizer.iterations`` (0 at the first
    update, like PyTorch's scheduler before its first ``step()``).

    DOR-ML (``torchreid/optim/lr_scheduler.py``, ``onecycle``) calls
    ``OneCycleLR(max_lr=lr, pct_start=0.2, div_factor=100,
    final_div_factor=lr_decay_factor=1000)`` stepped every batch, over
    ``max_epoch`` (60) epochs even when early stopping ends the run sooner:
    it starts at lr/100 and ends at lr/1e5. PyTorch also cycles SGD's
    momentum (0.95 -> 0.85 -> 0.95) by default; that is not ported (Keras'
    SGD momentum is a constant).

    Args:
        max_lr: float > 0, the peak (``--learning-rate``).
        total_steps: int >= 1.
        warmup_fraction: float in [0, 1), ``pct_start``.
        div_factor: float >= 1, ``max_lr / initial``.
        final_div_factor: float >= 1, ``initial / final``.
        name: optional str.

    Returns (``__call__``): float32 scalar tensor.

    Raises:
        ValueError: for arguments outside these ranges.
    """

    def __init__(self, max_lr, total_steps, warmup_fraction=0.2, div_factor=100.0, final_div_factor=1000.0,
                 name=None):
        if not float(max_lr) > 0:
            raise ValueError(f"OneCycle: max_lr must be > 0, got {max_lr}")
        if int(total_steps) != total_steps or int(total_steps) < 1:
            raise ValueError(f"OneCycle: total_steps must be an integer >= 1, got {total_steps}")
        if not 0.0 <= float(warmup_fraction) < 1.0:
            raise ValueError(f"OneCycle: warmup_fraction must be in [0, 1), got {warmup_fraction}")
        if not (float(div_factor) >= 1.0 and float(final_div_factor) >= 1.0):
            raise ValueError(f"OneCycle: div_factor and final_div_factor must be >= 1, got {div_factor}, "
                             f"{final_div_factor}")
        self.max_lr = float(max_lr)
        self.total_steps = int(total_steps)
        self.warmup_fraction = float(warmup_fraction)
        self.div_factor = float(div_factor)
        self.final_div_factor = float(final_div_factor)
        self.name = name
        self.initial_lr = self.max_lr / self.div_factor
        self.final_lr = self.initial_lr / self.final_div_factor
        self.peak_step = float(self.warmup_fraction * self.total_steps) - 1.0

    def __call__(self, step):
        return ops.cast(self._lr64(ops.cast(step, "float64")), "float32")

    def _lr64(self, t):
        # float64: near the end the rate is a small difference of float32-sized numbers
        e1 = self.peak_step
        end = float(self.total_steps - 1)

        def anneal(a, b, f):
            f = ops.clip(f, 0.0, 1.0)
            return b + (a - b) / 2.0 * (1.0 + ops.cos(np.float64(math.pi) * f))

        down = anneal(self.max_lr, self.final_lr, (t - e1) / max(end - e1, 1.0))
        if e1 <= 0:
            return down
        up = anneal(self.initial_lr, self.max_lr, t / e1)
        return ops.where(t <= e1, up, down)

    def get_config(self):
        return {"max_lr": self.max_lr, "total_steps": self.total_steps,
                "warmup_fraction": self.warmup_fraction, "div_factor": self.div_factor,
                "final_div_factor": self.final_div_factor, "name": self.name}


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
    if run.lr_schedule in ("constant", "one_cycle", "poly"):   # a LearningRateSchedule of the optimizer
        return None
    if run.lr_schedule == "adaptive":
        return AdaptiveLearningRate(run.learning_rate, signal_strength=run.lr_signal, decay=run.lr_decay,
                                    patience=run.lr_patience, floor_fraction=run.lr_floor_fraction)
    raise ValueError(f"--lr-schedule: unknown {run.lr_schedule!r} (constant, adaptive, one_cycle, poly)")
