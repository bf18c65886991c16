"""Extraction into the feature store: corrupt images skipped and recorded, resume."""

import numpy as np

from mll_tf.data.datasets.openclipart import OpenClipArt
from mll_tf.data.extraction import extract_records
from mll_tf.data.feature_store import FeatureStoreWriter, Manifest, make_dataset
from tests.helpers import make_clipart_tree

SIZE = 16


def mean_colour_features(images):
    """A stand-in backbone: [n, 16, 16, 3] uint8 -> [n, 4, 3] (2x2 grid of mean colours)."""
    x = images.astype(np.float32).reshape(len(images), 2, 8, 2, 8, 3).mean(axis=(2, 4))
    return x.reshape(len(images), 4, 3)


mean_colour_features.batch_size = 4


def _manifest(prepared, split):
    return Manifest(dataset="openclipart", split=split, backbone="mean_colour", weights="none",
                    input_size=[SIZE, SIZE], preprocessing=prepared.preprocessing,
                    feature_shape=[4, 3], feature_grid=[2, 2], feature_dtype="float32",
                    label_names=prepared.label_names, extra_label_names={})


def _read_all(split_dir):
    out = {}
    for d in make_dataset(split_dir, 8, as_dict=True):
        for i, image_id in enumerate(d["image_id"].numpy()):
            assert image_id.decode() not in out, "duplicate record"
            out[image_id.decode()] = (d["features"][i].numpy(), d["labels"][i].numpy())
    return out


def test_corrupt_image_skipped_counted_and_recorded(tmp_path):
    make_clipart_tree(str(tmp_path / "svg"), n=12)
    prepared = OpenClipArt(root=str(tmp_path / "svg"), min_count=1, test_percent=0, val_percent=0).prepare()
    records = prepared.splits["train"]
    split_dir = tmp_path / "store" / "train"
    with FeatureStoreWriter(split_dir, _manifest(prepared, "train")) as w:
        for item in prepared.skipped.get("train", []):
            w.skip(item["image_id"], item["reason"])
        stats = extract_records(records, prepared.load_image, SIZE, mean_colour_features, w,
                                num_workers=0, progress=False)
    m = w.manifest
    assert m.complete and stats["written"] == 12 and stats["skipped"] == 1
    reasons = {s["image_id"]: s["reason"] for s in m.skipped}
    assert set(reasons) == {"broken/empty.svg", "broken/malformed.svg", "broken/norender.svg"}
    assert reasons["broken/empty.svg"] == "empty file"
    stored = _read_all(split_dir)
    assert len(stored) == m.num_examples == 12
    by_id = {r.image_id: r for r in records}
    for image_id, (feat, labels) in stored.items():
        np.testing.assert_array_equal(labels, by_id[image_id].labels)
        want = mean_colour_features(prepared.load_image(by_id[image_id].path, SIZE)[None])[0]
        np.testing.assert_allclose(feat, want, rtol=1e-6)


class Interrupt(Exception):
    pass


def test_interrupted_extraction_resumes_without_loss_or_duplicates(tmp_path):
    make_clipart_tree(str(tmp_path / "svg"), n=20, broken=False)
    prepared = OpenClipArt(root=str(tmp_path / "svg"), min_count=1, test_percent=0, val_percent=0).prepare()
    records = prepared.splits["train"]
    split_dir = tmp_path / "store" / "train"
    calls = {"n": 0}

    def flaky(images):
        calls["n"] += 1
        if calls["n"] == 4:          # dies in the 4th batch, after 3 complete batches
            raise Interrupt()
        return mean_colour_features(images)

    flaky.batch_size = 4
    try:
        with FeatureStoreWriter(split_dir, _manifest(prepared, "train"), max_shard_bytes=300) as w:
            extract_records(records, prepared.load_image, SIZE, flaky, w, num_workers=0, progress=False)
    except Interrupt:
        pass
    assert not w.manifest.complete
    with FeatureStoreWriter(split_dir, _manifest(prepared, "train"), max_shard_bytes=300) as w2:
        done_before = len(w2.done_ids)
        stats = extract_records(records, prepared.load_image, SIZE, mean_colour_features, w2,
                                num_workers=0, progress=False)
    assert 0 < done_before < 20 and stats["already_done"] == done_before
    assert stats["written"] == 20 - done_before
    stored = _read_all(split_dir)
    assert sorted(stored) == sorted(r.image_id for r in records)
    assert w2.manifest.complete and w2.manifest.num_examples == 20


def test_worker_processes_give_the_same_store(tmp_path):
    make_clipart_tree(str(tmp_path / "svg"), n=8)
    prepared = OpenClipArt(root=str(tmp_path / "svg"), min_count=1, test_percent=0, val_percent=0).prepare()
    records = prepared.splits["train"]
    out = {}
    for workers in (0, 2):
        d = tmp_path / f"w{workers}" / "train"
        with FeatureStoreWriter(d, _manifest(prepared, "train")) as w:
            extract_records(records, prepared.load_image, SIZE, mean_colour_features, w,
                            num_workers=workers, chunk_size=3, max_in_flight=2, progress=False)
        out[workers] = (_read_all(d), {s["image_id"] for s in w.manifest.skipped})
    assert out[0][1] == out[2][1] == {"broken/norender.svg"}
    assert sorted(out[0][0]) == sorted(out[2][0])
    for k in out[0][0]:
        np.testing.assert_array_equal(out[0][0][k][0], out[2][0][k][0])
