"""Shared test helpers (not collected by pytest)."""

import os

SVG_TEMPLATE = """<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/"
     xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns:cc="http://creativecommons.org/ns#"
     width="{w}" height="{h}">
  <metadata><rdf:RDF><cc:Work rdf:about="">
    <dc:subject><rdf:Bag>{tags}</rdf:Bag></dc:subject>
  </cc:Work></rdf:RDF></metadata>
  <rect x="2" y="2" width="{rw}" height="{rh}" fill="{color}"/>
  <circle cx="{cx}" cy="{cy}" r="{r}" fill="#203040"/>
</svg>
"""

COLORS = ["#ff0000", "#00aa00", "#0000ff", "#ffaa00", "#aa00ff", "#00aaaa"]


def svg(tags, i=0, w=40, h=30):
    """A small valid SVG with ``<dc:subject>`` tags; ``i`` varies the drawing (and its hash)."""
    return SVG_TEMPLATE.format(
        w=w, h=h, rw=w - 4 - i % 7, rh=h - 4 - (i // 7) % 5, color=COLORS[i % len(COLORS)],
        cx=5 + i % 17, cy=5 + i % 11, r=2 + i % 4,
        tags="".join(f"<rdf:li>{t}</rdf:li>" for t in tags))


# Tags that all have GloVe vectors.
TAG_SETS = [["cat", "animal"], ["dog", "animal"], ["car", "vehicle"], ["tree", "plant"],
            ["flower", "plant"], ["house", "building"], ["bird", "animal"], ["truck", "vehicle"]]


def make_clipart_tree(root, n=48, broken=True):
    """Write a tiny openclipart-like tree; returns the list of written paths.

    With ``broken``: one empty file, one malformed XML file, one drawing that
    cairosvg cannot render (``fill-opacity:100%``) and one
    byte-identical duplicate under another category.
    """
    paths = []
    for i in range(n):
        cat = ["animals", "objects", "plants"][i % 3]
        d = os.path.join(root, cat)
        os.makedirs(d, exist_ok=True)
        p = os.path.join(d, f"img_{i:03d}.svg")
        with open(p, "w") as f:
            f.write(svg(TAG_SETS[i % len(TAG_SETS)], i))
        paths.append(p)
    if broken:
        os.makedirs(os.path.join(root, "broken"), exist_ok=True)
        open(os.path.join(root, "broken", "empty.svg"), "w").close()
        with open(os.path.join(root, "broken", "malformed.svg"), "w") as f:
            f.write("<svg><metadata><unclosed></svg")
        with open(os.path.join(root, "broken", "norender.svg"), "w") as f:
            # cairosvg cannot parse a percentage opacity (as in several real openclipart files)
            f.write(svg(["cat", "animal"], 999).replace('fill="#203040"', 'style="fill-opacity:100%"'))
        os.makedirs(os.path.join(root, "zcopy"), exist_ok=True)
        with open(paths[0]) as src, open(os.path.join(root, "zcopy", "dup.svg"), "w") as dst:
            dst.write(src.read())
    return paths


# ----------------------------------------------------------------------------- tiny feature stores

#: Label names of the tiny stores (all have GloVe 50-d vectors).
STORE_NAMES = ["cat", "dog", "car", "tree", "boat", "house", "bird", "fish"]


def write_toy_store(root, dataset="toy", backbone="efficientnet_lite0", size=8, regions=4, dim=8, splits=None, seed=0,
                    names=None):
    """Separable random features in a feature store: ``<root>/<dataset>/<backbone>_<size>/<split>``.

    Each record's ``[regions, dim]`` map is Gaussian noise plus the sum of the
    class centres of its labels (35% of the labels present, at least one).
    The manifest records a 2 x (regions / 2) grid and the per-split positive
    counts (for seen/unseen splits).

    Returns:
        dict split -> int8 labels ``[N, C]``.
    """
    import numpy as np

    from mll_tf.data.feature_store import FeatureStoreWriter, Manifest

    names = list(names or STORE_NAMES)
    splits = splits or {"train": 192, "val": 64, "test": 64}
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(len(names), dim))
    all_labels = {}
    for split, n in splits.items():
        labels = (rng.random((n, len(names))) < 0.35).astype(np.int8)
        labels[labels.sum(1) == 0, 0] = 1
        all_labels[split] = labels
    counts = {s: {nm: int(y[:, j].sum()) for j, nm in enumerate(names)} for s, y in all_labels.items()}
    for split, labels in all_labels.items():
        man = Manifest(dataset=dataset, split=split, backbone=backbone, weights="none", input_size=[size, size],
                       preprocessing="synthetic", feature_shape=[regions, dim], feature_grid=[2, regions // 2],
                       feature_dtype="float32", label_names=names, extra_label_names={},
                       extra={"label_counts_by_split": counts})
        with FeatureStoreWriter(os.path.join(str(root), dataset, f"{backbone}_{size}", split), man) as w:
            for i, y in enumerate(labels):
                f = rng.normal(scale=0.5, size=(regions, dim)) + y @ centers
                w.write(f"{split}/{i:04d}", f.astype(np.float32), y)
    return all_labels


def toy_task(root, tmp_path, method, run_name=None, **overrides):
    """A Task on the store of :func:`write_toy_store`, with small, fast settings (fields override)."""
    from mll_tf.tasks import build_task

    base = dict(method=method, dataset="toy", backbone="efficientnet_lite0", input_size=8,
                features_root=str(root), run_dir=str(tmp_path / (run_name or method)), batch_size=16,
                epochs=4, learning_rate=1e-2, shuffle_buffer=64, log_every=5)
    task_over = overrides.pop("task", {})
    base.update(overrides)
    if method == "lesa":
        task_over = dict(dict(num_heads=2, conv_channels=6, min_test_images=1, unseen_fraction=0.3,
                              attention_images=0), **task_over)
    return build_task(base, task=task_over)


def fit_on(strategy, build_model, loss, batches, optimizer, weights=None, steps_per_execution=1):
    """Train ``build_model()`` with ``fit`` under ``strategy`` on ``batches`` (one epoch, one step per batch).

    Returns:
        (initial weights, history dict, final weights).
    """
    import tensorflow as tf

    with strategy.scope():
        model = build_model()
        model.compile(optimizer=optimizer(), loss=loss, steps_per_execution=steps_per_execution)
        model.optimizer.build(model.trainable_variables)
        if weights is not None:
            model.set_weights(weights)
    w0 = [w.copy() for w in model.get_weights()]
    x, y = batches
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(len(x) // 2)
    hist = model.fit(ds, epochs=1, verbose=0, shuffle=False)
    return w0, hist.history, model.get_weights()
