"""Preallocated decode cache: full layers hold ``max_length`` keys, sliding layers a ring of exactly ``W`` keys.

Every tensor has a fixed address and shape, so one decode step can be captured in a CUDA graph (see
``HybridForCausalLM.decode_step`` and ``hybrid_hf.generation``). Recurrent layers use transformers'
``LinearAttentionLayer`` (O(1) conv + recurrent state, updated in place). Prompts are prefilled in chunks: a chunk
attends to the cached prefix (lower-right causal for full layers; the last ``W - 1`` cached keys for sliding
layers), so a 128k-token prompt never forms a 128k x 128k score matrix.

The cache owns its position counter: ``update`` writes a layer's new keys at the current position, and the last
attention layer's ``update`` advances it (on the host for a prefill chunk; on the device, without host
synchronisation, for a one-token decode step, so a captured graph advances it at every replay).

Rows of a batch must have equal lengths (no padding): positions are shared by the whole batch.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, LinearAttentionLayer

from .configuration_hybrid import HybridConfig

DECODE_KERNELS = ("torch", "triton")
DECODE_SPLIT = 1024  # keys per split-K part of the decode attention; full-layer decode buffers round up to it


def decode_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor, scale: float,
    split_size: int = DECODE_SPLIT,
) -> torch.Tensor:
    """One query per row against a preallocated key buffer (the decode step of ``HybridStaticCache``).

    ``q`` is (B, Hq, 1, D); ``keys``/``values`` are (B, Hkv, T, D) with Hq a multiple of Hkv (grouped-query heads are
    rows of one matmul, never repeated keys); ``valid`` (T,) marks the filled slots. Scores follow transformers' eager
    attention numerics (QK^T in the input dtype, softmax in fp32). The probability-value product is split along T
    into ``split_size`` chunks that run as separate batches and are summed in fp32 (split-K), so a 32k-key buffer
    at batch 1 still spreads over the whole GPU. Returns (B, Hq, 1, D).
    """
    b, hq, _, d = q.shape
    hkv, t = keys.shape[1], keys.shape[2]
    g = hq // hkv
    scores = torch.matmul(q.reshape(b, hkv, g, d), keys.transpose(-1, -2)).float() * scale
    probs = torch.softmax(scores.masked_fill(~valid, float("-inf")), dim=-1).to(values.dtype)
    if t > split_size and t % split_size == 0:
        n = t // split_size
        parts = torch.matmul(probs.view(b, hkv, g, n, split_size).transpose(2, 3),
                             values.view(b, hkv, n, split_size, d))
        out = parts.float().sum(2).to(q.dtype)
    else:
        out = torch.matmul(probs, values)
    return out.reshape(b, hq, 1, d)


class _StaticAttentionLayer(CacheLayerMixin):
    """Keys/values of one attention layer: a flat buffer (full) or a ring indexed by ``position % W`` (sliding)."""

    is_sliding = False

    def __init__(self, batch_size: int, num_kv_heads: int, head_dim: int, capacity: int, window: int | None,
                 device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.window = window
        self.is_sliding = window is not None
        self.capacity = capacity
        shape = (batch_size, num_kv_heads, capacity, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.is_initialized = True
        self.slots = torch.arange(capacity, device=device)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        return None

    def get_seq_length(self) -> int:
        return 0

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.capacity, 0

    def get_max_length(self) -> int:
        return self.capacity

    def _slot(self, positions: torch.Tensor) -> torch.Tensor:
        return positions % self.capacity if self.is_sliding else positions

    def write(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor) -> None:
        if self.is_sliding and positions.numel() > self.capacity:
            positions, k, v = positions[-self.capacity :], k[:, :, -self.capacity :], v[:, :, -self.capacity :]
        slot = self._slot(positions)
        self.keys.index_copy_(2, slot, k)
        self.values.index_copy_(2, slot, v)

    def prefill(self, k: torch.Tensor, v: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Write a chunk at ``start``; returns the keys/values it attends to (its queries are the last ones)."""
        positions = torch.arange(start, start + k.shape[2], device=k.device)
        if self.is_sliding:
            prev = self._slot(torch.arange(max(0, start - self.window + 1), start, device=k.device))
            keys = torch.cat([self.keys.index_select(2, prev), k], dim=2)
            values = torch.cat([self.values.index_select(2, prev), v], dim=2)
            self.write(k, v, positions)
            return keys, values
        self.write(k, v, positions)
        return self.keys[:, :, : start + k.shape[2]], self.values[:, :, : start + k.shape[2]]

    def update(self, key_states, value_states, *args, **kwargs):  # the cache-level `update` knows the position
        raise RuntimeError("HybridStaticCache layers are written through HybridStaticCache.update.")


class HybridStaticCache(Cache):
    """Fixed-size cache for fast generation (see module docstring).

    Args:
        config: the model's ``HybridConfig``.
        batch_size: rows decoded together (equal prompt lengths).
        max_length: prompt plus new tokens; full-attention layers preallocate this many keys (rounded up to whole
            decode splits).
        device, dtype: where and how keys/values live.
        decode_kernel: attention of a one-token step: ``"torch"`` (``decode_attention``, compiled by inductor when the
            decode layers are) or ``"triton"`` (``attention_triton_decode.flash_decode``, CUDA).
    """

    def __init__(self, config: HybridConfig, batch_size: int, max_length: int, device: torch.device | str,
                 dtype: torch.dtype, decode_kernel: str = "torch") -> None:
        if decode_kernel not in DECODE_KERNELS:
            raise ValueError(f"HybridStaticCache: decode_kernel={decode_kernel!r}; allowed: {', '.join(DECODE_KERNELS)}.")
        device = torch.device(device)
        if decode_kernel == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("HybridStaticCache: decode_kernel='triton' needs a CUDA device (or TRITON_INTERPRET=1).")
        self.decode_kernel = decode_kernel
        layers: list = []
        for i, capacity in enumerate(self.buffer_shapes(config, max_length)):
            if capacity is None:
                layers.append(LinearAttentionLayer())
            else:
                layers.append(_StaticAttentionLayer(batch_size, config.num_key_value_heads, config.head_dim,
                                                    capacity, config.layer_window(i), device, dtype))
        super().__init__(layers=layers)
        self.config = config
        self.max_length = max_length
        self.batch_size_ = batch_size
        attention = [i for i, layer in enumerate(layers) if isinstance(layer, _StaticAttentionLayer)]
        self._last_attention_layer = attention[-1] if attention else None
        self.position = torch.zeros(1, 1, dtype=torch.long, device=device)  # next position, on the device
        self._seen: int | None = 0  # its host copy; None after device-side decode steps until read again

    @staticmethod
    def buffer_shapes(config: HybridConfig, max_length: int) -> tuple[int | None, ...]:
        """Keys held per layer: ``max_length`` rounded up to whole decode splits (see ``decode_attention``; extra
        slots are never valid) for full layers, ``min(W, max_length)`` for sliding layers, None for recurrent ones."""
        shapes = []
        for i, t in enumerate(config.layer_types):
            window = config.layer_window(i)
            if t == "linear_attention":
                shapes.append(None)
            elif window is not None:
                shapes.append(min(window, max_length))
            else:
                shapes.append(-(-max_length // DECODE_SPLIT) * DECODE_SPLIT)
        return tuple(shapes)

    def restart(self, max_length: int) -> None:
        """Start a new sequence of at most ``max_length`` tokens in the same buffers (attention layers only).

        Old keys need no clearing: prefill reads only positions it has written, and decode masks slots beyond the
        current position."""
        if any(isinstance(layer, LinearAttentionLayer) for layer in self.layers):
            raise ValueError("HybridStaticCache.restart: recurrent layers need a fresh cache.")
        if self.buffer_shapes(self.config, max_length) != self.buffer_shapes(self.config, self.max_length):
            raise ValueError(f"HybridStaticCache.restart: max_length={max_length} needs other buffer sizes.")
        self.max_length = max_length
        self._seen = 0
        self.position.zero_()

    def get_seq_length(self, layer_idx: int = 0) -> int:
        if self._seen is None:  # after decode steps that advanced only the device counter
            self._seen = int(self.position.item())
        return self._seen

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return self.max_length

    @property
    def is_compileable(self) -> bool:
        return True

    def key_valid(self, layer_idx: int) -> torch.Tensor:
        """(capacity,) bool: the slots of layer ``layer_idx`` a one-token step at the current position attends to
        (ring slots fill 0..W-1, then all stay valid). Device-side: safe inside a captured graph."""
        return self.layers[layer_idx].slots <= self.position[0, 0]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
        cache_kwargs: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write layer ``layer_idx``'s new keys/values (B, Hkv, T, D) at the current position and return the keys and
        values its queries attend to: for one token per row the whole buffer (valid slots: ``key_valid``), for a
        prefill chunk the cached prefix (window) followed by the chunk."""
        layer = self.layers[layer_idx]
        n = key_states.shape[2]
        # under autocast the projections may come out in another dtype than the buffers
        key_states, value_states = key_states.to(layer.keys.dtype), value_states.to(layer.values.dtype)
        if n == 1:
            layer.write(key_states, value_states, self.position.reshape(1))
            if layer_idx == self._last_attention_layer:
                self.position.add_(1)
                self._seen = None
            return layer.keys, layer.values
        start = self.get_seq_length()
        if not layer.is_sliding and start + n > self.max_length:
            raise ValueError(f"HybridStaticCache: {start + n} tokens exceed max_length={self.max_length}.")
        out = layer.prefill(key_states, value_states, start)
        if layer_idx == self._last_attention_layer:
            self._seen = start + n
            self.position.fill_(self._seen)
        return out

    def kv_bytes(self) -> dict[str, int]:
        """Bytes held by full and sliding attention layers (shows that sliding layers are O(W))."""
        out = {"full_attention": 0, "sliding_attention": 0}
        for layer in self.layers:
            if isinstance(layer, _StaticAttentionLayer):
                key = "sliding_attention" if layer.is_sliding else "full_attention"
                out[key] += layer.keys.numel() * layer.keys.element_size() * 2
        return out
