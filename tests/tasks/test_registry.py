"""The task registry: a method defined here, in one class and one registry line, works everywhere."""

import dataclasses
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from mll_tf.tasks import TASKS, get_task, register_task, task_names
from mll_tf.tasks.multilabel import MultiLabelConfig, MultiLabelTask
from mll_tf.training.config import option
from tests.helpers import write_toy_store


# ---- a new method: its config, its model, its task -------------------------------------------

@dataclasses.dataclass
class TinyConfig(MultiLabelConfig):
    width: int = option(4, "hidden units of the tiny MLP", min=1)


@keras.saving.register_keras_serializable(package="tests")
class TinyMLP(keras.Model):
    """Mean over regions -> Dense(width, relu) -> Dense(C); Keras' own train_step and loss."""

    def __init__(self, num_classes, width, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.width = num_classes, width
        self.hidden = keras.layers.Dense(width, activation="relu")
        self.out = keras.layers.Dense(num_classes)

    def call(self, x, training=False):
        return self.out(self.hidden(tf.reduce_mean(x, axis=1)))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "width": self.width}


class TinyTask(MultiLabelTask):
    Config = TinyConfig

    def build_model(self):
        model = TinyMLP(len(self.label_names), self.config.width)
        model(tf.zeros([1] + list(self.manifest.feature_shape)))
        return model

    def build_loss(self):
        return keras.losses.BinaryCrossentropy(from_logits=True)

    def train_dataset(self, batch_size, start_step=0):
        ds = super().train_dataset(batch_size, start_step)
        return ds.map(lambda x, y: (x, tf.cast(tf.maximum(y, 0), tf.float32)))   # unknown -> absent


@pytest.fixture
def tiny():
    register_task("tiny")(TinyTask)
    yield TinyTask
    TASKS.unregister("tiny")


def test_registered_method_trains_evaluates_and_infers_through_the_clis(tiny, tmp_path, capsys):
    from evaluation import evaluate
    from experiments import train

    root = tmp_path / "features"
    write_toy_store(root, names=["cat", "dog", "car"])
    assert "tiny" in task_names() and get_task("tiny") is TinyTask
    assert train.main(["--help"]) == 0
    assert "--method tiny options" in capsys.readouterr().out
    run = tmp_path / "run"
    argv = ["--method", "tiny", "--width", "3", "--dataset", "toy", "--input-size", "8", "--features-root",
            str(root), "--run-dir", str(run), "--epochs", "2", "--batch-size", "16", "--learning-rate", "0.01",
            "--no-progress"]
    assert train.main(argv) == 0
    saved = (run / "config.yaml").read_text()
    assert "method: tiny" in saved and "width: 3" in saved
    assert json.load(open(run / "final_metrics.json"))["step"] == 24
    capsys.readouterr()
    assert evaluate.main(["--run", str(run), "--threshold", "0.4"]) == 0
    assert "[tiny]" in capsys.readouterr().out
    assert evaluate.main(["--run", str(run), "--baselines"]) == 2     # a LESA option, refused by name
    assert "--baselines does not apply to --method tiny" in capsys.readouterr().err


def test_unknown_method_and_foreign_options(tmp_path, capsys):
    from experiments import train

    with pytest.raises(KeyError, match="--method: unknown task 'nope'"):
        get_task("nope")
    assert train.main(["--method", "nope"]) == 2
    assert "--method" in capsys.readouterr().err
    assert train.main(["--method", "csl", "--num-heads", "3"]) == 2
    assert "--num-heads is an option of --method lesa, not of --method csl" in capsys.readouterr().err


def test_every_registered_task_has_a_config_and_steps():
    for name in task_names():
        cls = get_task(name)
        assert cls.name == name and dataclasses.is_dataclass(cls.Config)
        assert cls.supports_features or cls.supports_finetune
    assert {"lesa", "csl", "asl", "ignore", "negative", "logistic", "imcl"} <= set(task_names())
