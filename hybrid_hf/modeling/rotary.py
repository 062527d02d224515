"""Rotary position embeddings (RoPE) per attention layer type; NoPE layers take none."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from .configuration_hybrid import ATTENTION_LAYER_TYPES, HybridConfig


class HybridRotaryEmbedding(nn.Module):
    """RoPE tables per attention layer type (sliding layers may use their own base, as in Gemma3)."""

    def __init__(self, config: HybridConfig) -> None:
        super().__init__()
        self.layer_types = [
            t
            for t in ATTENTION_LAYER_TYPES
            if any(lt == t and pe == "rope" for lt, pe in zip(config.layer_types, config.position_encodings))
        ]
        self.attention_scaling: dict[str, float] = {}
        for t in self.layer_types:
            inv_freq, scaling = rope_inv_freq(config, config.rope_parameters[t])
            self.register_buffer(f"{t}_inv_freq", inv_freq, persistent=False)
            self.attention_scaling[t] = scaling

    @torch.no_grad()
    def forward(
        self, x: torch.Tensor, position_ids: torch.Tensor
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        out = {}
        for t in self.layer_types:
            inv_freq = getattr(self, f"{t}_inv_freq").to(device=x.device, dtype=torch.float32)
            freqs = position_ids[..., None].float() * inv_freq
            emb = torch.cat((freqs, freqs), dim=-1)
            scale = self.attention_scaling[t]
            out[t] = ((emb.cos() * scale).to(x.dtype), (emb.sin() * scale).to(x.dtype))
        return out


def rope_inv_freq(config: HybridConfig, params: dict[str, Any]) -> tuple[torch.Tensor, float]:
    dim = config.head_dim
    if params["rope_type"] == "default":
        base = params["rope_theta"]
        return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)), 1.0
    # Scaled RoPE types reuse transformers' formulas on a flat view of this layer type's parameters.
    view = SimpleNamespace(
        rope_parameters=params,
        head_dim=dim,
        hidden_size=config.hidden_size,
        num_attention_heads=config.num_attention_heads,
        max_position_embeddings=config.max_position_embeddings,
        partial_rotary_factor=1.0,
    )
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[params["rope_type"]](view, None)
    return inv_freq.float(), float(scaling)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate ``q``/``k`` of shape (batch, heads, seq, head_dim) by position tables of shape (batch, seq, head_dim)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
