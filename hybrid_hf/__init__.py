"""hybrid_hf: HuggingFace-compatible hybrid language models (full + sliding-window attention + recurrent mixers).

Importing the package registers the model with transformers' Auto classes.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
)

from .modeling import (
    PRESETS,
    SIZES,
    HybridConfig,
    HybridForCausalLM,
    HybridForSequenceClassification,
    HybridModel,
    HybridPreTrainedModel,
)
from .training import peft_targets as _peft_targets  # noqa: F401  (registers PEFT's default LoRA targets)

__version__ = "0.1.0"


def _register() -> None:
    AutoConfig.register(HybridConfig.model_type, HybridConfig, exist_ok=True)
    AutoModel.register(HybridConfig, HybridModel, exist_ok=True)
    AutoModelForCausalLM.register(HybridConfig, HybridForCausalLM, exist_ok=True)
    AutoModelForSequenceClassification.register(HybridConfig, HybridForSequenceClassification, exist_ok=True)
    # save_pretrained writes `auto_map` and ships the modeling files as remote code.
    HybridConfig.register_for_auto_class()
    HybridModel.register_for_auto_class("AutoModel")
    HybridForCausalLM.register_for_auto_class("AutoModelForCausalLM")
    HybridForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")


_register()

__all__ = [
    "PRESETS",
    "SIZES",
    "HybridConfig",
    "HybridForCausalLM",
    "HybridForSequenceClassification",
    "HybridModel",
    "HybridPreTrainedModel",
    "__version__",
]
