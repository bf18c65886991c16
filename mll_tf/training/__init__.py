"""Training: experiment configs, zero-shot label splits, distributed loops."""
