"""Backbone feature extraction into the TFRecord feature store.

Images are decoded/rendered in worker processes while the backbone runs in the
main process, with a bounded number of chunks in flight (bounded memory). A
failure to read one image (unreadable or empty file, render error) is recorded
with :meth:`FeatureStoreWriter.skip` and counted, never fatal. Records already
in the store (``writer.done_ids``) are not redone, which is how an interrupted
extraction resumes.
"""

import collections
import concurrent.futures as cf
import multiprocessing
import time

import numpy as np


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

    Returns:
        dict with ``written``, ``skipped``, ``already_done`` (counts) and
        ``seconds``.
    """
    from tqdm import tqdm

    done = writer.done_ids
    todo = [r for r in records if r.image_id not in done]
    labels = {r.image_id: r for r in todo}
    stats = collections.Counter(already_done=len(records) - len(todo))
    t0 = time.perf_counter()
    bar = tqdm(total=len(records), initial=stats["already_done"], desc=desc, unit="img",
               disable=not progress, smoothing=0.1)
    batch_size = getattr(feature_fn, "batch_size", 32)
    pending_ids, pending_images = [], []

    def flush():
        if not pending_ids:
            return
        feats = feature_fn(np.concatenate(pending_images))
        for image_id, f in zip(pending_ids, feats):
            writer.write(image_id, f, labels[image_id].labels)
        stats["written"] += len(pending_ids)
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
