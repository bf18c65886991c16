"""IMCL trainer on a small store: learns, keeps G's pattern, writes its run directory; logistic baseline too."""

import csv
import json

import numpy as np
import pytest
import keras

from mll_tf.training.imcl_trainer import train_imcl
from mll_tf.training.multilabel_trainer import train_multilabel
from tests.training.test_multilabel_trainer import NAMES, _cfg, store  # noqa: F401  (fixture)


def test_imcl_trains_and_keeps_graph_pattern(store, tmp_path):  # noqa: F811
    cfg = _cfg(store, tmp_path, "imcl", partial_labels="rps:0.5", epochs=3, imcl_dict_size=64, imcl_k=2)
    m = train_imcl(cfg, progress=False)
    rows = list(csv.DictReader(open(f"{cfg.run_dir}/history.csv")))
    assert len(rows) == 3
    assert float(rows[-1]["train/logistic"]) < float(rows[0]["train/logistic"])
    assert m["val/mAP"] > 0.45  # chance is ~0.35 (positives are 35% of entries)
    assert 0.0 <= m["graph/min"] and m["graph/max"] <= 1.0
    model = keras.models.load_model(f"{cfg.run_dir}/best.keras")
    g = model.label_dependency.dense().numpy()
    assert g.shape == (5, 5)
    stats = json.load(open(f"{cfg.run_dir}/partial_labels.json"))
    assert stats["scheme"] == "rps:0.5"
    # the learnable pattern is the non-zero pattern of the preprocessed initial graph
    nz = model.num_nonzero
    assert np.count_nonzero(g) <= nz


def test_imcl_refuses_several_replicas(store, tmp_path):  # noqa: F811
    cfg = _cfg(store, tmp_path, "imcl", cpu_replicas=2)
    with pytest.raises(ValueError, match="one device"):
        train_imcl(cfg, progress=False)


def test_imcl_bad_graph_flag(store, tmp_path):  # noqa: F811
    cfg = _cfg(store, tmp_path, "imcl", imcl_graph="nonsense", epochs=1)
    with pytest.raises(ValueError, match="--imcl-graph"):
        train_imcl(cfg, progress=False)
