"""Pure-PyTorch maths of the recurrent mixers (the reference path; runs anywhere, fp32 inside).

Two recurrences cover the three mixers, each with a chunked form (training / prefill) and a step-by-step form
(decode), equal up to float error:

- scalar-decay linear attention (Mamba-2 SSD, Lightning attention):
  ``S_t = exp(g_t) S_{t-1} + k_t v_t^T``,  ``o_t = S_t^T q_t``;
- gated delta rule (Gated DeltaNet):
  ``S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T``,  ``o_t = S_t^T q_t``.

Shapes: ``q, k`` (B, T, H, K); ``v`` (B, T, H, V); ``g, beta`` (B, T, H) with ``g`` the log decay (<= 0);
states (B, H, K, V). Every function returns ``(o, final_state)`` with ``o`` (B, T, H, V) in the input dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _zeros_state(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    b, _, h, dk = q.shape
    return q.new_zeros(b, h, dk, v.shape[-1], dtype=torch.float32)


# ------------------------------------------------------------------------------------------- scalar decay
def scalar_decay_recurrent(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, initial_state: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step-by-step scalar-decay linear attention."""
    dtype = v.dtype
    q, k, v, g = (t.float() for t in (q, k, v, g))
    state = _zeros_state(q, v) if initial_state is None else initial_state.float()
    out = []
    for t in range(q.shape[1]):
        state = state * g[:, t, :, None, None].exp() + k[:, t, :, :, None] * v[:, t, :, None, :]
        out.append(torch.einsum("bhk,bhkv->bhv", q[:, t], state))
    return torch.stack(out, dim=1).to(dtype), state


def _chunks(chunk_size: int, *tensors: torch.Tensor) -> tuple[int, list[torch.Tensor]]:
    """Zero-pad the time axis to whole chunks and reshape (B, T, H, ...) -> (B, H, N, C, ...), in fp32.

    Padded tokens are neutral: zero keys/values/betas add nothing to the state and a zero log decay keeps it."""
    t = tensors[0].shape[1]
    pad = -t % chunk_size
    out = []
    for x in tensors:
        x = x.float()
        if pad:
            x = F.pad(x, (0, 0) * (x.dim() - 2) + (0, pad))
        b, tp, h = x.shape[:3]
        x = x.reshape(b, tp // chunk_size, chunk_size, h, *x.shape[3:])
        out.append(x.permute(0, 3, 1, 2, *range(4, x.dim())))
    return t, out


def _unchunk(o: torch.Tensor, t: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, H, N, C, V) -> (B, T, H, V)."""
    b, h, n, c, v = o.shape
    return o.permute(0, 2, 3, 1, 4).reshape(b, n * c, h, v)[:, :t].to(dtype)


def _decay(to: torch.Tensor, since: torch.Tensor, strict: bool = False) -> torch.Tensor:
    """exp(to_i - since_j) for j <= i (j < i if ``strict``), else 0: the decay from point j to point i, given
    cumulative log decays ``to``, ``since`` (..., L)."""
    n = to.shape[-1]
    keep = torch.ones(n, n, dtype=torch.bool, device=to.device).tril(-1 if strict else 0)
    return (to[..., :, None] - since[..., None, :]).masked_fill(~keep, float("-inf")).exp()


def _keys_to_chunk_end(kc: torch.Tensor, gam: torch.Tensor) -> torch.Tensor:
    """Keys (B, H, N, C, K) decayed to the end of their chunk, transposed to (B, H, N, K, C)."""
    return (kc * (gam[..., -1:] - gam).exp()[..., None]).transpose(-1, -2)


def scalar_decay_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunkwise-parallel scalar-decay linear attention, with no loop: quadratic inside every chunk at once, and the
    state entering each chunk as a decay-weighted sum of the earlier chunks' contributions (one matmul)."""
    dtype = v.dtype
    state0 = _zeros_state(q, v) if initial_state is None else initial_state.float()
    t, (qc, kc, vc, gc) = _chunks(chunk_size, q, k, v, g)  # (B, H, N, C, ·); gc (B, H, N, C)
    gam = gc.cumsum(-1)  # cumulative log decay inside each chunk
    intra = (qc @ kc.transpose(-1, -2) * _decay(gam, gam)) @ vc
    last = gam[..., -1]  # (B, H, N) log decay over each whole chunk
    contrib = _keys_to_chunk_end(kc, gam) @ vc  # (B, H, N, K, V)
    ends = last.cumsum(-1)  # log decay from the start to the end of chunk n
    starts = ends - last  # ... to the start of chunk n
    weights = _decay(starts, ends, strict=True)  # (B, H, N, N): from the end of chunk m to the start of chunk n
    entering = torch.einsum("bhnm,bhmkv->bhnkv", weights, contrib) + starts.exp()[..., None, None] * state0[:, :, None]
    o = intra + (qc * gam.exp()[..., None]) @ entering
    final = entering[:, :, -1] * last[..., -1].exp()[..., None, None] + contrib[:, :, -1]
    return _unchunk(o, t, dtype), final


# ----------------------------------------------------------------------------------------- gated delta
def gated_delta_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step-by-step gated delta rule (``q``/``k`` already normalised and scaled by the caller)."""
    dtype = v.dtype
    q, k, v, g, beta = (t.float() for t in (q, k, v, g, beta))
    state = _zeros_state(q, v) if initial_state is None else initial_state.float()
    out = []
    for t in range(q.shape[1]):
        state = state * g[:, t, :, None, None].exp()
        kt = k[:, t]
        pred = torch.einsum("bhk,bhkv->bhv", kt, state)
        delta = (v[:, t] - pred) * beta[:, t, :, None]
        state = state + kt[..., None] * delta[..., None, :]
        out.append(torch.einsum("bhk,bhkv->bhv", q[:, t], state))
    return torch.stack(out, dim=1).to(dtype), state


def gated_delta_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunkwise gated delta rule in the WY / UT-transform form (as used by fla and Qwen3-Next).

    Inside a chunk the delta updates are folded into ``T = (I + tril(diag(beta) K K^T * decay, -1))^{-1}``; every
    chunk-local quantity is computed for all chunks at once (one batched triangular solve), and only the state is
    carried across chunks in a short loop of three matmuls per chunk.
    """
    dtype = v.dtype
    state = _zeros_state(q, v) if initial_state is None else initial_state.float()
    t, (qc, kc, vc, gc, bc) = _chunks(chunk_size, q, k, v, g, beta)  # (B, H, N, C, ·); gc, bc (B, H, N, C)
    gam = gc.cumsum(-1)
    decay = _decay(gam, gam)
    k_beta = kc * bc[..., None]
    # A = strictly-lower (beta_i k_i . k_j) decay_ij ; T = (I + A)^{-1}
    a = k_beta @ kc.transpose(-1, -2) * _decay(gam, gam, strict=True)
    eye = torch.eye(chunk_size, device=q.device, dtype=torch.float32)
    t_mat = torch.linalg.solve_triangular(eye + a, eye.expand_as(a), upper=False, unitriangular=True)
    u = t_mat @ (vc * bc[..., None])  # pseudo-values of each chunk
    w = t_mat @ (k_beta * gam.exp()[..., None])  # how the incoming state is read by each delta update
    last = gam[..., -1]  # (B, H, N)
    k_out = _keys_to_chunk_end(kc, gam)
    entering, v_new = [], []
    for i in range(qc.shape[2]):
        entering.append(state)
        v_new.append(u[:, :, i] - w[:, :, i] @ state)
        state = state * last[:, :, i].exp()[..., None, None] + k_out[:, :, i] @ v_new[-1]
    entering_t, v_new_t = torch.stack(entering, dim=2), torch.stack(v_new, dim=2)
    o = (qc * gam.exp()[..., None]) @ entering_t + (qc @ kc.transpose(-1, -2) * decay) @ v_new_t
    return _unchunk(o, t, dtype), state


# ------------------------------------------------------------------------------------------ short conv
def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, left_context: torch.Tensor | None = None) -> torch.Tensor:
    """Depthwise causal convolution with SiLU. ``x`` (B, C, T), ``weight`` (C, K), ``left_context`` (B, C, <=K-1)
    holds the inputs that precede ``x`` (zeros are assumed before them)."""
    k_size = weight.shape[-1]
    ctx = x.new_zeros(x.shape[0], x.shape[1], k_size - 1)
    if left_context is not None and left_context.shape[-1] > 0:
        take = min(k_size - 1, left_context.shape[-1])
        ctx[..., k_size - 1 - take :] = left_context[..., -take:].to(x.dtype)
    full = torch.cat([ctx, x], dim=-1)
    out = F.conv1d(full, weight[:, None, :].to(x.dtype), groups=x.shape[1])
    return F.silu(out)


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).sum(-1, keepdim=True) + eps)).to(x.dtype)
