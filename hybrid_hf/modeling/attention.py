"""The attention layer: grouped-query attention, full or sliding-window, RoPE or NoPE, optional QK-norm.

How it attends in a given forward (fused kernel, transformers' attention interface with a mask, or the static
cache's decode attention) is decided once per forward by ``attention_dispatch.resolve`` and handed in as a
``LayerPlan``; the layer only executes it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import Cache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .attention_dispatch import LayerPlan
from .attention_kernels import causal_attention
from .attention_triton_decode import flash_decode
from .configuration_hybrid import HybridConfig
from .norm import HybridRMSNorm
from .rotary import apply_rotary_pos_emb
from .static_cache import decode_attention


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    b, h, s, d = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    return hidden_states[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention; the window is carried by ``attention_mask`` (as for sdpa and flex)."""
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[..., : key.shape[-2]]
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return out, weights


class HybridAttention(nn.Module):
    """Multi-head (GQA) attention; full or sliding-window, RoPE or NoPE, optional QK-norm."""

    def __init__(self, config: HybridConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.layer_type = config.layer_types[layer_idx]
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        self.use_rope = config.layer_rope(layer_idx) is not None
        self.sliding_window = config.layer_window(layer_idx)
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)
        if config.use_qk_norm:
            self.q_norm = HybridRMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = HybridRMSNorm(self.head_dim, eps=config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def project_qkv(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None,
        qkv_weight: torch.Tensor | None = None,
        qkv_bias: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values as (B, H, T, D), QK-normed and rotated. ``qkv_weight`` (optional) is the three
        projections concatenated into one matrix (one matmul; used by the fused decode step)."""
        hidden_shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        if qkv_weight is None:
            q, k, v = self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states)
        else:
            kv_width = self.num_key_value_heads * self.head_dim
            q, k, v = nn.functional.linear(hidden_states, qkv_weight, qkv_bias).split(
                [self.num_heads * self.head_dim, kv_width, kv_width], dim=-1
            )
        q, k, v = q.view(hidden_shape), k.view(hidden_shape), v.view(hidden_shape).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        if self.use_rope:
            q, k = apply_rotary_pos_emb(q, k, *position_embeddings)
        return q, k, v

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None,
        plan: LayerPlan,
        cache: Cache | None = None,
        qkv_weight: torch.Tensor | None = None,
        qkv_bias: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        q, k, v = self.project_qkv(hidden_states, position_embeddings, qkv_weight, qkv_bias)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        weights = None
        if plan.kernel == "decode":
            out = decode_attention(q, k, v, plan.key_valid, self.scaling).transpose(1, 2)
        elif plan.kernel == "decode_triton":
            out = flash_decode(q, k, v, plan.key_valid, self.scaling).transpose(1, 2)
        elif plan.kernel != "interface":
            out = causal_attention(
                q, k, v, window=self.sliding_window, scale=self.scaling, kernel=plan.kernel,
                cu_seqlens=plan.cu_seqlens,
            )
        else:
            interface: Callable = (
                eager_attention_forward if plan.attn_implementation == "eager"
                else ALL_ATTENTION_FUNCTIONS.get_interface(plan.attn_implementation, eager_attention_forward)
            )
            out, weights = interface(
                self, q, k, v, plan.mask,
                dropout=self.attention_dropout if self.training else 0.0,
                scaling=self.scaling,
                sliding_window=self.sliding_window,
                **plan.interface_kwargs,
                **kwargs,
            )
        return self.o_proj(out.reshape(*input_shape, -1).contiguous()), weights
