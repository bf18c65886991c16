"""End-to-end fine-tuning of a backbone + multi-label head on images (``--finetune``).

The same losses, partial-label simulation, validation and run directory as
:mod:`mll_tf.training.multilabel_trainer`, but the model sees images:

* input pipeline: the dataset adapter's records (paths, labels) ->
  ``tf.numpy_function`` decoding with the adapter's own ``load_image`` (so
  SVG clip-art, augmented attribute rows and photos all work) at
  ``input_size * 256/224`` -> training augmentation with Keras layers
  (random crop to ``input_size`` + horizontal flip = the usual
  random-resized-crop family, ``RandAugment`` with 2 ops of magnitude 0.5,
  and Cutout as ``RandomErasing``; CSL trains with Cutout + RandAugment,
  METHODS.md §3.1) -> batch -> prefetch; validation uses the central crop;
* mixed precision (``mixed_float16``) when a GPU is present, XLA with
  ``--jit-compile true``; on CPU both are off by default;
* weights are saved as ``best.weights.h5`` / ``last.weights.h5`` and the
  model is rebuilt from ``config.yaml`` (:func:`build_finetune_model`).
"""

import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

from mll_tf.metrics.report import partial_label_report
from mll_tf.models.heads import FineTuneClassifier
from mll_tf.training.distribute import make_strategy
from mll_tf.training.lesa_trainer import build_lr_schedule, build_optimizer
from mll_tf.training.run_io import (append_history, finish_run, log_scalars, restore_schedule,
                                    save_schedule, simulate_train_labels)


def prepare_dataset(cfg):
    """The adapter's :class:`~mll_tf.data.adapter.PreparedDataset` for ``cfg.dataset``."""
    from mll_tf.registry import get_dataset, parse_dataset_options

    kwargs = parse_dataset_options(cfg.dataset_options)
    if cfg.data_root:
        kwargs["root"] = cfg.data_root
    return get_dataset(cfg.dataset)(**kwargs).prepare()


def build_finetune_model(cfg, num_classes, weights="imagenet"):
    """Backbone (``cfg.backbone`` at ``cfg.input_size``) + head; returns (model, Backbone)."""
    from mll_tf.backbones import build_backbone

    bb = build_backbone(cfg.backbone, weights=weights, input_size=cfg.input_size)
    model = FineTuneClassifier(bb.model, num_classes, dropout=cfg.dropout)
    model(tf.zeros([1, cfg.input_size, cfg.input_size, 3]), training=False)
    return model, bb


def _augmenter(size, seed):
    return keras.Sequential([
        keras.layers.RandomCrop(size, size, seed=seed),
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandAugment(value_range=(0, 255), num_ops=2, factor=0.5, seed=seed),
        keras.layers.RandomErasing(factor=0.5, scale=(0.02, 0.2), value_range=(0, 255), seed=seed),
    ], name="augment")


def image_dataset(records, labels, load_image, size, batch_size, *, train, seed, resize_shorter=None):
    """``(images float32 [B, size, size, 3] in [0,255], labels int8 [B, C])`` from image records.

    Args:
        records: list of :class:`~mll_tf.data.adapter.ImageRecord`.
        labels: int8 ``[N, C]`` (possibly simulated partial labels), record order.
        load_image: the adapter's ``load_image(path, size, resize_shorter=None)``.
        size: int, model input size.
        train: bool; True -> decode larger (256/224), random crop, flip,
            RandAugment, Cutout, shuffle, repeat; False -> central crop.

    An image that fails to decode yields a black image and a row of ``-1``
    labels (ignored by every loss mode except ``negative``), and is counted in
    the returned ``failed`` list's length at the end of an epoch.
    """
    paths = [r.path for r in records]
    pre = int(round(size * 256 / 224)) if train else size

    def load(path):
        try:
            if resize_shorter is not None and not train:
                img = load_image(path.decode(), size, resize_shorter=resize_shorter)
            else:
                img = load_image(path.decode(), pre)
            return img.astype(np.uint8), np.int8(1)
        except Exception:  # noqa: BLE001 - the image is skipped, not the run
            return np.zeros((pre, pre, 3), np.uint8), np.int8(0)

    ds = tf.data.Dataset.from_tensor_slices((tf.constant(paths), tf.constant(labels, tf.int8)))
    if train:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True).repeat()

    def decode(p, y):
        img, ok = tf.numpy_function(load, [p], [tf.uint8, tf.int8])
        img.set_shape([pre, pre, 3])
        y = tf.where(tf.equal(ok, 1), y, tf.fill(tf.shape(y), tf.constant(-1, tf.int8)))
        return tf.cast(img, tf.float32), y

    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=train)
    if train:
        aug = _augmenter(size, seed)
        ds = ds.map(lambda x, y: (aug(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def train_finetune(cfg, resume=False, progress=True):
    """Fine-tune ``cfg.backbone`` + head on the images of ``cfg.dataset``; returns validation metrics."""
    from mll_tf.training.multilabel_trainer import (build_loss, make_train_step, predict,
                                                     resolved_loss_settings)
    from mll_tf.training.priors import save_prior_csv

    run_dir = cfg.run_dir
    os.makedirs(run_dir, exist_ok=True)
    prepared = prepare_dataset(cfg)
    for s in ("train", "val"):
        if not prepared.splits.get(s):
            raise ValueError(f"--finetune: dataset {cfg.dataset} has no {s!r} images")
    names = list(prepared.label_names)
    groups = prepared.extra.get("attribute_groups")
    if not cfg.monitor:
        cfg.monitor = "val/mAP_partial"
    loss_fn, normalizer = build_loss(cfg, names)
    cfg.save(os.path.join(run_dir, "config.yaml"))
    train_recs, val_recs = prepared.splits["train"], prepared.splits["val"]
    full = np.stack([r.labels for r in train_recs]).astype(np.int8)
    train_labels = simulate_train_labels(cfg, full, run_dir)

    if tf.config.list_physical_devices("GPU"):
        keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(cfg.seed)
    strategy = make_strategy(cfg.cpu_replicas)
    gb = cfg.batch_size
    steps_per_round = cfg.steps_per_round(len(train_recs))
    if steps_per_round == 0:
        raise ValueError(f"train split has {len(train_recs)} images < batch size {gb}")
    num_rounds = cfg.num_rounds(len(train_recs))
    with strategy.scope():
        model, bb = build_finetune_model(cfg, len(names))
        optimizer = build_optimizer(cfg)
        optimizer.build(model.trainable_variables)
    schedule = build_lr_schedule(cfg)
    print(f"{cfg.method} --finetune: {bb.name} ({bb.weights}), {len(names)} classes, "
          f"{len(train_recs)} training images, loss {resolved_loss_settings(cfg)}")

    round_var = tf.Variable(0, dtype=tf.int64, trainable=False)
    best_var = tf.Variable(-np.inf, dtype=tf.float64, trainable=False)
    prior_sum = tf.Variable(tf.zeros([len(names)], tf.float64), trainable=False)
    prior_n = tf.Variable(0.0, dtype=tf.float64, trainable=False)
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=round_var, best=best_var,
                               prior_sum=prior_sum, prior_n=prior_n)
    manager = tf.train.CheckpointManager(ckpt, os.path.join(run_dir, "checkpoints"), max_to_keep=2)
    if resume and manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        print(f"resumed from {manager.latest_checkpoint}")
        restore_schedule(run_dir, int(round_var.numpy()), schedule)
    start = int(round_var.numpy())
    train_ds = image_dataset(train_recs, train_labels, prepared.load_image, cfg.input_size, gb,
                             train=True, seed=cfg.seed + start)
    val_ds = image_dataset(val_recs, np.stack([r.labels for r in val_recs]).astype(np.int8),
                           prepared.load_image, cfg.input_size, max(gb, 32), train=False, seed=0,
                           resize_shorter=bb.resize_shorter)
    train_step = make_train_step(strategy, model, optimizer, loss_fn, normalizer, gb, cfg.jit_compile)
    batches = iter(strategy.experimental_distribute_dataset(train_ds))
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
                raise FloatingPointError(f"non-finite loss at round {rnd + 1} step {i + 1}; lower --learning-rate")
            loss_sum += loss
            prior_sum.assign_add(tf.cast(out["prob_sum"], tf.float64))
            prior_n.assign_add(float(gb))
            bar.update(i + 1, [("loss", loss)])
        seconds = time.perf_counter() - t0
        scores, labels = predict(model, val_ds)
        rep, _ = partial_label_report(scores, labels, cfg.threshold, groups)
        metrics = {f"val/{k}": v for k, v in rep.items() if not k.startswith("num_")}
        metrics["train/loss"] = loss_sum / max(n_steps, 1)
        metrics["train/examples_per_sec"] = n_steps * gb / seconds
        step = rnd * steps_per_round + n_steps
        log_scalars(writer, step, metrics)
        round_var.assign(rnd + 1)
        improved = metrics[cfg.monitor] >= best_var.numpy()
        if improved:
            best_var.assign(metrics[cfg.monitor])
            model.save_weights(os.path.join(run_dir, "best.weights.h5"))
        if schedule is not None:
            optimizer.learning_rate.assign(schedule.adapt(metrics[cfg.monitor]))
            save_schedule(run_dir, rnd + 1, schedule)
        save_prior_csv(os.path.join(run_dir, "prior.csv"), names,
                       (prior_sum.numpy() / max(prior_n.numpy(), 1.0)).astype(np.float32))
        manager.save(checkpoint_number=rnd + 1)
        model.save_weights(os.path.join(run_dir, "last.weights.h5"))
        append_history(run_dir, rnd + 1, step, metrics)
        print(f"round {rnd + 1}/{num_rounds}: loss {metrics['train/loss']:.4f}  val mAP "
              f"{100 * metrics['val/mAP']:.2f}  mAP_partial {100 * metrics['val/mAP_partial']:.2f}  "
              f"({metrics['train/examples_per_sec']:.1f} img/s){'  *best' if improved else ''}")
    return finish_run(run_dir, metrics)
