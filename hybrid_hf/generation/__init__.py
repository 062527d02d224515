"""Fast generation for hybrid_hf models: static/ring-buffer cache, chunked prefill, CUDA-graph decode.

Implemented in ``hybrid_hf.modeling.fast_generation`` (so that Hub remote code has it; ``model.generate`` routes
there); this is its public import path.
"""

from ..modeling.fast_generation import (
    decode_cache,
    fast_path_refusal,
    fused_decode_weights,
    generate_fast,
    release_decode_buffers,
    reset_fallback_log,
)

__all__ = ["decode_cache", "fast_path_refusal", "fused_decode_weights", "generate_fast", "release_decode_buffers",
           "reset_fallback_log"]
