"""Configuration of hybrid_hf models: per-layer mixer, window and positional encoding.

This file is shipped as Hub remote code by ``save_pretrained``: it may only import torch-free standard
libraries and transformers, and relative modules of this folder.
"""

from __future__ import annotations

import copy
from typing import Any

from transformers import PreTrainedConfig

ATTENTION_LAYER_TYPES = ("full_attention", "sliding_attention")
LAYER_TYPES = ("full_attention", "sliding_attention", "linear_attention")
PATTERN_LETTERS = {"F": "full_attention", "S": "sliding_attention", "L": "linear_attention"}
POSITION_ENCODINGS = ("rope", "nope")
LINEAR_ATTENTION_TYPES = ("gated_deltanet", "mamba2", "lightning")
ATTENTION_KERNELS = ("auto", "flash_attn", "triton", "flex", "sdpa", "transformers")
SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3", "longrope")

# Paper sizes S1-S5 (non-embedding parameters about 15M, 31.5M, 65M, 104M, 477M).
SIZES: dict[str, dict[str, int]] = {
    "s1": {"hidden_size": 512, "num_hidden_layers": 6, "num_attention_heads": 8, "intermediate_size": 960},
    "s2": {"hidden_size": 576, "num_hidden_layers": 8, "num_attention_heads": 9, "intermediate_size": 1536},
    "s3": {"hidden_size": 768, "num_hidden_layers": 10, "num_attention_heads": 12, "intermediate_size": 1792},
    "s4": {"hidden_size": 1024, "num_hidden_layers": 8, "num_attention_heads": 16, "intermediate_size": 2816},
    "s5": {"hidden_size": 1536, "num_hidden_layers": 16, "num_attention_heads": 24, "intermediate_size": 4352},
    # Test-sized models; not part of the paper.
    "tiny": {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 128},
}

# 1:1 alternating hybrids with full attention on the odd layers (the paper's family).
PRESETS: dict[str, dict[str, Any]] = {
    "full": {"layer_pattern": "F"},
    "swa128": {"layer_pattern": "SF", "sliding_window": 128},
    "swa512": {"layer_pattern": "SF", "sliding_window": 512},
    "swa2048": {"layer_pattern": "SF", "sliding_window": 2048},
    "swa128-nope": {
        "layer_pattern": "SF",
        "sliding_window": 128,
        "position_encodings": {"full_attention": "nope", "sliding_attention": "rope"},
    },
    "gdn": {"layer_pattern": "LF", "linear_attention_type": "gated_deltanet"},
    "mamba2": {"layer_pattern": "LF", "linear_attention_type": "mamba2"},
    "lightning": {"layer_pattern": "LF", "linear_attention_type": "lightning"},
}


def _invalid(field: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"HybridConfig: invalid `{field}`={value!r}; allowed: {allowed}.")


class HybridConfig(PreTrainedConfig):
    r"""Configuration of a hybrid decoder-only language model.

    Args:
        vocab_size: Vocabulary size.
        hidden_size: Width of the residual stream.
        intermediate_size: Width of the SwiGLU MLP.
        num_hidden_layers: Number of decoder layers.
        num_attention_heads: Query heads of attention layers.
        num_key_value_heads: Key/value heads (GQA); defaults to ``num_attention_heads``.
        head_dim: Per-head width; defaults to ``hidden_size // num_attention_heads``.
        layer_types: Per-layer mixer, each one of ``"full_attention"``, ``"sliding_attention"``,
            ``"linear_attention"``.
        layer_pattern: Shorthand for ``layer_types``: letters ``F`` (full), ``S`` (sliding), ``L`` (linear)
            tiled over ``num_hidden_layers`` (``"SF"`` gives S,F,S,F,...). If both are given they must agree.
        sliding_window: Keys a sliding layer sees, **including the current token** (the transformers/fla
            convention: query ``i`` attends to keys ``i-W+1 .. i``). flash-attn expresses the same window as
            ``window_size=(W - 1, 0)``.
        position_encodings: Per-layer ``"rope"``/``"nope"``, as a list or as a dict by layer type such as
            ``{"full_attention": "nope", "sliding_attention": "rope"}``. Stored as a per-layer list.
            Linear-attention layers never use positional encodings and are stored as ``"nope"``.
        rope_parameters: transformers RoPE parameters, either one dict for all RoPE layers or a dict keyed by
            ``"full_attention"``/``"sliding_attention"`` (as Gemma3 does).
        rope_theta: Base of the RoPE frequencies (shorthand, ends up in ``rope_parameters``).
        sliding_rope_theta: Optional separate RoPE base for sliding layers (shorthand, like Gemma3's local base).
        use_qk_norm: RMSNorm on each query and key head before RoPE.
        linear_attention_type: Recurrent mixer used by ``"linear_attention"`` layers: ``"gated_deltanet"``,
            ``"mamba2"`` or ``"lightning"``.
        linear_num_heads, linear_head_dim: Heads and key (GDN, Lightning) or value (Mamba-2) width per head of the
            recurrent mixers (default: the attention layout).
        linear_expand_v: Value width / key width for Gated DeltaNet.
        linear_conv_kernel_size: Short causal convolution width (GDN, Mamba-2).
        linear_chunk_size: Chunk length of the chunkwise-parallel reference path.
        linear_state_size: Mamba-2 SSM state size N.
        eval_full_attention_window: Inference-time receptive-field cap for full-attention layers (``None``: off):
            query ``i`` attends to keys ``i-cap+1 .. i`` (the cap counts the current token, like
            ``sliding_window``) plus the attention sinks.
        eval_efficient_window: Inference-time receptive-field cap for sliding layers (``None``: off): query ``i``
            attends to the last ``min(cap, sliding_window)`` keys (a cap never widens a sliding layer beyond its
            trained window, so ``cap >= sliding_window`` without sinks changes nothing) plus the attention sinks,
            which stay visible even when they lie outside the trained window.
        eval_attention_sink_size: Number of leading positions every capped layer keeps visible (attention sinks;
            ``0``: none); uncapped layers are unaffected. Counted from the first real token of the row (left
            padding in ``attention_mask`` is skipped), or of each document of packed rows (restarting
            ``position_ids``). Sinks on a capped sliding layer need ``use_cache=False`` for steps after the first (the
            sliding cache has dropped them). Caps and sinks are applied through the attention mask: they need
            ``attn_implementation`` eager, sdpa or flex_attention, disable the fused kernels and are refused by
            ``HybridStaticCache`` (``generate_fast``).
        attention_kernel: ``"auto"`` (default: on CUDA with the sdpa implementation, training and prefill use
            hybrid_hf's Triton window kernel for sliding layers (flash-attn's, then FlexAttention, without triton)
            and cuDNN/flash SDPA for full layers), an explicit
            ``"flash_attn"``/``"triton"``/``"flex"``/``"sdpa"``, or ``"transformers"`` to always use
            transformers' attention interface (``attn_implementation``).
        fused_cross_entropy: Compute the training loss chunk by chunk from hidden states without materialising
            the full logits (``logits`` is then ``None`` when ``labels`` are given).
    """

    model_type = "hybrid_hf"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]  # the output field before and since transformers 5.24
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }
    base_model_pp_plan = {
        "embed_tokens": (["input_ids"], ["inputs_embeds"]),
        "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "norm": (["hidden_states"], ["hidden_states"]),
    }

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 512,
        intermediate_size: int = 1408,
        num_hidden_layers: int = 8,
        num_attention_heads: int = 8,
        num_key_value_heads: int | None = None,
        head_dim: int | None = None,
        hidden_act: str = "silu",
        max_position_embeddings: int = 16384,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        use_cache: bool = True,
        tie_word_embeddings: bool = True,
        layer_types: list[str] | None = None,
        layer_pattern: str | None = None,
        sliding_window: int | None = None,
        position_encodings: list[str] | dict[str, str] | str | None = None,
        rope_parameters: dict[str, Any] | None = None,
        rope_theta: float | None = None,
        sliding_rope_theta: float | None = None,
        use_qk_norm: bool = False,
        attention_bias: bool = False,
        attention_dropout: float = 0.0,
        linear_attention_type: str | None = None,
        linear_num_heads: int | None = None,
        linear_head_dim: int | None = None,
        linear_expand_v: float = 1.0,
        linear_conv_kernel_size: int = 4,
        linear_chunk_size: int = 64,
        linear_state_size: int = 64,
        eval_full_attention_window: int | None = None,
        eval_efficient_window: int | None = None,
        eval_attention_sink_size: int = 0,
        attention_kernel: str = "auto",
        fused_cross_entropy: bool = False,
        pad_token_id: int | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.head_dim = head_dim
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.use_qk_norm = use_qk_norm
        self.attention_bias = attention_bias
        self.attention_dropout = attention_dropout
        self.sliding_window = sliding_window
        self.linear_attention_type = linear_attention_type
        self.linear_num_heads = linear_num_heads
        self.linear_head_dim = linear_head_dim
        self.linear_expand_v = linear_expand_v
        self.linear_conv_kernel_size = linear_conv_kernel_size
        self.linear_chunk_size = linear_chunk_size
        self.linear_state_size = linear_state_size
        self.eval_full_attention_window = eval_full_attention_window
        self.eval_efficient_window = eval_efficient_window
        self.eval_attention_sink_size = eval_attention_sink_size
        self.attention_kernel = attention_kernel
        self.fused_cross_entropy = fused_cross_entropy

        self._validate_sizes()
        if self.head_dim is None:
            self.head_dim = hidden_size // num_attention_heads
        self.layer_types = self._resolve_layer_types(layer_types, layer_pattern)
        self._validate_layers()
        self.position_encodings = self._resolve_position_encodings(position_encodings)
        self.rope_parameters = self._resolve_rope_parameters(rope_parameters, rope_theta, sliding_rope_theta)
        # transformers' DynamicCache reads this to size LinearAttentionLayer state lists.
        self.number_of_conv_states = 1

        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    # ------------------------------------------------------------------ presets
    @classmethod
    def from_preset(cls, name: str, size: str | dict[str, int] = "s1", **overrides: Any) -> HybridConfig:
        """Build one of the paper's architectures (``full``, ``swa128``, ``swa512``, ``swa2048``, ``swa128-nope``,
        ``gdn``, ``mamba2``, ``lightning``) at a paper size ``s1``..``s5`` (or ``tiny`` for tests), or at a size given
        as a dict of ``SIZES``' fields (recurrent mixers are parameter-matched to it)."""
        if name not in PRESETS:
            raise _invalid("name", name, ", ".join(PRESETS))
        if not isinstance(size, dict) and size not in SIZES:
            raise _invalid("size", size, ", ".join(SIZES) + ", or a dict of size fields")
        kwargs: dict[str, Any] = {**(size if isinstance(size, dict) else SIZES[size]), **copy.deepcopy(PRESETS[name])}
        if "linear_attention_type" in kwargs:
            kwargs.update(_linear_mixer_sizes(kwargs["linear_attention_type"], kwargs))
        kwargs.update(overrides)
        if "layer_types" in overrides:
            kwargs.pop("layer_pattern", None)
        return cls(**kwargs)

    # --------------------------------------------------------------- validation
    def _validate_sizes(self) -> None:
        for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise _invalid(field, value, "a positive integer")
        kv = self.num_key_value_heads
        if not isinstance(kv, int) or kv < 1 or self.num_attention_heads % kv:
            raise _invalid("num_key_value_heads", kv, f"a positive divisor of num_attention_heads={self.num_attention_heads}")
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise _invalid(
                "num_attention_heads",
                self.num_attention_heads,
                f"a divisor of hidden_size={self.hidden_size}, or set head_dim explicitly",
            )
        if self.head_dim is not None and (not isinstance(self.head_dim, int) or self.head_dim < 1 or self.head_dim % 2):
            raise _invalid("head_dim", self.head_dim, "a positive even integer")
        if not 0.0 <= self.attention_dropout < 1.0:
            raise _invalid("attention_dropout", self.attention_dropout, "a float in [0, 1)")
        if self.rms_norm_eps <= 0:
            raise _invalid("rms_norm_eps", self.rms_norm_eps, "a positive float")
        if self.hidden_act not in ("silu", "gelu", "gelu_pytorch_tanh", "relu"):
            raise _invalid("hidden_act", self.hidden_act, "silu, gelu, gelu_pytorch_tanh, relu")

    def _resolve_layer_types(self, layer_types: list[str] | None, layer_pattern: str | None) -> list[str]:
        n = self.num_hidden_layers
        from_pattern = None
        if layer_pattern is not None:
            if not isinstance(layer_pattern, str) or not layer_pattern or set(layer_pattern) - set(PATTERN_LETTERS):
                raise _invalid("layer_pattern", layer_pattern, "a non-empty string of the letters F, S, L")
            if n % len(layer_pattern):
                raise _invalid(
                    "layer_pattern", layer_pattern, f"a pattern whose length divides num_hidden_layers={n}"
                )
            from_pattern = [PATTERN_LETTERS[c] for c in layer_pattern * (n // len(layer_pattern))]
        if layer_types is None:
            return from_pattern or ["full_attention"] * n
        layer_types = list(layer_types)
        if len(layer_types) != n:
            raise _invalid("layer_types", layer_types, f"a list of exactly num_hidden_layers={n} entries")
        for t in layer_types:
            if t not in LAYER_TYPES:
                raise _invalid("layer_types", t, ", ".join(LAYER_TYPES))
        if from_pattern is not None and from_pattern != layer_types:
            raise _invalid("layer_pattern", layer_pattern, f"a pattern consistent with layer_types={layer_types}")
        return layer_types

    def _validate_layers(self) -> None:
        has_sliding = "sliding_attention" in self.layer_types
        w = self.sliding_window
        if w is not None and (not isinstance(w, int) or isinstance(w, bool) or w < 1):
            raise _invalid("sliding_window", w, "a positive integer (keys per query, including the current token)")
        if has_sliding and w is None:
            raise _invalid("sliding_window", w, "a positive integer when layer_types contains 'sliding_attention'")
        has_linear = "linear_attention" in self.layer_types
        if has_linear and self.linear_attention_type not in LINEAR_ATTENTION_TYPES:
            raise _invalid("linear_attention_type", self.linear_attention_type, ", ".join(LINEAR_ATTENTION_TYPES))
        if not has_linear and self.linear_attention_type is not None and self.linear_attention_type not in LINEAR_ATTENTION_TYPES:
            raise _invalid("linear_attention_type", self.linear_attention_type, ", ".join(LINEAR_ATTENTION_TYPES))
        for field in ("eval_full_attention_window", "eval_efficient_window"):
            v = getattr(self, field)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise _invalid(field, v, "None or a positive integer")
        if self.attention_kernel not in ATTENTION_KERNELS:
            raise _invalid("attention_kernel", self.attention_kernel, ", ".join(ATTENTION_KERNELS))
        if not isinstance(self.eval_attention_sink_size, int) or self.eval_attention_sink_size < 0:
            raise _invalid("eval_attention_sink_size", self.eval_attention_sink_size, "a non-negative integer")
        if has_linear:
            if self.linear_num_heads is None:
                self.linear_num_heads = self.num_attention_heads
            if self.linear_head_dim is None:
                self.linear_head_dim = self.head_dim or self.hidden_size // self.num_attention_heads
            for field in ("linear_num_heads", "linear_head_dim", "linear_state_size"):
                v = getattr(self, field)
                if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                    raise _invalid(field, v, "a positive integer")
            if self.linear_attention_type == "lightning" and self.linear_expand_v != 1.0:
                raise _invalid("linear_expand_v", self.linear_expand_v, "1.0 for lightning (values share q/k width)")
            if self.linear_attention_type == "mamba2" and self.linear_expand_v != 1.0:
                raise _invalid("linear_expand_v", self.linear_expand_v, "1.0 for mamba2 (head_dim is the value width)")
            if not (isinstance(self.linear_expand_v, (int, float)) and self.linear_expand_v > 0):
                raise _invalid("linear_expand_v", self.linear_expand_v, "a positive number")
            if float(self.linear_head_dim * self.linear_expand_v) != int(self.linear_head_dim * self.linear_expand_v):
                raise _invalid("linear_expand_v", self.linear_expand_v, "a factor giving an integer value head width")
        if self.linear_conv_kernel_size < 1:
            raise _invalid("linear_conv_kernel_size", self.linear_conv_kernel_size, "a positive integer")
        if self.linear_chunk_size < 1:
            raise _invalid("linear_chunk_size", self.linear_chunk_size, "a positive integer")

    def _resolve_position_encodings(self, pe: list[str] | dict[str, str] | str | None) -> list[str]:
        types = self.layer_types
        if pe is None:
            pe = "rope"
        if isinstance(pe, str):
            if pe not in POSITION_ENCODINGS:
                raise _invalid("position_encodings", pe, ", ".join(POSITION_ENCODINGS))
            out = [pe] * len(types)
        elif isinstance(pe, dict):
            for k, v in pe.items():
                if k not in LAYER_TYPES:
                    raise _invalid("position_encodings", k, f"keys among {', '.join(LAYER_TYPES)}")
                if v not in POSITION_ENCODINGS:
                    raise _invalid("position_encodings", v, ", ".join(POSITION_ENCODINGS))
            out = [pe.get(t, "rope") for t in types]
        elif isinstance(pe, (list, tuple)):
            if len(pe) != len(types):
                raise _invalid("position_encodings", pe, f"a list of num_hidden_layers={len(types)} entries")
            for v in pe:
                if v not in POSITION_ENCODINGS:
                    raise _invalid("position_encodings", v, ", ".join(POSITION_ENCODINGS))
            out = list(pe)
        else:
            raise _invalid("position_encodings", pe, "a list, a dict by layer type, or 'rope'/'nope'")
        for i, (t, v) in enumerate(zip(types, out)):
            if t == "linear_attention" and v == "rope":
                if isinstance(pe, dict) and "linear_attention" in pe:
                    raise _invalid("position_encodings", pe, "'nope' for linear_attention layers (recurrent mixers take no positions)")
                if isinstance(pe, (list, tuple)):
                    raise _invalid(f"position_encodings[{i}]", v, "'nope' for linear_attention layers")
                out[i] = "nope"
        return out

    def _resolve_rope_parameters(
        self, rope_parameters: dict[str, Any] | None, rope_theta: float | None, sliding_rope_theta: float | None
    ) -> dict[str, Any]:
        """Normalise to a dict keyed by attention layer type (``full_attention``/``sliding_attention``)."""
        if rope_parameters is not None and not isinstance(rope_parameters, dict):
            raise _invalid("rope_parameters", rope_parameters, "a dict (flat, or keyed by attention layer type)")
        rp = copy.deepcopy(rope_parameters) if rope_parameters else {}
        nested = bool(rp) and all(k in ATTENTION_LAYER_TYPES for k in rp)
        if rp and not nested and any(k in LAYER_TYPES for k in rp):
            raise _invalid("rope_parameters", rope_parameters, "either a flat dict or one keyed only by layer types")
        per_type = {t: dict(rp.get(t) or {}) for t in ATTENTION_LAYER_TYPES} if nested else {t: dict(rp) for t in ATTENTION_LAYER_TYPES}
        for t, params in per_type.items():
            if "type" in params:
                params.setdefault("rope_type", params.pop("type"))
            params.setdefault("rope_type", "default")
            theta = sliding_rope_theta if (t == "sliding_attention" and sliding_rope_theta is not None) else rope_theta
            if theta is not None:
                params["rope_theta"] = float(theta)
            params.setdefault("rope_theta", 10000.0)
            if params["rope_type"] not in SUPPORTED_ROPE_TYPES:
                raise _invalid("rope_parameters.rope_type", params["rope_type"], ", ".join(SUPPORTED_ROPE_TYPES))
            if params["rope_theta"] <= 0:
                raise _invalid("rope_parameters.rope_theta", params["rope_theta"], "a positive float")
            if params["rope_type"] in ("llama3", "yarn", "longrope"):
                params.setdefault("original_max_position_embeddings", self.max_position_embeddings)
            # RoPE scaling only makes sense where some layer of that type actually uses RoPE.
            uses_rope = any(lt == t and pe == "rope" for lt, pe in zip(self.layer_types, self.position_encodings))
            if params["rope_type"] != "default" and not uses_rope and t in self.layer_types:
                raise _invalid(
                    "rope_parameters",
                    rope_parameters,
                    f"no RoPE scaling for {t} layers, which are all NoPE (drop the scaling or use rope_type='default')",
                )
        return per_type

    # ---------------------------------------------------------------- helpers
    @property
    def layer_pattern(self) -> str:
        """The layer types as a letter string (F/S/L per layer)."""
        inv = {v: k for k, v in PATTERN_LETTERS.items()}
        return "".join(inv[t] for t in self.layer_types)

    def convert_rope_params_to_dict(self, **kwargs: Any) -> dict[str, Any]:
        """RoPE parameters were normalised in ``_resolve_rope_parameters``; only drop legacy keys here (some
        transformers versions would otherwise write a top-level ``rope_theta`` into the per-type dict)."""
        kwargs.pop("rope_scaling", None)
        kwargs.pop("rope_theta", None)
        return kwargs

    def standardize_rope_params(self) -> None:
        return None

    def validate_layer_type(self) -> None:  # transformers' hook; our own checks ran at construction
        return None

    def validate_rope(self) -> None:  # RoPE parameters are validated in `_resolve_rope_parameters`
        return None

    # ------------------------------------------------------------ per-layer views (read by every module)
    def layer_window(self, layer_idx: int) -> int | None:
        """Keys (incl. the current token) layer ``layer_idx`` attends to: ``sliding_window`` for sliding layers,
        None (unbounded) for full-attention and recurrent layers."""
        return self.sliding_window if self.layer_types[layer_idx] == "sliding_attention" else None

    def layer_rope(self, layer_idx: int) -> dict[str, Any] | None:
        """RoPE parameters of layer ``layer_idx`` (those of its attention layer type), or None for NoPE and
        recurrent layers."""
        layer_type = self.layer_types[layer_idx]
        if layer_type not in ATTENTION_LAYER_TYPES or self.position_encodings[layer_idx] != "rope":
            return None
        return self.rope_parameters[layer_type]

    def layer_letter(self, layer_idx: int) -> str:
        """``F``, ``S`` or ``L``: layer ``layer_idx`` in ``layer_pattern`` notation."""
        return {t: c for c, t in PATTERN_LETTERS.items()}[self.layer_types[layer_idx]]


def _linear_mixer_sizes(kind: str, sizes: dict[str, Any]) -> dict[str, Any]:
    """Head layout of a recurrent mixer at a preset size: the head count whose parameters come closest to the
    attention layer it replaces (q, k, v, o projections)."""
    d, heads = sizes["hidden_size"], sizes["num_attention_heads"]
    hd = d // heads
    kv = sizes.get("num_key_value_heads") or heads
    attention = 2 * d * heads * hd + 2 * d * kv * hd
    k_conv, state = 4, 64

    def mixer(h: int) -> int:
        if kind == "gated_deltanet":  # q, k (h*hd); v, gate, out (h*2hd); a, b; conv; A_log, dt_bias, norm
            return 2 * d * h * hd + 3 * d * h * 2 * hd + 2 * d * h + k_conv * h * 4 * hd + 2 * h + 2 * hd
        if kind == "mamba2":  # in_proj (z, x, B, C, dt), conv (x, B, C), out_proj, A_log, dt_bias, D, norm
            inner = h * hd
            return d * (2 * inner + 2 * state + h) + k_conv * (inner + 2 * state) + inner * d + 3 * h + inner
        return 5 * d * h * hd + h * hd  # lightning: q, k, v, gate, out, norm

    best = min(range(1, 4 * heads + 1), key=lambda h: abs(mixer(h) - attention))
    out: dict[str, Any] = {"linear_num_heads": best, "linear_head_dim": hd, "linear_expand_v": 1.0}
    if kind == "gated_deltanet":
        out["linear_expand_v"] = 2.0  # value heads twice as wide as keys, as in fla's expand_v=2
    if kind == "mamba2":
        out["linear_state_size"] = state
    return out


__all__ = ["HybridConfig", "PRESETS", "SIZES"]
