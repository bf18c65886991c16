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
      CPUs (see :func:`split_cpu`).
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


def distributed_train_step(strategy, model, jit_compile=False):
    """One training step of a compiled task model outside ``fit``: what ``fit`` runs per step.

    ``strategy.run(model.train_step, batch)`` in a ``tf.function``, the logs
    reduced over replicas (each replica logs global-batch values, so the
    mean is that value). For benchmarks and interactive use; training goes
    through :func:`mll_tf.training.runner.fit_task`.

    Args:
        strategy: the ``tf.distribute.Strategy`` the model was built under.
        model: a compiled task model (``model.optimizer`` and ``model.loss`` set).
        jit_compile: bool, XLA-compile the step.

    Returns:
        ``step(batch) -> dict of float32 scalars`` (``loss`` and the method's
        terms; running means since the metrics were last reset), taking a
        batch from ``strategy.experimental_distribute_dataset``.
    """

    @tf.function(jit_compile=jit_compile)
    def step(batch):
        out = strategy.run(model.train_step, args=(batch,))
        return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in out.items()}

    return step
