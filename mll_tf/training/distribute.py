"""tf.distribute helpers: one strategy for 1 CPU, N CPU replicas, all GPUs, or many machines.

Many machines: ``tf.distribute.MultiWorkerMirroredStrategy`` configured from
the standard ``TF_CONFIG`` environment variable (TensorFlow's
``TFConfigClusterResolver``): every worker runs the same training command
(with ``--resume``, so that a restarted job continues from the backup), the
variables are mirrored on every replica of every worker and the gradients
all-reduced. What this module adds around it, following TensorFlow's
multi-worker guide (https://www.tensorflow.org/tutorials/distribute/multi_worker_with_keras):

* :func:`is_chief` / :func:`worker_write_dir`: only the chief (task
  ``chief``, else ``worker`` 0) writes the run directory; the other workers
  write their checkpoints, TensorBoard and run files to a temporary
  directory of their own, deleted when training ends;
* :func:`distribute_input`: each worker reads whole shard files of the
  feature store (``files[i::N]``, like the ``tf.data`` auto-shard policy
  ``FILE``; the store's reader lists its files inside a ``flat_map`` the
  auto-sharder cannot rewrite, so the files are chosen with the worker's
  ``tf.distribute.InputContext``), its per-worker share of the global batch;
* :func:`adapt_model_for_multi_worker`: two work-arounds for Keras 3's
  ``fit`` under a multi-worker strategy (see there).

Input at scale: :func:`data_service_input` moves the training input pipeline
to the workers of a ``tf.data`` service (``--data-service``).
"""

import json
import os

import tensorflow as tf

#: ``--distribution`` values: ``auto`` (multi_worker when TF_CONFIG names more than one task, else mirrored),
#: ``mirrored`` (this machine: GPUs or --cpu-replicas), ``multi_worker`` (TF_CONFIG required).
DISTRIBUTIONS = ("auto", "mirrored", "multi_worker")


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


def tf_config_tasks():
    """How many ``chief``/``worker`` tasks the ``TF_CONFIG`` environment variable names (0 if unset).

    Raises:
        ValueError: ``TF_CONFIG`` is not JSON with a ``cluster`` object.
    """
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return 0
    try:
        cluster = json.loads(raw)["cluster"]
        return len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"TF_CONFIG is not a JSON object with a 'cluster' ({type(e).__name__}: {e})") from None


def make_multi_worker_strategy():
    """``MultiWorkerMirroredStrategy`` of the cluster that ``TF_CONFIG`` describes.

    Must be called before TensorFlow runs any op in this process (a
    TensorFlow rule for collective ops). Blocks until every worker of the
    cluster has started it.

    Raises:
        ValueError: ``TF_CONFIG`` is unset or names no chief/worker task.
    """
    if tf_config_tasks() < 1:
        raise ValueError("--distribution multi_worker needs the TF_CONFIG environment variable: "
                         '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", '
                         '"index": 0}} on the first machine, "index": 1 on the second, ...')
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)


def is_multi_worker(strategy):
    """True for a ``MultiWorkerMirroredStrategy`` spanning more than one worker."""
    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode())


def is_chief(strategy):
    """True if this process writes the run directory: always, unless it is a non-chief worker of a cluster.

    The chief is the ``chief`` task, or ``worker`` 0 when the cluster has
    no ``chief`` (TensorFlow's convention).
    """
    if not is_multi_worker(strategy):
        return True
    resolver = strategy.cluster_resolver
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    return task_type == "worker" and int(task_id or 0) == 0 and "chief" not in resolver.cluster_spec().as_dict()


def worker_write_dir(run_dir, strategy):
    """Where this process writes its run files: ``run_dir`` for the chief, else a temporary directory.

    The temporary directory (local, ``mll_tf-workertemp_<task>_<id>-*``)
    receives what a non-chief worker's callbacks write (checkpoints,
    backups, TensorBoard, history); delete it after training
    (:func:`remove_worker_write_dir`).
    """
    if is_chief(strategy):
        return run_dir
    import tempfile

    resolver = strategy.cluster_resolver
    return tempfile.mkdtemp(prefix=f"mll_tf-workertemp_{resolver.task_type}_{resolver.task_id}-")


def remove_worker_write_dir(write_dir, run_dir):
    """Delete a non-chief worker's temporary directory (never ``run_dir``)."""
    if write_dir != run_dir:
        import shutil

        shutil.rmtree(write_dir, ignore_errors=True)


def adapt_model_for_multi_worker(model, strategy):
    """Make ``keras.Model.fit`` work under a multi-worker strategy (Keras 3.15 on TensorFlow 2.21).

    Two instance-level fixes, nothing changes for other strategies:

    * ``fit`` builds the model from the first batch by reducing the
      per-replica batch with ``strategy.reduce`` on a *tuple*, which the
      multi-worker cross-device ops cannot convert (``ValueError: Attempt to
      convert a value (PerReplica...)``); the model is already built here, so
      the build uses this worker's first local batch instead;
    * the step's logs are reduced with ``strategy.reduce("MEAN", v,
      axis=0)``, which fails on the scalar logs of a ``train_step`` /
      ``test_step`` (``Invalid reduction dimension 0``); each log value gets a
      leading axis of length 1, so the reduction is the mean over all
      replicas of all workers (every replica logs global-batch values, so the
      mean is that value).

    Args:
        model: a compiled keras.Model built under ``strategy``.
        strategy: the ``tf.distribute.Strategy``.

    Returns:
        ``model`` (changed in place when ``strategy`` spans several workers).
    """
    if not is_multi_worker(strategy):
        return model
    import types

    from keras import tree

    def local(v):
        return strategy.experimental_local_results(v)[0] if isinstance(v, tf.distribute.DistributedValues) else v

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = next(it)
                break
        with strategy.scope():
            self._symbolic_build(data_batch=tree.map_structure(local, data_batch))

    def with_axis(step):
        def wrapped(data):
            return tree.map_structure(lambda v: tf.expand_dims(v, 0), step(data))
        return wrapped

    model._maybe_symbolic_build = types.MethodType(maybe_symbolic_build, model)
    model.train_step = with_axis(model.train_step)
    model.test_step = with_axis(model.test_step)
    return model


def distribute_input(strategy, make_input, global_batch_size):
    """The training input of every worker: its files of the store, its share of each global batch.

    ``strategy.distribute_datasets_from_function``: on worker ``i`` of ``N``
    input pipelines, ``make_input(global_batch_size // N)`` is called inside
    :func:`mll_tf.data.feature_store.input_shard` ``(N, i)``, so every
    feature store it opens yields only the records of the shard files
    ``files[i::N]`` (a split with fewer files than workers is refused,
    naming it); the batches are then split per local replica.

    Args:
        strategy: a ``tf.distribute.Strategy``.
        make_input: ``per_worker_batch_size -> tf.data.Dataset`` of batches.
        global_batch_size: int, divisible by the number of replicas.

    Returns:
        ``tf.distribute.DistributedDataset`` for ``keras.Model.fit``.
    """
    from mll_tf.data.feature_store import input_shard

    def fn(ctx):
        per_worker = global_batch_size // ctx.num_input_pipelines
        with input_shard(ctx.num_input_pipelines, ctx.input_pipeline_id):
            ds = make_input(per_worker)
        per_replica = ctx.get_per_replica_batch_size(global_batch_size)
        if per_replica != per_worker:
            ds = ds.rebatch(per_replica)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return ds.with_options(options)

    return strategy.distribute_datasets_from_function(fn)


def check_data_service(address):
    """Validate ``--data-service`` (empty, or ``grpc://host:port``).

    Raises:
        ValueError: naming the flag and the value.
    """
    import re

    if address and not re.fullmatch(r"grpc(\+local)?://[^/\s]+:\d+", address):
        raise ValueError(f"--data-service {address!r}: expected the dispatcher's address grpc://host:port")


def data_service_input(dataset, address):
    """``dataset`` processed by the workers of the tf.data service whose dispatcher is ``address``.

    ``tf.data.experimental.service.distribute`` with sharding policy
    ``OFF``: every tf.data worker runs the whole pipeline (reading the
    feature store itself, so the store must be on a file system the
    tf.data workers see) and this process only receives finished batches.
    With one tf.data worker the stream is the one this process would make
    (same order, so a resumed run continues it exactly); with several the
    batches of their pipelines arrive interleaved in no fixed order, and the
    exact-resume guarantee does not hold.

    Args:
        dataset: ``tf.data.Dataset`` (serialisable: no Python functions).
        address: str, ``grpc://host:port`` of the dispatcher.

    Returns:
        ``tf.data.Dataset`` with the same elements.
    """
    service = tf.data.experimental.service
    return dataset.apply(service.distribute(processing_mode=service.ShardingPolicy.OFF, service=address))


def make_strategy(cpu_replicas=1, distribution="auto"):
    """Return the strategy to train under.

    * ``distribution="multi_worker"``, or ``"auto"`` with a ``TF_CONFIG``
      naming more than one chief/worker task:
      :func:`make_multi_worker_strategy` (``cpu_replicas`` is ignored).
    * GPUs present: ``MirroredStrategy`` over all of them.
    * else ``cpu_replicas > 1``: ``MirroredStrategy`` over that many logical
      CPUs (see :func:`split_cpu`).
    * else a one-replica ``MirroredStrategy`` on ``/cpu:0`` (same code path).

    Raises:
        RuntimeError: if ``cpu_replicas`` logical CPUs cannot be made because
            TensorFlow is already initialised.
        ValueError: an unknown ``distribution``, or ``multi_worker`` without
            ``TF_CONFIG``.
    """
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"--distribution must be one of {', '.join(DISTRIBUTIONS)}, got {distribution!r}")
    if distribution == "multi_worker" or (distribution == "auto" and tf_config_tasks() > 1):
        return make_multi_worker_strategy()
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
