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
    protocol: str = ""  # "lesa_nus_wide" / "lesa_openimages": reference settings (mll_tf/protocols.py)
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
    optimizer: str = "adam"  # adam | rmsprop (Keras) | rmsprop_tf1 (TF1 semantics, METHODS.md §6.1)
    learning_rate: float = 1e-4
    lr_schedule: str = "constant"  # constant | adaptive (LESA/IMCL LearningRate.adapt, METHODS.md §1.4)
    lr_signal: float = 0.3  # adaptive: EMA weight of the newest validation value
    lr_decay: float = 0.8  # adaptive: factor applied on a drop of the EMA
    lr_patience: int = 5  # adaptive: evaluations to wait after a decay
    lr_floor_fraction: float = 1e-3  # adaptive: no decay once lr < floor_fraction * learning_rate
    batch_size: int = 32
    epochs: int = 8
    max_steps: int = 0  # > 0: train for this many steps (iterations) instead of `epochs`
    eval_every: int = 0  # > 0: validate/checkpoint every N steps instead of once per epoch
    shuffle: bool = True  # False: file order, as the LESA reference
    shuffle_buffer: int = 2048
    cache: bool = False
    seed: int = 0
    cpu_replicas: int = 1
    jit_compile: bool = False  # XLA for the train step; tested on one replica only
    # partial labels (CSL / ASL / Ignore / Negative / logistic; METHODS.md §3)
    partial_labels: str = "none"  # simulate on the train split: none | fpc:<N per class> | rps:<drop fraction>
    partial_mode: str = ""  # "" -> the method's; negative | ignore | ignore_normalize_classes | selective
    gamma_pos: float = -1.0  # < 0 -> the method's default (CSL 0, ASL 0)
    gamma_neg: float = -1.0  # < 0 -> the method's default (CSL 1, ASL 4)
    gamma_unann: float = -1.0  # < 0 -> the method's default (CSL 4)
    loss_clip: float = -1.0  # < 0 -> the method's default (CSL 0, ASL 0.05)
    likelihood_topk: int = 5  # CSL selective: un-annotated entries per image ignored as likely positives
    prior_path: str = ""  # CSL selective: class-prior CSV (Classes,avg_pred) matched by class name
    prior_threshold: float = 0.05  # CSL selective: classes with a prior above this are not negatives
    dropout: float = 0.0  # before the classifier of the head
    threshold: float = 0.5  # probability threshold of CP/CR/CF1/OP/OR/OF1
    finetune: bool = False  # train the backbone end to end on images instead of stored features
    data_root: str = ""  # --finetune: the dataset root ("" -> the adapter's default)
    dataset_options: str = ""  # --finetune: adapter options KEY=VALUE,... as for extract/build_tfrecords.py
    weight_decay: float = 0.0  # adamw: decoupled weight decay (not on biases / BN)
    # IMCL (METHODS.md §2)
    imcl_k: int = 3  # OMP sparsity: neighbours per image
    imcl_threshold: float = 1e-3  # OMP score threshold (thresold_coeff)
    imcl_dict_size: int = 10000  # dictionary entries drawn from the training split (0: all)
    imcl_graph: str = "cooccurrence"  # cooccurrence | identity | word_knn | path to a label-graph .npz
    imcl_alpha_colab: float = 1.0  # lambda_c = alpha_c * L_log / L_colab at initialisation
    imcl_alpha_feature: float = 0.5  # lambda_f = alpha_f * L_log / L_feat at initialisation
    imcl_c: float = 2.0  # asymmetric sigmoid range (-1/c, 1)
    imcl_graph_learning_rate: float = -1.0  # < 0: the classifier's learning rate
    imcl_init_from: str = ""  # run dir of a logistic run: start Theta from its classifier (the reference
    #                           starts from a trained classifier, METHODS.md §2.1)
    imcl_backbone_learning_rate: float = -1.0  # --finetune: < 0 -> 0.1 x learning_rate
    imcl_dict_refresh_steps: int = 250  # --finetune: recompute dictionary features every N steps (reference 250)
    imcl_refresh: int = 1  # recompute the dictionary predictions every N steps (1: exact, the reference)
    log_every: int = 20
    eval_k: tuple = ()  # () -> the dataset's K values (mll_tf/protocols.py: NUS-WIDE 3,5; OpenImages 10,20)
    monitor: str = ""  # "" -> the method's: LESA val/seen/F1@5, partial-label methods val/mAP_partial

    def apply_protocol(self, explicit=()):
        """Return a copy with ``self.protocol``'s settings, except fields in ``explicit``.

        Raises:
            KeyError: unknown protocol (names the ``--protocol`` flag).
        """
        if not self.protocol:
            return self
        from mll_tf.protocols import get_protocol
        proto = get_protocol(self.protocol)
        return dataclasses.replace(self, **{k: v for k, v in proto.train.items() if k not in explicit})

    def steps_per_round(self, num_examples):
        """Training steps between two validations (an "epoch" unless ``eval_every``)."""
        if self.eval_every > 0:
            return self.eval_every
        return num_examples // self.batch_size

    def num_rounds(self, num_examples):
        """Number of validation rounds: ``epochs``, or ceil(max_steps / steps_per_round)."""
        if self.max_steps > 0:
            per = self.steps_per_round(num_examples)
            return -(-self.max_steps // max(per, 1))
        return self.epochs

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
        d["eval_k"] = tuple(d.get("eval_k") or ())
        return cls(**d)

    def features_dir(self, split):
        """``<features_root>/<dataset>/<backbone>_<size>/<split>`` (as written by extract/)."""
        ds = self.dataset.replace(":", "_").replace("/", "_")
        return os.path.join(self.features_root, ds, f"{self.backbone}_{self.input_size}", split)
