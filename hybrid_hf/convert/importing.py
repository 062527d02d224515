"""Import Llama / Qwen3 / SmolLM3 / Mistral checkpoints as an equivalent ``HybridForCausalLM`` (same logits).

The four families share hybrid_hf's decoder layer exactly (pre-norm RMSNorm, GQA attention with optional QK-norm,
SwiGLU MLP) and its state-dict names, so weights load unchanged; only the config is translated. Whatever the
hybrid config cannot express exactly is refused with a ``ValueError`` naming the source field, never approximated.

Window semantics: in transformers 5.x the sliding masks of all four families keep ``kv_idx > q_idx - W`` (W keys
including the current token) and flash-attn gets ``window_size=(W - 1, W - 1)``, the convention of
``HybridConfig.sliding_window``, so ``sliding_window`` is copied as is (tested on sequences longer than the window).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel

from ..modeling import HybridConfig, HybridForCausalLM

SUPPORTED_MODEL_TYPES = ("llama", "qwen3", "smollm3", "mistral")
SUPPORTED_ACTIVATIONS = ("silu", "gelu", "gelu_pytorch_tanh", "relu")


def _refuse(source: PretrainedConfig, field: str, value: Any, allowed: str) -> ValueError:
    return ValueError(
        f"Cannot import {source.model_type} as hybrid_hf: `{field}`={value!r} is not expressible; allowed: {allowed}."
    )


def _layer_types(source: PretrainedConfig) -> list[str]:
    """Which layers the source's attention windows (mask path and flash path must agree)."""
    n = source.num_hidden_layers
    window = getattr(source, "sliding_window", None)
    if source.model_type == "mistral":  # every layer uses config.sliding_window when it is set; layer_types ignored
        return ["sliding_attention" if window is not None else "full_attention"] * n
    if source.model_type == "llama":
        return ["full_attention"] * n
    types = list(getattr(source, "layer_types", None) or ["full_attention"] * n)[:n]
    allowed = ("full_attention", "sliding_attention")
    for i, t in enumerate(types):
        if t not in allowed:
            raise _refuse(source, f"layer_types[{i}]", t, ", ".join(allowed))
    if "sliding_attention" in types:
        if window is None:
            raise _refuse(source, "sliding_window", window, "a window when layer_types has sliding_attention")
        # SmolLM3's masks window these layers whenever sliding_window is set, its flash path only with
        # use_sliding_window: the source itself is ambiguous unless the flag is on.
        if source.model_type == "smollm3" and not getattr(source, "use_sliding_window", False):
            raise _refuse(source, "use_sliding_window", False, "True when layer_types has sliding_attention")
    return types


def _position_encodings(source: PretrainedConfig) -> list[str]:
    n = source.num_hidden_layers
    if source.model_type != "smollm3":
        return ["rope"] * n
    flags = list(source.no_rope_layers)  # 1 means the layer USES RoPE (the name is inverted)
    if len(flags) < n:
        raise _refuse(source, "no_rope_layers", flags, f"a list of at least num_hidden_layers={n} entries")
    return ["rope" if flags[i] else "nope" for i in range(n)]


def _rope_parameters(source: PretrainedConfig, types: list[str], encodings: list[str]) -> dict[str, dict[str, Any]]:
    params = dict(getattr(source, "rope_parameters", None) or {})
    if any(k in ("full_attention", "sliding_attention") for k in params):
        raise _refuse(source, "rope_parameters", params, "one dict for all layers")
    if "rope_theta" not in params:
        theta = getattr(source, "rope_theta", None) or getattr(source, "default_theta", None)
        if theta is None:
            raise _refuse(source, "rope_parameters.rope_theta", None, "a positive float")
        params["rope_theta"] = theta
    # the RoPE type and its parameters are validated by HybridConfig (one place for what hybrid_hf's rotary supports)
    params.setdefault("rope_type", params.pop("type", "default"))
    factor = params.get("partial_rotary_factor", getattr(source, "partial_rotary_factor", 1.0))
    if factor not in (None, 1, 1.0):
        # these families rotate whole heads; a partial factor would not even run in transformers
        raise _refuse(source, "partial_rotary_factor", factor, "1.0 (rotary on the whole head)")
    params.pop("partial_rotary_factor", None)
    out = {}
    for t in ("full_attention", "sliding_attention"):
        # a layer type whose layers are all NoPE never reads its tables: plain RoPE keeps the config valid
        uses_rope = any(lt == t and pe == "rope" for lt, pe in zip(types, encodings))
        out[t] = dict(params) if uses_rope else {"rope_type": "default", "rope_theta": params["rope_theta"]}
    return out


def hybrid_config_from(source: PretrainedConfig) -> HybridConfig:
    """The ``HybridConfig`` equivalent to a Llama / Qwen3 / SmolLM3 / Mistral config (raises ``ValueError`` naming
    the field when an exact translation does not exist)."""
    model_type = getattr(source, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"Cannot import model_type={model_type!r} as hybrid_hf; allowed: {', '.join(SUPPORTED_MODEL_TYPES)}."
        )
    if getattr(source, "quantization_config", None) is not None:
        raise _refuse(source, "quantization_config", type(source.quantization_config).__name__,
                      "None (load an unquantized checkpoint)")
    if getattr(source, "mlp_bias", False):
        raise _refuse(source, "mlp_bias", True, "False (hybrid_hf's MLP has no biases)")
    act = source.hidden_act
    if act not in SUPPORTED_ACTIVATIONS:
        raise _refuse(source, "hidden_act", act, ", ".join(SUPPORTED_ACTIVATIONS))
    head_dim = getattr(source, "head_dim", None) or source.hidden_size // source.num_attention_heads
    types = _layer_types(source)
    encodings = _position_encodings(source)
    has_sliding = "sliding_attention" in types
    return HybridConfig(
        vocab_size=source.vocab_size,
        hidden_size=source.hidden_size,
        intermediate_size=source.intermediate_size,
        num_hidden_layers=source.num_hidden_layers,
        num_attention_heads=source.num_attention_heads,
        num_key_value_heads=source.num_key_value_heads or source.num_attention_heads,
        head_dim=head_dim,
        hidden_act=act,
        max_position_embeddings=source.max_position_embeddings,
        initializer_range=source.initializer_range,
        rms_norm_eps=source.rms_norm_eps,
        tie_word_embeddings=bool(getattr(source, "tie_word_embeddings", False)),
        layer_types=types,
        sliding_window=source.sliding_window if has_sliding else None,
        position_encodings=encodings,
        rope_parameters=_rope_parameters(source, types, encodings),
        use_qk_norm=model_type == "qwen3",
        # Mistral's projections have no bias whatever the config says
        attention_bias=bool(getattr(source, "attention_bias", False)) and model_type != "mistral",
        attention_dropout=float(getattr(source, "attention_dropout", 0.0) or 0.0),
        pad_token_id=source.pad_token_id,
        bos_token_id=source.bos_token_id,
        eos_token_id=source.eos_token_id,
    )


def _check_loading(info: dict[str, Any], what: str) -> None:
    # rotary tables are recomputed, never loaded; anything else left over means the layouts differ
    missing = [k for k in info.get("missing_keys", []) if "rotary_emb" not in k]
    unexpected = [k for k in info.get("unexpected_keys", []) if "rotary_emb" not in k]
    mismatched = list(info.get("mismatched_keys", []))
    if missing or unexpected or mismatched:
        raise ValueError(
            f"Importing {what}: the weights do not match the translated config "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]}, mismatched {mismatched[:5]})."
        )


def import_model(source: str | os.PathLike | PreTrainedModel, **from_pretrained_kwargs: Any) -> HybridForCausalLM:
    """Load a Llama / Qwen3 / SmolLM3 / Mistral causal LM as an equivalent ``HybridForCausalLM``.

    Args:
        source: A checkpoint folder or Hub id (loaded straight into hybrid_hf's class: the state-dict names are the
            same, so no second copy of the weights is made), or an in-memory transformers model (its weights are
            copied; the result has the source's dtype and device).
        from_pretrained_kwargs: Passed to ``from_pretrained`` for a folder (``dtype``, ``device_map``, ...).

    Returns:
        The hybrid_hf model, all layers as in the source (same logits), in eval mode when loaded from a folder. A
        hybrid_hf model or folder is returned or loaded as it is.
    """
    if isinstance(source, HybridForCausalLM):
        return source
    if isinstance(source, PreTrainedModel):
        config = hybrid_config_from(source.config)
        param = next(source.parameters())
        with torch.device(param.device):
            model = HybridForCausalLM(config).to(param.dtype)
        result = model.load_state_dict(source.state_dict(), strict=False)
        _check_loading({"missing_keys": result.missing_keys, "unexpected_keys": result.unexpected_keys},
                       type(source).__name__)
        if getattr(source, "generation_config", None) is not None:
            model.generation_config = source.generation_config
        return model.train(source.training)
    source_config = AutoConfig.from_pretrained(source)
    if source_config.model_type == HybridConfig.model_type:
        return HybridForCausalLM.from_pretrained(source, **from_pretrained_kwargs)
    config = hybrid_config_from(source_config)
    model, info = HybridForCausalLM.from_pretrained(
        source, config=config, output_loading_info=True, **from_pretrained_kwargs
    )
    _check_loading(info, str(source))
    return model
