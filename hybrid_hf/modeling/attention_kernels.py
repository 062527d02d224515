"""Attention kernels of training and prefill behind one call, ``causal_attention`` (which kernel runs is decided by
``attention_dispatch``): FlexAttention with cached block masks, SDPA, flash-attn 2/4, hybrid_hf's Triton kernel.

Window convention everywhere in hybrid_hf: a window ``W`` covers ``W`` keys including the current token, i.e. query
``i`` sees keys ``i-W+1 .. i``. flash-attn spells the same window ``window_size=(W - 1, 0)``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .attention_dispatch import compute_dtype, flash_interface
from .masking import document_ids_from_cu_seqlens


# --------------------------------------------------------------------------------------------- FlexAttention
def raise_recompile_limits(limit: int = 256) -> None:
    """Raise dynamo's recompile limits (default 8 per code object): every layer and shape compiles once, and hitting
    the limit would silently drop to the unfused path."""
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), limit))


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    raise_recompile_limits()
    return torch.compile(flex_attention, dynamic=False)


@functools.lru_cache(maxsize=32)
def _sliding_block_mask(q_len: int, kv_len: int, window: int | None, device: str):
    """Block mask for causal (window=None) or sliding attention; cached per shape so it is built once."""
    from torch.nn.attention.flex_attention import create_block_mask

    offset = kv_len - q_len

    def mask_mod(b, h, q, kv):
        q_abs = q + offset
        keep = kv <= q_abs
        if window is not None:
            keep = keep & (q_abs - kv < window)
        return keep

    return create_block_mask(mask_mod, None, None, q_len, kv_len, device=device)


def _document_block_mask(doc: torch.Tensor, window: int | None):
    """Block mask for packed documents (rebuilt per batch since it depends on the data)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q, kv):
        keep = (kv <= q) & (doc[q] == doc[kv])
        if window is not None:
            keep = keep & (q - kv < window)
        return keep

    n = doc.numel()
    return create_block_mask(mask_mod, None, None, n, n, device=str(doc.device))


def _flex(q, k, v, window, scale, cu_seqlens):
    if cu_seqlens is not None:
        block_mask = _document_block_mask(document_ids_from_cu_seqlens(cu_seqlens, q.shape[2]), window)
    else:
        block_mask = _sliding_block_mask(q.shape[2], k.shape[2], window, str(q.device))
    if q.device.type == "cuda":
        fn = _compiled_flex()
    else:  # the CPU path runs FlexAttention's reference implementation (tests only)
        from torch.nn.attention.flex_attention import flex_attention as fn
    return fn(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])


# ---------------------------------------------------------------------------------------------------- SDPA
def _sdpa(q, k, v, window, scale, cu_seqlens):
    q_len, kv_len = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if window is None and cu_seqlens is None:
        if q_len == kv_len:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
        # queries are the last q_len positions: lower-right causal, served by the flash/efficient backends
        # (keys are repeated for GQA: the CausalBias dispatch does not forward `enable_gqa` to those backends)
        from torch.nn.attention.bias import causal_lower_right

        if gqa:
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(q_len, kv_len), scale=scale)
    qi = torch.arange(q_len, device=q.device)[:, None] + (kv_len - q_len)
    ki = torch.arange(kv_len, device=q.device)[None, :]
    mask = ki <= qi
    if window is not None:
        mask &= qi - ki < window
    if cu_seqlens is not None:
        doc = document_ids_from_cu_seqlens(cu_seqlens, kv_len)
        mask &= doc[qi] == doc[ki]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)


# ----------------------------------------------------------------------------------------------- flash-attn
@torch.compiler.disable  # a clean graph break: dynamo tracing into FA4's CuTe-DSL interface halved a compiled step
def _flash(q, k, v, window, scale, cu_seqlens):
    """flash-attn's window kernels; returns (B, Tq, H, D) (flash-attn's own layout)."""
    fa, is_fa4 = flash_interface()
    if window is not None:
        window_size = (window - 1, 0)
    else:
        window_size = (None, None) if is_fa4 else (-1, -1)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, T, H, D)
    if cu_seqlens is None:
        out = fa.flash_attn_func(q, k, v, softmax_scale=scale, causal=True, window_size=window_size)
    else:
        max_len = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
        out = fa.flash_attn_varlen_func(
            q[0], k[0], v[0], cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens, max_seqlen_q=max_len,
            max_seqlen_k=max_len, softmax_scale=scale, causal=True, window_size=window_size,
        )
    if isinstance(out, tuple):  # FlashAttention-4 returns (out, lse)
        out = out[0]
    return out if cu_seqlens is None else out[None]


# ---------------------------------------------------------------------------------------------------- Triton
def _triton(q, k, v, window, scale, cu_seqlens):
    """hybrid_hf's window kernel; returns (B, Tq, H, D) already (the layout ``causal_attention`` hands out)."""
    from .attention_triton import window_attention

    doc = None if cu_seqlens is None else document_ids_from_cu_seqlens(cu_seqlens, q.shape[2])
    return window_attention(q, k, v, window=window, scale=scale, doc=doc)


_KERNELS = {"flash_attn": _flash, "flex": _flex, "sdpa": _sdpa, "triton": _triton}
_OUTPUT_BTHD = {"triton", "flash_attn"}  # kernels that already return (B, T, H, D)


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    window: int | None,
    scale: float,
    kernel: str,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal (optionally sliding-window, optionally packed) attention.

    ``q`` is (B, Hq, Tq, D), ``k``/``v`` are (B, Hkv, Tk, D) with ``Tk >= Tq`` (queries are the last ``Tq``
    positions). ``cu_seqlens`` (int32, over the flattened B x T tokens) marks packed document boundaries; each row
    start is a boundary too. Returns (B, Tq, Hq, D). ``kernel`` is one that ``attention_dispatch.resolve_kernel``
    accepts on this device (the dispatch also sends fp32 CUDA inputs to ``"flex"`` rather than ``"triton"``).
    Under autocast the inputs are cast to its dtype first, as ``scaled_dot_product_attention`` is under autocast
    (RoPE with fp32 tables leaves q/k in fp32 while v comes out of the projection in the autocast dtype).
    """
    dtype = compute_dtype(q)  # the projections' dtype (v may come from a cache buffer of another dtype)
    if not (q.dtype == k.dtype == v.dtype == dtype):
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if cu_seqlens is None:
        out = _KERNELS[kernel](q, k, v, window, scale, None)
        return out if kernel in _OUTPUT_BTHD else out.transpose(1, 2).contiguous()
    if q.shape[2] != k.shape[2]:
        raise ValueError("cu_seqlens (packed documents) cannot be combined with a cached prefix.")
    batch, _, length, _ = q.shape
    if batch > 1:  # packed rows are attended as one flattened varlen sequence
        q, k, v = (t.transpose(0, 1).reshape(1, t.shape[1], batch * length, t.shape[3]) for t in (q, k, v))
    out = _KERNELS[kernel](q, k, v, window, scale, cu_seqlens)
    if kernel not in _OUTPUT_BTHD:
        out = out.transpose(1, 2)  # (1, B*T, H, D)
    return out.reshape(batch, length, *out.shape[2:]).contiguous()
