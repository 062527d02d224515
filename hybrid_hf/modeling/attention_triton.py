"""Sliding-window causal flash attention in Triton (forward and backward), the ``"triton"`` attention kernel.

Each program visits only the key (or, in the dK/dV pass, query) blocks that intersect its window, and applies the
element mask only on the blocks that cross the window's edges (the causal diagonal and the window's lower edge);
interior blocks run unmasked. Packed documents are handled by a per-token document-id vector (keys of another
document are masked). Grouped-query heads read their shared key/value head directly (no repeated keys); dK/dV of a
key/value head sum over its query heads inside one program.

Layouts: ``q`` (B, Hq, Tq, D), ``k``/``v`` (B, Hkv, Tk, D) with any strides (last dimension contiguous), queries
being the last ``Tq`` positions; the output is written directly in (B, Tq, Hq, D), the layout the output projection
reads. Numerics follow FlashAttention-2: fp32 accumulation, the softmax normaliser (log-sum-exp, base 2) kept for
the backward, which recomputes the probabilities.

Everything here is CUDA-only and imported lazily by ``attention_kernels``; without triton the module still imports
(``available()`` is then False). Under ``torch.compile`` the kernels run as the opaque custom ops
``hybrid_hf::window_attention_{fwd,bwd}``; in eager mode a plain ``autograd.Function`` calls them with less overhead.
"""

from __future__ import annotations

import functools
import os

import torch

try:  # optional: CUDA installs ship triton with torch
    import triton
    import triton.language as tl
except ImportError:
    triton = None
    tl = None

LOG2E = 1.4426950408889634
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # triton's CPU interpreter (tests): one config, no tuning


def available() -> bool:
    """Whether the Triton window-attention kernel can run (triton importable)."""
    return triton is not None


def _configs(pairs: list[tuple[int, int, int, int]], interpret: tuple[int, int]) -> list:
    """Autotuning candidates (BLOCK_M, BLOCK_N, warps, stages); the CPU interpreter runs one small tile so that tests
    with short sequences cross several blocks."""
    if _INTERPRET:
        pairs = [(*interpret, 1, 1)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in pairs]


if triton is not None:

    @triton.jit
    def _keep(q_pos, k_pos, W, doc_q, doc_k, HAS_DOC: tl.constexpr):
        """Element mask of a (queries x keys) tile: causal, inside the window, same document."""
        keep = (k_pos[None, :] <= q_pos[:, None]) & (q_pos[:, None] - k_pos[None, :] < W)
        if HAS_DOC:
            keep = keep & (doc_q[:, None] == doc_k[None, :])
        return keep

    @triton.jit
    def _fwd_blocks(acc, l_i, m_i, q, k_base, v_base, s_kt, s_vt, q_pos, doc_q, DOC, start, end, T_k, W, qk_scale,
                    offs_n, offs_d, MASK: tl.constexpr, HAS_DOC: tl.constexpr, EVEN_K: tl.constexpr,
                    BLOCK_N: tl.constexpr):
        for start_n in range(start, end, BLOCK_N):
            k_pos = start_n + offs_n
            in_k = (k_pos < T_k) | EVEN_K  # EVEN_K: Tk is a multiple of every block size, no bounds checks
            k = tl.load(k_base + k_pos[None, :] * s_kt + offs_d[:, None], mask=in_k[None, :], other=0.0)
            s = tl.dot(q, k) * qk_scale
            if MASK:
                doc_k = tl.load(DOC + k_pos, mask=in_k, other=-1) if HAS_DOC else 0
                s = tl.where(_keep(q_pos, k_pos, W, doc_q, doc_k, HAS_DOC), s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.math.exp2(s - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_base + k_pos[:, None] * s_vt + offs_d[None, :], mask=in_k[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        return acc, l_i, m_i

    @triton.jit
    def _key_ranges(first_q, T_k, W, HAS_DOC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """Key-block bounds for queries [first_q, first_q + BLOCK_M) (absolute positions): masked [lo, a),
        unmasked [a, b), masked [b, hi). With documents every block is masked: the kernels then run only part 0,
        which becomes [lo, hi)."""
        lo = tl.maximum(first_q - W + 1, 0) // BLOCK_N * BLOCK_N
        hi = tl.minimum(first_q + BLOCK_M, T_k)
        inside = (tl.maximum(first_q + BLOCK_M - W, 0) + BLOCK_N - 1) // BLOCK_N * BLOCK_N  # whole block in window
        causal = (first_q + 1) // BLOCK_N * BLOCK_N  # whole block at or before the first query
        a = tl.minimum(tl.maximum(inside, lo), hi)
        b = tl.minimum(tl.maximum(causal, a), hi)
        if HAS_DOC:
            a = hi
        return lo, a, b, hi

    @triton.jit
    def _part(lo, a, b, hi, PART: tl.constexpr):
        """Bounds of part ``PART`` of a three-part block range: 0 = [lo, a) masked, 1 = [a, b) unmasked,
        2 = [b, hi) masked (``PART != 1`` is the MASK flag of the block loops)."""
        if PART == 0:
            start = lo
            end = a
        elif PART == 1:
            start = a
            end = b
        else:
            start = b
            end = hi
        return start, end

    @triton.jit
    def _q_tile(Q, DOC, s_qb, s_qh, s_qt, b, h, pid_m, T_q, offset, HAS_DOC: tl.constexpr, HEAD_DIM: tl.constexpr,
                BLOCK_M: tl.constexpr):
        """One program's query rows: indices into Tq, feature offsets, row validity, absolute positions, the query
        tile and its document ids."""
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        in_q = offs_m < T_q
        q_pos = offs_m + offset
        q = tl.load(Q + b * s_qb + h * s_qh + offs_m[:, None] * s_qt + offs_d[None, :], mask=in_q[:, None], other=0.0)
        doc_q = tl.load(DOC + q_pos, mask=in_q, other=-2) if HAS_DOC else 0
        return offs_m, offs_d, in_q, q_pos, q, doc_q

    @triton.autotune(
        configs=_configs([(128, 64, 8, 3), (128, 32, 4, 3), (64, 64, 4, 3), (128, 128, 8, 3), (64, 32, 4, 4)], (32, 16)),
        key=["T_BUCKET", "W", "HEAD_DIM", "HAS_DOC", "EVEN_Q", "EVEN_K"],
    )
    @triton.jit
    def _fwd_kernel(Q, K, V, OUT, LSE, DOC,
                    s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_ob, s_oh, s_ot,
                    H, G, T_q, T_k, W, qk_scale, T_BUCKET,
                    HAS_DOC: tl.constexpr, HEAD_DIM: tl.constexpr, EVEN_Q: tl.constexpr, EVEN_K: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        offset = T_k - T_q
        offs_m, offs_d, in_q, q_pos, q, doc_q = _q_tile(Q, DOC, s_qb, s_qh, s_qt, b, h, pid_m, T_q, offset, HAS_DOC,
                                                        HEAD_DIM, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        k_base = K + b * s_kb + (h // G) * s_kh
        v_base = V + b * s_vb + (h // G) * s_vh
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)  # finite: a row with no key yet in a block stays NaN-free
        lo, a, b2, hi = _key_ranges(pid_m * BLOCK_M + offset, T_k, W, HAS_DOC, BLOCK_M, BLOCK_N)
        for part in tl.static_range(3 - 2 * HAS_DOC):  # with documents only part 0, which is [lo, hi)
            start, end = _part(lo, a, b2, hi, part)
            acc, l_i, m_i = _fwd_blocks(acc, l_i, m_i, q, k_base, v_base, s_kt, s_vt, q_pos, doc_q, DOC, start, end,
                                        T_k, W, qk_scale, offs_n, offs_d, part != 1, HAS_DOC, EVEN_K, BLOCK_N)
        l_i = tl.where(in_q, l_i, 1.0)
        out = acc / l_i[:, None]
        tl.store(OUT + b * s_ob + h * s_oh + offs_m[:, None] * s_ot + offs_d[None, :], out.to(OUT.dtype.element_ty),
                 mask=in_q[:, None])
        tl.store(LSE + pid_bh * T_q + offs_m, m_i + tl.math.log2(l_i), mask=in_q)

    @triton.jit
    def _dkdv_blocks(dk, dv, k, v, q_base, do_base, lse_base, delta_base, s_qt, s_dt, k_pos, doc_k, DOC, offset,
                     start, end, T_q, W, qk_scale, offs_m, offs_d,
                     MASK: tl.constexpr, HAS_DOC: tl.constexpr, EVEN_Q: tl.constexpr, BLOCK_M: tl.constexpr):
        for start_m in range(start, end, BLOCK_M):
            m = start_m + offs_m
            in_q = (m < T_q) | EVEN_Q
            q = tl.load(q_base + m[:, None] * s_qt + offs_d[None, :], mask=in_q[:, None], other=0.0)
            do = tl.load(do_base + m[:, None] * s_dt + offs_d[None, :], mask=in_q[:, None], other=0.0)
            lse = tl.load(lse_base + m, mask=in_q, other=float("inf"))  # padded rows get probability 0
            delta = tl.load(delta_base + m, mask=in_q, other=0.0)
            p_t = tl.math.exp2(tl.dot(k, tl.trans(q)) * qk_scale - lse[None, :])  # (keys, queries)
            if MASK:
                doc_q = tl.load(DOC + m + offset, mask=in_q, other=-2) if HAS_DOC else 0
                p_t = tl.where(tl.trans(_keep(m + offset, k_pos, W, doc_q, doc_k, HAS_DOC)), p_t, 0.0)
            dv += tl.dot(p_t.to(do.dtype), do)
            dp_t = tl.dot(v, tl.trans(do))
            ds_t = p_t * (dp_t - delta[None, :])
            dk += tl.dot(ds_t.to(q.dtype), q)
        return dk, dv

    @triton.autotune(
        configs=_configs([(32, 64, 4, 3), (32, 64, 4, 2), (64, 128, 8, 2), (64, 128, 8, 1), (32, 128, 8, 2),
                          (64, 64, 4, 2), (32, 32, 4, 3), (128, 128, 8, 1)], (16, 32)),
        key=["T_BUCKET", "W", "HEAD_DIM", "HAS_DOC", "EVEN_Q", "EVEN_K", "G"],
    )
    @triton.jit
    def _dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, DOC,
                     s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_db, s_dh, s_dt,
                     s_dkb, s_dkh, s_dkt, s_dvb, s_dvh, s_dvt,
                     H_kv, G, T_q, T_k, W, qk_scale, sm_scale, T_BUCKET,
                     HAS_DOC: tl.constexpr, HEAD_DIM: tl.constexpr, EVEN_Q: tl.constexpr, EVEN_K: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // H_kv
        hk = pid_bh % H_kv
        offset = T_k - T_q
        start_n = pid_n * BLOCK_N
        k_pos = start_n + tl.arange(0, BLOCK_N)
        offs_m = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        in_k = k_pos < T_k
        k = tl.load(K + b * s_kb + hk * s_kh + k_pos[:, None] * s_kt + offs_d[None, :], mask=in_k[:, None], other=0.0)
        v = tl.load(V + b * s_vb + hk * s_vh + k_pos[:, None] * s_vt + offs_d[None, :], mask=in_k[:, None], other=0.0)
        doc_k = tl.load(DOC + k_pos, mask=in_k, other=-1) if HAS_DOC else 0
        dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
        # query rows (indices into Tq) that can see a key of this block: absolute start_n .. start_n+BLOCK_N-1+W-1
        lo = tl.maximum(start_n - offset, 0) // BLOCK_M * BLOCK_M
        hi = tl.minimum(start_n + BLOCK_N - 1 + W - offset, T_q)
        after = (tl.maximum(start_n + BLOCK_N - 1 - offset, 0) + BLOCK_M - 1) // BLOCK_M * BLOCK_M  # past diagonal
        inside = tl.maximum(start_n + W - offset, 0) // BLOCK_M * BLOCK_M  # whole query block within the window
        a = tl.minimum(tl.maximum(after, lo), hi)
        b2 = tl.minimum(tl.maximum(inside, a), hi)
        if HAS_DOC:  # every block masked: part 0 = [lo, hi)
            a = hi
        for g in range(G):
            h = hk * G + g
            q_base = Q + b * s_qb + h * s_qh
            do_base = DO + b * s_db + h * s_dh
            lse_base = LSE + (b * H_kv * G + h) * T_q
            delta_base = DELTA + (b * H_kv * G + h) * T_q
            for part in tl.static_range(3 - 2 * HAS_DOC):
                start, end = _part(lo, a, b2, hi, part)
                dk, dv = _dkdv_blocks(dk, dv, k, v, q_base, do_base, lse_base, delta_base, s_qt, s_dt, k_pos, doc_k,
                                      DOC, offset, start, end, T_q, W, qk_scale, offs_m, offs_d, part != 1, HAS_DOC,
                                      EVEN_Q, BLOCK_M)
        dk *= sm_scale
        tl.store(DK + b * s_dkb + hk * s_dkh + k_pos[:, None] * s_dkt + offs_d[None, :], dk.to(DK.dtype.element_ty),
                 mask=in_k[:, None])
        tl.store(DV + b * s_dvb + hk * s_dvh + k_pos[:, None] * s_dvt + offs_d[None, :], dv.to(DV.dtype.element_ty),
                 mask=in_k[:, None])

    @triton.jit
    def _dq_blocks(dq, q, do, lse, delta, k_base, v_base, s_kt, s_vt, q_pos, doc_q, DOC, start, end, T_k, W,
                   qk_scale, offs_n, offs_d, MASK: tl.constexpr, HAS_DOC: tl.constexpr, EVEN_K: tl.constexpr,
                   BLOCK_N: tl.constexpr):
        for start_n in range(start, end, BLOCK_N):
            k_pos = start_n + offs_n
            in_k = (k_pos < T_k) | EVEN_K
            k = tl.load(k_base + k_pos[:, None] * s_kt + offs_d[None, :], mask=in_k[:, None], other=0.0)
            v = tl.load(v_base + k_pos[:, None] * s_vt + offs_d[None, :], mask=in_k[:, None], other=0.0)
            p = tl.math.exp2(tl.dot(q, tl.trans(k)) * qk_scale - lse[:, None])
            if MASK:
                doc_k = tl.load(DOC + k_pos, mask=in_k, other=-1) if HAS_DOC else 0
                p = tl.where(_keep(q_pos, k_pos, W, doc_q, doc_k, HAS_DOC), p, 0.0)
            dp = tl.dot(do, tl.trans(v))
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k)
        return dq

    @triton.autotune(
        configs=_configs([(128, 64, 8, 3), (64, 32, 4, 3), (128, 32, 8, 3), (64, 64, 4, 3), (64, 32, 4, 4), (128, 64, 8, 4)],
                         (16, 32)),
        key=["T_BUCKET", "W", "HEAD_DIM", "HAS_DOC", "EVEN_Q", "EVEN_K"],
    )
    @triton.jit
    def _dq_kernel(Q, K, V, OUT, DO, LSE, DELTA, DQ, DOC,
                   s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_db, s_dh, s_dt, s_dqb, s_dqh, s_dqt,
                   s_ob, s_oh, s_ot,
                   H, G, T_q, T_k, W, qk_scale, sm_scale, T_BUCKET,
                   HAS_DOC: tl.constexpr, HEAD_DIM: tl.constexpr, EVEN_Q: tl.constexpr, EVEN_K: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        offset = T_k - T_q
        offs_m, offs_d, in_q, q_pos, q, doc_q = _q_tile(Q, DOC, s_qb, s_qh, s_qt, b, h, pid_m, T_q, offset, HAS_DOC,
                                                        HEAD_DIM, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        do = tl.load(DO + b * s_db + h * s_dh + offs_m[:, None] * s_dt + offs_d[None, :], mask=in_q[:, None],
                     other=0.0)
        lse = tl.load(LSE + pid_bh * T_q + offs_m, mask=in_q, other=0.0)
        # delta_i = sum_d O_i dO_i, stored for the dK/dV pass that follows
        o = tl.load(OUT + b * s_ob + h * s_oh + offs_m[:, None] * s_ot + offs_d[None, :], mask=in_q[:, None], other=0.0)
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
        tl.store(DELTA + pid_bh * T_q + offs_m, delta, mask=in_q)
        k_base = K + b * s_kb + (h // G) * s_kh
        v_base = V + b * s_vb + (h // G) * s_vh
        dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        lo, a, b2, hi = _key_ranges(pid_m * BLOCK_M + offset, T_k, W, HAS_DOC, BLOCK_M, BLOCK_N)
        for part in tl.static_range(3 - 2 * HAS_DOC):
            start, end = _part(lo, a, b2, hi, part)
            dq = _dq_blocks(dq, q, do, lse, delta, k_base, v_base, s_kt, s_vt, q_pos, doc_q, DOC, start, end, T_k, W,
                            qk_scale, offs_n, offs_d, part != 1, HAS_DOC, EVEN_K, BLOCK_N)
        dq *= sm_scale
        tl.store(DQ + b * s_dqb + h * s_dqh + offs_m[:, None] * s_dqt + offs_d[None, :], dq.to(DQ.dtype.element_ty),
                 mask=in_q[:, None])


# ------------------------------------------------------------------------------------------------- launchers
def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    d = q.shape[-1]
    if d not in (16, 32, 64, 128, 256):
        raise ValueError(f"attention_kernel='triton' supports head_dim in (16, 32, 64, 128, 256); got {d}.")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]}).")


def _last_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _bucket(t: int) -> int:
    """Autotuning key for a length: the next power of two (a new prompt length does not re-tune)."""
    return 1 << max(t - 1, 0).bit_length()


@functools.cache
def _no_doc(device: torch.device) -> torch.Tensor:
    return torch.zeros(1, dtype=torch.int32, device=device)


def _doc_arg(doc: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """The DOC pointer argument: the document ids, or a placeholder the kernel never reads."""
    return doc if doc is not None else _no_doc(like.device)


class _Launcher:
    """Launches one autotuned kernel with little Python per call.

    The first call for a launch signature (shapes, strides, window, dtypes, pointer alignment: everything that decides
    triton's specialisation, the tuned config and the grid) goes through the autotuner; later calls with that
    signature launch the compiled kernel directly, skipping the autotuner's key building and triton's argument
    binding (together tens of microseconds per launch, which dominate a fwd+bwd at 8k tokens).
    """

    def __init__(self, kernel) -> None:
        self.kernel = kernel
        self.compiled: dict[tuple, tuple] = {}

    def __call__(self, signature: tuple, grid, args: tuple, constexprs: dict) -> None:
        hit = self.compiled.get(signature)
        if hit is not None:
            compiled, tail, grid_size = hit
            compiled[grid_size](*args, *tail)
            return
        self.kernel[grid](*args, **constexprs)
        if _INTERPRET:
            return
        config = self.kernel.best_config
        meta = {**constexprs, **config.kwargs}
        compiled = self.kernel.fn.run(*args, grid=grid, warmup=True, **constexprs, **config.all_kwargs())
        names = self.kernel.fn.arg_names
        grid_size = (*grid(meta), 1, 1)[:3]  # the compiled kernel's launcher takes all three grid dimensions
        self.compiled[signature] = (compiled, tuple(meta[n] for n in names[len(args):]), grid_size)


def _signature(tensors: tuple, *scalars) -> tuple:
    return (tensors[0].device, *((t.shape, t.stride(), t.dtype, t.data_ptr() % 16 == 0) for t in tensors), *scalars)


if triton is not None:
    _launch_fwd, _launch_dq, _launch_dkdv = _Launcher(_fwd_kernel), _Launcher(_dq_kernel), _Launcher(_dkdv_kernel)


def _even(t: int) -> bool:
    """Whether a length is a multiple of every block size (128), so the kernels may skip bounds checks."""
    return t % 128 == 0


def _forward(q, k, v, doc, window: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    b, h, t_q, d = q.shape
    t_k = k.shape[2]
    out = q.new_empty(b, t_q, h, d)
    lse = torch.empty(b, h, t_q, device=q.device, dtype=torch.float32)
    doc_arg = _doc_arg(doc, q)
    args = (
        q, k, v, out, lse, doc_arg,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(2), out.stride(1),
        h, h // k.shape[1], t_q, t_k, window, scale * LOG2E, _bucket(t_q),
    )
    constexprs = {"HAS_DOC": doc is not None, "HEAD_DIM": d, "EVEN_Q": _even(t_q), "EVEN_K": _even(t_k)}
    _launch_fwd(_signature((q, k, v, out, lse, doc_arg), window), lambda meta: (triton.cdiv(t_q, meta["BLOCK_M"]), b * h),
                args, constexprs)
    return out, lse


def _backward(dout, q, k, v, out, lse, doc, window: int, scale: float):
    b, h, t_q, d = q.shape
    h_kv, t_k = k.shape[1], k.shape[2]
    dout = _last_contiguous(dout)  # (B, Tq, H, D)
    delta = torch.empty_like(lse)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    doc_arg = _doc_arg(doc, q)
    common = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
              v.stride(0), v.stride(1), v.stride(2), dout.stride(0), dout.stride(2), dout.stride(1))
    constexprs = {"HAS_DOC": doc is not None, "HEAD_DIM": d, "EVEN_Q": _even(t_q), "EVEN_K": _even(t_k)}
    signature = _signature((q, k, v, out, dout, lse, doc_arg, dq, dk, dv), window)
    bucket = _bucket(t_q)
    _launch_dq(
        signature, lambda meta: (triton.cdiv(t_q, meta["BLOCK_M"]), b * h),
        (q, k, v, out, dout, lse, delta, dq, doc_arg, *common, dq.stride(0), dq.stride(1), dq.stride(2),
         out.stride(0), out.stride(2), out.stride(1), h, h // h_kv, t_q, t_k, window, scale * LOG2E, scale, bucket),
        constexprs,
    )
    _launch_dkdv(
        signature, lambda meta: (triton.cdiv(t_k, meta["BLOCK_N"]), b * h_kv),
        (q, k, v, dout, lse, delta, dk, dv, doc_arg, *common,
         dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1), dv.stride(2),
         h_kv, h // h_kv, t_q, t_k, window, scale * LOG2E, scale, bucket),
        constexprs,
    )
    return dq, dk, dv


class _WindowAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, doc, window, scale):
        out, lse = _forward(q, k, v, doc, window, scale)
        ctx.save_for_backward(q, k, v, out, lse, doc)
        ctx.window, ctx.scale = window, scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, doc = ctx.saved_tensors
        dq, dk, dv = _backward(dout, q, k, v, out, lse, doc, ctx.window, ctx.scale)
        return dq, dk, dv, None, None, None


def _register_custom_ops() -> None:
    """``torch.library`` ops for ``torch.compile``, defined once per process (a Hub remote-code copy of this module,
    imported next to the package, reuses the package's)."""
    if hasattr(torch.ops.hybrid_hf, "window_attention_fwd"):
        return

    @torch.library.custom_op(
        "hybrid_hf::window_attention_fwd", mutates_args=(),
        schema="(Tensor q, Tensor k, Tensor v, Tensor? doc, int window, float scale) -> (Tensor, Tensor)",
    )
    def fwd(q, k, v, doc, window, scale):
        return _forward(q, k, v, doc, window, scale)

    @fwd.register_fake
    def _(q, k, v, doc, window, scale):
        b, h, t_q, d = q.shape
        return q.new_empty(b, t_q, h, d), q.new_empty(b, h, t_q, dtype=torch.float32)

    @torch.library.custom_op(
        "hybrid_hf::window_attention_bwd", mutates_args=(),
        schema="(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? doc, int window, "
               "float scale) -> (Tensor, Tensor, Tensor)",
    )
    def bwd(dout, q, k, v, out, lse, doc, window, scale):
        return _backward(dout, q, k, v, out, lse, doc, window, scale)

    @bwd.register_fake
    def _(dout, q, k, v, out, lse, doc, window, scale):
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    def setup_context(ctx, inputs, output):
        q, k, v, doc, window, scale = inputs
        ctx.save_for_backward(q, k, v, output[0], output[1], doc)
        ctx.window, ctx.scale = window, scale

    def backward(ctx, dout, _dlse):
        q, k, v, out, lse, doc = ctx.saved_tensors
        dq, dk, dv = torch.ops.hybrid_hf.window_attention_bwd(dout, q, k, v, out, lse, doc, ctx.window, ctx.scale)
        return dq, dk, dv, None, None, None

    fwd.register_autograd(backward, setup_context=setup_context)


if triton is not None:
    _register_custom_ops()


def window_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, window: int | None, scale: float,
    doc: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention limited to the last ``window`` keys (``None``: plain causal). Returns (B, Tq, Hq, D).

    ``doc`` (int32, length Tk, batch 1) gives each token's packed-document index; keys of other documents are masked.
    """
    if triton is None:
        raise ValueError("attention_kernel='triton' needs the triton package (it ships with CUDA builds of torch).")
    _check(q, k, v)
    q, k, v = (_last_contiguous(t) for t in (q, k, v))
    w = k.shape[2] if window is None else min(int(window), k.shape[2])
    if doc is not None:
        doc = doc.to(torch.int32).contiguous()
    if torch.compiler.is_compiling():
        return torch.ops.hybrid_hf.window_attention_fwd(q, k, v, doc, w, float(scale))[0]
    return _WindowAttention.apply(q, k, v, doc, w, float(scale))
