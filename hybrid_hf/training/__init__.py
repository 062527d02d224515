"""Training helpers: packed batches, Trainer/PEFT glue, and PEFT's default targets for ``model_type="hybrid_hf"``."""

from .packing import (
    IGNORE_INDEX,
    TokenBlockDataset,
    flatten_batch,
    pack_documents,
    per_document_loss,
    per_token_loss,
    sequence_ids_from_positions,
    tokenize_documents,
)
from .peft_targets import LORA_TARGET_MODULES, register_peft_defaults
from .trainer import (
    apply_lora,
    causal_lm_dataset,
    evaluate_causal_lm,
    split_documents,
    training_arguments,
)

__all__ = [
    "IGNORE_INDEX",
    "LORA_TARGET_MODULES",
    "TokenBlockDataset",
    "apply_lora",
    "causal_lm_dataset",
    "evaluate_causal_lm",
    "flatten_batch",
    "pack_documents",
    "per_document_loss",
    "per_token_loss",
    "register_peft_defaults",
    "sequence_ids_from_positions",
    "split_documents",
    "tokenize_documents",
    "training_arguments",
]
