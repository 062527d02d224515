"""Hybrid decoder-only language model: full attention, sliding-window attention and recurrent mixers per layer.

The one place that shows how a decoder layer is assembled and how a forward pass runs (see ``README.md`` here for
the data path). Per-layer behaviour (mixer, window, RoPE/NoPE) is read from ``config`` at construction; how every
layer attends in one forward is decided once, by ``attention_dispatch.resolve``. Shipped as Hub remote code by
``save_pretrained``: imports are limited to torch, transformers and relative modules of this folder; optional CUDA
packages are imported lazily elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GenericForSequenceClassification, GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils import can_return_tuple

from .attention import HybridAttention
from .attention_dispatch import LayerPlan, resolve, static_cache_plan
from .cache import OUTPUT_CACHE_FIELD, cached_length, output_cache, resolve_cache_argument
from .checkpoint_loading import from_pretrained_checked
from .configuration_hybrid import HybridConfig
from .inputs import validate_inputs
from .linear_attention import LINEAR_MIXERS, build_linear_mixer
from .loss import causal_lm_loss, chunked_cross_entropy
from .norm import HybridRMSNorm
from .rotary import HybridRotaryEmbedding
from .static_cache import HybridStaticCache

# Packed-document boundaries arrive from transformers' collators under these names; the plan carries them instead.
_PACKING_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


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
        plan: LayerPlan,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        fused_weights: dict[str, torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``fused_weights`` (optional, attention layers): ``qkv_weight``/``qkv_bias``/``gate_up_weight``, the q/k/v
        and gate/up projections concatenated into one matrix each (one matmul each; used by ``generate_fast``)."""
        fused = fused_weights or {}
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        weights = None
        if self.layer_type == "linear_attention":
            hidden_states = self.linear_attn(
                hidden_states, attention_mask=plan.mask, past_key_values=cache, cu_seqlens=plan.cu_seqlens
            )
        else:
            hidden_states, weights = self.self_attn(
                hidden_states, position_embeddings, plan, cache,
                qkv_weight=fused.get("qkv_weight"), qkv_bias=fused.get("qkv_bias"), **kwargs,
            )
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = self.post_attention_layernorm(hidden_states)
        hidden_states = residual + self.mlp(hidden_states, gate_up_weight=fused.get("gate_up_weight"))
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

    def _cache_for_call(self, use_cache: bool | None, cache: Cache | None) -> tuple[bool, Cache | None]:
        """``(use_cache, cache)`` of one forward: training never needs a cache unless asked for one, and gradient
        checkpointing never writes one (the backward replay would write it again; transformers' checkpointing
        layers drop it by argument name, which differs across versions, so it is dropped here)."""
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if self.gradient_checkpointing and self.training:
            use_cache = False
            if torch.is_grad_enabled():
                cache = None
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        return use_cache, cache

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
        masks). Packed documents are recognised from ``position_ids`` that restart at 0 (or ``cu_seq_lens_q``; see
        ``masking``). The cache may be passed as ``cache`` (transformers >= 5.24) or ``past_key_values``."""
        cfg = self.config
        output_attentions = bool(cfg.output_attentions if output_attentions is None else output_attentions)
        output_hidden_states = cfg.output_hidden_states if output_hidden_states is None else output_hidden_states
        use_cache, cache = self._cache_for_call(use_cache, resolve_cache_argument(cache, past_key_values))
        past_length = cached_length(cache, cfg.layer_types)
        validate_inputs(cfg, input_ids, inputs_embeds, attention_mask, position_ids, past_length)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        packing = {k: kwargs.pop(k) for k in _PACKING_KWARGS if k in kwargs}
        plan = resolve(cfg, inputs_embeds, attention_mask, cache, position_ids, output_attentions=output_attentions,
                       training=self.training, cu_seqlens=packing.get("cu_seq_lens_q"))
        if position_ids is None:
            position_ids = (torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_length)[None]

        hidden_states = inputs_embeds
        rope = self.rotary_emb(hidden_states, position_ids)
        all_hidden: tuple[torch.Tensor, ...] | None = () if output_hidden_states else None
        all_attn: tuple[torch.Tensor | None, ...] | None = () if output_attentions else None
        for layer, layer_plan in zip(self.layers, plan):
            if all_hidden is not None:
                all_hidden += (hidden_states,)
            hidden_states, weights = layer(
                hidden_states, plan=layer_plan, position_embeddings=rope.get(layer.layer_type), cache=cache, **kwargs
            )
            if all_attn is not None:
                all_attn += (weights,)
        hidden_states = self.norm(hidden_states)
        if all_hidden is not None:
            all_hidden += (hidden_states,)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            hidden_states=all_hidden,
            attentions=all_attn,
            **{OUTPUT_CACHE_FIELD: cache if use_cache else None},
        )

    def decode_step(
        self,
        input_ids: torch.Tensor,
        cache: HybridStaticCache,
        layers: Sequence[Callable] | None = None,
        fused_weights: Sequence[dict[str, torch.Tensor] | None] | None = None,
    ) -> torch.Tensor:
        """Final hidden states (B, 1, hidden) of one new token per row (``input_ids`` (B, 1)) at the cache's current
        position, written into ``cache``. No host synchronisation and no input checks: the step can be captured in
        a CUDA graph and replayed (the cache advances its device-side position at every replay).

        ``layers`` (optional) stand in for ``self.layers`` with the same call signature, e.g. ``torch.compile``d
        copies; ``fused_weights`` (optional) holds per layer the concatenated projections of
        ``HybridDecoderLayer.forward``."""
        hidden_states = self.embed_tokens(input_ids)
        rope = self.rotary_emb(hidden_states, cache.position)
        plan = static_cache_plan(self.config, hidden_states, cache)
        for i, layer in enumerate(layers if layers is not None else self.layers):
            layer_type = self.config.layer_types[i]
            hidden_states, _ = layer(
                hidden_states, plan=plan[i], position_embeddings=rope.get(layer_type), cache=cache,
                fused_weights=fused_weights[i] if fused_weights is not None else None,
            )
        return self.norm(hidden_states)


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

    def decode_step(
        self,
        input_ids: torch.Tensor,
        cache: HybridStaticCache,
        layers: Sequence[Callable] | None = None,
        fused_weights: Sequence[dict[str, torch.Tensor] | None] | None = None,
    ) -> torch.Tensor:
        """Next-token logits (B, vocab) of one new token per row, appended to ``cache`` (see
        ``HybridModel.decode_step``; this is the step ``generate_fast`` captures in a CUDA graph)."""
        return self.lm_head(self.model.decode_step(input_ids, cache, layers, fused_weights)[:, -1])

    def generate(self, inputs: torch.Tensor | None = None, generation_config: Any = None, **kwargs: Any) -> Any:
        """transformers' ``generate``, with greedy/sampled decoding of unpadded batches served by ``generate_fast``
        (static cache, CUDA-graph decode; ``cache_implementation="static"`` also compiles the step). Beam search,
        padding, streamers, logits processors, dict outputs and ``cache_implementation="dynamic"`` run transformers'
        own loop (logged once per reason; ``fast_generation.fast_path_refusal`` tells in advance)."""
        from .fast_generation import route_generate

        return route_generate(self, super().generate, inputs, generation_config, **kwargs)

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
            **{OUTPUT_CACHE_FIELD: output_cache(outputs)},
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
