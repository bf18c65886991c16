"""TensorFlow Datasets as a source of labelled images (``--dataset tfds:voc/2007``).

Any TFDS dataset whose examples carry an image and class labels can feed the
feature extractor. ``mll_tf.registry.get_dataset("tfds:<name>[/<config>][:<version>]")``
returns ``functools.partial(TFDSDataset, name="<name>[/<config>][:<version>]")``;
the extractor's ``--data-root`` becomes the TFDS ``data_dir``.

What :meth:`TFDSDataset.prepare` does, deterministically:

1. Opens the builder with ``tfds.builder(name, data_dir=root)``. It never
   downloads unless ``download=True``: the dataset must already be prepared
   in ``data_dir`` (``tfds build voc/2007 --data_dir DIR`` where the internet
   is reachable, then copy ``DIR``). ``tfds.load`` of a catalog dataset hangs
   for minutes offline.
2. Label vocabulary = the names of the dataset's ``ClassLabel`` feature, the
   first of ``objects/label`` (detection sets: VOC, COCO), ``labels``
   (``Sequence(ClassLabel)``) or ``label`` (``ClassLabel``), or ``label_key``.
3. Labels: int8 multi-hot, 1 if the image has at least one object (or label)
   of the class, else 0 (complete annotation; no -1). A scalar ``label`` of
   -1 (TFDS' "no label", e.g. unlabelled test splits) makes the whole row -1.
   VOC objects flagged ``is_difficult`` count as positives (VOC's own
   classification ground truth marks them 0 = "difficult"; use
   ``label_key="labels_no_difficult"`` to drop images' difficult-only classes).
4. Splits: ``train`` -> ``train``, ``validation`` -> ``val``, ``test`` ->
   ``test``, any other name kept (:data:`SPLIT_NAMES`).
5. Images: each example's image is written once to
   ``<cache_dir>/<name with '/' -> '_'>/<version>/<tfds split>/<index>.<ext>``
   (default ``cache_dir`` :data:`DEFAULT_CACHE_DIR`, relative to the working
   directory). With ``keep_encoded=True`` these are the dataset's original
   encoded bytes (JPEG for VOC; read with ``tfds.decode.SkipDecoding``), else
   a PNG of the decoded pixels. Files already there are reused, so a re-run
   resumes; writes are atomic (temporary file + rename). The extractor decodes
   them with :func:`mll_tf.data.images.load_rgb_center_crop`.
6. ``image_id``: the ``image/filename`` (or ``file_name`` / ``filename``)
   feature when every example has one and they are unique across all splits,
   else ``"<tfds split>/<index>"``.
"""

import collections
import os

import numpy as np

from mll_tf.data.adapter import ImageRecord, PreparedDataset
from mll_tf.data.images import decode_image

__all__ = [
    "DEFAULT_CACHE_DIR",
    "LABEL_KEYS",
    "SPLIT_NAMES",
    "TFDSDataset",
    "find_label_feature",
    "labels_to_multi_hot",
]

#: Default image cache folder (relative to the working directory).
DEFAULT_CACHE_DIR = os.path.join("data", "tfds_images")

#: TFDS split name -> feature-store split name; other names are kept.
SPLIT_NAMES = {"train": "train", "validation": "val", "test": "test"}

#: Label features tried in order when ``label_key`` is None.
LABEL_KEYS = ("objects/label", "labels", "label")

#: Per-example file-name features tried in order for ``image_id``.
FILENAME_KEYS = ("image/filename", "file_name", "filename")

_MAGIC = ((b"\xff\xd8\xff", ".jpg"), (b"\x89PNG\r\n\x1a\n", ".png"), (b"GIF8", ".gif"),
          (b"BM", ".bmp"), (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"))


def _unwrap(feature):
    """Strip ``Sequence`` wrappers (``tfds.features.Sequence.feature``)."""
    import tensorflow_datasets as tfds

    while isinstance(feature, tfds.features.Sequence):
        feature = feature.feature
    return feature


def _describe(features, prefix="", in_sequence=False):
    """Flat ``"key: Type"`` lines of a FeaturesDict; ``Sequence(...)`` marks
    features inside a Sequence (e.g. VOC's ``objects/label``)."""
    import tensorflow_datasets as tfds

    out = []
    for key in features.keys():
        f = features[key]
        inner = _unwrap(f)
        path = f"{prefix}{key}"
        seq = in_sequence or inner is not f
        if isinstance(inner, tfds.features.FeaturesDict):
            out.extend(_describe(inner, path + "/", seq))
        else:
            kind = type(inner).__name__
            if isinstance(inner, tfds.features.ClassLabel):
                kind += f"({inner.num_classes})"
            out.append(f"{path}: Sequence({kind})" if seq else f"{path}: {kind}")
    return out


def _resolve(features, key):
    """Return ``(path, feature)`` for ``key``, or None if absent.

    ``key`` is a top-level feature name (which may contain '/', e.g.
    ``image/filename``) or a '/'-separated path through nested
    FeaturesDicts and Sequences (``objects/label``).
    """
    import tensorflow_datasets as tfds

    if key in features.keys():
        return (key,), features[key]
    node, path = features, []
    for part in key.split("/"):
        node = _unwrap(node)
        if not isinstance(node, tfds.features.FeaturesDict) or part not in node.keys():
            return None
        node = node[part]
        path.append(part)
    return tuple(path), node


def find_label_feature(features, label_key=None):
    """Find the ClassLabel feature that gives an example its labels.

    Args:
        features: ``tfds.features.FeaturesDict`` (``builder.info.features``).
        label_key: str or None. A feature path such as ``"objects/label"``;
            None tries :data:`LABEL_KEYS` in order.

    Returns:
        ``(path, class_label)``: path is a tuple of nested example keys
        (``("objects", "label")``); class_label the ``tfds.features.ClassLabel``
        (possibly inside Sequences) whose ``names`` are the label vocabulary.

    Raises:
        ValueError: no such ClassLabel feature; the message lists the
            dataset's features.
    """
    import tensorflow_datasets as tfds

    for key in ([label_key] if label_key else LABEL_KEYS):
        found = _resolve(features, key)
        if found is not None and isinstance(_unwrap(found[1]), tfds.features.ClassLabel):
            return found[0], _unwrap(found[1])
    wanted = repr(label_key) if label_key else " or ".join(map(repr, LABEL_KEYS))
    raise ValueError(
        f"no ClassLabel feature {wanted} in this TFDS dataset; its features are: "
        f"{'; '.join(_describe(features))}. Pass label_key=<path of a ClassLabel feature>.")


def labels_to_multi_hot(value, num_classes):
    """Class indices of one example -> int8 labels ``[num_classes]``.

    Args:
        value: int scalar (a ``ClassLabel``) or int array of any shape (a
            ``Sequence(ClassLabel)``, e.g. one index per object; repeats
            allowed).
        num_classes: int C.

    Returns:
        int8 array ``[C]``: 1 for each class present, 0 otherwise. A scalar
        < 0 (TFDS' missing label) gives all -1 (unknown); negative entries of
        an array are ignored.

    Raises:
        ValueError: an index >= C.
    """
    v = np.asarray(value)
    if v.ndim == 0 and int(v) < 0:
        return np.full(num_classes, -1, np.int8)
    idx = v.reshape(-1).astype(np.int64)
    idx = idx[idx >= 0]
    if idx.size and idx.max() >= num_classes:
        raise ValueError(f"label index {int(idx.max())} >= number of classes {num_classes}")
    y = np.zeros(num_classes, np.int8)
    y[idx] = 1
    return y


def _extension(data):
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return ".img"


def _write_atomic(path, data):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _png_bytes(image):
    import io

    from PIL import Image

    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"only uint8 images can be cached, got {a.dtype}")
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _get(example, path):
    for key in path:
        example = example[key]
    return example


class TFDSDataset:
    """Adapter reading a prepared TFDS dataset (see the module docstring).

    Args:
        name: str, ``"<name>[/<config>][:<version>]"`` as ``tfds.builder``
            takes it, e.g. ``"voc/2007"`` or ``"voc/2007:5.0.0"``.
        root: str or None, the TFDS ``data_dir`` (None: TFDS' default,
            ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
        cache_dir: str or None, image cache root (default
            :data:`DEFAULT_CACHE_DIR`).
        splits: sequence of TFDS split names, or None for all the prepared
            splits (``builder.info.splits``).
        label_key: str or None, path of the ClassLabel feature
            (:func:`find_label_feature`).
        image_key: str, the image feature (default ``"image"``).
        keep_encoded: bool. True caches the original encoded image bytes
            (``tfds.decode.SkipDecoding``; needs a ``tfds.features.Image``);
            False caches a PNG of the decoded image.
        download: bool. True calls ``builder.download_and_prepare()`` first
            (needs the internet, or TFDS' manual-download files).

    Attributes:
        cache_stats: dict ``{"written", "reused"}`` image-file counts of the
            last :meth:`prepare`.
    """

    def __init__(self, name, root=None, cache_dir=None, splits=None, label_key=None,
                 image_key="image", keep_encoded=True, download=False):
        if not name:
            raise ValueError("TFDSDataset: empty dataset name (e.g. 'voc/2007')")
        self.name = name
        self.root = root
        self.cache_dir = cache_dir
        self.splits = list(splits) if splits else None
        self.label_key = label_key
        self.image_key = image_key
        self.keep_encoded = bool(keep_encoded)
        self.download = bool(download)
        self.cache_stats = {"written": 0, "reused": 0}

    def _builder(self):
        import tensorflow_datasets as tfds

        builder = tfds.builder(self.name, data_dir=self.root)
        if self.download:
            builder.download_and_prepare()
        return builder

    def prepare(self):
        """Read the dataset's labels, cache its images; return a PreparedDataset.

        Returns:
            :class:`mll_tf.data.adapter.PreparedDataset` named
            ``"tfds:<name>"``; ``load_image`` is
            :func:`mll_tf.data.images.load_rgb_center_crop`.

        Raises:
            FileNotFoundError: no split is known (the dataset is not prepared
                in ``root``) and ``splits`` was not given.
            ValueError: no label feature (lists the features), no image
                feature, or two TFDS splits map to the same store name.
            AssertionError: from TFDS, when a requested split has no data in
                ``root``.
        """
        import tensorflow_datasets as tfds

        builder = self._builder()
        features = builder.info.features
        label_path, class_label = find_label_feature(features, self.label_key)
        label_names = [str(n) for n in class_label.names]
        num_classes = len(label_names)
        if self.image_key not in features.keys():
            raise ValueError(
                f"tfds:{self.name}: no image feature {self.image_key!r}; features: "
                f"{'; '.join(_describe(features))}. Pass image_key=...")
        encoded = self.keep_encoded and isinstance(features[self.image_key],
                                                   tfds.features.Image)
        tfds_splits = self.splits or list(builder.info.splits)
        if not tfds_splits:
            raise FileNotFoundError(
                f"tfds:{self.name}: no prepared split in {builder.data_dir!r}. Prepare it "
                f"where the internet is reachable (`tfds build {self.name.split(':')[0]} "
                "--data_dir DIR`), copy DIR here and pass it as --data-root / root=DIR; "
                "or pass splits=[...] explicitly")
        split_map = {s: SPLIT_NAMES.get(s, s) for s in tfds_splits}
        clash = [n for n, c in collections.Counter(split_map.values()).items() if c > 1]
        if clash:
            raise ValueError(f"tfds:{self.name}: splits {tfds_splits} map to the same "
                             f"store split(s) {clash}")
        filename_key = next((k for k in FILENAME_KEYS if k in features.keys()), None)
        version = str(builder.version)
        cache_root = os.path.abspath(os.path.join(
            self.cache_dir or DEFAULT_CACHE_DIR,
            self.name.split(":")[0].replace("/", "_"), version))
        decoders = {self.image_key: tfds.decode.SkipDecoding()} if encoded else None

        self.cache_stats = {"written": 0, "reused": 0}
        items = {}  # tfds split -> list of (index, filename, path, labels)
        skipped = collections.defaultdict(list)
        for split in tfds_splits:
            folder = os.path.join(cache_root, split)
            os.makedirs(folder, exist_ok=True)
            ds = builder.as_dataset(split=split, decoders=decoders, shuffle_files=False)
            rows = items[split] = []
            for index, ex in enumerate(tfds.as_numpy(ds)):
                y = labels_to_multi_hot(_get(ex, label_path), num_classes)
                fname = ex[filename_key] if filename_key else None
                if isinstance(fname, bytes):
                    fname = fname.decode("utf-8")
                image = ex[self.image_key]
                data = bytes(image) if encoded else None
                if encoded and not data:
                    skipped[SPLIT_NAMES.get(split, split)].append(
                        {"image_id": f"{split}/{index}", "reason": "empty image bytes"})
                    continue
                path = os.path.join(folder, str(index) + (_extension(data) if encoded else ".png"))
                if os.path.exists(path):
                    self.cache_stats["reused"] += 1
                else:
                    _write_atomic(path, data if encoded else _png_bytes(image))
                    self.cache_stats["written"] += 1
                rows.append((index, fname, path, y))

        all_names = [r[1] for rows in items.values() for r in rows]
        use_filenames = (filename_key is not None and all(all_names)
                         and len(set(all_names)) == len(all_names))
        splits = {}
        for split, rows in items.items():
            splits[split_map[split]] = [
                ImageRecord(fname if use_filenames else f"{split}/{index}", path, y)
                for index, fname, path, y in rows]
        counts = {
            s: {n: int(c) for n, c in zip(label_names, np.sum(
                [np.maximum(r.labels, 0) for r in recs], axis=0).tolist())}
            if recs else {n: 0 for n in label_names}
            for s, recs in splits.items()}
        label_feature = "/".join(label_path)
        extra = {
            "source": "tfds",
            "tfds_name": self.name,
            "tfds_full_name": builder.info.full_name,
            "tfds_version": version,
            "tensorflow_datasets": tfds.__version__,
            "data_dir": str(builder.data_dir),
            "label_feature": label_feature,
            "label_rule": "1 if the image has >= 1 object/label of the class, else 0",
            "split_map": split_map,
            "image_id": (f"TFDS feature {filename_key!r}" if use_filenames
                         else "<tfds split>/<index in split>"),
            "image_cache": cache_root,
            "image_format": ("original encoded bytes" if encoded else "PNG of the decoded image"),
            "label_counts_by_split": counts,
        }
        if label_path[0] == "objects" and "is_difficult" in _unwrap(features["objects"]).keys():
            extra["difficult_objects"] = "kept as positives (label 1)"
        preprocessing = (
            f"TFDS {builder.info.full_name} '{self.image_key}' "
            f"({'original encoded bytes' if encoded else 'decoded, saved as PNG'}) cached "
            f"under {cache_root}; PIL decode to RGB, shorter side resized to resize_shorter "
            "(default: size), central size x size crop, uint8")
        return PreparedDataset(
            name=f"tfds:{self.name}", label_names=label_names, splits=splits,
            skipped=dict(skipped), load_image=decode_image,
            preprocessing=preprocessing, extra=extra)
