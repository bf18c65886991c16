"""
Extract backbone feature maps of a dataset into ZLIB TFRecords.

    python extract/build_tfrecords.py --dataset openclipart --backbone efficientnet_lite0

writes ``<out-dir>/<dataset>/<backbone>_<size>/<split>/`` with ZLIB shards and a
``manifest.json`` per split (schema: ``mll_tf/data/schema.py``). Re-running the
same command after an interruption resumes: complete shards are kept and only
the missing images are processed. A store made with other dataset options,
or from records whose ids or labels have changed since, is refused (pass
``--overwrite`` or use another ``--out-dir``); so is a split another
extraction is writing.

    python extract/build_tfrecords.py --verify --dataset openclipart --backbone efficientnet_lite0

checks the store instead: every shard read to its end (CRCs), its record count
and each record's feature size and shape against the manifest; one line per
bad shard, exit code 2 if any.

Sharded over N machines or processes (each a deterministic 1/N of the images,
by a hash of the image id, into ``<split>/part-0000I-of-0000N/``; any worker may
be killed and re-run, it resumes), then merged once all are done:

    python extract/build_tfrecords.py --dataset openclipart --num-workers 2 --worker-index 0
    python extract/build_tfrecords.py --dataset openclipart --num-workers 2 --worker-index 1
    python extract/build_tfrecords.py --dataset openclipart --num-workers 2 --finalize

(``--num-workers``/``--worker-index`` also come from the ``TF_CONFIG`` environment
variable: chief and worker tasks.) ``--out-dir`` may be any ``tf.io.gfile`` path
(``gs://...``).
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
    fs.define("num_workers", None, "sharded extraction: how many workers share each split (default: from "
              "TF_CONFIG if set, else 1); worker I writes <split>/part-0000I-of-0000N/", kind="int", min=1)
    fs.define("worker_index", None, "sharded extraction: this worker's index in [0, --num-workers) (default: "
              "from TF_CONFIG)", kind="int", min=0)
    fs.define("finalize", False, "sharded extraction: once every worker is done, merge their manifests into "
              "each split's manifest.json, checking that every image was written exactly once")
    fs.define("verify", False, "check the store selected by --out-dir/--dataset/--backbone/--input-size "
              "(and --splits) instead of extracting: CRCs, record counts, feature sizes and shapes; exit 2 "
              "if a shard is bad")
    return fs


def store_dir(out_dir, dataset, backbone, input_size):
    """Folder of one dataset's features: ``<out>/<dataset>/<backbone>_<size>``."""
    return os.path.join(out_dir, dataset.replace(":", "_").replace("/", "_"), f"{backbone}_{input_size}")


def report_attributes(prepared, out_dir):
    """Attribute tables: print the class distribution per attribute (and the oversampling
    before/after), and save it as ``class_distribution_<split>.csv`` / ``.png`` in ``out_dir``."""
    from mll_tf.data.datasets.attributes_csv import (class_distribution, format_distribution,
                                                     plot_class_distribution)

    from mll_tf.training.atomic import atomic_path, write_text

    for split in prepared.splits:   # out_dir may be any tf.io.gfile path, as the store
        df = class_distribution(prepared, split)
        print(f"class distribution per attribute, {split} split:\n{format_distribution(df)}")
        write_text(os.path.join(out_dir, f"class_distribution_{split}.csv"), df.to_csv(index=False))
        with atomic_path(os.path.join(out_dir, f"class_distribution_{split}.png"), suffix=".png") as tmp:
            plot_class_distribution(df, tmp, title=f"{prepared.name} {split}")
    over = prepared.extra.get("oversampling")
    if over:
        print(f"oversampling (train, to {over['oversample_to']} per class, {over['copies']} copies added): "
              f"{over['note']}")
        for attr in over["before"]:
            b, a = over["before"][attr], over["after"][attr]
            print(f"  {attr}: unknown share {b['unknown_share']:.3f} -> {a['unknown_share']:.3f}; "
                  + ", ".join(f"{c} {b['counts'][c]}->{a['counts'][c]}" for c in b["counts"]))
    print(f"wrote class_distribution_<split>.csv/.png to {out_dir}")


def _printable(image_id):
    """An image id on one line (line breaks shown as \\n, \\r)."""
    return image_id.replace("\n", "\\n").replace("\r", "\\r")


def verify(root, splits=None):
    """``--verify``: check the splits of the store ``root``; print one ``BAD`` line per bad shard.

    Args:
        root: str, ``<out-dir>/<dataset>/<backbone>_<size>``.
        splits: optional list of split names (default: every sub-directory
            with a ``manifest.json``).

    Returns:
        int, 0 if every shard is good.

    Raises:
        FileNotFoundError: naming the store or split that does not exist.
        UsageError: (exit code 2, one ``error:`` line) if a shard is bad,
            after its ``BAD <shard>: <problem>`` line was printed.
    """
    from mll_tf.data.feature_store import MANIFEST_NAME, read_manifest, verify_store

    from mll_tf.data import fs as gfs

    if not gfs.isdir(root):
        raise FileNotFoundError(f"--verify: feature store {root} does not exist (check --out-dir, "
                                f"--dataset, --backbone and --input-size)")
    if splits is None:
        splits = sorted(d for d in gfs.listdir(root) if gfs.isfile(gfs.join(root, d, MANIFEST_NAME)))
        if not splits:
            raise FileNotFoundError(f"--verify: {root} holds no split with a {MANIFEST_NAME}")
    total_bad, total_shards = 0, 0
    for split in splits:
        split_dir = os.path.join(root, split)
        manifest = read_manifest(split_dir)
        bad = verify_store(split_dir)
        for path, problem in bad:
            print(f"BAD {path}: {problem}", flush=True)
        total_bad += len(bad)
        total_shards += len(manifest.shards)
        state = "" if manifest.complete else " (incomplete: the extraction was interrupted)"
        print(f"[{split}] {len(manifest.shards)} shards, {manifest.num_examples} records{state}: "
              + (f"{len(bad)} bad shard(s)" if bad else "ok"), flush=True)
    if total_bad:
        raise UsageError(
            f"--verify: {total_bad} of {total_shards} shards of {root} are bad (listed above); delete them "
            f"with their .ids.txt files and re-run the extraction command to re-extract their images, or "
            f"re-extract everything with --overwrite")
    return 0


def _run(argv):
    import_tensorflow_quietly()
    args = build_flags()
    if args.parse(argv) is None:
        return 0
    cluster = _cluster(args)
    if args.verify:
        return verify(store_dir(args.out_dir, args.dataset, args.backbone, args.input_size),
                      args.splits.split(",") if args.splits else None)
    from mll_tf.backbones import build_backbone
    from mll_tf.data.datasets import get_dataset
    from mll_tf.data.extraction import FeatureFunction, extract_records
    from mll_tf.data.feature_store import (MANIFEST_NAME, FeatureStoreWriter, Manifest, StoreMismatchError,
                                           check_identity, records_digest)
    from mll_tf.registry import parse_key_values

    adapter_cls = get_dataset(args.dataset)
    kwargs = parse_key_values(args.dataset_options)
    if args.data_root:
        kwargs["root"] = args.data_root
    if args.min_count is not None:
        kwargs["min_count"] = args.min_count
    adapter_options = dict(kwargs)  # part of the store's identity
    prepared = adapter_cls(**kwargs).prepare()
    splits = args.splits.split(",") if args.splits else list(prepared.splits)
    for s in splits:
        if s not in prepared.splits:
            raise UsageError(f"--splits: {args.dataset} has no split {s!r} (has {sorted(prepared.splits)})")

    root = store_dir(args.out_dir, args.dataset, args.backbone, args.input_size)
    if args.finalize:
        return _finalize(args, prepared, splits, root, cluster)
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
    advice = "Pass --overwrite to re-extract it, or use another --out-dir."
    manifests = {}
    for split in splits:
        # The identity covers every record of the split (--limit only says how many to extract).
        sha, count = records_digest(prepared.splits[split])
        manifests[split] = Manifest(
            dataset=args.dataset, split=split, backbone=backbone.name, weights=backbone.weights,
            input_size=[args.input_size, args.input_size],
            preprocessing=f"{prepared.preprocessing}; backbone: {backbone.preprocessing}",
            feature_shape=[h * w, d], feature_grid=[h, w], feature_dtype=args.feature_dtype,
            label_names=list(prepared.label_names), extra_label_names={},
            compression_level=args.compression_level,
            extra=dict(prepared.extra, resize_shorter=backbone.resize_shorter or args.input_size),
            adapter_options=adapter_options, records_sha256=sha, records_count=count)
    from mll_tf.data import fs as gfs
    from mll_tf.data.sharding import part_dir, records_of_worker, worker_of

    def target_dir(split):  # the split, or this worker's part of it
        split_dir = gfs.join(root, split)
        return part_dir(split_dir, cluster[1], cluster[0]) if cluster else split_dir

    if not args.overwrite:
        # Refuse a mismatched store before writing any split.
        for split in splits:
            split_dir = target_dir(split)
            if gfs.isfile(gfs.join(split_dir, MANIFEST_NAME)):
                check_identity(split_dir, Manifest.load(split_dir), manifests[split],
                               prepared.splits[split], advice=advice)
    if prepared.extra.get("attribute_groups"):
        report_attributes(prepared, root)
    for split in splits:
        records = prepared.splits[split]
        if args.limit:
            records = records[:args.limit]
        adapter_skipped = prepared.skipped.get(split, [])
        if cluster:
            records = records_of_worker(records, *cluster)
            adapter_skipped = [it for it in adapter_skipped if worker_of(it["image_id"], cluster[0]) == cluster[1]]
        manifest = manifests[split]
        split_dir = target_dir(split)
        try:
            writer = FeatureStoreWriter(split_dir, manifest, max_shard_bytes=int(args.max_shard_mb * 2**20),
                                        compression_level=args.compression_level, overwrite=args.overwrite,
                                        records=prepared.splits[split])
        except StoreMismatchError as e:  # changed since the check above
            raise UsageError(f"cannot resume feature store {e.split_dir!r}: {e.detail}. {advice}") from None
        with writer:
            for item in adapter_skipped:
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
            print(f"    skipped {_printable(item['image_id'])}: {_printable(item['reason'])}")
        if len(final.skipped) > 5:
            print(f"    ... {len(final.skipped) - 5} more in {split_dir}/manifest.json")
        if cluster:
            print(f"[{split}] worker {cluster[1]} of {cluster[0]} done; once every worker is, merge with "
                  f"--finalize --num-workers {cluster[0]}")
    return 0


def _cluster(args):
    """``(num_workers, worker_index)`` of a sharded extraction, or None for one process.

    From ``--num-workers``/``--worker-index``, else from ``TF_CONFIG``; ``--finalize``
    needs only the number of workers (its index is None).
    """
    from mll_tf.data.sharding import ShardingError, cluster_from_tf_config

    if args.num_workers is None and args.worker_index is not None:
        raise UsageError("--worker-index needs --num-workers")
    if args.num_workers is not None:
        n, i = args.num_workers, args.worker_index
        if i is None and not args.finalize and n > 1:
            raise UsageError(f"--num-workers {n} needs --worker-index (0 to {n - 1}) or --finalize")
        if i is not None and i >= n:
            raise UsageError(f"--worker-index {i} must be below --num-workers {n}")
    else:
        try:
            found = cluster_from_tf_config()
        except ShardingError as e:
            raise UsageError(str(e)) from None
        if found is None:
            if args.finalize:
                raise UsageError("--finalize needs --num-workers (or TF_CONFIG): how many workers extracted")
            return None
        n, i = found
    if n == 1 and not args.finalize:
        return None  # one worker: the ordinary single-process layout
    return n, (None if args.finalize else (i or 0))


def _finalize(args, prepared, splits, root, cluster):
    """``--finalize``: merge each split's per-worker manifests (no backbone needed)."""
    from mll_tf.data import fs as gfs
    from mll_tf.data.feature_store import records_digest
    from mll_tf.data.sharding import ShardingError, finalize_split

    n = cluster[0]
    for split in splits:
        records = prepared.splits[split]
        sha, _ = records_digest(records)
        if args.limit:
            records = records[:args.limit]
        ids = [r.image_id for r in records] + [it["image_id"] for it in prepared.skipped.get(split, [])]
        split_dir = gfs.join(root, split)
        try:
            merged = finalize_split(split_dir, ids, n, records_sha256=sha)
        except ShardingError as e:
            raise UsageError(f"--finalize: {e}") from None
        print(f"[{split}] merged {n} workers: {merged.num_examples} examples in {len(merged.shards)} shards, "
              f"{len(merged.skipped)} skipped, each of the {len(ids)} images exactly once -> {split_dir}")
    return 0


def main(argv=None):
    """Entry point; returns the exit code (0, or 2 with one ``error:`` line for bad input)."""
    return cli_main(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
