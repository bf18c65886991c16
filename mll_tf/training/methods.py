"""Training methods by name (``--method``)."""

from mll_tf.registry import register_method


@register_method("lesa")
def lesa(cfg, resume=False, progress=True):
    """LESA shared multi-attention zero-shot training (see :mod:`mll_tf.training.lesa_trainer`)."""
    from mll_tf.training.lesa_trainer import train_lesa
    return train_lesa(cfg, resume=resume, progress=progress)
