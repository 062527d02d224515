"""The hybrid_hf model: configuration, modules and recurrent mixers (shippable as Hub remote code)."""

from .configuration_hybrid import PRESETS, SIZES, HybridConfig
from .modeling_hybrid import (
    HybridForCausalLM,
    HybridForSequenceClassification,
    HybridModel,
    HybridPreTrainedModel,
    output_cache,
)

__all__ = [
    "PRESETS",
    "SIZES",
    "HybridConfig",
    "HybridForCausalLM",
    "HybridForSequenceClassification",
    "HybridModel",
    "HybridPreTrainedModel",
    "output_cache",
]
