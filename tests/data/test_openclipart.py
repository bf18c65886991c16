import numpy as np
import pytest

from mll_tf.data.datasets.openclipart import OpenClipArt, normalize_tag, read_tags, render_svg
from tests.helpers import make_clipart_tree, svg


def test_normalize_tag():
    assert normalize_tag("Signs_and_Symbols") == ["signs and symbols"]
    assert normalize_tag("rome,italy") == ["rome", "italy"]
    assert normalize_tag(" 11 ") == []
    assert normalize_tag("hash") == []          # collection artefact (STOP_TAGS)
    assert normalize_tag("  Ice   Cream ") == ["ice cream"]


def test_read_tags_from_svg_metadata():
    assert read_tags(svg(["Cat", "animal", "cat"]).encode()) == {"cat", "animal"}


def test_prepare_vocabulary_splits_and_skips(tmp_path):
    make_clipart_tree(str(tmp_path), n=48)
    p = OpenClipArt(root=str(tmp_path), min_count=2).prepare()
    # every non-duplicate, parseable file is in exactly one split
    ids = [r.image_id for recs in p.splits.values() for r in recs]
    assert len(ids) == len(set(ids)) == 48 + 1           # 48 drawings + norender.svg
    assert "zcopy/dup.svg" not in ids and p.extra["duplicate_files_dropped"] == 1
    skipped = {s["image_id"]: s["reason"] for v in p.skipped.values() for s in v}
    assert skipped["broken/empty.svg"] == "empty file"
    assert skipped["broken/malformed.svg"].startswith("unreadable SVG")
    # vocabulary: tags on >= 2 train images, by decreasing train count
    counts = p.extra["label_counts_by_split"]["train"]
    assert all(counts[t] >= 2 for t in p.label_names)
    assert [counts[t] for t in p.label_names] == sorted(counts.values(), reverse=True)
    # labels: 1 iff the tag is on the image
    rec = next(r for recs in p.splits.values() for r in recs if r.image_id == "animals/img_000.svg")
    want = np.array([t in ("cat", "animal") for t in p.label_names], np.int8)
    np.testing.assert_array_equal(rec.labels, want)
    # deterministic
    q = OpenClipArt(root=str(tmp_path), min_count=2).prepare()
    assert q.label_names == p.label_names
    assert {k: [r.image_id for r in v] for k, v in q.splits.items()} == \
        {k: [r.image_id for r in v] for k, v in p.splits.items()}


def test_missing_root_names_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="openclipart-svg"):
        OpenClipArt(root=str(tmp_path / "nothing")).prepare()


def test_render_white_background_and_shape(tmp_path):
    paths = make_clipart_tree(str(tmp_path), n=1, broken=False)
    im = render_svg(paths[0], 32)
    assert im.shape == (32, 32, 3) and im.dtype == np.uint8
    assert tuple(im[0, 0]) == (255, 255, 255) or tuple(im[-1, -1]) == (255, 255, 255)
    assert im.min() < 100  # something was drawn
