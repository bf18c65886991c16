"""Training methods by name (``--method``)."""

from mll_tf.registry import register_method


@register_method("lesa")
def lesa(cfg, resume=False, progress=True):
    """LESA shared multi-attention zero-shot training (see :mod:`mll_tf.training.lesa_trainer`)."""
    from mll_tf.training.lesa_trainer import train_lesa
    return train_lesa(cfg, resume=resume, progress=progress)


def _partial(name):
    def run(cfg, resume=False, progress=True):
        from mll_tf.training.multilabel_trainer import train_multilabel
        return train_multilabel(cfg, resume=resume, progress=progress)
    run.__name__ = name
    run.__doc__ = f"Partial-label training with the {name} loss (see :mod:`mll_tf.training.multilabel_trainer`)."
    return register_method(name)(run)


for _name in ("csl", "asl", "ignore", "negative", "logistic"):
    _partial(_name)


@register_method("imcl")
def imcl(cfg, resume=False, progress=True):
    """IMCL interactive learning with label dependencies (see :mod:`mll_tf.training.imcl_trainer`)."""
    from mll_tf.training.imcl_trainer import train_imcl
    return train_imcl(cfg, resume=resume, progress=progress)
