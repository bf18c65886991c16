"""The dataset-adapter registry (``--dataset``); lookups live in :mod:`mll_tf.data.datasets`."""

from mll_tf.registry import Registry

DATASETS = Registry("dataset")
register_dataset = DATASETS.register
