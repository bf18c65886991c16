"""Test configuration.

The CPU is split into 2 logical devices at import time, before TensorFlow
initialises its devices, so MirroredStrategy code paths run without a GPU
(OFFLINE_DATA.md §2).
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
except RuntimeError:  # devices already initialised by another plugin
    pass
