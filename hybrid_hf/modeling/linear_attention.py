"""Recurrent sequence mixers served by ``"linear_attention"`` layers (filled in by the mixer work)."""

from __future__ import annotations

from torch import nn

from .configuration_hybrid import HybridConfig

LINEAR_MIXERS: dict[str, type[nn.Module]] = {}


def build_linear_mixer(config: HybridConfig, layer_idx: int) -> nn.Module:
    """Instantiate the recurrent mixer chosen by ``config.linear_attention_type`` for layer ``layer_idx``."""
    kind = config.linear_attention_type
    if kind not in LINEAR_MIXERS:
        raise ValueError(
            f"HybridConfig: `layer_types[{layer_idx}]`='linear_attention' needs a recurrent mixer, but "
            f"`linear_attention_type`={kind!r} is not available; available: {', '.join(LINEAR_MIXERS) or 'none yet'}."
        )
    return LINEAR_MIXERS[kind](config, layer_idx)
