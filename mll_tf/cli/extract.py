"""
Extract backbone feature maps of a dataset into ZLIB TFRecords.

    python extract/build_tfrecords.py --dataset openclipart --backbone efficientnet_lite0

writes ``<out-dir>/<dataset>/<backbone>_<size>/<split>/`` with ZLIB shards and a
``manifest.json`` per split (schema: ``mll_tf/data/schema.py``). Re-running the
same command after an interruption resumes: complete shards are kept and only
the missing images are processed.
"""

import functools
import os
import sys

from mll_tf.cli._flags import FlagSet, UsageError, cli_main, import_tensorflow_quietly

__all__ = ["main", "store_dir"]

PROG = "extract/build_tfrecords.py"


def build_flags():
    from mll_tf.backbones import backbone_names
    from mll_tf.data.datasets import dataset_names

    fs = FlagSet(PROG, __doc__)
    fs.define("dataset", None, f"dataset adapter ({', '.join(dataset_names())}) or tfds:<name>", required=True)
    fs.define("backbone", "efficientnet_lite0", "backbone", choices=backbone_names())
    fs.define("weights", "imagenet", "'imagenet' (the pretrained weights the backbone ships with), 'none', "
              "or a weights file")
    fs.define("input_size", 224, "square input size in pixels", min=1)
    fs.define("data_root", None, "dataset root folder (default: the adapter's)")
    fs.define("out_dir", "data/features", "feature store root")
    fs.define("splits", None, "comma-separated splits (default: all of the adapter's)")
    fs.define("batch_size", 32, "images per backbone pass", min=1)
    fs.define("workers", 2, "image-decoding processes (0: decode inline)", min=0)
    fs.define("feature_dtype", "float16", "stored feature dtype", choices=("float16", "float32"))
    fs.define("compression_level", 1, "ZLIB level", min=0, max=9)
    fs.define("max_shard_mb", 64.0, "uncompressed bytes per shard, MiB", min=0.001)
    fs.define("min_count", None, "openclipart: min train images per tag", kind="int", min=1)
    fs.define("dataset_options", "", "adapter options KEY=VALUE,... (e.g. fashion_mnist_grid: "
              "num_train=8000,seed=0)")
    fs.define("limit", None, "use only the first N images of each split (smoke tests)", kind="int", min=1)
    fs.define("overwrite", False, "discard an existing store for these splits")
    fs.define("progress", True, "a progress bar (--noprogress: none)")
    return fs


def store_dir(out_dir, dataset, backbone, input_size):
    """Folder of one dataset's features: ``<out>/<dataset>/<backbone>_<size>``."""
    return os.path.join(out_dir, dataset.replace(":", "_").replace("/", "_"), f"{backbone}_{input_size}")


def report_attributes(prepared, out_dir):
    """Attribute tables: print the class distribution per attribute (and the oversampling
    before/after), and save it as ``class_distribution_<split>.csv`` / ``.png`` in ``out_dir``."""
    from mll_tf.data.datasets.attributes_csv import (class_distribution, format_distribution,
                                                     plot_class_distribution)

    os.makedirs(out_dir, exist_ok=True)
    for split in prepared.splits:
        df = class_distribution(prepared, split)
        print(f"class distribution per attribute, {split} split:\n{format_distribution(df)}")
        df.to_csv(os.path.join(out_dir, f"class_distribution_{split}.csv"), index=False)
        plot_class_distribution(df, os.path.join(out_dir, f"class_distribution_{split}.png"),
                                title=f"{prepared.name} {split}")
    over = prepared.extra.get("oversampling")
    if over:
        print(f"oversampling (train, to {over['oversample_to']} per class, {over['copies']} copies added): "
              f"{over['note']}")
        for attr in over["before"]:
            b, a = over["before"][attr], over["after"][attr]
            print(f"  {attr}: unknown share {b['unknown_share']:.3f} -> {a['unknown_share']:.3f}; "
                  + ", ".join(f"{c} {b['counts'][c]}->{a['counts'][c]}" for c in b["counts"]))
    print(f"wrote class_distribution_<split>.csv/.png to {out_dir}")


def _run(argv):
    import_tensorflow_quietly()
    args = build_flags()
    if args.parse(argv) is None:
        return 0
    from mll_tf.backbones import build_backbone
    from mll_tf.data.datasets import get_dataset
    from mll_tf.data.extraction import FeatureFunction, extract_records
    from mll_tf.data.feature_store import FeatureStoreWriter, Manifest
    from mll_tf.registry import parse_key_values

    adapter_cls = get_dataset(args.dataset)
    kwargs = parse_key_values(args.dataset_options)
    if args.data_root:
        kwargs["root"] = args.data_root
    if args.min_count is not None:
        kwargs["min_count"] = args.min_count
    prepared = adapter_cls(**kwargs).prepare()
    splits = args.splits.split(",") if args.splits else list(prepared.splits)
    for s in splits:
        if s not in prepared.splits:
            raise UsageError(f"--splits: {args.dataset} has no split {s!r} (has {sorted(prepared.splits)})")

    root = store_dir(args.out_dir, args.dataset, args.backbone, args.input_size)
    if prepared.extra.get("attribute_groups"):
        report_attributes(prepared, root)
    weights = None if args.weights.lower() == "none" else args.weights
    try:
        backbone = build_backbone(args.backbone, weights=weights, input_size=args.input_size)
    except RuntimeError as e:  # e.g. ImageNet weights that cannot be downloaded here
        raise UsageError(f"--backbone {args.backbone} --weights {args.weights}: {e}") from None
    load_image = prepared.load_image
    if backbone.resize_shorter and backbone.resize_shorter != args.input_size:
        # e.g. VGG19 as LESA extracts: shorter side to 256, central 224 crop
        load_image = functools.partial(prepared.load_image, resize_shorter=backbone.resize_shorter)
    h, w, d = backbone.feature_shape
    feature_fn = FeatureFunction(backbone.model, args.batch_size)
    print(f"{args.dataset}: {len(prepared.label_names)} labels; backbone {backbone.name} "
          f"({backbone.weights}); feature map {h}x{w}x{d}; writing {root}")
    for split in splits:
        records = prepared.splits[split]
        if args.limit:
            records = records[:args.limit]
        manifest = Manifest(
            dataset=args.dataset, split=split, backbone=backbone.name, weights=backbone.weights,
            input_size=[args.input_size, args.input_size],
            preprocessing=f"{prepared.preprocessing}; backbone: {backbone.preprocessing}",
            feature_shape=[h * w, d], feature_grid=[h, w], feature_dtype=args.feature_dtype,
            label_names=list(prepared.label_names), extra_label_names={},
            compression_level=args.compression_level,
            extra=dict(prepared.extra, resize_shorter=backbone.resize_shorter or args.input_size))
        split_dir = os.path.join(root, split)
        with FeatureStoreWriter(split_dir, manifest, max_shard_bytes=int(args.max_shard_mb * 2**20),
                                compression_level=args.compression_level,
                                overwrite=args.overwrite) as writer:
            for item in prepared.skipped.get(split, []):
                if item["image_id"] not in writer.done_ids:
                    writer.skip(item["image_id"], item["reason"])
            stats = extract_records(records, load_image, args.input_size, feature_fn, writer,
                                    num_workers=args.workers, progress=args.progress, desc=split)
        final = writer.manifest
        written = stats.get("written", 0) + stats.get("skipped", 0)
        rate = f"{stats.get('written', 0) / max(stats['seconds'], 1e-9):.1f} img/s" if written else \
            "already complete, nothing to do"
        print(f"[{split}] {final.num_examples} examples in {len(final.shards)} shards, "
              f"{len(final.skipped)} skipped, {stats.get('already_done', 0)} done before this run; "
              f"{rate} -> {split_dir}")
        for item in final.skipped[:5]:
            print(f"    skipped {item['image_id']}: {item['reason']}")
        if len(final.skipped) > 5:
            print(f"    ... {len(final.skipped) - 5} more in {split_dir}/manifest.json")
    return 0


def main(argv=None):
    """Entry point; returns the exit code (0, or 2 with one ``error:`` line for bad input)."""
    return cli_main(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
