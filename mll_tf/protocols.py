"""Reference protocols: the one place that holds per-dataset K values, label orders
and the training settings of the published runs.

``experiments/train.py --protocol lesa_nus_wide`` (or ``lesa_openimages``)
applies :attr:`Protocol.train` to the run configuration; flags given
explicitly on the command line still win. The evaluation K values and the
GZSL label order of a dataset come from :func:`eval_k_for` and
:data:`GZSL_ORDER`, which the trainer and ``evaluation/evaluate.py`` both use.

Sources: METHODS.md §1.4 (optimiser, adaptive LR, budgets), §1.6 (K and
label orders), §6.5 (splits); hbdat/cvpr20_LESA
``zeroshot_experiments/NUS_WIDE_zs_rank_Visual_Word_Attention.py`` and
``multilabel_experiments/OpenImage_rank_Visual_Word_Attention.py``.
"""

import dataclasses
from typing import Dict, Tuple

#: GZSL score vectors are always [unseen, seen] (METHODS.md §6.5).
GZSL_ORDER = "unseen_first"

#: Top-K values used for ZSL and GZSL P/R/F1 per dataset (METHODS.md §1.6).
#: NUS-WIDE uses 3 and 5 in both settings (the reference prints "g_k=10/20"
#: but calls K = 3, 5); OpenImages uses 10 and 20 (evaluation script, paper).
EVAL_K: Dict[str, Tuple[int, ...]] = {
    "nus_wide": (3, 5),
    "openimages": (10, 20),
}
DEFAULT_EVAL_K = (3, 5)


def eval_k_for(dataset, manifest_extra=None):
    """Top-K values for ``dataset``.

    Args:
        dataset: str, registry name (``"nus_wide"``, ``"openimages"``, ...).
        manifest_extra: optional dict, a manifest's ``extra``; its
            ``"eval_k"`` entry is used for datasets not listed in
            :data:`EVAL_K`.

    Returns:
        tuple of int.
    """
    if dataset in EVAL_K:
        return EVAL_K[dataset]
    if manifest_extra and manifest_extra.get("eval_k"):
        return tuple(int(k) for k in manifest_extra["eval_k"])
    return DEFAULT_EVAL_K


@dataclasses.dataclass(frozen=True)
class Protocol:
    """A published training/evaluation protocol.

    Attributes:
        name: str, the ``--protocol`` value.
        dataset: str, the dataset it was defined on.
        description: str.
        train: dict of :class:`mll_tf.training.config.TrainConfig` field ->
            value that the protocol sets.
    """
    name: str
    dataset: str
    description: str
    train: dict


_LESA_COMMON = dict(
    method="lesa",
    backbone="vgg19",
    input_size=224,
    num_heads=10,
    conv_channels=512,
    optimizer="rmsprop_tf1",  # ms slots start at ones, eps 1.0 inside the sqrt (§6.1)
    learning_rate=1e-3,       # learning_rate_phase_1 hard-coded in the scripts (§1.4)
    batch_size=32,
    shuffle=False,            # file order + repeat(), no augmentation (§1.4)
    lr_schedule="adaptive",
    lr_signal=0.3,
    lr_decay=0.8,
    lr_floor_fraction=1e-3,
    margin=1.0,
    distribution_weight=0.1,
    global_weight=0.001,
    span_weight=0.01,
)

PROTOCOLS: Dict[str, Protocol] = {
    "lesa_nus_wide": Protocol(
        name="lesa_nus_wide", dataset="nus_wide",
        description=("LESA on NUS-WIDE (METHODS.md §1.4): VGG19 conv5_4, TF1 RMSProp lr 1e-3, "
                     "200,000 iterations of batch 32 in file order, evaluation every 4000 "
                     "iterations on the first 5000 training images, adaptive LR (EMA 0.3, x0.8, "
                     "patience 5) and best checkpoint on validation F1@5 over the 925 seen labels"),
        train=dict(_LESA_COMMON, dataset="nus_wide", max_steps=200_000, eval_every=4000,
                   lr_patience=5, monitor="val/seen/F1@5", eval_k=(3, 5))),
    "lesa_openimages": Protocol(
        name="lesa_openimages", dataset="openimages",
        description=("LESA on OpenImages 2018_04 (METHODS.md §1.4): VGG19 conv5_4, TF1 RMSProp "
                     "lr 1e-3, 343,850 iterations (2 epochs of 5,501,586 images at batch 32), "
                     "adaptive LR (patience 2), best checkpoint on validation mAP over the 7186 "
                     "seen labels; evaluation at K = 10, 20"),
        train=dict(_LESA_COMMON, dataset="openimages", max_steps=343_850, eval_every=4000,
                   lr_patience=2, monitor="val/seen/mAP", eval_k=(10, 20))),
}


def get_protocol(name):
    """The :class:`Protocol` called ``name``.

    Raises:
        KeyError: naming the ``--protocol`` flag and the known protocols.
    """
    if name not in PROTOCOLS:
        raise KeyError(f"--protocol: unknown {name!r}; known: {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]
