"""Train LESA (Huynh & Elhamifar, CVPR 2020) on a feature store.

The loop is a custom ``tf.distribute`` loop (MirroredStrategy over all GPUs, or
over N logical CPUs with ``cpu_replicas``): per-replica losses are scaled so
that they SUM to the single-device loss (METHODS.md §1.3; the span term via a
cross-replica sum of squares, see :mod:`mll_tf.losses.lesa_loss`). Training
runs in *rounds*: an epoch, or ``eval_every`` steps (the reference's 4000
iterations) up to ``max_steps``. Each round ends with a validation pass,
TensorBoard scalars, the adaptive learning-rate update (``lr_schedule
adaptive``), a checkpoint (``--resume`` restarts from the next round) and,
when the monitored metric is at least the best so far, ``best.keras`` (the
reference's ``model_ES``).

Run directory layout::

    config.yaml            resolved configuration
    label_split.json       seen / unseen / excluded labels and the rule
    label_embeddings.npz   names + raw word vectors of every seen/unseen label
    checkpoints/           tf.train.Checkpoint (model, optimizer, rounds done, best)
    lr_schedule.json       adaptive learning-rate state at the last checkpoint
    best.keras, last.keras Keras models (best by cfg.monitor; last round)
    history.csv            one row per round
    tb/                    TensorBoard event files
"""

import os
import time

import numpy as np
import tensorflow as tf
import keras

from mll_tf.data.feature_store import make_dataset, read_manifest
from mll_tf.data.word_vectors import label_embeddings, load_word_vectors
from mll_tf.losses.lesa_loss import LESALoss, attention_span_sum_of_squares
from mll_tf.metrics.report import multilabel_report
from mll_tf.models.lesa import LESA
from mll_tf.protocols import eval_k_for
from mll_tf.training.run_io import (append_history, finish_run, log_scalars, restore_schedule,
                                    save_schedule)
from mll_tf.visualization.attention import attention_examples, log_model_attention
from mll_tf.training.distribute import make_strategy
from mll_tf.training.zsl_split import LabelSplit, choose_unseen_labels

EXTRACT_HINT = ("python extract/build_tfrecords.py --dataset {dataset} --backbone {backbone} "
                "--input-size {input_size}")


class MissingFeaturesError(FileNotFoundError):
    """The feature store of a split does not exist; the message says which command makes it."""


def read_split_manifest(cfg, split):
    """Manifest of ``split`` or :class:`MissingFeaturesError` with the extraction command."""
    path = cfg.features_dir(split)
    if not os.path.exists(os.path.join(path, "manifest.json")):
        cmd = EXTRACT_HINT.format(dataset=cfg.dataset, backbone=cfg.backbone, input_size=cfg.input_size)
        raise MissingFeaturesError(
            f"no {split!r} features at {path}; make them with:\n    {cmd} --out-dir {cfg.features_root}")
    return read_manifest(path)


def _official_split(manifest, missing):
    """LabelSplit from an adapter's published seen/unseen lists (``extra["label_split"]``)."""
    ls = manifest.extra["label_split"]
    unseen = list(ls.get("unseen_eval") or ls["unseen"])
    excluded = {n: "no word vector" for n in missing}
    return LabelSplit(
        seen=[n for n in ls["seen"] if n not in excluded],
        unseen=[n for n in unseen if n not in excluded],
        excluded=excluded,
        rule=(f"official split of {manifest.dataset} ({len(ls['seen'])} seen, {len(unseen)} unseen "
              f"evaluated); labels without a word vector excluded"))


def prepare_labels(cfg, manifest, run_dir):
    """Choose (or reload) the seen/unseen split and the word vectors; save both in ``run_dir``.

    A dataset with a published split (NUS-WIDE's 925/81, OpenImages' 7186/400,
    stored by the adapter as ``manifest.extra["label_split"]``) uses it; the
    word vectors are looked up with ``extra["label_text"]`` when the label
    names are ids (OpenImages MIDs). Otherwise the unseen labels are chosen by
    :func:`mll_tf.training.zsl_split.choose_unseen_labels`.

    Returns:
        (LabelSplit, dict label name -> float32 [d_w] raw word vector).
    """
    split_path = os.path.join(run_dir, "label_split.json")
    emb_path = os.path.join(run_dir, "label_embeddings.npz")
    if os.path.exists(split_path) and os.path.exists(emb_path):
        split = LabelSplit.load(split_path)
        z = np.load(emb_path)
        return split, dict(zip(z["names"].tolist(), z["vectors"]))
    names = manifest.label_names
    texts = manifest.extra.get("label_text") or names
    if len(texts) != len(names):
        raise ValueError(f"{manifest.dataset}: extra['label_text'] has {len(texts)} entries for "
                         f"{len(names)} labels")
    wv = load_word_vectors(cfg.word_vectors, texts)
    emb, missing_text = label_embeddings(texts, wv)
    missing_text = set(missing_text)
    missing = [n for n, t in zip(names, texts) if t in missing_text]
    if missing:
        shown = ", ".join(missing[:30]) + (f" ... ({len(missing)} in all)" if len(missing) > 30 else "")
        print(f"labels without a word vector in {wv.source} (left out): {shown}")
    if manifest.extra.get("label_split"):
        split = _official_split(manifest, missing)
    else:
        counts = manifest.extra.get("label_counts_by_split", {})
        split = choose_unseen_labels(names, missing, counts.get("train", {}), counts.get("test", {}),
                                     unseen_fraction=cfg.unseen_fraction,
                                     min_test_images=cfg.min_test_images)
    split.save(split_path)
    keep = [i for i, n in enumerate(names) if n not in split.excluded]
    np.savez(emb_path, names=np.array([names[i] for i in keep]), vectors=emb[keep],
             source=np.array(wv.source))
    return split, {names[i]: emb[i] for i in keep}


def column_dataset(split_dir, columns, batch_size, **kw):
    """Feature-store dataset with the label columns reordered/selected.

    Args:
        split_dir: str, a split folder of the feature store.
        columns: list of int, label columns to keep, in output order (e.g.
            seen columns, or unseen + seen for GZSL).
        batch_size: int.
        **kw: passed to :func:`mll_tf.data.feature_store.make_dataset`.

    Returns:
        ``tf.data.Dataset`` of ``(features [B, R, D] float32, labels [B, len(columns)] int8)``.

    Raises:
        FileNotFoundError: if the split has no manifest.
    """
    cols = tf.constant(columns, tf.int32)
    ds = make_dataset(split_dir, batch_size, **kw)
    return ds.map(lambda f, y: (f, tf.gather(y, cols, axis=1)), num_parallel_calls=tf.data.AUTOTUNE)


def predict_logits(model, dataset, label_vectors=None):
    """Run LESA over a dataset.

    Args:
        model: :class:`mll_tf.models.lesa.LESA`.
        dataset: yields ``(features [B, R, D] float32, labels [B, C] int8)``.
        label_vectors: optional float32 ``[C, d_w]`` raw word vectors whose
            scores are wanted (default: the model's seen labels). Their order
            must match the label columns of ``dataset``.

    Returns:
        (scores float32 ``[N, C]`` LESA logits (max over heads, unbounded),
        labels int8 ``[N, C]``), in dataset order.
    """
    vecs = None if label_vectors is None else tf.constant(label_vectors, tf.float32)

    spec = dataset.element_spec[0]
    fwd = tf.function(lambda f: model(f, training=False, label_embeddings=vecs)["logits"],
                      input_signature=[tf.TensorSpec([None] + spec.shape[1:].as_list(), spec.dtype)])
    scores, labels = [], []
    for f, y in dataset:
        scores.append(fwd(f).numpy())
        labels.append(y.numpy())
    return np.concatenate(scores), np.concatenate(labels)


def build_optimizer(cfg):
    """Keras optimizer named by ``cfg.optimizer``.

    ``rmsprop_tf1`` is TF1 ``RMSPropOptimizer(lr, decay=0.9, momentum=0.9,
    epsilon=1.0)`` exactly (mean-square slots start at ones; METHODS.md §6.1),
    as the LESA/IMCL references train; ``rmsprop`` is Keras' RMSprop with the
    same hyper-parameters (slots start at zeros); ``adam`` is Adam; ``adamw``
    is AdamW with ``cfg.weight_decay`` on kernels only (CSL: Adam with weight
    decay on non-bias, non-1-D parameters, METHODS.md §3.1).

    Raises:
        ValueError: naming the flag for an unknown optimizer.
    """
    if cfg.optimizer == "rmsprop_tf1":
        from mll_tf.optimizers import TF1RMSprop
        return TF1RMSprop(cfg.learning_rate, rho=0.9, momentum=0.9, epsilon=1.0)
    if cfg.optimizer == "rmsprop":
        # TF1 RMSPropOptimizer(lr, decay=0.9, momentum=0.9, epsilon=1.0) semantics (METHODS.md §6.1),
        # except that Keras initialises the mean-square slots with zeros instead of ones.
        return keras.optimizers.RMSprop(cfg.learning_rate, rho=0.9, momentum=0.9, epsilon=1.0)
    if cfg.optimizer == "adamw":
        opt = keras.optimizers.AdamW(cfg.learning_rate, weight_decay=cfg.weight_decay)
        opt.exclude_from_weight_decay(var_names=["bias", "beta", "gamma"])
        return opt
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(cfg.learning_rate)
    raise ValueError(f"--optimizer: unknown {cfg.optimizer!r} (adam, adamw, rmsprop, rmsprop_tf1)")


def build_lr_schedule(cfg):
    """The per-validation learning-rate rule named by ``cfg.lr_schedule``.

    Returns:
        None for ``constant``, else an
        :class:`mll_tf.training.schedules.AdaptiveLearningRate` (LESA's
        ``LearningRate.adapt``: EMA of the monitored metric, x ``lr_decay`` on a
        drop, ``lr_patience`` evaluations between decays, floor
        ``lr_floor_fraction * learning_rate``; METHODS.md §1.4).

    Raises:
        ValueError: naming the flag for an unknown schedule.
    """
    if cfg.lr_schedule == "constant":
        return None
    if cfg.lr_schedule == "adaptive":
        from mll_tf.training.schedules import AdaptiveLearningRate
        return AdaptiveLearningRate(cfg.learning_rate, signal_strength=cfg.lr_signal, decay=cfg.lr_decay,
                                    patience=cfg.lr_patience, floor_fraction=cfg.lr_floor_fraction)
    raise ValueError(f"--lr-schedule: unknown {cfg.lr_schedule!r} (constant, adaptive)")


def check_monitor(cfg):
    """Raise ValueError (naming ``--monitor``) if the trainer never computes ``cfg.monitor``."""
    known = {"mAP"} | {f"{m}@{k}" for k in cfg.eval_k for m in ("P", "R", "F1")}
    parts = cfg.monitor.split("/")
    if len(parts) != 3 or parts[0] != "val" or parts[1] not in ("seen", "zsl") or parts[2] not in known:
        raise ValueError(f"--monitor {cfg.monitor!r}: expected val/<seen|zsl>/<{'|'.join(sorted(known))}> "
                         f"(eval_k={list(cfg.eval_k)})")


def make_train_step(strategy, model, optimizer, loss_fn, global_batch_size, jit_compile=False):
    """A ``tf.function`` running one distributed LESA step.

    Args:
        strategy: the ``tf.distribute.Strategy`` the model and optimizer were
            built under.
        model: :class:`mll_tf.models.lesa.LESA`.
        optimizer: a built Keras optimizer.
        loss_fn: :class:`mll_tf.losses.lesa_loss.LESALoss`.
        global_batch_size: int, examples per step over all replicas.

    Returns:
        ``train_step(batch)`` taking a distributed ``(features [B,R,D] float32,
        labels [B,S] int8)`` batch and returning a dict of scalar loss terms
        summed over replicas, equal to the single-device loss of the whole
        batch (BatchNorm is synchronised; the span term is split exactly).
    """

    def step_fn(features, labels):
        with tf.GradientTape() as tape:
            out = model(features, training=True)
            ctx = tf.distribute.get_replica_context()
            s_local = attention_span_sum_of_squares(out["attention_logits"])
            s_total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.stop_gradient(s_local))
            terms = loss_fn(labels, out, global_batch_size=global_batch_size,
                            span_sum_of_squares=s_total)
        grads = tape.gradient(terms["total"], model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return terms

    @tf.function(jit_compile=jit_compile)
    def train_step(batch):
        per_replica = strategy.run(step_fn, args=batch)
        return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                for k, v in per_replica.items()}

    return train_step


def train_lesa(cfg, resume=False, progress=True):
    """Train LESA as configured; returns the final validation metrics (dict).

    Raises:
        MissingFeaturesError: when the feature store is missing (names the command).
    """
    run_dir = cfg.run_dir
    os.makedirs(run_dir, exist_ok=True)
    train_m = read_split_manifest(cfg, "train")
    for other in ("val", "test"):  # fail now, not after training, if a split is missing
        read_split_manifest(cfg, other)
    if not cfg.eval_k:
        cfg.eval_k = eval_k_for(cfg.dataset, train_m.extra)
    if not cfg.monitor:
        cfg.monitor = "val/seen/F1@5" if 5 in cfg.eval_k else f"val/seen/F1@{cfg.eval_k[-1]}"
    check_monitor(cfg)
    split, vectors = prepare_labels(cfg, train_m, run_dir)
    seen_idx, unseen_idx = split.indices(train_m.label_names)
    seen_vecs = np.stack([vectors[n] for n in split.seen]).astype(np.float32)
    unseen_vecs = np.stack([vectors[n] for n in split.unseen]).astype(np.float32)
    cfg.save(os.path.join(run_dir, "config.yaml"))
    print(f"labels: {len(split.seen)} seen, {len(split.unseen)} unseen, {len(split.excluded)} excluded "
          f"-> {run_dir}/label_split.json")

    keras.utils.set_random_seed(cfg.seed)  # weight initialisation; shuffling uses cfg.seed + start round
    strategy = make_strategy(cfg.cpu_replicas)
    replicas = strategy.num_replicas_in_sync
    print(f"strategy: {type(strategy).__name__}, replicas: {replicas} "
          f"({', '.join(strategy.extended.worker_devices)})")
    gb = cfg.batch_size
    if gb % replicas:
        raise ValueError(f"--batch-size {gb} must be divisible by the {replicas} replicas")
    steps_per_round = cfg.steps_per_round(train_m.num_examples)
    if steps_per_round == 0:
        raise ValueError(f"train split has {train_m.num_examples} examples < batch size {gb}")
    num_rounds = cfg.num_rounds(train_m.num_examples)
    R, D = train_m.feature_shape
    grid = tuple(train_m.feature_grid) if train_m.feature_grid else None

    with strategy.scope():
        model = LESA(label_embeddings=seen_vecs, num_heads=cfg.num_heads,
                     conv_channels=cfg.conv_channels, grid_size=grid)
        model(tf.zeros([1, R, D]), training=False)
        optimizer = build_optimizer(cfg)
        optimizer.build(model.trainable_variables)
    loss_fn = LESALoss(distribution_weight=cfg.distribution_weight, global_weight=cfg.global_weight,
                       span_weight=cfg.span_weight, margin=cfg.margin)
    schedule = build_lr_schedule(cfg)

    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False)  # validation rounds done
    best_var = tf.Variable(-np.inf, dtype=tf.float64, trainable=False)
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_var, best=best_var)
    manager = tf.train.CheckpointManager(ckpt, os.path.join(run_dir, "checkpoints"), max_to_keep=2)
    if resume:
        if manager.latest_checkpoint is None:
            print(f"--resume: no checkpoint in {run_dir}/checkpoints; starting from scratch")
        else:
            ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
            print(f"resumed from {manager.latest_checkpoint} (round {int(epoch_var.numpy())} done)")
            restore_schedule(run_dir, int(epoch_var.numpy()), schedule)

    train_step = make_train_step(strategy, model, optimizer, loss_fn, gb, jit_compile=cfg.jit_compile)

    val_ds = column_dataset(cfg.features_dir("val"), seen_idx + unseen_idx, 256)
    writer = tf.summary.create_file_writer(os.path.join(run_dir, "tb"))
    try:  # a few validation images whose attention maps go to TensorBoard after each round
        vis = attention_examples(cfg.features_dir("val"), 4)
    except (ValueError, OSError, KeyError) as e:  # no extra["root"], images moved, ...
        vis = None
        print(f"attention images in TensorBoard disabled: {e}")
    metrics = {}
    start_round = int(epoch_var.numpy())
    # One repeated input pipeline for the whole run: re-creating the iterator each epoch made the
    # first batch of an epoch wait ~15 s for the old iterator's background work to stop. A round is
    # `steps_per_round` batches (an epoch unless --eval-every); a resumed run reshuffles with
    # seed + start round, or, without shuffling (the reference's file order), skips the batches done.
    train_ds = column_dataset(cfg.features_dir("train"), seen_idx, gb, shuffle=cfg.shuffle,
                              shuffle_buffer=cfg.shuffle_buffer, seed=cfg.seed + start_round,
                              cache=cfg.cache, repeat=True, drop_remainder=True)
    if not cfg.shuffle and start_round:
        train_ds = train_ds.skip(start_round * steps_per_round)
    batches = iter(strategy.experimental_distribute_dataset(train_ds))
    for rnd in range(start_round, num_rounds):
        n_steps = steps_per_round
        if cfg.max_steps > 0:
            n_steps = min(steps_per_round, cfg.max_steps - rnd * steps_per_round)
        bar = keras.utils.Progbar(n_steps, stateful_metrics=None, verbose=1 if progress else 0)
        t0 = time.perf_counter()
        sums = {}
        for i in range(n_steps):
            terms = {k: float(v) for k, v in train_step(next(batches)).items()}
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            step = rnd * steps_per_round + i + 1
            if step % cfg.log_every == 0:
                with writer.as_default(step=step):
                    for k, v in terms.items():
                        tf.summary.scalar(f"loss/{k}", v)
                    tf.summary.scalar("lr", float(tf.convert_to_tensor(optimizer.learning_rate)))
            bar.update(i + 1, [("loss", terms["total"]), ("rank", terms["ranking"])])
        seconds = time.perf_counter() - t0
        # validation: seen labels (the reference's monitor) and zero-shot on unseen labels
        scores, labels = predict_logits(model, val_ds, np.concatenate([seen_vecs, unseen_vecs]))
        ns = len(seen_idx)
        seen_rep, _ = multilabel_report(scores[:, :ns], labels[:, :ns], cfg.eval_k)
        zsl_rep, _ = multilabel_report(scores[:, ns:], labels[:, ns:], cfg.eval_k)
        metrics = {f"val/seen/{k}": v for k, v in seen_rep.items() if not k.startswith("num_")}
        metrics.update({f"val/zsl/{k}": v for k, v in zsl_rep.items() if not k.startswith("num_")})
        metrics.update({f"train/{k}": v / n_steps for k, v in sums.items()})
        metrics["train/examples_per_sec"] = n_steps * gb / seconds
        metrics["lr"] = float(tf.convert_to_tensor(optimizer.learning_rate))
        step = rnd * steps_per_round + n_steps
        log_scalars(writer, step, metrics)
        if vis is not None and vis.image_ids:
            log_model_attention(writer, step, model, vis, split.seen, split.unseen, unseen_vecs, k=5)
        epoch_var.assign(rnd + 1)
        improved = metrics[cfg.monitor] >= best_var.numpy()  # ">=": the reference saves on ties too
        if improved:
            best_var.assign(metrics[cfg.monitor])
            model.save(os.path.join(run_dir, "best.keras"))
        if schedule is not None:  # adapt after the evaluation, as LearningRate.adapt is called
            optimizer.learning_rate.assign(schedule.adapt(metrics[cfg.monitor]))
            save_schedule(run_dir, rnd + 1, schedule)
        manager.save(checkpoint_number=rnd + 1)
        model.save(os.path.join(run_dir, "last.keras"))
        append_history(run_dir, rnd + 1, step, metrics)
        ks, nan = cfg.eval_k, float("nan")  # F1@K is absent when K exceeds the number of labels
        print(f"round {rnd + 1}/{num_rounds} (step {step}): loss {metrics['train/total']:.4f}  "
              f"val seen mAP {100 * metrics['val/seen/mAP']:.2f} F1@{ks[-1]} "
              f"{100 * metrics.get(f'val/seen/F1@{ks[-1]}', nan):.2f}  "
              f"val ZSL mAP {100 * metrics['val/zsl/mAP']:.2f} F1@{ks[0]} "
              f"{100 * metrics.get(f'val/zsl/F1@{ks[0]}', nan):.2f}  "
              f"lr {metrics['lr']:.3g} ({metrics['train/examples_per_sec']:.0f} ex/s)"
              f"{'  *best' if improved else ''}")
    return finish_run(run_dir, metrics)
