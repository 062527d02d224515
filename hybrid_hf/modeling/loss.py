"""Next-token (shifted) cross-entropy: the one place that shifts labels, used by the model's loss, its fused
chunked variant, training and evaluation.

Label ``t`` of a row is the token position ``t`` predicts the *next* token of: position ``t`` is scored against
``labels[t + 1]``, the last position against nothing. ``ignore_index`` (-100) marks labels that are not scored.
A batch whose labels are all ignored has loss 0 (not 0/0 = nan), and its backward gives zero gradients.
"""

from __future__ import annotations

import torch
import torch.utils.checkpoint
from torch import nn

IGNORE_INDEX = -100


def shift_labels(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """The label each position is scored against: ``labels[..., t + 1]``, and ``ignore_index`` for the last one."""
    return nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]


def token_losses(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Per-position next-token loss in fp32, shaped like ``labels`` (0 where the shifted label is ignored)."""
    targets = shift_labels(labels, ignore_index).to(logits.device)
    return nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=ignore_index,
        reduction="none",
    ).view_as(targets)


def _normalise(
    total: torch.Tensor, targets: torch.Tensor, ignore_index: int, num_items_in_batch: torch.Tensor | int | None
) -> torch.Tensor:
    """Mean over scored tokens (or sum / ``num_items_in_batch``, as transformers' Trainer asks under gradient
    accumulation); a count of 0 divides by 1, so an all-ignored batch gives 0 and zero gradients, never nan."""
    if num_items_in_batch is None:
        return total / (targets != ignore_index).sum().clamp(min=1)
    if torch.is_tensor(num_items_in_batch):
        return total / num_items_in_batch.to(total.device).clamp(min=1)
    return total / max(num_items_in_batch, 1)


def causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = IGNORE_INDEX,
    shift_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """transformers' ``ForCausalLMLoss`` (fp32 logits, labels shifted inside unless ``shift_labels`` is given)."""
    targets = _shifted(labels, ignore_index, shift_labels).reshape(-1).to(logits.device)
    total = nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets, ignore_index=ignore_index, reduction="sum"
    )
    return _normalise(total, targets, ignore_index, num_items_in_batch)


def chunked_cross_entropy(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = IGNORE_INDEX,
    shift_labels: torch.Tensor | None = None,
    chunk_tokens: int = 4096,
) -> torch.Tensor:
    """``causal_lm_loss`` of ``hidden_states @ weight.T`` without materialising all logits.

    Each chunk's logits are recomputed in backward (activation checkpointing), so peak memory holds one chunk of
    ``chunk_tokens`` x vocab logits instead of all of them.
    """
    h = hidden_states.reshape(-1, hidden_states.shape[-1])
    y = _shifted(labels, ignore_index, shift_labels).reshape(-1).to(h.device)

    def chunk_loss(h_chunk: torch.Tensor, y_chunk: torch.Tensor) -> torch.Tensor:
        logits = (h_chunk @ weight.T).float()
        return nn.functional.cross_entropy(logits, y_chunk, ignore_index=ignore_index, reduction="sum")

    total = h.new_zeros((), dtype=torch.float32)
    for start in range(0, h.shape[0], chunk_tokens):
        hc, yc = h[start : start + chunk_tokens], y[start : start + chunk_tokens]
        if torch.is_grad_enabled() and h.requires_grad:
            total = total + torch.utils.checkpoint.checkpoint(chunk_loss, hc, yc, use_reentrant=False)
        else:
            total = total + chunk_loss(hc, yc)
    return _normalise(total, y, ignore_index, num_items_in_batch)


def _shifted(labels: torch.Tensor, ignore_index: int, given: torch.Tensor | None) -> torch.Tensor:
    return shift_labels(labels, ignore_index) if given is None else given
