"""Configuration of hybrid_hf models: per-layer mixer, window and positional encoding.

This file is shipped as Hub remote code by ``save_pretrained``: it may only import torch-free standard
libraries and transformers, and relative modules of this folder.
"""

from __future__ import annotations

import copy
import math
import numbers
import reprlib
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

ATTENTION_LAYER_TYPES = ("full_attention", "sliding_attention")
LAYER_TYPES = ("full_attention", "sliding_attention", "linear_attention")
PATTERN_LETTERS = {"F": "full_attention", "S": "sliding_attention", "L": "linear_attention"}
POSITION_ENCODINGS = ("rope", "nope")
LINEAR_ATTENTION_TYPES = ("gated_deltanet", "mamba2", "lightning")
ATTENTION_KERNELS = ("auto", "flash_attn", "triton", "flex", "sdpa", "transformers")
HIDDEN_ACTS = ("silu", "gelu", "gelu_pytorch_tanh", "relu")
# Keys each transformers rope_type reads besides `rope_type`, `rope_theta` and `partial_rotary_factor`, as
# (required, optional): transformers' `_validate_<type>_rope_parameters` and `ROPE_INIT_FUNCTIONS`.
_ROPE_TYPE_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "default": ((), ()),
    "linear": (("factor",), ()),
    "dynamic": (("factor",), ()),
    "yarn": (
        ("factor", "original_max_position_embeddings"),
        ("attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate"),
    ),
    "longrope": (("short_factor", "long_factor", "original_max_position_embeddings"), ("factor", "attention_factor")),
    "llama3": (("factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"), ()),
    "proportional": ((), ("factor",)),
}
# Every type of the installed transformers that has a schema above (tests check that none is missing).
SUPPORTED_ROPE_TYPES = tuple(t for t in _ROPE_TYPE_KEYS if t == "default" or t in ROPE_INIT_FUNCTIONS)
# Types whose `original_max_position_embeddings` defaults to `max_position_embeddings` (transformers' standardisation)
_ROPE_TYPES_WITH_ORIGINAL_MAX = ("llama3", "yarn", "longrope")

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
    return ValueError(f"HybridConfig: invalid `{field}`={reprlib.repr(value)}; allowed: {allowed}.")


# Documented bounds of the size fields: far beyond any model this package trains, small enough that no derived size
# overflows, and positions, windows and sink counts fit the int32 the attention kernels index with.
MAX_WIDTH = 2**24  # vocab_size, hidden_size, intermediate_size
MAX_COUNT = 1024  # layers, heads, per-head widths, state size, conv kernel
MAX_POSITIONS = 2**31 - 1  # max_position_embeddings, windows, sinks


@dataclass(frozen=True)
class FieldRule:
    """Type and range of one scalar constructor argument; ``check`` returns the value normalised (int, float)."""

    kind: str  # "int", "real", "bool" or "choice"
    lo: float = 0
    hi: float = 0
    open_lo: bool = False
    open_hi: bool = False
    optional: bool = False  # None allowed
    choices: tuple[str, ...] = ()
    many: bool = False  # a non-empty list of such values allowed too (eos_token_id)
    even: bool = False

    def allowed(self) -> str:
        if self.kind == "bool":
            text = "True or False"
        elif self.kind == "choice":
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        else:
            fmt = (lambda v: str(int(v))) if self.kind == "int" else (lambda v: f"{v:g}")
            lo, hi = ("(" if self.open_lo else "[") + fmt(self.lo), fmt(self.hi) + (")" if self.open_hi else "]")
            text = ("an even integer" if self.even else "an integer" if self.kind == "int" else "a finite number")
            text += f" in {lo}, {hi}"
        text += " (or a non-empty list of them)" if self.many else ""
        return f"None or {text}" if self.optional else text

    def check(self, field: str, value: Any) -> Any:
        if value is None and self.optional:
            return None
        if self.many and isinstance(value, (list, tuple)) and value:
            return [self._scalar(field, v) for v in value]
        return self._scalar(field, value)

    def _scalar(self, field: str, value: Any) -> Any:
        if self.kind == "bool":
            ok = isinstance(value, bool)
        elif self.kind == "choice":
            ok = isinstance(value, str) and value in self.choices
        elif isinstance(value, bool) or not isinstance(value, numbers.Integral if self.kind == "int" else numbers.Real):
            ok = False
        else:
            try:
                value = int(value) if self.kind == "int" else float(value)
            except OverflowError:  # an int too large for a float
                raise _invalid(field, value, self.allowed()) from None
            above = value > self.lo if self.open_lo else value >= self.lo
            below = value < self.hi if self.open_hi else value <= self.hi
            ok = math.isfinite(value) and above and below and not (self.even and value % 2)
        if not ok:
            raise _invalid(field, value, self.allowed())
        return value


def _int(lo: int, hi: int, optional: bool = False, many: bool = False, even: bool = False) -> FieldRule:
    return FieldRule("int", lo, hi, optional=optional, many=many, even=even)


def _real(lo: float, hi: float, open_lo: bool = False, open_hi: bool = False, optional: bool = False) -> FieldRule:
    return FieldRule("real", lo, hi, open_lo=open_lo, open_hi=open_hi, optional=optional)


def _one_of(choices: tuple[str, ...], optional: bool = False) -> FieldRule:
    return FieldRule("choice", choices=choices, optional=optional)


_BOOL = FieldRule("bool")
_TOKEN_ID = _int(0, MAX_WIDTH - 1, optional=True)  # and below vocab_size, checked with it

# One rule per scalar constructor argument, checked once, first. Structured arguments (layer_types, layer_pattern,
# position_encodings, rope_parameters) and the rules that tie fields together are checked by their resolvers.
FIELD_RULES: dict[str, FieldRule] = {
    "vocab_size": _int(1, MAX_WIDTH),
    "hidden_size": _int(1, MAX_WIDTH),
    "intermediate_size": _int(1, MAX_WIDTH),
    "num_hidden_layers": _int(1, MAX_COUNT),
    "num_attention_heads": _int(1, MAX_COUNT),
    "num_key_value_heads": _int(1, MAX_COUNT, optional=True),
    "head_dim": _int(2, MAX_COUNT, optional=True, even=True),  # RoPE rotates pairs (transformers checks it for NoPE)
    "hidden_act": _one_of(HIDDEN_ACTS),
    "max_position_embeddings": _int(1, MAX_POSITIONS),
    "initializer_range": _real(0.0, 1.0),
    "rms_norm_eps": _real(1e-30, 1.0),  # stays a positive float32: an all-zero row normalises to zero, not NaN
    "use_cache": _BOOL,
    "tie_word_embeddings": _BOOL,
    "sliding_window": _int(1, MAX_POSITIONS, optional=True),
    # a base far below 1 underflows in float32 and turns the rotation angles into NaN
    "rope_theta": _real(1.0, math.inf, open_hi=True, optional=True),
    "sliding_rope_theta": _real(1.0, math.inf, open_hi=True, optional=True),
    "use_qk_norm": _BOOL,
    "attention_bias": _BOOL,
    "attention_dropout": _real(0.0, 1.0, open_hi=True),
    "linear_attention_type": _one_of(LINEAR_ATTENTION_TYPES, optional=True),
    "linear_num_heads": _int(1, MAX_COUNT, optional=True),
    "linear_head_dim": _int(1, MAX_COUNT, optional=True),
    "linear_expand_v": _real(0.0, 16.0, open_lo=True),
    "linear_conv_kernel_size": _int(2, MAX_COUNT),  # transformers' conv cache cannot hold an empty state
    "linear_chunk_size": _int(1, 256),  # the reference path solves a chunk x chunk triangular system per head
    "linear_state_size": _int(1, MAX_COUNT),
    "eval_full_attention_window": _int(1, MAX_POSITIONS, optional=True),
    "eval_efficient_window": _int(1, MAX_POSITIONS, optional=True),
    "eval_attention_sink_size": _int(0, MAX_POSITIONS),
    "attention_kernel": _one_of(ATTENTION_KERNELS),
    "fused_cross_entropy": _BOOL,
    "pad_token_id": _TOKEN_ID,
    "bos_token_id": _TOKEN_ID,
    "eos_token_id": _int(0, MAX_WIDTH - 1, optional=True, many=True),
}
# Checked here, passed on to transformers' PreTrainedConfig (or, for the RoPE shorthands, to `rope_parameters`).
_NOT_STORED = ("tie_word_embeddings", "pad_token_id", "bos_token_id", "eos_token_id", "rope_theta",
               "sliding_rope_theta")


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

    Every argument is checked once, at construction; a bad value raises ``ValueError`` naming the field and the
    allowed values (``FIELD_RULES`` holds the rule of each scalar argument). Integers must be ``int`` (not
    ``bool``/``float``), flags ``bool``, numbers finite; token ids lie below ``vocab_size``; ``head_dim`` is even;
    some layer is an attention layer. Sizes are bounded far above any model trained here, so that none overflows:
    vocabulary, hidden and MLP widths ``<= 2**24``; layer and head counts, per-head widths, state size and conv
    kernel ``<= 1024``; ``linear_chunk_size <= 256``; positions, windows and sinks ``<= 2**31 - 1`` (the int32 the
    attention kernels index with); ``rope_theta >= 1`` and ``rms_norm_eps >= 1e-30`` (smaller ones give NaN).
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
        # Every scalar argument is checked against FIELD_RULES first; the resolvers below only check how fields fit
        # together (divisibility, per-layer lists, what a layer type needs).
        given = locals()
        args = {name: rule.check(name, given[name]) for name, rule in FIELD_RULES.items()}
        for name, value in args.items():
            if name not in _NOT_STORED:
                setattr(self, name, value)
        self._resolve_heads()
        self.layer_types = self._resolve_layer_types(layer_types, layer_pattern)
        self.position_encodings = self._resolve_position_encodings(position_encodings)
        self._resolve_layer_fields()
        self.rope_parameters = self._resolve_rope_parameters(rope_parameters, rope_theta, sliding_rope_theta)
        # transformers' DynamicCache reads this to size LinearAttentionLayer state lists.
        self.number_of_conv_states = 1
        tokens = {k: args[k] for k in ("pad_token_id", "bos_token_id", "eos_token_id")}
        for name, ids in tokens.items():
            if any(i >= self.vocab_size for i in (ids if isinstance(ids, list) else [ids]) if i is not None):
                raise _invalid(name, ids, f"None or a token id below vocab_size={self.vocab_size}")
        super().__init__(**tokens, tie_word_embeddings=args["tie_word_embeddings"], **kwargs)

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
    def _resolve_heads(self) -> None:
        """Defaults of ``num_key_value_heads`` and ``head_dim``, and how the head counts divide."""
        heads = self.num_attention_heads
        if self.num_key_value_heads is None:
            self.num_key_value_heads = heads
        elif heads % self.num_key_value_heads:
            kv = self.num_key_value_heads
            raise _invalid("num_key_value_heads", kv, f"None or a divisor of num_attention_heads={heads}")
        if self.head_dim is None:
            if self.hidden_size % heads:
                allowed = f"a divisor of hidden_size={self.hidden_size}, or set head_dim explicitly"
                raise _invalid("num_attention_heads", heads, allowed)
            self.head_dim = self.hidden_size // heads
            if self.head_dim % 2 or self.head_dim > MAX_COUNT:  # it is saved, so it must pass its own rule on loading
                default = f"hidden_size // num_attention_heads={self.head_dim}"
                raise _invalid("head_dim", None, f"an explicit even head_dim <= {MAX_COUNT}, as {default} is not one")

    def _resolve_layer_types(self, layer_types: list[str] | None, layer_pattern: str | None) -> list[str]:
        n = self.num_hidden_layers
        from_pattern = None
        if layer_pattern is not None:
            if not isinstance(layer_pattern, str) or not layer_pattern or set(layer_pattern) - set(PATTERN_LETTERS):
                raise _invalid("layer_pattern", layer_pattern, "None or a non-empty string of the letters F, S, L")
            if n % len(layer_pattern):
                raise _invalid(
                    "layer_pattern", layer_pattern, f"a pattern whose length divides num_hidden_layers={n}"
                )
            from_pattern = [PATTERN_LETTERS[c] for c in layer_pattern * (n // len(layer_pattern))]
        if layer_types is None:
            return self._check_layout("layer_pattern", layer_pattern, from_pattern or ["full_attention"] * n)
        if not isinstance(layer_types, (list, tuple)) or len(layer_types) != n:
            raise _invalid("layer_types", layer_types, f"None or a list of exactly num_hidden_layers={n} layer types")
        for i, t in enumerate(layer_types):
            if t not in LAYER_TYPES:
                raise _invalid(f"layer_types[{i}]", t, ", ".join(LAYER_TYPES))
        types = self._check_layout("layer_types", layer_types, list(layer_types))
        if from_pattern is not None and from_pattern != types:
            raise _invalid("layer_pattern", layer_pattern, f"a pattern consistent with layer_types={layer_types}")
        return types

    @staticmethod
    def _check_layout(field: str, value: Any, types: list[str]) -> list[str]:
        if not set(types) & set(ATTENTION_LAYER_TYPES):  # transformers' cache measures sequences on attention layers
            raise _invalid(field, value, "a layout with at least one F or S (attention) layer")
        return types

    def _resolve_layer_fields(self) -> None:
        """What the layer types present need: a window, a recurrent mixer and its head layout."""
        types = set(self.layer_types)
        if "sliding_attention" in types and self.sliding_window is None:
            raise _invalid("sliding_window", None, "a positive integer when layer_types contains 'sliding_attention'")
        if "linear_attention" not in types:
            return
        kind = self.linear_attention_type
        if kind is None:
            allowed = f"{', '.join(LINEAR_ATTENTION_TYPES)} with linear_attention layers"
            raise _invalid("linear_attention_type", kind, allowed)
        if self.linear_num_heads is None:
            self.linear_num_heads = self.num_attention_heads
        if self.linear_head_dim is None:
            self.linear_head_dim = self.head_dim
        expand = self.linear_expand_v
        if kind != "gated_deltanet" and expand != 1.0:
            raise _invalid("linear_expand_v", expand, f"1.0 for {kind} (only gated_deltanet widens values)")
        if not (self.linear_head_dim * expand).is_integer():
            allowed = f"a factor giving linear_head_dim={self.linear_head_dim} an integer value width"
            raise _invalid("linear_expand_v", expand, allowed)

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
                    allowed = "'nope' for linear_attention layers (recurrent mixers take no positions)"
                    raise _invalid("position_encodings", pe, allowed)
                if isinstance(pe, (list, tuple)):
                    raise _invalid(f"position_encodings[{i}]", v, "'nope' for linear_attention layers")
                out[i] = "nope"
        return out

    def _resolve_rope_parameters(
        self, rope_parameters: dict[str, Any] | None, rope_theta: float | None, sliding_rope_theta: float | None
    ) -> dict[str, Any]:
        """Normalise to a dict keyed by attention layer type (``full_attention``/``sliding_attention``), fill
        transformers' defaults (``rope_type``, ``rope_theta``, ``original_max_position_embeddings``) and validate."""
        if rope_parameters is not None and not isinstance(rope_parameters, dict):
            raise _invalid("rope_parameters", rope_parameters, "a dict (flat, or keyed by attention layer type)")
        rp = copy.deepcopy(rope_parameters) if rope_parameters else {}
        nested = bool(rp) and all(k in ATTENTION_LAYER_TYPES for k in rp)
        if rp and not nested and any(k in LAYER_TYPES for k in rp):
            raise _invalid(
                "rope_parameters", rope_parameters, f"either a flat dict or one keyed only by {', '.join(ATTENTION_LAYER_TYPES)}"
            )
        per_type = {}
        for t in ATTENTION_LAYER_TYPES:
            params = rp.get(t) if nested else rp
            if params is not None and not isinstance(params, dict):
                raise _invalid(f"rope_parameters.{t}", params, "a dict of RoPE parameters, or None for defaults")
            per_type[t] = dict(params or {})
        for t, params in per_type.items():
            where = f"rope_parameters.{t}" if nested else "rope_parameters"
            if "type" in params:  # the pre-5.0 name of `rope_type`
                params.setdefault("rope_type", params.pop("type"))
            params.setdefault("rope_type", "default")
            theta_field = "sliding_rope_theta" if (t == "sliding_attention" and sliding_rope_theta is not None) else "rope_theta"
            theta = sliding_rope_theta if theta_field == "sliding_rope_theta" else rope_theta
            if theta is not None:
                _check_number(theta_field, theta, ">= 1")
                params["rope_theta"] = float(theta)
            params.setdefault("rope_theta", self.default_theta)
            if params["rope_type"] in _ROPE_TYPES_WITH_ORIGINAL_MAX:
                params.setdefault("original_max_position_embeddings", self.max_position_embeddings)
            _check_rope_type_parameters(where, params, self.head_dim)
        # RoPE scaling only makes sense where some layer actually uses RoPE. A flat dict scales the RoPE layers: a
        # layer type whose layers are all NoPE keeps only its base (so the stored per-type form validates again).
        rope_types = {lt for lt, pe in zip(self.layer_types, self.position_encodings) if pe == "rope"}
        for t in ATTENTION_LAYER_TYPES:
            if per_type[t]["rope_type"] == "default" or t in rope_types or t not in self.layer_types:
                continue
            if nested or not rope_types:
                raise _invalid(
                    f"rope_parameters.{t}" if nested else "rope_parameters",
                    rope_parameters,
                    f"no RoPE scaling for {t} layers, which are all NoPE (drop the scaling or use rope_type='default')",
                )
            per_type[t] = {"rope_type": "default", "rope_theta": per_type[t]["rope_theta"]}
        return per_type

    # ---------------------------------------------------------------- helpers
    @property
    def layer_pattern(self) -> str:
        """The layer types as a letter string (F/S/L per layer)."""
        inv = {v: k for k, v in PATTERN_LETTERS.items()}
        return "".join(inv[t] for t in self.layer_types)

    def convert_rope_params_to_dict(self, **kwargs: Any) -> dict[str, Any]:
        """transformers' hook for legacy RoPE keys left in ``kwargs`` (``rope_parameters`` itself was resolved in
        ``__init__``): ``rope_scaling`` (the pre-5.0 name of ``rope_parameters``, which wins as in transformers; its
        layer types keep their ``rope_theta`` unless it sets one) and a top-level ``partial_rotary_factor``."""
        kwargs.pop("rope_theta", None)  # some versions write it back; it already lives in `rope_parameters`
        rope_scaling = kwargs.pop("rope_scaling", None)
        partial_rotary_factor = kwargs.pop("partial_rotary_factor", None)
        if rope_scaling is None and partial_rotary_factor is None:
            return kwargs
        if rope_scaling is None:
            rope_scaling = copy.deepcopy(self.rope_parameters)
        elif not isinstance(rope_scaling, dict):
            raise _invalid("rope_scaling", rope_scaling, "a dict of RoPE parameters (better: pass `rope_parameters`)")
        nested = bool(rope_scaling) and all(k in ATTENTION_LAYER_TYPES for k in rope_scaling)
        merged = {}
        for t in ATTENTION_LAYER_TYPES:
            params = rope_scaling.get(t) if nested else rope_scaling
            if params is not None and not isinstance(params, dict):
                raise _invalid(f"rope_scaling.{t}", params, "a dict of RoPE parameters")
            merged[t] = {"rope_theta": self.rope_parameters[t]["rope_theta"], **(params or {})}
            if partial_rotary_factor is not None:
                merged[t].setdefault("partial_rotary_factor", partial_rotary_factor)
        self.rope_parameters = self._resolve_rope_parameters(merged, None, None)
        return kwargs

    def standardize_rope_params(self) -> None:
        """transformers' hook (e.g. after ``config.rope_scaling = ...``): bring ``rope_parameters`` back to the
        per-layer-type form with defaults filled in, validating it."""
        self.rope_parameters = self._resolve_rope_parameters(self.rope_parameters, None, None)

    def validate_layer_type(self) -> None:  # transformers' hook; our own checks ran at construction
        return None

    def validate_rope(self) -> None:
        """Raise ``ValueError`` for invalid ``rope_parameters``, e.g. after they were edited in place; leaves them
        unchanged. (``config.validate()`` runs transformers' own version: its strict validators are collected on
        ``PreTrainedConfig``; building the rotary module runs this check too.)"""
        self._resolve_rope_parameters(self.rope_parameters, None, None)

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
        # a flat dict assigned after construction is normalised (and validated) by the rotary embedding
        params = self.rope_parameters
        return params.get(layer_type, params) if isinstance(params, dict) else params

    def layer_letter(self, layer_idx: int) -> str:
        """``F``, ``S`` or ``L``: layer ``layer_idx`` in ``layer_pattern`` notation."""
        return {t: c for c, t in PATTERN_LETTERS.items()}[self.layer_types[layer_idx]]


def _check_number(field: str, value: Any, bound: str) -> None:
    """``value`` must be a finite int/float (not a bool) satisfying ``bound``: ``"> 0"`` or ``">= 1"``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and bound == "> 0":
        ok = value > 0
    elif ok and bound == ">= 1":
        ok = value >= 1
    if not ok:
        raise _invalid(field, value, f"a finite number {bound}")


def _check_rope_type_parameters(where: str, params: dict[str, Any], head_dim: int) -> None:
    """Validate one layer type's standardised RoPE parameters (``where`` names the dict in messages): the keys
    its ``rope_type`` reads, their types and ranges. Stricter than transformers, which only logs warnings for bad
    values and unknown keys."""
    rope_type = params["rope_type"]
    if not isinstance(rope_type, str) or rope_type not in SUPPORTED_ROPE_TYPES:
        raise _invalid(f"{where}.rope_type", rope_type, ", ".join(SUPPORTED_ROPE_TYPES))
    required, optional = _ROPE_TYPE_KEYS[rope_type]
    allowed = ("rope_type", "rope_theta", "partial_rotary_factor", *required, *optional)
    for key in params:
        if key not in allowed:
            raise _invalid(f"{where}.{key}", params[key], f"only the keys of rope_type={rope_type!r}: {', '.join(allowed)}")
    for key in required:
        if key not in params:
            raise _invalid(f"{where}.{key}", "<missing>", f"a value; rope_type={rope_type!r} requires {', '.join(required)}")
    _check_number(f"{where}.rope_theta", params["rope_theta"], ">= 1")
    partial = params.get("partial_rotary_factor", 1.0)
    if not (isinstance(partial, (int, float)) and not isinstance(partial, bool) and 0 < partial <= 1):
        raise _invalid(f"{where}.partial_rotary_factor", partial, "a number in (0, 1]")
    rotary_dim = int(head_dim * partial)
    if rotary_dim < (4 if rope_type == "dynamic" else 2):  # dynamic NTK divides by rotary_dim - 2
        raise _invalid(
            f"{where}.partial_rotary_factor", partial, f"a fraction of head_dim={head_dim} of at least 4 channels for dynamic, 2 otherwise"
        )
    # yarn and longrope infer a `factor` of None as max_position_embeddings / original_max_position_embeddings
    if "factor" in params and not (params["factor"] is None and rope_type in ("yarn", "longrope")):
        _check_number(f"{where}.factor", params["factor"], "> 0" if rope_type == "proportional" else ">= 1")
    if "original_max_position_embeddings" in params:
        original = params["original_max_position_embeddings"]
        if not isinstance(original, int) or isinstance(original, bool) or original < 1:
            raise _invalid(f"{where}.original_max_position_embeddings", original, "a positive integer")
    for key in ("attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "low_freq_factor", "high_freq_factor"):
        if params.get(key) is not None or (key in params and key in required):
            _check_number(f"{where}.{key}", params[key], "> 0")
    if "truncate" in params and not isinstance(params["truncate"], bool):
        raise _invalid(f"{where}.truncate", params["truncate"], "True or False")
    if rope_type == "yarn" and (params.get("beta_fast") or 32) <= (params.get("beta_slow") or 1):
        raise _invalid(f"{where}.beta_fast", params.get("beta_fast"), "a number > beta_slow (defaults 32 and 1)")
    if rope_type == "llama3" and params["high_freq_factor"] <= params["low_freq_factor"]:
        raise _invalid(f"{where}.high_freq_factor", params["high_freq_factor"], "a number > low_freq_factor")
    if rope_type == "longrope":
        for key in ("short_factor", "long_factor"):
            value = params[key]
            numbers = isinstance(value, (list, tuple)) and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0 for x in value
            )
            if not numbers or len(value) != (rotary_dim + 1) // 2:
                raise _invalid(
                    f"{where}.{key}", value, f"a list of {(rotary_dim + 1) // 2} positive numbers (one per rotary frequency)"
                )
            params[key] = list(value)  # JSON has no tuples: keep the saved config identical


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
