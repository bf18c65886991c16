"""A trained run as one model from images to scores.

:class:`ImagePipeline` fuses, in one Keras model (so that ``Model.export``
writes one graph):

1. the recorded preprocessing: RGB ``uint8 [B, H, W, 3]`` -> central square
   crop and bilinear resize to the run's input size S (the crop side is
   ``min(H, W) * S / R`` with R the recorded ``resize_shorter``, which is the
   "shorter side to R, then central S crop" of
   :func:`mll_tf.data.images.load_rgb_center_crop` done crop-first); an image
   that is already S x S with R = S passes unchanged;
2. the backbone (for stored-feature runs: the one recorded in the feature
   store's manifest, rebuilt with its weights, followed by the store's
   ``feature_dtype`` round trip; for ``--finetune`` runs: the trained one
   inside the run's model). Normalisation is a layer inside every backbone;
3. the trained head (the run's ``best``/``last`` model);
4. the output activation: ``sigmoid`` for the sigmoid methods (so an AAM
   model that outputs ``s * cos`` yields ``sigmoid(s * cos)``, never raw
   cosines), the identity for LESA's ranking scores.

Outputs: a dict ``{"probabilities": float32 [B, C]}`` (``{"scores": ...}``
for LESA), plus ``"labels": int32 [B, C]`` in {0, 1} (``score >=
threshold``) when per-class thresholds are given.

Resizing note: the in-graph resize is TensorFlow's bilinear resize without
antialiasing (supported by every export format); the file decoder of
extraction uses PIL's antialiased bilinear filter, so pixels of images
larger than S differ slightly. Feeding images already decoded at S x S by
:func:`mll_tf.data.images.decode_image` (as ``evaluation/infer.py`` does)
reproduces the training input exactly.

A Task provides ``inference_model(run_dir, which)`` returning an
:class:`InferenceModel` (:func:`from_task_parts` builds it).
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

__all__ = ["ImagePipeline", "InferenceModel", "crop_and_resize", "default_inference_model", "from_task_parts"]


def crop_and_resize(images, size, resize_shorter=None):
    """Central square crop + bilinear resize: RGB ``[B, H, W, 3]`` (any dtype) -> float32 ``[B, S, S, 3]``.

    Crop side ``c = round(min(H, W) * S / R)`` (R = ``resize_shorter`` or S),
    centred (offsets ``(H - c) // 2``, ``(W - c) // 2``), then
    ``tf.image.resize(..., "bilinear")`` to S x S (half-pixel centres, no
    antialiasing); values stay in [0, 255].

    Raises:
        ValueError: ``resize_shorter < size``.
    """
    r = size if resize_shorter is None else int(resize_shorter)
    if r < size:
        raise ValueError(f"resize_shorter={r} < size={size}")
    x = tf.cast(images, tf.float32)
    shape = tf.shape(x)
    h, w = shape[1], shape[2]
    side = tf.cast(tf.round(tf.cast(tf.minimum(h, w), tf.float32) * (size / r)), tf.int32)
    side = tf.maximum(side, 1)
    top = (h - side) // 2
    left = (w - side) // 2
    x = x[:, top:top + side, left:left + side, :]
    return tf.image.resize(x, (size, size), method="bilinear")


@keras.saving.register_keras_serializable(package="mll_tf")
class ImagePipeline(keras.Model):
    """Images -> scores of a trained run (see the module docstring).

    Args:
        head: keras.Model, the run's trained model (features ``[B, R, D]`` ->
            logits for stored-feature runs, images -> logits for
            ``--finetune`` runs); with ``head_output`` a key of its dict output.
        image_size: int S, the square input side in pixels.
        backbone: keras.Model or None, float32 ``[B, S, S, 3]`` in [0, 255] ->
            ``[B, h, w, D]`` (None: ``head`` takes images).
        resize_shorter: int or None (see :func:`crop_and_resize`).
        feature_dtype: ``"float32"`` or ``"float16"``, the store's dtype.
        activation: ``"sigmoid"`` or ``"linear"``.
        label_vectors: float32 ``[C, E]`` or None, passed to the head as
            ``label_embeddings`` (LESA: the seen or seen+unseen label set).
        head_output: str or None, key of the head's dict output.
        thresholds: float ``[C]`` or None; adds the ``labels`` output.

    Call:
        images uint8 (or float in [0, 255]) ``[B, H, W, 3]`` -> dict of
        float32 ``[B, C]`` (``probabilities`` or ``scores``) and, with
        thresholds, ``labels`` int32 ``[B, C]``.
    """

    def __init__(self, head, image_size, backbone=None, resize_shorter=None, feature_dtype="float32",
                 activation="sigmoid", label_vectors=None, head_output=None, thresholds=None, **kwargs):
        super().__init__(**kwargs)
        if activation not in ("sigmoid", "linear"):
            raise ValueError(f"activation must be 'sigmoid' or 'linear', got {activation!r}")
        if feature_dtype not in ("float32", "float16"):
            raise ValueError(f"feature_dtype must be 'float32' or 'float16', got {feature_dtype!r}")
        self.head = head
        self.backbone = backbone
        self.image_size = int(image_size)
        self.resize_shorter = None if resize_shorter is None else int(resize_shorter)
        self.feature_dtype = feature_dtype
        self.activation_name = activation
        self.head_output = head_output
        self.label_vectors = None if label_vectors is None else np.asarray(label_vectors, np.float32)
        self.thresholds = None if thresholds is None else np.asarray(thresholds, np.float32)
        self.output_name = "probabilities" if activation == "sigmoid" else "scores"

    def scores_from_pixels(self, x):
        """float32 ``[B, S, S, 3]`` in [0, 255] -> float32 scores ``[B, C]`` (no thresholds)."""
        if self.backbone is not None:
            f = self.backbone(x, training=False)
            f = tf.reshape(f, [tf.shape(f)[0], -1, f.shape[-1]])
            if self.feature_dtype == "float16":
                f = tf.cast(tf.cast(f, tf.float16), tf.float32)
        else:
            f = x
        if self.label_vectors is not None:
            out = self.head(f, training=False, label_embeddings=tf.constant(self.label_vectors))
        else:
            out = self.head(f, training=False)
        if self.head_output is not None:
            out = out[self.head_output]
        out = tf.cast(out, tf.float32)
        return tf.sigmoid(out) if self.activation_name == "sigmoid" else out

    def outputs_from_scores(self, s):
        out = {self.output_name: s}
        if self.thresholds is not None:
            out["labels"] = tf.cast(s >= tf.constant(self.thresholds), tf.int32)
        return out

    def call(self, images, training=False):
        x = crop_and_resize(images, self.image_size, self.resize_shorter)
        return self.outputs_from_scores(self.scores_from_pixels(x))


@dataclasses.dataclass
class InferenceModel:
    """What ``infer.py`` and ``export.py`` need from a trained run (a Task's ``inference_model``).

    Attributes:
        pipeline: :class:`ImagePipeline`.
        label_names: list of C str, the output columns.
        is_probability: bool (sigmoid probabilities in [0, 1], else LESA scores).
        image_size: int S.
        resize_shorter: int or None, as recorded at extraction / training.
        groups: dict attribute -> column indices, or None (attribute tables).
        classes: dict attribute -> class names, or None.
        image_column: str, the image column of the input table ("image" otherwise).
        provenance: dict (method, run, model file, backbone, weights, dataset, ...).
    """
    pipeline: object
    label_names: list
    is_probability: bool
    image_size: int
    resize_shorter: object
    groups: object = None
    classes: object = None
    image_column: str = "image"
    provenance: dict = dataclasses.field(default_factory=dict)

    def with_thresholds(self, thresholds):
        """Set (or clear, None) the per-class thresholds of the ``labels`` output."""
        if thresholds is not None:
            thresholds = np.asarray(thresholds, np.float32)
            if thresholds.shape != (len(self.label_names),):
                raise ValueError(f"{thresholds.shape[0]} thresholds for {len(self.label_names)} classes")
        self.pipeline.thresholds = thresholds
        return self


def from_task_parts(task, run_dir, which, head, label_names, activation="sigmoid", label_vectors=None,
                    head_output=None, groups=None, classes=None, image_column=None):
    """Build the :class:`InferenceModel` of a run from its trained model (for ``Task.inference_model``).

    Stored-feature runs get the backbone of the train split's manifest
    (:func:`mll_tf.data.extraction.rebuild_backbone`: same name, weights,
    input size, feature shape), its ``resize_shorter`` and ``feature_dtype``;
    ``--finetune`` runs use ``run.input_size`` and the backbone's
    ``resize_shorter`` rule, the backbone being inside ``head``.

    Raises:
        ValueError / FileNotFoundError: as :func:`rebuild_backbone` (e.g.
            features made with random backbone weights cannot be reproduced).
    """
    import os

    run = task.run
    prov = {"method": task.name, "run": os.path.abspath(run_dir), "model": f"{which}.keras",
            "dataset": run.dataset, "backbone": run.backbone, "finetune": bool(run.finetune)}
    if run.finetune:
        from mll_tf.backbones import backbone_resize_shorter

        size = int(run.input_size)
        rs = backbone_resize_shorter(run.backbone, size)
        backbone, dtype = None, "float32"
        prov["weights"] = "trained end to end (in the run's model)"
    else:
        from mll_tf.data.extraction import manifest_resize_shorter, rebuild_backbone

        manifest = task.read_manifest("train")
        bb = rebuild_backbone(manifest)
        size = int(manifest.input_size[0])
        rs = manifest_resize_shorter(manifest, bb)
        backbone, dtype = bb.model, manifest.feature_dtype
        prov.update(weights=manifest.weights, preprocessing=manifest.preprocessing,
                    feature_dtype=dtype, features=task.features_dir("train"))
        extra = manifest.extra or {}
        groups = groups if groups is not None else extra.get("attribute_groups")
        classes = classes if classes is not None else extra.get("attribute_classes")
        image_column = image_column or extra.get("image_column")
    prov.update(input_size=size, resize_shorter=rs)
    pipe = ImagePipeline(head, size, backbone=backbone, resize_shorter=rs, feature_dtype=dtype,
                         activation=activation, label_vectors=label_vectors, head_output=head_output)
    return InferenceModel(pipeline=pipe, label_names=list(label_names), is_probability=activation == "sigmoid",
                          image_size=size, resize_shorter=rs, groups=groups or None, classes=classes or None,
                          image_column=image_column or "image", provenance=prov)


def default_inference_model(task, run_dir, which="best", label_set="all", **_):
    """``Task.inference_model`` of the built-in methods.

    * LESA (``task.name == "lesa"``): the saved model scores the label set
      ``label_set``: ``"all"`` = unseen then seen labels (GZSL order, the
      vectors of ``label_embeddings.npz``), ``"seen"`` = the seen labels;
      outputs are LESA's ranking scores (``scores``), not probabilities.
    * every other method: the saved model's output are logits of the
      dataset's labels; outputs are their sigmoid (``probabilities``).

    Raises:
        ValueError: ``label_set`` is neither ``"all"`` nor ``"seen"``.
    """
    model = task.load_model(run_dir, which)
    if task.name == "lesa":
        from mll_tf.tasks.lesa import load_label_split

        if label_set not in ("all", "seen"):
            raise ValueError(f"--label-set must be 'all' or 'seen', got {label_set!r}")
        lsplit, vec = load_label_split(run_dir)
        names = lsplit.gzsl_names() if label_set == "all" else list(lsplit.seen)
        vectors = np.stack([vec[n] for n in names]).astype(np.float32)
        im = from_task_parts(task, run_dir, which, model, names, activation="linear", label_vectors=vectors,
                             head_output="logits", groups={}, classes={})
        im.provenance["label_set"] = label_set
        return im
    names, groups = task._label_info()
    classes = image_column = None
    if task.run.finetune:
        extra = getattr(getattr(task, "prepared", None), "extra", None) or {}
        classes, image_column = extra.get("attribute_classes"), extra.get("image_column")
    return from_task_parts(task, run_dir, which, model, names, activation="sigmoid", groups=groups,
                           classes=classes, image_column=image_column)


def split_scores(task, run_dir, split, which="best"):
    """Probabilities float64 ``[N, C]`` and labels int8 ``[N, C]`` of a run on one split (sigmoid methods).

    Uses the task's own evaluation input (``eval_dataset``: the feature store,
    or the images for ``--finetune`` runs) and the saved model's logits.

    Raises:
        ValueError: the task has no ``eval_dataset`` (e.g. LESA, whose scores
            are not probabilities).
    """
    if not hasattr(task, "eval_dataset") or task.name == "lesa":
        raise ValueError(f"--method {task.name} runs do not give per-class probabilities")
    from mll_tf.tasks.multilabel import predict_logits

    model = task.load_model(run_dir, which)
    logits, labels = predict_logits(model, task.eval_dataset(split))
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64))), labels
