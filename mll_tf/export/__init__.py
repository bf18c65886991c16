"""Models in and out: per-class thresholds of a run, one image-to-scores model, exports, imported weights.

* :mod:`mll_tf.export.thresholds`: ``evaluate.py --tune-thresholds`` (tuned on
  the validation split, ``thresholds.json`` keyed by class name).
* :mod:`mll_tf.export.inference`: :class:`~mll_tf.export.inference.ImagePipeline`,
  the trained run as ONE Keras model from images to scores (recorded
  preprocessing + backbone + trained head + output activation), used by
  ``evaluation/infer.py`` and ``evaluation/export.py``.
* :mod:`mll_tf.export.formats`: SavedModel / ONNX / LiteRT / OpenVINO files
  with Keras' own ``Model.export`` and a sidecar JSON.
* :mod:`mll_tf.export.import_weights`: the original implementations' released
  checkpoints mapped by name onto our models.
"""
