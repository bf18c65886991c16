"""Data: the TFRecord feature store, dataset adapters, word vectors.

This package never imports models. Importing it does not import TensorFlow
(image-decoding worker processes import adapters from here).
"""
