"""tf.distribute helpers: one strategy for 1 CPU, N CPU replicas or all GPUs."""

import tensorflow as tf


def split_cpu(num_replicas):
    """Split the first physical CPU into ``num_replicas`` logical devices.

    Must run before TensorFlow initialises its devices (before any op).
    Returns True if the split is in place (now or already), False if
    TensorFlow was already initialised without it.
    """
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * num_replicas)
        return True
    except RuntimeError:
        return len(tf.config.list_logical_devices("CPU")) >= num_replicas


def make_strategy(cpu_replicas=1):
    """Return the strategy to train under.

    * GPUs present: ``MirroredStrategy`` over all of them.
    * else ``cpu_replicas > 1``: ``MirroredStrategy`` over that many logical
      CPUs (see :func:`split_cpu`; OFFLINE_DATA.md §2).
    * else a one-replica ``MirroredStrategy`` on ``/cpu:0`` (same code path).

    Raises:
        RuntimeError: if ``cpu_replicas`` logical CPUs cannot be made because
            TensorFlow is already initialised.
    """
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return tf.distribute.MirroredStrategy()
    if cpu_replicas > 1:
        if not split_cpu(cpu_replicas):
            raise RuntimeError(f"cannot split the CPU into {cpu_replicas} logical devices: "
                               "TensorFlow was initialised first")
        return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(cpu_replicas)])
    return tf.distribute.MirroredStrategy(["/cpu:0"])
