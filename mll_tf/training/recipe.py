"""The metric-learning training recipe as run options: SAM, weight EMA, one-cycle LR, early stopping, decay, mixing.

Prokofiev & Sovrasov 2022 (Sec. 4.1, "Training details") train with SAM over
SGD, an EMA of the weights, a one-cycle learning rate, early stopping and no
weight decay on biases and normalisation parameters; reference code on the
``multilabel`` branch of deep-object-reid: ``torchreid/optim/sam.py`` (SAM),
``torchreid/optim/optimizer.py`` (``nbd``: no bias decay),
``torchreid/optim/lr_scheduler.py`` (``onecycle``: torch ``OneCycleLR``),
``torchreid/engine/engine.py`` (``ModelEmaV2``, early stopping),
``configs/EfficientNetV2_small_{mld,gcn}.yml`` (the released values).

Everything here is used by :func:`mll_tf.training.runner.fit_task` from the
:class:`~mll_tf.training.config.RunConfig` flags, so any method trained with
the standard one-optimizer gradient step gets it:

========================  ============================================================  ==================
flag                      what                                                          reference value
========================  ============================================================  ==================
``--sam-rho R``           SAM two-pass step (:func:`sam_gradients`), R > 0 turns it on  0.05
``--sam-adaptive``        adaptive SAM (perturbation scaled by w^2)                     off (code default)
``--ema-decay D``         EMA of the weights (Keras ``use_ema``); validation, ``best``   0.9997 / 0.9993
                          and ``last`` use the EMA weights (:class:`EMAValidation`)
``--lr-schedule           cosine one-cycle (:class:`~mll_tf.training.schedules.OneCycle`)  0.2, 100, 1000
one_cycle``               ``--lr-warmup-fraction``, ``--lr-div-factor``,
                          ``--lr-final-div-factor``
``--early-stopping-       stop after N rounds without a strictly better monitored       5
patience N``              value (:class:`EarlyStopping`)
``--weight-decay W``      decoupled decay for ``sgd``/``adamw``, never on variables      5e-4 (coupled)
                          with <= 1 dimension (biases, norm scales and offsets)
``--mixup A``,            MixUp (features or images) / CutMix (images, ``--finetune``)    off
``--cutmix A``            of the training batches (:func:`mix_batches`)
========================  ============================================================  ==================

A method opts in to SAM by running :func:`sam_gradients` in its
``train_step`` (``mll_tf.tasks.partial.PartialLabelSteps`` does; the task
class sets ``supports_sam = True``) and to MixUp/CutMix by accepting soft
targets (``supports_soft_targets = True``). :func:`check_recipe` refuses, with
one line naming the flag, what a method cannot do (LESA and IMCL have steps
of their own; IMCL also trains with optimizers of its own, so EMA, the
one-cycle rate and weight decay would reach only part of its variables).
"""


import keras
import numpy as np
import tensorflow as tf

__all__ = ["EMAValidation", "EarlyStopping", "build_run_optimizer", "check_recipe", "decay_exclusions",
           "ema_pairs", "early_stopped", "mix_batches", "mix_targets", "sam_gradients", "swap_ema_weights"]

#: methods that train some variables with optimizers of their own (the compiled optimizer's EMA,
#: learning-rate schedule and weight decay would reach only part of the model)


# ----------------------------------------------------------------------------------------- checks
def check_recipe(task):
    """Refuse recipe flags the task's training step cannot honour (before anything is written).

    Args:
        task: a :class:`mll_tf.tasks.base.Task`; reads ``task.run`` and the
            class attributes ``supports_sam`` and ``supports_soft_targets``
            (default False) and ``own_optimizers`` (a str saying why the run
            optimizer's EMA, one-cycle rate and SGD weight decay do not
            apply; default "": they do).

    Raises:
        ValueError: one line naming the flag and the method.
    """
    run = task.run
    name = task.name
    if run.sam_rho > 0 and not getattr(task, "supports_sam", False):
        raise ValueError(f"--sam-rho: --method {name} has a training step of its own without the SAM "
                         f"two-pass update (SAM is available to methods with the standard gradient step: "
                         f"drop --sam-rho)")
    if run.sam_adaptive and run.sam_rho <= 0:
        raise ValueError("--sam-adaptive: needs --sam-rho > 0 (e.g. --sam-rho 0.05)")
    own = getattr(task, "own_optimizers", "")
    if own:
        for flag, on in (("--ema-decay", run.ema_decay > 0),
                         (f"--lr-schedule {run.lr_schedule}", run.lr_schedule in ("one_cycle", "poly")),
                         ("--weight-decay", run.weight_decay > 0 and run.optimizer == "sgd"),
                         ("--sgd-momentum", run.optimizer == "sgd" and run.sgd_momentum != 0.9)):
            if on:
                raise ValueError(f"{flag}: not available for --method {name} ({own})")
    if (run.mixup > 0 or run.cutmix > 0) and not getattr(task, "supports_soft_targets", False):
        flag = "--mixup" if run.mixup > 0 else "--cutmix"
        raise ValueError(f"{flag}: --method {name} does not train on mixed (soft) targets")
    if run.cutmix > 0 and not run.finetune:
        raise ValueError("--cutmix: cuts image boxes, so it needs --finetune (stored features: use --mixup)")
    if run.mixup > 0 and run.cutmix > 0:
        raise ValueError("--mixup and --cutmix exclude each other (the reference applies one of them)")
    if run.sgd_momentum != 0.9 and run.optimizer != "sgd":
        raise ValueError(f"--sgd-momentum: applies to --optimizer sgd, not {run.optimizer}")
    if run.weight_decay > 0 and run.optimizer not in ("sgd", "adamw"):
        raise ValueError(f"--weight-decay: applies to --optimizer sgd or adamw, not {run.optimizer}")


# ------------------------------------------------------------------------------------ optimizer
def decay_exclusions(variables):
    """The variables weight decay must not touch: those with at most one dimension.

    Biases, LayerNorm/BatchNorm scales and offsets (the reference's ``nbd``
    groups in ``torchreid/optim/optimizer.py``: names ending in ``bias``, every
    1-D parameter, and norm weights).

    Args:
        variables: list of Keras variables.

    Returns:
        list of the excluded variables.
    """
    return [v for v in variables if len(v.shape) <= 1]


def build_run_optimizer(run, total_steps, variables):
    """The compiled optimizer of a run: ``--optimizer`` with the recipe's schedule, EMA and decay.

    * ``sgd`` has momentum ``--sgd-momentum`` (0.9), Nesterov unless
      ``--nosgd-nesterov``;
    * the learning rate is ``--learning-rate``, or with ``--lr-schedule
      one_cycle`` a :class:`~mll_tf.training.schedules.OneCycle` over
      ``total_steps`` peaking at ``--learning-rate``, or with ``poly``
      ``lr * (1 - t / total_steps) ** --lr-poly-power`` at the step count t
      before the update (Keras ``PolynomialDecay`` to 0; Puzzle-CAM's
      ``tools/ai/optim_utils.py::PolyOptimizer``);
    * ``--ema-decay D > 0``: Keras' ``use_ema=True, ema_momentum=D`` (after
      every update ``avg = D * avg + (1 - D) * w``; the first update copies w);
    * ``--weight-decay W``: Keras' decoupled decay ``w -= lr * W * w`` for
      ``sgd`` and ``adamw``, with :func:`decay_exclusions` excluded. The
      reference uses PyTorch's coupled L2 (``g += W * w`` before momentum);
      with momentum 0.9 the decoupled form decays about 10x less for the same
      W (PyTorch's equals decoupled ``W / (1 - momentum)`` in a steady state).

    Args:
        run: :class:`mll_tf.training.config.RunConfig`.
        total_steps: int >= 1, training steps of the whole run.
        variables: the variables the optimizer will update (for the exclusions).

    Returns:
        an unbuilt ``keras.optimizers.Optimizer``.
    """
    from mll_tf.optimizers import build_optimizer
    from mll_tf.training.schedules import OneCycle

    lr = run.learning_rate
    if run.lr_schedule == "one_cycle":
        lr = OneCycle(run.learning_rate, total_steps, warmup_fraction=run.lr_warmup_fraction,
                      div_factor=run.lr_div_factor, final_div_factor=run.lr_final_div_factor)
    elif run.lr_schedule == "poly":
        lr = keras.optimizers.schedules.PolynomialDecay(run.learning_rate, max(int(total_steps), 1), 0.0,
                                                        power=run.lr_poly_power)
    wd = run.weight_decay if run.optimizer in ("sgd", "adamw") else 0.0
    opt = build_optimizer(run.optimizer, lr, wd)
    plain_momentum = run.optimizer == "sgd" and not run.sgd_nesterov
    sgd_momentum = run.optimizer == "sgd" and run.sgd_momentum != 0.9
    if run.ema_decay > 0 or (wd > 0 and run.optimizer == "sgd") or plain_momentum or sgd_momentum:
        config = opt.get_config()
        config["learning_rate"] = lr
        if plain_momentum:
            config["nesterov"] = False
        if sgd_momentum:
            config["momentum"] = float(run.sgd_momentum)
            config["nesterov"] = config["nesterov"] and run.sgd_momentum > 0
        if run.ema_decay > 0:
            config.update(use_ema=True, ema_momentum=float(run.ema_decay))
        if wd > 0:
            config["weight_decay"] = float(wd)
        opt = type(opt).from_config(config)
    if wd > 0:
        opt.exclude_from_weight_decay(var_list=decay_exclusions(variables),
                                      var_names=["bias", "beta", "gamma"])
    return opt


# ------------------------------------------------------------------------------------------- SAM
def _dense(g):
    return tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g


def _assign_all(variables, values, add):
    """``v.assign(x)`` / ``v.assign_add(x)`` for mirrored variables from a replica context (as the optimizer does)."""
    tf_vars = [v.value if isinstance(v, keras.Variable) else v for v in variables]

    def merge_fn(distribution, tf_vars, values):
        for var, value in zip(tf_vars, values):
            distribution.extended.update(
                var, (lambda x, d: x.assign_add(d)) if add else (lambda x, d: x.assign(d)),
                args=(value,), group=False)

    tf.__internal__.distribute.interim.maybe_merge_call(merge_fn, tf.distribute.get_strategy(), tf_vars,
                                                        list(values))


def sam_gradients(compute, variables, rho, adaptive=False, eps=1e-12):
    """Sharpness-aware minimisation: the gradient at the worst nearby point, for one optimizer step.

    Foret et al., ICLR 2021, Alg. 1; adaptive: Kwon et al., ICML 2021 (ASAM),
    Eq. 7; reference ``torchreid/optim/sam.py`` (``first_step`` /
    ``second_step``). With g the gradient of the global batch at w::

        n   = || T g ||_2 over all variables,   T = |w| (adaptive) or 1
        e   = rho * T^2 g / (n + eps)             (T^2 = w^2 or 1)
        g'  = gradient at w + e
        w   unchanged (restored exactly); the caller applies g' with its optimizer

    Under ``tf.distribute`` (call it inside ``train_step``, in the replica
    context): the first-pass gradients are all-reduced (summed) before the
    norm, so every replica perturbs by the same e computed from the global
    batch, as one replica would; the returned g' are the replica's own
    gradients, which ``optimizer.apply`` all-reduces as usual.

    Weight decay is not part of g (PyTorch's SGD adds it inside ``step``,
    after SAM's perturbation; Keras' decoupled decay is applied by the
    optimizer). Variables without a gradient are not perturbed.

    Args:
        compute: zero-argument callable returning ``(value, aux)``: ``value``
            is the scalar the gradients are taken of (the replica's share of
            the loss, already divided by the global batch and scaled by
            ``optimizer.scale_loss``), ``aux`` anything (returned from the
            first pass). Called twice.
        variables: list of the trainable variables.
        rho: float > 0, the neighbourhood radius.
        adaptive: bool, adaptive SAM.
        eps: float, added to the norm (the reference's 1e-12).

    Returns:
        (list of gradients at w + e (None where a variable has none), the
        first pass's ``value``, the first pass's ``aux``).
    """
    variables = list(variables)
    with tf.GradientTape() as tape:
        value, aux = compute()
    grads = [_dense(g) for g in tape.gradient(value, variables)]
    idx = [i for i, g in enumerate(grads) if g is not None]
    if not idx:
        return grads, value, aux
    ctx = tf.distribute.get_replica_context()
    local = [grads[i] for i in idx]
    total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, local) if ctx is not None else local
    ws = [tf.convert_to_tensor(variables[i]) for i in idx]
    if adaptive:
        sq = [tf.reduce_sum(tf.square(tf.abs(w) * g)) for w, g in zip(ws, total)]
    else:
        sq = [tf.reduce_sum(tf.square(g)) for g in total]
    scale = rho / (tf.sqrt(tf.add_n(sq)) + eps)
    e = [(tf.square(w) * g if adaptive else g) * tf.cast(scale, g.dtype) for w, g in zip(ws, total)]
    old = [tf.identity(w) for w in ws]
    perturbed = [variables[i] for i in idx]
    with tf.control_dependencies(old):
        _assign_all(perturbed, e, add=True)
    with tf.GradientTape() as tape:
        value2, _ = compute()
    grads2 = tape.gradient(value2, variables)
    with tf.control_dependencies([g for g in grads2 if g is not None]):
        _assign_all(perturbed, old, add=False)
    return list(grads2), value, aux


# ------------------------------------------------------------------------------------------- EMA
def ema_pairs(optimizer):
    """(model variable, its EMA) of an optimizer built with ``use_ema``; [] otherwise."""
    if not getattr(optimizer, "use_ema", False) or not getattr(optimizer, "built", False):
        return []
    return [(v, a) for v, a in zip(optimizer._trainable_variables, optimizer._model_variables_moving_average)
            if a is not None]


def swap_ema_weights(optimizer):
    """Exchange the model's trainable values with their EMA (call twice to undo; exact).

    Returns:
        int, the number of variables swapped (0 without EMA).
    """
    pairs = ema_pairs(optimizer)
    for var, avg in pairs:
        w = keras.ops.convert_to_numpy(var)
        var.assign(keras.ops.convert_to_numpy(avg))
        avg.assign(w)
    return len(pairs)


class EMAValidation:
    """Two callbacks that put the EMA weights in the model for validation and checkpoints.

    ``swap_in`` (placed before the validation callback) exchanges the model's
    trainable values with the optimizer's EMA at the end of each round;
    ``swap_out`` (placed after ``best.keras`` / ``last.keras`` are written and
    before the backup) exchanges them back, so training continues from the raw
    weights and the backup holds both (the EMA as optimizer variables, so
    ``--resume`` keeps it). The validation metrics, ``best.keras`` and
    ``last.keras`` are the EMA model's. Without EMA both do nothing.

    The reference (``torchreid/engine/engine.py``) validates both the raw and
    the EMA model and saves the better one; here the EMA model is the run's
    model.
    """

    def __init__(self):
        self.swapped = False
        parent = self

        class _In(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if not parent.swapped and swap_ema_weights(self.model.optimizer):
                    parent.swapped = True

        class _Out(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if parent.swapped:
                    swap_ema_weights(self.model.optimizer)
                    parent.swapped = False

        self.swap_in = _In()
        self.swap_out = _Out()


# -------------------------------------------------------------------------------- early stopping
class EarlyStopping(keras.callbacks.EarlyStopping):
    """``keras.callbacks.EarlyStopping`` (higher is better) whose state survives ``--resume``.

    Stops after ``patience`` validation rounds without a strictly better
    monitored value (``mode="max"``, ``min_delta=0``). The reference
    (``MultilabelEngine.exit_on_plateau_and_choose_best``) counts rounds
    whose metric is not above an exponential average of earlier ones, with
    patience 5; the Keras rule is the plain one.

    Args:
        monitor: str, a ``val_`` log key.
        patience: int >= 1.
    """

    def __init__(self, monitor, patience):
        super().__init__(monitor=monitor, patience=int(patience), mode="max")
        self._restored = False

    def on_train_begin(self, logs=None):
        if not self._restored:
            super().on_train_begin(logs)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self.model.stop_training and self.stopped_epoch == epoch and epoch > 0:
            self.stopped = True

    stopped = False

    def state_dict(self):
        best = self.best
        return {"wait": int(self.wait), "stopped": bool(self.stopped),
                "best": None if best is None or not np.isfinite(best) else float(best)}

    def load_state_dict(self, state):
        self.wait = int(state.get("wait", 0))
        self.stopped = bool(state.get("stopped", False))
        self.best = state.get("best")
        self.stopped_epoch = 0
        self.best_weights = None
        self.best_epoch = 0
        self._restored = True


def early_stopped(state):
    """bool, a backup's state (``RunBackup.read_state``) records an early stop."""
    return bool(((state or {}).get("callbacks") or {}).get("early_stopping", {}).get("stopped"))


# ---------------------------------------------------------------------------------------- mixing
def mix_targets(y, y_perm, lam):
    """Targets of mixed examples, unknown entries kept unknown.

    ``lam * y + (1 - lam) * y_perm`` where both are known (>= 0), clipped to
    [0, 1] as the reference (``AMBinaryLoss``/ASL ``clamp(0, 1)``); ``-1``
    where either is unknown (the reference mixes -1 in and then drops entries
    that come out negative, which keeps some of them with a wrong target).

    Args:
        y, y_perm: float tensors [B, C] in {1, 0, -1} or [0, 1].
        lam: float tensor [B] or [B, 1] in [0, 1], the weight of ``y``.

    Returns:
        float32 [B, C].
    """
    y = tf.cast(y, tf.float32)
    y_perm = tf.cast(y_perm, tf.float32)
    lam = tf.reshape(tf.cast(lam, tf.float32), [-1, 1])
    mixed = tf.clip_by_value(lam * y + (1.0 - lam) * y_perm, 0.0, 1.0)
    return tf.where((y >= 0) & (y_perm >= 0), mixed, -1.0)


def _beta(shape, alpha, seed):
    """Beta(alpha, alpha) samples from two stateless gammas (seed: int32 [2])."""
    s1, s2 = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    a = tf.random.stateless_gamma(shape, s1, alpha=alpha)
    b = tf.random.stateless_gamma(shape, s2, alpha=alpha)
    return a / tf.maximum(a + b, 1e-12)


def mix_batches(dataset, mode, alpha, seed=0, start_step=0, probability=1.0):
    """MixUp / CutMix of a batched training stream ``(x, y)``; resumable at a step.

    * ``mixup``: per example i, lam_i ~ Beta(alpha, alpha), x_i <- lam_i x_i +
      (1 - lam_i) x_perm(i); works on images [B, H, W, 3] and on stored
      features [B, R, D] (the feature tensors are mixed: a linear head's
      logits then mix exactly, a non-linear head's approximately);
    * ``cutmix`` (images only): ``keras.layers.CutMix(factor=alpha)`` pastes a
      box of the permuted image; lam_i is the fraction of pixels kept.

    Targets follow :func:`mix_targets`. Each batch is mixed with
    ``probability`` (the reference's ``aug_prob``), else passed unchanged.
    MixUp's randomness for batch s is a function of (``seed``, s) (stateless
    ops), so a resumed stream mixes as an uninterrupted one; CutMix draws from
    the Keras layer's seed generator, which is not part of the backup (like
    the other image augmentations of ``--finetune``). Keras' ``MixUp`` layer is not used for features: it
    reshapes lam to [B, 1, 1, 1] (images) and mixes -1 labels linearly.

    Reference: ``torchreid/engine/engine.py::_apply_batch_augmentation``
    (one lam per batch, from ``np.random.beta``; here one per example, as
    the Keras layers do).

    Args:
        dataset: ``tf.data.Dataset`` of ``(x, y)`` batches, y in {1, 0, -1}.
        mode: ``"mixup"`` or ``"cutmix"``.
        alpha: float > 0, the Beta parameter (CutMix: ``factor``).
        seed: int.
        start_step: int, the step of the stream's first batch.
        probability: float in [0, 1].

    Returns:
        ``tf.data.Dataset`` of ``(x, y)`` with y float32.

    Raises:
        ValueError: unknown ``mode`` or alpha <= 0.
    """
    if mode not in ("mixup", "cutmix"):
        raise ValueError(f"mix_batches: mode must be 'mixup' or 'cutmix', got {mode!r}")
    if not float(alpha) > 0:
        raise ValueError(f"mix_batches: alpha must be > 0, got {alpha}")
    alpha = float(alpha)
    cutmix = keras.layers.CutMix(factor=alpha, seed=int(seed)) if mode == "cutmix" else None

    def mix(step, xy):
        x, y = xy
        if not x.dtype.is_floating:      # uint8 images: mix in float32
            x = tf.cast(x, tf.float32)
        key = tf.stack([tf.cast(seed, tf.int64), step])
        key = tf.cast(key % (2 ** 31 - 1), tf.int32)
        k_perm, k_lam, k_use = tf.unstack(tf.random.experimental.stateless_split(key, 3))
        b = tf.shape(x)[0]
        if cutmix is not None:
            # the layer draws box, lam and permutation from its own seed generator; the targets use
            # the same permutation
            t = cutmix.get_random_transformation(x, training=True)
            perm = tf.cast(t["permutation_order"], tf.int32)
            x_mixed = tf.cast(cutmix.transform_images(x, t, training=True), x.dtype)
            # lam = the fraction of pixels kept (Keras' mix_weight uses the unrounded box area; the
            # reference adjusts lam "to exactly match pixel ratio")
            lam = 1.0 - tf.reduce_mean(tf.cast(t["batch_masks"], tf.float32), axis=[1, 2, 3])
        else:
            perm = tf.argsort(tf.random.stateless_uniform([b], k_perm))
            lam = _beta([b], alpha, k_lam)
            lam_x = tf.reshape(tf.cast(lam, x.dtype), tf.concat([[b], tf.ones([tf.rank(x) - 1], tf.int32)], 0))
            x_mixed = lam_x * x + (1 - lam_x) * tf.gather(x, perm)
        y_mixed = mix_targets(y, tf.gather(y, perm), lam)
        use = tf.random.stateless_uniform([], k_use) < probability
        return (tf.where(use, x_mixed, x), tf.where(use, y_mixed, tf.cast(y, tf.float32)))

    steps = tf.data.Dataset.counter(start=int(start_step), dtype=tf.int64)
    return tf.data.Dataset.zip((steps, dataset)).map(mix, num_parallel_calls=tf.data.AUTOTUNE,
                                                     deterministic=True)
