from mll_tf.losses.partial import (
    AsymmetricLoss,
    MaskedBinaryCrossentropy,
    PartialAsymmetricLoss,
)
from mll_tf.losses.aam import AMBinaryLoss, compute_s, smooth_labels

__all__ = [
    "PartialAsymmetricLoss",
    "AsymmetricLoss",
    "MaskedBinaryCrossentropy",
    "AMBinaryLoss",
    "compute_s",
    "smooth_labels",
]
