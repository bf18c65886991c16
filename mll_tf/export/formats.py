"""Write a run's :class:`~mll_tf.export.inference.ImagePipeline` as SavedModel / ONNX / LiteRT / OpenVINO.

Every format is written by Keras' own ``Model.export`` (``keras.export.ExportArchive``
for the SavedModel, whose converters are tf2onnx, the TensorFlow Lite
converter and OpenVINO's ``convert_model``); nothing here converts a graph by
hand. The exported graph is one function:

* input ``images``: RGB ``uint8 [B, H, W, 3]`` (any H, W: the recorded
  central crop + resize to S is in the graph); the SavedModel also has a
  ``serving_bytes`` signature taking encoded JPEG/PNG/BMP/GIF files
  (``string [B]``, decoded by ``tf.io.decode_image``). SVG drawings are
  rendered outside the graph (:func:`mll_tf.data.images.render_svg`);
* outputs ``probabilities`` float32 ``[B, C]`` (``scores`` for LESA) and, when
  thresholds are given, ``labels`` int32 ``[B, C]`` in {0, 1}.

Beside the model, ``mll_export.json`` (:data:`SIDECAR`) holds the class
names (column order), the thresholds keyed by class name, attribute groups,
the input and output specs and the provenance (run, method, saved model
file and its SHA-256, backbone and weights, versions).

Layout of ``out``: ``saved_model/`` (savedmodel), ``model.onnx``,
``model.tflite`` (litert), ``model.xml`` + ``model.bin`` (openvino), plus
the sidecar.
"""

import datetime
import hashlib
import json
import os

import numpy as np

__all__ = ["FORMATS", "MODEL_FILES", "SIDECAR", "export_inference_model", "export_run"]

FORMATS = ("savedmodel", "onnx", "litert", "openvino")
#: the model file (or folder) each format writes inside the output folder
MODEL_FILES = {"savedmodel": "saved_model", "onnx": "model.onnx", "litert": "model.tflite",
               "openvino": "model.xml"}
SIDECAR = "mll_export.json"
#: the pip packages each format needs beyond TensorFlow/Keras (``pip install mll_tf[export]``)
REQUIREMENTS = {"savedmodel": (), "onnx": ("tf2onnx", "onnx", "onnxruntime"), "litert": (),
                "openvino": ("openvino",)}


def _check_installed(fmt):
    import importlib.util

    missing = [m for m in REQUIREMENTS[fmt] if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"--format {fmt} needs the Python packages {', '.join(missing)}: "
                         f"pip install 'mll_tf[export]' (or pip install {' '.join(missing)})")


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _decode_bytes_fn(pipe):
    import tensorflow as tf

    size, rs = pipe.image_size, pipe.resize_shorter
    from mll_tf.export.inference import crop_and_resize

    def one(b):
        im = tf.io.decode_image(b, channels=3, expand_animations=False, dtype=tf.uint8)
        return crop_and_resize(im[None], size, rs)[0]

    def fn(image_bytes):
        x = tf.map_fn(one, image_bytes, fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
        return pipe.outputs_from_scores(pipe.scores_from_pixels(x))
    return fn


def export_inference_model(im, out, fmt, overwrite=False):
    """Write an :class:`~mll_tf.export.inference.InferenceModel` in one format, with its sidecar.

    Args:
        im: the InferenceModel (thresholds already set with ``with_thresholds``).
        out: str, output folder (created; must be empty or absent unless ``overwrite``).
        fmt: one of :data:`FORMATS`.
        overwrite: bool, replace an existing export in ``out``.

    Returns:
        dict, the sidecar (also written as ``<out>/mll_export.json``).

    Raises:
        ValueError: unknown format, a missing optional package (with the pip
            command), or ``out`` already holding an export.
    """
    import keras
    import tensorflow as tf

    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    _check_installed(fmt)
    target = os.path.join(out, MODEL_FILES[fmt])
    if os.path.exists(target) or os.path.exists(os.path.join(out, SIDECAR)):
        if not overwrite:
            raise ValueError(f"--out: {out} already holds an export; pass --overwrite or another --out")
        import shutil

        if os.path.isdir(target):
            shutil.rmtree(target)
        for p in (target, os.path.join(out, SIDECAR), os.path.join(out, "model.bin")):
            if os.path.isfile(p):
                os.remove(p)
    os.makedirs(out, exist_ok=True)
    pipe = im.pipeline
    if not pipe.built:
        pipe(np.zeros((1, im.image_size, im.image_size, 3), np.uint8))
    spec = tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")
    if fmt == "savedmodel":
        archive = keras.export.ExportArchive()
        archive.track(pipe)
        archive.add_endpoint("serving_default", lambda images: pipe(images), input_signature=[spec])
        archive.add_endpoint("serving_bytes", _decode_bytes_fn(pipe),
                             input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        archive.write_out(target, verbose=False)
    else:
        pipe.export(target, format=fmt, input_signature=[spec], verbose=False)
    names = list(im.label_names)
    thr = pipe.thresholds
    outputs = {pipe.output_name: {"dtype": "float32", "shape": ["B", len(names)],
                                  "meaning": ("sigmoid probabilities in [0, 1]" if im.is_probability else
                                              "LESA ranking scores (unbounded; higher = more likely)")}}
    if thr is not None:
        outputs["labels"] = {"dtype": "int32", "shape": ["B", len(names)],
                             "meaning": "1 where score >= the class threshold"}
    prov = dict(im.provenance)
    model_file = os.path.join(prov.get("run", ""), prov.get("model", ""))
    if os.path.isfile(model_file):
        prov["model_sha256"] = _sha256(model_file)
    import mll_tf

    prov.update(exported_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                tensorflow=tf.__version__, keras=keras.__version__,
                mll_tf=getattr(mll_tf, "__version__", "unknown"), format=fmt, converter={
                    "savedmodel": "keras.export.ExportArchive", "onnx": "keras Model.export (tf2onnx)",
                    "litert": "keras Model.export (tf.lite.TFLiteConverter)",
                    "openvino": "keras Model.export (openvino)"}[fmt])
    sidecar = {
        "format": fmt, "model": MODEL_FILES[fmt],
        "class_names": names,
        "thresholds": None if thr is None else {n: float(t) for n, t in zip(names, thr)},
        "attribute_groups": {a: [int(c) for c in cols] for a, cols in (im.groups or {}).items()} or None,
        "attribute_classes": im.classes or None,
        "image_column": im.image_column,
        "input": {"name": "images", "dtype": "uint8", "shape": ["B", "H", "W", 3], "channels": "RGB",
                  "range": [0, 255], "image_size": im.image_size, "resize_shorter": im.resize_shorter,
                  "in_graph": "central square crop of side round(min(H, W) * S / R), bilinear resize to "
                              "S x S (no antialiasing), backbone normalisation",
                  "decoder_outside_the_graph": "mll_tf.data.images.decode_image (SVG rendered by cairosvg)"},
        "signatures": (["serving_default (images uint8)", "serving_bytes (image_bytes string [B])"]
                       if fmt == "savedmodel" else ["images uint8"]),
        "outputs": outputs,
        "provenance": prov,
    }
    with open(os.path.join(out, SIDECAR), "w", encoding="utf-8") as f:
        json.dump(sidecar, f, indent=2)
    return sidecar


def export_run(run_dir, out, fmt, which="best", thresholds="auto", label_set="all", overwrite=False):
    """Export a trained run (any method, via ``Task.inference_model``).

    Args:
        run_dir: str, run directory.
        out: str, output folder.
        fmt: one of :data:`FORMATS`.
        which: ``"best"`` or ``"last"``.
        thresholds: ``"auto"`` (``<run>/thresholds.json`` when it exists and was
            tuned for ``which``), ``"none"``, or a path to a ``thresholds.json``.
        label_set: LESA: ``"all"`` (unseen + seen labels) or ``"seen"``.
        overwrite: bool.

    Returns:
        (sidecar dict, the InferenceModel).
    """
    from mll_tf.data import fs
    from mll_tf.export.thresholds import load_thresholds
    from mll_tf.tasks import load_task

    task = load_task(run_dir)
    if label_set != "all" and task.name != "lesa":
        raise ValueError("--label-set applies to --method lesa runs")
    im = task.inference_model(run_dir, which, label_set=label_set)
    path = None
    if thresholds == "auto":
        cand = os.path.join(run_dir, "thresholds.json")
        if fs.isfile(cand):
            if json.loads(fs.read_text(cand)).get("model", f"{which}.keras") == f"{which}.keras":
                path = cand
    elif thresholds not in (None, "none"):
        path = thresholds
    if path:
        im.with_thresholds(load_thresholds(path, im.label_names))
        im.provenance["thresholds_file"] = os.path.abspath(path)
    return export_inference_model(im, out, fmt, overwrite=overwrite), im
