"""Rotary position embeddings per attention layer type, for every ``rope_type`` transformers implements.

Inverse frequencies come from transformers' own ``ROPE_INIT_FUNCTIONS`` (``default`` is the plain formula), so a
hybrid layer rotates exactly as a stock transformers model with the same ``rope_parameters`` does. The two types
whose frequencies depend on the sequence length follow ``dynamic_rope_update``: ``dynamic`` (NTK) recomputes them
from ``max(position_ids) + 1`` once that exceeds ``max_position_embeddings``, ``longrope`` switches from
``short_factor`` to ``long_factor`` beyond ``original_max_position_embeddings``. Both are selected with tensor ops
only (no host sync, no buffer reassignment), so the forward can be compiled and replayed as a CUDA graph.

Shipped as Hub remote code next to ``modeling_hybrid.py``: imports only torch, transformers and relative modules.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from .configuration_hybrid import ATTENTION_LAYER_TYPES, HybridConfig


class _FlatRopeConfig:
    """One attention layer type's RoPE parameters, seen as the flat config that ``ROPE_INIT_FUNCTIONS`` read.

    Flat on purpose: transformers' functions read some keys (yarn's ``truncate``) from the top level of
    ``config.rope_parameters`` even for per-layer-type dicts, which a stock flat config gets right."""

    def __init__(self, config: HybridConfig, params: dict[str, Any]) -> None:
        self.rope_parameters = params
        self.head_dim = config.head_dim
        self.hidden_size = config.hidden_size
        self.num_attention_heads = config.num_attention_heads
        self.max_position_embeddings = config.max_position_embeddings

    def standardize_rope_params(self) -> None:
        """Nothing to do: ``HybridConfig`` stores its RoPE parameters standardised and validated."""


def rope_inv_freq(
    config: HybridConfig, params: dict[str, Any], seq_len: int | None = None
) -> tuple[torch.Tensor, float]:
    """Inverse frequencies (fp32, ``rotary_dim // 2`` entries) and the cos/sin scaling of one layer type's RoPE
    parameters, as transformers computes them for a sequence of ``seq_len`` tokens (``None``: at construction)."""
    if params["rope_type"] == "default":
        dim = int(config.head_dim * params.get("partial_rotary_factor", 1.0))
        base = params["rope_theta"]
        return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)), 1.0
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[params["rope_type"]](
        _FlatRopeConfig(config, params), None, seq_len=seq_len
    )
    return inv_freq.float(), float(scaling)


class HybridRotaryEmbedding(nn.Module):
    """cos/sin tables per attention layer type that uses RoPE (sliding layers may have their own base and scaling,
    as in Gemma3); NoPE-only layer types get none."""

    def __init__(self, config: HybridConfig) -> None:
        super().__init__()
        # As transformers' RoPE functions do: per-layer-type form, defaults and validation, also for parameters
        # assigned after construction (`config.rope_scaling = ...` only standardises from transformers 5.24 on).
        config.standardize_rope_params()
        self.config = config
        self.layer_types = [
            t
            for t in ATTENTION_LAYER_TYPES
            if any(lt == t and pe == "rope" for lt, pe in zip(config.layer_types, config.position_encodings))
        ]
        self.rope_type = {t: config.rope_parameters[t]["rope_type"] for t in self.layer_types}
        self.attention_scaling: dict[str, float] = {}
        for name, table in self._tables().items():
            self.register_buffer(name, table, persistent=False)

    def _tables(self) -> dict[str, torch.Tensor]:
        """Buffers by name: ``<type>_inv_freq`` (frequencies at construction: the original ones for ``dynamic``,
        the short ones for ``longrope``) and ``<type>_long_inv_freq`` (``longrope``)."""
        tables = {}
        for t in self.layer_types:
            params = self.config.rope_parameters[t]
            tables[f"{t}_inv_freq"], self.attention_scaling[t] = rope_inv_freq(self.config, params)
            if self.rope_type[t] == "longrope":
                # What transformers computes for any length beyond the original one
                long_len = params["original_max_position_embeddings"] + 1
                tables[f"{t}_long_inv_freq"], _ = rope_inv_freq(self.config, params, seq_len=long_len)
        return tables

    @torch.no_grad()
    def reset_inv_freq(self) -> None:
        """Recompute the (non-persistent) frequency buffers, e.g. after the module was created on the meta device."""
        for name, table in self._tables().items():
            getattr(self, name).copy_(table)

    def _inv_freq(self, t: str, seq_len: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        inv_freq = getattr(self, f"{t}_inv_freq").to(device=device, dtype=torch.float32)
        params = self.config.rope_parameters[t]
        if self.rope_type[t] == "longrope":
            long_inv_freq = getattr(self, f"{t}_long_inv_freq").to(device=device, dtype=torch.float32)
            return torch.where(seq_len > params["original_max_position_embeddings"], long_inv_freq, inv_freq)
        if self.rope_type[t] == "dynamic":
            # transformers' `_compute_dynamic_ntk_parameters` for a tensor `seq_len`, in the same fp32 operations,
            # written out because that function creates a tensor from a Python number (not capturable in a graph).
            max_len = self.config.max_position_embeddings
            factor = params["factor"]
            dim = int(self.config.head_dim * params.get("partial_rotary_factor", 1.0))
            base = params["rope_theta"] * ((factor * seq_len / max_len) - (factor - 1)) ** (dim / (dim - 2))
            exponent = torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim
            # Up to max_position_embeddings the original frequencies (transformers resets to them there)
            return torch.where(seq_len > max_len, 1.0 / (base ** exponent), inv_freq)
        return inv_freq

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``(cos, sin)`` of shape (batch, seq, rotary_dim) in ``x``'s dtype, by layer type. The length that
        ``dynamic``/``longrope`` scale by is ``max(position_ids) + 1``, as in transformers."""
        by_length = any(self.rope_type[t] in ("dynamic", "longrope") for t in self.layer_types)
        seq_len = position_ids.max() + 1 if by_length else None
        out = {}
        for t in self.layer_types:
            freqs = position_ids[..., None].float() * self._inv_freq(t, seq_len, x.device)
            emb = torch.cat((freqs, freqs), dim=-1)
            scale = self.attention_scaling[t]
            out[t] = ((emb.cos() * scale).to(x.dtype), (emb.sin() * scale).to(x.dtype))
        return out


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``(x1, x2) -> (-x2, x1)`` on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate ``q``/``k`` of shape (batch, heads, seq, head_dim) by position tables of shape (batch, seq, rotary_dim).

    With ``partial_rotary_factor < 1`` (``rotary_dim < head_dim``) only the first ``rotary_dim`` channels rotate,
    the rest pass through (the layout transformers' partial-rotary models use)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    rotary_dim = cos.shape[-1]
    if rotary_dim == q.shape[-1]:
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
    q_rot, q_pass = q[..., :rotary_dim], q[..., rotary_dim:]
    k_rot, k_pass = k[..., :rotary_dim], k[..., rotary_dim:]
    q_rot = q_rot * cos + rotate_half(q_rot) * sin
    k_rot = k_rot * cos + rotate_half(k_rot) * sin
    return torch.cat((q_rot, q_pass), dim=-1), torch.cat((k_rot, k_pass), dim=-1)


__all__ = ["HybridRotaryEmbedding", "apply_rotary_pos_emb", "rope_inv_freq", "rotate_half"]
