"""The hybrid_hf model: configuration, modules and recurrent mixers (shippable as Hub remote code)."""

from .checkpoint_loading import CheckpointMismatchError
from .configuration_hybrid import PRESETS, SIZES, HybridConfig
from .modeling_hybrid import (
    HybridForCausalLM,
    HybridForSequenceClassification,
    HybridModel,
    HybridPreTrainedModel,
    output_cache,
)

__all__ = [
    "CheckpointMismatchError",
    "PRESETS",
    "SIZES",
    "HybridConfig",
    "HybridForCausalLM",
    "HybridForSequenceClassification",
    "HybridModel",
    "HybridPreTrainedModel",
    "output_cache",
]
