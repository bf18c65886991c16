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


def weights_from_provenance(provenance):
    """Map a manifest's ``weights`` provenance string back to a ``build_backbone`` argument.

    ``"random initialisation ..."`` -> None; ``"file: PATH"`` -> PATH;
    anything else (``"imagenet: ..."``) -> ``"imagenet"``.
    """
    if provenance.startswith("random"):
        return None
    if provenance.startswith("file: "):
        return provenance[len("file: "):]
    return "imagenet"


class FeatureExtractor:
    """The training split's feature extractor, applied to image files.

    Args:
        manifest: :class:`mll_tf.data.feature_store.Manifest` of the run's
            training split.

    Call ``extract(paths)`` -> (features float32 ``[n, R, D]`` for the images
    that loaded, ``ok`` list of bool per path, ``errors`` list of str or None).
    """

    def __init__(self, manifest):
        from mll_tf.backbones import build_backbone

        self.manifest = manifest
        size = int(manifest.input_size[0])
        self.backbone = build_backbone(manifest.backbone, weights=weights_from_provenance(manifest.weights),
                                       input_size=size)
        self.size = size
        self.dtype = np.float16 if manifest.feature_dtype == "float16" else np.float32

    def load(self, path):
        from mll_tf.data.images import load_rgb_center_crop
        if path.lower().endswith(".svg"):
            from mll_tf.data.datasets.openclipart import render_svg
            return render_svg(path, self.size)
        return load_rgb_center_crop(path, self.size, resize_shorter=self.backbone.resize_shorter)

    def extract(self, paths):
        imgs, errors = [], []
        for p in paths:
            try:
                imgs.append(self.load(p))
                errors.append(None)
            except Exception as e:  # noqa: BLE001 - reported per image
                errors.append(f"{type(e).__name__}: {e}")
        ok = [e is None for e in errors]
        if not imgs:
            return np.zeros((0,) + tuple(self.manifest.feature_shape), np.float32), ok, errors
        x = np.stack(imgs).astype(np.float32)
        fmap = self.backbone.model(x, training=False).numpy()
        n, h, w, d = fmap.shape
        feats = fmap.reshape(n, h * w, d).astype(self.dtype).astype(np.float32)
        return feats, ok, errors
