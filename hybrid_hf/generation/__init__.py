"""Fast generation for hybrid_hf models: static/ring-buffer cache, chunked prefill, CUDA-graph decode."""

from .fast import decode_cache, fused_decode_weights, generate_fast, release_decode_buffers

__all__ = ["decode_cache", "fused_decode_weights", "generate_fast", "release_decode_buffers"]
