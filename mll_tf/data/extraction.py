"""Backbone feature extraction into the TFRecord feature store.

Images are decoded/rendered in worker processes while the backbone runs in the
main process, with a bounded number of chunks in flight (bounded memory). A
failure to read one image (unreadable or empty file, render error), an image
id the store cannot hold (a line break in it) and a feature map holding
NaN/Inf are recorded with :meth:`FeatureStoreWriter.skip` with their reason
and counted, never fatal. Records already in the store (``writer.done_ids``)
are not redone, which is how an interrupted extraction resumes.
"""

import collections
import concurrent.futures as cf
import multiprocessing
import time

import numpy as np

# Nothing here imports TensorFlow at module level: the decoding workers import this module.


def _load_chunk(load_image, items, size):
    """Worker: decode a chunk of images. Returns (ids, uint8 [n,s,s,3], failures)."""
    ids, images, failures = [], [], []
    for image_id, path in items:
        try:
            im = np.asarray(load_image(path, size))
            if im.shape != (size, size, 3) or im.dtype != np.uint8:
                raise ValueError(f"decoder returned {im.dtype} {im.shape}, expected uint8 {(size, size, 3)}")
            ids.append(image_id)
            images.append(im)
        except Exception as e:  # noqa: BLE001 - any per-image failure is recorded, not fatal
            failures.append((image_id, f"{type(e).__name__}: {str(e)[:200]}"))
    arr = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return ids, arr, failures


def _chunks(seq, n):
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


class FeatureFunction:
    """Compiled backbone forward pass on fixed-size batches.

    Args:
        model: keras.Model mapping float32 RGB ``[B, H, W, 3]`` in [0, 255] to a
            feature map ``[B, h, w, D]``.
        batch_size: int; partial batches are padded so the function traces once.

    Calling it with uint8 ``[n, H, W, 3]`` (n <= batch_size) returns float32
    ``[n, h*w, D]`` NumPy features (region r = w_count*row + col).
    """

    def __init__(self, model, batch_size):
        import tensorflow as tf

        self.batch_size = batch_size
        self._fn = tf.function(lambda x: model(tf.cast(x, tf.float32), training=False))

    def __call__(self, images):
        n = len(images)
        if n < self.batch_size:
            pad = np.zeros((self.batch_size - n,) + images.shape[1:], images.dtype)
            images = np.concatenate([images, pad])
        fmap = self._fn(images).numpy()[:n]
        return fmap.reshape(n, -1, fmap.shape[-1])


class _LineProgress:
    """tqdm's ``update``/``close`` as one line per tenth of the work (for logs that are not terminals)."""

    def __init__(self, total, initial, desc):
        import time as _time

        self.total, self.n, self.desc = max(int(total), 1), int(initial), desc
        self.t0, self.n0, self._time = _time.perf_counter(), int(initial), _time
        self.next = (self.n * 10 // self.total + 1) * self.total / 10

    def update(self, k):
        self.n += k
        while self.n >= self.next and self.next <= self.total:
            rate = (self.n - self.n0) / max(self._time.perf_counter() - self.t0, 1e-9)
            print(f"{self.desc}: {self.n}/{self.total} images ({100 * self.n // self.total}%), "
                  f"{rate:.1f} img/s", flush=True)
            self.next += self.total / 10

    def close(self):
        pass


def extract_records(records, load_image, size, feature_fn, writer, *, num_workers=2,
                    chunk_size=16, max_in_flight=8, progress=True, desc="extract"):
    """Extract and store the features of ``records``.

    Args:
        records: list of :class:`mll_tf.data.adapter.ImageRecord`.
        load_image: picklable ``(path, size) -> uint8 [size, size, 3]``.
        size: int, square input size in pixels.
        feature_fn: :class:`FeatureFunction` (or any callable uint8 ``[n,s,s,3]``
            -> float ``[n, R, D]``).
        writer: an open :class:`mll_tf.data.feature_store.FeatureStoreWriter`.
        num_workers: int, decoding processes (0 decodes in this process).
        chunk_size: int, images per decoding task.
        max_in_flight: int, decoding tasks queued at once (bounds memory to
            about ``max_in_flight * chunk_size`` decoded images).
        progress: bool. A tqdm bar when stderr is a terminal; otherwise (CI
            logs, ``nohup``) one plain line at every tenth of the split.
        desc: str, the split's name in progress lines.

    Returns:
        dict with ``written``, ``skipped`` (unreadable images, ids with a
        line break, non-finite features; each recorded in the manifest with
        its reason), ``already_done`` (counts) and ``seconds``.
    """
    from tqdm import tqdm

    from mll_tf.data import schema

    # Per-record errors of FeatureStoreWriter.write that make extraction skip the image.
    skippable = (schema.InvalidImageIdError, schema.NonFiniteFeatureError)
    done = writer.done_ids
    todo = [r for r in records if r.image_id not in done]
    stats = collections.Counter(already_done=len(records) - len(todo))
    bad_ids = []
    for r in todo:  # ids a shard's ids file cannot list: skipped, with the reason
        try:
            schema.check_image_id(r.image_id)
        except schema.InvalidImageIdError as e:
            bad_ids.append((r.image_id, f"{type(e).__name__}: {e}"))
    if bad_ids:
        bad = {i for i, _ in bad_ids}
        todo = [r for r in todo if r.image_id not in bad]
    labels = {r.image_id: r for r in todo}
    t0 = time.perf_counter()
    import sys

    interactive = progress and sys.stderr.isatty()
    bar = tqdm(total=len(records), initial=stats["already_done"], desc=desc, unit="img",
               disable=not interactive, smoothing=0.1)
    if progress and not interactive:
        bar = _LineProgress(len(records), stats["already_done"], desc)
    batch_size = getattr(feature_fn, "batch_size", 32)
    pending_ids, pending_images = [], []
    for image_id, reason in bad_ids:
        writer.skip(image_id, reason)
        stats["skipped"] += 1
        bar.update(1)

    def flush():
        if not pending_ids:
            return
        feats = feature_fn(np.concatenate(pending_images))
        for image_id, f in zip(pending_ids, feats):
            try:
                writer.write(image_id, f, labels[image_id].labels)
            except skippable as e:  # e.g. NaN/Inf in the backbone's output for this image
                writer.skip(image_id, f"{type(e).__name__}: {e}")
                stats["skipped"] += 1
            else:
                stats["written"] += 1
        bar.update(len(pending_ids))
        pending_ids.clear()
        pending_images.clear()

    def consume(result):
        ids, arr, failures = result
        for image_id, reason in failures:
            writer.skip(image_id, reason)
            stats["skipped"] += 1
            bar.update(1)
        for i in range(0, len(ids)):
            pending_ids.append(ids[i])
            pending_images.append(arr[i:i + 1])
            if len(pending_ids) == batch_size:
                flush()

    tasks = [[(r.image_id, r.path) for r in c] for c in _chunks(todo, chunk_size)]
    if num_workers <= 0:
        for items in tasks:
            consume(_load_chunk(load_image, items, size))
    else:
        ctx = multiprocessing.get_context("spawn")  # never fork a process running TensorFlow
        with cf.ProcessPoolExecutor(num_workers, mp_context=ctx) as pool:
            queue = collections.deque()
            it = iter(tasks)
            for items in it:
                queue.append(pool.submit(_load_chunk, load_image, items, size))
                if len(queue) >= max_in_flight:
                    break
            while queue:
                result = queue.popleft().result()
                nxt = next(it, None)
                if nxt is not None:
                    queue.append(pool.submit(_load_chunk, load_image, nxt, size))
                consume(result)
    flush()
    bar.close()
    stats["seconds"] = time.perf_counter() - t0
    return dict(stats)


# ----------------------------------------------------------------------------- new images


#: Extensions :func:`list_images` collects from folders (decoded by
#: :func:`mll_tf.data.images.decode_image`, which tells SVG from raster by content).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".svg")


def list_images(paths, limit=None):
    """Expand files and folders into a list of image files.

    Args:
        paths: str or list of str; a folder contributes the files with an
            image extension (:data:`IMAGE_EXTENSIONS`, SVG included) found
            recursively, sorted; files are kept as given.
        limit: optional int, keep the first ``limit``.

    Raises:
        FileNotFoundError: a path does not exist (names it and ``--images``).
    """
    import os

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            found = []
            for root, _, files in os.walk(p):
                found += [os.path.join(root, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
            out += sorted(found)
        elif os.path.exists(p):
            out.append(p)
        else:
            raise FileNotFoundError(f"--images: {p} does not exist")
    return out[:limit] if limit else out


def backbone_weights_argument(provenance):
    """The ``weights`` argument that rebuilds a backbone from its manifest provenance.

    ``extract/build_tfrecords.py`` stores ``Backbone.weights`` in the
    manifest; the registered builders write ``"imagenet: ..."``,
    ``"random initialisation (weights=None)"`` or ``"file: <path>"``.

    Args:
        provenance: str, the manifest's ``weights`` field.

    Returns:
        ``"imagenet"``, None (random initialisation) or the weight-file path.

    Raises:
        ValueError: if the string is empty or in none of those forms.
    """
    p = (provenance or "").strip()
    if p.startswith("imagenet"):
        return "imagenet"
    if p.startswith("random"):
        return None
    if p.startswith("file:"):
        return p[len("file:"):].strip()
    raise ValueError(f"cannot tell which backbone weights made these features: the manifest "
                     f"records weights={provenance!r} (expected 'imagenet: ...', "
                     f"'random initialisation ...' or 'file: <path>')")


def rebuild_backbone(manifest, allow_random_backbone=False):
    """The backbone that made a feature store, rebuilt and checked against its manifest.

    Args:
        manifest: :class:`mll_tf.data.feature_store.Manifest`.
        allow_random_backbone: bool, accept features made with random weights
            (they cannot be reproduced; fresh random weights are used).

    Returns:
        :class:`mll_tf.backbones.Backbone`.

    Raises:
        ValueError: random weights without ``allow_random_backbone``, another
            provenance, or a feature shape / grid that differs from the
            manifest's.
        FileNotFoundError: the recorded weight file is gone.
    """
    import os

    from mll_tf.backbones import build_backbone

    weights = backbone_weights_argument(manifest.weights)
    if weights is None and not allow_random_backbone:
        raise ValueError(
            f"the features were extracted with a randomly initialised {manifest.backbone} "
            f"({manifest.weights!r}); those weights were not saved, so the features cannot be "
            "reproduced from images (pass allow_random_backbone=True to use fresh random "
            "weights anyway)")
    if weights not in (None, "imagenet") and not os.path.isfile(weights):
        raise FileNotFoundError(f"backbone weight file {weights!r} recorded in the manifest "
                                "does not exist; the features cannot be reproduced")
    size = [int(s) for s in manifest.input_size]
    if len(size) != 2 or size[0] != size[1]:
        raise ValueError(f"manifest input_size {manifest.input_size} is not a square [S, S]")
    backbone = build_backbone(manifest.backbone, weights=weights, input_size=size[0])
    if weights is not None and backbone.weights != manifest.weights:
        raise ValueError(f"backbone weights differ from the extraction's: manifest "
                         f"{manifest.weights!r}, rebuilt {backbone.weights!r}")
    h, w, d = (int(v) for v in backbone.feature_shape)
    if manifest.feature_shape and [h * w, d] != list(manifest.feature_shape):
        raise ValueError(f"rebuilt {manifest.backbone} gives features [{h * w}, {d}], the "
                         f"manifest records {manifest.feature_shape}")
    if manifest.feature_grid and [h, w] != list(manifest.feature_grid):
        raise ValueError(f"rebuilt {manifest.backbone} grid {[h, w]} != manifest "
                         f"feature_grid {manifest.feature_grid}")
    return backbone


def image_features(backbone_model, images, feature_dtype="float32", batch_size=8):
    """Backbone features of images, stored and read back as the feature store does.

    Mirrors :class:`FeatureFunction` (uint8 -> float32, ``training=False``,
    ``[n, h, w, D] -> [n, h*w, D]`` row-major) followed by the store's round
    trip (cast to ``feature_dtype`` and back to float32).

    Args:
        backbone_model: keras.Model, float32 RGB ``[B, H, W, 3]`` in [0, 255]
            -> ``[B, h, w, D]``.
        images: uint8 array ``[n, H, W, 3]``.
        feature_dtype: ``"float16"`` or ``"float32"`` (manifest ``feature_dtype``).
        batch_size: int, images per forward pass.

    Returns:
        float32 ndarray ``[n, h*w, D]``.

    Raises:
        ValueError: for an unknown ``feature_dtype``.
    """
    import tensorflow as tf

    if feature_dtype not in ("float16", "float32"):
        raise ValueError(f"feature_dtype must be 'float16' or 'float32', got {feature_dtype!r}")
    out = []
    for i in range(0, len(images), batch_size):
        x = tf.cast(tf.convert_to_tensor(np.asarray(images[i:i + batch_size])), tf.float32)
        fmap = backbone_model(x, training=False).numpy()
        out.append(fmap.reshape(fmap.shape[0], -1, fmap.shape[-1]))
    feats = np.concatenate(out) if out else np.zeros((0, 0, 0), np.float32)
    return feats.astype(feature_dtype).astype(np.float32)


def manifest_resize_shorter(manifest, backbone=None):
    """The shorter-side size the extraction resized raster images to (manifest first, else the backbone's)."""
    rs = manifest.extra.get("resize_shorter")
    if rs is None and backbone is not None:
        rs = getattr(backbone, "resize_shorter", None)
    return rs


class FeatureExtractor:
    """A feature store's extraction, applied to new image files.

    Rebuilds the backbone recorded in the manifest (:func:`rebuild_backbone`)
    and decodes each file with :func:`mll_tf.data.images.decode_image` at the
    recorded input size and crop rule, then runs the backbone and the
    store's dtype round trip (:func:`image_features`) -- the path the
    training images took.

    Args:
        manifest: :class:`mll_tf.data.feature_store.Manifest` of the training split.
        allow_random_backbone: bool (see :func:`rebuild_backbone`).

    Call ``extract(paths)`` -> (features float32 ``[n, R, D]`` of the images
    that loaded, in order; ``ok`` list of bool per path; ``errors`` list of
    ``"<Exception>: <message>"`` or None per path).
    """

    def __init__(self, manifest, allow_random_backbone=False):
        self.manifest = manifest
        self.size = int(manifest.input_size[0])
        self.backbone = rebuild_backbone(manifest, allow_random_backbone)
        self.resize_shorter = manifest_resize_shorter(manifest, self.backbone)

    def load(self, path):
        """One file decoded as the extraction did: uint8 ``[S, S, 3]``."""
        from mll_tf.data.images import decode_image

        im = np.asarray(decode_image(path, self.size, self.resize_shorter), np.uint8)
        if im.shape != (self.size, self.size, 3):
            raise ValueError(f"decoder returned {im.shape}, expected {(self.size, self.size, 3)}")
        return im

    def extract(self, paths):
        imgs, errors = [], []
        for p in paths:
            try:
                imgs.append(self.load(p))
                errors.append(None)
            except Exception as e:  # noqa: BLE001 - reported per image
                errors.append(f"{type(e).__name__}: {str(e)[:200]}")
        ok = [e is None for e in errors]
        if not imgs:
            return np.zeros((0,) + tuple(self.manifest.feature_shape), np.float32), ok, errors
        feats = image_features(self.backbone.model, np.stack(imgs), self.manifest.feature_dtype,
                               batch_size=len(imgs))
        return feats, ok, errors
