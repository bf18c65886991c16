"""The original implementations' released weights, mapped by name onto our models.

* LESA's TF1 checkpoint: :func:`lesa_from_tf1_checkpoint`, :func:`import_lesa_tf1`.
* IMCL's fixed-feature models (``np.savez`` files, which is how
  hbdat/cvpr20_IMCL saves them, not TF checkpoints): :func:`import_imcl_npz`.

LESA (Huynh & Elhamifar, CVPR 2020; hbdat/cvpr20_LESA, released as a TF1
``model.ckpt`` of ``zeroshot_experiments/NUS_WIDE_zs_rank_Visual_Word_Attention.py``).
The graph of ``core/model_share_attention.py::AttentionClassifier.build_model_rank(is_conv=True)``
creates these variables (names as ``tf.train.Saver`` writes them):

=====================================================  ===============  ==========================
checkpoint variable                                    shape            our LESA weight
=====================================================  ===============  ==========================
``conv/conv/weights`` (``slim.conv2d``, no bias)        [2, 2, D, C']    ``conv.kernel`` (HWIO both)
``conv/conv/batch_normalization/gamma``                [C']             ``bn.gamma``
``conv/conv/batch_normalization/beta``                 [C']             ``bn.beta``
``conv/conv/batch_normalization/moving_mean``          [C']             ``bn.moving_mean``
``conv/conv/batch_normalization/moving_variance``      [C']             ``bn.moving_variance``
``attention_layer/w_att_1``                            [C'+1, C']       ``w_att_1``
``attention_layer/w_att_2``                            [C'+1, M]        ``w_att_2``
``prediction_frac/W``                                  [C', E]          ``W``
``vecs`` (only with ``trainable_vecs=True``)            [C, E]           ``seen_embeddings`` (L2-normalised)
=====================================================  ===============  ==========================

Training state is skipped by rule: optimizer slots (``<var>/RMSProp``,
``/RMSProp_1``, ``/Momentum``, ``/Adam``, ``/Adam_1``), ``beta1_power``,
``beta2_power``, ``global_step``, ``conv/is_train`` and unnamed scalar
``Variable``/``Variable_<n>`` (the adaptive learning rate of
``core/utils.py::LearningRate``). Any other variable is refused by name, as
is a missing or mis-shaped one. The BatchNormalization of the reference is
``tf.layers.batch_normalization`` (momentum 0.99, epsilon 1e-3), the one of
our LESA.
"""

import re

import numpy as np

__all__ = ["IMCL_NPZ_ARRAYS", "LESA_TF1_NAMES", "WeightImportError", "import_imcl_npz", "import_lesa_tf1",
           "lesa_from_tf1_checkpoint", "read_tf1_checkpoint"]

#: our LESA weight (attribute path) -> the reference's TF1 variable name
LESA_TF1_NAMES = {
    "conv.kernel": "conv/conv/weights",
    "bn.gamma": "conv/conv/batch_normalization/gamma",
    "bn.beta": "conv/conv/batch_normalization/beta",
    "bn.moving_mean": "conv/conv/batch_normalization/moving_mean",
    "bn.moving_variance": "conv/conv/batch_normalization/moving_variance",
    "w_att_1": "attention_layer/w_att_1",
    "w_att_2": "attention_layer/w_att_2",
    "W": "prediction_frac/W",
}
_OPTIONAL = {"seen_embeddings": "vecs"}
_TRAINING_STATE = re.compile(
    r"(.*/(RMSProp|RMSProp_1|Momentum|Adam|Adam_1|ExponentialMovingAverage)$)|(^beta[12]_power(_\d+)?$)"
    r"|(^global_step$)|(^conv/is_train$)|(^Variable(_\d+)?$)")


class WeightImportError(ValueError):
    """A checkpoint that does not map onto the model (names the variables)."""


def read_tf1_checkpoint(path):
    """All variables of a TF1 (or TF2 name-based) checkpoint: ``{name: ndarray}``.

    Args:
        path: the checkpoint prefix (``.../model.ckpt``) or its folder.

    Raises:
        FileNotFoundError: no checkpoint there.
    """
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(path)
    except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError) as e:
        raise FileNotFoundError(f"--checkpoint: no TensorFlow checkpoint at {path} ({str(e)[:200]})") from None
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def _attr(model, dotted):
    obj = model
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _lesa_weights(ckpt):
    """Split a LESA checkpoint into (mapped, skipped); refuse unknown/missing names."""
    known = set(LESA_TF1_NAMES.values()) | set(_OPTIONAL.values())
    skipped = sorted(n for n in ckpt if n not in known and _TRAINING_STATE.match(n))
    extra = sorted(n for n in ckpt if n not in known and not _TRAINING_STATE.match(n))
    missing = sorted(n for n in LESA_TF1_NAMES.values() if n not in ckpt)
    if missing or extra:
        raise WeightImportError(
            "the checkpoint is not a LESA checkpoint of hbdat/cvpr20_LESA"
            + (f"; missing: {', '.join(missing)}" if missing else "")
            + (f"; unknown variables: {', '.join(extra[:20])}" if extra else ""))
    return skipped


def lesa_from_tf1_checkpoint(path, label_embeddings, grid_size=(14, 14)):
    """A :class:`mll_tf.models.lesa.LESA` with the reference's released weights.

    The architecture comes from the checkpoint's shapes (D, C' from
    ``conv/conv/weights``, M from ``attention_layer/w_att_2``, E from
    ``prediction_frac/W``).

    Args:
        path: checkpoint prefix (e.g. ``results/release_zs_NUS_WIDE.../model.ckpt``).
        label_embeddings: float ``[C, E]`` raw word vectors of the seen labels
            (the reference's ``vecs_925``); replaced by the checkpoint's
            ``vecs`` when it holds them.
        grid_size: (h, w) of the feature map (the reference: VGG19 conv5_4 at
            224 px, 14 x 14 = 196 regions).

    Returns:
        (model, report dict with ``imported`` and ``skipped`` variable names).

    Raises:
        WeightImportError: missing / unknown / mis-shaped variables (named).
        FileNotFoundError: no checkpoint at ``path``.
    """
    from mll_tf.models.lesa import LESA

    ckpt = read_tf1_checkpoint(path)
    _lesa_weights(ckpt)
    k = ckpt["conv/conv/weights"]
    if k.ndim != 4 or k.shape[:2] != (2, 2):
        raise WeightImportError(f"conv/conv/weights has shape {list(k.shape)}, expected [2, 2, D, C']")
    w2 = ckpt["attention_layer/w_att_2"]
    if w2.ndim != 2:
        raise WeightImportError(f"attention_layer/w_att_2 has shape {list(w2.shape)}, expected [C'+1, M]")
    d, c = int(k.shape[2]), int(k.shape[3])
    model = LESA(label_embeddings=np.asarray(label_embeddings, np.float32), num_heads=int(w2.shape[1]),
                 conv_channels=c, grid_size=tuple(grid_size))
    model(np.zeros((1, int(grid_size[0]) * int(grid_size[1]), d), np.float32), training=False)
    return model, import_lesa_tf1(model, ckpt)


def import_lesa_tf1(model, checkpoint):
    """Assign a LESA TF1 checkpoint to a built LESA model (all or nothing).

    Args:
        model: a built :class:`mll_tf.models.lesa.LESA` (or ``TrainableLESA``).
        checkpoint: path, or ``{name: ndarray}`` from :func:`read_tf1_checkpoint`.

    Returns:
        dict ``{"imported": {our weight: checkpoint name}, "skipped": [names]}``.

    Raises:
        WeightImportError: a missing, unknown or mis-shaped variable (every
            problem named); nothing is assigned then.
    """
    ckpt = read_tf1_checkpoint(checkpoint) if isinstance(checkpoint, str) else dict(checkpoint)
    skipped = _lesa_weights(ckpt)
    plan, bad = [], []
    mapping = dict(LESA_TF1_NAMES)
    if "vecs" in ckpt:
        mapping["seen_embeddings"] = "vecs"
    for ours, theirs in mapping.items():
        var = _attr(model, ours)
        value = np.asarray(ckpt[theirs], np.float32)
        if theirs == "vecs":
            from mll_tf.models.lesa import _l2_normalize_np
            value = _l2_normalize_np(value)  # the reference normalises vecs where it uses them
        if tuple(value.shape) != tuple(var.shape):
            bad.append(f"{theirs} {list(value.shape)} -> {ours} {list(var.shape)}")
        plan.append((var, value))
    if bad:
        raise WeightImportError("mis-shaped variables (checkpoint -> model): " + "; ".join(bad))
    for var, value in plan:
        var.assign(value)
    return {"imported": mapping, "skipped": skipped}


#: IMCL (hbdat/cvpr20_IMCL ``OpenImages_experiments/interactive_learning_OpenImages.py``) saves its
#: fixed-feature models with ``np.savez(".../models_ES" or "models_final", Thetas_1=, Thetas_f=, Gs=)``:
#: one slice per experiment along the last axis.
IMCL_NPZ_ARRAYS = {"Thetas_1": "[D+1, D, n_experiments]", "Thetas_f": "[D+1, C, n_experiments]",
                   "Gs": "[C, C, n_experiments]"}


def import_imcl_npz(model, path, experiment=0):
    """Assign IMCL's released fixed-feature model (``models_ES.npz`` / ``models_final.npz``) to our IMCL model.

    The reference computes ``F_f = [F, 1] Theta_1`` and logits
    ``[F_f, 1] Theta_f``, and propagates with the dense ``G = scatter(G_var)``
    (``interactive_learning_OpenImages.py``). Our
    :class:`mll_tf.models.imcl.IMCLModel` holds the same maps as
    ``theta_1`` (Dense: kernel = ``Theta_1[:D]``, bias = ``Theta_1[D]``),
    ``classifier`` (kernel = ``Theta_f[:D]``, bias = ``Theta_f[D]``) and the
    learnable entries of ``label_dependency`` (``values = G[indices]``).

    Args:
        model: a built IMCLModel (``feature_map=True`` when the file has
            ``Thetas_1``) whose sizes match.
        path: the ``.npz`` file.
        experiment: int, the slice of the last axis (the reference loops over
            its alpha settings; one experiment gives slice 0).

    Returns:
        dict ``{"imported": {our weight: array name}, "experiment": int}``.

    Raises:
        WeightImportError: missing / unknown arrays, a mis-shaped array, an
            experiment index out of range, or a G with non-zero entries
            outside the model's learnable pattern (all named); nothing is
            assigned then.
        FileNotFoundError: no such file.
    """
    import os

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--checkpoint: no file {path}")
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: np.asarray(data[k]) for k in data.files}
    known = set(IMCL_NPZ_ARRAYS)
    need = {"Thetas_f"} | ({"Thetas_1"} if model.theta_1 is not None else set())
    missing = sorted(need - set(arrays))
    extra = sorted(set(arrays) - known)
    if missing or extra:
        raise WeightImportError("not an IMCL models_*.npz file"
                                + (f"; missing: {', '.join(missing)}" if missing else "")
                                + (f"; unknown arrays: {', '.join(extra)}" if extra else ""))
    if model.theta_1 is None and "Thetas_1" in arrays:
        raise WeightImportError("the file has Thetas_1 (the Theta_1 feature map) but the model has none "
                                "(build it with feature_map=True)")
    plan, bad = [], []

    def take(name):
        a = arrays[name]
        if a.ndim != 3:
            bad.append(f"{name} has shape {list(a.shape)}, expected {IMCL_NPZ_ARRAYS[name]}")
            return None
        if not 0 <= experiment < a.shape[2]:
            bad.append(f"{name}: experiment {experiment} outside [0, {a.shape[2]})")
            return None
        return a[:, :, experiment].astype(np.float32)

    def dense(layer, theta, name):
        if theta is None:
            return
        k, b = layer.kernel, layer.bias
        if theta.shape != (k.shape[0] + 1, k.shape[1]):
            bad.append(f"{name} [{theta.shape[0]}, {theta.shape[1]}] -> {layer.name} kernel {list(k.shape)} "
                       f"+ bias {list(b.shape)}")
            return
        plan.extend([(k, theta[:-1]), (b, theta[-1])])

    imported = {}
    if model.theta_1 is not None:
        dense(model.theta_1, take("Thetas_1"), "Thetas_1")
        imported["theta_1"] = "Thetas_1"
    dense(model.classifier, take("Thetas_f"), "Thetas_f")
    imported["classifier"] = "Thetas_f"
    if "Gs" in arrays:
        g = take("Gs")
        dep = model.label_dependency
        if g is not None:
            if g.shape != (dep.num_labels, dep.num_labels):
                bad.append(f"Gs [{g.shape[0]}, {g.shape[1]}] -> label_dependency [{dep.num_labels}, "
                           f"{dep.num_labels}]")
            else:
                idx = dep.indices.numpy()
                outside = g.copy()
                outside[idx[:, 0], idx[:, 1]] = 0
                if np.count_nonzero(outside):
                    r, c = np.argwhere(outside)[0]
                    bad.append(f"Gs has {np.count_nonzero(outside)} non-zero entries outside the model's "
                               f"learnable pattern (first at [{r}, {c}])")
                else:
                    plan.append((dep.values, g[idx[:, 0], idx[:, 1]]))
                    imported["label_dependency.values"] = "Gs"
    if bad:
        raise WeightImportError("IMCL file does not fit the model: " + "; ".join(bad))
    for var, value in plan:
        var.assign(value)
    return {"imported": imported, "experiment": int(experiment)}
