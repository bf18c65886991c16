"""Shared base of the tasks that score every label of a dataset's vocabulary with a sigmoid.

The partial-label methods (``csl``, ``asl``, ``ignore``, ``negative``,
``logistic``) and IMCL train on a feature store or, with ``--finetune``,
end to end on the dataset's images; they share the label simulation, the
input pipelines, the validation metrics, the evaluation and inference.

* Labels: ``--partial-labels fpc:N|rps:p`` hides training labels with the
  run's seed (:mod:`mll_tf.data.simulation`) and writes the kept counts per
  class to ``partial_labels.json``; the stored labels are then looked up by
  image id in the input pipeline.
* Validation each round (keys as logged, ``val_`` + name): ``mAP`` over all
  entries (unknown counted as negative, as CSL's ``mAP``), ``mAP_partial``
  over annotated entries only (classes without a known positive and negative
  dropped), ``mAP_partial_weighted``, CP/CR/CF1/OP/OR/OF1 at ``--threshold``
  and, for attribute tables, ``acc/<attribute>``; fractions in [0, 1].
"""

import dataclasses
import os

import numpy as np
import tensorflow as tf

from mll_tf.tasks.base import Predictor, Task, TaskConfig, write_evaluation
from mll_tf.training.config import option

__all__ = ["MultiLabelConfig", "MultiLabelTask", "predict_logits", "read_ids_and_labels"]


@dataclasses.dataclass
class MultiLabelConfig(TaskConfig):
    """Options every sigmoid multi-label task has."""
    threshold: float = option(0.5, "probability threshold of CP/CR/CF1/OP/OR/OF1", min=0.0, max=1.0)


def read_ids_and_labels(split_dir, batch_size=1024):
    """All image ids (list of str) and labels (int8 ``[N, C]``) of a feature-store split, in store order."""
    from mll_tf.data.feature_store import make_dataset, read_manifest

    ids, labels = [], []
    for b in make_dataset(split_dir, batch_size, as_dict=True):
        ids.extend(x.decode() for x in b["image_id"].numpy())
        labels.append(b["labels"].numpy())
    c = len(read_manifest(split_dir).label_names)
    return ids, (np.concatenate(labels) if labels else np.zeros((0, c), np.int8))


def predict_logits(model, dataset):
    """Logits float32 ``[N, C]`` and labels int8 ``[N, C]`` over a ``(x, labels)`` dataset, in order."""
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


def prepare_adapter(run):
    """The adapter's :class:`~mll_tf.data.adapter.PreparedDataset` for a ``--finetune`` run."""
    from mll_tf.data.datasets import get_dataset
    from mll_tf.registry import parse_key_values

    kwargs = parse_key_values(run.dataset_options)
    if run.data_root:
        kwargs["root"] = run.data_root
    return get_dataset(run.dataset)(**kwargs).prepare()


class MultiLabelTask(Task):
    """A sigmoid classifier over the dataset's labels, on stored features or images."""

    Config = MultiLabelConfig
    supports_finetune = True
    default_monitor = "val_mAP_partial"
    evaluate_options = ("threshold",)
    resumable_fields = ("threshold",)
    #: --finetune on a GPU trains in mixed_float16
    mixed_precision_on_gpu = True

    # --- data ---------------------------------------------------------------------------------
    def prepare(self, run_dir, resume=False):
        """Read the training labels (store or adapter) and simulate partial labels (writes nothing)."""
        if self.run.finetune:
            prepared = prepare_adapter(self.run)
            for s in ("train", "val"):
                if not prepared.splits.get(s):
                    raise ValueError(f"--finetune: dataset {self.run.dataset} has no {s!r} images")
            self.prepared = prepared
            self.label_names = list(prepared.label_names)
            self.groups = prepared.extra.get("attribute_groups")
            full = np.stack([r.labels for r in prepared.splits["train"]]).astype(np.int8)
            self.train_ids = [r.image_id for r in prepared.splits["train"]]
            if self.mixed_precision_on_gpu and tf.config.list_physical_devices("GPU"):
                import keras
                keras.mixed_precision.set_global_policy("mixed_float16")
        else:
            manifest = self.read_manifest("train")
            self.manifest = manifest
            self.label_names = list(manifest.label_names)
            self.groups = manifest.extra.get("attribute_groups")
            self.train_ids, full = read_ids_and_labels(self.features_dir("train"))
        self.train_labels = self._simulate(full)

    def save_run_files(self, run_dir):
        """``partial_labels.json``: the simulation scheme, seed and kept label counts (atomically)."""
        from mll_tf.training.atomic import write_json

        write_json(os.path.join(run_dir, "partial_labels.json"), self.partial_label_stats, indent=1)

    def _simulate(self, full):
        from mll_tf.data.simulation import partial_label_stats, simulate

        scheme = self.run.partial_labels or "none"
        if scheme == "none":
            labels, stats = full, partial_label_stats(full, full)
        else:
            labels, stats = simulate(full, scheme, seed=self.run.seed)
        self.simulated = scheme != "none"
        self.partial_label_stats = {"scheme": scheme, "seed": self.run.seed, **stats}
        return labels

    @property
    def num_train_examples(self):
        return len(self.train_ids)

    def train_dataset(self, batch_size, start_step=0):
        r = self.run
        start = start_step * batch_size
        if r.finetune:
            from mll_tf.data.image_dataset import image_dataset

            recs = self.prepared.splits["train"]
            return image_dataset([x.path for x in recs], self.train_labels, self.prepared.load_image,
                                 r.input_size, batch_size, train=True, seed=r.seed, start_example=start)
        from mll_tf.data.feature_store import make_dataset

        ds = make_dataset(self.features_dir("train"), batch_size, shuffle=r.shuffle,
                          shuffle_buffer=r.shuffle_buffer, seed=r.seed, cache=r.cache, repeat=True,
                          drop_remainder=True, as_dict=True, start_example=start)
        if not self.simulated:
            return ds.map(lambda b: (b["features"], b["labels"]), num_parallel_calls=tf.data.AUTOTUNE)
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(self.train_ids),
                                                tf.range(len(self.train_ids), dtype=tf.int64)),
            default_value=-1)
        lab = tf.constant(self.train_labels, tf.int8)

        def lookup(b):
            rows = table.lookup(b["image_id"])
            tf.debugging.assert_non_negative(rows, message="training image id missing from the simulated labels")
            return b["features"], tf.gather(lab, rows)

        return ds.map(lookup, num_parallel_calls=tf.data.AUTOTUNE)

    def eval_dataset(self, split, batch_size=256):
        """``(x, labels)`` batches of a split for validation / evaluation, in order."""
        if self.run.finetune:
            from mll_tf.data.image_dataset import image_dataset

            prepared = getattr(self, "prepared", None) or prepare_adapter(self.run)
            if split not in prepared.splits:
                raise ValueError(f"--split: dataset {self.run.dataset} has no split {split!r} "
                                 f"(has {', '.join(sorted(prepared.splits))})")
            recs = prepared.splits[split]
            labels = np.stack([x.labels for x in recs]).astype(np.int8)
            return image_dataset([x.path for x in recs], labels, prepared.load_image, self.run.input_size,
                                 32, train=False, resize_shorter=self._resize_shorter())
        from mll_tf.data.feature_store import make_dataset

        self.read_manifest(split)
        return make_dataset(self.features_dir(split), batch_size)

    def _resize_shorter(self):
        from mll_tf.backbones import backbone_resize_shorter
        return backbone_resize_shorter(self.run.backbone, self.run.input_size)

    # --- validation ------------------------------------------------------------------------------
    def validation_metrics(self, model):
        from mll_tf.metrics.report import partial_label_report

        if not hasattr(self, "_val_ds"):
            self._val_ds = self.eval_dataset("val")
        scores, labels = predict_logits(model, self._val_ds)
        rep, _ = partial_label_report(scores, labels, self.config.threshold, self.groups)
        return {k: v for k, v in rep.items() if not k.startswith("num_")}

    # --- after training ------------------------------------------------------------------------------
    def _label_info(self):
        """(label names, attribute groups) of the run's dataset."""
        if self.run.finetune:
            prepared = getattr(self, "prepared", None) or prepare_adapter(self.run)
            self.prepared = prepared
            return list(prepared.label_names), prepared.extra.get("attribute_groups")
        m = self.read_manifest("train")
        return list(m.label_names), m.extra.get("attribute_groups")

    def evaluate(self, run_dir, split="test", which="best", out=None, threshold=None, **_):
        """mAP (all entries), mAP_partial (annotated entries), CP..OF1 and attribute accuracy.

        Writes ``<out>/summary.json`` and ``<out>/per_class.csv``.

        Returns:
            (summary dict, printable report).
        """
        from mll_tf.metrics.report import format_partial_table, partial_label_report

        thr = self.config.threshold if threshold is None else float(threshold)
        names, groups = self._label_info()
        model = self.load_model(run_dir, which)
        scores, labels = predict_logits(model, self.eval_dataset(split))
        summary, ap = partial_label_report(scores, labels, thr, groups)
        out = out or os.path.join(run_dir, f"eval_{split}")
        model_path = os.path.join(run_dir, f"{which}.keras")
        record = {"run": run_dir, "model": model_path, "split": split, "threshold": thr,
                  "method": self.name, "results": summary}
        pos, known = (labels == 1).sum(0), (labels != -1).sum(0)
        write_evaluation(out, record, ["label", "ap_partial", "num_positive", "num_known"],
                         [[n, "" if not np.isfinite(ap[i]) else f"{ap[i]:.6f}", int(pos[i]), int(known[i])]
                          for i, n in enumerate(names)])
        text = (f"{split}: {labels.shape[0]} images, {len(names)} labels ({model_path}); "
                f"{summary['num_classes_dropped']} classes without a known positive and negative dropped "
                f"from mAP_partial\n"
                + format_partial_table({self.name: summary},
                                       title=f"\n[{self.name}] (fractions in [0, 1], threshold {thr})")
                + f"\n\nwrote {out}/summary.json and {out}/per_class.csv")
        return record, text

    def predictor(self, run_dir, which="best"):
        """Sigmoid probabilities of every label, from stored-feature-like inputs.

        Raises:
            ValueError: for a ``--finetune`` run (its model takes images; use
                ``evaluation/evaluate.py``).
        """
        if self.run.finetune:
            raise ValueError("infer.py scores runs trained on stored features; a --finetune run is "
                             "evaluated with evaluation/evaluate.py")
        model = self.load_model(run_dir, which)
        manifest = self.read_manifest("train")
        return Predictor(label_names=list(manifest.label_names),
                         score=lambda f: tf.sigmoid(model(f, training=False)).numpy(),
                         is_probability=True, manifest=manifest)
