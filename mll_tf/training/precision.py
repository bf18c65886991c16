"""``--precision``: the Keras mixed-precision policy of a run.

============== ===================== ==========================================
``--precision`` Keras policy          where
============== ===================== ==========================================
float32        ``float32``           everywhere (the default; parity-tested)
bfloat16       ``mixed_bfloat16``    CPUs with AVX512-BF16 or AMX-BF16, GPUs
mixed_float16  ``mixed_float16``     GPUs only; the optimizer is wrapped in
                                     ``keras.optimizers.LossScaleOptimizer``
                                     by ``Model.compile``
============== ===================== ==========================================

Under a mixed policy the variables stay float32 and the layers compute in the
16-bit type (Keras mixed precision guide). The models that support it keep the
pieces that need the range or the accuracy in float32 (for LESA: the softmax
over regions, BatchNormalization's statistics, every output, hence the losses
and the metrics; :class:`mll_tf.models.lesa.LESA`).

A task declares support with the class attribute ``mixed_precision = True``;
the others train in float32 only.
"""

import contextlib

__all__ = ["POLICIES", "cpu_has_bf16", "check_precision", "precision_scope"]

#: ``--precision`` value -> Keras dtype policy name.
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "mixed_float16": "mixed_float16"}


def cpu_has_bf16(cpuinfo="/proc/cpuinfo"):
    """True when the CPU flags list ``avx512_bf16`` or ``amx_bf16`` (Linux ``/proc/cpuinfo``).

    Returns False when the file cannot be read (other systems).
    """
    try:
        with open(cpuinfo) as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _has_gpu():
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def check_precision(precision, task=None, has_gpu=None, has_bf16=None):
    """Refuse a ``--precision`` this task or this machine cannot run; returns the Keras policy name.

    Args:
        precision: str, a ``--precision`` value.
        task: optional Task; a non-float32 precision needs ``task.mixed_precision``.
        has_gpu, has_bf16: optional bools overriding the detection (tests).

    Returns:
        str, the Keras dtype policy name.

    Raises:
        ValueError: one line naming ``--precision``: an unknown value, a task
            without mixed-precision support, ``mixed_float16`` without a GPU
            (CPUs have no fast float16 matrix products: use bfloat16), or
            ``bfloat16`` on a CPU-only machine without BF16 instructions.
    """
    if precision not in POLICIES:
        raise ValueError(f"--precision: {precision!r} is not one of {', '.join(POLICIES)}")
    if precision == "float32":
        return "float32"
    if task is not None and not getattr(task, "mixed_precision", False):
        raise ValueError(f"--precision {precision}: --method {task.name} trains in float32 only")
    gpu = _has_gpu() if has_gpu is None else has_gpu
    if precision == "mixed_float16" and not gpu:
        raise ValueError("--precision mixed_float16 needs a GPU (none found); on this CPU use --precision bfloat16")
    if precision == "bfloat16" and not gpu:
        bf16 = cpu_has_bf16() if has_bf16 is None else has_bf16
        if not bf16:
            raise ValueError("--precision bfloat16: this CPU has no AVX512-BF16/AMX-BF16 instructions, so bfloat16 "
                             "would be slower than float32; use --precision float32")
    return POLICIES[precision]


@contextlib.contextmanager
def precision_scope(policy):
    """Set the global Keras dtype policy inside the block (models built there keep it), restore it after."""
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)
