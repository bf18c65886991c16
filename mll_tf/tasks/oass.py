"""CAM classifier, Puzzle-CAM and OASS as Tasks (``--method cam | puzzle_cam | oass``, ``--finetune``).

Model and step: :class:`mll_tf.models.puzzle_cam.PuzzleCAMModel` (a
bias-free 1x1 CAM classifier on the backbone's map; Puzzle-CAM's tile/merge
losses; OASS's keypoint patches, EMA teacher and CSI). Sources: Puzzle-CAM
(Jo & Yu, ICIP 2021, ``shjo-april/PuzzleCAM``
``train_classification_with_puzzle.py``), OASS (Xu et al., ICIP 2022, the
release's README); what is the papers' and what is our reconstruction:
docs/oass.md.

=============  ================================================================
method         loss
=============  ================================================================
``cam``        ``L_cls`` (mean sigmoid BCE of the GAP logits; the plain baseline)
``puzzle_cam`` ``L_cls + L_pcls + alpha_re(t) L_re``
``oass``       Puzzle-CAM + ``alpha_p L_p + csi_weight L_csi`` (``--keypoints``)
=============  ================================================================

Logged every step (TensorBoard ``batch_*``, ``history.csv`` round means):
``loss``, ``loss_cls``, ``loss_pcls``, ``loss_re``, ``alpha_re``, ``loss_p``,
``loss_csi``, ``patches_per_image``. Validation adds to the sigmoid tasks'
metrics (``val_mAP`` ...) the keypoint localisation accuracy of the four
strategies (``val_loc_max``, ``val_loc_cmax``, ``val_loc_ctopk``,
``val_loc_ctopk_w``, fractions in [0, 1]) when the dataset records boxes
(``fashion_mnist_scatter``), and each round writes CAM/keypoint images of the
first validation images to ``tb/cams``.

The backbone must map an ``S x S`` input to an even ``h x h`` map with
``S = stride * h`` (EfficientNet-Lite0 and ``resnet50``: S a multiple of 64,
e.g. 128 -> 4x4 cells; ``resnet50_os16``, Puzzle-CAM's output-stride-16
ResNet-50: S a multiple of 32, 512 -> 32x32) so that the 2x2 tiles and the
keypoint windows line up with the cells.
"""

import dataclasses
import os

import numpy as np
import tensorflow as tf

from mll_tf.models.puzzle_cam import PuzzleCAMModel  # noqa: F401  (registers it for load_model)
from mll_tf.ops.keypoints import STRATEGIES
from mll_tf.tasks.base import register_task
from mll_tf.tasks.multilabel import MultiLabelConfig, MultiLabelTask
from mll_tf.training.config import option

__all__ = ["CAMTask", "OASSConfig", "OASSTask", "PuzzleCAMTask", "predict_cams"]


@dataclasses.dataclass
class OASSConfig(MultiLabelConfig):
    """Options of the CAM / Puzzle-CAM / OASS methods ([I]: our reconstruction, docs/oass.md sec. 1)."""
    backbone_weights: str = option("imagenet", "backbone weights: imagenet | none (random) | a weight file")
    alpha_re: float = option(3.0, "weight of Puzzle-CAM's reconstruction loss L_re (OASS README: 3.0)",
                             min=0.0)
    alpha_schedule_re: float = option(0.05, "fraction of training over which alpha_re ramps up from 0 "
                                      "(0: constant; OASS README: 0.05)", min=0.0, max=1.0)
    keypoints: str = option("cmax", "oass keypoint strategy: max | cmax | ctopk | ctopk_w", choices=STRATEGIES)
    topk: int = option(3, "[I] ctopk/ctopk_w: local maxima per class channel", min=1)
    alpha_p: float = option(0.5, "[I] weight of the patch loss L_p (OASS README: --alpha_p 0.5)", min=0.0)
    csi_weight: float = option(1.0, "[I] weight of the class-specific-instance loss (0: off)", min=0.0)
    patch_cells: int = option(0, "[I] keypoint window side in feature cells (0: half the map, Puzzle-CAM's "
                              "piece size)", min=0)
    patches_per_image: int = option(2, "[I] at most this many keypoint patches per image and step (random "
                                    "subset of the valid ones; max: 1)", min=1)
    teacher: str = option("auto", "[I] patch targets from: auto (EMA teacher, the student for max) | ema | "
                          "student", choices=("auto", "ema", "student"))
    teacher_decay: float = option(0.999, "[I] EMA teacher momentum", min=0.0, max=1.0)
    teacher_warmup: bool = option(True, "[I] teacher momentum min(decay, (t+1)/(t+10)) (mean-teacher warm-up)")
    teacher_bn: str = option("ema", "[I] teacher BN statistics: ema (averaged like the weights) | copy",
                             choices=("ema", "copy"))
    max_channels: str = option("positives", "[I] max: L_p channels, positives (all present classes) | owner",
                               choices=("positives", "owner"))
    head_lr_multiplier: float = option(1.0, "classifier gradient multiplier (Puzzle-CAM: 10 with SGD)",
                                       min=0.0)
    param_groups: str = option("none", "puzzle_cam: Puzzle-CAM's parameter groups (backbone weights x1 with "
                               "--l2, backbone biases / BN beta x2 without, classifier x10 with --l2), applied "
                               "to the gradients; use with --optimizer sgd --sgd-momentum 0 --lr-schedule poly",
                               choices=("none", "puzzle_cam"))
    l2: float = option(0.0, "coupled L2 of --param-groups puzzle_cam (g += l2 * w; Puzzle-CAM: 1e-4)", min=0.0)
    cam_images: int = option(4, "validation images drawn with their CAMs and keypoints in TensorBoard each "
                             "round (0: none)", min=0)


def predict_cams(model, dataset):
    """Logits float32 ``[N, C]``, maps float32 ``[N, h, w, C]`` and labels int8 ``[N, C]`` over a dataset."""
    fwd = model.__dict__.setdefault("_mll_cams_fn", tf.function(lambda x: model.cams(x, training=False)))
    logits, maps, labels = [], [], []
    for x, y in dataset:
        lo, f = fwd(x)
        logits.append(lo.numpy())
        maps.append(f.numpy())
        labels.append(y.numpy())
    return np.concatenate(logits), np.concatenate(maps), np.concatenate(labels)


def localization_metrics(maps, labels, boxes, topk):
    """``{"loc_<strategy>": accuracy}`` for the four strategies (fractions in [0, 1])."""
    from mll_tf.metrics.localization import localization_accuracy
    from mll_tf.ops.keypoints import keypoints

    out = {}
    for s in STRATEGIES:
        p, v = keypoints(tf.constant(maps), tf.constant(labels), s, topk)
        out[f"loc_{s}"] = localization_accuracy(p.numpy(), v.numpy(), labels, boxes, maps.shape[1:3])
    return out


def _cam_image_callback(task, run_dir):
    import keras

    class CAMImagesCallback(keras.callbacks.Callback):
        """Each round: the first validation images, their top positive class's CAM (red) and keypoints."""

        def on_epoch_end(self, epoch, logs=None):
            n = task.config.cam_images
            ds = task.eval_dataset("val").take(1)
            x, y = next(iter(ds))
            x, y = x[:n], y[:n].numpy()
            _, f = self.model.cams(x, training=False)
            images = draw_cams(x.numpy(), f.numpy(), y, task.config.keypoints, task.config.topk)
            writer = tf.summary.create_file_writer(os.path.join(run_dir, "tb", "cams"))
            with writer.as_default(step=epoch + 1):
                tf.summary.image(f"cam_{task.config.keypoints}", images, max_outputs=n)
            writer.close()

    return CAMImagesCallback()


def draw_cams(images, maps, labels, strategy, topk):
    """float ``[n, H, W, 3]`` in [0, 1]: the image, the normalised CAM of the first positive class in red,
    the strategy's keypoints of every positive class as green squares."""
    from mll_tf.ops.keypoints import keypoints, make_cam

    n, hh, ww = images.shape[:3]
    h, w = maps.shape[1:3]
    cams = make_cam(tf.constant(maps)).numpy()
    pts, valid = (a.numpy() for a in keypoints(tf.constant(maps), tf.constant(labels), strategy, topk))
    out = images.astype(np.float32) / 255.0
    for i in range(n):
        pos = np.flatnonzero(labels[i] == 1)
        if len(pos):
            a = tf.image.resize(cams[i, :, :, pos[0]:pos[0] + 1], (hh, ww)).numpy()[..., 0]
            out[i, ..., 0] = np.clip(0.5 * out[i, ..., 0] + 0.5 * a, 0, 1)
        for c in np.flatnonzero(valid[i]):
            r = int((pts[i, c, 0] + 0.5) * hh / h)
            q = int((pts[i, c, 1] + 0.5) * ww / w)
            out[i, max(r - 2, 0):r + 3, max(q - 2, 0):q + 3] = (0.0, 1.0, 0.0)
    return out


def flexible_input(backbone):
    """The backbone rebuilt on an ``[None, None, None, 3]`` input with the same weights.

    The registry's backbones are built for one input size; the tiles and the
    keypoint patches are smaller (the convolutional weights do not depend on
    the size).
    """
    import keras

    if backbone.inputs[0].shape[1:3] == (None, None):
        return backbone
    name = backbone.inputs[0].name if hasattr(backbone.inputs[0], "name") else "image"
    clone = keras.models.clone_model(backbone, input_tensors=keras.Input((None, None, 3), name=name))
    clone.set_weights(backbone.get_weights())
    return clone


class _CAMMethod(MultiLabelTask):
    """Shared: the PuzzleCAMModel trained end to end on images."""

    Config = OASSConfig
    supports_features = False
    supports_finetune = True
    default_monitor = "val_mAP"
    method = "cam"
    evaluate_options = ("threshold",)

    def describe(self):
        c = self.config
        extra = ""
        if self.method != "cam":
            extra += f"; alpha_re {c.alpha_re} (ramp {c.alpha_schedule_re})"
        if self.method == "oass":
            extra += (f"; keypoints {c.keypoints} (k {c.topk}), alpha_p {c.alpha_p}, csi {c.csi_weight}, "
                      f"teacher {c.teacher} (decay {c.teacher_decay})")
        return f"{len(self.label_names)} classes, {self.num_train_examples} training images{extra}"

    def _weights(self):
        w = self.config.backbone_weights
        if w in ("", "none"):
            return None
        if w != "imagenet" and not os.path.isfile(w):
            raise ValueError(f"--backbone-weights: no file {w}")
        return w

    def check(self):
        super().check()
        self._weights()
        c = self.config
        if c.param_groups == "puzzle_cam" and c.head_lr_multiplier != 1.0:
            raise ValueError(f"--head-lr-multiplier {c.head_lr_multiplier}: leave it at 1 with --param-groups "
                             f"puzzle_cam (the classifier's group is 10x there)")
        if c.l2 > 0 and c.param_groups == "none":
            raise ValueError(f"--l2 {c.l2}: applies to --param-groups puzzle_cam (use --weight-decay otherwise)")

    def prepare(self, run_dir, resume=False):
        super().prepare(run_dir, resume)
        from mll_tf.backbones import build_backbone

        size = self.run.input_size
        bb = build_backbone(self.run.backbone, weights=None, input_size=size)
        h, w = bb.feature_shape[:2]
        if h != w or h % 2 or size % h:
            raise ValueError(f"--input-size {size}: {self.run.backbone} gives a {h}x{w} map; the Puzzle-CAM "
                             f"tiles need an even square map with the input a multiple of it (e.g. --input-size "
                             f"{size - size % 64 or 64})")
        cells = self.config.patch_cells or h // 2
        if cells > h:
            raise ValueError(f"--patch-cells {cells}: larger than the {h}x{h} feature map")
        self.feature_cells = int(h)
        del bb

    def build_model(self):
        from mll_tf.backbones import build_backbone
        c, r = self.config, self.run
        bb = build_backbone(r.backbone, weights=self._weights(), input_size=r.input_size)
        model = PuzzleCAMModel(
            flexible_input(bb.model), len(self.label_names), method=self.method, keypoints=c.keypoints, topk=c.topk,
            alpha_re=c.alpha_re, alpha_schedule_re=c.alpha_schedule_re,
            total_steps=r.total_steps(self.num_train_examples), alpha_p=c.alpha_p, csi_weight=c.csi_weight,
            patch_cells=c.patch_cells, patches_per_image=c.patches_per_image, teacher=c.teacher,
            ema_decay=c.teacher_decay, ema_warmup=c.teacher_warmup, ema_bn=c.teacher_bn,
            max_channels=c.max_channels, head_lr_multiplier=c.head_lr_multiplier,
            param_groups=c.param_groups, l2=c.l2, seed=r.seed)
        model.build((None, r.input_size, r.input_size, 3))
        if model.uses_ema:
            model.copy_to_teacher()
        return model

    def build_loss(self):
        return None

    def callbacks(self, run_dir):
        return [_cam_image_callback(self, run_dir)] if self.config.cam_images > 0 else []

    def _boxes(self, split):
        files = getattr(self, "prepared", None) and self.prepared.extra.get("boxes_files")
        if not files or split not in files:
            return None
        from mll_tf.data.datasets.fashion_mnist_scatter import load_boxes

        data = load_boxes(files[split])
        return [data[r.image_id.split("/")[-1]] for r in self.prepared.splits[split]]

    def validation_metrics(self, model):
        from mll_tf.metrics.report import partial_label_report

        if not hasattr(self, "_val_ds"):
            self._val_ds = self.eval_dataset("val")
        logits, maps, labels = predict_cams(model, self._val_ds)
        rep, _ = partial_label_report(logits, labels, self.config.threshold, self.groups)
        out = {k: v for k, v in rep.items() if not k.startswith("num_")}
        boxes = self._boxes("val")
        if boxes is not None:
            out.update(localization_metrics(maps, labels, boxes, self.config.topk))
        return out

    def evaluate(self, run_dir, split="test", which="best", out=None, threshold=None, **options):
        """The sigmoid tasks' evaluation plus, with boxes, ``loc_<strategy>`` in ``summary.json``."""
        record, text = super().evaluate(run_dir, split, which, out, threshold, **options)
        boxes = self._boxes(split)
        if boxes is not None:
            model = self.load_model(run_dir, which)
            _, maps, labels = predict_cams(model, self.eval_dataset(split))
            loc = localization_metrics(maps, labels, boxes, self.config.topk)
            record["results"].update(loc)
            from mll_tf.training.atomic import write_json

            write_json(os.path.join(out or os.path.join(run_dir, f"eval_{split}"), "summary.json"), record)
            text += ("\nkeypoint localisation accuracy (share of (image, present class) pairs whose keypoint is "
                     "in a box of the class): " + ", ".join(f"{k[4:]} {v:.4f}" for k, v in loc.items()))
        return record, text


@register_task("cam")
class CAMTask(_CAMMethod):
    """The plain CAM classifier: backbone + bias-free 1x1 conv, GAP logits, BCE."""
    method = "cam"


@register_task("puzzle_cam")
class PuzzleCAMTask(_CAMMethod):
    """Puzzle-CAM (Jo & Yu 2021): classification, merged-tile classification and masked L1 reconstruction."""
    method = "puzzle_cam"


@register_task("oass")
class OASSTask(_CAMMethod):
    """OASS (Xu et al. 2022) on Puzzle-CAM: keypoint patches, EMA-teacher patch loss and CSI (reconstruction)."""
    method = "oass"
