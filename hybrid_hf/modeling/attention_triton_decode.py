"""One-token decode attention in Triton (flash-decoding): the ``decode_kernel="triton"`` option of the static cache.

The reference is ``static_cache.decode_attention`` (torch ops; under ``torch.compile`` inductor turns it into about
five kernels per layer). Here one kernel computes, for every (row, key/value head, split of the key buffer), the
attention of that head's grouped query heads over the split with an online softmax in fp32, and a second kernel
merges the splits. Grouped-query heads read their shared key/value head once; slots not yet written
(``valid`` False) are masked. Numerics: QK^T, softmax and PV in fp32 (the reference computes QK^T in the input
dtype), so results agree with it within bf16 rounding.

CUDA-only and imported lazily; without triton the module still imports (``available()`` is then False). The two
kernels run as the opaque custom op ``hybrid_hf::flash_decode`` so that compiled decode layers and CUDA-graph capture
treat them as one call.
"""

from __future__ import annotations

import os

import torch

try:  # optional: CUDA installs ship triton with torch
    import triton
    import triton.language as tl
except ImportError:
    triton = None
    tl = None

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # triton's CPU interpreter (tests)
BLOCK_N = 16 if _INTERPRET else 64  # keys per inner iteration


def available() -> bool:
    """Whether the Triton decode kernel can run (triton importable)."""
    return triton is not None


def split_size(keys: int) -> int:
    """Keys per split: long buffers (full layers) are cut into 256-key parts, short rings into ``BLOCK_N``-key parts,
    so that even one row spreads over many programs."""
    return 256 if keys >= 8192 else BLOCK_N


if triton is not None:

    @triton.jit
    def _split_kernel(Q, K, V, VALID, PO, PM, PL,
                      s_qb, s_qh, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt,
                      T, HKV, N_SPLITS, scale,
                      G: tl.constexpr, GP: tl.constexpr, HEAD_DIM: tl.constexpr, SPLIT: tl.constexpr,
                      BLOCK: tl.constexpr):
        bh = tl.program_id(0)
        sp = tl.program_id(1)
        b = bh // HKV
        h = bh % HKV
        offs_g = tl.arange(0, GP)
        offs_d = tl.arange(0, HEAD_DIM)
        g_ok = offs_g < G
        q = tl.load(Q + b * s_qb + (h * G + offs_g)[:, None] * s_qh + offs_d[None, :], mask=g_ok[:, None],
                    other=0.0).to(tl.float32)
        m = tl.full([GP], float("-inf"), tl.float32)
        l_sum = tl.zeros([GP], tl.float32)
        acc = tl.zeros([GP, HEAD_DIM], tl.float32)
        k_base = K + b * s_kb + h * s_kh
        v_base = V + b * s_vb + h * s_vh
        for n0 in range(sp * SPLIT, sp * SPLIT + SPLIT, BLOCK):
            offs_n = n0 + tl.arange(0, BLOCK)
            in_range = offs_n < T
            ok = (tl.load(VALID + offs_n, mask=in_range, other=0) != 0) & in_range
            k = tl.load(k_base + offs_n[:, None] * s_kt + offs_d[None, :], mask=ok[:, None], other=0.0)
            v = tl.load(v_base + offs_n[:, None] * s_vt + offs_d[None, :], mask=ok[:, None], other=0.0)
            s = tl.sum(q[:, None, :] * k.to(tl.float32)[None, :, :], axis=2) * scale
            s = tl.where(ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp(s - m_safe[:, None])
            alpha = tl.exp(m - m_safe)
            l_sum = l_sum * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v.to(tl.float32)[None, :, :], axis=1)
            m = m_new
        part = (bh * N_SPLITS + sp) * GP
        tl.store(PO + (part + offs_g)[:, None] * HEAD_DIM + offs_d[None, :], acc)
        tl.store(PM + part + offs_g, m)
        tl.store(PL + part + offs_g, l_sum)

    @triton.jit
    def _merge_kernel(PO, PM, PL, OUT, s_ob, s_oh, HKV, N_SPLITS,
                      G: tl.constexpr, GP: tl.constexpr, HEAD_DIM: tl.constexpr, SP: tl.constexpr):
        bh = tl.program_id(0)
        b = bh // HKV
        h = bh % HKV
        offs_s = tl.arange(0, SP)
        offs_g = tl.arange(0, GP)
        offs_d = tl.arange(0, HEAD_DIM)
        s_ok = offs_s < N_SPLITS
        idx = (bh * N_SPLITS + offs_s)[:, None] * GP + offs_g[None, :]  # [SP, GP]
        m = tl.load(PM + idx, mask=s_ok[:, None], other=float("-inf"))
        l_sum = tl.load(PL + idx, mask=s_ok[:, None], other=0.0)
        m_max = tl.max(m, axis=0)  # [GP]
        m_safe = tl.where(m_max == float("-inf"), 0.0, m_max)
        w = tl.exp(m - m_safe[None, :])  # [SP, GP]; 0 for empty splits
        o = tl.load(PO + idx[:, :, None] * HEAD_DIM + offs_d[None, None, :], mask=s_ok[:, None, None], other=0.0)
        num = tl.sum(o * w[:, :, None], axis=0)  # [GP, D]
        den = tl.sum(l_sum * w, axis=0)  # [GP]
        out = num / tl.where(den == 0.0, 1.0, den)[:, None]
        g_ok = offs_g < G
        tl.store(OUT + b * s_ob + (h * G + offs_g)[:, None] * s_oh + offs_d[None, :],
                 out.to(OUT.dtype.element_ty), mask=g_ok[:, None])


def _flash_decode(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor,
                  scale: float) -> torch.Tensor:
    b, hq, _, d = q.shape
    hkv, t = keys.shape[1], keys.shape[2]
    g = hq // hkv
    gp = triton.next_power_of_2(g)
    split = split_size(t)
    n_splits = triton.cdiv(t, split)
    q3 = q.reshape(b, hq, d)
    part_o = torch.empty(b * hkv * n_splits * gp, d, dtype=torch.float32, device=q.device)
    part_m = torch.empty(b * hkv * n_splits * gp, dtype=torch.float32, device=q.device)
    part_l = torch.empty_like(part_m)
    _split_kernel[(b * hkv, n_splits)](
        q3, keys, values, valid, part_o, part_m, part_l,
        q3.stride(0), q3.stride(1), keys.stride(0), keys.stride(1), keys.stride(2),
        values.stride(0), values.stride(1), values.stride(2),
        t, hkv, n_splits, float(scale),
        G=g, GP=gp, HEAD_DIM=d, SPLIT=split, BLOCK=min(BLOCK_N, split),
    )
    out = torch.empty(b, hq, d, dtype=q.dtype, device=q.device)
    _merge_kernel[(b * hkv,)](part_o, part_m, part_l, out, out.stride(0), out.stride(1), hkv, n_splits,
                              G=g, GP=gp, HEAD_DIM=d, SP=triton.next_power_of_2(n_splits))
    return out.view(b, hq, 1, d)


def _register_custom_op() -> None:
    """``hybrid_hf::flash_decode``, defined once per process (a Hub remote-code copy reuses the package's)."""
    if hasattr(torch.ops.hybrid_hf, "flash_decode"):
        return

    @torch.library.custom_op(
        "hybrid_hf::flash_decode", mutates_args=(),
        schema="(Tensor q, Tensor keys, Tensor values, Tensor valid, float scale) -> Tensor",
    )
    def op(q, keys, values, valid, scale):
        return _flash_decode(q, keys, values, valid, scale)

    @op.register_fake
    def _(q, keys, values, valid, scale):
        return torch.empty_like(q)


if triton is not None:
    _register_custom_op()


def flash_decode(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor,
                 scale: float) -> torch.Tensor:
    """Decode attention of one query per row: ``q`` (B, Hq, 1, D) against ``keys``/``values`` (B, Hkv, T, D, last
    dimension contiguous) at the slots where ``valid`` (T,) is True. Returns (B, Hq, 1, D) in ``q``'s dtype; the same
    contract as ``static_cache.decode_attention``."""
    if triton is None:
        raise ValueError("decode_kernel='triton' needs the triton package (it ships with CUDA builds of torch).")
    d = q.shape[-1]
    if d & (d - 1) or keys.stride(-1) != 1 or values.stride(-1) != 1:
        raise ValueError(f"decode_kernel='triton' needs a power-of-two head_dim (got {d}) and contiguous key/value "
                         "rows.")
    q = q.contiguous()
    return torch.ops.hybrid_hf.flash_decode(q, keys, values, valid, float(scale))
