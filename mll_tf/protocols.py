"""Per-dataset evaluation conventions of the zero-shot protocols: K values and label order.

The one place that holds them; the LESA task and ``evaluation/evaluate.py``
both read :func:`eval_k_for` and :data:`GZSL_ORDER`. The published training
settings of the LESA runs are the packaged experiment configs
``mll_tf/configs/lesa_nus_wide.yaml`` and ``lesa_openimages.yaml``
(``experiments/train.py --config lesa_nus_wide``).

Sources: Huynh & Elhamifar, CVPR 2020, Sec. 5 (K = 3, 5 on NUS-WIDE; 10, 20
on OpenImages); hbdat/cvpr20_LESA
``zeroshot_experiments/NUS_WIDE_zs_rank_Visual_Word_Attention.py`` and
``multilabel_experiments/OpenImage_rank_Visual_Word_Attention.py``.
"""

from typing import Dict, Tuple

#: GZSL score vectors are always [unseen, seen], as the reference concatenates them.
GZSL_ORDER = "unseen_first"

#: Top-K values used for ZSL and GZSL P/R/F1 per dataset.
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
