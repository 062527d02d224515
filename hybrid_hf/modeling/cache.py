"""The cache argument and output field under both transformers spellings.

transformers 5.24 renamed the cache argument and output field ``past_key_values`` to ``cache`` (the old names still
work there, with deprecation warnings). The model passes and reads the cache under whichever name is installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast

OUTPUT_CACHE_FIELD = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def output_cache(outputs: Any) -> Cache | None:
    """The cache a model output carries (``outputs.cache`` from transformers 5.24, ``outputs.past_key_values``
    before), read without deprecation warnings on either version."""
    fields = getattr(type(outputs), "__dataclass_fields__", {})
    return getattr(outputs, "cache" if "cache" in fields else "past_key_values", None)


def resolve_cache_argument(cache: Cache | None, past_key_values: Cache | None) -> Cache | None:
    """The cache given to a forward as ``cache`` (transformers >= 5.24 name) or ``past_key_values`` (older name)."""
    if cache is not None and past_key_values is not None:
        raise ValueError(
            "Pass the cache as `cache` or as `past_key_values` (the name before transformers 5.24), not both."
        )
    return cache if cache is not None else past_key_values


def cached_length(cache: Cache | None, layer_types: Sequence[str]) -> int:
    """The number of tokens ``cache`` holds, as a Python int (0 for no cache).

    Read from the first attention layer: from transformers 5.25 a linear-attention cache layer counts its tokens in
    a tensor (so does transformers' ``StaticCache``); a tensor count is read back to the host."""
    if cache is None:
        return 0
    index = next((i for i, kind in enumerate(layer_types) if kind != "linear_attention"), 0)
    length = cache.get_seq_length(index)
    return int(length) if isinstance(length, torch.Tensor) else length
