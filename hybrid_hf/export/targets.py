"""Mapping tables between hybrid_hf models and stock transformers architectures.

One place for every correspondence the exporter relies on: which ``HybridConfig`` fields each stock architecture can
express (and why not, field by field), the stock config built from ours, and the state-dict renaming/reshaping. Only
public ``HybridConfig`` fields and ``HybridForCausalLM`` state-dict names are read. The import direction
(``hybrid_hf.convert``) can share these tables.

Exactness notes (read from the stock modelling code of transformers 5.17 and 5.24):

- Sliding windows: every target builds its sliding layers' masks with ``create_sliding_window_causal_mask``
  (query ``i`` sees keys ``i-W+1 .. i``), exactly our ``sliding_window`` convention; SmolLM3 and Qwen3 additionally
  pass ``sliding_window`` to flash-attention only when ``use_sliding_window`` is true, so it is always written true
  (Qwen3's config also drops ``sliding_window`` unless ``use_sliding_window`` is set).
- SmolLM3 ``no_rope_layers[i] == 1`` means layer ``i`` *uses* RoPE (``self.use_rope = config.no_rope_layers[i]``).
- GraniteMoeHybrid: the attention scale is ``attention_multiplier`` (written as ``head_dim ** -0.5``), all other
  multipliers are 1; the dense ``shared_mlp.input_linear`` holds ``[gate; up]``; its Mamba-2 layer has our layout
  (in_proj to ``z, x, B, C, dt``, conv over ``x, B, C`` with ``config.hidden_act``, ``softplus(dt + dt_bias)``,
  ``A = -exp(A_log)``, ``D`` skip on the conv output, gated RMSNorm ``norm(y * silu(z))`` over
  ``intermediate / n_groups`` channels with ``rms_norm_eps``); we use one B/C group, so ``mamba_n_groups = 1``.
- Qwen3.5 (text): decoder and QK norms are zero-centred (``x * (1 + w)``), written as ``w - 1``; the GDN gated norm
  is not. Its full-attention layers always gate their output with ``sigmoid(gate)`` from extra ``q_proj`` rows and
  always apply QK-norm and RoPE: the gate rows are written as zeros (``sigmoid(0) = 1/2``, exact) and ``o_proj`` is
  doubled (exact), ``partial_rotary_factor = 1``; text-only multimodal RoPE equals plain RoPE (all three position
  streams are equal).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..modeling import HybridConfig

# Export target name -> stock transformers causal-LM class name.
ARCHITECTURES: dict[str, str] = {
    "smollm3": "SmolLM3ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "llama": "LlamaForCausalLM",
    "granitemoehybrid": "GraniteMoeHybridForCausalLM",
    "qwen3_5": "Qwen3_5ForCausalLM",
}
TARGETS = tuple(ARCHITECTURES)

# RoPE types whose frequencies the targets compute exactly as we do. `dynamic` and `longrope` switch frequencies by
# sequence length inside transformers' rotary modules (dynamic_rope_update), which our model does not.
EXACT_ROPE_TYPES = ("default", "linear", "yarn", "llama3")

_ATTENTION_ONLY_HINT = "nearest targets: granitemoehybrid (mamba2 + full) or qwen3_5 (gated_deltanet + full)"


@dataclass(frozen=True)
class TargetSupport:
    """Whether a model can be exported to ``target`` (class ``architecture``); ``reasons`` name the blocking fields,
    ``caveats`` the serving-engine pitfalls of a supported export."""

    target: str
    architecture: str
    supported: bool
    reasons: tuple[str, ...] = ()
    caveats: tuple[str, ...] = ()


# ------------------------------------------------------------------------------------------ checks
def _rope_layer_types(config: HybridConfig) -> list[str]:
    """Attention layer types with at least one RoPE layer."""
    return sorted({t for t, pe in zip(config.layer_types, config.position_encodings) if pe == "rope" and t != "linear_attention"})


def _common_reasons(config: HybridConfig) -> list[str]:
    reasons = []
    for field in ("eval_full_attention_window", "eval_efficient_window"):
        if getattr(config, field) is not None:
            reasons.append(
                f"`{field}`={getattr(config, field)} (an inference-time receptive-field cap) has no counterpart in "
                "stock architectures; set it to None before exporting"
            )
    if config.eval_attention_sink_size:
        reasons.append(
            f"`eval_attention_sink_size`={config.eval_attention_sink_size} (attention sinks) has no counterpart in "
            "stock architectures; set it to 0 before exporting"
        )
    if "linear_attention" in config.layer_types and config.linear_attention_type == "lightning":
        reasons.append(
            "`linear_attention_type`='lightning': no stock transformers architecture implements this Lightning "
            "mixer (MiniMax's is MoE-only and is not exported); nearest targets: granitemoehybrid (mamba2) or "
            "qwen3_5 (gated_deltanet)"
        )
    for t in _rope_layer_types(config):
        rope_type = config.rope_parameters[t]["rope_type"]
        if rope_type not in EXACT_ROPE_TYPES:
            reasons.append(
                f"`rope_parameters.rope_type`={rope_type!r} for {t} layers: stock rotary modules switch its "
                f"frequencies by sequence length, ours do not; exportable types: {', '.join(EXACT_ROPE_TYPES)}"
            )
    return reasons


def _one_rope(config: HybridConfig) -> list[str]:
    """Targets with one rotary table need the same RoPE parameters on every RoPE layer."""
    types = _rope_layer_types(config)
    if len(types) == 2 and config.rope_parameters["full_attention"] != config.rope_parameters["sliding_attention"]:
        return [
            "`sliding_rope_theta`/`rope_parameters`: full and sliding layers use different RoPE parameters "
            f"({config.rope_parameters['full_attention']} vs {config.rope_parameters['sliding_attention']}); the "
            "target has one rotary table (Gemma3-style separate bases are not exportable)"
        ]
    return []


def _attention_reasons(config: HybridConfig, target: str) -> list[str]:
    """Checks shared by the attention-only targets (smollm3, qwen3, llama)."""
    types = set(config.layer_types)
    reasons = []
    if "linear_attention" in types:
        reasons.append(
            f"`layer_types` contains 'linear_attention' ({config.linear_attention_type}): {ARCHITECTURES[target]} "
            f"has attention layers only; {_ATTENTION_ONLY_HINT}"
        )
    nope = [i for i, (t, pe) in enumerate(zip(config.layer_types, config.position_encodings))
            if pe == "nope" and t != "linear_attention"]
    if target == "smollm3":
        if config.use_qk_norm:
            reasons.append(
                "`use_qk_norm`=True: SmolLM3 has no QK-norm; nearest target: qwen3 (QK-norm, but RoPE on every layer)"
            )
    elif target == "qwen3":
        if not config.use_qk_norm:
            reasons.append("`use_qk_norm`=False: Qwen3 always applies QK-norm; nearest target: smollm3")
        if nope:
            reasons.append(
                f"`position_encodings`: layers {nope} are NoPE but Qwen3 applies RoPE on every layer; nearest target: "
                "smollm3 (per-layer NoPE, but no QK-norm)"
            )
    elif target == "llama":
        if "sliding_attention" in types:
            reasons.append("`layer_types` contains 'sliding_attention': Llama has no per-layer window; nearest "
                           "targets: smollm3 (no QK-norm) or qwen3 (QK-norm)")
        if config.use_qk_norm:
            reasons.append("`use_qk_norm`=True: Llama has no QK-norm; nearest target: qwen3")
        if nope:
            reasons.append(f"`position_encodings`: layers {nope} are NoPE; Llama applies RoPE on every layer; "
                           "nearest target: smollm3")
    return reasons + _one_rope(config)


def _recurrent_reasons(config: HybridConfig, target: str) -> list[str]:
    """Checks of the recurrent targets (granitemoehybrid: Mamba-2, qwen3_5: Gated DeltaNet)."""
    kind = "mamba2" if target == "granitemoehybrid" else "gated_deltanet"
    arch = ARCHITECTURES[target]
    types = set(config.layer_types)
    reasons = []
    if "linear_attention" not in types:
        reasons.append(f"`layer_types` has no 'linear_attention' layer: use an attention-only target (smollm3, "
                       f"qwen3 or llama) rather than {arch}")
    elif config.linear_attention_type != kind:
        other = "qwen3_5" if kind == "mamba2" else "granitemoehybrid"
        reasons.append(f"`linear_attention_type`={config.linear_attention_type!r}: {arch} implements {kind} only"
                       + (f"; nearest target: {other}" if config.linear_attention_type != "lightning" else ""))
    if "sliding_attention" in types:
        reasons.append(f"`layer_types` mixes 'sliding_attention' with recurrent layers: {arch}'s attention layers "
                       "are all full; no stock architecture combines SWA and recurrent layers")
    if config.hidden_act != "silu":
        reasons.append(f"`hidden_act`={config.hidden_act!r}: {arch} applies hidden_act to the recurrent short "
                       "convolution too, which is always SiLU in hybrid_hf; only 'silu' is exportable")
    full_pe = {pe for t, pe in zip(config.layer_types, config.position_encodings) if t == "full_attention"}
    if target == "granitemoehybrid":
        if config.use_qk_norm:
            reasons.append("`use_qk_norm`=True: GraniteMoeHybrid attention has no QK-norm")
        if len(full_pe) > 1:
            reasons.append("`position_encodings`: GraniteMoeHybrid uses RoPE on all attention layers or on none "
                           "(position_embedding_type), this model mixes RoPE and NoPE full layers")
        if "linear_attention" in types:
            inner = config.linear_num_heads * config.linear_head_dim
            if inner % config.hidden_size:
                reasons.append(
                    f"`linear_num_heads`*`linear_head_dim`={inner} is not an integer multiple of hidden_size="
                    f"{config.hidden_size}: GraniteMoeHybrid sizes the Mamba-2 mixer as int mamba_expand * hidden_size"
                )
    else:
        if not config.use_qk_norm:
            reasons.append("`use_qk_norm`=False: Qwen3.5 full-attention layers always apply QK-norm (an RMSNorm "
                           "cannot be made the identity)")
        if "nope" in full_pe:
            reasons.append("`position_encodings`: Qwen3.5 full-attention layers always apply RoPE; this model has "
                           "NoPE full layers")
    return reasons


def blocking_reasons(config: HybridConfig, target: str) -> list[str]:
    """Why ``config`` cannot be exported exactly to ``target`` (empty list: it can)."""
    _check_config(config)
    _check_target(target)
    specific = (_attention_reasons if target in ("smollm3", "qwen3", "llama") else _recurrent_reasons)(config, target)
    return specific + _common_reasons(config)


def serving_caveats(config: HybridConfig, target: str) -> list[str]:
    """Serving-engine pitfalls of an export to ``target`` (for the model card and the CLI)."""
    _check_config(config)
    _check_target(target)
    caveats = []
    if target == "qwen3" and "sliding_attention" in config.layer_types:
        caveats.append(
            "vLLM's and SGLang's native Qwen3 implementations ignore `layer_types` and serve every layer as full "
            "attention (vLLM #39514, SGLang #22528): outputs diverge from this model beyond the window. Serve the "
            "smollm3 export instead (if the model has no QK-norm), or run vLLM with `--model-impl transformers`."
        )
    if target == "smollm3" and "sliding_attention" in config.layer_types:
        caveats.append(
            "Per-layer sliding windows are read from `layer_types` with `use_sliding_window=true`; check that the "
            "serving engine version honours both (transformers does)."
        )
    if target in ("granitemoehybrid", "qwen3_5"):
        caveats.append("Recurrent layers keep O(1) state per sequence; engines need their hybrid (Mamba-cache) "
                       "support for this architecture enabled.")
    return caveats


def export_targets(config: HybridConfig) -> list[TargetSupport]:
    """Every export target with whether ``config`` is exactly expressible in it, the reasons if not and the
    serving caveats if so."""
    _check_config(config)
    out = []
    for target, arch in ARCHITECTURES.items():
        reasons = tuple(blocking_reasons(config, target))
        caveats = () if reasons else tuple(serving_caveats(config, target))
        out.append(TargetSupport(target, arch, not reasons, reasons, caveats))
    return out


def _check_config(config: HybridConfig) -> None:
    if not isinstance(config, HybridConfig):
        raise ValueError(f"export: `config` must be a HybridConfig (a hybrid_hf model), not {type(config).__name__}.")


def _check_target(target: str) -> None:
    if target not in ARCHITECTURES:
        raise ValueError(f"export: invalid `to`={target!r}; allowed: {', '.join(TARGETS)}.")


# ------------------------------------------------------------------------------------ stock configs
def _rope_parameters(config: HybridConfig) -> dict[str, Any]:
    types = _rope_layer_types(config)
    return dict(config.rope_parameters[types[0] if types else "full_attention"])


def target_config(config: HybridConfig, target: str) -> dict[str, Any]:
    """Keyword arguments of the stock config class of ``target`` expressing ``config`` (checked exportable)."""
    _check_config(config)
    _check_target(target)
    types = config.layer_types
    has_sliding = "sliding_attention" in types
    out: dict[str, Any] = {
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "hidden_act": config.hidden_act,
        "max_position_embeddings": config.max_position_embeddings,
        "initializer_range": config.initializer_range,
        "rms_norm_eps": config.rms_norm_eps,
        "use_cache": True,
        "tie_word_embeddings": config.tie_word_embeddings,
        "attention_bias": config.attention_bias,
        "attention_dropout": config.attention_dropout,
        "pad_token_id": config.pad_token_id,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "rope_parameters": _rope_parameters(config),
    }
    if target == "smollm3":
        out.update(
            layer_types=list(types),
            use_sliding_window=has_sliding,
            sliding_window=config.sliding_window if has_sliding else None,
            no_rope_layers=[int(pe == "rope") for pe in config.position_encodings],  # 1 = RoPE
            mlp_bias=False,
        )
    elif target == "qwen3":
        out.update(
            layer_types=list(types),
            use_sliding_window=has_sliding,
            sliding_window=config.sliding_window if has_sliding else None,
            max_window_layers=config.num_hidden_layers,  # only read when layer_types is absent
        )
    elif target == "llama":
        out.update(mlp_bias=False)
    elif target == "granitemoehybrid":
        inner = config.linear_num_heads * config.linear_head_dim
        rope = "rope" in {pe for t, pe in zip(types, config.position_encodings) if t == "full_attention"}
        out.update(
            layer_types=list(types),
            shared_intermediate_size=config.intermediate_size,
            num_local_experts=0,
            embedding_multiplier=1.0,
            logits_scaling=1.0,
            residual_multiplier=1.0,
            attention_multiplier=config.head_dim**-0.5,
            position_embedding_type="rope" if rope else None,
            mamba_n_heads=config.linear_num_heads,
            mamba_n_groups=1,
            mamba_d_state=config.linear_state_size,
            mamba_d_head=config.linear_head_dim,
            mamba_d_conv=config.linear_conv_kernel_size,
            mamba_expand=inner // config.hidden_size,
            mamba_chunk_size=config.linear_chunk_size,
            mamba_conv_bias=False,
            mamba_proj_bias=False,
            time_step_limit=(0.0, math.inf),
        )
    elif target == "qwen3_5":
        half = config.head_dim // 2
        out["rope_parameters"].update(
            partial_rotary_factor=1.0, mrope_section=[half - 2 * (half // 3), half // 3, half // 3],
            mrope_interleaved=True,
        )
        out.update(
            layer_types=list(types),
            linear_num_key_heads=config.linear_num_heads,
            linear_num_value_heads=config.linear_num_heads,
            linear_key_head_dim=config.linear_head_dim,
            linear_value_head_dim=int(round(config.linear_head_dim * config.linear_expand_v)),
            linear_conv_kernel_dim=config.linear_conv_kernel_size,
        )
    return out


# ------------------------------------------------------------------------------------ state dicts
_DECODER_NORMS = ("input_layernorm", "post_attention_layernorm")


def map_state_dict(config: HybridConfig, state_dict: dict[str, torch.Tensor], target: str) -> dict[str, torch.Tensor]:
    """Our ``HybridForCausalLM`` state dict renamed/reshaped into the stock ``target`` model's names."""
    _check_config(config)
    _check_target(target)
    sd = state_dict
    out: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": sd["model.embed_tokens.weight"],
        "model.norm.weight": sd["model.norm.weight"],
        "lm_head.weight": sd.get("lm_head.weight", sd["model.embed_tokens.weight"]),
    }
    zero_centred = target == "qwen3_5"  # Qwen3.5's RMSNorms compute x * (1 + w)
    if zero_centred:
        out["model.norm.weight"] = _zero_centred(out["model.norm.weight"])
    for i, layer_type in enumerate(config.layer_types):
        src, dst = f"model.layers.{i}.", f"model.layers.{i}."
        for norm in _DECODER_NORMS:
            w = sd[src + norm + ".weight"]
            out[dst + norm + ".weight"] = _zero_centred(w) if zero_centred else w
        if target == "granitemoehybrid":
            out[dst + "shared_mlp.input_linear.weight"] = torch.cat(
                [sd[src + "mlp.gate_proj.weight"], sd[src + "mlp.up_proj.weight"]], dim=0
            )
            out[dst + "shared_mlp.output_linear.weight"] = sd[src + "mlp.down_proj.weight"]
        else:
            for proj in ("gate_proj", "up_proj", "down_proj"):
                out[dst + f"mlp.{proj}.weight"] = sd[src + f"mlp.{proj}.weight"]
        if layer_type == "linear_attention":
            mixer = _mamba2_weights if target == "granitemoehybrid" else _gdn_weights
            out.update(mixer(sd, src + "linear_attn.", dst))
        else:
            out.update(_attention_weights(config, sd, src + "self_attn.", dst + "self_attn.", target))
    return out


def _zero_centred(w: torch.Tensor) -> torch.Tensor:
    return (w.float() - 1.0).to(w.dtype)


def _attention_weights(config: HybridConfig, sd: dict, src: str, dst: str, target: str) -> dict[str, torch.Tensor]:
    names = ["q_proj", "k_proj", "v_proj", "o_proj"]
    suffixes = ("weight", "bias") if config.attention_bias else ("weight",)
    out = {f"{dst}{n}.{s}": sd[f"{src}{n}.{s}"] for n in names for s in suffixes}
    if config.use_qk_norm:
        for n in ("q_norm", "k_norm"):
            w = sd[f"{src}{n}.weight"]
            out[f"{dst}{n}.weight"] = _zero_centred(w) if target == "qwen3_5" else w
    if target == "qwen3_5":
        # q_proj rows per head are [query (head_dim); gate (head_dim)]: a zero gate gives sigmoid(0) = 1/2, undone by
        # doubling o_proj's weight (both exact in floating point).
        h, d = config.num_attention_heads, config.head_dim
        for s in suffixes:
            q = out[f"{dst}q_proj.{s}"]
            q = q.reshape(h, d, *q.shape[1:])
            out[f"{dst}q_proj.{s}"] = torch.cat([q, torch.zeros_like(q)], dim=1).reshape(2 * h * d, *q.shape[2:])
        out[f"{dst}o_proj.weight"] = out[f"{dst}o_proj.weight"] * 2
    return out


def _mamba2_weights(sd: dict, src: str, dst: str) -> dict[str, torch.Tensor]:
    mixer = dst + "mamba."
    return {
        mixer + "in_proj.weight": sd[src + "in_proj.weight"],
        mixer + "conv1d.weight": sd[src + "conv_weight"][:, None, :],
        mixer + "A_log": sd[src + "A_log"],
        mixer + "dt_bias": sd[src + "dt_bias"],
        mixer + "D": sd[src + "D"],
        mixer + "norm.weight": sd[src + "norm.weight"],
        mixer + "out_proj.weight": sd[src + "out_proj.weight"],
    }


def _gdn_weights(sd: dict, src: str, dst: str) -> dict[str, torch.Tensor]:
    mixer = dst + "linear_attn."
    return {
        mixer + "in_proj_qkv.weight": torch.cat(
            [sd[src + "q_proj.weight"], sd[src + "k_proj.weight"], sd[src + "v_proj.weight"]], dim=0
        ),
        mixer + "in_proj_z.weight": sd[src + "g_proj.weight"],
        mixer + "in_proj_a.weight": sd[src + "a_proj.weight"],
        mixer + "in_proj_b.weight": sd[src + "b_proj.weight"],
        mixer + "conv1d.weight": sd[src + "conv_weight"][:, None, :],
        mixer + "A_log": sd[src + "A_log"],
        mixer + "dt_bias": sd[src + "dt_bias"],
        mixer + "norm.weight": sd[src + "o_norm.weight"],
        mixer + "out_proj.weight": sd[src + "o_proj.weight"],
    }


__all__ = [
    "ARCHITECTURES",
    "EXACT_ROPE_TYPES",
    "TARGETS",
    "TargetSupport",
    "blocking_reasons",
    "export_targets",
    "map_state_dict",
    "serving_caveats",
    "target_config",
]
