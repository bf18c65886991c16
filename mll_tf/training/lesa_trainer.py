"""Train LESA (Huynh & Elhamifar, CVPR 2020) on a feature store.

The loop is a custom ``tf.distribute`` loop (MirroredStrategy over all GPUs, or
over N logical CPUs with ``cpu_replicas``): per-replica losses are scaled so
that they SUM to the single-device loss (METHODS.md §1.3; the span term via a
cross-replica sum of squares, see :mod:`mll_tf.losses.lesa_loss`). Each epoch
ends with a validation pass, TensorBoard scalars, a checkpoint (``--resume``
restarts from the next epoch) and, when the monitored metric improves,
``best.keras``.

Run directory layout::

    config.yaml            resolved configuration
    label_split.json       seen / unseen / excluded labels and the rule
    label_embeddings.npz   names + raw word vectors of every seen/unseen label
    checkpoints/           tf.train.Checkpoint (model, optimizer, epoch, best)
    best.keras, last.keras Keras models (best by cfg.monitor; last epoch)
    history.csv            one row per epoch
    tb/                    TensorBoard event files
"""

import csv
import json
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


def prepare_labels(cfg, manifest, run_dir):
    """Choose (or reload) the seen/unseen split and the word vectors; save both in ``run_dir``."""
    split_path = os.path.join(run_dir, "label_split.json")
    emb_path = os.path.join(run_dir, "label_embeddings.npz")
    if os.path.exists(split_path) and os.path.exists(emb_path):
        split = LabelSplit.load(split_path)
        z = np.load(emb_path)
        return split, dict(zip(z["names"].tolist(), z["vectors"]))
    names = manifest.label_names
    wv = load_word_vectors(cfg.word_vectors, names)
    emb, missing = label_embeddings(names, wv)
    if missing:
        print(f"labels without a word vector in {wv.source} (left out): {', '.join(missing)}")
    counts = manifest.extra.get("label_counts_by_split", {})
    split = choose_unseen_labels(names, missing, counts.get("train", {}), counts.get("test", {}),
                                 unseen_fraction=cfg.unseen_fraction, min_test_images=cfg.min_test_images)
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
    """Keras optimizer named by ``cfg.optimizer`` ("rmsprop" or "adam").

    Raises:
        ValueError: naming the flag for an unknown optimizer.
    """
    if cfg.optimizer == "rmsprop":
        # TF1 RMSPropOptimizer(lr, decay=0.9, momentum=0.9, epsilon=1.0) semantics (METHODS.md §6.1),
        # except that Keras initialises the mean-square slots with zeros instead of ones.
        return keras.optimizers.RMSprop(cfg.learning_rate, rho=0.9, momentum=0.9, epsilon=1.0)
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(cfg.learning_rate)
    raise ValueError(f"--optimizer: unknown {cfg.optimizer!r} (rmsprop, adam)")


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
    split, vectors = prepare_labels(cfg, train_m, run_dir)
    seen_idx, unseen_idx = split.indices(train_m.label_names)
    seen_vecs = np.stack([vectors[n] for n in split.seen]).astype(np.float32)
    unseen_vecs = np.stack([vectors[n] for n in split.unseen]).astype(np.float32)
    cfg.save(os.path.join(run_dir, "config.yaml"))
    print(f"labels: {len(split.seen)} seen, {len(split.unseen)} unseen, {len(split.excluded)} excluded "
          f"-> {run_dir}/label_split.json")

    keras.utils.set_random_seed(cfg.seed)  # weight initialisation; shuffling uses cfg.seed + start epoch
    strategy = make_strategy(cfg.cpu_replicas)
    replicas = strategy.num_replicas_in_sync
    print(f"strategy: {type(strategy).__name__}, replicas: {replicas} "
          f"({', '.join(strategy.extended.worker_devices)})")
    gb = cfg.batch_size
    if gb % replicas:
        raise ValueError(f"--batch-size {gb} must be divisible by the {replicas} replicas")
    steps_per_epoch = train_m.num_examples // gb
    if steps_per_epoch == 0:
        raise ValueError(f"train split has {train_m.num_examples} examples < batch size {gb}")
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

    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False)
    best_var = tf.Variable(-np.inf, dtype=tf.float64, trainable=False)
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_var, best=best_var)
    manager = tf.train.CheckpointManager(ckpt, os.path.join(run_dir, "checkpoints"), max_to_keep=2)
    if resume:
        if manager.latest_checkpoint is None:
            print(f"--resume: no checkpoint in {run_dir}/checkpoints; starting from scratch")
        else:
            ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
            print(f"resumed from {manager.latest_checkpoint} (epoch {int(epoch_var.numpy())} done)")

    train_step = make_train_step(strategy, model, optimizer, loss_fn, gb, jit_compile=cfg.jit_compile)

    val_ds = column_dataset(cfg.features_dir("val"), seen_idx + unseen_idx, 256)
    writer = tf.summary.create_file_writer(os.path.join(run_dir, "tb"))
    hist_path = os.path.join(run_dir, "history.csv")
    metrics = {}
    start_epoch = int(epoch_var.numpy())
    # One repeated, reshuffled-every-pass input pipeline for the whole run: re-creating the iterator each
    # epoch made the first batch of an epoch wait ~15 s for the old iterator's background work to stop.
    # An epoch is `steps_per_epoch` batches; a resumed run reshuffles with seed + start epoch.
    train_ds = column_dataset(cfg.features_dir("train"), seen_idx, gb, shuffle=True,
                              shuffle_buffer=cfg.shuffle_buffer, seed=cfg.seed + start_epoch,
                              cache=cfg.cache, repeat=True, drop_remainder=True)
    batches = iter(strategy.experimental_distribute_dataset(train_ds))
    for epoch in range(start_epoch, cfg.epochs):
        bar = keras.utils.Progbar(steps_per_epoch, stateful_metrics=None, verbose=1 if progress else 0)
        t0 = time.perf_counter()
        sums = {}
        for i in range(steps_per_epoch):
            terms = {k: float(v) for k, v in train_step(next(batches)).items()}
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            step = epoch * steps_per_epoch + i + 1
            if step % cfg.log_every == 0:
                with writer.as_default(step=step):
                    for k, v in terms.items():
                        tf.summary.scalar(f"loss/{k}", v)
                    tf.summary.scalar("lr", float(tf.convert_to_tensor(optimizer.learning_rate)))
            bar.update(i + 1, [("loss", terms["total"]), ("rank", terms["ranking"])])
        seconds = time.perf_counter() - t0
        n_steps = i + 1
        # validation: seen labels (the reference's monitor) and zero-shot on unseen labels
        scores, labels = predict_logits(model, val_ds, np.concatenate([seen_vecs, unseen_vecs]))
        ns = len(seen_idx)
        seen_rep, _ = multilabel_report(scores[:, :ns], labels[:, :ns], cfg.eval_k)
        zsl_rep, _ = multilabel_report(scores[:, ns:], labels[:, ns:], cfg.eval_k)
        metrics = {f"val/seen/{k}": v for k, v in seen_rep.items() if not k.startswith("num_")}
        metrics.update({f"val/zsl/{k}": v for k, v in zsl_rep.items() if not k.startswith("num_")})
        metrics.update({f"train/{k}": v / n_steps for k, v in sums.items()})
        metrics["train/examples_per_sec"] = n_steps * gb / seconds
        step = (epoch + 1) * steps_per_epoch
        with writer.as_default(step=step):
            for k, v in metrics.items():
                tf.summary.scalar(k, v)
        writer.flush()
        epoch_var.assign(epoch + 1)
        improved = metrics[cfg.monitor] > best_var.numpy()
        if improved:
            best_var.assign(metrics[cfg.monitor])
            model.save(os.path.join(run_dir, "best.keras"))
        manager.save(checkpoint_number=epoch + 1)
        model.save(os.path.join(run_dir, "last.keras"))
        new = not os.path.exists(hist_path)
        with open(hist_path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["epoch"] + sorted(metrics))
            if new:
                w.writeheader()
            w.writerow({"epoch": epoch + 1, **metrics})
        print(f"epoch {epoch + 1}/{cfg.epochs}: loss {metrics['train/total']:.4f}  "
              f"val seen mAP {100 * metrics['val/seen/mAP']:.2f} F1@5 {100 * metrics['val/seen/F1@5']:.2f}  "
              f"val ZSL mAP {100 * metrics['val/zsl/mAP']:.2f} F1@3 {100 * metrics['val/zsl/F1@3']:.2f}  "
              f"({metrics['train/examples_per_sec']:.0f} ex/s){'  *best' if improved else ''}")
    final_path = os.path.join(run_dir, "final_metrics.json")
    if metrics:
        with open(final_path, "w") as f:
            json.dump(metrics, f, indent=2)
    else:
        print(f"all {cfg.epochs} epochs already done in {run_dir}; nothing to train")
        if os.path.exists(final_path):
            with open(final_path) as f:
                metrics = json.load(f)
    return metrics
