"""Training helpers: a small resumable pretraining loop, packed batches, Trainer/PEFT glue, distillation, and PEFT's
default targets for ``model_type="hybrid_hf"``."""

from .distillation import DistillationTrainer, RecoveryCallback, distillation_loss, mean_kl, scored_positions
from .loop import (
    LoopConfig,
    LoopState,
    load_checkpoint,
    save_checkpoint,
    split_batch,
    train_loop,
    weighted_token_loss,
)
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
    "DistillationTrainer",
    "IGNORE_INDEX",
    "LoopConfig",
    "LoopState",
    "LORA_TARGET_MODULES",
    "RecoveryCallback",
    "TokenBlockDataset",
    "apply_lora",
    "causal_lm_dataset",
    "distillation_loss",
    "evaluate_causal_lm",
    "flatten_batch",
    "load_checkpoint",
    "mean_kl",
    "pack_documents",
    "per_document_loss",
    "per_token_loss",
    "register_peft_defaults",
    "save_checkpoint",
    "scored_positions",
    "sequence_ids_from_positions",
    "split_batch",
    "split_documents",
    "tokenize_documents",
    "train_loop",
    "training_arguments",
    "weighted_token_loss",
]
