"""Multi-label metrics (NumPy): the three reference AP variants and top-K P/R/F1.

All functions take ``scores`` float ``[N, C]`` and ``labels`` int ``[N, C]`` in
{1 present, 0 absent, -1 unknown} and return fractions in [0, 1]
(docs/metrics.md).
"""

from mll_tf.metrics.average_precision import (
    average_precision_asl,
    average_precision_masked,
    average_precision_partial,
    mean_average_precision,
)
from mll_tf.metrics.threshold import (
    attribute_accuracy,
    threshold_metrics,
    tune_thresholds,
)
from mll_tf.metrics.top_k import top_k_precision_recall_f1

__all__ = [
    "average_precision_masked",
    "mean_average_precision",
    "average_precision_asl",
    "average_precision_partial",
    "top_k_precision_recall_f1",
    "threshold_metrics",
    "tune_thresholds",
    "attribute_accuracy",
]
