"""Mechanism analysis of hybrid models (the paper's tools): retrieval heads and their emergence, attention
entropy, Q/K weight distance, layer-wise probing, gradient influence by distance, receptive-field caps and
scaling-law fits."""

from .heads import (
    RETRIEVAL_THRESHOLD,
    attention_entropy,
    copy_paste_retrieval_scores,
    copy_paste_scores,
    needle_mass,
    retrieval_head_scores,
    teacher_forced_copy_scores,
    top_heads,
    trace_from_tables,
    trace_heads,
)
from .mechanisms import (
    fit_scaling_law,
    gradient_influence,
    last_token_features,
    layerwise_probe,
    qk_weight_distance,
    receptive_field_cap,
)

__all__ = [
    "RETRIEVAL_THRESHOLD",
    "attention_entropy",
    "copy_paste_retrieval_scores",
    "copy_paste_scores",
    "fit_scaling_law",
    "gradient_influence",
    "last_token_features",
    "layerwise_probe",
    "needle_mass",
    "qk_weight_distance",
    "receptive_field_cap",
    "retrieval_head_scores",
    "teacher_forced_copy_scores",
    "top_heads",
    "trace_from_tables",
    "trace_heads",
]
