"""Show where LESA's shared attention heads look.

LESA (Huynh & Elhamifar, CVPR 2020; METHODS.md §1.2) has M attention heads,
each a softmax over the R = h * w regions of the backbone feature map
(``LESA(...)["attention"]``, [B, M, R]). This module turns those weights back
into h x w maps, upsamples them onto the image, draws one panel per head next
to the top seen and unseen labels, logs the figures to TensorBoard, and
re-creates the whole pipeline for new image files from a run directory
(:func:`explain_images`).

Region order: the feature store flattens a ``[h, w, D]`` map row by row
(``mll_tf.data.extraction.FeatureFunction``), so region ``r`` is row
``r // w``, column ``r % w`` (``r = col + row * w``).

Figures are built with :class:`matplotlib.figure.Figure` and the Agg canvas
directly, never through ``pyplot``, so no GUI backend or global figure state is
involved.
"""

import dataclasses
import math
import os

import numpy as np

__all__ = [
    "AttentionExamples",
    "attention_examples",
    "attention_figure",
    "attention_grids",
    "backbone_weights_argument",
    "explain_features",
    "explain_images",
    "figure_to_array",
    "image_features",
    "load_image_like_extraction",
    "log_attention_images",
    "log_model_attention",
    "upsample_attention",
]

#: File extensions rendered with the clip-art SVG loader instead of PIL.
SVG_EXTENSIONS = (".svg",)


def _grid(grid):
    h, w = (int(g) for g in grid)
    if h < 1 or w < 1:
        raise ValueError(f"grid must be two positive ints (h, w), got {grid}")
    return h, w


def attention_grids(attention, grid):
    """Reshape region attention into spatial maps.

    Args:
        attention: float array-like ``[..., R]`` (typically ``[B, M, R]``,
            LESA's ``"attention"`` output, rows in [0, 1] summing to 1).
        grid: ``(h, w)`` ints with ``h * w == R``, the feature grid the
            regions were flattened from (manifest ``feature_grid``).

    Returns:
        float32 ndarray ``[..., h, w]`` (``[B, M, h, w]``), where
        ``out[..., i, j] = attention[..., j + i * w]`` (row-major, as the
        feature store writes regions). Values are unchanged.

    Raises:
        ValueError: if ``h * w`` differs from the last dimension.
    """
    a = np.asarray(attention, dtype=np.float32)
    h, w = _grid(grid)
    if a.ndim < 1 or a.shape[-1] != h * w:
        raise ValueError(f"attention_grids: grid {h}x{w} needs R = {h * w} regions, "
                         f"got attention of shape {a.shape}")
    return a.reshape(a.shape[:-1] + (h, w))


def upsample_attention(grid_maps, size):
    """Bilinearly upsample attention maps and min-max normalise each one.

    Args:
        grid_maps: float array-like ``[..., h, w]`` (e.g. ``[B, M, h, w]``
            from :func:`attention_grids`).
        size: int or ``(H, W)``, the output size in pixels.

    Returns:
        float32 ndarray ``[..., H, W]`` with values in [0, 1]: each map is
        resized with ``tf.image.resize(..., "bilinear")`` (half-pixel
        centres, as ``jax.image``/PIL) and then rescaled to
        ``(x - min) / (max - min)`` on its own, so each head uses the full
        colour range. A constant map becomes all zeros. For display only:
        the result is not a distribution.

    Raises:
        ValueError: if ``grid_maps`` has fewer than 2 dimensions or ``size``
            is not positive.
    """
    import tensorflow as tf

    m = np.asarray(grid_maps, dtype=np.float32)
    if m.ndim < 2:
        raise ValueError(f"upsample_attention: need [..., h, w] maps, got shape {m.shape}")
    size = (int(size), int(size)) if np.isscalar(size) else tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"upsample_attention: size must be positive (H, W), got {size}")
    lead, (h, w) = m.shape[:-2], m.shape[-2:]
    flat = m.reshape((-1, h, w, 1))
    up = tf.image.resize(flat, size, method="bilinear").numpy()[..., 0]
    lo = up.min(axis=(1, 2), keepdims=True)
    span = up.max(axis=(1, 2), keepdims=True) - lo
    out = np.where(span > 0, (up - lo) / np.where(span > 0, span, 1.0), 0.0)
    return out.astype(np.float32).reshape(lead + size)


def _fmt_top(title, top):
    lines = [title]
    if not top:
        lines.append("  (none)")
    for name, score in top:
        lines.append(f"  {score:7.2f}  {name}")
    return lines


def attention_figure(image, attention, grid, seen_top, unseen_top, head_top=None, *,
                     title="image", cmap="jet", alpha=0.5, max_cols=6, dpi=80):
    """Draw an image, one attention overlay per head and the top labels.

    Args:
        image: uint8 array ``[H, W, 3]`` RGB, the (cropped) network input.
        attention: float array-like ``[M, R]``, one image's LESA attention.
        grid: ``(h, w)`` with ``h * w == R``.
        seen_top: list of ``(name, score)`` pairs, the top seen labels (score:
            LESA logit, unbounded float), best first.
        unseen_top: list of ``(name, score)`` pairs, the top unseen (zero-shot)
            labels, best first.
        head_top: optional list of M ``(name, score)`` pairs, each head's
            highest-scoring label; used in the head titles.
        title: str, title of the image panel.
        cmap: str, matplotlib colormap of the overlay.
        alpha: float in [0, 1], overlay opacity.
        max_cols: int, panels per row.
        dpi: int, figure resolution (pixels per inch).

    Returns:
        matplotlib.figure.Figure with exactly M + 2 axes, in order: the image
        (titled ``title``), heads 0..M-1 (titled ``"head m"`` or
        ``"head m: <name> (<score>)"``), and a text panel titled
        ``"top-K predictions"`` listing the seen then unseen labels.

    Raises:
        ValueError: if ``image`` is not ``[H, W, 3]`` or ``head_top`` does not
            have M entries (and the errors of :func:`attention_grids`).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"attention_figure: image must be [H, W, 3], got {image.shape}")
    maps = attention_grids(np.asarray(attention)[None], grid)[0]          # [M, h, w]
    heads = maps.shape[0]
    if head_top is not None and len(head_top) != heads:
        raise ValueError(f"attention_figure: head_top has {len(head_top)} entries for "
                         f"{heads} heads")
    heat = upsample_attention(maps, image.shape[:2])                       # [M, H, W]

    panels = heads + 2
    ncols = max(1, min(panels, int(max_cols)))
    nrows = math.ceil(panels / ncols)
    fig = Figure(figsize=(2.3 * ncols, 2.5 * nrows), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(nrows, ncols, 1)
    ax.imshow(image)
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    for m in range(heads):
        ax = fig.add_subplot(nrows, ncols, m + 2)
        ax.imshow(image)
        ax.imshow(heat[m], cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0)
        label = f"head {m}"
        if head_top is not None:
            name, score = head_top[m]
            label += f": {name} ({score:.2f})"
        ax.set_title(label, fontsize=7)
        ax.axis("off")
    ax = fig.add_subplot(nrows, ncols, heads + 2)
    ax.axis("off")
    ax.set_title("top-K predictions", fontsize=8)
    text = "\n".join(_fmt_top("seen:", seen_top) + _fmt_top("unseen:", unseen_top))
    ax.text(0.0, 1.0, text, va="top", ha="left", family="monospace", fontsize=6,
            transform=ax.transAxes)
    fig.tight_layout()
    return fig


def figure_to_array(fig):
    """Render a figure to pixels.

    Args:
        fig: matplotlib.figure.Figure (any canvas; it is drawn with Agg).

    Returns:
        uint8 ndarray ``[H, W, 3]`` RGB (the opaque figure background, alpha
        dropped), H x W = the figure size in inches times its dpi.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.array(canvas.buffer_rgba(), dtype=np.uint8)[..., :3]


def log_attention_images(summary_writer, step, images, attention, grid, seen_tops, unseen_tops,
                         max_images=4, head_tops=None):
    """Write attention figures as TensorBoard image summaries.

    Writes ``tf.summary.image("attention/<i>", ...)`` for the first
    ``min(B, max_images)`` images (one tag per image, so TensorBoard shows
    each image's history over ``step``) and flushes the writer.

    Args:
        summary_writer: ``tf.summary.SummaryWriter`` (e.g.
            ``tf.summary.create_file_writer(run_dir + "/tb")``).
        step: int, the global step of the summaries.
        images: uint8 array ``[B, H, W, 3]``.
        attention: float array ``[B, M, R]``.
        grid: ``(h, w)`` with ``h * w == R``.
        seen_tops, unseen_tops: length-B lists of ``(name, score)`` lists.
        max_images: int, at most this many figures are written.
        head_tops: optional length-B list of M ``(name, score)`` pairs.

    Returns:
        int, the number of figures written.
    """
    import tensorflow as tf

    n = min(len(images), int(max_images))
    with summary_writer.as_default(step=int(step)):
        for i in range(n):
            fig = attention_figure(images[i], attention[i], grid, seen_tops[i], unseen_tops[i],
                                   None if head_tops is None else head_tops[i], title=f"image {i}")
            tf.summary.image(f"attention/{i}", figure_to_array(fig)[None], step=int(step))
    summary_writer.flush()
    return n


# --------------------------------------------------------------------------- scoring


def _top(names, scores, k):
    order = np.argsort(-scores, kind="stable")[:k]
    return [(names[j], float(scores[j])) for j in order]


def explain_features(model, features, seen_names, unseen_names=(), unseen_vectors=None, k=5):
    """LESA attention and top labels for precomputed features.

    Args:
        model: :class:`mll_tf.models.lesa.LESA` trained on ``seen_names``.
        features: float32 array ``[B, R, D]`` (as read from the feature store).
        seen_names: list of the model's C_s seen label names, in its column
            order (``label_split.json`` ``"seen"``).
        unseen_names: list of C_u unseen label names (may be empty).
        unseen_vectors: float32 ``[C_u, d_w]`` raw word vectors of
            ``unseen_names`` in that order (ignored when C_u = 0).
        k: int, labels per top list.

    Returns:
        list of B dicts with ``"attention"`` float32 ``[M, R]`` (softmax over
        regions), ``"seen_top"`` / ``"unseen_top"``: up to ``k``
        ``(name, score)`` pairs, best first, score = LESA logit (max over
        heads, unbounded); ``"head_top"``: M ``(name, score)`` pairs, each
        head's best label over seen and unseen labels together (the heads'
        scores s_{m,c} share W, so they are comparable).

    Raises:
        ValueError: if the number of seen names differs from the model's
            labels, or unseen names and vectors disagree.
    """
    import tensorflow as tf

    feats = tf.convert_to_tensor(np.asarray(features, np.float32))
    seen_names = list(seen_names)
    unseen_names = list(unseen_names)
    out = model(feats, training=False)
    seen_logits = out["logits"].numpy()
    if seen_logits.shape[1] != len(seen_names):
        raise ValueError(f"explain_features: the model has {seen_logits.shape[1]} seen labels, "
                         f"got {len(seen_names)} names")
    heads = out["head_logits"].numpy()                                    # [B, M, Cs]
    attention = out["attention"].numpy()
    if unseen_names:
        vecs = np.asarray(unseen_vectors, np.float32)
        if vecs.shape[0] != len(unseen_names):
            raise ValueError(f"explain_features: {len(unseen_names)} unseen names but "
                             f"{vecs.shape[0]} unseen vectors")
        zs = model(feats, training=False, label_embeddings=tf.constant(vecs))
        unseen_logits = zs["logits"].numpy()
        heads = np.concatenate([heads, zs["head_logits"].numpy()], axis=-1)
    else:
        unseen_logits = np.zeros((len(seen_logits), 0), np.float32)
    all_names = seen_names + unseen_names
    results = []
    for i in range(len(seen_logits)):
        results.append({
            "attention": attention[i],
            "seen_top": _top(seen_names, seen_logits[i], k),
            "unseen_top": _top(unseen_names, unseen_logits[i], k),
            "head_top": [_top(all_names, heads[i, m], 1)[0] for m in range(heads.shape[1])],
        })
    return results


def log_model_attention(summary_writer, step, model, examples, seen_names, unseen_names=(),
                        unseen_vectors=None, k=5, max_images=4):
    """Score fixed examples with ``model`` and log their attention figures.

    The one call a training loop needs (e.g. after each validation pass).

    Args:
        summary_writer: ``tf.summary.SummaryWriter``.
        step: int, global step.
        model: :class:`mll_tf.models.lesa.LESA`.
        examples: :class:`AttentionExamples` (from :func:`attention_examples`).
        seen_names, unseen_names, unseen_vectors, k: as :func:`explain_features`.
        max_images: int.

    Returns:
        int, the number of figures written (``attention/<i>`` tags).
    """
    res = explain_features(model, examples.features[:max_images], seen_names, unseen_names,
                           unseen_vectors, k)
    return log_attention_images(
        summary_writer, step, examples.images[:max_images], np.stack([r["attention"] for r in res]),
        examples.grid, [r["seen_top"] for r in res], [r["unseen_top"] for r in res],
        max_images=max_images, head_tops=[r["head_top"] for r in res])


# --------------------------------------------------------------------------- images -> features


def backbone_weights_argument(provenance):
    """The ``weights`` argument that rebuilds a backbone from its provenance.

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


def _build_backbone_like(manifest, allow_random_backbone=False):
    """The backbone of a manifest, checked against what it recorded."""
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


def load_image_like_extraction(path, size, resize_shorter=None):
    """Decode one image file the way the extraction decoded the dataset.

    ``.svg`` files are rendered with the clip-art adapter's loader
    (:func:`mll_tf.data.datasets.openclipart.render_svg`: cairosvg at width
    ``size``, on white, padded to a square), exactly as
    ``extract/build_tfrecords.py`` did for ``--dataset openclipart``. Other
    files go through :func:`mll_tf.data.images.load_rgb_center_crop` (PIL,
    shorter side to ``resize_shorter`` or ``size``, central crop).

    Args:
        path: str, image file.
        size: int, square network input size.
        resize_shorter: int or None, the backbone's ``resize_shorter``.

    Returns:
        uint8 ndarray ``[size, size, 3]`` RGB.

    Raises:
        ValueError, OSError, PIL.UnidentifiedImageError or a cairosvg error:
        if the file is empty or unreadable.
    """
    if os.fspath(path).lower().endswith(SVG_EXTENSIONS):
        from mll_tf.data.datasets.openclipart import render_svg
        im = render_svg(path, size)
    else:
        from mll_tf.data.images import load_rgb_center_crop
        im = load_rgb_center_crop(path, size, resize_shorter=resize_shorter)
    im = np.asarray(im, np.uint8)
    if im.shape != (size, size, 3):
        raise ValueError(f"decoder returned {im.shape}, expected {(size, size, 3)}")
    return im


def image_features(backbone_model, images, feature_dtype="float32", batch_size=8):
    """Backbone features of images, stored and read back like the feature store.

    Mirrors :class:`mll_tf.data.extraction.FeatureFunction` (uint8 -> float32,
    ``training=False``, ``[n, h, w, D] -> [n, h*w, D]`` row-major) followed by
    the store's round trip (cast to ``feature_dtype`` and back to float32).

    Args:
        backbone_model: keras.Model, float32 RGB ``[B, H, W, 3]`` in [0, 255]
            -> ``[B, h, w, D]``.
        images: uint8 array ``[n, H, W, 3]``.
        feature_dtype: ``"float16"`` or ``"float32"`` (manifest
            ``feature_dtype``).
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


@dataclasses.dataclass
class AttentionExamples:
    """A few store records with their images, for logging attention.

    Attributes:
        image_ids: list of str, record ids (paths relative to the dataset root).
        images: uint8 ndarray ``[n, S, S, 3]``, the images as extraction saw them.
        features: float32 ndarray ``[n, R, D]``, the stored features.
        grid: ``(h, w)`` tuple, the feature grid.
    """
    image_ids: list
    images: np.ndarray
    features: np.ndarray
    grid: tuple


def attention_examples(split_dir, num_images=4, root=None):
    """The first ``num_images`` records of a feature-store split, with images.

    Features come from the store itself (so no backbone is run); images are
    decoded from ``<root>/<image_id>`` with :func:`load_image_like_extraction`.
    Records whose image can no longer be read are left out.

    Args:
        split_dir: str, a split folder of the feature store (e.g.
            ``cfg.features_dir("val")``).
        num_images: int, how many records to take (from the deterministic,
            unshuffled read order).
        root: str or None, dataset root; default the manifest's
            ``extra["root"]``.

    Returns:
        :class:`AttentionExamples` (possibly with 0 images).

    Raises:
        ValueError: if no root is given and the manifest records none, or
            the manifest has no ``feature_grid``.
        FileNotFoundError: if the split has no manifest.
    """
    from mll_tf.data.feature_store import make_dataset, read_manifest

    manifest = read_manifest(split_dir)
    root = root or manifest.extra.get("root")
    if not root:
        raise ValueError(f"{split_dir}: the manifest records no dataset root (extra['root']); "
                         "pass root=")
    if not manifest.feature_grid:
        raise ValueError(f"{split_dir}: the manifest has no feature_grid")
    size = int(manifest.input_size[0])
    batch = next(iter(make_dataset(split_dir, int(num_images), as_dict=True)), None)
    ids, images, feats = [], [], []
    if batch is not None:
        for image_id, f in zip(batch["image_id"].numpy(), batch["features"].numpy()):
            image_id = image_id.decode("utf-8")
            try:
                images.append(load_image_like_extraction(os.path.join(root, image_id), size))
            except Exception:  # noqa: BLE001 - a vanished image is left out, not fatal
                continue
            ids.append(image_id)
            feats.append(f)
    r, d = manifest.feature_shape
    return AttentionExamples(
        image_ids=ids,
        images=np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8),
        features=np.stack(feats) if feats else np.zeros((0, r, d), np.float32),
        grid=tuple(manifest.feature_grid))


def _load_model(run_dir, checkpoint):
    import keras

    import mll_tf.models.lesa  # noqa: F401  (registers LESA for load_model)

    if checkpoint in ("best", "last"):
        path = os.path.join(run_dir, f"{checkpoint}.keras")
    else:
        path = os.fspath(checkpoint)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no saved model {path!r} (checkpoint={checkpoint!r})")
    return keras.models.load_model(path), path


def explain_images(run_dir, image_paths, k=5, checkpoint="best", allow_random_backbone=False,
                   batch_size=8):
    """LESA attention and top seen/unseen labels for image files.

    Re-creates what the run saw: the backbone, weights, input size and
    feature dtype recorded in the train split's manifest
    (``cfg.features_dir("train")/manifest.json``), the image decoding of
    :func:`load_image_like_extraction` (raster files: shorter side to the
    manifest's ``extra["resize_shorter"]`` if recorded, else the backbone's
    ``resize_shorter``), the backbone forward pass and the
    store's dtype round trip (:func:`image_features`); then the saved model
    scores the seen labels (its own vectors) and the unseen labels (the
    ``label_embeddings.npz`` vectors in ``label_split.json``'s unseen order).

    Args:
        run_dir: str, a run directory of ``experiments/train.py`` (holds
            ``config.yaml``, ``label_split.json``, ``label_embeddings.npz``,
            ``best.keras`` / ``last.keras``).
        image_paths: list of str, image files (``.svg`` or anything PIL reads).
        k: int, labels per top list.
        checkpoint: ``"best"``, ``"last"`` or a path to a ``.keras`` file.
        allow_random_backbone: bool, accept features extracted with random
            backbone weights (they cannot be reproduced; fresh random weights
            are used).
        batch_size: int, images per backbone pass.

    Returns:
        list of dicts, one per path, in order. A readable image gives
        ``{"path", "image": uint8 [S, S, 3], "grid": (h, w), "attention":
        float32 [M, R], "seen_top", "unseen_top": lists of up to k
        (name, score) pairs (LESA logits, best first), "head_top": M
        (name, score) pairs}`` (see :func:`explain_features`); an unreadable
        one gives ``{"path", "error": "<ExceptionType>: <message>"}``.

    Raises:
        FileNotFoundError: if ``run_dir`` has no ``config.yaml``, the saved
            model is missing, or the train split's features (hence the
            manifest) are missing.
        ValueError: if the recorded backbone weights cannot be rebuilt (see
            :func:`backbone_weights_argument`; random weights unless
            ``allow_random_backbone``) or the rebuilt backbone does not match
            the manifest.
    """
    from mll_tf.training.config import TrainConfig
    from mll_tf.training.lesa_trainer import read_split_manifest
    from mll_tf.training.zsl_split import LabelSplit

    cfg_path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg = TrainConfig.load(cfg_path)
    manifest = read_split_manifest(cfg, "train")
    split = LabelSplit.load(os.path.join(run_dir, "label_split.json"))
    z = np.load(os.path.join(run_dir, "label_embeddings.npz"))
    vectors = dict(zip(z["names"].tolist(), z["vectors"]))
    unseen_vecs = (np.stack([vectors[n] for n in split.unseen]).astype(np.float32)
                   if split.unseen else None)
    backbone = _build_backbone_like(manifest, allow_random_backbone)
    model, _ = _load_model(run_dir, checkpoint)
    size = int(manifest.input_size[0])
    # An explicit record in the manifest wins; otherwise the backbone's own setting.
    resize_shorter = manifest.extra.get("resize_shorter", getattr(backbone, "resize_shorter", None))
    grid = tuple(int(g) for g in (manifest.feature_grid or backbone.feature_shape[:2]))

    results = [{"path": os.fspath(p)} for p in image_paths]
    good, images = [], []
    for i, p in enumerate(image_paths):
        try:
            images.append(load_image_like_extraction(p, size, resize_shorter))
            good.append(i)
        except Exception as e:  # noqa: BLE001 - one bad file never stops the batch
            results[i]["error"] = f"{type(e).__name__}: {str(e)[:200]}"
    for start in range(0, len(good), batch_size):
        idx = good[start:start + batch_size]
        batch = np.stack(images[start:start + batch_size])
        feats = image_features(backbone.model, batch, manifest.feature_dtype, batch_size)
        scored = explain_features(model, feats, split.seen, split.unseen, unseen_vecs, k)
        for j, i in enumerate(idx):
            results[i].update(image=batch[j], grid=grid, **scored[j])
    return results
