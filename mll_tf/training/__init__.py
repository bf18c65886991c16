"""The one training loop (:mod:`~mll_tf.training.runner`), its callbacks, the run configuration,
learning-rate schedules, class priors, zero-shot label splits and ``tf.distribute`` helpers."""
