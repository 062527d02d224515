"""Import pretrained transformers checkpoints into hybrid_hf and convert them into hybrids.

``import_model`` loads a Llama / Qwen3 / SmolLM3 / Mistral checkpoint as an equivalent ``HybridForCausalLM``;
``hybridize`` turns chosen full-attention layers into sliding-window (no new parameters) or recurrent layers
(initialised from the attention); ``layer_scores`` / ``select_full_layers`` choose the layers to keep from data.
Healing by distillation lives in ``hybrid_hf.training.distillation``.
"""

from .hybridize import hybrid_config_for, hybridize, plan_layer_types
from .importing import SUPPORTED_MODEL_TYPES, hybrid_config_from, import_model
from .selection import SELECTION_METHODS, layer_scores, select_full_layers

__all__ = [
    "SELECTION_METHODS",
    "SUPPORTED_MODEL_TYPES",
    "hybrid_config_for",
    "hybrid_config_from",
    "hybridize",
    "import_model",
    "layer_scores",
    "plan_layer_types",
    "select_full_layers",
]
