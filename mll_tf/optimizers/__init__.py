"""Optimizers: TF1-compatible RMSprop (METHODS.md §6.1)."""

from mll_tf.optimizers.rmsprop_tf1 import TF1RMSprop

__all__ = ["TF1RMSprop"]
