"""Score new image files with a trained run (the library side of ``evaluation/infer.py``).

A run trained on stored features is applied to new images by rebuilding the
exact feature extractor recorded in the training split's manifest (backbone,
weights, input size, crop rule, stored dtype), so a new image goes through
the same path as the training images did.
"""

import os

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def list_images(paths, limit=None):
    """Expand files and folders into a sorted list of image files.

    Args:
        paths: str or list of str; folders contribute the files with an image
            extension found recursively, in sorted order; files are kept as given.
        limit: optional int, keep the first ``limit``.

    Raises:
        FileNotFoundError: a path does not exist (names it).
    """
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


class FeatureExtractor:
    """The training split's feature extractor, applied to image files.

    Reuses the decoding and feature code of :mod:`mll_tf.visualization.attention`
    (``backbone_weights_argument``, ``load_image_like_extraction``,
    ``image_features``), which reproduce what ``extract/build_tfrecords.py`` did.

    Args:
        manifest: :class:`mll_tf.data.feature_store.Manifest` of the run's
            training split.

    Raises:
        ValueError: the manifest's weights provenance is not one the
            backbone registry writes.

    Call ``extract(paths)`` -> (features float32 ``[n, R, D]`` for the images
    that loaded, in order; ``ok`` list of bool per path; ``errors`` list of
    str or None per path).
    """

    def __init__(self, manifest):
        from mll_tf.backbones import build_backbone
        from mll_tf.visualization.attention import backbone_weights_argument

        self.manifest = manifest
        self.size = int(manifest.input_size[0])
        self.backbone = build_backbone(manifest.backbone, weights=backbone_weights_argument(manifest.weights),
                                       input_size=self.size)

    def extract(self, paths):
        from mll_tf.visualization.attention import image_features, load_image_like_extraction

        imgs, errors = [], []
        for p in paths:
            try:
                imgs.append(load_image_like_extraction(p, self.size, self.backbone.resize_shorter))
                errors.append(None)
            except Exception as e:  # noqa: BLE001 - reported per image
                errors.append(f"{type(e).__name__}: {e}")
        ok = [e is None for e in errors]
        if not imgs:
            return np.zeros((0,) + tuple(self.manifest.feature_shape), np.float32), ok, errors
        feats = image_features(self.backbone.model, np.stack(imgs), self.manifest.feature_dtype,
                               batch_size=len(imgs))
        return feats, ok, errors
