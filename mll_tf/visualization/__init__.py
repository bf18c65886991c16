"""Figures of trained models (LESA attention maps) and their TensorBoard images; drawing only."""

from mll_tf.visualization.attention import (  # noqa: F401
    attention_figure,
    attention_grids,
    figure_to_array,
    log_attention_images,
    upsample_attention,
)
