"""CAM classifier, the Puzzle-CAM base and the OASS training step (TF2 / Keras 3, NHWC).

Puzzle-CAM (Jo & Yu, ICIP 2021; ``shjo-april/PuzzleCAM``):

* classifier ``core/networks.py::Classifier``: a bias-free 1x1 convolution
  (Kaiming-normal) on the backbone's feature map gives the class maps
  ``F [B, h, w, C]``; the logits are their spatial mean (GAP);
* ``core/puzzle_utils.py``: :func:`tile` cuts each image into a 2x2 grid,
  pieces concatenated piece-major ([all TL; all TR; all BL; all BR]);
  :func:`merge` inverts it on the pieces' class maps, giving ``F_re``;
* ``train_classification_with_puzzle.py`` (``--loss_option cl_pcl_re``):
  ``L = L_cls + L_pcls + alpha(t) * L_re`` with ``L_cls = MLSM(logits, y)``
  (= mean sigmoid BCE), ``L_pcls = MLSM(mean_hw(F_re), y)`` and the
  class-masked L1 ``L_re = mean_{b,i,j,c} |F - F_re| * y[b, c]`` (the mean
  runs over ALL entries, masked ones included; no stop-gradient);
  :func:`alpha_ramp` is its ``--alpha_schedule`` linear ramp.

OASS (Xu et al., ICIP 2022) adds, in our reconstruction (docs/oass.md;
every choice is an option of :class:`PuzzleCAMModel`):

* keypoints from ``stop_gradient(F)`` of the positive classes
  (:func:`mll_tf.ops.keypoints.keypoints`), a grid-aligned window of
  ``patch_cells`` cells around each, the image patch under it;
* the patch loss ``L_p``: L1 between the student's full-image map in the
  window and the teacher's map of the patch (an EMA of the student, BN
  statistics included; for Max the student itself), on the patch's class
  channel (Max: every positive channel), weighted by ``alpha_p``;
* class-specific instances (CSI): the window's mean of the student's map as
  an instance logit, target 1 for the owning class, 0 for the image's absent
  classes, ignored for its other positive classes (masked BCE).

Labels: 1 present, 0 absent, -1 unknown (unknown entries are left out of
every BCE mean and of the masks of ``L_re`` / CSI). Every mean is over the
GLOBAL batch (counts all-reduced), so 2 replicas give the 1-replica loss.
"""

import keras
import tensorflow as tf

from mll_tf.ops.keypoints import STRATEGIES, crop_windows, grid_windows, keypoints

__all__ = ["METHODS", "PuzzleCAMModel", "alpha_ramp", "ema_momentum", "masked_bce", "masked_l1_re",
           "merge", "tile"]

METHODS = ("cam", "puzzle_cam", "oass")


def tile(x):
    """Puzzle-CAM ``tile_features(x, 4)``: ``[B, H, W, D] -> [4B, H/2, W/2, D]``, piece-major.

    Raises:
        ValueError: H or W is odd (static shapes).
    """
    h, w = x.shape[1], x.shape[2]
    if (h is not None and h % 2) or (w is not None and w % 2):
        raise ValueError(f"tile: the image side must be even, got {h}x{w}")
    h2, w2 = tf.shape(x)[1] // 2, tf.shape(x)[2] // 2
    return tf.concat([x[:, :h2, :w2], x[:, :h2, w2:], x[:, h2:, :w2], x[:, h2:, w2:]], axis=0)


def merge(f, batch):
    """Puzzle-CAM ``merge_features(f, 4, B)``: ``[4B, h, w, D] -> [B, 2h, 2w, D]`` (inverse of :func:`tile`)."""
    tl, tr, bl, br = f[:batch], f[batch:2 * batch], f[2 * batch:3 * batch], f[3 * batch:]
    return tf.concat([tf.concat([tl, tr], axis=2), tf.concat([bl, br], axis=2)], axis=1)


def alpha_ramp(step, alpha, schedule, total_steps):
    """Puzzle-CAM's alpha: ``alpha`` if ``schedule == 0`` else ``min(alpha * t / (schedule * T), alpha)``.

    Source: ``train_classification_with_puzzle.py`` (``--alpha``,
    ``--alpha_schedule``); OASS passes ``--alpha_re 3 --alpha_schedule_re 0.05``.

    Args:
        step: 0-based iteration t (int or scalar tensor).
        alpha: float >= 0; schedule: fraction of training in [0, 1];
        total_steps: int T >= 1.

    Returns:
        float32 scalar tensor.
    """
    t = tf.cast(step, tf.float32)
    if schedule <= 0:
        return tf.constant(float(alpha), tf.float32)
    return tf.minimum(float(alpha) * t / (float(schedule) * float(max(total_steps, 1))), float(alpha))


def ema_momentum(step, decay, warmup=True):
    """Teacher momentum after optimizer step ``step`` (0-based): ``min(decay, (t+1)/(t+10))`` with warm-up.

    The mean-teacher warm-up (Tarvainen & Valpola 2017); OASS gives no value
    (our choice, docs/oass.md sec. 1). Without warm-up: ``decay``.
    """
    if not warmup:
        return tf.constant(float(decay), tf.float32)
    t = tf.cast(step, tf.float32)
    return tf.minimum(float(decay), (t + 1.0) / (t + 10.0))


def masked_bce(logits, targets, mask):
    """Sum of sigmoid BCE over the entries with ``mask`` 1 (float32 scalar; the caller normalises)."""
    logits = tf.cast(logits, tf.float32)
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(targets, tf.float32), logits=logits)
    return tf.reduce_sum(bce * tf.cast(mask, tf.float32))


def masked_l1_re(f, f_re, positives):
    """Sum of ``|F - F_re| * y[b, c]`` over ``[B, h, w, C]`` (Puzzle-CAM ``L1_Loss`` + ``masking``).

    Divide by ``B * h * w * C`` (all entries) for Puzzle-CAM's mean.
    """
    m = tf.cast(positives, tf.float32)[:, None, None, :]
    return tf.reduce_sum(tf.abs(tf.cast(f, tf.float32) - tf.cast(f_re, tf.float32)) * m)


def _conv_head(num_classes, name):
    return keras.layers.Conv2D(num_classes, 1, use_bias=False, kernel_initializer="he_normal", name=name,
                               dtype="float32")


@keras.saving.register_keras_serializable(package="mll_tf")
class PuzzleCAMModel(keras.Model):
    """Backbone + bias-free 1x1 CAM classifier, trained as a plain CAM classifier, Puzzle-CAM or OASS.

    Args:
        backbone: keras.Model, images float ``[B, H, W, 3]`` in [0, 255] ->
            ``[B, h, w, D]`` with ``H = stride * h``.
        num_classes: int C.
        method: ``"cam"`` (L_cls only), ``"puzzle_cam"`` or ``"oass"``.
        keypoints: OASS strategy, one of :data:`mll_tf.ops.keypoints.STRATEGIES`.
        topk: int, k of cTopk / cTopk-w.
        alpha_re, alpha_schedule_re: the L_re weight and its ramp fraction.
        total_steps: int T of the ramp.
        alpha_p: float, weight of the patch loss L_p.
        csi_weight: float, weight of the CSI loss (0: off).
        patch_cells: int, window side in feature cells (0: h // 2, the
            Puzzle-CAM piece size).
        patches_per_image: int, at most this many keypoints per image are used
            per step (a random subset of the valid ones; Max: 1).
        teacher: ``"auto"`` (EMA teacher, but the student for Max, as the
            release's script names say), ``"ema"`` or ``"student"``.
        ema_decay: float in [0, 1], teacher momentum m (``t <- m t + (1-m) s``).
        ema_warmup: bool, ``m = min(ema_decay, (t+1)/(t+10))``.
        ema_bn: ``"ema"`` (BN moving statistics averaged like the weights) or
            ``"copy"`` (the student's statistics copied).
        max_channels: Max's L_p channels: ``"positives"`` (every positive
            class) or ``"owner"`` (the keypoint's class).
        head_lr_multiplier: float, the classifier's gradient is multiplied by
            this (Puzzle-CAM's 10x lr group; exact for momentum-free SGD).
        param_groups: ``"none"`` or ``"puzzle_cam"``: Puzzle-CAM's four
            parameter groups (``tools/ai/optim_utils.py::PolyOptimizer`` with
            ``get_parameter_groups``): backbone weights and BN gamma at 1x
            with L2, backbone biases and BN beta at 2x without, the classifier
            at 10x with L2. Each group's rate multiplier k and coupled L2 are
            applied to the gradient, ``g <- k (g + l2 w)`` (PyTorch SGD's
            ``weight_decay``), which equals per-group learning rates for SGD
            without momentum (the reference's effective momentum is 1e-4).
            ``head_lr_multiplier`` must then stay 1.
        l2: float >= 0, the coupled L2 coefficient of ``param_groups``
            (Puzzle-CAM: 1e-4).
        seed: int, seed of the patch subset.

    Call:
        images -> float32 logits ``[B, C]``. :meth:`cams` gives ``(logits, F)``.
    """

    def __init__(self, backbone, num_classes, method="oass", keypoints="cmax", topk=3, alpha_re=3.0,
                 alpha_schedule_re=0.05, total_steps=1, alpha_p=0.5, csi_weight=1.0, patch_cells=0,
                 patches_per_image=2, teacher="auto", ema_decay=0.999, ema_warmup=True, ema_bn="ema",
                 max_channels="positives", head_lr_multiplier=1.0, param_groups="none", l2=0.0, seed=0,
                 **kwargs):
        super().__init__(**kwargs)
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if keypoints not in STRATEGIES:
            raise ValueError(f"--keypoints: {keypoints!r} is not one of {', '.join(STRATEGIES)}")
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.classifier = _conv_head(self.num_classes, "classifier")
        self.method, self.strategy, self.topk = method, keypoints, int(topk)
        self.alpha_re, self.alpha_schedule_re = float(alpha_re), float(alpha_schedule_re)
        self.total_steps = int(total_steps)
        self.alpha_p, self.csi_weight = float(alpha_p), float(csi_weight)
        self.patch_cells, self.patches_per_image = int(patch_cells), int(patches_per_image)
        self.teacher_mode, self.ema_decay, self.ema_warmup = teacher, float(ema_decay), bool(ema_warmup)
        self.ema_bn, self.max_channels = ema_bn, max_channels
        self.head_lr_multiplier, self.seed = float(head_lr_multiplier), int(seed)
        if param_groups not in ("none", "puzzle_cam"):
            raise ValueError(f"--param-groups: {param_groups!r} is not one of none, puzzle_cam")
        if param_groups == "puzzle_cam" and self.head_lr_multiplier != 1.0:
            raise ValueError("--head-lr-multiplier: leave it at 1 with --param-groups puzzle_cam (the "
                             "classifier's group is 10x there)")
        if l2 < 0:
            raise ValueError(f"--l2 {l2}: must be >= 0")
        self.param_groups, self.l2 = param_groups, float(l2)
        self.uses_ema = method == "oass" and (teacher == "ema" or (teacher == "auto" and keypoints != "max"))
        if self.uses_ema:
            self.teacher_backbone = keras.models.clone_model(backbone)
            self.teacher_backbone.trainable = False
            self.teacher_classifier = _conv_head(self.num_classes, "teacher_classifier")
            self.teacher_classifier.trainable = False
        self._trackers = {k: keras.metrics.Mean(name=k) for k in self.loss_terms()}

    def loss_terms(self):
        """The logged keys of the training step (``loss`` and its terms)."""
        keys = ["loss", "loss_cls"]
        if self.method != "cam":
            keys += ["loss_pcls", "loss_re", "alpha_re"]
        if self.method == "oass":
            keys += ["loss_p", "loss_csi", "patches_per_image"]
        return keys

    @property
    def metrics(self):
        return list(self._trackers.values())

    def build(self, input_shape):
        shp = self.backbone.compute_output_shape(tuple(input_shape))
        self.classifier.build(shp)
        if self.uses_ema:
            self.teacher_backbone.build(tuple(input_shape))
            self.teacher_classifier.build(shp)
        self.built = True

    # --- forward ---------------------------------------------------------------------------------
    def cams(self, images, training=False):
        """``(logits float32 [B, C], F float32 [B, h, w, C])`` of the student."""
        f = tf.cast(self.classifier(self.backbone(images, training=training)), tf.float32)
        return tf.reduce_mean(f, axis=[1, 2]), f

    def teacher_cams(self, images):
        """The EMA teacher's maps ``[B, h, w, C]`` (inference mode, no gradient)."""
        f = self.teacher_classifier(self.teacher_backbone(images, training=False))
        return tf.stop_gradient(tf.cast(f, tf.float32))

    def call(self, images, training=False):
        return self.cams(images, training=training)[0]

    # --- the teacher -------------------------------------------------------------------------------
    def _pairs(self):
        s = list(self.backbone.weights) + list(self.classifier.weights)
        t = list(self.teacher_backbone.weights) + list(self.teacher_classifier.weights)
        if len(s) != len(t) or any(tuple(a.shape) != tuple(b.shape) for a, b in zip(s, t)):
            raise ValueError("the teacher's weights do not line up with the student's")
        return list(zip(t, s))

    def copy_to_teacher(self):
        """Teacher <- student, every weight (T starts equal to S)."""
        for t, s in self._pairs():
            t.assign(s)

    def update_teacher(self, momentum):
        """``t <- m t + (1 - m) s`` over the trainable weights; BN statistics per ``ema_bn``."""
        m = tf.cast(momentum, tf.float32)
        for t, s in self._pairs():
            if s.trainable or self.ema_bn == "ema":
                t.assign(m * t + (1.0 - m) * tf.cast(s, t.dtype))
            else:
                t.assign(s)

    # --- the step ----------------------------------------------------------------------------------
    def compute_losses(self, x, y, training=True):
        """The loss terms of one replica's batch (sums over the replica divided by global counts).

        Args:
            x: images float ``[b, H, W, 3]``; y: labels ``[b, C]`` in {1, 0, -1}.

        Returns:
            (total loss float32 scalar, dict of terms).
        """
        ctx = tf.distribute.get_replica_context()
        gsum = lambda v: ctx.all_reduce(tf.distribute.ReduceOp.SUM, v)  # noqa: E731
        y = tf.cast(y, tf.float32)
        known, pos = tf.cast(y >= 0, tf.float32), tf.cast(tf.equal(y, 1.0), tf.float32)
        target = tf.maximum(y, 0.0)
        b = tf.shape(x)[0]
        logits, f = self.cams(x, training=training)
        n_known = tf.maximum(gsum(tf.reduce_sum(known)), 1.0)
        terms = {"loss_cls": masked_bce(logits, target, known) / n_known}
        total = terms["loss_cls"]
        if self.method == "cam":
            return total, terms
        _, f_tiles = self.cams(tile(x), training=training)
        f_re = merge(f_tiles, b)
        terms["loss_pcls"] = masked_bce(tf.reduce_mean(f_re, axis=[1, 2]), target, known) / n_known
        hw_c = tf.cast(tf.reduce_prod(tf.shape(f)[1:]), tf.float32)
        n_all = gsum(tf.cast(b, tf.float32)) * hw_c
        terms["loss_re"] = masked_l1_re(f, f_re, pos) / n_all
        alpha = alpha_ramp(self.optimizer.iterations if training else self.total_steps, self.alpha_re,
                           self.alpha_schedule_re, self.total_steps)
        terms["alpha_re"] = alpha
        total = total + terms["loss_pcls"] + alpha * terms["loss_re"]
        if self.method == "oass":
            lp, lcsi, npatch = self._oass_terms(x, y, f, training, gsum)
            terms.update(loss_p=lp, loss_csi=lcsi, patches_per_image=npatch)
            total = total + self.alpha_p * lp + self.csi_weight * lcsi
        return total, terms

    def _oass_terms(self, x, y, f, training, gsum):
        h, w = f.shape[1], f.shape[2]
        cells = self.patch_cells or h // 2
        stride = x.shape[1] // h
        c = self.num_classes
        b = tf.shape(x)[0]
        points, valid = keypoints(f, y, self.strategy, self.topk)                     # [b, C, 2], [b, C]
        per = 1 if self.strategy == "max" else min(self.patches_per_image, c)
        ctx = tf.distribute.get_replica_context()
        step = tf.cast(self.optimizer.iterations, tf.int32) if training else tf.constant(0)
        seed = tf.stack([tf.constant(self.seed, tf.int32) * 7919 + step,
                         tf.cast(ctx.replica_id_in_sync_group, tf.int32)])
        noise = tf.random.stateless_uniform(tf.shape(valid), seed=seed)
        _, sel = tf.math.top_k(tf.cast(valid, tf.float32) * 2.0 + noise, k=per)        # [b, per]
        pmask = tf.cast(tf.gather(valid, sel, batch_dims=1), tf.float32)                # [b, per]
        corners = grid_windows(tf.gather(points, sel, batch_dims=1), (h, w), cells)     # [b, per, 2]
        bidx = tf.repeat(tf.range(b), per)
        cls = tf.reshape(sel, [-1])
        corners = tf.reshape(corners, [-1, 2])
        pmask = tf.reshape(pmask, [-1])
        patches = crop_windows(x, bidx, corners, cells * stride, stride)                # [N, s, s, 3]
        f_win = crop_windows(f, bidx, corners, cells, 1)                                # [N, P, P, C]
        if self.uses_ema:
            f_t = self.teacher_cams(patches)
        else:
            f_t = self.cams(patches, training=training)[1]
        onehot = tf.one_hot(cls, c)
        y_n = tf.gather(y, bidx)
        chan = tf.cast(tf.equal(y_n, 1.0), tf.float32) if (
            self.strategy == "max" and self.max_channels == "positives") else onehot
        m = chan * pmask[:, None]                                                       # [N, C]
        diff = tf.reduce_sum(tf.abs(f_win - f_t) * m[:, None, None, :])
        lp = diff / tf.maximum(gsum(tf.reduce_sum(m)) * float(cells * cells), 1.0)
        inst = tf.reduce_mean(f_win, axis=[1, 2])                                       # [N, C]
        cmask = tf.minimum(onehot + tf.cast(tf.equal(y_n, 0.0), tf.float32), 1.0) * pmask[:, None]
        lcsi = masked_bce(inst, onehot, cmask) / tf.maximum(gsum(tf.reduce_sum(cmask)), 1.0)
        npatch = gsum(tf.reduce_sum(pmask)) / tf.maximum(gsum(tf.cast(b, tf.float32)), 1.0)
        return lp, lcsi, npatch

    def train_step(self, data):
        x, y = data
        ctx = tf.distribute.get_replica_context()
        variables = self.trainable_variables
        with tf.GradientTape() as tape:
            total, terms = self.compute_losses(x, y, training=True)
            reg = tf.add_n(self.losses) / ctx.num_replicas_in_sync if self.losses else 0.0
            scaled = self.optimizer.scale_loss(total + reg)
        grads = tape.gradient(scaled, variables)
        if self.param_groups == "puzzle_cam" or self.head_lr_multiplier != 1.0:
            grads = self._group_gradients(grads, variables)
        self.optimizer.apply(grads, variables)
        if self.uses_ema:
            self.update_teacher(ema_momentum(self.optimizer.iterations - 1, self.ema_decay, self.ema_warmup))
        return self._log(total, terms, ctx)

    def parameter_groups(self):
        """``[(variable, lr multiplier, l2 applies)]`` of Puzzle-CAM's groups over the trainable variables.

        Groups (``abc_modules.get_parameter_groups``): 0 backbone weights (kernels
        and BN gamma) 1x with L2; 1 backbone biases (BN beta, conv biases) 2x
        without; 2 classifier weights 10x with L2; 3 classifier biases 20x
        without (none: the classifier is bias-free). With ``param_groups="none"``
        the classifier's multiplier is ``head_lr_multiplier``, every other 1,
        and no L2.
        """
        head = {id(v) for v in self.classifier.trainable_variables}
        out = []
        for v in self.trainable_variables:
            if self.param_groups != "puzzle_cam":
                out.append((v, self.head_lr_multiplier if id(v) in head else 1.0, False))
                continue
            name = v.path.split("/")[-1]
            bias = name in ("bias", "beta") or name.endswith(("_bias", "_beta"))
            k = (20.0 if bias else 10.0) if id(v) in head else (2.0 if bias else 1.0)
            out.append((v, k, not bias))
        return out

    def _group_gradients(self, grads, variables):
        """``g <- k (g + l2 w)`` per variable (see ``param_groups``); replicas add their gradients, so
        each adds ``l2 w / replicas``."""
        groups = {id(v): (k, decay) for v, k, decay in self.parameter_groups()}
        n = tf.distribute.get_replica_context().num_replicas_in_sync
        out = []
        for g, v in zip(grads, variables):
            k, decay = groups.get(id(v), (1.0, False))
            if g is not None:
                if decay and self.l2 > 0:
                    g = g + tf.cast(self.l2 / n, g.dtype) * tf.cast(v.value, g.dtype)
                g = g * k if k != 1.0 else g
            out.append(g)
        return out

    def _log(self, total, terms, ctx):
        out = {}
        for k, tr in self._trackers.items():
            v = total if k == "loss" else terms.get(k)
            if v is None:
                continue
            if k not in ("alpha_re", "patches_per_image"):   # replica shares of global means: sum them
                v = ctx.all_reduce(tf.distribute.ReduceOp.SUM, v)
            tr.update_state(v)
            out[k] = tr.result()
        return out

    def test_step(self, data):
        x, y = data
        ctx = tf.distribute.get_replica_context()
        y = tf.cast(y, tf.float32)
        known = tf.cast(y >= 0, tf.float32)
        logits, _ = self.cams(x, training=False)
        n = tf.maximum(ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(known)), 1.0)
        loss = masked_bce(logits, tf.maximum(y, 0.0), known) / n
        self._trackers["loss"].update_state(ctx.all_reduce(tf.distribute.ReduceOp.SUM, loss))
        return {"loss": self._trackers["loss"].result()}

    # --- saving ------------------------------------------------------------------------------------
    def get_config(self):
        return {**super().get_config(), "backbone": keras.saving.serialize_keras_object(self.backbone),
                "num_classes": self.num_classes, "method": self.method, "keypoints": self.strategy,
                "topk": self.topk, "alpha_re": self.alpha_re, "alpha_schedule_re": self.alpha_schedule_re,
                "total_steps": self.total_steps, "alpha_p": self.alpha_p, "csi_weight": self.csi_weight,
                "patch_cells": self.patch_cells, "patches_per_image": self.patches_per_image,
                "teacher": self.teacher_mode, "ema_decay": self.ema_decay, "ema_warmup": self.ema_warmup,
                "ema_bn": self.ema_bn, "max_channels": self.max_channels,
                "head_lr_multiplier": self.head_lr_multiplier, "param_groups": self.param_groups,
                "l2": self.l2, "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)

    def get_compile_config(self):
        return None

    def compile_from_config(self, config):
        pass

