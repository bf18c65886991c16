"""Dataset adapters; importing this package registers them."""

from mll_tf.data.datasets import openclipart  # noqa: F401
