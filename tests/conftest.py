"""Shared fixtures: tiny models only, CPU, fp32, deterministic."""

from __future__ import annotations

import textwrap

import pytest
import torch

import hybrid_hf  # noqa: F401  (registers the Auto classes)
from hybrid_hf import HybridConfig, HybridForCausalLM

torch.set_num_threads(2)


def tiny_config(pattern: str = "SF", **overrides) -> HybridConfig:
    """A 4-layer, 64-wide model with a 4-token window and a 128-token vocabulary."""
    kwargs = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        layer_pattern=pattern,
        sliding_window=4 if "S" in pattern else None,
        max_position_embeddings=512,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    kwargs.update(overrides)
    return HybridConfig(**kwargs)


def tiny_model(pattern: str = "SF", seed: int = 0, **overrides) -> HybridForCausalLM:
    torch.manual_seed(seed)
    return HybridForCausalLM(tiny_config(pattern, **overrides)).eval()


@pytest.fixture
def model() -> HybridForCausalLM:
    return tiny_model()


# Preamble of scripts run in a fresh interpreter in which `import hybrid_hf` is made impossible (remote-code tests).
BLOCK_HYBRID_HF = textwrap.dedent(
    """
    import importlib.abc, importlib.util, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "hybrid_hf" or name.startswith("hybrid_hf."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
            return None

    sys.meta_path.insert(0, Block())
    try:
        importlib.util.find_spec("hybrid_hf")
        raise SystemExit("hybrid_hf must not be importable here")
    except ModuleNotFoundError:
        pass
    """
)
