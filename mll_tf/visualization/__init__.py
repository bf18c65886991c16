"""Visualisation of trained models (LESA attention maps, TensorBoard images)."""

from mll_tf.visualization.attention import (  # noqa: F401
    AttentionExamples,
    attention_examples,
    attention_figure,
    attention_grids,
    backbone_weights_argument,
    explain_features,
    explain_images,
    figure_to_array,
    image_features,
    load_image_like_extraction,
    log_attention_images,
    log_model_attention,
    upsample_attention,
)
