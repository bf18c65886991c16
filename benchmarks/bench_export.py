"""Throughput and latency of an exported model in each runtime, side by side.

Usage:
    python benchmarks/bench_export.py --input-size 224 --num-classes 20 --repeats-1 50 --repeats-32 8

Builds the ImagePipeline of a stored-feature run (EfficientNet-Lite0 with its
real ImageNet weights, the run's MultiLabelHead with ``--num-classes``
outputs, float16 feature round trip, per-class thresholds -> ``labels``),
exports it with ``evaluation/export.py``'s code to every installed format
(``--formats``), and times, in this one process, the same uint8 batches
(scikit-image's photographs resized to S x S) through:

* ``keras``: the Keras model in a ``tf.function`` (the baseline of the ratios);
* ``savedmodel``: ``tf.saved_model.load`` + ``serving_default``;
* ``onnx``: onnxruntime (CPUExecutionProvider);
* ``litert``: the LiteRT interpreter (``ai_edge_litert``, else ``tf.lite``);
* ``openvino``: OpenVINO runtime, CPU, f32.

For batch sizes 1 and 32: images/s over all timed calls, p50 and p99
latency per call (ms), and the speed ratio to ``keras``; also the max
|probability difference| to Keras on the batch. Wall-clock on a shared
machine: compare within one run only. Prints, no assertions.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def photos(size, n):
    from PIL import Image
    from skimage import data

    srcs = [data.chelsea(), data.astronaut(), data.coffee(), data.rocket()]
    out = []
    for i in range(n):
        im = Image.fromarray(srcs[i % len(srcs)])
        w, h = im.size
        s = min(w, h)
        im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((size, size))
        out.append(np.asarray(im, np.uint8))
    return np.stack(out)


def time_calls(fn, x, repeats, warmup=2):
    for _ in range(warmup):
        fn(x)
    lat = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x)
        lat.append(time.perf_counter() - t)
    lat = np.array(lat)
    return {"ips": len(x) * repeats / lat.sum(), "p50": 1e3 * np.percentile(lat, 50),
            "p99": 1e3 * np.percentile(lat, 99)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--num-classes", type=int, default=20)
    ap.add_argument("--repeats-1", type=int, default=50)
    ap.add_argument("--repeats-32", type=int, default=8)
    ap.add_argument("--formats", default="savedmodel,onnx,litert,openvino")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import tensorflow as tf

    from mll_tf.backbones import build_backbone
    from mll_tf.export.formats import FORMATS, REQUIREMENTS, export_inference_model
    from mll_tf.export.inference import ImagePipeline, InferenceModel
    from mll_tf.export.runtimes import load_exported
    from mll_tf.models.heads import MultiLabelHead

    import importlib.util

    tf.keras.utils.set_random_seed(args.seed)
    s = args.input_size
    bb = build_backbone("efficientnet_lite0", input_size=s)
    h, w, d = bb.feature_shape
    head = MultiLabelHead(args.num_classes)
    head(tf.zeros([1, h * w, d]))
    pipe = ImagePipeline(head, s, backbone=bb.model, feature_dtype="float16",
                         thresholds=np.full(args.num_classes, 0.5, np.float32))
    im = InferenceModel(pipe, [f"class_{i}" for i in range(args.num_classes)], True, s, None,
                        provenance={"method": "benchmark"})
    x32 = photos(s, 32)
    x1 = x32[:1]
    keras_fn = tf.function(lambda x: pipe(x), reduce_retracing=True)
    runners = {"keras": lambda x: {k: v.numpy() for k, v in keras_fn(x).items()}}
    tmp = tempfile.mkdtemp(prefix="bench_export_")
    skipped = {}
    for fmt in [f for f in args.formats.split(",") if f]:
        if fmt not in FORMATS:
            raise SystemExit(f"error: --formats: unknown format {fmt!r}")
        missing = [m for m in REQUIREMENTS[fmt] if importlib.util.find_spec(m) is None]
        if missing:
            skipped[fmt] = f"not installed: {', '.join(missing)}"
            continue
        t = time.perf_counter()
        export_inference_model(im, os.path.join(tmp, fmt), fmt)
        print(f"exported {fmt} in {time.perf_counter() - t:.1f} s", flush=True)
        runners[fmt] = load_exported(os.path.join(tmp, fmt)).run
    ref = runners["keras"](x32)["probabilities"]
    print(f"\nEfficientNet-Lite0 {s}x{s} + MultiLabelHead({args.num_classes}), uint8 input, CPU threads: "
          f"{os.cpu_count()}; tensorflow {tf.__version__}")
    print(f"{'runtime':<11}{'b1 img/s':>10}{'b1 p50 ms':>11}{'b1 p99 ms':>11}{'b32 img/s':>11}"
          f"{'b32 p50 ms':>12}{'b32 p99 ms':>12}{'x keras b1':>11}{'x keras b32':>12}{'max|dp|':>10}")
    base = None
    for name, fn in runners.items():
        r1 = time_calls(fn, x1, args.repeats_1)
        r32 = time_calls(fn, x32, args.repeats_32)
        diff = float(np.abs(fn(x32)["probabilities"] - ref).max())
        if base is None:
            base = (r1["ips"], r32["ips"])
        print(f"{name:<11}{r1['ips']:10.1f}{r1['p50']:11.2f}{r1['p99']:11.2f}{r32['ips']:11.1f}{r32['p50']:12.1f}"
              f"{r32['p99']:12.1f}{r1['ips'] / base[0]:11.2f}{r32['ips'] / base[1]:12.2f}{diff:10.1e}", flush=True)
    for fmt, why in skipped.items():
        print(f"{fmt:<11}skipped ({why})")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
