"""tf.data pipelines of labelled images for end-to-end training (``--finetune``).

Images are decoded by the dataset adapter's own ``load_image`` (the one
extraction uses: SVG clip-art, attribute rows with their augmentation,
photos) inside ``tf.numpy_function``; training adds the usual augmentation
with Keras preprocessing layers: random crop to ``size`` from
``size * 256/224`` + horizontal flip (the random-resized-crop family),
``RandAugment`` (2 ops of magnitude 0.5) and Cutout as ``RandomErasing``
(CSL trains with Cutout + RandAugment).
"""

import numpy as np
import tensorflow as tf

__all__ = ["image_dataset"]


def _augmenter(size, seed):
    import keras

    return keras.Sequential([
        keras.layers.RandomCrop(size, size, seed=seed),
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandAugment(value_range=(0, 255), num_ops=2, factor=0.5, seed=seed),
        keras.layers.RandomErasing(factor=0.5, scale=(0.02, 0.2), value_range=(0, 255), seed=seed),
    ], name="augment")


def image_dataset(paths, labels, load_image, size, batch_size, *, train, seed=0, resize_shorter=None,
                  start_example=0):
    """``(images float32 [B, size, size, 3] in [0, 255], labels int8 [B, C])`` from image files.

    Args:
        paths: list of N str, image files.
        labels: int8 ``[N, C]`` in {1, 0, -1} (possibly simulated partial
            labels), in ``paths`` order.
        load_image: the adapter's ``load_image(path, size, resize_shorter=None)``
            -> uint8 ``[size, size, 3]``.
        size: int, model input size in pixels.
        batch_size: int.
        train: bool. True: an infinite stream, pass ``e`` shuffled with a
            seed made of ``seed`` and ``e`` (so a resumed stream is the same
            as an uninterrupted one), decoded at ``size * 256/224`` and
            augmented, whole batches only. False: one pass in order, central
            crop (``resize_shorter`` as the backbone wants).
        seed: int, shuffle and augmentation seed.
        resize_shorter: optional int, evaluation decoding: shorter side to
            this many pixels before the central crop.
        start_example: int >= 0, training examples of the stream to skip
            (a resumed run: steps done x batch size); skipped before decoding.

    An image that fails to decode yields a black image and a row of ``-1``
    labels, which every loss mode except ``negative`` ignores.

    Returns:
        ``tf.data.Dataset``.
    """
    paths = [str(p) for p in paths]
    n = len(paths)
    labels = np.asarray(labels, np.int8)
    pre = int(round(size * 256 / 224)) if train else size

    def load(path):
        try:
            if resize_shorter is not None and not train:
                img = load_image(path.decode(), size, resize_shorter=resize_shorter)
            else:
                img = load_image(path.decode(), pre)
            return np.asarray(img, np.uint8), np.int8(1)
        except Exception:  # noqa: BLE001 - the image is skipped, not the run
            return np.zeros((pre, pre, 3), np.uint8), np.int8(0)

    def decode(p, y):
        img, ok = tf.numpy_function(load, [p], [tf.uint8, tf.int8])
        img.set_shape([pre, pre, 3])
        ok.set_shape([])
        y = tf.where(tf.equal(ok, 1), y, -tf.ones_like(y))
        return tf.cast(img, tf.float32), y

    source = (tf.constant(paths), tf.constant(labels, tf.int8))
    if train:
        first_pass, offset = divmod(int(start_example), max(n, 1))

        def one_pass(epoch):
            tf.random.set_seed(87654321)  # graph-level seed of this traced function only
            return tf.data.Dataset.from_tensor_slices(source).shuffle(
                max(n, 1), seed=int(seed) * 1_000_003 + epoch)

        ds = tf.data.Dataset.range(first_pass, 2**62).flat_map(one_pass)
        if offset:
            ds = ds.skip(offset)
    else:
        ds = tf.data.Dataset.from_tensor_slices(source)
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=train)
    if train:
        aug = _augmenter(size, seed)
        ds = ds.map(lambda x, y: (aug(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
