"""Recurrent sequence mixers served by ``"linear_attention"`` layers.

- ``gated_deltanet``: Gated DeltaNet as in Qwen3-Next / fla — short conv on q, k, v; L2-normalised q/k; gated delta
  rule with decay ``-exp(A_log) * softplus(a + dt_bias)`` and ``beta = sigmoid(b)``; gated RMSNorm output.
- ``mamba2``: Mamba-2 SSD — one input projection to (z, x, B, C, dt); short conv on (x, B, C); scalar per-head
  decay ``dt * A``; skip ``D``; gated RMSNorm ``norm(y * silu(z))``.
- ``lightning``: Lightning attention as in MiniMax-01 — SiLU q, k, v; linear attention with a fixed per-head
  exponential decay (ALiBi-style slopes scaled by depth); RMSNorm, sigmoid output gate.

Maths: ``linear_attention_ops`` (PyTorch reference, chunked + recurrent); ``linear_attention_dispatch`` picks it or, on CUDA,
flash-linear-attention (fla) kernels when installed (imported lazily, never needed for loading). Decode state lives
in transformers' ``LinearAttentionLayer`` (conv + recurrent state, O(1) per layer). Packed documents (``cu_seqlens``) reset the
state and the conv at every document start; left padding is neutralised (no decay, no update on pad tokens).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import Cache

from .configuration_hybrid import HybridConfig
from .linear_attention_dispatch import gated_delta_attention, scalar_decay_attention
from .linear_attention_ops import causal_conv1d, l2_normalize


# ---------------------------------------------------------------------------------------------- modules
class GatedRMSNorm(nn.Module):
    """RMSNorm over the last dim, then multiplied by ``act(gate)`` (``norm_before_gate``) or normalising
    ``x * act(gate)`` (Mamba-2's order)."""

    def __init__(self, dim: int, eps: float, norm_before_gate: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.norm_before_gate = norm_before_gate

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        if not self.norm_before_gate:
            x = x * F.silu(gate.float())
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()
        if self.norm_before_gate:
            x = x * F.silu(gate.float())
        return x.to(dtype)


class _RecurrentMixer(nn.Module):
    """Shared plumbing: padding, packed documents, cache read/write and the short convolution."""

    def __init__(self, config: HybridConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.hidden_size = config.hidden_size
        self.conv_size = config.linear_conv_kernel_size
        self.chunk_size = config.linear_chunk_size
        self.num_heads = config.linear_num_heads
        self.head_dim = config.linear_head_dim
        self.value_dim = int(round(config.linear_head_dim * config.linear_expand_v))

    # -- helpers used by subclasses
    def _conv(self, x: torch.Tensor, weight: torch.Tensor, cache, cu_seqlens) -> torch.Tensor:
        """Causal depthwise conv of (B, T, C) with state continuation (cache) or per-document resets (packed)."""
        xt = x.transpose(1, 2)
        if cu_seqlens is not None:
            flat = xt.transpose(0, 1).reshape(xt.shape[1], 1, -1).transpose(0, 1)  # (1, C, B*T)
            bounds = cu_seqlens.tolist()
            pieces = [causal_conv1d(flat[..., s:e], weight) for s, e in zip(bounds[:-1], bounds[1:])]
            out = torch.cat(pieces, dim=-1).reshape(xt.shape[1], x.shape[0], -1).transpose(0, 1)
            return out.transpose(1, 2)
        left = None
        if cache is not None:
            full = cache.update_conv_state(xt, self.layer_idx, conv_kernel_size=self.conv_size - 1)
            left = full[..., : full.shape[-1] - xt.shape[-1]]
        return causal_conv1d(xt, weight, left).transpose(1, 2)

    def _initial_state(self, cache) -> torch.Tensor | None:
        if cache is None:
            return None
        layer = cache.layers[self.layer_idx]
        if not layer.is_recurrent_states_initialized[0]:
            return None
        return layer.recurrent_states[0]


    @staticmethod
    def _flatten(t: torch.Tensor | None, cu) -> torch.Tensor | None:
        """(B, T, ...) -> (1, B*T, ...) for packed rows."""
        if t is None or cu is None or t.shape[0] == 1:
            return t
        return t.reshape(1, t.shape[0] * t.shape[1], *t.shape[2:])

    def reset_mixer_parameters(self) -> None:
        """Mixer-specific initialisation (decay parameters); linear layers are initialised by the model."""

    @torch.no_grad()
    def _init_decay_and_conv(self) -> None:
        """Mamba-style decay init shared by GDN and Mamba-2: ``A ~ U[1, 16]``, ``dt ~ logU[1e-3, 1e-1]`` stored as
        its inverse softplus in ``dt_bias``; Kaiming-uniform short-conv weights."""
        self.A_log.copy_(torch.log(torch.empty_like(self.A_log).uniform_(1, 16)))
        dt = torch.exp(torch.empty_like(self.dt_bias).uniform_(math.log(1e-3), math.log(1e-1))).clamp(min=1e-4)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        nn.init.kaiming_uniform_(self.conv_weight, a=math.sqrt(5))

    def _inputs(self, hidden_states, attention_mask, past_key_values, cu_seqlens):
        """``(x, valid, cache)``: inputs with pad tokens zeroed, the (B, T) real-token mask or None, and the cache to
        use: packed documents (``cu_seqlens``) start from zero state, so they neither read nor write the cache (the
        model only reports packing when the cache holds no earlier tokens)."""
        cache = None if cu_seqlens is not None else past_key_values
        valid = self._valid(attention_mask, hidden_states)
        return (hidden_states if valid is None else hidden_states * valid[..., None]), valid, cache

    def _valid(self, attention_mask: torch.Tensor | None, hidden: torch.Tensor) -> torch.Tensor | None:
        """(B, T) float mask of real tokens for this call, or None when there is no padding."""
        if attention_mask is None or attention_mask.dim() != 2:
            return None
        mask = attention_mask[:, -hidden.shape[1] :].to(hidden.dtype)
        return None if bool(mask.all()) else mask


class GatedDeltaNetMixer(_RecurrentMixer):
    """Gated DeltaNet token mixer (see module docstring)."""

    def __init__(self, config: HybridConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        d, h, dk, dv = self.hidden_size, self.num_heads, self.head_dim, self.value_dim
        self.q_proj = nn.Linear(d, h * dk, bias=False)
        self.k_proj = nn.Linear(d, h * dk, bias=False)
        self.v_proj = nn.Linear(d, h * dv, bias=False)
        self.g_proj = nn.Linear(d, h * dv, bias=False)  # output gate
        self.a_proj = nn.Linear(d, h, bias=False)  # decay
        self.b_proj = nn.Linear(d, h, bias=False)  # beta
        self.conv_weight = nn.Parameter(torch.empty(h * (2 * dk + dv), self.conv_size))
        self.A_log = nn.Parameter(torch.empty(h))
        self.dt_bias = nn.Parameter(torch.empty(h))
        self.o_norm = GatedRMSNorm(dv, config.rms_norm_eps, norm_before_gate=True)
        self.o_proj = nn.Linear(h * dv, d, bias=False)
        self.reset_mixer_parameters()

    @torch.no_grad()
    def reset_mixer_parameters(self) -> None:
        self._init_decay_and_conv()

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        cu_seqlens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, t, _ = hidden_states.shape
        h, dk, dv = self.num_heads, self.head_dim, self.value_dim
        x, valid, cache = self._inputs(hidden_states, attention_mask, past_key_values, cu_seqlens)
        qkv = torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)
        qkv = self._conv(qkv, self.conv_weight, cache, cu_seqlens)
        q, k, v = torch.split(qkv, [h * dk, h * dk, h * dv], dim=-1)
        q = l2_normalize(q.reshape(b, t, h, dk)) * dk**-0.5
        k = l2_normalize(k.reshape(b, t, h, dk))
        v = v.reshape(b, t, h, dv)
        g = -self.A_log.float().exp() * F.softplus(self.a_proj(x).float() + self.dt_bias.float())
        beta = torch.sigmoid(self.b_proj(x).float())
        if valid is not None:  # pad tokens: no decay, no update
            g, beta = g * valid[..., None], beta * valid[..., None]
        args = [self._flatten(z, cu_seqlens) for z in (q, k, v, g, beta)]
        o, state = gated_delta_attention(*args, initial_state=self._initial_state(cache), cu_seqlens=cu_seqlens,
                                         chunk_size=self.chunk_size)
        if cache is not None:
            cache.update_recurrent_state(state, self.layer_idx)
        o = o.reshape(b, t, h, dv)
        o = self.o_norm(o, self.g_proj(x).reshape(b, t, h, dv))
        return self.o_proj(o.reshape(b, t, h * dv))


class Mamba2Mixer(_RecurrentMixer):
    """Mamba-2 (SSD) token mixer (see module docstring); one B/C group shared by all heads."""

    def __init__(self, config: HybridConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        d, h, p, n = self.hidden_size, self.num_heads, self.head_dim, config.linear_state_size
        self.state_size = n
        inner = h * p
        self.in_proj = nn.Linear(d, 2 * inner + 2 * n + h, bias=False)  # z, x, B, C, dt
        self.conv_weight = nn.Parameter(torch.empty(inner + 2 * n, self.conv_size))
        self.A_log = nn.Parameter(torch.empty(h))
        self.dt_bias = nn.Parameter(torch.empty(h))
        self.D = nn.Parameter(torch.ones(h))
        self.norm = GatedRMSNorm(inner, config.rms_norm_eps, norm_before_gate=False)
        self.out_proj = nn.Linear(inner, d, bias=False)
        self.reset_mixer_parameters()

    @torch.no_grad()
    def reset_mixer_parameters(self) -> None:
        self._init_decay_and_conv()
        self.D.fill_(1.0)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        cu_seqlens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, t, _ = hidden_states.shape
        h, p, n = self.num_heads, self.head_dim, self.state_size
        inner = h * p
        x_in, valid, cache = self._inputs(hidden_states, attention_mask, past_key_values, cu_seqlens)
        z, xbc, dt = torch.split(self.in_proj(x_in), [inner, inner + 2 * n, h], dim=-1)
        xbc = self._conv(xbc, self.conv_weight, cache, cu_seqlens)
        x, bmat, cmat = torch.split(xbc, [inner, n, n], dim=-1)
        dt = F.softplus(dt.float() + self.dt_bias.float())  # (B, T, H)
        if valid is not None:
            dt = dt * valid[..., None]
        g = dt * -self.A_log.float().exp()
        x = x.reshape(b, t, h, p)
        q = cmat[:, :, None, :].expand(b, t, h, n)
        k = bmat[:, :, None, :].expand(b, t, h, n)
        v = x * dt[..., None].to(x.dtype)
        args = [self._flatten(z_, cu_seqlens) for z_ in (q, k, v, g)]
        y, state = scalar_decay_attention(*args, initial_state=self._initial_state(cache), cu_seqlens=cu_seqlens,
                                          chunk_size=self.chunk_size)
        if cache is not None:
            cache.update_recurrent_state(state, self.layer_idx)
        y = y.reshape(b, t, h, p) + x * self.D[:, None].to(x.dtype)
        y = self.norm(y.reshape(b, t, inner), z)
        return self.out_proj(y)


def lightning_slopes(num_heads: int, layer_idx: int, num_layers: int) -> torch.Tensor:
    """MiniMax-01 decay rates: ALiBi slopes ``2^(-8(h+1)/H)`` scaled by ``1 - l/(L-1)`` (+1e-5)."""
    slopes = torch.tensor([2 ** (-8 * (i + 1) / num_heads) for i in range(num_heads)])
    depth = 1 - layer_idx / max(num_layers - 1, 1) + 1e-5
    return slopes * depth


class LightningMixer(_RecurrentMixer):
    """Lightning attention token mixer (see module docstring)."""

    def __init__(self, config: HybridConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        d, h, dh = self.hidden_size, self.num_heads, self.head_dim
        self.q_proj = nn.Linear(d, h * dh, bias=False)
        self.k_proj = nn.Linear(d, h * dh, bias=False)
        self.v_proj = nn.Linear(d, h * dh, bias=False)
        self.g_proj = nn.Linear(d, h * dh, bias=False)
        self.o_norm = nn.Parameter(torch.ones(h * dh))
        self.o_proj = nn.Linear(h * dh, d, bias=False)
        self.register_buffer("slopes", lightning_slopes(h, layer_idx, config.num_hidden_layers), persistent=False)

    @torch.no_grad()
    def reset_mixer_parameters(self) -> None:
        self.slopes.copy_(lightning_slopes(self.num_heads, self.layer_idx, self.config.num_hidden_layers))

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        cu_seqlens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, t, _ = hidden_states.shape
        h, dh = self.num_heads, self.head_dim
        x, valid, cache = self._inputs(hidden_states, attention_mask, past_key_values, cu_seqlens)
        q = F.silu(self.q_proj(x)).reshape(b, t, h, dh)
        k = F.silu(self.k_proj(x)).reshape(b, t, h, dh)
        v = F.silu(self.v_proj(x)).reshape(b, t, h, dh)
        g = (-self.slopes.float()).expand(b, t, h)
        if valid is not None:
            g = g * valid[..., None]
            k = k * valid[..., None, None]
        args = [self._flatten(z, cu_seqlens) for z in (q, k, v, g)]
        o, state = scalar_decay_attention(*args, initial_state=self._initial_state(cache), cu_seqlens=cu_seqlens,
                                          chunk_size=self.chunk_size)
        if cache is not None:
            cache.update_recurrent_state(state, self.layer_idx)
        o = o.reshape(b, t, h * dh).float()
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + self.config.rms_norm_eps) * self.o_norm.float()
        o = o.to(x.dtype) * torch.sigmoid(self.g_proj(x))
        return self.o_proj(o)


LINEAR_MIXERS: dict[str, type[nn.Module]] = {
    "gated_deltanet": GatedDeltaNetMixer,
    "mamba2": Mamba2Mixer,
    "lightning": LightningMixer,
}


def build_linear_mixer(config: HybridConfig, layer_idx: int) -> nn.Module:
    """Instantiate the recurrent mixer chosen by ``config.linear_attention_type`` for layer ``layer_idx``."""
    kind = config.linear_attention_type
    if kind not in LINEAR_MIXERS:
        raise ValueError(
            f"HybridConfig: `linear_attention_type`={kind!r} for layer {layer_idx}; allowed: {', '.join(LINEAR_MIXERS)}."
        )
    return LINEAR_MIXERS[kind](config, layer_idx)
