"""Dataset adapters; importing this package registers them."""

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
