"""Attention dispatch: the one place that decides, once per forward, how every layer attends (``resolve``).

Window convention everywhere in hybrid_hf: a window ``W`` covers ``W`` keys including the current token, i.e. query
``i`` sees keys ``i-W+1 .. i``. flash-attn spells the same window ``window_size=(W - 1, 0)``.

Kernels, chosen by ``config.attention_kernel``:

- ``"flash_attn"``: FlashAttention-4 (``flash_attn.cute``) or flash-attn 2.x ``flash_attn_func``/
  ``flash_attn_varlen_func`` (CUDA, optional packages; FA4 preferred when both are installed). Runs outside
  ``torch.compile`` graphs (a graph break per call): dynamo cannot trace the CuTe-DSL kernels;
- ``"triton"``: hybrid_hf's own sliding-window flash attention (``attention_triton``; CUDA with triton), which visits
  only the blocks inside the window and takes packed documents as a document-id vector (fp16/bf16; fp32 inputs run
  FlexAttention, whose fp32 matmuls are not rounded to TF32);
- ``"flex"``: FlexAttention with a sliding-window (and document) block mask built once per shape and compiled once;
- ``"sdpa"``: ``scaled_dot_product_attention`` — ``is_causal`` for full layers (cuDNN/flash backends on CUDA), an
  explicit boolean mask for windows and documents (the reference; O(T^2) memory).

``"auto"`` picks per layer type what measured fastest in a training step on an H200
(``benchmarks/results/attention-kernels-profile-h200-run13.md``, ``speed-h200-run13-train-fa4.md``): sliding layers
run ``"triton"`` (else ``"flash_attn"``, else ``"flex"``), full layers ``"sdpa"`` (cuDNN/flash backends); on CPU
everything runs ``"sdpa"``. FlashAttention-4's kernels are faster in isolation for windows >= 2048 and full causal
attention (head_dim 128), but at the model's shapes (head_dim 64, 2 x 8k tokens) its sliding-window calls are
launch-bound (~1 ms of host time per fwd+bwd against ~0.4 ms of GPU work) and a compiled train step with it is 4%
slower than with the Triton kernel; it is an explicit choice.

Fused kernels serve training and prefill without padding, receptive-field caps, requested attention weights or a
cached prefix; otherwise layers go through transformers' attention interface (``attn_implementation``) with masks
from ``masking``. A ``HybridStaticCache`` always runs the fused kernels (prefill) or the split-K decode attention.

Optional CUDA packages are imported lazily so that remote-code loading never needs them.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import Cache

from .cache import cached_length
from .configuration_hybrid import ATTENTION_KERNELS, ATTENTION_LAYER_TYPES, HybridConfig
from .masking import attention_masks, packed_documents
from .static_cache import HybridStaticCache


def flash_interface():
    """(module, is_fa4): FlashAttention-4 (``flash_attn.cute``, pre-release package ``flash-attn-4``) when importable,
    else flash-attn 2.x (``flash_attn``). Both take (B, T, H, D) tensors and ``window_size=(W - 1, 0)``."""
    try:
        from flash_attn import cute

        cute.flash_attn_func  # noqa: B018  (a bare namespace without the interface is not FA4)
        return cute, True
    except Exception:  # absent, or a CuTe-DSL install that fails at import
        import flash_attn

        return flash_attn, False


@functools.cache
def flash_attn_available() -> bool:
    """Whether flash-attn (4 or 2.x, with window support) can be imported."""
    if importlib.util.find_spec("flash_attn") is None:
        return False
    try:
        module, _ = flash_interface()
        module.flash_attn_func  # noqa: B018
    except Exception:  # broken builds raise all sorts of errors at import
        return False
    return True


@functools.cache
def triton_available() -> bool:
    """Whether hybrid_hf's Triton window-attention kernel can be used (triton importable)."""
    from .attention_triton import available

    return available()


@functools.cache
def flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_kernel(requested: str, device: torch.device, layer_type: str) -> str:
    """Kernel for one layer type on ``device`` (see the module docstring for what ``"auto"`` picks); raises if an
    explicitly requested kernel cannot run there."""
    if requested not in ATTENTION_KERNELS or requested == "transformers":
        raise ValueError(f"attention_kernel={requested!r}; allowed here: flash_attn, triton, flex, sdpa, auto")
    on_cuda = device.type == "cuda"
    if requested == "flash_attn":
        if not (on_cuda and flash_attn_available()):
            raise ValueError("attention_kernel='flash_attn' needs CUDA tensors and the flash-attn package installed.")
        return "flash_attn"
    if requested == "triton":
        if not (on_cuda and triton_available()):
            raise ValueError("attention_kernel='triton' needs CUDA tensors and the triton package.")
        return "triton"
    if requested == "flex":
        if not flex_available():
            raise ValueError("attention_kernel='flex' needs torch.nn.attention.flex_attention (torch >= 2.5).")
        return "flex"
    if requested == "sdpa":
        return "sdpa"
    # auto
    if layer_type == "full_attention" or not on_cuda:
        return "sdpa"  # cuDNN / flash SDPA backends: faster than Flex and our Triton kernel on full causal attention
    if triton_available():
        return "triton"
    if flash_attn_available():
        return "flash_attn"
    return "flex" if flex_available() else "sdpa"


def available_kernels(device: torch.device) -> list[str]:
    """The explicit ``attention_kernel`` values that can run on ``device`` (those ``resolve_kernel`` accepts)."""
    names = []
    for name in ("flash_attn", "triton", "flex", "sdpa"):
        try:
            names.append(resolve_kernel(name, device, "sliding_attention"))
        except ValueError:
            continue
    return names


@dataclass(frozen=True)
class LayerPlan:
    """How one layer attends in this forward (made by ``resolve``).

    ``kernel``: ``"flash_attn"``/``"triton"``/``"flex"``/``"sdpa"`` run ``attention_kernels.causal_attention``;
    ``"decode"`` the static cache's split-K decode attention over ``key_valid`` slots (``"decode_triton"``: its Triton
    flash-decoding kernel); ``"interface"`` transformers'
    attention interface ``attn_implementation`` with the prepared ``mask``. Recurrent layers read ``mask`` (the 2D
    padding mask) and ``cu_seqlens`` (packed documents, int32 over the flattened batch, see ``masking``)."""

    kernel: str
    mask: Any = None
    cu_seqlens: torch.Tensor | None = None
    attn_implementation: str | None = None
    key_valid: torch.Tensor | None = None
    interface_kwargs: dict[str, Any] = field(default_factory=dict)


def fused_kernels_apply(
    config: HybridConfig, inputs_embeds: torch.Tensor, attention_mask: Any, past_length: int, output_attentions: bool,
    training: bool,
) -> bool:
    """Fused attention kernels serve training and prefill without padding, caps or requested weights."""
    kernel = config.attention_kernel
    if kernel == "transformers" or output_attentions:
        return False
    if kernel == "auto" and not (inputs_embeds.is_cuda and config._attn_implementation == "sdpa"):
        return False
    if config.eval_full_attention_window is not None or config.eval_efficient_window is not None:
        return False
    if training and config.attention_dropout > 0:
        return False
    if past_length > 0:
        return False
    return attention_mask is None or (attention_mask.dim() == 2 and bool(attention_mask.all()))


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype attention computes in for inputs like ``x``: autocast's dtype where autocast is on for ``x``'s
    device (fp32 master weights under ``torch.autocast``, as in ``Trainer(bf16=True)``), else ``x.dtype``."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def layer_kernel(requested: str, inputs_embeds: torch.Tensor, layer_type: str) -> str:
    """``resolve_kernel`` plus the fp32 rule: the Triton kernel's matmuls would round fp32 CUDA inputs to TF32, so
    those run FlexAttention (whose fp32 matmuls are not rounded). Under autocast attention computes in autocast's
    dtype (``causal_attention`` casts), so fp32 master weights there keep the Triton kernel."""
    kernel = resolve_kernel("auto" if requested == "transformers" else requested, inputs_embeds.device, layer_type)
    if kernel == "triton" and inputs_embeds.is_cuda and compute_dtype(inputs_embeds) == torch.float32:
        return "flex"
    return kernel


def static_cache_refusal(config: HybridConfig, attention_mask: Any = None, output_attentions: bool = False) -> str | None:
    """Why a forward cannot run into a ``HybridStaticCache`` (padding, attention weights, receptive-field caps), or
    None."""
    if attention_mask is not None and not isinstance(attention_mask, dict) and not bool(attention_mask.all()):
        return "HybridStaticCache decodes rows of equal length: `attention_mask` must not contain padding."
    if output_attentions:
        return "output_attentions=True is not available with HybridStaticCache."
    if config.eval_full_attention_window is not None or config.eval_efficient_window is not None:
        return ("eval_full_attention_window/eval_efficient_window (receptive-field caps) are not applied by "
                "HybridStaticCache, which attends without masks: unset them, or decode with a DynamicCache "
                "(model.generate) or use_cache=False.")
    return None


def _check_static_cache(config: HybridConfig, attention_mask: Any, output_attentions: bool) -> None:
    refusal = static_cache_refusal(config, attention_mask, output_attentions)
    if refusal is not None:
        raise ValueError(refusal)


def static_cache_plan(config: HybridConfig, inputs_embeds: torch.Tensor, cache: HybridStaticCache) -> list[LayerPlan]:
    """Plan of a step into a ``HybridStaticCache``: fused kernels for a prefill chunk, the split-K decode attention
    for one token per row (no host synchronisation: safe inside a captured CUDA graph)."""
    decode = inputs_embeds.shape[1] == 1
    by_type: dict[str, LayerPlan] = {"linear_attention": LayerPlan("recurrent")}
    for i, t in enumerate(config.layer_types):
        if t in by_type:
            continue
        if decode:
            kernel = "decode_triton" if cache.decode_kernel == "triton" else "decode"
            by_type[t] = LayerPlan(kernel, key_valid=cache.key_valid(i))
        else:
            by_type[t] = LayerPlan(layer_kernel(config.attention_kernel, inputs_embeds, t))
    return [by_type[t] for t in config.layer_types]


def resolve(
    config: HybridConfig,
    inputs_embeds: torch.Tensor,
    attention_mask: Any,
    cache: Cache | None,
    position_ids: torch.Tensor | None,
    *,
    output_attentions: bool,
    training: bool,
    cu_seqlens: torch.Tensor | None = None,
) -> list[LayerPlan]:
    """The per-layer attention plan of one forward: which kernel, which mask, which packed documents.

    ``attention_mask`` is a 2D padding mask, None, or a dict of masks prepared per layer type (used as given);
    ``cu_seqlens`` packed-document boundaries given by the caller (``cu_seq_lens_q``), else found by
    ``masking.packed_documents`` in the caller's ``position_ids`` (None: default positions, one document per row, no
    search and no host synchronisation)."""
    if isinstance(cache, HybridStaticCache):
        _check_static_cache(config, attention_mask, output_attentions)
        return static_cache_plan(config, inputs_embeds, cache)
    past_length = cached_length(cache, config.layer_types)
    if isinstance(attention_mask, dict):
        masks, documents = attention_mask, cu_seqlens
    else:
        documents = packed_documents(position_ids, inputs_embeds.shape[0], attention_mask, past_length, cu_seqlens)
        if fused_kernels_apply(config, inputs_embeds, attention_mask, past_length, output_attentions, training):
            plans = {t: LayerPlan(layer_kernel(config.attention_kernel, inputs_embeds, t), cu_seqlens=documents)
                     for t in ATTENTION_LAYER_TYPES}
            plans["linear_attention"] = LayerPlan("recurrent", cu_seqlens=documents)
            return [plans[t] for t in config.layer_types]
        implementation = "eager" if output_attentions else config._attn_implementation
        masks = attention_masks(config, implementation, inputs_embeds, attention_mask, cache, past_length, documents)
    implementation = "eager" if output_attentions else config._attn_implementation
    extra = {}
    if documents is not None and implementation.startswith("flash"):  # transformers' varlen flash path
        max_length = int((documents[1:] - documents[:-1]).max())
        extra = {"cu_seq_lens_q": documents, "cu_seq_lens_k": documents, "max_length_q": max_length,
                 "max_length_k": max_length}
    plans = {t: LayerPlan("interface", masks.get(t), documents, implementation, interface_kwargs=extra)
             for t in ATTENTION_LAYER_TYPES}
    linear_mask = masks.get("linear_attention") if isinstance(attention_mask, dict) else attention_mask
    plans["linear_attention"] = LayerPlan("recurrent", linear_mask, documents)
    return [plans[t] for t in config.layer_types]
