"""Train a multi-label head with partial labels: CSL, ASL, Ignore, Negative, logistic.

One trainer for the partial-label methods (``--method csl|asl|ignore|negative|
logistic``). They share the model (:class:`mll_tf.models.heads.MultiLabelHead`
on stored features, or :class:`~mll_tf.models.heads.FineTuneClassifier` with
``--finetune``) and differ in the loss:

=========  =======================================================  ==============
method     loss (METHODS.md)                                         reduction
=========  =======================================================  ==============
csl        PartialAsymmetricLoss, mode ``selective`` (§3.2)          per-image sum
asl        AsymmetricLoss, unknown labels as negatives (§4.2)        per-image sum
ignore     binary cross-entropy, unknown entries weight 0            per-image sum
negative   binary cross-entropy, unknown entries as negatives        per-image sum
logistic   IMCL baseline: BCE on observed entries, divided by the    sum / #observed
           number of observed entries (TF1 SUM_BY_NONZERO_WEIGHTS)
=========  =======================================================  ==============

"per-image sum": the references sum over batch and classes; here the sum over
classes is averaged over the global batch, so the learning rate does not
depend on the batch size (the gradient is the reference's divided by B).

``--partial-labels fpc:N`` / ``rps:p`` hides training labels with a seed
(:mod:`mll_tf.data.simulation`) and writes the kept-label statistics to
``partial_labels.json``. Every run estimates the class prior (running mean of
the sigmoid outputs over the training batches, METHODS.md §3.2 ComputePrior)
and writes it to ``prior.csv`` keyed by class name: the prior of an
``ignore`` run is what ``--method csl --prior-path`` expects.

Run directory: ``config.yaml``, ``checkpoints/``, ``best.keras``,
``last.keras``, ``history.csv``, ``tb/``, ``final_metrics.json``,
``prior.csv``, ``partial_labels.json``.
"""

import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

from mll_tf.data.feature_store import make_dataset, read_manifest
from mll_tf.metrics.report import partial_label_report
from mll_tf.models.heads import MultiLabelHead
from mll_tf.training.distribute import make_strategy
from mll_tf.training.lesa_trainer import build_lr_schedule, build_optimizer, read_split_manifest
from mll_tf.training.run_io import (append_history, finish_run, log_scalars, restore_schedule,
                                    save_schedule, simulate_train_labels)

#: Method -> default loss settings (a config value >= 0 overrides a default).
METHOD_DEFAULTS = {
    # CSL README (RPS): gamma_pos 0, gamma_neg 1, gamma_unann 4, selective, topk 5.
    "csl": dict(partial_mode="selective", gamma_pos=0.0, gamma_neg=1.0, gamma_unann=4.0, loss_clip=0.0),
    # ASL (Ridnik et al.) defaults gamma_neg 4, clip 0.05; CSL's "Negative-ASL" baseline.
    "asl": dict(partial_mode="negative", gamma_pos=0.0, gamma_neg=4.0, gamma_unann=4.0, loss_clip=0.05),
    "ignore": dict(partial_mode="ignore", gamma_pos=0.0, gamma_neg=0.0, gamma_unann=0.0, loss_clip=0.0),
    "negative": dict(partial_mode="negative", gamma_pos=0.0, gamma_neg=0.0, gamma_unann=0.0, loss_clip=0.0),
    "logistic": dict(partial_mode="ignore", gamma_pos=0.0, gamma_neg=0.0, gamma_unann=0.0, loss_clip=0.0),
}


def resolved_loss_settings(cfg):
    """The loss settings of ``cfg.method`` with the config's explicit values applied.

    Raises:
        ValueError: unknown method (names ``--method``).
    """
    if cfg.method not in METHOD_DEFAULTS:
        raise ValueError(f"--method {cfg.method!r}: not a partial-label method ({sorted(METHOD_DEFAULTS)})")
    out = dict(METHOD_DEFAULTS[cfg.method])
    for k in ("gamma_pos", "gamma_neg", "gamma_unann", "loss_clip"):
        v = getattr(cfg, k)
        if v is not None and v >= 0:
            out[k] = float(v)
    if cfg.partial_mode:
        out["partial_mode"] = cfg.partial_mode
    return out


def build_loss(cfg, class_names):
    """The per-example loss of ``cfg.method`` (Keras loss with reduction "none").

    Returns:
        (loss, normalizer): ``loss(y_true [B,C], logits [B,C]) -> [B]``;
        ``normalizer`` is ``"batch"`` (divide the summed loss by the global
        batch size) or ``"observed"`` (by the global number of known labels).

    Raises:
        ValueError: an unknown method or mode, or a prior file that does not
            match the class names (from :func:`mll_tf.training.priors.load_prior_csv`).
    """
    from mll_tf.losses.partial import AsymmetricLoss, MaskedBinaryCrossentropy, PartialAsymmetricLoss

    s = resolved_loss_settings(cfg)
    m = cfg.method
    if m == "csl" or (m == "asl" and s["partial_mode"] not in ("negative", "ignore")):
        prior = None
        if cfg.prior_path:
            from mll_tf.training.priors import load_prior_csv
            prior = load_prior_csv(cfg.prior_path, class_names)
        elif s["partial_mode"] == "selective":
            print("csl: no --prior-path; the selective loss uses only the likelihood top-k rule "
                  "(train --method ignore first and pass its prior.csv for the class-prior rule)")
        loss = PartialAsymmetricLoss(
            mode=s["partial_mode"], gamma_pos=s["gamma_pos"], gamma_neg=s["gamma_neg"],
            gamma_unann=s["gamma_unann"], clip=s["loss_clip"], likelihood_topk=cfg.likelihood_topk,
            prior=prior, prior_threshold=cfg.prior_threshold, reduction="none")
        return loss, "batch"
    if m == "asl":
        return AsymmetricLoss(gamma_pos=s["gamma_pos"], gamma_neg=s["gamma_neg"], clip=s["loss_clip"],
                              ignore_unknown=s["partial_mode"] == "ignore", reduction="none"), "batch"
    if m in ("ignore", "negative"):
        return MaskedBinaryCrossentropy(mode=m, reduction="none"), "batch"
    if m == "logistic":
        return MaskedBinaryCrossentropy(mode="ignore", reduction="none"), "observed"
    raise ValueError(f"--method {m!r}: not a partial-label method")


def read_ids_and_labels(split_dir, batch_size=1024):
    """All image ids (list of str) and labels (int8 ``[N, C]``) of a split, in store order."""
    ids, labels = [], []
    for b in make_dataset(split_dir, batch_size, as_dict=True):
        ids.extend(x.decode() for x in b["image_id"].numpy())
        labels.append(b["labels"].numpy())
    c = len(read_manifest(split_dir).label_names)
    return ids, (np.concatenate(labels) if labels else np.zeros((0, c), np.int8))


def prepare_partial_labels(cfg, split_dir, run_dir):
    """Apply ``cfg.partial_labels`` to the training labels; save the statistics.

    Returns:
        None when nothing is simulated (``none``), else ``(ids, labels int8
        [N, C] with -1 for hidden entries)``.

    Raises:
        ValueError: a malformed ``--partial-labels`` value.
    """
    ids, full = read_ids_and_labels(split_dir)
    partial = simulate_train_labels(cfg, full, run_dir)
    return None if cfg.partial_labels in ("", "none") else (ids, partial)


def train_dataset(cfg, split_dir, batch_size, partial, start_round):
    """Training pipeline ``(features, labels)``, with simulated labels looked up by image id."""
    ds = make_dataset(split_dir, batch_size, shuffle=cfg.shuffle, shuffle_buffer=cfg.shuffle_buffer,
                      seed=cfg.seed + start_round, cache=cfg.cache, repeat=True, drop_remainder=True,
                      as_dict=True)
    if partial is None:
        return ds.map(lambda b: (b["features"], b["labels"]), num_parallel_calls=tf.data.AUTOTUNE)
    ids, labels = partial
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(ids), tf.range(len(ids), dtype=tf.int64)),
        default_value=-1)
    lab = tf.constant(labels, tf.int8)

    def lookup(b):
        rows = table.lookup(b["image_id"])
        tf.debugging.assert_non_negative(rows, message="training image id missing from the simulated labels")
        return b["features"], tf.gather(lab, rows)

    return ds.map(lookup, num_parallel_calls=tf.data.AUTOTUNE)


def predict(model, dataset):
    """Logits ``[N, C]`` float32 and labels int8 ``[N, C]`` over a ``(x, labels)`` dataset."""
    spec = dataset.element_spec[0]
    key = (tuple(spec.shape[1:].as_list()), spec.dtype.name)
    cache = model.__dict__.setdefault("_mll_predict_fns", {})  # one trace per model and input shape
    if key not in cache:
        cache[key] = tf.function(lambda x: model(x, training=False),
                                 input_signature=[tf.TensorSpec([None] + list(key[0]), spec.dtype)])
    fwd = cache[key]
    scores, labels = [], []
    for x, y in dataset:
        scores.append(fwd(x).numpy())
        labels.append(y.numpy())
    return np.concatenate(scores), np.concatenate(labels)


def make_train_step(strategy, model, optimizer, loss_fn, normalizer, global_batch_size, jit_compile=False):
    """One distributed step; returns the loss and the batch sums of sigmoid outputs (for the prior).

    The per-replica loss is ``sum(per-example loss) / global batch size``
    (``normalizer="batch"``) or ``sum / global #observed`` (``"observed"``,
    the count all-reduced over replicas), so the replica losses add up to the
    single-device loss.
    """

    def step_fn(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            per_example = loss_fn(y, logits)
            total = tf.reduce_sum(per_example)
            if normalizer == "observed":
                local = tf.reduce_sum(tf.cast(tf.not_equal(y, -1), tf.float32))
                count = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, local)
                loss = total / tf.maximum(count, 1.0)
            else:
                loss = total / float(global_batch_size)
            loss_reg = loss + tf.add_n(model.losses) / strategy.num_replicas_in_sync if model.losses else loss
        grads = tape.gradient(loss_reg, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return {"loss": loss, "prob_sum": tf.reduce_sum(tf.sigmoid(logits), axis=0)}

    @tf.function(jit_compile=jit_compile)
    def train_step(batch):
        out = strategy.run(step_fn, args=batch)
        return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in out.items()}

    return train_step


def train_multilabel(cfg, resume=False, progress=True):
    """Train a partial-label method as configured; returns the last validation metrics.

    Raises:
        MissingFeaturesError: the feature store is missing (names the command).
        ValueError: bad flags (named).
    """
    from mll_tf.training.priors import save_prior_csv

    if cfg.finetune:
        from mll_tf.training.finetune import train_finetune
        return train_finetune(cfg, resume=resume, progress=progress)
    run_dir = cfg.run_dir
    os.makedirs(run_dir, exist_ok=True)
    train_m = read_split_manifest(cfg, "train")
    for other in ("val", "test"):
        read_split_manifest(cfg, other)
    names = list(train_m.label_names)
    groups = train_m.extra.get("attribute_groups")
    if not cfg.monitor:
        cfg.monitor = "val/mAP_partial"
    loss_fn, normalizer = build_loss(cfg, names)
    cfg.save(os.path.join(run_dir, "config.yaml"))
    partial = prepare_partial_labels(cfg, cfg.features_dir("train"), run_dir)

    keras.utils.set_random_seed(cfg.seed)
    strategy = make_strategy(cfg.cpu_replicas)
    gb = cfg.batch_size
    if gb % strategy.num_replicas_in_sync:
        raise ValueError(f"--batch-size {gb} must be divisible by the {strategy.num_replicas_in_sync} replicas")
    steps_per_round = cfg.steps_per_round(train_m.num_examples)
    if steps_per_round == 0:
        raise ValueError(f"train split has {train_m.num_examples} examples < batch size {gb}")
    num_rounds = cfg.num_rounds(train_m.num_examples)
    R, D = train_m.feature_shape
    C = len(names)
    with strategy.scope():
        model = MultiLabelHead(C, dropout=cfg.dropout)
        model(tf.zeros([1, R, D]), training=False)
        optimizer = build_optimizer(cfg)
        optimizer.build(model.trainable_variables)
    schedule = build_lr_schedule(cfg)
    print(f"{cfg.method}: {C} classes, {train_m.num_examples} training images, loss "
          f"{type(loss_fn).__name__} {resolved_loss_settings(cfg)}; {num_rounds} rounds of "
          f"{steps_per_round} steps on {strategy.num_replicas_in_sync} replica(s)")

    round_var = tf.Variable(0, dtype=tf.int64, trainable=False)
    best_var = tf.Variable(-np.inf, dtype=tf.float64, trainable=False)
    prior_sum = tf.Variable(tf.zeros([C], tf.float64), trainable=False)
    prior_n = tf.Variable(0.0, dtype=tf.float64, trainable=False)
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=round_var, best=best_var,
                               prior_sum=prior_sum, prior_n=prior_n)
    manager = tf.train.CheckpointManager(ckpt, os.path.join(run_dir, "checkpoints"), max_to_keep=2)
    if resume and manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        print(f"resumed from {manager.latest_checkpoint} (round {int(round_var.numpy())} done)")
        restore_schedule(run_dir, int(round_var.numpy()), schedule)
    elif resume:
        print(f"--resume: no checkpoint in {run_dir}/checkpoints; starting from scratch")

    train_step = make_train_step(strategy, model, optimizer, loss_fn, normalizer, gb, cfg.jit_compile)
    start = int(round_var.numpy())
    ds = train_dataset(cfg, cfg.features_dir("train"), gb, partial, start)
    if not cfg.shuffle and start:
        ds = ds.skip(start * steps_per_round)
    batches = iter(strategy.experimental_distribute_dataset(ds))
    val_ds = make_dataset(cfg.features_dir("val"), 256)
    writer = tf.summary.create_file_writer(os.path.join(run_dir, "tb"))
    metrics = {}
    for rnd in range(start, num_rounds):
        n_steps = steps_per_round
        if cfg.max_steps > 0:
            n_steps = min(steps_per_round, cfg.max_steps - rnd * steps_per_round)
        bar = keras.utils.Progbar(n_steps, verbose=1 if progress else 0)
        t0 = time.perf_counter()
        loss_sum = 0.0
        for i in range(n_steps):
            out = train_step(next(batches))
            loss = float(out["loss"])
            if not math.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss} at round {rnd + 1} step {i + 1}; "
                                         f"lower --learning-rate")
            loss_sum += loss
            prior_sum.assign_add(tf.cast(out["prob_sum"], tf.float64))
            prior_n.assign_add(float(gb))
            step = rnd * steps_per_round + i + 1
            if step % cfg.log_every == 0:
                with writer.as_default(step=step):
                    tf.summary.scalar("loss/total", loss)
                    tf.summary.scalar("lr", float(tf.convert_to_tensor(optimizer.learning_rate)))
            bar.update(i + 1, [("loss", loss)])
        seconds = time.perf_counter() - t0
        scores, labels = predict(model, val_ds)
        rep, _ = partial_label_report(scores, labels, cfg.threshold, groups)
        metrics = {f"val/{k}": v for k, v in rep.items() if not k.startswith("num_")}
        metrics["train/loss"] = loss_sum / max(n_steps, 1)
        metrics["train/examples_per_sec"] = n_steps * gb / seconds
        metrics["lr"] = float(tf.convert_to_tensor(optimizer.learning_rate))
        if cfg.monitor not in metrics:
            raise ValueError(f"--monitor {cfg.monitor!r} is not computed; choose one of {sorted(metrics)}")
        step = rnd * steps_per_round + n_steps
        log_scalars(writer, step, metrics)
        round_var.assign(rnd + 1)
        improved = metrics[cfg.monitor] >= best_var.numpy()
        if improved:
            best_var.assign(metrics[cfg.monitor])
            model.save(os.path.join(run_dir, "best.keras"))
        if schedule is not None:
            optimizer.learning_rate.assign(schedule.adapt(metrics[cfg.monitor]))
            save_schedule(run_dir, rnd + 1, schedule)
        save_prior_csv(os.path.join(run_dir, "prior.csv"), names,
                       (prior_sum.numpy() / max(prior_n.numpy(), 1.0)).astype(np.float32))
        manager.save(checkpoint_number=rnd + 1)
        model.save(os.path.join(run_dir, "last.keras"))
        append_history(run_dir, rnd + 1, step, metrics)
        print(f"round {rnd + 1}/{num_rounds}: loss {metrics['train/loss']:.4f}  val mAP "
              f"{100 * metrics['val/mAP']:.2f}  mAP_partial {100 * metrics['val/mAP_partial']:.2f}  "
              f"CF1 {100 * metrics['val/CF1']:.2f}  OF1 {100 * metrics['val/OF1']:.2f}  "
              f"({metrics['train/examples_per_sec']:.0f} ex/s){'  *best' if improved else ''}")
    return finish_run(run_dir, metrics)
