from mll_tf.losses.partial import (
    AsymmetricLoss,
    MaskedBinaryCrossentropy,
    PartialAsymmetricLoss,
)

__all__ = [
    "PartialAsymmetricLoss",
    "AsymmetricLoss",
    "MaskedBinaryCrossentropy",
]
