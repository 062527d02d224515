"""Training helpers: a small resumable pretraining loop, packed batches, Trainer/PEFT glue, and PEFT's default targets for ``model_type="hybrid_hf"``."""

from .loop import LoopConfig, LoopState, load_checkpoint, save_checkpoint, train_loop
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
    "LoopConfig",
    "LoopState",
    "LORA_TARGET_MODULES",
    "TokenBlockDataset",
    "apply_lora",
    "causal_lm_dataset",
    "evaluate_causal_lm",
    "flatten_batch",
    "load_checkpoint",
    "pack_documents",
    "per_document_loss",
    "per_token_loss",
    "register_peft_defaults",
    "save_checkpoint",
    "sequence_ids_from_positions",
    "split_documents",
    "tokenize_documents",
    "train_loop",
    "training_arguments",
]
