"""Attention kernel dispatch for training and prefill: one place that picks the kernel per layer.

Window convention everywhere in hybrid_hf: a window ``W`` covers ``W`` keys including the current token, i.e. query
``i`` sees keys ``i-W+1 .. i``. flash-attn spells the same window ``window_size=(W - 1, 0)``.

Kernels, chosen by ``config.attention_kernel``:

- ``"flash_attn"``: FlashAttention-4 (``flash_attn.cute``) or flash-attn 2.x ``flash_attn_func``/
  ``flash_attn_varlen_func`` (CUDA, optional packages; FA4 preferred when both are installed). Runs outside
  ``torch.compile`` graphs (a graph break per call): dynamo cannot trace the CuTe-DSL kernels;
- ``"triton"``: hybrid_hf's own sliding-window flash attention (``triton_attention``; CUDA with triton), which visits
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

Optional CUDA packages are imported lazily so that remote-code loading never needs them.
"""

from __future__ import annotations

import functools
import importlib.util

import torch
import torch.nn.functional as F

from .configuration_hybrid import ATTENTION_KERNELS


def _flash_interface():
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
        module, _ = _flash_interface()
        module.flash_attn_func  # noqa: B018
    except Exception:  # broken builds raise all sorts of errors at import
        return False
    return True


@functools.cache
def triton_available() -> bool:
    """Whether hybrid_hf's Triton window-attention kernel can be used (triton importable)."""
    from .triton_attention import available

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


def document_ids_from_cu_seqlens(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Per-token document index (length ``total``) from cumulative sequence lengths ``[0, l0, l0+l1, ...]``."""
    positions = torch.arange(total, device=cu_seqlens.device)
    return torch.searchsorted(cu_seqlens[1:].contiguous(), positions, right=True)


def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> torch.Tensor | None:
    """Document boundaries of packed rows: a document starts at every row start and wherever the position id is 0.

    The rows are read as one flattened sequence (batch x length), as flash-attn's varlen kernels do. Returns int32
    ``cu_seqlens`` over that flattened sequence, or ``None`` when no row restarts its positions (plain batch).
    """
    rows, length = position_ids.shape
    restarts = position_ids[:, 1:] == 0
    if not bool(restarts.any()):
        return None
    starts = torch.zeros(rows, length, dtype=torch.bool, device=position_ids.device)
    starts[:, 0] = True
    starts[:, 1:] = restarts
    begin = starts.flatten().nonzero().flatten()
    end = torch.tensor([rows * length], device=begin.device, dtype=begin.dtype)
    return torch.cat([begin, end]).to(torch.int32)


# --------------------------------------------------------------------------------------------- decode
DECODE_SPLIT = 1024  # keys per split-K part of the decode attention; full-layer decode buffers round up to it


def decode_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor, scale: float,
    split_size: int = DECODE_SPLIT,
) -> torch.Tensor:
    """One query per row against a preallocated key buffer (the decode step of ``HybridStaticCache``).

    ``q`` is (B, Hq, 1, D); ``keys``/``values`` are (B, Hkv, T, D) with Hq a multiple of Hkv (grouped-query heads are
    rows of one matmul, never repeated keys); ``valid`` (T,) marks the filled slots. Scores follow transformers' eager
    attention numerics (QK^T in the input dtype, softmax in fp32). The probability-value product is split along T
    into ``split_size`` chunks that run as separate batches and are summed in fp32 (split-K), so a 32k-key buffer
    at batch 1 still spreads over the whole GPU. Returns (B, Hq, 1, D).
    """
    b, hq, _, d = q.shape
    hkv, t = keys.shape[1], keys.shape[2]
    g = hq // hkv
    scores = torch.matmul(q.reshape(b, hkv, g, d), keys.transpose(-1, -2)).float() * scale
    probs = torch.softmax(scores.masked_fill(~valid, float("-inf")), dim=-1).to(values.dtype)
    if t > split_size and t % split_size == 0:
        n = t // split_size
        parts = torch.matmul(probs.view(b, hkv, g, n, split_size).transpose(2, 3),
                             values.view(b, hkv, n, split_size, d))
        out = parts.float().sum(2).to(q.dtype)
    else:
        out = torch.matmul(probs, values)
    return out.reshape(b, hq, 1, d)


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
    fa, is_fa4 = _flash_interface()
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
    from .triton_attention import window_attention

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
    start is a boundary too. Returns (B, Tq, Hq, D).
    """
    if kernel == "triton" and q.is_cuda and q.dtype == torch.float32:
        kernel = "flex"  # the Triton kernel's matmuls would round fp32 to TF32; FlexAttention's do not
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
