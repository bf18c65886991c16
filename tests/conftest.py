"""Test configuration.

The CPU is split into 2 logical devices at import time, before TensorFlow
initialises its devices, so MirroredStrategy code paths run without a GPU.
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

import gc  # noqa: E402

import keras  # noqa: E402, F401
import pytest  # noqa: E402

# Python's full (generation-2) garbage collections, not the tests, made this suite slow and its timings
# erratic: with the hundreds of thousands of objects a TensorFlow process holds, one takes >= 1 s, and with
# TF graph objects in the garbage single collections took 6-36 s in tests/tasks/test_partial.py alone and up
# to 200 s in a whole run (measured with gc.callbacks). The objects alive after the imports are frozen out
# of the collector and automatic full collections are left out; the young generations still collect most
# garbage (a worker then peaks at about 8 GB). `make test` also drops pytest's unraisableexception plugin,
# whose clean-up forces full collections; and explicit full collections in library code (TF's LiteRT
# converter calls gc.collect() after every conversion: one took 229 s in the export test) collect the young
# generations only.
gc.collect()
gc.freeze()
gc.set_threshold(700, 10, 10 ** 9)
_full_collect = gc.collect


def _young_collect(generation=2):
    return _full_collect(min(generation, 1))


gc.collect = _young_collect

_STRATEGIES = {}


def two_cpu_strategy():
    """The process-wide 2-CPU-replica MirroredStrategy.

    One instance is shared by all tests: separate MirroredStrategy objects over
    the same devices restart the collective instance keys, and TF then aborts
    with "Shape mismatch in the collective instance" when their all-reduces
    differ.
    """
    if "two" not in _STRATEGIES:
        _STRATEGIES["two"] = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    return _STRATEGIES["two"]


@pytest.fixture
def strategy2():
    return two_cpu_strategy()


#: Label names of the shared tiny store (all have GloVe 50-d vectors).
TOY_NAMES = ["cat", "dog", "car", "tree", "boat"]


@pytest.fixture(scope="session")
def toy_store(tmp_path_factory):
    """A tiny separable feature store (dataset "toy", 192/64/64 records of [4, 8]); see tests.helpers.write_toy_store."""
    from tests.helpers import write_toy_store

    root = tmp_path_factory.mktemp("toy_features")
    write_toy_store(root, names=TOY_NAMES)
    return root
