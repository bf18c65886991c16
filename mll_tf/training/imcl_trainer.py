"""Train IMCL (Huynh & Elhamifar, CVPR 2020) on stored features: ``--method imcl``.

Interactive multi-label learning with label dependencies (METHODS.md §2):
a linear classifier on pooled features, a learnable label-dependency matrix
G initialised from a label graph, and per mini-batch an orthogonal matching
pursuit over a dictionary of training images whose label and feature
reconstructions regularise the classifier (:mod:`mll_tf.models.imcl`,
:mod:`mll_tf.ops.omp`, :mod:`mll_tf.losses.imcl_loss`).

What the trainer does:

1. pools the stored region features of every training image (mean over
   regions; ``[N, D]`` float32 in memory: 8000 x 1280 is 41 MB) and applies
   the ``--partial-labels`` simulation exactly as the other partial-label
   methods (same seed -> same hidden labels);
2. draws the dictionary (``--imcl-dict-size`` training images, seeded) and
   builds the initial label graph (``--imcl-graph``: co-occurrence of the
   observed positives of the training labels, a GloVe k-NN graph, the
   identity, or a saved ``.npz`` matched by label name);
3. calibrates lambda_c and lambda_f on the first batch
   (lambda = alpha * L_log / L at initialisation, METHODS.md §2.2);
4. trains with one optimiser for the classifier and one for G (separate
   learning rates), validates every round like the other partial-label
   methods (mAP, mAP_partial, CP..OF1) and saves ``best.keras``,
   ``last.keras``, checkpoints (``--resume``), ``history.csv``, TensorBoard.

With ``--finetune true`` the backbone is trained end to end
(:func:`train_imcl_finetune`): images come through the fine-tuning pipeline
of :mod:`mll_tf.training.finetune`, the dictionary holds decoded images whose
backbone features are recomputed every ``--imcl-dict-refresh-steps`` steps
(250 in the reference's end-to-end OpenImages run), and the backbone has its
own learning rate (``--imcl-backbone-learning-rate``).

IMCL runs on one device: the OMP step is not written for several replicas
(``--cpu-replicas`` > 1 is refused with an error).
"""

import json
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

from mll_tf.data.feature_store import make_dataset
from mll_tf.metrics.report import partial_label_report
from mll_tf.training.lesa_trainer import build_lr_schedule, read_split_manifest
from mll_tf.training.run_io import (append_history, finish_run, log_scalars, restore_schedule,
                                    save_schedule, simulate_train_labels)


def pooled_split(split_dir, batch_size=512):
    """Mean-pooled features float32 ``[N, D]``, labels int8 ``[N, C]`` and ids of a split, store order."""
    feats, labels, ids = [], [], []
    for b in make_dataset(split_dir, batch_size, as_dict=True):
        feats.append(tf.reduce_mean(b["features"], axis=1).numpy())
        labels.append(b["labels"].numpy())
        ids.extend(x.decode() for x in b["image_id"].numpy())
    return np.concatenate(feats), np.concatenate(labels), ids


def build_graph(cfg, names, labels):
    """The initial label graph float32 ``[C, C]`` named by ``cfg.imcl_graph``.

    Raises:
        ValueError: an unknown kind (names ``--imcl-graph``) or a saved graph
            for other labels.
    """
    from mll_tf.graphs.label_graph import (cooccurrence_graph, identity_graph, load_graph,
                                           word_vector_knn_graph)

    kind = cfg.imcl_graph
    if kind == "cooccurrence":
        return cooccurrence_graph(labels).astype(np.float32)
    if kind == "identity":
        return identity_graph(len(names))
    if kind == "word_knn":
        from mll_tf.data.word_vectors import label_embeddings, load_word_vectors
        wv = load_word_vectors(cfg.word_vectors, names)
        emb, _ = label_embeddings(names, wv)
        return word_vector_knn_graph(emb, 5, allow_zero=True).astype(np.float32)
    if kind.endswith(".npz") and os.path.exists(kind):
        return np.asarray(load_graph(kind, names), np.float32)
    raise ValueError(f"--imcl-graph {kind!r}: expected cooccurrence, identity, word_knn or an existing .npz "
                     f"written by experiments/build_label_graph.py")


def init_classifier(model, run_dir, names):
    """Copy Theta from a trained ``logistic`` (or any ``MultiLabelHead``) run's ``best.keras``.

    The reference's IMCL starts from a trained classifier (OpenImages: the
    checkpoint's logits layer; e2e: Theta_1 Theta of the fixed-feature run,
    METHODS.md §2.1).

    Raises:
        ValueError: the run is not a single-linear-layer head over the same
            labels and feature dimension (names the run).
    """
    import mll_tf.models.heads  # noqa: F401  (registers MultiLabelHead)
    from mll_tf.training.config import TrainConfig

    path = os.path.join(run_dir, "best.keras")
    if not os.path.exists(path):
        raise ValueError(f"--imcl-init-from {run_dir}: no best.keras (train --method logistic first)")
    other = TrainConfig.load(os.path.join(run_dir, "config.yaml"))
    other_names = read_split_manifest(other, "train").label_names
    if list(other_names) != list(names):
        raise ValueError(f"--imcl-init-from {run_dir}: trained on other labels")
    head = keras.models.load_model(path)
    if getattr(head, "bottleneck", None) is not None or not hasattr(head, "classifier"):
        raise ValueError(f"--imcl-init-from {run_dir}: not a single linear layer head")
    w, b = head.classifier.get_weights()
    if w.shape != tuple(model.classifier.kernel.shape):
        raise ValueError(f"--imcl-init-from {run_dir}: classifier shape {w.shape} != "
                         f"{tuple(model.classifier.kernel.shape)}")
    model.classifier.set_weights([w, b])


def _optimizer(cfg, lr):
    from mll_tf.training.lesa_trainer import build_optimizer
    import dataclasses
    return build_optimizer(dataclasses.replace(cfg, learning_rate=lr))


def train_imcl(cfg, resume=False, progress=True):
    """Train IMCL as configured; returns the last validation metrics (dict).

    Raises:
        MissingFeaturesError: the feature store is missing (names the command).
        ValueError: ``--cpu-replicas`` > 1, or bad IMCL flags (named).
    """
    from mll_tf.models.imcl import IMCLDictionary, IMCLModel, make_imcl_train_step
    from mll_tf.losses.imcl_loss import IMCLLoss

    if cfg.cpu_replicas > 1:
        raise ValueError("--method imcl runs on one device (its OMP step is not distributed); "
                         "drop --cpu-replicas")
    if cfg.finetune:
        return train_imcl_finetune(cfg, resume=resume, progress=progress)
    run_dir = cfg.run_dir
    os.makedirs(run_dir, exist_ok=True)
    train_m = read_split_manifest(cfg, "train")
    read_split_manifest(cfg, "val")
    read_split_manifest(cfg, "test")
    names = list(train_m.label_names)
    groups = train_m.extra.get("attribute_groups")
    if not cfg.monitor:
        cfg.monitor = "val/mAP_partial"
    cfg.save(os.path.join(run_dir, "config.yaml"))

    x_train, full, _ = pooled_split(cfg.features_dir("train"))
    y_train = simulate_train_labels(cfg, full, run_dir)
    x_val, y_val, _ = pooled_split(cfg.features_dir("val"))
    n, d = x_train.shape
    rng = np.random.default_rng(cfg.seed)
    size = n if cfg.imcl_dict_size <= 0 else min(n, cfg.imcl_dict_size)
    dict_rows = np.sort(rng.choice(n, size=size, replace=False))
    graph = build_graph(cfg, names, y_train)

    keras.utils.set_random_seed(cfg.seed)
    model = IMCLModel(len(names), graph=graph, c=cfg.imcl_c, feature_dim=d)
    model(tf.zeros([1, d]))
    if cfg.imcl_init_from:
        init_classifier(model, cfg.imcl_init_from, names)
    g_lr = cfg.learning_rate if cfg.imcl_graph_learning_rate < 0 else cfg.imcl_graph_learning_rate
    optimizers = {"classifier": _optimizer(cfg, cfg.learning_rate), "graph": _optimizer(cfg, g_lr)}
    step = make_imcl_train_step(
        model, optimizers, IMCLDictionary(x_train[dict_rows], y_train[dict_rows]),
        loss=IMCLLoss(), k=cfg.imcl_k, threshold=cfg.imcl_threshold,
        use_feature_term=cfg.imcl_alpha_feature > 0, dict_refresh_every=cfg.imcl_refresh,
        jit_compile=cfg.jit_compile)
    schedule = build_lr_schedule(cfg)

    gb = cfg.batch_size
    steps_per_round = cfg.steps_per_round(n)
    if steps_per_round == 0:
        raise ValueError(f"train split has {n} examples < batch size {gb}")
    num_rounds = cfg.num_rounds(n)
    round_var = tf.Variable(0, dtype=tf.int64, trainable=False)
    best_var = tf.Variable(-np.inf, dtype=tf.float64, trainable=False)
    ckpt = tf.train.Checkpoint(model=model, classifier_opt=optimizers["classifier"],
                               graph_opt=optimizers["graph"], epoch=round_var, best=best_var,
                               lambda_colab=step.lambda_colab, lambda_feature=step.lambda_feature)
    manager = tf.train.CheckpointManager(ckpt, os.path.join(run_dir, "checkpoints"), max_to_keep=2)
    if resume and manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint)
        print(f"resumed from {manager.latest_checkpoint} (round {int(round_var.numpy())} done)")
        restore_schedule(run_dir, int(round_var.numpy()), schedule)
    start = int(round_var.numpy())

    ds = tf.data.Dataset.from_tensor_slices((x_train, y_train))
    if cfg.shuffle:
        ds = ds.shuffle(n, seed=cfg.seed + start, reshuffle_each_iteration=True)
    batches = iter(ds.repeat().batch(gb, drop_remainder=True).prefetch(2))
    if start == 0:
        x0, y0 = next(iter(tf.data.Dataset.from_tensor_slices((x_train, y_train)).batch(gb)))
        lam_c, lam_f = step.calibrate(x0, y0, cfg.imcl_alpha_colab,
                                      cfg.imcl_alpha_feature)
    else:
        lam_c, lam_f = float(step.lambda_colab.numpy()), float(step.lambda_feature.numpy())
        for _ in range(start * steps_per_round if not cfg.shuffle else 0):
            next(batches)
    print(f"imcl: {len(names)} classes, {n} training images, dictionary {size}, graph {cfg.imcl_graph} "
          f"({model.num_nonzero} learnable entries), k={cfg.imcl_k}, lambda_c={lam_c:.4g}, "
          f"lambda_f={lam_f:.4g}; {num_rounds} rounds of {steps_per_round} steps")

    writer = tf.summary.create_file_writer(os.path.join(run_dir, "tb"))
    metrics = {}
    val_fwd = tf.function(lambda x: model(x, training=False))
    for rnd in range(start, num_rounds):
        n_steps = steps_per_round
        if cfg.max_steps > 0:
            n_steps = min(steps_per_round, cfg.max_steps - rnd * steps_per_round)
        bar = keras.utils.Progbar(n_steps, verbose=1 if progress else 0)
        t0 = time.perf_counter()
        sums = {}
        for i in range(n_steps):
            xb, yb = next(batches)
            terms = {k: float(v) for k, v in step(xb, yb).items()}
            if not math.isfinite(terms["total"]):
                raise FloatingPointError(f"non-finite IMCL loss at round {rnd + 1} step {i + 1}; "
                                         f"lower --learning-rate")
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            s = rnd * steps_per_round + i + 1
            if s % cfg.log_every == 0:
                with writer.as_default(step=s):
                    for k, v in terms.items():
                        tf.summary.scalar(f"loss/{k}", v)
            bar.update(i + 1, [("loss", terms["total"]), ("log", terms["logistic"])])
        seconds = time.perf_counter() - t0
        scores = np.concatenate([val_fwd(x_val[j:j + 1024]).numpy() for j in range(0, len(x_val), 1024)])
        rep, _ = partial_label_report(scores, y_val, cfg.threshold, groups)
        metrics = {f"val/{k}": v for k, v in rep.items() if not k.startswith("num_")}
        metrics.update({f"train/{k}": v / max(n_steps, 1) for k, v in sums.items()})
        metrics["train/examples_per_sec"] = n_steps * gb / seconds
        g = model.label_dependency.dense().numpy()
        metrics["graph/min"], metrics["graph/max"] = float(g.min()), float(g.max())
        s = rnd * steps_per_round + n_steps
        log_scalars(writer, s, metrics)
        round_var.assign(rnd + 1)
        improved = metrics[cfg.monitor] >= best_var.numpy()
        if improved:
            best_var.assign(metrics[cfg.monitor])
            model.save(os.path.join(run_dir, "best.keras"))
        if schedule is not None:
            optimizers["classifier"].learning_rate.assign(schedule.adapt(metrics[cfg.monitor]))
            save_schedule(run_dir, rnd + 1, schedule)
        manager.save(checkpoint_number=rnd + 1)
        model.save(os.path.join(run_dir, "last.keras"))
        append_history(run_dir, rnd + 1, s, metrics)
        print(f"round {rnd + 1}/{num_rounds}: loss {metrics['train/total']:.4f} (logistic "
              f"{metrics['train/logistic']:.4f})  val mAP {100 * metrics['val/mAP']:.2f}  mAP_partial "
              f"{100 * metrics['val/mAP_partial']:.2f}  ({metrics['train/examples_per_sec']:.0f} ex/s)"
              f"{'  *best' if improved else ''}")
    return finish_run(run_dir, metrics)


def build_imcl_finetune_model(cfg, num_labels, graph=None, num_nonzero=None, weights="imagenet"):
    """IMCLModel with ``cfg.backbone`` in front (built); returns (model, Backbone)."""
    from mll_tf.backbones import build_backbone
    from mll_tf.models.imcl import IMCLModel

    bb = build_backbone(cfg.backbone, weights=weights, input_size=cfg.input_size)
    model = IMCLModel(num_labels, graph=graph, num_nonzero=num_nonzero, c=cfg.imcl_c, backbone=bb.model,
                      feature_dim=bb.feature_shape[-1])
    model(tf.zeros([1, cfg.input_size, cfg.input_size, 3]))
    return model, bb


def train_imcl_finetune(cfg, resume=False, progress=True):
    """End-to-end IMCL: backbone + classifier + G trained on images; returns validation metrics.

    The dictionary is ``--imcl-dict-size`` training images held decoded in
    memory (uint8, ``size^2 * 3`` bytes each: 10,000 at 224 px is 1.5 GB),
    their backbone features recomputed every ``--imcl-dict-refresh-steps``.
    Weights are saved as ``best.weights.h5`` / ``last.weights.h5`` and the
    model is rebuilt with :func:`build_imcl_finetune_model` (``imcl_meta.json``
    records G's number of learnable entries); a checkpoint after every round
    (model, the three optimisers, lambdas) lets ``--resume`` continue.
    """
    from mll_tf.losses.imcl_loss import IMCLLoss
    from mll_tf.models.imcl import IMCLDictionary, make_imcl_train_step, refresh_dictionary
    from mll_tf.training.finetune import image_dataset, prepare_dataset
    from mll_tf.training.multilabel_trainer import predict

    run_dir = cfg.run_dir
    os.makedirs(run_dir, exist_ok=True)
    prepared = prepare_dataset(cfg)
    names = list(prepared.label_names)
    groups = prepared.extra.get("attribute_groups")
    if not cfg.monitor:
        cfg.monitor = "val/mAP_partial"
    cfg.save(os.path.join(run_dir, "config.yaml"))
    train_recs, val_recs = prepared.splits["train"], prepared.splits["val"]
    full = np.stack([r.labels for r in train_recs]).astype(np.int8)
    y_train = simulate_train_labels(cfg, full, run_dir)

    keras.utils.set_random_seed(cfg.seed)
    graph = build_graph(cfg, names, y_train)
    model, bb = build_imcl_finetune_model(cfg, len(names), graph=graph)
    with open(os.path.join(run_dir, "imcl_meta.json"), "w") as f:
        json.dump({"num_nonzero": int(model.num_nonzero), "feature_dim": int(model.feature_dim)}, f)
    n = len(train_recs)
    rng = np.random.default_rng(cfg.seed)
    size = n if cfg.imcl_dict_size <= 0 else min(n, cfg.imcl_dict_size)
    rows = np.sort(rng.choice(n, size=size, replace=False))
    dict_images = np.stack([prepared.load_image(train_recs[i].path, cfg.input_size)
                            for i in rows]).astype(np.float32)
    dictionary = IMCLDictionary(np.zeros((size, model.feature_dim), np.float32), y_train[rows])
    refresh_dictionary(model, dictionary, dict_images)
    bb_lr = 0.1 * cfg.learning_rate if cfg.imcl_backbone_learning_rate < 0 else cfg.imcl_backbone_learning_rate
    g_lr = cfg.learning_rate if cfg.imcl_graph_learning_rate < 0 else cfg.imcl_graph_learning_rate
    optimizers = {"classifier": _optimizer(cfg, cfg.learning_rate), "graph": _optimizer(cfg, g_lr),
                  "backbone": _optimizer(cfg, bb_lr)}
    step = make_imcl_train_step(model, optimizers, dictionary, loss=IMCLLoss(), k=cfg.imcl_k,
                                threshold=cfg.imcl_threshold, use_feature_term=cfg.imcl_alpha_feature > 0,
                                dict_refresh_every=cfg.imcl_refresh, jit_compile=cfg.jit_compile)
    gb = cfg.batch_size
    steps_per_round = cfg.steps_per_round(n)
    if steps_per_round == 0:
        raise ValueError(f"train split has {n} images < batch size {gb}")
    num_rounds = cfg.num_rounds(n)
    val_ds = image_dataset(val_recs, np.stack([r.labels for r in val_recs]).astype(np.int8),
                           prepared.load_image, cfg.input_size, max(gb, 32), train=False, seed=0,
                           resize_shorter=bb.resize_shorter)
    round_var = tf.Variable(0, dtype=tf.int64, trainable=False)
    best_var = tf.Variable(-np.inf, dtype=tf.float64, trainable=False)
    ckpt = tf.train.Checkpoint(model=model, classifier_opt=optimizers["classifier"],
                               graph_opt=optimizers["graph"], backbone_opt=optimizers["backbone"],
                               epoch=round_var, best=best_var, lambda_colab=step.lambda_colab,
                               lambda_feature=step.lambda_feature)
    manager = tf.train.CheckpointManager(ckpt, os.path.join(run_dir, "checkpoints"), max_to_keep=2)
    start = 0
    if resume and manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint)
        start = int(round_var.numpy())
        refresh_dictionary(model, dictionary, dict_images)  # with the restored backbone
        print(f"resumed from {manager.latest_checkpoint} (round {start} done)")
    elif resume:
        print(f"--resume: no checkpoint in {run_dir}/checkpoints; starting from scratch")
    train_ds = image_dataset(train_recs, y_train, prepared.load_image, cfg.input_size, gb, train=True,
                             seed=cfg.seed + start)
    batches = iter(train_ds)
    if start == 0:
        x0, y0 = next(batches)
        lam_c, lam_f = step.calibrate(x0, y0, cfg.imcl_alpha_colab, cfg.imcl_alpha_feature)
    else:
        lam_c, lam_f = float(step.lambda_colab.numpy()), float(step.lambda_feature.numpy())
    print(f"imcl --finetune: {bb.name}, {len(names)} classes, {n} training images, dictionary {size} images, "
          f"lambda_c={lam_c:.4g}, lambda_f={lam_f:.4g}")
    writer = tf.summary.create_file_writer(os.path.join(run_dir, "tb"))
    best, metrics, done = float(best_var.numpy()), {}, start * steps_per_round
    for rnd in range(start, num_rounds):
        n_steps = steps_per_round
        if cfg.max_steps > 0:
            n_steps = min(steps_per_round, cfg.max_steps - rnd * steps_per_round)
        bar = keras.utils.Progbar(n_steps, verbose=1 if progress else 0)
        t0 = time.perf_counter()
        sums = {}
        for i in range(n_steps):
            xb, yb = next(batches)
            terms = {k: float(v) for k, v in step(xb, yb).items()}
            if not math.isfinite(terms["total"]):
                raise FloatingPointError(f"non-finite IMCL loss at round {rnd + 1} step {i + 1}")
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            done += 1
            if done % cfg.imcl_dict_refresh_steps == 0:
                refresh_dictionary(model, dictionary, dict_images)
                if cfg.imcl_refresh > 1:
                    step.refresh_cache()
            bar.update(i + 1, [("loss", terms["total"])])
        seconds = time.perf_counter() - t0
        scores, labels = predict(model, val_ds)
        rep, _ = partial_label_report(scores, labels, cfg.threshold, groups)
        metrics = {f"val/{k}": v for k, v in rep.items() if not k.startswith("num_")}
        metrics.update({f"train/{k}": v / max(n_steps, 1) for k, v in sums.items()})
        metrics["train/examples_per_sec"] = n_steps * gb / seconds
        log_scalars(writer, done, metrics)
        improved = metrics[cfg.monitor] >= best
        if improved:
            best = metrics[cfg.monitor]
            best_var.assign(best)
            model.save_weights(os.path.join(run_dir, "best.weights.h5"))
        round_var.assign(rnd + 1)
        manager.save(checkpoint_number=rnd + 1)
        model.save_weights(os.path.join(run_dir, "last.weights.h5"))
        append_history(run_dir, rnd + 1, done, metrics)
        print(f"round {rnd + 1}/{num_rounds}: loss {metrics['train/total']:.4f}  val mAP "
              f"{100 * metrics['val/mAP']:.2f}  ({metrics['train/examples_per_sec']:.1f} img/s)"
              f"{'  *best' if improved else ''}")
    return finish_run(run_dir, metrics)
