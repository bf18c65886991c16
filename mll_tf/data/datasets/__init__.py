"""Dataset adapters; importing this package registers them (``--dataset``).

Each adapter turns a dataset in its official layout into a
:class:`mll_tf.data.adapter.PreparedDataset`. Look one up with
:func:`get_dataset`; list them with :func:`dataset_names`.
"""

import functools

from mll_tf.data.datasets._registry import DATASETS, register_dataset
from mll_tf.data.datasets import openclipart  # noqa: F401
from mll_tf.data.datasets import fashion_mnist_grid  # noqa: F401
from mll_tf.data.datasets import coco  # noqa: F401
from mll_tf.data.datasets import attributes_csv  # noqa: F401
from mll_tf.data.datasets import nus_wide  # noqa: F401
from mll_tf.data.datasets import openimages  # noqa: F401
from mll_tf.data.datasets import json_dataset  # noqa: F401
from mll_tf.data.datasets import openimages_v6  # noqa: F401
from mll_tf.data.datasets import openimages_v3  # noqa: F401
from mll_tf.data.datasets import cub  # noqa: F401
from mll_tf.data.datasets import fashion_mnist_scatter  # noqa: F401
from mll_tf.data.datasets import voc  # noqa: F401

__all__ = ["DATASETS", "dataset_names", "get_dataset", "register_dataset"]


def get_dataset(name):
    """Return the adapter class registered as ``name``.

    ``"tfds:<name>[/<config>][:<version>]"`` (e.g. ``"tfds:voc/2007"``) is not
    in the registry: it returns ``functools.partial(TFDSDataset, name=...)``
    (:mod:`mll_tf.data.datasets.tfds_source`; ``root`` is the TFDS data_dir).
    tensorflow_datasets is imported only when that adapter prepares.

    Raises:
        KeyError: naming ``--dataset`` and listing the registered names; or
            ``"tfds:"`` with no dataset name.
    """
    if name.startswith("tfds:"):
        from mll_tf.data.datasets.tfds_source import TFDSDataset

        rest = name[len("tfds:"):]
        if not rest:
            raise KeyError("--dataset: 'tfds:' needs a TFDS name, e.g. 'tfds:voc/2007'")
        return functools.partial(TFDSDataset, name=rest)
    return DATASETS.get(name)


def dataset_names():
    """Registered dataset names (sorted list of str); ``tfds:<name>`` is accepted too."""
    return DATASETS.names()
