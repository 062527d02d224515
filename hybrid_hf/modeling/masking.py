"""Masks and packed documents: the one rule for where a packed document starts, and the attention masks of the
transformers attention interface (causal, sliding window, padding, documents, receptive-field caps).

**Packed documents.** Rows without a padding mask and without a cached prefix are packed when their position ids
restart: a document starts at the start of every row and wherever the position id is 0 (the convention of
``DataCollatorWithFlattening`` and flash-attn's varlen kernels). Positions that jump without restarting
(``[0, 1, 2, 5, 6]``) stay one document: the gap is read as intended position ids, not as a boundary. Every kernel
(fused, masked, recurrent) reads the same ``cu_seqlens`` from ``packed_documents``; ``cu_seq_lens_q`` given by the
caller overrides it.

**Receptive-field caps** (eval-only, ``config.eval_*``) reach the masks through one hook, ``receptive_field_caps``,
which returns the extra mask function per attention layer type; the model core has no branch for them.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
from transformers.cache_utils import Cache
from transformers.masking_utils import and_masks, create_causal_mask, create_sliding_window_causal_mask

from .configuration_hybrid import HybridConfig


def document_ids_from_cu_seqlens(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Per-token document index (length ``total``) from cumulative sequence lengths ``[0, l0, l0+l1, ...]``."""
    positions = torch.arange(total, device=cu_seqlens.device)
    return torch.searchsorted(cu_seqlens[1:].contiguous(), positions, right=True)


def document_ids_from_position_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, T): index of the packed document of every token within its row (0 for the row's first document), by the
    rule of this module: a document starts at the row start and wherever the position id is 0."""
    restarts = (position_ids[:, 1:] == 0).long().cumsum(-1)
    return torch.nn.functional.pad(restarts, (1, 0))


def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> torch.Tensor | None:
    """Document boundaries of packed rows: a document starts at every row start and wherever the position id is 0.

    The rows are read as one flattened sequence (batch x length), as flash-attn's varlen kernels do. Returns int32
    ``cu_seqlens`` over that flattened sequence, or ``None`` when no row restarts its positions (plain batch).
    """
    rows, length = position_ids.shape
    restarts = position_ids[:, 1:] == 0
    if not bool(restarts.any()):
        return None
    starts = torch.zeros(rows, length, dtype=torch.bool, device=position_ids.device)
    starts[:, 0] = True
    starts[:, 1:] = restarts
    begin = starts.flatten().nonzero().flatten()
    end = torch.tensor([rows * length], device=begin.device, dtype=begin.dtype)
    return torch.cat([begin, end]).to(torch.int32)


def packed_documents(
    position_ids: torch.Tensor | None,
    batch_size: int,
    attention_mask: torch.Tensor | None,
    past_length: int,
    given: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """``cu_seqlens`` of this forward's packed documents (see the module docstring), or None."""
    if given is not None:
        return given
    if position_ids is None or attention_mask is not None or past_length > 0:
        return None
    return cu_seqlens_from_position_ids(position_ids.expand(batch_size, -1))


def _document_starts(cu_seqlens: torch.Tensor, batch_size: int, length: int) -> torch.Tensor:
    """(B, T): for each token, the in-row index where its document starts."""
    doc = document_ids_from_cu_seqlens(cu_seqlens, batch_size * length)
    row_offset = torch.arange(batch_size, device=doc.device).repeat_interleave(length) * length
    return (cu_seqlens[doc].long() - row_offset).view(batch_size, length)


def _same_document(doc: torch.Tensor) -> Callable:
    def same(batch_idx, head_idx, q_idx, kv_idx):
        return doc[batch_idx, q_idx] == doc[batch_idx, kv_idx]

    return same


# --------------------------------------------------------------------------- receptive-field caps (eval hook)
def receptive_field_cap(window: int, sinks: int, key_start: torch.Tensor | None = None) -> Callable:
    """Mask function keeping the last ``window`` keys (incl. self) plus the first ``sinks`` tokens.

    ANDed with the plain causal mask. ``key_start`` (B, K), when given, is the index from which each key's sinks are
    counted: the row's first real token (left padding) or its packed document's first token."""

    def cap(batch_idx: int, head_idx: int, q_idx: int, kv_idx: int) -> bool:
        first = kv_idx if key_start is None else kv_idx - key_start[batch_idx, kv_idx]
        return (kv_idx > q_idx - window) | (first < sinks)

    return cap


def receptive_field_caps(
    config: HybridConfig,
    implementation: str,
    attention_mask: torch.Tensor | None,
    past_length: int,
    documents: torch.Tensor | None,
    batch_size: int,
    length: int,
) -> dict[str, Callable]:
    """The hook through which ``config.eval_full_attention_window`` / ``eval_efficient_window`` /
    ``eval_attention_sink_size`` reach the masks: an extra mask function per capped attention layer type.

    A capped sliding layer is built on the plain causal mask (ANDing the cap into the sliding mask would drop sinks
    beyond the trained window); its local part never exceeds that window."""
    caps = {"full_attention": config.eval_full_attention_window, "sliding_attention": config.eval_efficient_window}
    if all(v is None for v in caps.values()):
        return {}
    if implementation.startswith("flash_attention"):
        raise ValueError(
            "eval_full_attention_window/eval_efficient_window (receptive-field caps) need "
            f"attn_implementation in {{'eager', 'sdpa', 'flex_attention'}}, not {implementation!r}."
        )
    sinks = config.eval_attention_sink_size
    if sinks and past_length > 0 and caps["sliding_attention"]:
        raise ValueError(
            "eval_attention_sink_size>0 with a capped sliding layer needs use_cache=False: the sliding "
            "cache has already dropped the sink tokens."
        )
    key_start = None  # sinks count from each row's first real token, or each packed document's first token
    if sinks and isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2:
        row_start = (attention_mask.cumsum(-1) == 0).sum(-1)
        key_start = row_start[:, None].expand(-1, attention_mask.shape[-1])
    elif sinks and documents is not None:
        key_start = _document_starts(documents, batch_size, length)
    out = {}
    for t, cap in caps.items():
        if cap:
            window = cap if t == "full_attention" else min(cap, config.sliding_window or cap)
            out[t] = receptive_field_cap(window, sinks, key_start)
    return out


# ----------------------------------------------------------------------------------- transformers masks
@functools.cache
def _cache_kwarg(mask_helper: Callable) -> str:
    """The name under which a transformers masking helper takes the cache (inspected once per helper)."""
    return "cache" if "cache" in inspect.signature(mask_helper).parameters else "past_key_values"


class _MaskConfig:
    """Read-only view of the model config with another ``_attn_implementation``: the mask format of eager attention
    (attention weights are computed there) without copying the config or writing transformers' private fields."""

    def __init__(self, config: HybridConfig, implementation: str) -> None:
        self._config = config
        self._attn_implementation = implementation

    def __getattr__(self, name: str) -> Any:
        return getattr(self._config, name)


def attention_masks(
    config: HybridConfig,
    implementation: str,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cache: Cache | None,
    past_length: int,
    documents: torch.Tensor | None,
) -> dict[str, Any]:
    """Masks per attention layer type in the format of ``implementation`` (transformers' masking utilities), with
    packed documents from ``documents`` and the receptive-field caps of ``receptive_field_caps``."""
    batch, length = inputs_embeds.shape[:2]
    mask_config = config if implementation == config._attn_implementation else _MaskConfig(config, implementation)
    caps = receptive_field_caps(config, implementation, attention_mask, past_length, documents, batch, length)
    extra_fns = []
    if documents is not None:
        extra_fns.append(_same_document(document_ids_from_cu_seqlens(documents, batch * length).view(batch, length)))
    # An empty cache carries no sizes; documents are handled above, so transformers need not see position ids.
    kwargs = {"config": mask_config, "inputs_embeds": inputs_embeds, "attention_mask": attention_mask,
              "position_ids": None}
    cache = cache if past_length > 0 else None
    masks: dict[str, Any] = {}
    for t in ("full_attention", "sliding_attention"):
        if t not in config.layer_types:
            continue
        fns = ([caps[t]] if t in caps else []) + extra_fns
        helper = create_sliding_window_causal_mask if t == "sliding_attention" and t not in caps else create_causal_mask
        # the cache layer that sizes the mask is named explicitly: older transformers picked the first non-sliding
        # layer, which may be a recurrent one
        extra = {"layer_idx": config.layer_types.index(t), _cache_kwarg(helper): cache}
        if fns:
            extra["and_mask_function"] = fns[0] if len(fns) == 1 else and_masks(*fns)
        masks[t] = helper(**kwargs, **extra)
    return masks
