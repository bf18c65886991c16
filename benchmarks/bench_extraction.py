#!/usr/bin/env python
"""Extraction throughput: end to end vs the backbone's forward pass alone.

    python benchmarks/bench_extraction.py [--num-images 320] [--workers 2]

On the same real clip-art images (Debian openclipart-svg) and the same
batches, prints images/s for
  1. decoding alone (cairosvg render + pad, in --workers processes),
  2. the backbone forward pass alone on pre-decoded batches (the baseline),
  3. the whole extraction (decode in workers || forward || serialise + ZLIB
     write), and the ratio 3 / 2 (goal: >= 0.85).
"""

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-images", type=int, default=320)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--source", choices=["svg", "png"], default="svg",
                   help="svg: render the clip-art with cairosvg (the real job); png: the same drawings "
                        "pre-rendered to PNG files (untimed), decoded with PIL -- a cheap decoder like "
                        "the JPEG photos of NUS-WIDE or COCO")
    args = p.parse_args(argv)

    import numpy as np
    from mll_tf.backbones import build_backbone
    from mll_tf.data.datasets.openclipart import OpenClipArt
    from mll_tf.data.extraction import FeatureFunction, _load_chunk, extract_records
    from mll_tf.data.feature_store import FeatureStoreWriter, Manifest

    prepared = OpenClipArt().prepare()
    records = prepared.splits["train"][:args.num_images]
    size, bs = args.input_size, args.batch_size
    load_image = prepared.load_image
    if args.source == "png":
        import dataclasses
        from PIL import Image
        from mll_tf.data.images import load_rgb_center_crop
        png_dir = tempfile.mkdtemp(prefix="bench_png_")
        pngs = []
        for i, r in enumerate(records):
            try:
                im = prepared.load_image(r.path, 2 * size)
            except Exception:  # noqa: BLE001 - unrenderable drawings stay unrenderable
                continue
            path = os.path.join(png_dir, f"{i:05d}.png")
            Image.fromarray(im).save(path)
            pngs.append(dataclasses.replace(r, path=path))
        records, load_image = pngs, load_rgb_center_crop
    backbone = build_backbone("efficientnet_lite0", input_size=size)
    fn = FeatureFunction(backbone.model, bs)

    # 1. decode alone (parallel, same worker setup as extraction)
    import concurrent.futures as cf
    import multiprocessing
    t = time.perf_counter()
    chunks = [[(r.image_id, r.path) for r in records[i:i + 16]] for i in range(0, len(records), 16)]
    with cf.ProcessPoolExecutor(max(args.workers, 1), mp_context=multiprocessing.get_context("spawn")) as ex:
        results = list(ex.map(_load_chunk, [load_image] * len(chunks), chunks, [size] * len(chunks)))
    decode_s = time.perf_counter() - t
    images = np.concatenate([r[1] for r in results])
    n = len(images)

    # 2. forward alone on the same batches (after one warm-up batch)
    fn(images[:bs])
    t = time.perf_counter()
    for i in range(0, n, bs):
        fn(images[i:i + bs])
    forward_s = time.perf_counter() - t

    # 3. end to end
    h, w, d = backbone.feature_shape
    with tempfile.TemporaryDirectory() as tmp:
        m = Manifest(dataset="openclipart", split="bench", backbone=backbone.name, weights=backbone.weights,
                     input_size=[size, size], preprocessing=prepared.preprocessing, feature_shape=[h * w, d],
                     feature_grid=[h, w], feature_dtype="float16", label_names=prepared.label_names,
                     extra_label_names={})
        t = time.perf_counter()
        with FeatureStoreWriter(os.path.join(tmp, "bench"), m) as writer:
            stats = extract_records(records, load_image, size, fn, writer,
                                    num_workers=args.workers, progress=False)
        e2e_s = time.perf_counter() - t
        store_mb = sum(os.path.getsize(os.path.join(tmp, "bench", f))
                       for f in os.listdir(os.path.join(tmp, "bench"))) / 2**20

    print(f"EfficientNet-Lite0 {size}x{size} -> {h}x{w}x{d}, batch {bs}, {n} clip-art images, "
          f"{args.workers} decode workers, {os.cpu_count()} cores, source {args.source}")
    print(f"{'stage':<34}{'images/s':>10}")
    print(f"{'decode only (' + args.source + ', parallel)':<34}{n / decode_s:>10.1f}")
    print(f"{'forward only (baseline)':<34}{n / forward_s:>10.1f}")
    print(f"{'end to end (decode||forward||write)':<34}{stats['written'] / e2e_s:>10.1f}")
    print(f"ratio end-to-end / forward-only: {(stats['written'] / e2e_s) / (n / forward_s):.2f} (goal >= 0.85)")
    print(f"store: {store_mb:.1f} MiB for {stats['written']} images (float16, ZLIB level 1); "
          f"{stats.get('skipped', 0)} skipped")


if __name__ == "__main__":
    main()
