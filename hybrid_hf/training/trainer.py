"""Thin helpers around ``transformers.Trainer`` and PEFT for hybrid_hf models (they work for any causal LM).

Nothing here is required: a hybrid_hf checkpoint trains with a plain ``Trainer`` like a Llama one. The helpers
bundle the choices the CLI and examples share: packed token blocks, small-run defaults, token-weighted evaluation,
and LoRA with the registered default targets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainingArguments, default_data_collator

from ..modeling.loss import IGNORE_INDEX, shift_labels, token_losses
from .packing import TokenBlockDataset, pack_documents, tokenize_documents


def causal_lm_dataset(
    tokenizer: PreTrainedTokenizerBase,
    documents: Sequence[str],
    block_size: int,
    *,
    reset_positions: bool = True,
) -> TokenBlockDataset:
    """Tokenize documents (each ending in eos) and pack them into rows of ``block_size`` tokens."""
    rows = pack_documents(
        tokenize_documents(tokenizer, documents),
        block_size,
        reset_positions=reset_positions,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        drop_last=True,
    )
    return TokenBlockDataset(rows)


def split_documents(documents: Sequence[str], eval_fraction: float, min_eval: int = 1) -> tuple[list[str], list[str]]:
    """Deterministic train/eval split: every ``round(1/eval_fraction)``-th document goes to eval."""
    docs = list(documents)
    if eval_fraction <= 0 or len(docs) < 2:
        return docs, []
    step = max(2, round(1 / eval_fraction))
    eval_docs = docs[step - 1 :: step] or docs[-min_eval:]
    eval_ids = {id(d) for d in eval_docs}
    return [d for d in docs if id(d) not in eval_ids], eval_docs


def training_arguments(output_dir: str, **overrides: Any) -> TrainingArguments:
    """TrainingArguments with defaults suited to small runs; any field can be overridden.

    ``gradient_checkpointing=True`` is passed under the name the installed transformers expects.
    """
    kwargs: dict[str, Any] = dict(
        output_dir=output_dir,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        learning_rate=1e-3,
        lr_scheduler_type="cosine",
        warmup_steps=10,
        weight_decay=0.1,
        max_grad_norm=1.0,
        logging_steps=10,
        save_strategy="steps",
        save_steps=100,
        eval_strategy="no",
        report_to="none",
        seed=0,
        data_seed=0,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
    )
    kwargs.update(overrides)
    # transformers >= 5.2x renamed gradient_checkpointing to activation_checkpointing (the old name warns).
    fields = TrainingArguments.__dataclass_fields__
    if "activation_checkpointing" in fields and "gradient_checkpointing" in kwargs:
        kwargs["activation_checkpointing"] = kwargs.pop("gradient_checkpointing")
    if not kwargs.get("activation_checkpointing", kwargs.get("gradient_checkpointing", True)):
        kwargs.pop("activation_checkpointing", None)
        kwargs.pop("gradient_checkpointing", None)
    if kwargs.get("eval_strategy", "no") != "no":
        kwargs.setdefault("eval_steps", kwargs.get("save_steps"))
    return TrainingArguments(**kwargs)


def apply_lora(
    model: PreTrainedModel,
    *,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target_modules: list[str] | str | None = None,
    task_type: str = "CAUSAL_LM",
):
    """Wrap ``model`` with LoRA adapters; ``target_modules=None`` uses the defaults registered for hybrid_hf."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, task_type=task_type)
    return get_peft_model(model, config)


@torch.no_grad()
def evaluate_causal_lm(model: torch.nn.Module, dataset: Dataset, batch_size: int = 8) -> dict[str, float]:
    """Token-weighted next-token loss and perplexity of ``model`` over ``dataset`` (rows with ``labels``)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=default_data_collator)
    total, tokens = 0.0, 0
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        labels = batch.pop("labels")
        logits = model(**batch, use_cache=False).logits
        total += float(token_losses(logits, labels, IGNORE_INDEX).sum())
        tokens += int((shift_labels(labels, IGNORE_INDEX) != IGNORE_INDEX).sum())
    model.train(was_training)
    if tokens == 0:
        raise ValueError("evaluate_causal_lm: the dataset has no scored tokens.")
    loss = total / tokens
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": tokens}
