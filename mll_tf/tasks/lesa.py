"""LESA: shared multi-attention for multi-label zero-shot learning, as a Task (``--method lesa``).

Huynh & Elhamifar, CVPR 2020 (hbdat/cvpr20_LESA). The model is
:class:`mll_tf.models.lesa.LESA` on stored feature maps, trained on the SEEN
labels with the full LESA loss (:class:`mll_tf.losses.lesa_loss.LESALoss`:
ranking + attention distribution + global relevance + attention span, paper
Sec. 3.3, Eq. 6-10); unseen labels are scored by swapping in their word
vectors.

Distributed training (:class:`TrainableLESA.train_step`): the per-replica
loss terms add up exactly to the single-device loss of the global batch --
ranking and distribution are divided by the global batch size, the global
term is a sum, the attention-span term (a square root over the whole batch,
not additive) is split with a cross-replica sum of squares, and BatchNorm is
synchronised. Gradients are summed over replicas by the optimizer.

Run files: ``label_split.json`` (seen / unseen / excluded labels and the rule),
``label_embeddings.npz`` (names + raw word vectors), TensorBoard attention
figures of four validation images every round (``tb/validation``,
``attention/<i>``).
"""

import dataclasses
import hashlib
import io
import json
import os

import keras
import numpy as np
import tensorflow as tf

from mll_tf.losses.lesa_loss import LESALoss, attention_span_sum_of_squares
from mll_tf.models.lesa import LESA
from mll_tf.tasks.base import OwnLossSteps, Predictor, Task, TaskConfig, register_task, write_evaluation
from mll_tf.training.config import option

__all__ = ["AttentionExamples", "LESAConfig", "LESATask", "TrainableLESA", "attention_examples",
           "column_dataset", "explain_features", "explain_images", "load_label_split",
           "log_model_attention", "predict_logits"]

_TERMS = ("ranking", "distribution", "global", "span")


@dataclasses.dataclass
class LESAConfig(TaskConfig):
    """LESA's own options (paper Sec. 3; reference defaults)."""
    num_heads: int = option(10, "shared attention heads M", min=1)
    conv_channels: int = option(512, "output channels C' of the 2x2 conv on the feature map", min=1)
    margin: float = option(1.0, "ranking hinge margin", min=0.0)
    distribution_weight: float = option(0.1, "weight of the attention-distribution loss", min=0.0)
    global_weight: float = option(0.001, "weight of the global-relevance loss", min=0.0)
    span_weight: float = option(0.01, "weight of the attention-span loss", min=0.0)
    unseen_fraction: float = option(0.25, "datasets without an official split: fraction of the usable "
                                    "labels held out as unseen", min=0.0, max=1.0, min_exclusive=True)
    min_test_images: int = option(10, "datasets without an official split: an unseen label needs this "
                                  "many positive test images", min=0)
    eval_k: tuple = option((), "K values of P/R/F1@K, e.g. 3,5 (empty: the dataset's: NUS-WIDE 3,5; "
                           "OpenImages 10,20)", min=1)
    attention_images: int = option(4, "validation images whose attention maps go to TensorBoard each "
                                   "round (0: none)", min=0)
    selection: str = option("seen", "model selection: seen (the reference: the checkpoint with the best "
                            "validation seen F1@K) or zsl_holdout (a part of the seen labels is masked "
                            "from training as pseudo-unseen; the checkpoint with the best harmonic mean of "
                            "their validation ZSL mAP and the trained labels' mAP; GZSL calibration is "
                            "chosen on them, docs/lesa.md sec. 7)",
                            choices=("seen", "zsl_holdout"))
    holdout_fraction: float = option(0.15, "--selection zsl_holdout: share of the seen labels held out as "
                                     "pseudo-unseen", min=0.0, max=1.0, min_exclusive=True)
    holdout_min_val_images: int = option(5, "--selection zsl_holdout: a held-out label needs this many "
                                         "positive validation images", min=1)


@keras.saving.register_keras_serializable(package="mll_tf")
class TrainableLESA(OwnLossSteps, LESA):
    """:class:`~mll_tf.models.lesa.LESA` with the reference training step for ``keras.Model.fit``.

    ``compile(optimizer=..., loss=LESALoss(...))``, then ``fit`` on batches
    ``(features float32 [B, R, D], labels int8 [B, C_seen])`` in {1, 0, -1}.
    The logged ``loss`` is the weighted total, and ``ranking``,
    ``distribution``, ``global``, ``span`` the unweighted terms, each the
    value of the whole global batch (averaged over the round's steps).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._trackers = {k: keras.metrics.Mean(name=k) for k in ("loss",) + _TERMS}

    @property
    def metrics(self):
        return list(self._trackers.values())

    def _terms(self, features, labels, training):
        ctx = tf.distribute.get_replica_context()
        out = self(features, training=training)
        s_local = tf.stop_gradient(attention_span_sum_of_squares(out["attention_logits"]))
        batch_local = tf.cast(tf.shape(features)[0], tf.float32)
        if ctx.num_replicas_in_sync > 1:
            s_total, batch = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [s_local, batch_local])
        else:
            s_total, batch = s_local, batch_local
        return self.loss(labels, out, global_batch_size=batch, span_sum_of_squares=s_total,
                         num_replicas=ctx.num_replicas_in_sync)

    def _log(self, terms):
        ctx = tf.distribute.get_replica_context()
        names = ("loss",) + _TERMS
        values = [tf.stop_gradient(terms["total"])] + [tf.stop_gradient(terms[k]) for k in _TERMS]
        if ctx.num_replicas_in_sync > 1:  # the global batch's terms: one all-reduce for all of them
            values = ctx.all_reduce(tf.distribute.ReduceOp.SUM, values)
        logs = {}
        for name, value in zip(names, values):
            self._trackers[name].update_state(value)
            logs[name] = self._trackers[name].result()
        return logs

    def train_step(self, data):
        features, labels = data
        with tf.GradientTape() as tape:
            terms = self._terms(features, labels, training=True)
            scaled = self.optimizer.scale_loss(terms["total"])
        grads = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        return self._log(terms)

    def test_step(self, data):
        features, labels = data
        return self._log(self._terms(features, labels, training=False))


def column_dataset(split_dir, columns, batch_size, **kw):
    """Feature-store dataset with the label columns reordered/selected.

    Args:
        split_dir: str, a split folder of the feature store.
        columns: list of int, label columns to keep, in output order (e.g.
            the seen columns, or unseen + seen for GZSL).
        batch_size: int.
        **kw: passed to :func:`mll_tf.data.feature_store.make_dataset`.

    Returns:
        ``tf.data.Dataset`` of ``(features [B, R, D] float32, labels [B, len(columns)] int8)``.
    """
    from mll_tf.data.feature_store import make_dataset

    cols = tf.constant(columns, tf.int32)
    ds = make_dataset(split_dir, batch_size, **kw)
    return ds.map(lambda f, y: (f, tf.gather(y, cols, axis=1)), num_parallel_calls=tf.data.AUTOTUNE)


def predict_logits(model, dataset, label_vectors=None):
    """LESA scores over a dataset.

    Args:
        model: :class:`mll_tf.models.lesa.LESA`.
        dataset: yields ``(features [B, R, D] float32, labels [B, C] int8)``.
        label_vectors: optional float32 ``[C, d_w]`` raw word vectors whose
            scores are wanted (default: the model's seen labels), in the
            order of the label columns of ``dataset``.

    Returns:
        (scores float32 ``[N, C]``, LESA logits: max over heads, unbounded;
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


def _official_split(manifest, missing):
    """LabelSplit from an adapter's published seen/unseen lists (``extra["label_split"]``)."""
    from mll_tf.training.zsl_split import LabelSplit

    ls = manifest.extra["label_split"]
    unseen = list(ls.get("unseen_eval") or ls["unseen"])
    excluded = {n: "no word vector" for n in missing}
    return LabelSplit(
        seen=[n for n in ls["seen"] if n not in excluded],
        unseen=[n for n in unseen if n not in excluded],
        excluded=excluded,
        rule=(f"official split of {manifest.dataset} ({len(ls['seen'])} seen, {len(unseen)} unseen "
              f"evaluated); labels without a word vector excluded"))


def load_label_split(run_dir):
    """``(LabelSplit, {name: raw word vector float32 [d_w]})`` saved in a LESA run directory."""
    from mll_tf.training.zsl_split import LabelSplit

    from mll_tf.data import fs

    split = LabelSplit.load(os.path.join(run_dir, "label_split.json"))
    with fs.open_file(os.path.join(run_dir, "label_embeddings.npz"), "rb") as f:
        z = np.load(io.BytesIO(f.read()), allow_pickle=False)
    return split, dict(zip(z["names"].tolist(), z["vectors"]))


class AttentionImages(keras.callbacks.Callback):
    """TensorBoard figures of LESA's attention on a few validation images, every round.

    Writes ``attention/<i>`` image summaries to ``<run>/tb/validation`` at the
    round's index (the x axis of the epoch scalars) (:func:`mll_tf.visualization.attention.log_model_attention`).
    """

    def __init__(self, log_dir, examples, seen, unseen, unseen_vectors):
        super().__init__()
        self.log_dir = log_dir
        self.examples = examples
        self.seen, self.unseen, self.unseen_vectors = seen, unseen, unseen_vectors
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        with tf.summary.record_if(True):  # at the round's step, as Keras' epoch scalars
            log_model_attention(self._writer, epoch, self.model, self.examples, self.seen, self.unseen,
                                self.unseen_vectors, k=5)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()


@register_task("lesa")
class LESATask(Task):
    """LESA on a feature store: seen-label training, ZSL / GZSL evaluation.

    Validation each round: seen-label mAP and P/R/F1@K (the reference's
    monitor is seen F1@5 on NUS-WIDE, seen mAP on OpenImages) and zero-shot
    mAP and P/R/F1@K on the unseen labels (logged, never used for selection).
    """

    Config = LESAConfig
    mixed_precision = True   # --precision bfloat16 / mixed_float16 (mll_tf/training/precision.py)
    evaluate_options = ("k", "baselines", "hubness_correction")
    resumable_fields = ("eval_k", "attention_images")

    @property
    def default_monitor(self):
        if self.config.selection == "zsl_holdout":
            return "val_holdout_H_mAP"
        ks = self.config.eval_k or (3, 5)
        return "val_seen_F1@5" if 5 in ks else f"val_seen_F1@{ks[-1]}"

    def describe(self):
        held = (f" ({len(self.split.holdout)} of them held out as pseudo-unseen for selection)"
                if self.split.holdout else "")
        return (f"{len(self.split.seen)} seen{held}, {len(self.split.unseen)} unseen, "
                f"{len(self.split.excluded)} excluded labels (label_split.json); {self.num_heads_desc}")

    @property
    def num_heads_desc(self):
        return f"{self.config.num_heads} heads, conv {self.config.conv_channels}"

    # --- data ------------------------------------------------------------------------------------
    def prepare(self, run_dir, resume=False):
        """Choose (or, resuming, reload) the seen/unseen split and the word vectors.

        A dataset with a published split (NUS-WIDE's 925/81, OpenImages'
        7186/400, stored by the adapter as ``manifest.extra["label_split"]``)
        uses it; the word vectors are looked up with ``extra["label_text"]``
        when the label names are ids (OpenImages MIDs). Otherwise the unseen
        labels are chosen by :func:`mll_tf.training.zsl_split.choose_unseen_labels`.
        :meth:`save_run_files` writes them as ``label_split.json`` and
        ``label_embeddings.npz``.
        """
        from mll_tf.data import fs
        from mll_tf.data.word_vectors import label_embeddings, load_word_vectors
        from mll_tf.protocols import eval_k_for
        from mll_tf.training.zsl_split import choose_unseen_labels

        manifest = self.read_manifest("train")
        self.manifest = manifest
        if not self.config.eval_k:
            self.config.eval_k = tuple(eval_k_for(self.run.dataset, manifest.extra))
        split_path = os.path.join(run_dir, "label_split.json")
        emb_path = os.path.join(run_dir, "label_embeddings.npz")
        self._to_save = None
        if resume and fs.exists(split_path) and fs.exists(emb_path):
            split, vectors = load_label_split(run_dir)
        else:
            names = manifest.label_names
            texts = manifest.extra.get("label_text") or names
            if len(texts) != len(names):
                raise ValueError(f"{manifest.dataset}: extra['label_text'] has {len(texts)} entries for "
                                 f"{len(names)} labels")
            wv = load_word_vectors(self.run.word_vectors, texts)
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
                                             unseen_fraction=self.config.unseen_fraction,
                                             min_test_images=self.config.min_test_images)
            if self.config.selection == "zsl_holdout":
                split.holdout = self._choose_holdout(split)
            keep = [i for i, n in enumerate(names) if n not in split.excluded]
            self._to_save = (split, np.array([names[i] for i in keep]), emb[keep], np.array(wv.source))
            vectors = {names[i]: emb[i] for i in keep}
        self.split = split
        if self.config.selection == "zsl_holdout" and not split.holdout:
            raise ValueError("--selection zsl_holdout: this run's label_split.json holds no pseudo-unseen "
                             "labels (it was started with --selection seen)")
        if not self.run.monitor and self.config.selection == "zsl_holdout":
            self.run.monitor = "val_holdout_H_mAP"
        if not self.run.monitor:  # F1@K needs K <= the number of seen labels
            ks = [k for k in self.config.eval_k if k <= len(split.seen)]
            self.run.monitor = ("val_seen_F1@5" if 5 in ks else f"val_seen_F1@{ks[-1]}" if ks
                                else "val_seen_mAP")
        self.seen_idx, self.unseen_idx = split.indices(manifest.label_names)
        self.seen_vectors = np.stack([vectors[n] for n in split.seen]).astype(np.float32)
        self.unseen_vectors = (np.stack([vectors[n] for n in split.unseen]).astype(np.float32)
                               if split.unseen else np.zeros((0, self.seen_vectors.shape[1]), np.float32))

    def _choose_holdout(self, split):
        """Pseudo-unseen seen labels (:func:`~mll_tf.training.zsl_split.choose_holdout_labels`)."""
        from mll_tf.training.zsl_split import choose_holdout_labels

        counts = self.read_manifest("val").extra.get("label_counts_by_split", {})
        train_counts = counts.get("train") or self.manifest.extra.get("label_counts_by_split", {}).get("train", {})
        val_counts = counts.get("val")
        if not val_counts:  # count the validation positives of the seen labels from the store
            from mll_tf.data.feature_store import make_dataset

            cols = split.indices(self.manifest.label_names)[0]
            pos = np.zeros(len(cols), np.int64)
            for _, y in make_dataset(self.features_dir("val"), 512):
                pos += (y.numpy()[:, cols] == 1).sum(0)
            val_counts = dict(zip(split.seen, pos.tolist()))
        return choose_holdout_labels(split.seen, self.manifest.label_names, train_counts, val_counts,
                                     fraction=self.config.holdout_fraction,
                                     min_val_images=self.config.holdout_min_val_images)

    def save_run_files(self, run_dir):
        """``label_split.json`` and ``label_embeddings.npz`` (names + raw word vectors), atomically."""
        if self._to_save is None:
            return
        from mll_tf.training.atomic import atomic_path

        split, names, vectors, source = self._to_save
        with atomic_path(os.path.join(run_dir, "label_embeddings.npz"), suffix=".npz") as tmp:
            np.savez(tmp, names=names, vectors=vectors, source=source)
        split.save(os.path.join(run_dir, "label_split.json"))

    @property
    def num_train_examples(self):
        return self.manifest.num_examples

    def train_dataset(self, batch_size, start_step=0):
        r = self.run
        ds = column_dataset(self.features_dir("train"), self.seen_idx, batch_size, shuffle=r.shuffle,
                            shuffle_buffer=r.shuffle_buffer, seed=r.seed, cache=r.cache, repeat=True,
                            drop_remainder=True, start_example=start_step * batch_size)
        if not self.split.holdout:
            return ds
        held = set(self.split.holdout)  # pseudo-unseen: unknown (-1), so no loss term sees them
        mask = tf.constant([n in held for n in self.split.seen])
        return ds.map(lambda f, y: (f, tf.where(mask, tf.constant(-1, y.dtype), y)),
                      num_parallel_calls=tf.data.AUTOTUNE)

    # --- model ---------------------------------------------------------------------------------------
    def build_model(self):
        r, d = self.manifest.feature_shape
        grid = tuple(self.manifest.feature_grid) if self.manifest.feature_grid else None
        model = TrainableLESA(label_embeddings=self.seen_vectors, num_heads=self.config.num_heads,
                              conv_channels=self.config.conv_channels, grid_size=grid)
        model(tf.zeros([1, r, d]), training=False)
        return model

    def build_loss(self):
        c = self.config
        return LESALoss(distribution_weight=c.distribution_weight, global_weight=c.global_weight,
                        span_weight=c.span_weight, margin=c.margin)

    def callbacks(self, run_dir):
        if not self.config.attention_images:
            return []
        try:
            examples = attention_examples(self.features_dir("val"), self.config.attention_images)
        except (ValueError, OSError, KeyError) as e:  # no extra["root"], images moved, ...
            print(f"attention images in TensorBoard disabled: {e}")
            return []
        if not examples.image_ids:
            return []
        return [AttentionImages(os.path.join(run_dir, "tb", "validation"), examples, self.split.seen,
                                self.split.unseen, self.unseen_vectors)]

    def validation_metrics(self, model):
        from mll_tf.metrics.report import multilabel_report

        if not hasattr(self, "_val_ds"):
            self._val_ds = column_dataset(self.features_dir("val"), self.seen_idx + self.unseen_idx, 256)
        vecs = np.concatenate([self.seen_vectors, self.unseen_vectors])
        scores, labels = predict_logits(model, self._val_ds, vecs)
        ns = len(self.seen_idx)
        ks = self.config.eval_k
        seen, _ = multilabel_report(scores[:, :ns], labels[:, :ns], ks)
        out = {f"seen_{k}": v for k, v in seen.items() if not k.startswith("num_")}
        if len(self.unseen_idx):
            zsl, _ = multilabel_report(scores[:, ns:], labels[:, ns:], ks)
            out.update({f"zsl_{k}": v for k, v in zsl.items() if not k.startswith("num_")})
        if self.split.holdout:
            out.update(holdout_metrics(scores[:, :ns], labels[:, :ns], self.split, ks))
        return out

    # --- after training ---------------------------------------------------------------------------------
    def calibration(self, run_dir, which="best", model=None):
        """Calibrated-stacking gammas of a ``--selection zsl_holdout`` run, chosen on validation.

        For each hubness correction (:data:`mll_tf.metrics.hubness.HUBNESS_CORRECTIONS`)
        the gamma maximising the validation GZSL F1@K over [pseudo-unseen,
        trained] labels (:func:`holdout_metrics`); no unseen label is read.
        Cached in ``<run>/calibration.json`` (recomputed when the model file
        changed).

        Returns:
            dict ``{"model", "gamma": {correction: float}, "val": {correction:
            figures}, ...}``, or None for a run without pseudo-unseen labels.
        """
        from mll_tf.data import fs
        from mll_tf.metrics.hubness import HUBNESS_CORRECTIONS
        from mll_tf.training.atomic import write_json

        lsplit, vec = load_label_split(run_dir)
        if not lsplit.holdout:
            return None
        path = os.path.join(run_dir, "calibration.json")
        model_path = os.path.join(run_dir, f"{which}.keras")
        stamp = None   # the model file's content, not its mtime (0 on some file systems, e.g. ram://)
        if fs.exists(model_path):
            with fs.open_file(model_path, "rb") as f:
                stamp = hashlib.sha1(f.read()).hexdigest()
        if fs.exists(path):
            rec = json.loads(fs.read_text(path))
            if rec.get("model") == which and rec.get("model_sha1") == stamp:
                return rec
        model = model if model is not None else self.load_model(run_dir, which)
        seen_idx, _ = lsplit.indices(self.read_manifest("val").label_names)
        seen_vecs = np.stack([vec[n] for n in lsplit.seen]).astype(np.float32)
        scores, labels = predict_logits(model, column_dataset(self.features_dir("val"), seen_idx, 256),
                                        seen_vecs)
        ks = tuple(self.config.eval_k or (3, 5))
        rec = {"model": which, "model_sha1": stamp, "split": "val", "holdout": list(lsplit.holdout),
               "k": list(ks), "criterion": "mean GZSL F1@K over [held-out, trained] seen labels",
               "gamma": {}, "val": {}}
        for c in HUBNESS_CORRECTIONS:
            m = holdout_metrics(scores, labels, lsplit, ks, correction=c)
            rec["gamma"][c] = m["holdout_gamma"]
            rec["val"][c] = m
        write_json(path, rec)
        return rec

    def on_fit_end(self, model, run_dir):
        from mll_tf.data import fs

        if self.split.holdout and fs.exists(os.path.join(run_dir, "best.keras")):
            rec = self.calibration(run_dir, "best")
            print(f"calibrated stacking: gamma {rec['gamma']['none']:.4f} (validation, pseudo-unseen "
                  f"labels) -> {run_dir}/calibration.json")

    def evaluate(self, run_dir, split="test", which="best", out=None, k=None, baselines=False,
                 hubness_correction="zscore", **_):
        """ZSL (unseen labels), GZSL ([unseen, seen]) and seen-only mAP and P/R/F1@K.

        Writes ``<out>/summary.json`` and ``<out>/per_class.csv`` (GZSL order:
        unseen first). ``baselines`` adds a random ranking (mean of 5) and the
        linear word-embedding (ridge) baseline, measured the same way.

        Side by side (docs/lesa.md sec. 7, docs/metrics.md sec. 7): ``+cal``
        rows apply calibrated stacking with the gamma chosen on validation
        pseudo-unseen labels (:meth:`calibration`; LESA only for
        ``--selection zsl_holdout`` runs; the baseline refits its ridge
        without the pseudo-unseen labels to choose its own gamma);
        ``+<hubness_correction>`` rows standardise each label's scores with
        statistics of the unlabelled validation images
        (:mod:`mll_tf.metrics.hubness`). ``summary.json["hubness"]`` holds the
        skewness of the unseen labels' k-occurrence and the top-1 share of
        each row's ZSL scores.

        Returns:
            (summary dict, printable report).
        """
        from mll_tf.metrics.report import format_table, zsl_gzsl_report

        ks = tuple(k) if k else tuple(self.config.eval_k or (3, 5))
        lsplit, vec = load_label_split(run_dir)
        manifest = self.read_manifest(split)
        seen_idx, unseen_idx = lsplit.indices(manifest.label_names)
        gzsl_vecs = np.stack([vec[n] for n in lsplit.gzsl_names()]).astype(np.float32)
        model = self.load_model(run_dir, which)
        ds = column_dataset(self.features_dir(split), unseen_idx + seen_idx, 256)
        scores, labels = predict_logits(model, ds, gzsl_vecs)
        u = len(lsplit.unseen)
        summary, ap = zsl_gzsl_report(scores, labels, u, ks)
        results = {"lesa": summary}
        from mll_tf.metrics.calibration import calibrated_stacking
        from mll_tf.metrics.hubness import apply_correction, fit_correction, hubness_report

        corr = hubness_correction or "none"
        hub = {"lesa": hubness_report(scores[:, :u], ks, lsplit.unseen)}
        cal = self.calibration(run_dir, which, model) if u else None
        gammas = {}
        if cal is not None:
            gammas["lesa"] = cal["gamma"]["none"]
            results["lesa+cal"] = zsl_gzsl_report(calibrated_stacking(scores, u, gammas["lesa"]), labels,
                                                  u, ks)[0]
        if corr != "none":
            val_scores, _ = predict_logits(model, column_dataset(
                self.features_dir("val"), *_val_columns(self, lsplit), 256), gzsl_vecs)
            fitted = fit_correction(val_scores, corr)
            corrected = apply_correction(scores, fitted)
            results[f"lesa+{corr}"] = zsl_gzsl_report(corrected, labels, u, ks)[0]
            hub[f"lesa+{corr}"] = hubness_report(corrected[:, :u], ks, lsplit.unseen)
            if cal is not None:
                gammas[f"lesa+{corr}"] = cal["gamma"][corr]
                results[f"lesa+{corr}+cal"] = zsl_gzsl_report(
                    calibrated_stacking(corrected, u, gammas[f"lesa+{corr}"]), labels, u, ks)[0]
        selected = None
        if cal is not None:  # the correction the validation pseudo-unseen labels prefer (ties: none)
            def crit(c):
                v = cal["val"][c]
                return float(np.mean([v[key] for key in v if key.startswith("holdout_gzsl_cal_F1@")]))

            best = max(cal["val"], key=crit)
            selected = {"correction": best, "row": "lesa+cal" if best == "none" else f"lesa+{best}+cal",
                        "criterion": "validation mean GZSL F1@K after calibration, pseudo-unseen labels",
                        "values": {c: crit(c) for c in cal["val"]}}
        if baselines:
            from mll_tf.models.baselines import LinearEmbeddingBaseline, random_scores

            rand = [zsl_gzsl_report(random_scores(*scores.shape, seed=s), labels, u, ks)[0] for s in range(5)]
            results["random"] = {st: {m: (rand[0][st][m] if m.startswith("num_") else
                                          float(np.mean([r[st][m] for r in rand]))) for m in rand[0][st]}
                                 for st in rand[0]}
            s_idx, _ = lsplit.indices(self.read_manifest("train").label_names)
            xtr, ytr = _region_means(self.features_dir("train"), s_idx)
            xte, _ = _region_means(self.features_dir(split), unseen_idx + seen_idx)
            seen_vecs = np.stack([vec[n] for n in lsplit.seen])
            lin = LinearEmbeddingBaseline().fit(xtr, ytr, seen_vecs)
            lin_scores = lin.scores(xte, gzsl_vecs)
            results["linear_embedding"] = zsl_gzsl_report(lin_scores, labels, u, ks)[0]
            hub["linear_embedding"] = hubness_report(lin_scores[:, :u], ks, lsplit.unseen)
            lin_g = _baseline_gammas(self, lsplit, vec, xtr, ytr, ks, corr) if u else None
            if lin_g is not None:
                gammas["linear_embedding"] = lin_g["none"]
                results["linear_embedding+cal"] = zsl_gzsl_report(
                    calibrated_stacking(lin_scores, u, lin_g["none"]), labels, u, ks)[0]
            if u and corr != "none":
                xva, _ = _region_means(self.features_dir("val"), *_val_columns(self, lsplit))
                lin_c = apply_correction(lin_scores, fit_correction(lin.scores(xva, gzsl_vecs), corr))
                results[f"linear_embedding+{corr}"] = zsl_gzsl_report(lin_c, labels, u, ks)[0]
                hub[f"linear_embedding+{corr}"] = hubness_report(lin_c[:, :u], ks, lsplit.unseen)
                if lin_g is not None:
                    gammas[f"linear_embedding+{corr}"] = lin_g[corr]
                    results[f"linear_embedding+{corr}+cal"] = zsl_gzsl_report(
                        calibrated_stacking(lin_c, u, lin_g[corr]), labels, u, ks)[0]
        out = out or os.path.join(run_dir, f"eval_{split}")
        model_path = os.path.join(run_dir, f"{which}.keras")
        record = {"run": run_dir, "model": model_path, "split": split, "k": list(ks), "num_unseen": u,
                  "num_seen": len(lsplit.seen), "holdout": list(lsplit.holdout), "gamma": gammas,
                  "hubness_correction": corr, "hubness": hub, "selected_on_validation": selected,
                  "results": results}
        names = lsplit.gzsl_names()
        pos, known = (labels == 1).sum(0), (labels != -1).sum(0)
        write_evaluation(out, record, ["label", "set", "ap", "num_positive", "num_known"],
                         [[n, "unseen" if i < u else "seen", f"{ap[i]:.6f}", int(pos[i]), int(known[i])]
                          for i, n in enumerate(names)])
        lines = [f"{split}: {labels.shape[0]} images, {u} unseen + {len(lsplit.seen)} seen labels "
                 f"({model_path})"]
        for name, summ in results.items():
            extra = f"; gamma {gammas[name]:.4f}" if name in gammas and name.endswith("+cal") else ""
            lines.append(format_table(summ, ks, title=f"\n[{name}] (fractions in [0, 1]{extra})"))
        if u:
            lines.append("\nhubness of the unseen labels (ZSL scores): skewness of the k-occurrence; share "
                         "of the images whose top-1 is the most frequent top-1 label")
            for name, h in hub.items():
                sk = "  ".join(f"{key} {h[key]:7.3f}" for key in h if key.startswith("skew@"))
                lines.append(f"  {name:<24}{sk}  top1_share {h['top1_share']:.3f} ({h['top1_label']})")
        if selected is not None:
            shown = ("" if selected["row"] in results else
                     f" (not shown: pass --hubness-correction {selected['correction']})")
            lines.append(f"\nselected on validation (pseudo-unseen labels, mean GZSL F1@K after calibration): "
                         f"[{selected['row']}]{shown}; " +
                         ", ".join(f"{c} {v:.4f}" for c, v in selected["values"].items()))
        if cal is None and u:
            lines.append("\n(no calibrated LESA rows: the run has no pseudo-unseen labels to choose gamma "
                         "on; train with --selection zsl_holdout)")
        lines.append(f"\nwrote {out}/summary.json and {out}/per_class.csv")
        return record, "\n".join(lines)

    def predictor(self, run_dir, which="best"):
        """Scores of the unseen then seen labels (GZSL order); LESA logits, not probabilities."""
        lsplit, vec = load_label_split(run_dir)
        names = lsplit.gzsl_names()
        vecs = tf.constant(np.stack([vec[n] for n in names]).astype(np.float32))
        model = self.load_model(run_dir, which)
        return Predictor(label_names=names,
                         score=lambda f: model(f, training=False, label_embeddings=vecs)["logits"].numpy(),
                         is_probability=False, manifest=self.read_manifest("train"))


def holdout_order(split):
    """Positions, within ``split.seen``, of the pseudo-unseen then the trained labels (int lists)."""
    held = set(split.holdout)
    return ([i for i, n in enumerate(split.seen) if n in held],
            [i for i, n in enumerate(split.seen) if n not in held])


def holdout_metrics(seen_scores, seen_labels, split, ks, correction="none"):
    """Validation figures of the pseudo-unseen protocol (``--selection zsl_holdout``).

    The held-out seen labels play the unseen labels: ZSL over them, GZSL
    over [held-out, trained] (held-out first), and the calibrated-stacking
    gamma that maximises the mean GZSL F1@K
    (:func:`mll_tf.metrics.calibration.choose_gamma`).

    Args:
        seen_scores: float ``[N, S]`` validation scores of ``split.seen`` (seen order).
        seen_labels: int ``[N, S]`` in {1, 0, -1}.
        split: :class:`~mll_tf.training.zsl_split.LabelSplit` with ``holdout``.
        ks: K values.
        correction: hubness correction applied first (fitted on these
            scores, no labels; :mod:`mll_tf.metrics.hubness`).

    Returns:
        dict of floats: ``holdout_zsl_mAP``, ``holdout_zsl_F1@K``,
        ``holdout_trained_mAP`` (the trained labels' mAP), ``holdout_H_mAP``
        (harmonic mean of those two mAPs, the GZSL "H" of Xian et al., TPAMI
        2018, Eq. 7, with mAP for accuracy: the default monitor),
        ``holdout_gzsl_mAP``, ``holdout_gzsl_F1@K``, ``holdout_gamma`` and
        ``holdout_gzsl_cal_F1@K`` (fractions in [0, 1] except the gamma, in
        score units).
    """
    from mll_tf.metrics.calibration import calibrated_stacking, choose_gamma
    from mll_tf.metrics.hubness import apply_correction, fit_correction
    from mll_tf.metrics.report import multilabel_report

    hp, tp = holdout_order(split)
    cols = hp + tp
    s = np.asarray(seen_scores, np.float64)[:, cols]
    y = np.asarray(seen_labels)[:, cols]
    s = apply_correction(s, fit_correction(s, correction))
    u = len(hp)
    out = {}
    zsl, _ = multilabel_report(s[:, :u], y[:, :u], ks)
    gzsl, _ = multilabel_report(s, y, ks)
    keep = ("mAP",) + tuple(f"F1@{k}" for k in ks)
    out.update({f"holdout_zsl_{m}": zsl[m] for m in keep if m in zsl})
    out.update({f"holdout_gzsl_{m}": gzsl[m] for m in keep if m in gzsl})
    trained, _ = multilabel_report(s[:, u:], y[:, u:], ())
    z, t = zsl["mAP"], trained["mAP"]
    out["holdout_trained_mAP"] = t
    out["holdout_H_mAP"] = 2 * z * t / (z + t) if z + t > 0 else 0.0
    gamma, _, _ = choose_gamma(s, y, u, ks)
    cal, _ = multilabel_report(calibrated_stacking(s, u, gamma), y, ks)
    out["holdout_gamma"] = gamma
    out.update({f"holdout_gzsl_cal_{m}": cal[m] for m in keep[1:] if m in cal})
    return out


def _val_columns(task, lsplit):
    """The validation split's [unseen, seen] label columns (a 1-tuple, for ``column_dataset``)."""
    seen_idx, unseen_idx = lsplit.indices(task.read_manifest("val").label_names)
    return (unseen_idx + seen_idx,)


def _baseline_gammas(task, lsplit, vec, xtr, ytr, ks, corr):
    """Calibrated-stacking gammas of the linear baseline, chosen as LESA's.

    The ridge is refitted without the pseudo-unseen seen labels (the run's
    ``holdout``, or :func:`~mll_tf.training.zsl_split.choose_holdout_labels`
    with the default settings for a run without one) and gamma maximises
    the validation GZSL F1@K over [held-out, trained]; no unseen label is read.

    Returns:
        dict correction name -> gamma (keys ``"none"`` and ``corr``), or None
        when no seen label qualifies as pseudo-unseen (tiny validation splits).
    """
    from mll_tf.models.baselines import LinearEmbeddingBaseline
    from mll_tf.training.zsl_split import choose_holdout_labels

    split = lsplit
    if not split.holdout:
        cfg = LESAConfig()
        counts = task.read_manifest("val").extra.get("label_counts_by_split", {})
        try:
            held = choose_holdout_labels(
                lsplit.seen, task.read_manifest("train").label_names, counts.get("train", {}),
                counts.get("val", {}), fraction=cfg.holdout_fraction, min_val_images=cfg.holdout_min_val_images)
        except ValueError:
            return None
        split = dataclasses.replace(lsplit, holdout=held)
    hp, tp = holdout_order(split)
    seen_vecs = np.stack([vec[n] for n in split.seen]).astype(np.float32)
    ridge = LinearEmbeddingBaseline().fit(xtr, ytr[:, tp], seen_vecs[tp])
    s_idx, _ = split.indices(task.read_manifest("val").label_names)
    xva, yva = _region_means(task.features_dir("val"), s_idx)
    val_scores = ridge.scores(xva, seen_vecs)
    out = {}
    for c in dict.fromkeys(("none", corr)):
        out[c] = holdout_metrics(val_scores, yva, split, ks, correction=c)["holdout_gamma"]
    return out


def _region_means(split_dir, columns):
    """Region-averaged features float32 [N, D] and labels[:, columns] of a split."""
    feats, labels = [], []
    for f, y in column_dataset(split_dir, columns, 256):
        feats.append(tf.reduce_mean(f, axis=1).numpy())
        labels.append(y.numpy())
    return np.concatenate(feats), np.concatenate(labels)


# ----------------------------------------------------------------------------- attention for people


def _top(names, scores, k):
    order = np.argsort(-scores, kind="stable")[:k]
    return [(names[j], float(scores[j])) for j in order]


def explain_features(model, features, seen_names, unseen_names=(), unseen_vectors=None, k=5):
    """LESA attention and top labels for precomputed features.

    Args:
        model: :class:`mll_tf.models.lesa.LESA` trained on ``seen_names``.
        features: float32 array ``[B, R, D]`` (as read from the feature store).
        seen_names: list of the model's C_s seen label names, in its column
            order (``label_split.json`` ``"seen"``).
        unseen_names: list of C_u unseen label names (may be empty).
        unseen_vectors: float32 ``[C_u, d_w]`` raw word vectors of
            ``unseen_names`` in that order (ignored when C_u = 0).
        k: int, labels per top list.

    Returns:
        list of B dicts with ``"attention"`` float32 ``[M, R]`` (softmax over
        regions), ``"seen_top"`` / ``"unseen_top"``: up to ``k``
        ``(name, score)`` pairs, best first, score = LESA logit (max over
        heads, unbounded); ``"head_top"``: M ``(name, score)`` pairs, each
        head's best label over seen and unseen labels together (the heads'
        scores s_{m,c} share W, so they are comparable).

    Raises:
        ValueError: if the number of seen names differs from the model's
            labels, or unseen names and vectors disagree.
    """
    import tensorflow as tf

    feats = tf.convert_to_tensor(np.asarray(features, np.float32))
    seen_names = list(seen_names)
    unseen_names = list(unseen_names)
    out = model(feats, training=False)
    seen_logits = out["logits"].numpy()
    if seen_logits.shape[1] != len(seen_names):
        raise ValueError(f"explain_features: the model has {seen_logits.shape[1]} seen labels, "
                         f"got {len(seen_names)} names")
    heads = out["head_logits"].numpy()                                    # [B, M, Cs]
    attention = out["attention"].numpy()
    if unseen_names:
        vecs = np.asarray(unseen_vectors, np.float32)
        if vecs.shape[0] != len(unseen_names):
            raise ValueError(f"explain_features: {len(unseen_names)} unseen names but "
                             f"{vecs.shape[0]} unseen vectors")
        zs = model(feats, training=False, label_embeddings=tf.constant(vecs))
        unseen_logits = zs["logits"].numpy()
        heads = np.concatenate([heads, zs["head_logits"].numpy()], axis=-1)
    else:
        unseen_logits = np.zeros((len(seen_logits), 0), np.float32)
    all_names = seen_names + unseen_names
    results = []
    for i in range(len(seen_logits)):
        results.append({
            "attention": attention[i],
            "seen_top": _top(seen_names, seen_logits[i], k),
            "unseen_top": _top(unseen_names, unseen_logits[i], k),
            "head_top": [_top(all_names, heads[i, m], 1)[0] for m in range(heads.shape[1])],
        })
    return results


def log_model_attention(summary_writer, step, model, examples, seen_names, unseen_names=(),
                        unseen_vectors=None, k=5, max_images=4):
    """Score fixed examples with ``model`` and log their attention figures.

    The one call a training loop needs (e.g. after each validation pass).

    Args:
        summary_writer: ``tf.summary.SummaryWriter``.
        step: int, global step.
        model: :class:`mll_tf.models.lesa.LESA`.
        examples: :class:`AttentionExamples` (from :func:`attention_examples`).
        seen_names, unseen_names, unseen_vectors, k: as :func:`explain_features`.
        max_images: int.

    Returns:
        int, the number of figures written (``attention/<i>`` tags).
    """
    from mll_tf.visualization.attention import log_attention_images

    res = explain_features(model, examples.features[:max_images], seen_names, unseen_names,
                           unseen_vectors, k)
    return log_attention_images(
        summary_writer, step, examples.images[:max_images], np.stack([r["attention"] for r in res]),
        examples.grid, [r["seen_top"] for r in res], [r["unseen_top"] for r in res],
        max_images=max_images, head_tops=[r["head_top"] for r in res])


@dataclasses.dataclass
class AttentionExamples:
    """A few store records with their images, for logging attention.

    Attributes:
        image_ids: list of str, record ids (paths relative to the dataset root).
        images: uint8 ndarray ``[n, S, S, 3]``, the images as extraction saw them.
        features: float32 ndarray ``[n, R, D]``, the stored features.
        grid: ``(h, w)`` tuple, the feature grid.
    """
    image_ids: list
    images: np.ndarray
    features: np.ndarray
    grid: tuple


def attention_examples(split_dir, num_images=4, root=None):
    """The first ``num_images`` records of a feature-store split, with images.

    Features come from the store itself (so no backbone is run); images are
    decoded from ``<root>/<image_id>`` as the extraction did
    (:func:`mll_tf.data.images.decode_image` at the manifest's input size and
    crop rule).
    Records whose image can no longer be read are left out.

    Args:
        split_dir: str, a split folder of the feature store (e.g.
            ``cfg.features_dir("val")``).
        num_images: int, how many records to take (from the deterministic,
            unshuffled read order).
        root: str or None, dataset root; default the manifest's
            ``extra["root"]``.

    Returns:
        :class:`AttentionExamples` (possibly with 0 images).

    Raises:
        ValueError: if no root is given and the manifest records none, or
            the manifest has no ``feature_grid``.
        FileNotFoundError: if the split has no manifest.
    """
    from mll_tf.data.extraction import manifest_resize_shorter
    from mll_tf.data.feature_store import make_dataset, read_manifest
    from mll_tf.data.images import decode_image

    manifest = read_manifest(split_dir)
    root = root or manifest.extra.get("root")
    if not root:
        raise ValueError(f"{split_dir}: the manifest records no dataset root (extra['root']); "
                         "pass root=")
    if not manifest.feature_grid:
        raise ValueError(f"{split_dir}: the manifest has no feature_grid")
    size = int(manifest.input_size[0])
    batch = next(iter(make_dataset(split_dir, int(num_images), as_dict=True)), None)
    ids, images, feats = [], [], []
    if batch is not None:
        for image_id, f in zip(batch["image_id"].numpy(), batch["features"].numpy()):
            image_id = image_id.decode("utf-8")
            try:
                images.append(np.asarray(decode_image(os.path.join(root, image_id), size,
                                                      manifest_resize_shorter(manifest)), np.uint8))
            except Exception:  # noqa: BLE001 - a vanished image is left out, not fatal
                continue
            ids.append(image_id)
            feats.append(f)
    r, d = manifest.feature_shape
    return AttentionExamples(
        image_ids=ids,
        images=np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8),
        features=np.stack(feats) if feats else np.zeros((0, r, d), np.float32),
        grid=tuple(manifest.feature_grid))


def explain_images(run_dir, image_paths, k=5, checkpoint="best", allow_random_backbone=False,
                   batch_size=8):
    """LESA attention and top seen/unseen labels for image files.

    Re-creates what the run saw: the backbone, weights, input size, decoding
    and feature dtype recorded in the train split's manifest
    (:class:`mll_tf.data.extraction.FeatureExtractor`); then the saved model
    scores the seen labels (its own vectors) and the unseen labels (the
    ``label_embeddings.npz`` vectors in ``label_split.json``'s unseen order).

    Args:
        run_dir: str, a LESA run directory of ``experiments/train.py``.
        image_paths: list of str, image files (anything
            :func:`mll_tf.data.images.decode_image` reads, SVG included).
        k: int, labels per top list.
        checkpoint: ``"best"`` or ``"last"``.
        allow_random_backbone: bool, accept features extracted with random
            backbone weights (they cannot be reproduced; fresh random weights
            are used).
        batch_size: int, images per backbone pass.

    Returns:
        list of dicts, one per path, in order. A readable image gives
        ``{"path", "image": uint8 [S, S, 3], "grid": (h, w), "attention":
        float32 [M, R], "seen_top", "unseen_top": lists of up to k
        (name, score) pairs (LESA logits, best first), "head_top": M
        (name, score) pairs}`` (see :func:`explain_features`); an unreadable
        one gives ``{"path", "error": "<ExceptionType>: <message>"}``.

    Raises:
        FileNotFoundError: ``run_dir`` has no ``config.yaml``, the saved model
            or the train split's features are missing.
        ValueError: not a LESA run, or the recorded backbone weights cannot
            be rebuilt.
    """
    from mll_tf.data.extraction import FeatureExtractor
    from mll_tf.tasks import load_task

    task = load_task(run_dir)
    if not isinstance(task, LESATask):
        raise ValueError(f"{run_dir} is a --method {task.name} run; attention maps need a LESA run")
    manifest = task.read_manifest("train")
    split, vectors = load_label_split(run_dir)
    unseen_vecs = (np.stack([vectors[n] for n in split.unseen]).astype(np.float32)
                   if split.unseen else None)
    extractor = FeatureExtractor(manifest, allow_random_backbone)
    model = task.load_model(run_dir, checkpoint)
    grid = tuple(int(g) for g in (manifest.feature_grid or extractor.backbone.feature_shape[:2]))
    results = [{"path": os.fspath(p)} for p in image_paths]
    good, images = [], []
    for i, p in enumerate(image_paths):
        try:
            images.append(extractor.load(p))
            good.append(i)
        except Exception as e:  # noqa: BLE001 - one bad file never stops the batch
            results[i]["error"] = f"{type(e).__name__}: {str(e)[:200]}"
    from mll_tf.data.extraction import image_features

    for start in range(0, len(good), batch_size):
        idx = good[start:start + batch_size]
        batch = np.stack(images[start:start + batch_size])
        feats = image_features(extractor.backbone.model, batch, manifest.feature_dtype, batch_size)
        scored = explain_features(model, feats, split.seen, split.unseen, unseen_vecs, k)
        for j, i in enumerate(idx):
            results[i].update(image=batch[j], grid=grid, **scored[j])
    return results
