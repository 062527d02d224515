"""Input checks at the model entry: shapes always, token-id ranges with one reduction outside compiled code."""

from __future__ import annotations

from typing import Any

import torch
from transformers.utils import logging

from .configuration_hybrid import HybridConfig

logger = logging.get_logger(__name__)


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def validate_inputs(
    config: HybridConfig,
    input_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
    attention_mask: Any,
    position_ids: torch.Tensor | None,
    past_length: int,
) -> None:
    """Check the model inputs once, at the model entry, with errors naming the argument and the expected shape.

    Shapes are checked always (host-side, free). Token ids are range-checked with one min/max reduction, skipped while
    ``torch.compile`` traces or a CUDA graph is being captured (a host read is impossible there; a compiled or
    graph-replayed decode step gets its ids from an earlier, checked step). Positions beyond
    ``max_position_embeddings`` are allowed (length extrapolation is what NoPE and sliding-window layers are studied
    for) and logged once: RoPE layers were not trained there."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("HybridModel.forward: pass exactly one of `input_ids` or `inputs_embeds`.")
    if input_ids is not None:
        if input_ids.dim() != 2:
            raise ValueError(
                f"`input_ids` has shape {_shape(input_ids)}; expected (batch_size, sequence_length) "
                f"(a single sequence is `input_ids[None]`)."
            )
        if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
            raise ValueError(f"`input_ids` has dtype {input_ids.dtype}; expected an integer dtype (torch.long).")
        batch, length = input_ids.shape
        name, given = "input_ids", input_ids
    else:
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != config.hidden_size:
            raise ValueError(
                f"`inputs_embeds` has shape {_shape(inputs_embeds)}; expected (batch_size, sequence_length, "
                f"hidden_size={config.hidden_size})."
            )
        batch, length = inputs_embeds.shape[:2]
        name, given = "inputs_embeds", inputs_embeds
    if batch == 0 or length == 0:
        raise ValueError(f"`{name}` has shape {_shape(given)}: empty; expected at least one row of at least one token.")
    if isinstance(attention_mask, torch.Tensor):
        expected = (batch, past_length + length)
        if attention_mask.dim() == 2 and _shape(attention_mask) != expected:
            raise ValueError(
                f"`attention_mask` has shape {_shape(attention_mask)}; expected {expected} (batch_size, cached + new "
                f"tokens = {past_length} + {length})."
            )
        if attention_mask.dim() == 4 and attention_mask.shape[0] not in (1, batch):
            raise ValueError(
                f"`attention_mask` has shape {_shape(attention_mask)}; a 4D mask must have batch size 1 or {batch}."
            )
        if attention_mask.dim() not in (2, 4):
            raise ValueError(
                f"`attention_mask` has shape {_shape(attention_mask)}; expected {expected} (a 2D padding mask) or a "
                f"4D mask (batch_size, 1, {length}, key_length)."
            )
    if position_ids is not None and (position_ids.dim() != 2 or position_ids.shape[0] not in (1, batch)
                                     or position_ids.shape[1] != length):
        raise ValueError(
            f"`position_ids` has shape {_shape(position_ids)}; expected ({batch}, {length}) or (1, {length})."
        )
    if torch.compiler.is_compiling() or (given.is_cuda and torch.cuda.is_current_stream_capturing()):
        return
    checks = []
    if input_ids is not None:
        checks += [input_ids.min(), input_ids.max()]
    if position_ids is not None:
        checks.append(position_ids.max().to(checks[0].dtype if checks else position_ids.dtype))
    values = torch.stack(checks).tolist() if checks else []
    if input_ids is not None:
        low, high = values[0], values[1]
        if low < 0 or high >= config.vocab_size:
            bad = low if low < 0 else high
            raise ValueError(
                f"`input_ids` contains the id {bad}; token ids must lie in [0, vocab_size={config.vocab_size})."
            )
    last_position = values[-1] if position_ids is not None else past_length + length - 1
    if last_position >= config.max_position_embeddings:
        logger.warning_once(
            f"hybrid_hf: positions reach beyond max_position_embeddings={config.max_position_embeddings}; RoPE "
            "layers were not trained there (NoPE and sliding-window layers extrapolate by design)."
        )
