"""deep-object-reid's released multi-label ``.pth.tar`` checkpoints, mapped by name onto our models.

Prokofiev & Sovrasov 2022 ("Combining Metric Learning and Attention Heads
For Accurate and Efficient Multilabel Image Classification"; PyTorch code:
tosfaq/deep-object-reid, branch ``multilabel``) train timm backbones
wrapped by ``torchreid/models/timm_wrapper.py::TimmModelsWrapper`` with one
of three heads. The ones we host, on ``efficientnetv2_s_21k`` / ``_1k``
(timm ``tf_efficientnetv2_s_in21k`` / ``in21ft1k``) and
``efficientnetv2_l_*`` (``tf_efficientnetv2_l_*``):

=====================  ================================================  =============================
their model / loss     state-dict keys (after an optional ``module.``)   our ``--method`` / ``--loss``
=====================  ================================================  =============================
``efficientnetv2_*``   ``model.<timm>``, ``model.classifier.weight``     ``linear_head``, ``asl``
  + ``asl``            [C, D] + ``.bias`` [C] (``nn.Linear``)
``efficientnetv2_*``   ``model.classifier.weight`` [D, C], no bias       ``linear_head``, ``aam``
  + ``am_binary``      (``AngleSimpleLinear``, ``torchreid/losses/
                       am_softmax.py``), ``model.act2.weight`` [1]
``mld_*``              ``backbone.model.<timm>``, ``decoder.*``          ``ml_decoder``, ``asl`` / ``aam``
                       (``torchreid/models/ml_decoder.py``)              (``aam`` iff ``act2`` present)
``gcn_*``              ``backbone.model.<timm>``, ``gc1.weight``,        ``ml_gcn``, ``asl`` / ``aam``
                       ``gc2.weight``, ``inp``, ``A``, ``head.*``
                       (``torchreid/models/gcn.py::Image_GCNN``)
=====================  ================================================  =============================

``<timm>`` is timm's ``EfficientNet`` (``timm/models/efficientnet.py``,
``_efficientnet_blocks.py``, ``_efficientnet_builder.py``): ``conv_stem``,
``bn1``, ``blocks.S.B.*``, ``conv_head``, ``bn2``. Its block types map onto
the blocks of ``keras.applications.EfficientNetV2S/L`` (a port of the same
automl EfficientNetV2; Keras block ``block{S+1}{chr(97 + B)}_``):

==================================  ==========================  =========================================
timm block (arch_def)               timm keys                   Keras layers
==================================  ==========================  =========================================
``cn`` ConvBnAct (stage 0)          ``conv``, ``bn1``            ``project_conv``, ``project_bn``
``er`` EdgeResidual (fused MBConv)  ``conv_exp``, ``bn1``,       ``expand_conv``, ``expand_bn``,
                                    ``conv_pwl``, ``bn2``        ``project_conv``, ``project_bn``
``ir`` InvertedResidual (MBConv)    ``conv_pw``, ``bn1``,        ``expand_conv``, ``expand_bn``,
                                    ``conv_dw``, ``bn2``,        ``dwconv2``, ``bn``,
                                    ``se.conv_reduce``,          ``se_reduce``, ``se_expand``,
                                    ``se.conv_expand``,          ``project_conv``, ``project_bn``
                                    ``conv_pwl``, ``bn3``
stem / head                         ``conv_stem``, ``bn1``,      ``stem_conv``, ``stem_bn``,
                                    ``conv_head``, ``bn2``       ``top_conv``, ``top_bn``
==================================  ==========================  =========================================

Both use TensorFlow "same" padding (timm's ``tf_`` variants), BatchNorm
epsilon 1e-3, SiLU, and squeeze-excitation reduced from the block's input
channels x 0.25. Layouts: conv ``[O, I, kh, kw]`` -> ``[kh, kw, I, O]``;
depthwise ``[C, 1, kh, kw]`` -> ``[kh, kw, C, 1]``; ``nn.Linear`` ``[out,
in]`` -> Dense ``[in, out]``; ``AngleSimpleLinear`` ``[in, out]`` as stored;
BatchNorm ``weight, bias, running_mean, running_var`` -> ``gamma, beta,
moving_mean, moving_variance``; ``nn.MultiheadAttention``'s
``in_proj_weight [3E, E]`` (q, k, v rows) -> the query / key / value
kernels ``[E, heads, E / heads]``, ``out_proj.weight [E, E]`` -> the output
kernel ``[heads, E / heads, E]``.

Skipped by rule: ``num_batches_tracked``; ``model.act2.weight``, the
``nn.PReLU`` that ``TimmModelsWrapper`` adds for the ``am_*`` losses: timm
>= 0.6 (deep-object-reid's ``requirements.txt``: ``timm>=0.6.5``) applies
SiLU inside ``bn2`` (``BatchNormAct2d``) and never calls ``act2``, so it
keeps its initial 0.25 (any other value means it was used: refused); for
``gcn_*``, ``backbone.model.classifier.*`` (the wrapper's classifier, which
``Image_GCNN.forward`` does not call). Every other key is mapped or refused.

Preprocessing: deep-object-reid normalises with mean = std = 0.5 on [0, 1]
(``configs/*.yml`` ``norm_mean/norm_std``), i.e. ``x / 127.5 - 1`` on
[0, 255]; the imported backbone's ``Rescaling`` layer is set to
``scale=1/127.5, offset=-1`` (saved in the ``.keras`` file) instead of
Keras' ``1/128, -1``. Its test transform stretches the image to 448 x 448
(``torchreid/data/transforms.py::build_test_transform``, cv2
``INTER_LINEAR``, no crop); our loader resizes the shorter side and crops
the centre, which is the same only for square images.
"""

import numpy as np

from mll_tf.export.import_weights import WeightImportError

__all__ = ["DOR_BACKBONES", "DorCheckpoint", "adjacency_from_A", "build_dor_model", "check_against_run",
           "describe_dor_checkpoint", "import_dor_run",
           "import_dor_weights", "read_dor_checkpoint", "set_dor_preprocessing"]

#: our backbone -> (Keras application layer name, timm stages, deep-object-reid model names)
DOR_BACKBONES = {
    "efficientnetv2_s": ("efficientnetv2-s", 6, "efficientnetv2_s_21k / efficientnetv2_s_1k "
                         "(timm tf_efficientnetv2_s_in21k / tf_efficientnetv2_s_in21ft1k)"),
    "efficientnetv2_l": ("efficientnetv2-l", 7, "efficientnetv2_l_21k / efficientnetv2_l_1k "
                         "(timm tf_efficientnetv2_l_in21k / tf_efficientnetv2_l_in21ft1k)"),
}
#: nn.PReLU's initial slope (act2 is never called by timm >= 0.6, so it stays there)
PRELU_INIT = 0.25
#: deep-object-reid's normalisation (x / 255 - 0.5) / 0.5 = x / 127.5 - 1
DOR_SCALE, DOR_OFFSET = 1.0 / 127.5, -1.0
DOR_INPUT_SIZE = 448
_METHOD_OF = {"linear": "linear_head", "mld": "ml_decoder", "gcn": "ml_gcn"}


class DorCheckpoint:
    """A read deep-object-reid checkpoint.

    Attributes:
        state_dict: ``{key: float32/int64 ndarray}``, the ``module.`` prefix removed.
        metadata: the plain top-level entries (``epoch``, ``num_classes``, ``classes_map``, ...).
        skipped_entries: top-level training-state entries not loaded (``optimizer``, ``scheduler``).
        prefix_removed: bool, the keys had a ``module.`` prefix (``nn.DataParallel``).
    """

    def __init__(self, state_dict, metadata, skipped_entries, prefix_removed):
        self.state_dict = state_dict
        self.metadata = metadata
        self.skipped_entries = skipped_entries
        self.prefix_removed = prefix_removed


def read_dor_checkpoint(path):
    """Read a deep-object-reid ``.pth.tar`` (or a bare state dict) without torch.

    Args:
        path: the file (``torch.save`` legacy or zip format).

    Returns:
        :class:`DorCheckpoint`.

    Raises:
        WeightImportError: the file is not a readable PyTorch checkpoint, or
            its pickle names a global outside the allowed / tolerated sets
            (``mll_tf.backbones.torch_state_dict.load_torch_checkpoint``;
            the message names the global); keys with and without ``module.``.
        FileNotFoundError: no such file.
    """
    import os

    from mll_tf.backbones.torch_state_dict import UnsafePickleError, load_torch_checkpoint

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--checkpoint: no file {path}")
    try:
        sd, meta, skipped = load_torch_checkpoint(path)
    except (UnsafePickleError, ValueError) as e:
        raise WeightImportError(str(e)) from None
    keys = list(sd)
    prefixed = [k for k in keys if k.startswith("module.")]
    if prefixed and len(prefixed) != len(keys):
        raise WeightImportError(f"'{path}': some keys have the 'module.' prefix and some do not (e.g. "
                                f"{next(k for k in keys if not k.startswith('module.'))})")
    if prefixed:
        sd = type(sd)((k[len("module."):], v) for k, v in sd.items())
    return DorCheckpoint(sd, meta, skipped, bool(prefixed))


def _shape(sd, key):
    return tuple(np.shape(sd[key])) if key in sd else None


def describe_dor_checkpoint(sd):
    """What a deep-object-reid state dict holds, from its key names and shapes.

    Args:
        sd: ``{key: ndarray}`` without the ``module.`` prefix.

    Returns:
        dict with ``method`` (``linear_head`` / ``ml_decoder`` / ``ml_gcn``),
        ``cosine`` (bool: ``am_binary`` -> our ``--loss aam``), ``num_classes``
        C, ``feature_dim`` D (1280), ``stages`` (timm stages: 6 for V2-S, 7 for
        V2-L), ``backbone_prefix`` (``model.`` or ``backbone.model.``) and per
        head ``num_queries``, ``embed_dim``, ``ffn_dim`` (ML-Decoder) or
        ``word_dim``, ``hidden_dim`` (GCN).

    Raises:
        WeightImportError: no timm EfficientNet backbone or no head that we
            know (names the keys looked for), or head tensors of the wrong rank.
    """
    if any(k.startswith("decoder.") for k in sd):
        kind, prefix = "mld", "backbone.model."
    elif "gc1.weight" in sd:
        kind, prefix = "gcn", "backbone.model."
    else:
        kind, prefix = "linear", "model."
    stem = prefix + "conv_stem.weight"
    head_conv = prefix + "conv_head.weight"
    if stem not in sd or head_conv not in sd:
        raise WeightImportError(
            f"not a deep-object-reid timm EfficientNet checkpoint: missing {stem if stem not in sd else head_conv} "
            f"(keys start with: {', '.join(sorted({k.split('.')[0] for k in sd})[:8])})")
    stages = 1 + max(int(k[len(prefix) + 7:].split(".")[0]) for k in sd if k.startswith(prefix + "blocks."))
    d = int(sd[head_conv].shape[0])
    act2 = prefix + "act2.weight" in sd
    out = {"method": _METHOD_OF[kind], "feature_dim": d, "stages": stages, "backbone_prefix": prefix}

    def need(key, rank):
        s = _shape(sd, key)
        if s is None:
            raise WeightImportError(f"deep-object-reid {kind} checkpoint without {key}")
        if len(s) != rank:
            raise WeightImportError(f"{key} has shape {list(s)}, expected rank {rank}")
        return s

    if kind == "linear":
        w = need("model.classifier.weight", 2)
        has_bias = "model.classifier.bias" in sd
        out["cosine"] = not has_bias
        out["num_classes"] = int(w[0] if has_bias else w[1])
    elif kind == "gcn":
        w = need("head.weight", 2)
        has_bias = "head.bias" in sd
        out["cosine"] = not has_bias
        out["num_classes"] = int(w[0] if has_bias else w[1])
        out["word_dim"] = int(need("inp", 2)[1])
        out["hidden_dim"] = int(need("gc1.weight", 2)[1])
    else:
        out["cosine"] = act2
        q, e = need("decoder.query_embed.weight", 2)
        out["num_classes"] = int(need("decoder.duplicate_pooling_bias", 1)[0])
        out["num_queries"], out["embed_dim"] = int(q), int(e)
        out["ffn_dim"] = int(need("decoder.layers.0.linear1.weight", 2)[0])
    return out


def adjacency_from_A(a):
    """``Image_GCNN.gen_adj``: ``(A D)^T D`` with ``D = diag(rowsum(A)^-1/2)``; float32 ``[C, C]``.

    Args:
        a: float ``[C, C]``, the checkpoint's ``A`` (``gen_A``'s binarised,
            re-weighted co-occurrence + I).

    Raises:
        WeightImportError: a row sum <= 0 (the power -1/2 is undefined).
    """
    a = np.asarray(a, np.float64)
    rs = a.sum(1)
    if not np.all(rs > 0):
        raise WeightImportError(f"A: row {int(np.argmin(rs))} sums to {rs.min():g}; gen_adj needs positive "
                                "row sums")
    d = np.diag(rs ** -0.5)
    return ((a @ d).T @ d).astype(np.float32)


def set_dor_preprocessing(backbone_model, app_name):
    """Set the Keras EfficientNetV2's ``Rescaling`` to deep-object-reid's ``x / 127.5 - 1``.

    Args:
        backbone_model: our backbone keras.Model (holds the application ``app_name``).
        app_name: ``"efficientnetv2-s"`` / ``"efficientnetv2-l"``.

    Returns:
        dict describing the change (``{"rescaling": layer name, "scale": 1/127.5, "offset": -1.0,
        "keras_default": "1/128, -1"}``).

    Raises:
        WeightImportError: not exactly one Rescaling layer.
    """
    import keras

    app = backbone_model.get_layer(app_name)
    resc = [layer for layer in app.layers if isinstance(layer, keras.layers.Rescaling)]
    if len(resc) != 1:
        raise WeightImportError(f"{app_name}: expected one Rescaling layer, found {len(resc)}")
    resc[0].scale, resc[0].offset = DOR_SCALE, DOR_OFFSET
    return {"rescaling": f"{app_name}/{resc[0].name}", "scale": DOR_SCALE, "offset": DOR_OFFSET,
            "keras_default": "scale 1/128, offset -1", "original": "(x / 255 - 0.5) / 0.5 = x / 127.5 - 1"}


# --- the plan: (variable, checkpoint key, array) triples, checked before anything is assigned -------------

class _Plan:
    def __init__(self, sd):
        self.sd = sd
        self.used = set()
        self.items = []
        self.missing = []
        self.bad = []

    def take(self, var, key, convert=None, ours=None):
        """Queue ``var <- convert(sd[key])``; record a missing key or a shape mismatch."""
        self.used.add(key)
        if key not in self.sd:
            self.missing.append(key)
            return
        raw = np.asarray(self.sd[key])
        value = np.ascontiguousarray(convert(raw) if convert is not None else raw, dtype=np.float32)
        if tuple(value.shape) != tuple(var.shape):
            self.bad.append(f"{key} {list(raw.shape)} -> {ours or var.path} {list(var.shape)}")
            return
        self.items.append((var, key, value, ours or var.path))

    def assign(self):
        for var, _, value, _ in self.items:
            var.assign(value)


def _conv(w):
    return w.transpose(2, 3, 1, 0)


def _dwconv(w):
    return w.transpose(2, 3, 0, 1)


def _linear(w):
    return w.T


def _bn(plan, layer, prefix):
    for var, n in zip((layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance),
                      ("weight", "bias", "running_mean", "running_var")):
        plan.take(var, f"{prefix}.{n}", ours=f"{layer.name}.{var.name}")


def _keras_blocks(app):
    """``{(stage, index): {suffix: layer}}`` of a Keras EfficientNetV2 (``block{S+1}{letter}_{suffix}``)."""
    import re

    blocks = {}
    for layer in app.layers:
        m = re.fullmatch(r"block(\d+)([a-z])_(.+)", layer.name)
        if m:
            blocks.setdefault((int(m.group(1)) - 1, ord(m.group(2)) - 97), {})[m.group(3)] = layer
    return blocks


#: Keras block layer suffix -> timm module, per timm block type
_BLOCK_NAMES = {
    "cn": {"project_conv": "conv", "project_bn": "bn1"},
    "er": {"expand_conv": "conv_exp", "expand_bn": "bn1", "project_conv": "conv_pwl", "project_bn": "bn2"},
    "ir": {"expand_conv": "conv_pw", "expand_bn": "bn1", "dwconv2": "conv_dw", "bn": "bn2",
           "se_reduce": "se.conv_reduce", "se_expand": "se.conv_expand", "project_conv": "conv_pwl",
           "project_bn": "bn3"},
}


def _backbone_plan(plan, app, prefix):
    """Queue every weight of a Keras EfficientNetV2 ``app`` from timm keys under ``prefix``."""
    import keras

    def layer_plan(layer, key):
        if isinstance(layer, keras.layers.BatchNormalization):
            _bn(plan, layer, key)
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            plan.take(layer.kernel, f"{key}.weight", _dwconv, f"{layer.name}.kernel")
        elif isinstance(layer, keras.layers.Conv2D):
            plan.take(layer.kernel, f"{key}.weight", _conv, f"{layer.name}.kernel")
            if layer.use_bias:
                plan.take(layer.bias, f"{key}.bias", None, f"{layer.name}.bias")
        else:  # pragma: no cover - the table names only conv and BN layers
            raise WeightImportError(f"{layer.name}: unexpected layer type {type(layer).__name__}")

    for ours, theirs in (("stem_conv", "conv_stem"), ("stem_bn", "bn1"), ("top_conv", "conv_head"),
                         ("top_bn", "bn2")):
        layer_plan(app.get_layer(ours), prefix + theirs)
    for (s, b), layers in sorted(_keras_blocks(app).items()):
        kind = "ir" if "dwconv2" in layers else "er" if "expand_conv" in layers else "cn"
        for suffix, layer in layers.items():
            if suffix in _BLOCK_NAMES[kind]:
                layer_plan(layer, f"{prefix}blocks.{s}.{b}.{_BLOCK_NAMES[kind][suffix]}")
            elif layer.weights:  # pragma: no cover - every weighted layer is in the table
                raise WeightImportError(f"{layer.name}: no timm counterpart")


def _classifier_plan(plan, layer, prefix, cosine):
    """nn.Linear (Dense: kernel = W^T, bias) or AngleSimpleLinear (CosineClassifier: kernel = W)."""
    if cosine:
        plan.take(layer.kernel, f"{prefix}.weight", None, f"{layer.name}.kernel (AngleSimpleLinear [in, out])")
    else:
        plan.take(layer.kernel, f"{prefix}.weight", _linear, f"{layer.name}.kernel")
        plan.take(layer.bias, f"{prefix}.bias", None, f"{layer.name}.bias")


def _mha_plan(plan, mha, prefix, embed_dim):
    """nn.MultiheadAttention (packed q/k/v) -> keras.layers.MultiHeadAttention."""
    sd = plan.sd
    w, b = prefix + "in_proj_weight", prefix + "in_proj_bias"
    heads, dk = mha.num_heads, mha.key_dim
    for i, dense in enumerate((mha.query_dense, mha.key_dense, mha.value_dense)):
        rows = slice(i * embed_dim, (i + 1) * embed_dim)
        if w in sd and sd[w].shape == (3 * embed_dim, embed_dim):
            plan.take(dense.kernel, w, lambda a, r=rows: a[r].T.reshape(embed_dim, heads, dk),
                      f"attention.{dense.name}.kernel")
        else:
            plan.take(dense.kernel, w, lambda a: a, f"attention.{dense.name}.kernel")   # records the problem
        if b in sd and sd[b].shape == (3 * embed_dim,):
            plan.take(dense.bias, b, lambda a, r=rows: a[r].reshape(heads, dk), f"attention.{dense.name}.bias")
        else:
            plan.take(dense.bias, b, lambda a: a, f"attention.{dense.name}.bias")
    out = mha.output_dense
    ow = prefix + "out_proj.weight"
    if ow in sd and sd[ow].shape == (embed_dim, embed_dim):
        plan.take(out.kernel, ow, lambda a: a.T.reshape(heads, dk, embed_dim), "attention.output.kernel")
    else:
        plan.take(out.kernel, ow, lambda a: a, "attention.output.kernel")
    plan.take(out.bias, prefix + "out_proj.bias", None, "attention.output.bias")


def _mld_plan(plan, head):
    p = "decoder."
    plan.take(head.token_proj.kernel, p + "embed_standart.weight", _linear, "token_proj.kernel")
    plan.take(head.token_proj.bias, p + "embed_standart.bias", None, "token_proj.bias")
    plan.take(head.queries, p + "query_embed.weight", None, "queries")
    plan.take(head.group_kernel, p + "duplicate_pooling", None, "group_kernel")
    plan.take(head.group_bias, p + "duplicate_pooling_bias", None, "group_bias")
    lp = p + "layers.0."
    _mha_plan(plan, head.attention, lp + "multihead_attn.", head.embed_dim)
    for ours, theirs in (("ffn1", "linear1"), ("ffn2", "linear2")):
        layer = getattr(head, ours)
        plan.take(layer.kernel, f"{lp}{theirs}.weight", _linear, f"{ours}.kernel")
        plan.take(layer.bias, f"{lp}{theirs}.bias", None, f"{ours}.bias")
    for n in ("norm1", "norm2", "norm3"):
        norm = getattr(head, n)
        plan.take(norm.gamma, f"{lp}{n}.weight", None, f"{n}.gamma")
        plan.take(norm.beta, f"{lp}{n}.bias", None, f"{n}.beta")


def _gcn_plan(plan, head):
    plan.take(head.gcn1, "gc1.weight", None, "gcn1")
    plan.take(head.gcn2, "gc2.weight", None, "gcn2")
    plan.take(head.label_embeddings, "inp", None, "label_embeddings")
    plan.take(head.adjacency, "A", adjacency_from_A, "adjacency (gen_adj(A))")
    _classifier_plan(plan, head.classifier, "head", head.cosine)


def import_dor_weights(model, sd, method, backbone, cosine):
    """Assign a deep-object-reid state dict to our finetune model (all or nothing).

    Args:
        model: a built ``mll_tf.tasks.ml_heads.TrainableMLHead`` with a
            backbone (``--finetune``): ``model.backbone`` holds the Keras
            application ``efficientnetv2-s`` / ``-l``; ``model.head`` is a
            ``PooledHead`` / ``MLDecoderHead`` / ``MLGCNHead``.
        sd: ``{key: ndarray}`` without ``module.`` (:func:`read_dor_checkpoint`).
        method: ``"linear_head"``, ``"ml_decoder"`` or ``"ml_gcn"``.
        backbone: ``"efficientnetv2_s"`` or ``"efficientnetv2_l"``.
        cosine: bool, the head is the ``am_binary`` (AngleSimpleLinear / GroupASL) variant.

    Returns:
        dict ``{"imported": {checkpoint key: our weight}, "skipped": [keys]}``.

    Raises:
        WeightImportError: missing, unknown (not mapped, not skipped by rule)
            or mis-shaped tensors, all named (first 20 of each); a used
            ``act2`` PReLU; nothing is assigned then.
    """
    app_name = DOR_BACKBONES[backbone][0]
    prefix = "model." if method == "linear_head" else "backbone.model."
    plan = _Plan(sd)
    _backbone_plan(plan, model.backbone.get_layer(app_name), prefix)
    if method == "linear_head":
        _classifier_plan(plan, model.head.classifier, "model.classifier", cosine)
    elif method == "ml_decoder":
        _mld_plan(plan, model.head)
    else:
        _gcn_plan(plan, model.head)
    skipped, problems = [], []
    for key in sd:
        if key in plan.used:
            continue
        if key.endswith("num_batches_tracked"):
            skipped.append(key)
        elif key == prefix + "act2.weight":
            a = np.asarray(sd[key], np.float64).ravel()
            if a.size == 1 and abs(a[0] - PRELU_INIT) < 1e-7:
                skipped.append(key)
            else:
                problems.append(f"{key} = {a.tolist()[:4]} is not nn.PReLU's initial 0.25: the model applied "
                                "this PReLU after bn2 (timm < 0.6), which our EfficientNetV2 (SiLU) cannot")
        elif method == "ml_gcn" and key.startswith("backbone.model.classifier."):
            skipped.append(key)   # TimmModelsWrapper's own classifier, unused by Image_GCNN.forward
        else:
            plan.bad.append(f"unknown tensor {key} {list(np.shape(sd[key]))}")
    unknown = [b for b in plan.bad if b.startswith("unknown")]
    shaped = [b for b in plan.bad if not b.startswith("unknown")]
    if plan.missing or plan.bad or problems:
        parts = []
        if plan.missing:
            parts.append(f"missing: {', '.join(plan.missing[:20])}{' ...' if len(plan.missing) > 20 else ''} "
                         f"({len(plan.missing)})")
        if unknown:
            parts.append(f"unknown: {', '.join(u[len('unknown tensor '):] for u in unknown[:20])}"
                         f"{' ...' if len(unknown) > 20 else ''} ({len(unknown)})")
        if shaped:
            parts.append(f"mis-shaped (checkpoint -> model): {'; '.join(shaped[:20])}"
                         f"{' ...' if len(shaped) > 20 else ''}")
        parts.extend(problems)
        raise WeightImportError(f"the checkpoint does not fit --method {method} --backbone {backbone}: "
                                + "; ".join(parts))
    plan.assign()
    return {"imported": {key: ours for _, key, _, ours in plan.items}, "skipped": sorted(skipped)}


def check_against_run(desc, task, ckpt):
    """Problems (list of str, empty if none) between the checkpoint and the run's flags, named.

    Checks the method, the backbone (timm stages), the loss (cosine head),
    the number of classes (and ``classes_map`` order / ``num_classes`` when
    the checkpoint has them), the ML-Decoder sizes and the GCN width.
    """
    c = task.config
    bad = []
    key_of = {"linear_head": "model.classifier.weight", "ml_decoder": "decoder.*", "ml_gcn": "gc1.weight, inp, A"}
    if desc["method"] != task.name:
        bad.append(f"the checkpoint is a deep-object-reid {desc['method']} model ({key_of[desc['method']]}): "
                   f"import it with --method {desc['method']}, not {task.name}")
        return bad
    want = DOR_BACKBONES[task.run.backbone][1]
    if desc["stages"] != want:
        other = next((n for n, v in DOR_BACKBONES.items() if v[1] == desc["stages"]), None)
        bad.append(f"{desc['backbone_prefix']}blocks.* has {desc['stages']} stages, --backbone {task.run.backbone} "
                   f"has {want}" + (f": pass --backbone {other}" if other else ""))
    if desc["cosine"] != task.cosine:
        why = {"linear_head": "model.classifier.weight without a bias is AngleSimpleLinear",
               "ml_gcn": "head.weight without a bias is AngleSimpleLinear",
               "ml_decoder": f"{desc['backbone_prefix']}act2.weight (the am_* losses' PReLU) is present"}[task.name]
        if desc["cosine"]:
            bad.append(f"{why} (loss am_binary): pass --loss aam and --aam-scale = the original's loss.softmax.s")
        else:
            bad.append(f"the checkpoint's head is the plain (asl) variant ({why.split(' is ')[0]} is absent"
                       " / has a bias): pass --loss asl" if task.name != "linear_head" else
                       "model.classifier has a bias (nn.Linear, loss asl): pass --loss asl")
    n = len(task.label_names)
    head_key = {"linear_head": "model.classifier.weight", "ml_decoder": "decoder.duplicate_pooling_bias",
                "ml_gcn": "head.weight"}[task.name]
    if desc["num_classes"] != n:
        bad.append(f"{head_key} scores {desc['num_classes']} classes, the run's dataset has {n}")
    meta_c = ckpt.metadata.get("num_classes")
    if isinstance(meta_c, int) and meta_c != desc["num_classes"]:
        bad.append(f"the checkpoint's num_classes entry is {meta_c}, its head has {desc['num_classes']}")
    cmap = ckpt.metadata.get("classes_map")
    if isinstance(cmap, dict) and cmap:
        try:
            names = [str(k) for k, _ in sorted(cmap.items(), key=lambda kv: int(kv[1]))]
        except (TypeError, ValueError):
            names = None
        if names is not None and names != list(task.label_names):
            diff = next((i for i, (a, b) in enumerate(zip(names, task.label_names)) if a != b), min(len(names), n))
            got = names[diff] if diff < len(names) else "(none)"
            exp = task.label_names[diff] if diff < n else "(none)"
            bad.append(f"classes_map: class {diff} of the checkpoint is {got!r}, of the run's dataset {exp!r}")
    if task.name == "ml_decoder":
        from mll_tf.models.ml_decoder import default_num_queries

        q = default_num_queries(n, c.num_queries)
        if desc["num_queries"] != q:
            bad.append(f"decoder.query_embed.weight has {desc['num_queries']} queries, --num-queries gives {q}")
        if desc["embed_dim"] != c.decoder_dim:
            bad.append(f"decoder.query_embed.weight has width {desc['embed_dim']}, --decoder-dim is {c.decoder_dim}")
        if desc["ffn_dim"] != c.decoder_ffn:
            bad.append(f"decoder.layers.0.linear1.weight has {desc['ffn_dim']} units, --decoder-ffn is "
                       f"{c.decoder_ffn}")
        if c.decoder_heads != 8:
            bad.append(f"--decoder-heads {c.decoder_heads}: the original's nn.MultiheadAttention has 8 heads "
                       "(TransformerDecoderLayerOptimal(nhead=8))")
    if task.name == "ml_gcn":
        hidden = c.gcn_hidden or desc["feature_dim"]
        if desc["hidden_dim"] != hidden:
            bad.append(f"gc1.weight has {desc['hidden_dim']} hidden units, --gcn-hidden gives {hidden}")
    return bad


def build_dor_model(task, desc, sd):
    """The run's model for the checkpoint, with random weights (the backbone's ``weights=None``).

    ``linear_head`` / ``ml_decoder``: ``task.build_model()``; ``ml_gcn``: a
    :class:`~mll_tf.models.ml_gcn.MLGCNHead` with the checkpoint's ``inp``
    and ``gen_adj(A)`` (no word vectors or training labels needed).
    """
    import tensorflow as tf

    task.config.backbone_weights = "none"
    if task.name != "ml_gcn":
        return task.build_model()
    from mll_tf.backbones import build_backbone
    from mll_tf.models.ml_gcn import MLGCNHead
    from mll_tf.tasks.ml_heads import TrainableMLHead

    bb = build_backbone(task.run.backbone, weights=None, input_size=task.run.input_size)
    d = int(bb.feature_shape[-1])
    head = MLGCNHead(np.asarray(sd["inp"], np.float32), adjacency_from_A(sd["A"]),
                     hidden_dim=None if desc["hidden_dim"] == d else desc["hidden_dim"], cosine=desc["cosine"],
                     dropout=task.config.dropout, name="head")
    size = task.run.input_size
    model = TrainableMLHead(head, backbone=bb.model, scale=task.scale(), input_shape=[size, size, 3])
    model(tf.zeros([1, size, size, 3]), training=False)
    return model


def import_dor_run(task, path, run_dir):
    """Read, check, build and assign: the body of ``import_weights.py --source dor_pth``.

    Args:
        task: the resolved, checked ``--finetune`` task (``linear_head``,
            ``ml_decoder`` or ``ml_gcn``) on an EfficientNetV2 backbone.
        path: the ``.pth.tar``.
        run_dir: the run directory (``task.prepare`` reads the dataset; nothing is written).

    Returns:
        ``(model, report, extra)``: the model with the imported weights and
        deep-object-reid's preprocessing; ``report`` as
        :func:`import_dor_weights`; ``extra`` the entries of
        ``imported_weights.json`` (``original_model``, ``loss``,
        ``preprocessing``, ``not_reproduced``, ``checkpoint_entries``, ...) and
        ``files`` (arrays the caller saves in the run directory: the GCN's
        label embeddings).

    Raises:
        WeightImportError: an unreadable or unsafe file, or any mismatch with
            the run's flags or the model (named); nothing is written.
        FileNotFoundError: no such file.
    """
    import os

    if task.run.backbone not in DOR_BACKBONES:
        raise WeightImportError(f"--source dor_pth imports EfficientNetV2 models: --backbone "
                                f"{' | '.join(DOR_BACKBONES)}, not {task.run.backbone}")
    ckpt = read_dor_checkpoint(path)
    desc = describe_dor_checkpoint(ckpt.state_dict)
    task.prepare(run_dir)
    bad = check_against_run(desc, task, ckpt)
    if bad:
        raise WeightImportError("the checkpoint does not match the run's flags: " + "; ".join(bad))
    files = {}
    if task.name == "ml_gcn":
        name = "dor_label_embeddings.npy"
        files[name] = np.asarray(ckpt.state_dict["inp"], np.float32)
        task.config.label_embeddings = os.path.join(run_dir, name)   # config.yaml: the imported rows
    model = build_dor_model(task, desc, ckpt.state_dict)
    report = import_dor_weights(model, ckpt.state_dict, task.name, task.run.backbone, desc["cosine"])
    prep = set_dor_preprocessing(model.backbone, DOR_BACKBONES[task.run.backbone][0])
    size = task.run.input_size
    not_reproduced = [
        "image resizing: deep-object-reid's test transform stretches the whole image to its height x width "
        "(448 x 448, cv2.INTER_LINEAR, no crop); our loader resizes the shorter side to --input-size and crops "
        "the centre square: the same pixels only for square images"]
    if size != DOR_INPUT_SIZE:
        not_reproduced.append(f"input size: --input-size {size}; the released models run at {DOR_INPUT_SIZE}")
    if desc["cosine"]:
        not_reproduced.append(
            f"AAM scale s is not stored in the checkpoint: the model outputs s * cos with s = {task.scale():g} "
            "(--aam-scale); probabilities are sigmoid(s * cos) (the original's loss.softmax.s, e.g. 23 in "
            "configs/EfficientNetV2_small_mld.yml, 17 in _gcn.yml); rankings and mAP do not depend on s")
    not_reproduced.append("similarity_adjustment (ModelInterface.sym_adjust, off in the released configs) "
                          "is not applied")
    extra = {
        "original": "tosfaq/deep-object-reid (multilabel): Prokofiev & Sovrasov 2022",
        "original_model": {"linear_head": "TimmModelsWrapper", "ml_decoder": "MLDecoder (mld_*)",
                           "ml_gcn": "Image_GCNN (gcn_*)"}[task.name]
        + f" on {DOR_BACKBONES[task.run.backbone][2]}",
        "loss": "am_binary (cosine head)" if desc["cosine"] else "asl (logit head)",
        "aam_scale": task.scale() if desc["cosine"] else None,
        "num_classes": desc["num_classes"],
        "module_prefix_removed": ckpt.prefix_removed,
        "checkpoint_entries": {"metadata": ckpt.metadata if len(str(ckpt.metadata)) < 20000 else
                               sorted(ckpt.metadata), "not_loaded": ckpt.skipped_entries},
        "backbone_weights": "none (random init), then every weight replaced from the checkpoint",
        "preprocessing": prep,
        "not_reproduced": not_reproduced,
        "files": files,
    }
    if task.name == "ml_gcn":
        extra["gcn"] = {"label_embeddings": "inp -> dor_label_embeddings.npy and the head's label_embeddings",
                        "adjacency": "gen_adj(A) = (A D)^T D, D = diag(rowsum(A)^-1/2), stored in the head; "
                                     "config.yaml's --graph describes re-training only"}
    return model, report, extra
