"""Experiment configuration: one dataclass, saved as YAML beside the checkpoints."""

import dataclasses
import os

import yaml


@dataclasses.dataclass
class TrainConfig:
    """Resolved configuration of a training run (``run_dir/config.yaml``).

    Every field has a command-line flag of the same name in
    ``experiments/train.py`` (``--batch_size`` / ``--batch-size``).
    """
    method: str = "lesa"
    dataset: str = "openclipart"
    backbone: str = "efficientnet_lite0"
    input_size: int = 224
    features_root: str = "data/features"
    run_dir: str = ""
    # labels / zero-shot split
    word_vectors: str = "glove-6b-50d"
    unseen_fraction: float = 0.25
    min_test_images: int = 10
    # model (LESA, METHODS.md §1.2)
    num_heads: int = 10
    conv_channels: int = 512
    # loss (METHODS.md §1.3)
    margin: float = 1.0
    distribution_weight: float = 0.1
    global_weight: float = 0.001
    span_weight: float = 0.01
    # optimisation. Default: Adam 1e-4 (best of the measured settings on the clip-art tags).
    # The reference (METHODS.md §1.4) is --optimizer rmsprop --learning-rate 1e-3.
    optimizer: str = "adam"
    learning_rate: float = 1e-4
    batch_size: int = 32
    epochs: int = 8
    shuffle_buffer: int = 2048
    cache: bool = False
    seed: int = 0
    cpu_replicas: int = 1
    jit_compile: bool = False  # XLA for the train step; tested on one replica only
    log_every: int = 20
    eval_k: tuple = (3, 5)
    monitor: str = "val/seen/F1@5"

    def save(self, path):
        d = dataclasses.asdict(self)
        d["eval_k"] = list(self.eval_k)
        with open(path, "w") as f:
            yaml.safe_dump(d, f, sort_keys=False)

    @classmethod
    def load(cls, path):
        with open(path) as f:
            d = yaml.safe_load(f)
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown config keys {sorted(unknown)}")
        d["eval_k"] = tuple(d.get("eval_k", (3, 5)))
        return cls(**d)

    def features_dir(self, split):
        """``<features_root>/<dataset>/<backbone>_<size>/<split>`` (as written by extract/)."""
        ds = self.dataset.replace(":", "_").replace("/", "_")
        return os.path.join(self.features_root, ds, f"{self.backbone}_{self.input_size}", split)
