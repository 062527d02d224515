"""Fast generation for hybrid_hf models: static/ring-buffer cache, chunked prefill, CUDA-graph decode."""

from .fast import generate_fast

__all__ = ["generate_fast"]
