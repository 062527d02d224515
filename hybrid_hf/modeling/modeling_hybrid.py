"""Hybrid decoder-only language model: full attention, sliding-window attention and recurrent mixers per layer.

The one place that shows how a decoder layer is assembled. Per-layer behaviour (mixer, window, RoPE/NoPE) is read
from ``config`` at construction. Shipped as Hub remote code by ``save_pretrained``: imports are limited to torch,
transformers and relative modules of this folder; optional CUDA packages are imported lazily elsewhere.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn
from transformers import GenerationMixin, PreTrainedModel, masking_utils
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_layers import GenericForSequenceClassification, GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import can_return_tuple, logging

from .attention_kernels import causal_attention, cu_seqlens_from_position_ids, resolve_kernel
from .checkpoint_loading import from_pretrained_checked
from .configuration_hybrid import ATTENTION_LAYER_TYPES, HybridConfig
from .linear_attention import LINEAR_MIXERS, build_linear_mixer
from .loss import causal_lm_loss, chunked_cross_entropy
from .rotary import HybridRotaryEmbedding, apply_rotary_pos_emb, rotate_half  # noqa: F401  (also imported from here)
from .static_cache import HybridStaticCache

logger = logging.get_logger(__name__)

# transformers 5.24 renamed the cache argument and output field `past_key_values` to `cache` (the old names still work
# there, with deprecation warnings). Everything below passes and reads the cache under whichever name is installed.
_OUTPUT_CACHE_FIELD = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


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


@functools.cache
def _cache_kwarg(mask_helper: Callable) -> str:
    """The name under which a transformers masking helper takes the cache (inspected once per helper)."""
    return "cache" if "cache" in inspect.signature(mask_helper).parameters else "past_key_values"


def _make_mask(mask_helper: Callable, cache: Cache | None, **kwargs: Any) -> Any:
    return mask_helper(**kwargs, **{_cache_kwarg(mask_helper): cache})


class HybridRMSNorm(nn.Module):
    """Root-mean-square layer norm computed in fp32."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dtype = hidden_states.dtype
        x = hidden_states.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    b, h, s, d = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    return hidden_states[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention; the window is carried by ``attention_mask`` (as for sdpa and flex)."""
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[..., : key.shape[-2]]
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return out, weights


class KernelPlan:
    """Stands in for an attention mask when a layer runs a fused kernel (see ``attention_kernels``): no padding, no
    cached prefix; ``cu_seqlens`` marks packed documents."""

    def __init__(self, kernel: str, cu_seqlens: torch.Tensor | None) -> None:
        self.kernel = kernel
        self.cu_seqlens = cu_seqlens


class HybridAttention(nn.Module):
    """Multi-head (GQA) attention; full or sliding-window, RoPE or NoPE, optional QK-norm."""

    def __init__(self, config: HybridConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.layer_type = config.layer_types[layer_idx]
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        self.use_rope = config.position_encodings[layer_idx] == "rope"
        self.sliding_window = config.sliding_window if self.layer_type == "sliding_attention" else None
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)
        if config.use_qk_norm:
            self.q_norm = HybridRMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = HybridRMSNorm(self.head_dim, eps=config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def project_qkv(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None,
        qkv_weight: torch.Tensor | None = None,
        qkv_bias: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values as (B, H, T, D), QK-normed and rotated. ``qkv_weight`` (optional) is the three
        projections concatenated into one matrix (one matmul; used by the fused decode step)."""
        hidden_shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        if qkv_weight is None:
            q, k, v = self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states)
        else:
            kv_width = self.num_key_value_heads * self.head_dim
            q, k, v = nn.functional.linear(hidden_states, qkv_weight, qkv_bias).split(
                [self.num_heads * self.head_dim, kv_width, kv_width], dim=-1
            )
        q, k, v = q.view(hidden_shape), k.view(hidden_shape), v.view(hidden_shape).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        if self.use_rope:
            q, k = apply_rotary_pos_emb(q, k, *position_embeddings)
        return q, k, v

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None,
        attention_mask: torch.Tensor | None,
        past_key_values: Cache | None = None,
        output_attentions: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        q, k, v = self.project_qkv(hidden_states, position_embeddings)
        if isinstance(past_key_values, HybridStaticCache):
            kernel = self.config.attention_kernel
            kernel = resolve_kernel("auto" if kernel == "transformers" else kernel, q.device, self.layer_type)
            out = past_key_values.attend(
                self.layer_idx, q, k, v, scale=self.scaling, position_ids=kwargs["position_ids"], kernel=kernel
            )
            return self.o_proj(out.reshape(*input_shape, -1)), None
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)

        if isinstance(attention_mask, KernelPlan):
            out = causal_attention(
                q, k, v,
                window=self.sliding_window,
                scale=self.scaling,
                kernel=attention_mask.kernel,
                cu_seqlens=attention_mask.cu_seqlens,
            )
            return self.o_proj(out.reshape(*input_shape, -1)), None

        # Attention weights exist only on the eager path; analysis asks for them explicitly.
        if output_attentions:
            interface: Callable = eager_attention_forward
        else:
            interface = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        out, weights = interface(
            self,
            q,
            k,
            v,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            sliding_window=self.sliding_window,
            **kwargs,
        )
        out = self.o_proj(out.reshape(*input_shape, -1).contiguous())
        return out, weights


class HybridMLP(nn.Module):
    """SwiGLU feed-forward block."""

    def __init__(self, config: HybridConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor, gate_up_weight: torch.Tensor | None = None) -> torch.Tensor:
        """``gate_up_weight`` (optional): gate and up projections concatenated into one matrix (one matmul)."""
        if gate_up_weight is None:
            return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
        gate, up = nn.functional.linear(x, gate_up_weight).chunk(2, dim=-1)
        return self.down_proj(self.act_fn(gate) * up)


class HybridDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block: token mixer (attention or recurrent ``linear_attn``) then SwiGLU MLP."""

    def __init__(self, config: HybridConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_type = config.layer_types[layer_idx]
        if self.layer_type == "linear_attention":
            self.linear_attn = build_linear_mixer(config, layer_idx)
        else:
            self.self_attn = HybridAttention(config, layer_idx)
        self.mlp = HybridMLP(config)
        self.input_layernorm = HybridRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = HybridRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        output_attentions: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        weights = None
        if self.layer_type == "linear_attention":
            hidden_states = self.linear_attn(
                hidden_states,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                **kwargs,
            )
        else:
            hidden_states, weights = self.self_attn(
                hidden_states,
                position_embeddings=position_embeddings,
                attention_mask=attention_mask,
                past_key_values=past_key_values,
                output_attentions=output_attentions,
                position_ids=position_ids,
                **kwargs,
            )
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = residual + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states, weights


class HybridPreTrainedModel(PreTrainedModel):
    config_class = HybridConfig
    config: HybridConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["HybridDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False
    _keep_in_fp32_modules = ["A_log", "dt_bias"]

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        """transformers' ``from_pretrained``; weights that do not fit the config raise ``CheckpointMismatchError``
        naming the tensors and the config field (``checkpoint_loading.py``)."""
        return from_pretrained_checked(super().from_pretrained, *args, **kwargs)

    @property
    def _is_stateful(self) -> bool:  # recurrent state cannot be rolled back (assisted decoding refuses)
        return "linear_attention" in self.config.layer_types

    def compile_layers(self, **compile_kwargs: Any) -> None:
        """``torch.compile`` every decoder layer in place: fuses RMSNorm, RoPE, SwiGLU and the attention kernel
        (about 3x training throughput on an H200, see ``benchmarks/results``). Call after moving the model."""
        for layer in self.base_model.layers:
            layer.compile(**compile_kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(mean=0.0, std=std)
            if module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, HybridRMSNorm):
            module.weight.fill_(1.0)
        elif isinstance(module, HybridRotaryEmbedding):
            module.reset_inv_freq()
        elif hasattr(module, "reset_mixer_parameters"):
            module.reset_mixer_parameters()


# Newer transformers hand mask functions in-document indices for packed rows (``remap_positions_for_packed_sequence``);
# older ones (e.g. 5.17) hand row indices, so the sinks of every document but the first must come from the positions.
_MASKS_REMAP_PACKED_POSITIONS = hasattr(masking_utils, "remap_positions_for_packed_sequence")


def _receptive_field_cap(
    window: int, sinks: int, row_start: torch.Tensor | None = None, key_positions: torch.Tensor | None = None
) -> Callable:
    """Mask function keeping the last ``window`` keys (incl. self) plus the first ``sinks`` tokens.

    ANDed with the plain causal mask by ``HybridModel._mask_mapping``. Indices are row indices, except for packed
    documents, where newer transformers remaps them to in-document positions (so every document keeps its own sinks);
    with older versions ``key_positions`` (B, T), the packed rows' position ids, gives each key's in-document position.
    ``row_start`` (B,) holds each row's first real key (left padding), from which the sinks are counted."""

    def cap(batch_idx: int, head_idx: int, q_idx: int, kv_idx: int) -> bool:
        if key_positions is not None:
            first = key_positions[batch_idx, kv_idx]
        elif row_start is not None:
            first = kv_idx - row_start[batch_idx]
        else:
            first = kv_idx
        return (kv_idx > q_idx - window) | (first < sinks)

    return cap


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def validate_inputs(
    config: HybridConfig,
    input_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
    attention_mask: Any,
    position_ids: torch.Tensor | None,
    past_length: int,
) -> None:
    """Check the model inputs once, at the model entry, with errors naming the argument and the expected shape.

    Shapes are checked always (host-side, free). Token ids are range-checked with one min/max reduction, skipped while
    ``torch.compile`` traces or a CUDA graph is being captured (a host read is impossible there; a compiled or
    graph-replayed decode step gets its ids from an earlier, checked step). Positions beyond
    ``max_position_embeddings`` are allowed (length extrapolation is what NoPE and sliding-window layers are studied
    for) and logged once: RoPE layers were not trained there."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("HybridModel.forward: pass exactly one of `input_ids` or `inputs_embeds`.")
    if input_ids is not None:
        if input_ids.dim() != 2:
            raise ValueError(
                f"`input_ids` has shape {_shape(input_ids)}; expected (batch_size, sequence_length) "
                f"(a single sequence is `input_ids[None]`)."
            )
        if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
            raise ValueError(f"`input_ids` has dtype {input_ids.dtype}; expected an integer dtype (torch.long).")
        batch, length = input_ids.shape
        name, given = "input_ids", input_ids
    else:
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != config.hidden_size:
            raise ValueError(
                f"`inputs_embeds` has shape {_shape(inputs_embeds)}; expected (batch_size, sequence_length, "
                f"hidden_size={config.hidden_size})."
            )
        batch, length = inputs_embeds.shape[:2]
        name, given = "inputs_embeds", inputs_embeds
    if batch == 0 or length == 0:
        raise ValueError(f"`{name}` has shape {_shape(given)}: empty; expected at least one row of at least one token.")
    if isinstance(attention_mask, torch.Tensor):
        expected = (batch, past_length + length)
        if attention_mask.dim() == 2 and _shape(attention_mask) != expected:
            raise ValueError(
                f"`attention_mask` has shape {_shape(attention_mask)}; expected {expected} (batch_size, cached + new "
                f"tokens = {past_length} + {length})."
            )
        if attention_mask.dim() == 4 and attention_mask.shape[0] not in (1, batch):
            raise ValueError(
                f"`attention_mask` has shape {_shape(attention_mask)}; a 4D mask must have batch size 1 or {batch}."
            )
        if attention_mask.dim() not in (2, 4):
            raise ValueError(
                f"`attention_mask` has shape {_shape(attention_mask)}; expected {expected} (a 2D padding mask) or a "
                f"4D mask (batch_size, 1, {length}, key_length)."
            )
    if position_ids is not None and (position_ids.dim() != 2 or position_ids.shape[0] not in (1, batch)
                                     or position_ids.shape[1] != length):
        raise ValueError(
            f"`position_ids` has shape {_shape(position_ids)}; expected ({batch}, {length}) or (1, {length})."
        )
    if torch.compiler.is_compiling() or (given.is_cuda and torch.cuda.is_current_stream_capturing()):
        return
    checks = []
    if input_ids is not None:
        checks += [input_ids.min(), input_ids.max()]
    if position_ids is not None:
        checks.append(position_ids.max().to(checks[0].dtype if checks else position_ids.dtype))
    values = torch.stack(checks).tolist() if checks else []
    if input_ids is not None:
        low, high = values[0], values[1]
        if low < 0 or high >= config.vocab_size:
            bad = low if low < 0 else high
            raise ValueError(
                f"`input_ids` contains the id {bad}; token ids must lie in [0, vocab_size={config.vocab_size})."
            )
    last_position = values[-1] if position_ids is not None else past_length + length - 1
    if last_position >= config.max_position_embeddings:
        logger.warning_once(
            f"hybrid_hf: positions reach beyond max_position_embeddings={config.max_position_embeddings}; RoPE "
            "layers were not trained there (NoPE and sliding-window layers extrapolate by design)."
        )


class HybridModel(HybridPreTrainedModel):
    """The bare decoder stack returning hidden states."""

    def __init__(self, config: HybridConfig) -> None:
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([HybridDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = HybridRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = HybridRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def _mask_mapping(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        past_key_values: Cache | None,
        position_ids: torch.Tensor,
        output_attentions: bool = False,
    ) -> dict[str, Any]:
        cfg = self.config
        mask_config = cfg
        if output_attentions and cfg._attn_implementation != "eager":
            # Attention weights come from the eager path, which needs an explicit additive mask.
            mask_config = copy.copy(cfg)
            mask_config._attn_implementation_internal = "eager"
        # An empty cache carries no sizes; leaving it out lets transformers detect packed documents from
        # position ids (it skips that check whenever a cache object is passed, even a fresh one).
        if past_key_values is not None and past_key_values.get_seq_length() == 0:
            past_key_values = None
        kwargs = {
            "cache": past_key_values,
            "config": mask_config,
            "inputs_embeds": inputs_embeds,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
        }
        caps = {"full_attention": cfg.eval_full_attention_window, "sliding_attention": cfg.eval_efficient_window}
        if any(v is not None for v in caps.values()):
            if cfg._attn_implementation.startswith("flash_attention"):
                raise ValueError(
                    "eval_full_attention_window/eval_efficient_window (receptive-field caps) need "
                    "attn_implementation in {'eager', 'sdpa', 'flex_attention'}, not "
                    f"{cfg._attn_implementation!r}."
                )
            if cfg.eval_attention_sink_size and past_key_values is not None and caps["sliding_attention"]:
                raise ValueError(
                    "eval_attention_sink_size>0 with a capped sliding layer needs use_cache=False: the sliding "
                    "cache has already dropped the sink tokens."
                )
        mapping: dict[str, Any] = {}
        types = set(cfg.layer_types)
        row_start = None  # sinks count from each row's first real token: skip left padding
        if cfg.eval_attention_sink_size and isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2:
            row_start = (attention_mask.cumsum(-1) == 0).sum(-1)
        key_positions = None  # packed rows on transformers that does not remap mask indices per document
        if (
            cfg.eval_attention_sink_size
            and not _MASKS_REMAP_PACKED_POSITIONS
            and attention_mask is None
            and past_key_values is None
            and masking_utils.find_packed_sequence_indices(position_ids) is not None
        ):
            key_positions = position_ids.expand(inputs_embeds.shape[0], -1)
        make_cap = functools.partial(
            _receptive_field_cap, sinks=cfg.eval_attention_sink_size, row_start=row_start, key_positions=key_positions
        )
        if "full_attention" in types:
            cap = caps["full_attention"]
            extra = {"and_mask_function": make_cap(cap)} if cap else {}
            # the cache layer that sizes the mask is named explicitly: older transformers picked the first
            # non-sliding layer, which may be a recurrent one
            extra["layer_idx"] = cfg.layer_types.index("full_attention")
            mapping["full_attention"] = _make_mask(create_causal_mask, **kwargs, **extra)
        if "sliding_attention" in types:
            cap = caps["sliding_attention"]
            extra = {"layer_idx": cfg.layer_types.index("sliding_attention")}
            if cap:
                # Built on the plain causal mask, not the sliding one: ANDing the cap into the sliding mask would
                # drop the sinks lying beyond the trained window. The local part never exceeds that window.
                window = min(cap, cfg.sliding_window)
                extra["and_mask_function"] = make_cap(window)
                mapping["sliding_attention"] = _make_mask(create_causal_mask, **kwargs, **extra)
            else:
                mapping["sliding_attention"] = _make_mask(create_sliding_window_causal_mask, **kwargs, **extra)
        if "linear_attention" in types:
            mapping["linear_attention"] = attention_mask
        return mapping

    def _fused_attention_applies(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        past_key_values: Cache | None,
        output_attentions: bool,
    ) -> bool:
        """Fused attention kernels serve training and prefill without padding, caps or requested weights."""
        cfg = self.config
        kernel = cfg.attention_kernel
        if kernel == "transformers" or output_attentions:
            return False
        if kernel == "auto" and not (inputs_embeds.is_cuda and cfg._attn_implementation == "sdpa"):
            return False
        if cfg.eval_full_attention_window is not None or cfg.eval_efficient_window is not None:
            return False
        if self.training and cfg.attention_dropout > 0:
            return False
        if past_key_values is not None and past_key_values.get_seq_length() > 0:
            return False
        return attention_mask is None or (attention_mask.dim() == 2 and bool(attention_mask.all()))

    @staticmethod
    def _packed_boundaries(position_ids, inputs_embeds, attention_mask, past_key_values, kwargs) -> torch.Tensor | None:
        """Document boundaries of packed rows (``cu_seq_lens_q`` as given, or read from restarting position ids);
        stored in ``kwargs`` for the layers. Packing is only recognised without padding mask and cached prefix."""
        cu = kwargs.get("cu_seq_lens_q")
        if cu is not None or attention_mask is not None:
            return cu
        if past_key_values is not None and past_key_values.get_seq_length() > 0:
            return None
        cu = cu_seqlens_from_position_ids(position_ids.expand(inputs_embeds.shape[0], -1))
        if cu is not None:
            kwargs.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu)
        return cu

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        cache: Cache | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        """Run the decoder stack. ``attention_mask`` is the usual 2D padding mask (or a per-type dict of prepared
        masks). Packed documents are recognised from ``position_ids`` that restart at 0 (or ``cu_seq_lens_q``).
        The cache may be passed as ``cache`` (transformers >= 5.24) or ``past_key_values``."""
        past_key_values = resolve_cache_argument(cache, past_key_values)
        cfg = self.config
        validate_inputs(
            cfg, input_ids, inputs_embeds, attention_mask, position_ids,
            past_key_values.get_seq_length() if past_key_values is not None else 0,
        )
        output_attentions = cfg.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = cfg.output_hidden_states if output_hidden_states is None else output_hidden_states
        if use_cache is None:  # training never needs a cache unless asked for one
            use_cache = cfg.use_cache and not self.training
        if self.gradient_checkpointing and self.training:
            use_cache = False
            # The backward replay would write the cache again. transformers' checkpointing layers drop it by argument
            # name, `cache` since 5.24, which our layers do not use: drop it here for all versions.
            if torch.is_grad_enabled():
                past_key_values = None
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=cfg)
        if position_ids is None:
            past_seen = past_key_values.get_seq_length() if past_key_values is not None else 0
            position_ids = (torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen).unsqueeze(0)

        if isinstance(attention_mask, dict):
            mask_mapping = attention_mask
        elif isinstance(past_key_values, HybridStaticCache):
            if attention_mask is not None and not bool(attention_mask.all()):
                raise ValueError(
                    "HybridStaticCache decodes rows of equal length: `attention_mask` must not contain padding."
                )
            if output_attentions:
                raise ValueError("output_attentions=True is not available with HybridStaticCache.")
            if cfg.eval_full_attention_window is not None or cfg.eval_efficient_window is not None:
                raise ValueError(
                    "eval_full_attention_window/eval_efficient_window (receptive-field caps) are not applied by "
                    "HybridStaticCache, which attends without masks: unset them, or decode with a DynamicCache "
                    "(model.generate) or use_cache=False."
                )
            mask_mapping = dict.fromkeys(cfg.layer_types)
        elif self._fused_attention_applies(inputs_embeds, attention_mask, past_key_values, bool(output_attentions)):
            cu = self._packed_boundaries(position_ids, inputs_embeds, attention_mask, past_key_values, kwargs)
            mask_mapping = {
                t: KernelPlan(resolve_kernel(cfg.attention_kernel, inputs_embeds.device, t), cu)
                for t in ATTENTION_LAYER_TYPES
            }
            mask_mapping["linear_attention"] = None
        else:
            mask_mapping = self._mask_mapping(
                inputs_embeds, attention_mask, past_key_values, position_ids, bool(output_attentions)
            )
            if "linear_attention" in cfg.layer_types:  # recurrent layers reset their state per packed document
                self._packed_boundaries(position_ids, inputs_embeds, attention_mask, past_key_values, kwargs)

        hidden_states = inputs_embeds
        rope = self.rotary_emb(hidden_states, position_ids)
        all_hidden: tuple[torch.Tensor, ...] | None = () if output_hidden_states else None
        all_attn: tuple[torch.Tensor | None, ...] | None = () if output_attentions else None
        for layer in self.layers:
            if all_hidden is not None:
                all_hidden += (hidden_states,)
            hidden_states, weights = layer(
                hidden_states,
                attention_mask=mask_mapping[layer.layer_type],
                position_ids=position_ids,
                past_key_values=past_key_values,
                use_cache=use_cache,
                position_embeddings=rope.get(layer.layer_type),
                output_attentions=bool(output_attentions),
                **kwargs,
            )
            if all_attn is not None:
                all_attn += (weights,)
        hidden_states = self.norm(hidden_states)
        if isinstance(past_key_values, HybridStaticCache):
            past_key_values.seen += hidden_states.shape[1]
        if all_hidden is not None:
            all_hidden += (hidden_states,)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            hidden_states=all_hidden,
            attentions=all_attn,
            **{_OUTPUT_CACHE_FIELD: past_key_values if use_cache else None},
        )


class HybridForCausalLM(HybridPreTrainedModel, GenerationMixin):
    """Hybrid decoder with a language-modelling head."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}

    def __init__(self, config: HybridConfig) -> None:
        super().__init__(config)
        self.model = HybridModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        cache: Cache | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Causal LM forward; ``labels`` are shifted inside the loss (ignore index -100). The cache may be passed as
        ``cache`` (transformers >= 5.24) or ``past_key_values``."""
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=resolve_cache_argument(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        loss = logits = None
        loss_kwargs = {k: kwargs[k] for k in ("num_items_in_batch", "ignore_index", "shift_labels") if k in kwargs}
        if labels is not None and self.config.fused_cross_entropy:
            loss = chunked_cross_entropy(hidden_states, self.lm_head.weight, labels, **loss_kwargs)
        else:
            keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            logits = self.lm_head(hidden_states[:, keep, :])
            if labels is not None:
                loss = causal_lm_loss(logits, labels, **loss_kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            **{_OUTPUT_CACHE_FIELD: output_cache(outputs)},
        )


class HybridForSequenceClassification(GenericForSequenceClassification, HybridPreTrainedModel):
    """Hybrid decoder with a classification head on the last non-padding token."""


__all__ = [
    "HybridPreTrainedModel",
    "HybridModel",
    "HybridForCausalLM",
    "HybridForSequenceClassification",
    "LINEAR_MIXERS",
    "output_cache",
]
