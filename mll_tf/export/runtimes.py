"""Run an export of ``evaluation/export.py`` in its own runtime.

:func:`load_exported` reads the sidecar (``mll_export.json``) and opens the
model with the runtime of its format: TensorFlow (``tf.saved_model.load``),
onnxruntime (``InferenceSession``), the TensorFlow Lite / LiteRT interpreter
(``ai_edge_litert.interpreter.Interpreter``, else ``tf.lite.Interpreter``) or the OpenVINO runtime (``Core.compile_model``).
"""

import json
import os

import numpy as np

__all__ = ["ExportedModel", "load_exported"]


class ExportedModel:
    """An exported model and its sidecar; ``run(images)`` -> dict of NumPy outputs.

    Attributes (from the sidecar): ``format``, ``label_names``,
    ``thresholds`` (float64 ``[C]`` or None), ``image_size``,
    ``resize_shorter``, ``groups``, ``classes``, ``image_column``,
    ``is_probability``, ``output_name``, ``sidecar`` (the whole dict).
    """

    def __init__(self, folder, sidecar):
        self.folder = folder
        self.sidecar = sidecar
        self.format = sidecar["format"]
        self.label_names = list(sidecar["class_names"])
        thr = sidecar.get("thresholds")
        self.thresholds = None if thr is None else np.array([thr[n] for n in self.label_names])
        self.image_size = int(sidecar["input"]["image_size"])
        self.resize_shorter = sidecar["input"].get("resize_shorter")
        groups = sidecar.get("attribute_groups") or None
        self.groups = {a: list(c) for a, c in groups.items()} if groups else None
        self.classes = sidecar.get("attribute_classes") or None
        self.image_column = sidecar.get("image_column") or "image"
        self.output_name = "probabilities" if "probabilities" in sidecar["outputs"] else "scores"
        self.is_probability = self.output_name == "probabilities"
        self._open(os.path.join(folder, sidecar["model"]))

    def _open(self, path):
        fmt = self.format
        if fmt == "savedmodel":
            import tensorflow as tf

            self._obj = tf.saved_model.load(path)
            sig = self._obj.signatures["serving_default"]
            self._run = lambda x: {k: v.numpy() for k, v in sig(images=tf.constant(x)).items()}
        elif fmt == "onnx":
            import onnxruntime as ort

            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            name = sess.get_inputs()[0].name
            outs = [o.name for o in sess.get_outputs()]
            self._run = lambda x: dict(zip(outs, sess.run(outs, {name: x})))
        elif fmt == "litert":
            try:  # the LiteRT interpreter (pip ai-edge-litert); TensorFlow's deprecated copy otherwise
                from ai_edge_litert.interpreter import Interpreter
            except ImportError:
                import tensorflow as tf
                Interpreter = tf.lite.Interpreter
            interp = Interpreter(model_path=path)
            runner = interp.get_signature_runner("serving_default")   # named outputs, any batch / H / W
            self._run = lambda x: dict(runner(images=x))
        elif fmt == "openvino":
            import openvino as ov

            # f32: the CPU plugin would otherwise run in bf16 on CPUs that have it (errors ~1e-2)
            compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            outs = compiled.outputs

            def run(x):
                res = compiled(x)
                return {next(iter(o.get_names()), str(i)): np.asarray(res[o]) for i, o in enumerate(outs)}
            self._run = run
        else:
            raise ValueError(f"unknown export format {fmt!r} in {self.folder}/mll_export.json")

    def run(self, images):
        """uint8 ``[B, H, W, 3]`` -> ``{"probabilities" or "scores": float32 [B, C], ["labels": [B, C]]}``.

        Output names are matched by their shape and dtype when a converter
        renamed them (ONNX/LiteRT/OpenVINO may prefix or number them).
        """
        raw = self._run(np.ascontiguousarray(images, dtype=np.uint8))
        out = {}
        for k, v in raw.items():
            v = np.asarray(v)
            key = "labels" if ("labels" in k or v.dtype.kind in "iu") else self.output_name
            out[key] = v
        if self.thresholds is not None and "labels" not in out:
            out["labels"] = (out[self.output_name] >= self.thresholds).astype(np.int32)
        return out

    def score_pixels(self, images):
        """uint8 ``[n, S, S, 3]`` -> float32 scores ``[n, C]``."""
        return np.asarray(self.run(images)[self.output_name], np.float32)


def load_exported(path):
    """Open an export folder (or its model file) of ``evaluation/export.py``.

    Raises:
        FileNotFoundError: no ``mll_export.json`` beside the model.
        ValueError: an unknown format in the sidecar.
    """
    folder = path if os.path.isdir(path) and os.path.isfile(os.path.join(path, "mll_export.json")) \
        else os.path.dirname(os.path.abspath(path))
    side = os.path.join(folder, "mll_export.json")
    if not os.path.isfile(side):
        raise FileNotFoundError(f"--model: {path} has no mll_export.json beside it (not written by "
                                f"evaluation/export.py)")
    with open(side, encoding="utf-8") as f:
        return ExportedModel(folder, json.load(f))
