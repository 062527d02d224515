"""Mechanism analysis of hybrid models (the paper's tools): retrieval heads and their emergence, attention
entropy, Q/K weight distance, layer-wise probing, gradient influence by distance, receptive-field caps,
scaling-law fits, and small-sample statistics for seed-replicated experiments."""

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
from .statistics import (
    equivalence_test,
    first_crossing,
    mean_ci,
    normalised_auc,
    paired_power,
    paired_test,
    seeds_for_power,
    trend_test,
)

__all__ = [
    "RETRIEVAL_THRESHOLD",
    "attention_entropy",
    "copy_paste_retrieval_scores",
    "copy_paste_scores",
    "equivalence_test",
    "first_crossing",
    "fit_scaling_law",
    "gradient_influence",
    "last_token_features",
    "layerwise_probe",
    "mean_ci",
    "needle_mass",
    "normalised_auc",
    "paired_power",
    "paired_test",
    "qk_weight_distance",
    "receptive_field_cap",
    "retrieval_head_scores",
    "seeds_for_power",
    "teacher_forced_copy_scores",
    "top_heads",
    "trace_from_tables",
    "trace_heads",
    "trend_test",
]
