"""Preallocated decode cache: full layers hold ``max_length`` keys, sliding layers a ring of exactly ``W`` keys.

Every tensor has a fixed address and shape, so one decode step can be captured in a CUDA graph (see
``hybrid_hf.generation``). Recurrent layers use transformers' ``LinearAttentionLayer`` (O(1) conv + recurrent
state, updated in place). Prompts are prefilled in chunks: a chunk attends to the cached prefix (lower-right
causal for full layers; the last ``W - 1`` cached keys for sliding layers), so a 128k-token prompt never forms a
128k x 128k score matrix.

Rows of a batch must have equal lengths (no padding): positions are shared by the whole batch.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, LinearAttentionLayer

from .attention_kernels import DECODE_SPLIT, causal_attention, decode_attention
from .configuration_hybrid import HybridConfig


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

    def update(self, key_states, value_states, *args, **kwargs):  # attention goes through `attend`
        raise RuntimeError("HybridStaticCache layers are used through HybridStaticCache.attend.")

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

    def prefill(self, q, k, v, start: int, scale: float, kernel: str) -> torch.Tensor:
        n = q.shape[2]
        positions = torch.arange(start, start + n, device=q.device)
        if self.is_sliding:
            prev = torch.arange(max(0, start - self.window + 1), start, device=q.device)
            keys = torch.cat([self.keys.index_select(2, self._slot(prev)), k], dim=2)
            values = torch.cat([self.values.index_select(2, self._slot(prev)), v], dim=2)
            out = causal_attention(q, keys, values, window=self.window, scale=scale, kernel=kernel)
            self.write(k, v, positions)
            return out
        self.write(k, v, positions)
        keys, values = self.keys[:, :, : start + n], self.values[:, :, : start + n]
        return causal_attention(q, keys, values, window=None, scale=scale, kernel=kernel)

    def decode(self, q, k, v, position: torch.Tensor, scale: float) -> torch.Tensor:
        """One token per row at device-side ``position`` (graph-safe: no host synchronisation)."""
        self.write(k, v, position.reshape(1))
        valid = self.slots <= position  # ring slots fill 0..W-1, then all stay valid
        return decode_attention(q, self.keys, self.values, valid, scale).transpose(1, 2)


class HybridStaticCache(Cache):
    """Fixed-size cache for fast generation (see module docstring).

    Args:
        config: the model's ``HybridConfig``.
        batch_size: rows decoded together (equal prompt lengths).
        max_length: prompt plus new tokens; full-attention layers preallocate this many keys (rounded up to whole
            decode splits).
        device, dtype: where and how keys/values live.
    """

    def __init__(self, config: HybridConfig, batch_size: int, max_length: int, device: torch.device | str,
                 dtype: torch.dtype) -> None:
        device = torch.device(device)
        layers: list = []
        for t, capacity in zip(config.layer_types, self.buffer_shapes(config, max_length)):
            if t == "linear_attention":
                layers.append(LinearAttentionLayer())
            else:
                window = config.sliding_window if t == "sliding_attention" else None
                layers.append(
                    _StaticAttentionLayer(batch_size, config.num_key_value_heads, config.head_dim, capacity, window,
                                          device, dtype)
                )
        super().__init__(layers=layers)
        self.config = config
        self.max_length = max_length
        self.batch_size_ = batch_size
        self.seen = 0  # tokens written so far (host-side; the decode step itself reads positions from the device)

    @staticmethod
    def buffer_shapes(config: HybridConfig, max_length: int) -> tuple[int | None, ...]:
        """Keys held per layer: ``max_length`` rounded up to whole decode splits (see ``decode_attention``; extra
        slots are never valid) for full layers, ``min(W, max_length)`` for sliding layers, None for recurrent ones."""
        return tuple(
            None if t == "linear_attention"
            else min(config.sliding_window, max_length) if t == "sliding_attention"
            else -(-max_length // DECODE_SPLIT) * DECODE_SPLIT
            for t in config.layer_types
        )

    def restart(self, max_length: int) -> None:
        """Start a new sequence of at most ``max_length`` tokens in the same buffers (attention layers only).

        Old keys need no clearing: prefill reads only positions it has written, and decode masks slots beyond the
        current position."""
        if any(isinstance(layer, LinearAttentionLayer) for layer in self.layers):
            raise ValueError("HybridStaticCache.restart: recurrent layers need a fresh cache.")
        if self.buffer_shapes(self.config, max_length) != self.buffer_shapes(self.config, self.max_length):
            raise ValueError(f"HybridStaticCache.restart: max_length={max_length} needs other buffer sizes.")
        self.max_length = max_length
        self.seen = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return self.max_length

    @property
    def is_compileable(self) -> bool:
        return True

    def attend(
        self,
        layer_idx: int,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        scale: float,
        position_ids: torch.Tensor,
        kernel: str = "sdpa",
    ) -> torch.Tensor:
        """Write this layer's new keys/values and attend. Returns (B, Tq, Hq, D)."""
        layer = self.layers[layer_idx]
        if q.shape[2] == 1:
            return layer.decode(q, k, v, position_ids[0, -1], scale)
        end = self.seen + q.shape[2]
        if not layer.is_sliding and end > self.max_length:
            raise ValueError(f"HybridStaticCache: {end} tokens exceed max_length={self.max_length}.")
        return layer.prefill(q, k, v, self.seen, scale, kernel)

    def kv_bytes(self) -> dict[str, int]:
        """Bytes held by full and sliding attention layers (shows that sliding layers are O(W))."""
        out = {"full_attention": 0, "sliding_attention": 0}
        for layer in self.layers:
            if isinstance(layer, _StaticAttentionLayer):
                key = "sliding_attention" if layer.is_sliding else "full_attention"
                out[key] += layer.keys.numel() * layer.keys.element_size() * 2
        return out
