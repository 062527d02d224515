"""Fast generation for hybrid_hf models: static/ring-buffer cache, chunked prefill, CUDA-graph decode."""

from .fast import generate_fast, release_decode_buffers

__all__ = ["generate_fast", "release_decode_buffers"]
