"""IMCL: interactive multi-label learning with label dependencies, as a Task (``--method imcl``).

Huynh & Elhamifar, CVPR 2020 (hbdat/cvpr20_IMCL). The model
(:class:`mll_tf.models.imcl.IMCLModel`) is a linear classifier on pooled
features with an asymmetric sigmoid and a learnable label-dependency matrix
G initialised from a label graph; each training step (paper Sec. 3.2,
Eq. 5-7; reference ``OpenImages_experiments/interactive_learning_OpenImages.py``):

1. the dictionary side -- predictions through G and ``[e, 1]`` features of a
   dictionary of training images -- with the current parameters (or cached
   for ``--imcl-refresh`` steps, an approximation the reference makes only
   end to end);
2. an orthogonal matching pursuit per image over that dictionary, without
   gradient (:func:`mll_tf.ops.omp.batched_omp`);
3. one gradient step on ``L_log + lambda_c L_colab + lambda_f L_feat`` with
   one optimiser per variable group (Theta (+Theta_1), G, backbone); G's
   constraint clips it to [0, 1].

``lambda_c`` and ``lambda_f`` are calibrated on the first batch from the
loss ratios at initialisation (``lambda = alpha * L_log / L``), as the
reference does.

Under ``tf.distribute`` every replica runs the OMP of its own images over the
whole (mirrored) dictionary; the logistic term is divided by the all-reduced
number of observed labels and the residual terms by the global batch size,
so the per-replica terms add up to the single-device terms of the global
batch (tested: 2 replicas = 1).

This module also holds the standalone single-device step builders
(:class:`IMCLTrainStep`, :func:`make_imcl_train_step`,
:func:`make_logistic_train_step`) used by ``benchmarks/bench_imcl.py``.
"""

import dataclasses
import os
import types

import keras
import numpy as np
import tensorflow as tf

from mll_tf.losses.imcl_loss import IMCLLoss, calibrate_lambdas, masked_logistic_loss
from mll_tf.models.imcl import (IMCLDictionary, IMCLModel, asym_sigmoid, clamp_labels,
                                labels_to_pm1)
from mll_tf.ops.omp import batched_omp
from mll_tf.tasks.base import OwnLossSteps, register_task
from mll_tf.tasks.multilabel import MultiLabelConfig, MultiLabelTask
from mll_tf.training.config import option

__all__ = ["IMCLConfig", "IMCLTask", "IMCLTrainStep", "TrainableIMCL", "dictionary_terms", "imcl_terms",
           "make_imcl_train_step", "make_logistic_train_step", "refresh_dictionary"]

JIT_MODES = (False, True, "optimizer")


def _check_jit(jit_compile):
    if jit_compile not in JIT_MODES:
        raise ValueError(f"jit_compile must be one of {JIT_MODES}, got "
                         f"{jit_compile!r}")
    return jit_compile


class _Applier:
    """``opt.apply_gradients`` per group, optionally XLA-compiled alone.

    With ``jit_compile="optimizer"`` the step runs as a plain tf.function
    (TensorFlow's oneDNN kernels for the large matmuls, which XLA's CPU
    backend runs slower here) while each optimiser update, dozens of
    element-wise ops per variable, is one nested XLA cluster.
    """

    def __init__(self, groups, jit):
        self.groups = groups
        self.jit = jit
        self._compiled = {}

    def __call__(self, grads):
        start = 0
        for i, (opt, vs) in enumerate(self.groups):
            pairs = [(g, v) for g, v in zip(grads[start:start + len(vs)], vs)
                     if g is not None]
            start += len(vs)
            if not pairs:
                continue
            if self.jit != "optimizer":
                opt.apply_gradients(pairs)
                continue
            if i not in self._compiled:
                self._compiled[i] = _compiled_apply(opt,
                                                    [v for _, v in pairs])
            self._compiled[i]([g for g, _ in pairs])


def _compiled_apply(optimizer, variables):
    """XLA-compiled ``optimizer.apply_gradients`` on fixed variables."""

    def apply(grads):
        optimizer.apply_gradients(zip(grads, variables))
        return tf.constant(0)

    return tf.function(apply, jit_compile=True)


def refresh_dictionary(model, dictionary, images, batch_size=32):
    """End-to-end variant: recompute the dictionary features with the backbone.

    ``dictionary.features <- model.pool(images)`` in inference mode (the
    reference re-extracts them every 250 iterations on OpenImages e2e and
    every 3000 on MSCOCO; docs/imcl.md §4). The labels are unchanged. With
    ``dict_refresh_every > 1`` call ``step.refresh_cache()`` afterwards.

    Args:
        model: :class:`IMCLModel` with a backbone.
        dictionary: :class:`IMCLDictionary`.
        images: array-like [N, ...] backbone inputs in the dictionary order.
        batch_size: int.
    """
    dictionary.refresh_features(model, images, batch_size=batch_size)


def _group_by_optimizer(model, optimizers):
    """[(optimizer, [variables])] with groups sharing an optimiser merged."""
    if "classifier" not in optimizers or optimizers["classifier"] is None:
        raise ValueError("optimizers must have a 'classifier' optimiser")
    unknown = set(optimizers) - {"classifier", "graph", "backbone"}
    if unknown:
        raise ValueError(f"unknown optimiser groups {sorted(unknown)}; use "
                         "'classifier', 'graph', 'backbone'")
    default = optimizers["classifier"]
    merged = {}
    for group, variables in model.variable_groups().items():
        if not variables:
            continue
        opt = optimizers.get(group) or default
        merged.setdefault(id(opt), (opt, []))[1].extend(variables)
    pairs = list(merged.values())
    for opt, variables in pairs:
        if not opt.built:
            opt.build(variables)
    return pairs


#: dtypes of the OMP pre-filter's screening scores (batched_omp's ``screen_dtype``)
SCREEN_DTYPES = ("float32", "bfloat16")


def _check_screen(dtype):
    if dtype not in SCREEN_DTYPES:
        raise ValueError(f"OMP screening dtype must be one of {', '.join(SCREEN_DTYPES)}, got {dtype!r}")
    return dtype


def dictionary_terms(model, dictionary, screen_dtype="float32"):
    """The dictionary side of the OMP with the current parameters (no gradient is taken here).

    Returns:
        ``(Y_dict [N, C], F_dict [N, D + 1], ||Y_dict||^2 [N], ||F_dict||^2 [N])``
        (float32), followed by ``Y_dict`` and ``F_dict`` cast to ``screen_dtype``
        when it is not float32 (the OMP pre-filter's screening copies)
        with ``Y_dict = clamp(asym_sigmoid(F_dict Theta) G)`` and
        ``F_dict = [e(F_dict), 1]`` (paper Sec. 3.2; reference
        ``colaborative_loss.e2e_OMP_asym_sigmoid_loss_Feature_Graph``).
    """
    emb = model.embed(dictionary.features)
    logits = model.classifier(emb)
    y = model.propagated(logits, from_logits=True, labels_pm1=dictionary.labels_pm1)
    f = model.omp_features(emb)
    terms = (y, f, tf.reduce_sum(tf.square(y), axis=1), tf.reduce_sum(tf.square(f), axis=1))
    if screen_dtype != "float32":
        terms += (tf.cast(y, screen_dtype), tf.cast(f, screen_dtype))
    return terms


def imcl_terms(model, dictionary, dict_terms, features, labels, *, loss, k, threshold,
               balance, dedup_tol, lambda_colab, lambda_feature, training,
               global_batch_size=None, global_observed_count=None, prefilter=0, screen_dtype="float32"):
    """IMCL's loss terms on a batch: OMP over the dictionary, then the residual losses.

    The query side gives logits, ``y_hat = clamp(asym_sigmoid(s))`` and
    ``[e, 1]``; :func:`mll_tf.ops.omp.batched_omp` (weights ``lambda_colab``,
    ``lambda_feature``, as the reference passes its loss weights) picks at
    most ``k`` atoms per image; the atoms are recomputed from the stored
    pooled features with the current parameters (so Theta, Theta_1 and G get
    gradients) and :class:`mll_tf.losses.imcl_loss.IMCLLoss` gives
    ``L_log + lambda_c L_colab + lambda_f L_feat`` (paper Eq. 5-7).

    Args:
        model: :class:`~mll_tf.models.imcl.IMCLModel`.
        dictionary: :class:`~mll_tf.models.imcl.IMCLDictionary`.
        dict_terms: :func:`dictionary_terms` (cached or fresh, no gradient);
            its screening copies, when present, go to the OMP pre-filter.
        prefilter, screen_dtype: :func:`mll_tf.ops.omp.batched_omp`'s.
        features, labels: the batch (labels in {1, 0, -1}).
        global_batch_size, global_observed_count: optional global counts
            (``tf.distribute``: the per-replica terms then add up to the
            single-device terms of the global batch).

    Returns:
        dict of float32 scalars ``total``, ``logistic``, ``colab``,
        ``feature`` and ``num_selected`` (mean support size).
    """
    m = model
    dict_y, dict_f, dict_ny, dict_nf = dict_terms[:4]
    y_pm1 = labels_to_pm1(labels)
    emb = m.embed(m.pool(features, training=training))
    logits = m.classifier(emb)
    y_hat = clamp_labels(asym_sigmoid(logits, m.c), y_pm1, m.c)
    q_feat = m.omp_features(emb)
    indices, coef_l, coef_f, num = batched_omp(
        tf.stop_gradient(y_hat), tf.stop_gradient(q_feat), dict_y, dict_f,
        k=k, lambda_label=lambda_colab, lambda_feature=lambda_feature,
        threshold=threshold, balance=balance,
        dedup_tol=dedup_tol, dict_label_sq_norms=dict_ny,
        dict_feature_sq_norms=dict_nf, prefilter=prefilter, screen_dtype=screen_dtype,
        dict_screen=tuple(dict_terms[4:6]) or None)
    safe = tf.maximum(indices, 0)
    batch = tf.shape(indices)[0]
    atoms = tf.gather(dictionary.features, tf.reshape(safe, [-1]))
    atom_emb = m.embed(atoms)                                 # [Bk, D]
    atom_pm1 = tf.gather(dictionary.labels_pm1, tf.reshape(safe, [-1]))
    atom_y = m.propagated(m.classifier(atom_emb), from_logits=True,
                          labels_pm1=atom_pm1)
    atom_y = tf.reshape(atom_y, [batch, k, m.num_labels])
    atom_f = tf.reshape(m.omp_features(atom_emb),
                        [batch, k, m.feature_dim + 1])
    outputs = {"logits": logits, "indices": indices, "y_hat": y_hat,
               "atom_y_hat": atom_y, "coef_label": coef_l,
               "omp_features": q_feat, "atom_features": atom_f,
               "coef_feature": coef_f}
    terms = loss(labels, outputs, lambda_colab=lambda_colab,
                 lambda_feature=lambda_feature,
                 global_batch_size=global_batch_size,
                 global_observed_count=global_observed_count)
    terms["num_selected"] = tf.reduce_mean(tf.cast(num, tf.float32))
    return terms


class IMCLTrainStep:
    """One IMCL training iteration: OMP (no gradient), then a gradient step.

    For a batch (docs/imcl.md §4; reference ``sess.run([train, train_G])``):

    1. dictionary side (no gradient): ``Y_dict = clamp(asym_sigmoid(F_dict
       Theta) G)`` and ``F_dict = [e(F_dict), 1]`` with the current
       parameters, recomputed every ``dict_refresh_every`` steps (1 = every
       step, the reference);
    2. query side: logits, ``y_hat = clamp(asym_sigmoid(s))`` (no G) and
       ``[e, 1]``; :func:`mll_tf.ops.omp.batched_omp` with
       ``lambda_label = lambda_c``, ``lambda_feature = lambda_f`` (the
       reference passes its loss weights) picks atoms and coefficients;
    3. the selected atoms are recomputed from the stored pooled features with
       the *current* parameters (with gradient to Theta, Theta_1, G), and
       :class:`mll_tf.losses.imcl_loss.IMCLLoss` gives
       ``L_log + lambda_c L_colab + lambda_f L_feat``;
    4. gradients are applied with one optimiser per group (Theta (+Theta_1),
       G, backbone); G's constraint clips it to [0, 1].

    ``dict_refresh_every > 1`` is an approximation the reference does not
    make: the OMP *selection* then uses dictionary predictions up to
    ``dict_refresh_every - 1`` steps old (the loss always uses current
    parameters). It removes the O(N D C + N C^2) dictionary forward pass that
    dominates the step (see ``benchmarks/bench_imcl.py``).

    Call ``step(features, labels)`` -> dict of float32 scalars ``"total"``,
    ``"logistic"``, ``"colab"``, ``"feature"`` and ``"num_selected"`` (mean
    support size). ``step.train_step`` is the underlying ``tf.function``
    (refresh the cache yourself with ``step.refresh_cache()`` when calling it
    directly with ``dict_refresh_every > 1``).

    Single replica: the reductions are the local-batch reference ones (the
    loss accepts global counts for a distributed trainer).

    Args:
        model: built :class:`IMCLModel`.
        optimizers: dict ``{"classifier": opt, "graph": opt or None,
            "backbone": opt or None}``; a missing/None group uses the
            classifier optimiser (MSCOCO uses one optimiser). Each optimiser
            is built here on its variables.
        dictionary: :class:`IMCLDictionary` or a ``(features, labels)`` pair.
        loss: :class:`IMCLLoss` or None. Its ``lambda_colab`` /
            ``lambda_feature`` initialise the variables ``lambda_colab`` /
            ``lambda_feature`` of this object (see :meth:`calibrate`).
        k: int, OMP sparsity (3; 1 in the fixed-feature OpenImages run).
        threshold: float, OMP ``thresold_coeff`` (1e-3 OpenImages).
        balance: bool, OMP ``is_balance`` (False in the experiments).
        use_feature_term: bool. False: lambda_f is the constant 0 (the OMP
            skips the feature scores after its first step and L_feat is not
            computed).
        dedup_tol: float, OMP near-duplicate distance.
        dict_refresh_every: int >= 1 (above).
        prefilter: int M >= 0, :func:`mll_tf.ops.omp.batched_omp`'s candidate
            pre-filter (0: exact OMP over the whole dictionary).
        prefilter_dtype: ``"float32"`` or ``"bfloat16"``, batched_omp's
            ``screen_dtype`` (the cache then holds bfloat16 copies too).
        jit_compile: False, True (XLA-compile the whole step) or
            ``"optimizer"`` (compile only the optimiser updates; the fastest
            on CPU in ``benchmarks/bench_imcl.py``).

    Raises:
        ValueError: for missing/unknown optimiser groups, an unbuilt model,
            ``dict_refresh_every < 1`` or an invalid ``jit_compile``.
    """

    def __init__(self, model, optimizers, dictionary, loss=None, k=3,
                 threshold=1e-3, balance=False, use_feature_term=True,
                 dedup_tol=1e-3, dict_refresh_every=1, jit_compile=False, prefilter=0,
                 prefilter_dtype="float32"):
        if not isinstance(dictionary, IMCLDictionary):
            dictionary = IMCLDictionary(*dictionary)
        if not model.built:
            if model.backbone is not None:
                raise ValueError("build the model (call it once) first")
            model(dictionary.features[:1])
        if int(dict_refresh_every) < 1:
            raise ValueError(f"dict_refresh_every must be >= 1, got "
                             f"{dict_refresh_every}")
        self.model = model
        self.dictionary = dictionary
        self.loss = loss if loss is not None else IMCLLoss()
        self.k = int(k)
        self.threshold = float(threshold)
        self.balance = bool(balance)
        self.use_feature_term = bool(use_feature_term)
        self.dedup_tol = float(dedup_tol)
        self.prefilter = int(prefilter)   # batched_omp(prefilter=M): 0 = exact over the dictionary
        self.screen_dtype = _check_screen(prefilter_dtype) if self.prefilter else "float32"
        self.dict_refresh_every = int(dict_refresh_every)
        self.jit_compile = _check_jit(jit_compile)
        self.lambda_colab = tf.Variable(self.loss.lambda_colab,
                                        trainable=False, dtype=tf.float32,
                                        name="lambda_colab")
        self.lambda_feature = tf.Variable(
            self.loss.lambda_feature if self.use_feature_term else 0.0,
            trainable=False, dtype=tf.float32, name="lambda_feature")
        self.iterations = 0
        self._groups = _group_by_optimizer(model, optimizers)
        self._apply = _Applier(self._groups, self.jit_compile)
        outer_jit = self.jit_compile is True
        n = dictionary.num_entries
        e = model.feature_dim + 1
        self._cache = None
        if self.dict_refresh_every > 1:
            self._cache = [
                tf.Variable(tf.zeros([n, model.num_labels]), trainable=False),
                tf.Variable(tf.zeros([n, e]), trainable=False),
                tf.Variable(tf.zeros([n]), trainable=False),
                tf.Variable(tf.zeros([n]), trainable=False)]
            if self.screen_dtype != "float32":
                self._cache += [tf.Variable(tf.zeros([n, model.num_labels], self.screen_dtype), trainable=False),
                                tf.Variable(tf.zeros([n, e], self.screen_dtype), trainable=False)]
        self.train_step = tf.function(self._train_step,
                                      jit_compile=outer_jit)
        self._evaluate = tf.function(self._evaluate_losses)
        self._refresh = tf.function(self._refresh_cache,
                                    jit_compile=outer_jit)

    # --- dictionary side --------------------------------------------------
    def _dictionary_side(self):
        return dictionary_terms(self.model, self.dictionary, self.screen_dtype)

    def _refresh_cache(self):
        for var, value in zip(self._cache, self._dictionary_side()):
            var.assign(value)
        return tf.constant(0)

    def refresh_cache(self):
        """Recompute the cached dictionary predictions (refresh > 1 only)."""
        if self._cache is not None:
            self._refresh()

    def _dict_terms(self):
        if self._cache is not None:
            return [tf.convert_to_tensor(v) for v in self._cache]
        return [tf.stop_gradient(t) for t in self._dictionary_side()]

    # --- forward + loss ---------------------------------------------------
    def _lambda_feature(self, override=None):
        if not self.use_feature_term:
            return 0.0
        return self.lambda_feature if override is None else override

    def _forward(self, features, labels, dict_terms, training,
                 lambda_colab=None, lambda_feature=None):
        lam_c = self.lambda_colab if lambda_colab is None else lambda_colab
        return imcl_terms(self.model, self.dictionary, dict_terms, features, labels,
                          loss=self.loss, k=self.k, threshold=self.threshold,
                          balance=self.balance, dedup_tol=self.dedup_tol,
                          lambda_colab=lam_c,
                          lambda_feature=self._lambda_feature(lambda_feature),
                          training=training, prefilter=self.prefilter, screen_dtype=self.screen_dtype)

    def _train_step(self, features, labels):
        dict_terms = self._dict_terms()
        variables = [v for _, vs in self._groups for v in vs]
        with tf.GradientTape() as tape:
            terms = self._forward(features, labels, dict_terms, training=True)
        self._apply(tape.gradient(terms["total"], variables))
        return terms

    def _evaluate_losses(self, features, labels, lambda_colab, lambda_feature):
        return self._forward(features, labels, self._dict_terms(),
                             training=False, lambda_colab=lambda_colab,
                             lambda_feature=lambda_feature)

    def __call__(self, features, labels):
        if (self._cache is not None
                and self.iterations % self.dict_refresh_every == 0):
            self._refresh()
        self.iterations += 1
        return self.train_step(tf.convert_to_tensor(features),
                               tf.convert_to_tensor(labels))

    def evaluate_losses(self, features, labels, lambda_colab=None,
                        lambda_feature=None):
        """The loss terms on a batch without updating anything.

        ``lambda_colab`` / ``lambda_feature`` override the OMP and loss
        weights for this call (default: the current variables).

        Returns:
            dict like the step's.
        """
        self.refresh_cache()
        lam_c = self.lambda_colab if lambda_colab is None else lambda_colab
        lam_f = self.lambda_feature if lambda_feature is None else lambda_feature
        return self._evaluate(features, labels, tf.cast(lam_c, tf.float32),
                              tf.cast(lam_f, tf.float32))

    def calibrate(self, features, labels, alpha_colab, alpha_feature,
                  bootstrap=(1e5, 1.0)):
        """Set lambda_c, lambda_f from the loss ratios at initialisation.

        Runs the OMP with the reference's bootstrap weights
        (``alpha_colaborative_var = 1e5``, ``alpha_feature_var = 1``), takes
        the unweighted L_log, L_colab, L_feat on this batch and assigns
        :func:`mll_tf.losses.imcl_loss.calibrate_lambdas`' result to the
        variables (docs/imcl.md §3).

        Args:
            features, labels: one training batch.
            alpha_colab, alpha_feature: float >= 0.
            bootstrap: (lambda_label, lambda_feature) of the initial OMP.

        Returns:
            ``(lambda_c, lambda_f)`` floats.
        """
        terms = self.evaluate_losses(features, labels, *bootstrap)
        if not self.use_feature_term:
            alpha_feature = 0.0
        lam_c, lam_f = calibrate_lambdas(
            float(terms["logistic"]), float(terms["colab"]),
            float(terms["feature"]), alpha_colab, alpha_feature)
        self.lambda_colab.assign(lam_c)
        self.lambda_feature.assign(lam_f)
        return lam_c, lam_f


def make_imcl_train_step(model, optimizers, dictionary, loss=None, k=3,
                         threshold=1e-3, balance=False, use_feature_term=True,
                         dedup_tol=1e-3, dict_refresh_every=1,
                         jit_compile=False, prefilter=0, prefilter_dtype="float32"):
    """Build an :class:`IMCLTrainStep` (see there for the arguments; ``prefilter``: batched_omp's)."""
    return IMCLTrainStep(model, optimizers, dictionary, loss=loss, k=k,
                         threshold=threshold, balance=balance,
                         use_feature_term=use_feature_term,
                         dedup_tol=dedup_tol,
                         dict_refresh_every=dict_refresh_every,
                         jit_compile=jit_compile, prefilter=prefilter, prefilter_dtype=prefilter_dtype)


def make_logistic_train_step(model, optimizer, unknown_as_negative=False,
                             jit_compile=False):
    """Baseline step: masked logistic loss only (IMCL ``baseline_logistic``).

    Args:
        model: :class:`IMCLModel` (Theta, Theta_1 and the backbone are
            trained; G is unused) or any Keras model returning logits [B, C]
            (all trainable variables are trained).
        optimizer: a Keras optimiser (built here).
        unknown_as_negative: bool, MSCOCO's unweighted loss.
        jit_compile: False, True or ``"optimizer"`` (see
            :class:`IMCLTrainStep`).

    Returns:
        ``tf.function(features, labels) -> {"logistic": float32 scalar}``.

    Raises:
        ValueError: for an invalid ``jit_compile``.
    """
    _check_jit(jit_compile)
    if isinstance(model, IMCLModel):
        groups = model.variable_groups()
        variables = groups["backbone"] + groups["classifier"]
    else:
        variables = list(model.trainable_variables)
    optimizer.build(variables)
    apply = _Applier([(optimizer, variables)], jit_compile)

    def step(features, labels):
        with tf.GradientTape() as tape:
            logits = model(features, training=True)
            loss = masked_logistic_loss(
                labels, logits, unknown_as_negative=unknown_as_negative)
        apply(tape.gradient(loss, variables))
        return {"logistic": loss}

    return tf.function(step, jit_compile=jit_compile is True)


# ----------------------------------------------------------------------------- the Task


@dataclasses.dataclass
class IMCLConfig(MultiLabelConfig):
    """IMCL's own options (reference defaults: alpha_c 1, alpha_f 0.5, k 3, c 2)."""
    imcl_k: int = option(3, "OMP sparsity: neighbours per image", min=1)
    imcl_threshold: float = option(1e-3, "OMP score threshold (reference thresold_coeff)", min=0.0)
    imcl_dict_size: int = option(10000, "dictionary entries drawn from the training split (0: all)", min=0)
    imcl_graph: str = option("cooccurrence", "initial label graph: cooccurrence | identity | word_knn | a "
                             "label-graph .npz from experiments/build_label_graph.py")
    imcl_alpha_colab: float = option(1.0, "lambda_c = alpha_c * L_log / L_colab at initialisation", min=0.0)
    imcl_alpha_feature: float = option(0.5, "lambda_f = alpha_f * L_log / L_feat at initialisation (0: no "
                                       "feature term)", min=0.0)
    imcl_c: float = option(2.0, "asymmetric sigmoid range (-1/c, 1)", min=0.0, min_exclusive=True)
    imcl_graph_learning_rate: float = option(-1.0, "learning rate of G (< 0: --learning-rate)")
    imcl_init_from: str = option("", "run directory of a logistic run: start Theta from its classifier "
                                 "(the reference starts from a trained classifier)")
    imcl_backbone_learning_rate: float = option(-1.0, "--finetune: backbone learning rate (< 0: 0.1 x "
                                                "--learning-rate)")
    imcl_dict_refresh_steps: int = option(250, "--finetune: recompute the dictionary features every N "
                                          "steps (reference 250)", min=1)
    imcl_refresh: int = option(1, "recompute the dictionary predictions every N steps (1: every step, "
                               "exact, the reference)", min=1)
    imcl_prefilter: int = option(0, "OMP candidate pre-filter: exact OMP over the M dictionary entries with "
                                 "the best first greedy score per image (0: off, exact over the whole "
                                 "dictionary; docs/performance.md)", min=0)
    imcl_feature_map: bool = option(False, "stored features: add the linear map Theta_1 before the classifier "
                                    "(the reference's fixed-feature OpenImages model, [F, 1] Theta_1)")
    imcl_prefilter_dtype: str = option("float32", "with --imcl-prefilter: dtype of the first step's "
                                       "scores over the whole dictionary that choose the candidates "
                                       "(bfloat16: about 2x faster on CPUs with AVX512-BF16/AMX; the "
                                       "scores of the candidates stay float32)", choices=SCREEN_DTYPES)


_LOG_TERMS = ("logistic", "colab", "feature", "num_selected")


@keras.saving.register_keras_serializable(package="mll_tf")
class TrainableIMCL(OwnLossSteps, IMCLModel):
    """:class:`~mll_tf.models.imcl.IMCLModel` with the IMCL training step for ``keras.Model.fit``.

    Compile with ``loss=IMCLLoss()`` and the classifier's optimizer, then
    :meth:`attach` the dictionary and the optimizers of G and the backbone.
    Each step: dictionary side (cached when ``dict_refresh_every > 1``, see
    :meth:`refresh_cache`), OMP per image, one gradient step per variable
    group (:func:`imcl_terms`). Logged: ``loss`` (the total), ``logistic``,
    ``colab``, ``feature`` (global-batch values) and ``num_selected``.

    Args:
        num_labels, **kwargs: as :class:`~mll_tf.models.imcl.IMCLModel`.
        k: int, OMP sparsity.
        omp_threshold: float, OMP score threshold.
        use_feature_term: bool, False: lambda_f is 0 and L_feat is not computed.
        dedup_tol: float, OMP near-duplicate distance.
        dict_refresh_every: int >= 1, steps between dictionary-side refreshes.
        omp_prefilter: int M >= 0, :func:`mll_tf.ops.omp.batched_omp`'s
            candidate pre-filter (0: exact OMP over the whole dictionary).
        omp_screen_dtype: ``"float32"`` or ``"bfloat16"``, batched_omp's
            ``screen_dtype`` with the pre-filter.
    """

    def __init__(self, num_labels, k=3, omp_threshold=1e-3, use_feature_term=True, dedup_tol=1e-3,
                 dict_refresh_every=1, omp_prefilter=0, omp_screen_dtype="float32", **kwargs):
        super().__init__(num_labels, **kwargs)
        self.omp_prefilter = int(omp_prefilter)   # batched_omp(prefilter=M), 0 = exact
        self.omp_screen_dtype = _check_screen(omp_screen_dtype)
        self.k = int(k)
        self.omp_threshold = float(omp_threshold)
        self.use_feature_term = bool(use_feature_term)
        self.dedup_tol = float(dedup_tol)
        self.dict_refresh_every = int(dict_refresh_every)
        self.lambda_colab = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                            aggregation="mean", name="lambda_colab")
        self.lambda_feature = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                              aggregation="mean", name="lambda_feature")
        self._trackers = {n: keras.metrics.Mean(name=n) for n in ("loss",) + _LOG_TERMS}
        # Not model state (not saved, not tracked): set by attach().
        self._imcl = types.SimpleNamespace(dictionary=None, groups=None, cache=None, refresh_fn=None)

    @property
    def dictionary(self):
        """The attached :class:`~mll_tf.models.imcl.IMCLDictionary` (None before :meth:`attach`)."""
        return self._imcl.dictionary

    @property
    def metrics(self):
        return list(self._trackers.values())

    def attach(self, dictionary, graph_optimizer=None, backbone_optimizer=None):
        """Give the model its dictionary and the optimizers of G and the backbone (call under the strategy).

        Builds each optimizer on its variables (the compiled optimizer on
        Theta (+ Theta_1); a missing one falls back to it).
        """
        self._imcl.dictionary = dictionary
        self.graph_optimizer = graph_optimizer
        self.backbone_optimizer = backbone_optimizer
        opts = {"classifier": self.optimizer, "graph": graph_optimizer, "backbone": backbone_optimizer}
        self._imcl.groups = _group_by_optimizer(self, opts)
        if self.dict_refresh_every > 1:
            n, e = dictionary.num_entries, self.feature_dim + 1
            agg = tf.VariableAggregation.ONLY_FIRST_REPLICA
            shapes = [([n, self.num_labels], "float32"), ([n, e], "float32"), ([n], "float32"),
                      ([n], "float32")]
            if self._screen() != "float32":
                shapes += [([n, self.num_labels], self._screen()), ([n, e], self._screen())]
            self._imcl.cache = [tf.Variable(tf.zeros(s, d), trainable=False, aggregation=agg)
                                for s, d in shapes]
            self._imcl.refresh_fn = tf.function(self._refresh_cache)

    def _refresh_cache(self):
        for var, value in zip(self._imcl.cache, dictionary_terms(self, self.dictionary, self._screen())):
            var.assign(value)
        return tf.constant(0)

    def refresh_cache(self):
        """Recompute the cached dictionary side (``dict_refresh_every > 1`` only)."""
        if self._imcl.cache is not None:
            self._imcl.refresh_fn()

    def _dict_terms(self):
        if self._imcl.cache is not None:
            return [tf.convert_to_tensor(v) for v in self._imcl.cache]
        return [tf.stop_gradient(t) for t in dictionary_terms(self, self.dictionary, self._screen())]

    def _screen(self):
        return self.omp_screen_dtype if self.omp_prefilter else "float32"

    def _lam_f(self):
        return self.lambda_feature if self.use_feature_term else 0.0

    def _terms(self, x, y, training, lambda_colab=None, lambda_feature=None):
        ctx = tf.distribute.get_replica_context()
        gb = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.shape(y)[0], tf.float32))
        go = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(tf.cast(tf.not_equal(y, -1), tf.float32)))
        lam_c = self.lambda_colab if lambda_colab is None else lambda_colab
        lam_f = self._lam_f() if lambda_feature is None else lambda_feature
        return imcl_terms(self, self.dictionary, self._dict_terms(), x, y, loss=self.loss, k=self.k,
                          threshold=self.omp_threshold, balance=False, dedup_tol=self.dedup_tol,
                          lambda_colab=lam_c, lambda_feature=lam_f, training=training,
                          global_batch_size=gb, global_observed_count=go, prefilter=self.omp_prefilter,
                          screen_dtype=self._screen())

    def _log(self, terms):
        ctx = tf.distribute.get_replica_context()
        logs = {}
        for name, key in (("loss", "total"), ("logistic", "logistic"), ("colab", "colab"),
                          ("feature", "feature")):
            self._trackers[name].update_state(
                ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.stop_gradient(terms[key])))
        self._trackers["num_selected"].update_state(
            ctx.all_reduce(tf.distribute.ReduceOp.MEAN, terms["num_selected"]))
        for name, tracker in self._trackers.items():
            logs[name] = tracker.result()
        return logs

    def train_step(self, data):
        x, y = data
        groups = self._imcl.groups
        variables = [v for _, vs in groups for v in vs]
        with tf.GradientTape() as tape:
            terms = self._terms(x, y, training=True)
            scaled = self.optimizer.scale_loss(terms["total"])
        grads = tape.gradient(scaled, variables)
        start = 0
        for opt, vs in groups:
            pairs = [(g, v) for g, v in zip(grads[start:start + len(vs)], vs) if g is not None]
            start += len(vs)
            if pairs:
                opt.apply([g for g, _ in pairs], [v for _, v in pairs])
        return self._log(terms)

    def test_step(self, data):
        x, y = data
        return self._log(self._terms(x, y, training=False))

    def calibrate(self, x, y, alpha_colab, alpha_feature, bootstrap=(1e5, 1.0)):
        """Set lambda_c, lambda_f from the loss ratios at initialisation (paper Sec. 4; reference).

        Runs the OMP with the reference's bootstrap weights
        (``alpha_colaborative_var = 1e5``, ``alpha_feature_var = 1``) on one
        batch, and assigns
        :func:`mll_tf.losses.imcl_loss.calibrate_lambdas`' result.

        Returns:
            ``(lambda_c, lambda_f)`` floats.
        """
        self.refresh_cache()
        fn = tf.function(lambda a, b: imcl_terms(
            self, self.dictionary, self._dict_terms(), a, b, loss=self.loss, k=self.k,
            threshold=self.omp_threshold, balance=False, dedup_tol=self.dedup_tol,
            lambda_colab=tf.constant(bootstrap[0], tf.float32),
            lambda_feature=tf.constant(bootstrap[1], tf.float32) if self.use_feature_term else 0.0,
            training=False, prefilter=self.omp_prefilter, screen_dtype=self._screen()))
        terms = fn(tf.convert_to_tensor(x), tf.convert_to_tensor(y))
        if not self.use_feature_term:
            alpha_feature = 0.0
        lam_c, lam_f = calibrate_lambdas(float(terms["logistic"]), float(terms["colab"]),
                                         float(terms["feature"]), alpha_colab, alpha_feature)
        self.lambda_colab.assign(lam_c)
        self.lambda_feature.assign(lam_f)
        return lam_c, lam_f

    def get_config(self):
        return {**super().get_config(), "k": self.k, "omp_threshold": self.omp_threshold,
                "use_feature_term": self.use_feature_term, "dedup_tol": self.dedup_tol,
                "dict_refresh_every": self.dict_refresh_every, "omp_prefilter": self.omp_prefilter,
                "omp_screen_dtype": self.omp_screen_dtype}


class IMCLStart(keras.callbacks.Callback):
    """Before the first step of a new run: lambda calibration on the first training batch.

    Also refreshes the dictionary features of the end-to-end variant with the
    (possibly restored) backbone, and primes the dictionary cache.
    """

    def __init__(self, task):
        super().__init__()
        self.task = task

    def on_train_begin(self, logs=None):
        t, m = self.task, self.model
        if t.dict_images is not None:
            refresh_dictionary(m, m.dictionary, t.dict_images)
        m.refresh_cache()
        if int(keras.ops.convert_to_numpy(m.optimizer.iterations)) == 0:
            x0, y0 = t.calibration_batch()
            lam_c, lam_f = m.calibrate(x0, y0, t.config.imcl_alpha_colab, t.config.imcl_alpha_feature)
            print(f"imcl: lambda_c={lam_c:.4g}, lambda_f={lam_f:.4g} (calibrated on the first batch)")


class DictionaryRefresh(keras.callbacks.Callback):
    """Keeps the dictionary side current: the cached predictions every ``imcl_refresh`` steps
    and, end to end, the dictionary images' backbone features every ``imcl_dict_refresh_steps``.
    """

    def __init__(self, task):
        super().__init__()
        self.task = task

    def _step(self):
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_train_batch_begin(self, batch, logs=None):
        step = self._step()
        if step and self.model.dict_refresh_every > 1 and step % self.model.dict_refresh_every == 0:
            self.model.refresh_cache()

    def on_train_batch_end(self, batch, logs=None):
        t = self.task
        step = self._step()
        if t.dict_images is not None and step % t.config.imcl_dict_refresh_steps == 0:
            refresh_dictionary(self.model, self.model.dictionary, t.dict_images)
            self.model.refresh_cache()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            g = self.model.label_dependency.dense().numpy()
            logs["graph_min"], logs["graph_max"] = float(g.min()), float(g.max())


def build_graph(config, run, names, labels):
    """The initial label graph float32 ``[C, C]`` named by ``--imcl-graph``.

    Raises:
        ValueError: an unknown kind (naming ``--imcl-graph``) or a saved graph
            for other labels.
    """
    from mll_tf.graphs.label_graph import (cooccurrence_graph, identity_graph, load_graph,
                                           word_vector_knn_graph)

    kind = config.imcl_graph
    if kind == "cooccurrence":
        return cooccurrence_graph(labels).astype(np.float32)
    if kind == "identity":
        return identity_graph(len(names))
    if kind == "word_knn":
        from mll_tf.data.word_vectors import label_embeddings, load_word_vectors
        wv = load_word_vectors(run.word_vectors, names)
        emb, _ = label_embeddings(names, wv)
        return word_vector_knn_graph(emb, 5, allow_zero=True).astype(np.float32)
    if kind.endswith(".npz") and os.path.exists(kind):
        return np.asarray(load_graph(kind, names), np.float32)
    raise ValueError(f"--imcl-graph {kind!r}: expected cooccurrence, identity, word_knn or an existing .npz "
                     f"written by experiments/build_label_graph.py")


def init_classifier(model, run_dir, names):
    """Copy Theta from a trained ``logistic`` (or any single-layer head) run's ``best.keras``.

    The reference's IMCL starts from a trained classifier.

    Raises:
        ValueError: naming ``--imcl-init-from`` when the run is not a
            single-linear-layer head over the same labels and feature size.
    """
    from mll_tf.tasks import load_task

    from mll_tf.data import fs

    path = os.path.join(run_dir, "best.keras")
    if not fs.exists(path):
        raise ValueError(f"--imcl-init-from {run_dir}: no best.keras (train --method logistic first)")
    other = load_task(run_dir)
    if other.run.finetune or list(other.read_manifest("train").label_names) != list(names):
        raise ValueError(f"--imcl-init-from {run_dir}: trained on other labels or on images")
    head = other.load_model(run_dir, "best")
    if getattr(head, "bottleneck", None) is not None or not hasattr(head, "classifier"):
        raise ValueError(f"--imcl-init-from {run_dir}: not a single linear layer head")
    w, b = head.classifier.get_weights()
    if w.shape != tuple(model.classifier.kernel.shape):
        raise ValueError(f"--imcl-init-from {run_dir}: classifier shape {w.shape} != "
                         f"{tuple(model.classifier.kernel.shape)}")
    model.classifier.set_weights([w, b])


@register_task("imcl")
class IMCLTask(MultiLabelTask):
    """IMCL on stored features (pooled) or end to end on images (``--finetune``)."""

    Config = IMCLConfig
    mixed_precision_on_gpu = False
    #: the run optimizer's recipe options (EMA, one-cycle, SGD decay) are refused (mll_tf.training.recipe)
    own_optimizers = "IMCL updates its label graph G (and, fine-tuned, the backbone) with optimizers of its own"
    resumable_fields = ("threshold", "imcl_dict_refresh_steps", "imcl_refresh")

    def check(self):
        from mll_tf.data import fs

        super().check()
        c = self.config
        if not (c.imcl_graph in ("cooccurrence", "identity", "word_knn")
                or (c.imcl_graph.endswith(".npz") and os.path.exists(c.imcl_graph))):
            raise ValueError(f"--imcl-graph {c.imcl_graph!r}: expected cooccurrence, identity, word_knn or "
                             f"an existing .npz written by experiments/build_label_graph.py")
        if c.imcl_prefilter_dtype != "float32" and not c.imcl_prefilter:
            raise ValueError(f"--imcl-prefilter-dtype {c.imcl_prefilter_dtype}: applies to the pre-filter; "
                             f"pass --imcl-prefilter M as well")
        if c.imcl_init_from and not fs.isdir(c.imcl_init_from):
            raise ValueError(f"--imcl-init-from: no run directory {c.imcl_init_from}")

    def prepare(self, run_dir, resume=False):
        super().prepare(run_dir, resume)
        n = self.num_train_examples
        rng = np.random.default_rng(self.run.seed)
        size = n if self.config.imcl_dict_size <= 0 else min(n, self.config.imcl_dict_size)
        self.dict_rows = np.sort(rng.choice(n, size=size, replace=False))
        self.graph = build_graph(self.config, self.run, self.label_names, self.train_labels)
        self.dict_images = None
        if self.run.finetune:
            recs = self.prepared.splits["train"]
            self.dict_images = np.stack([self.prepared.load_image(recs[i].path, self.run.input_size)
                                         for i in self.dict_rows]).astype(np.float32)
            self._pooled = None
        else:
            from mll_tf.data.feature_store import make_dataset

            feats = [tf.reduce_mean(f, axis=1).numpy()
                     for f, _ in make_dataset(self.features_dir("train"), 512)]
            self._pooled = np.concatenate(feats)

    def calibration_batch(self):
        """The first ``--batch-size`` training examples in store order, with their (simulated) labels."""
        b = self.run.batch_size
        y = self.train_labels[:b]
        if self._pooled is not None:
            return self._pooled[:b], y
        recs = self.prepared.splits["train"][:b]
        x = np.stack([self.prepared.load_image(r.path, self.run.input_size) for r in recs]).astype(np.float32)
        return x, y

    def describe(self):
        return (f"{len(self.label_names)} classes, {self.num_train_examples} training "
                f"{'images' if self.run.finetune else 'examples'}, dictionary {len(self.dict_rows)}, "
                f"graph {self.config.imcl_graph}, k={self.config.imcl_k}")

    def build_loss(self):
        return IMCLLoss()

    def build_model(self):
        c = self.config
        kw = dict(k=c.imcl_k, omp_threshold=c.imcl_threshold, use_feature_term=c.imcl_alpha_feature > 0,
                  dict_refresh_every=c.imcl_refresh, graph=self.graph, c=c.imcl_c,
                  omp_prefilter=c.imcl_prefilter, omp_screen_dtype=c.imcl_prefilter_dtype,
                  feature_map=c.imcl_feature_map and not self.run.finetune)
        if self.run.finetune:
            from mll_tf.backbones import build_backbone

            bb = build_backbone(self.run.backbone, weights="imagenet", input_size=self.run.input_size)
            model = TrainableIMCL(len(self.label_names), backbone=bb.model, feature_dim=bb.feature_shape[-1],
                                  **kw)
            model(tf.zeros([1, self.run.input_size, self.run.input_size, 3]))
        else:
            d = self.manifest.feature_shape[-1]
            model = TrainableIMCL(len(self.label_names), feature_dim=d, **kw)
            model(tf.zeros([1, d]))
            if c.imcl_init_from:
                init_classifier(model, c.imcl_init_from, self.label_names)
        return model

    def on_model_built(self, model):
        from mll_tf.optimizers import build_optimizer

        c, r = self.config, self.run
        g_lr = r.learning_rate if c.imcl_graph_learning_rate < 0 else c.imcl_graph_learning_rate
        graph_opt = build_optimizer(r.optimizer, g_lr, r.weight_decay)
        backbone_opt = None
        if r.finetune:
            bb_lr = 0.1 * r.learning_rate if c.imcl_backbone_learning_rate < 0 else c.imcl_backbone_learning_rate
            backbone_opt = build_optimizer(r.optimizer, bb_lr, r.weight_decay)
        feats = (np.zeros((len(self.dict_rows), model.feature_dim), np.float32) if r.finetune
                 else self._pooled[self.dict_rows])
        model.attach(IMCLDictionary(feats, self.train_labels[self.dict_rows]), graph_opt, backbone_opt)

    def optimizer_variables(self, model):
        """The variables the compiled (classifier) optimizer updates: Theta (+ Theta_1)."""
        return model.variable_groups()["classifier"]

    def callbacks(self, run_dir):
        return [IMCLStart(self), DictionaryRefresh(self)]
