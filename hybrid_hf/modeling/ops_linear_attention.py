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


def scalar_decay_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunkwise-parallel scalar-decay linear attention (quadratic inside a chunk, recurrent across chunks)."""
    dtype = v.dtype
    q, k, v, g = (t.float() for t in (q, k, v, g))
    state = _zeros_state(q, v) if initial_state is None else initial_state.float()
    outs = []
    for s in range(0, q.shape[1], chunk_size):
        qc, kc, vc = q[:, s : s + chunk_size], k[:, s : s + chunk_size], v[:, s : s + chunk_size]
        gam = g[:, s : s + chunk_size].cumsum(1)  # (B, C, H) cumulative log decay inside the chunk
        n = qc.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        diff = (gam[:, :, None, :] - gam[:, None, :, :]).masked_fill(~causal[None, :, :, None], float("-inf"))
        scores = torch.einsum("bihk,bjhk->bijh", qc, kc) * diff.exp()
        intra = torch.einsum("bijh,bjhv->bihv", scores, vc)
        inter = torch.einsum("bihk,bhkv->bihv", qc * gam.exp()[..., None], state)
        outs.append(intra + inter)
        last = gam[:, -1]  # (B, H)
        weights = (last[:, None] - gam).exp()  # decay from each token to the chunk end
        state = state * last.exp()[..., None, None] + torch.einsum("bjhk,bjhv->bhkv", kc * weights[..., None], vc)
    return torch.cat(outs, dim=1).to(dtype), state


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

    Inside a chunk the delta updates are folded into ``T = (I + tril(diag(beta) K K^T * decay, -1))^{-1}``, solved
    by forward substitution; across chunks the state is carried recurrently.
    """
    dtype = v.dtype
    q, k, v, g, beta = (t.float() for t in (q, k, v, g, beta))
    state = _zeros_state(q, v) if initial_state is None else initial_state.float()
    outs = []
    for s in range(0, q.shape[1], chunk_size):
        qc, kc, vc = (t[:, s : s + chunk_size].transpose(1, 2) for t in (q, k, v))  # (B, H, C, D)
        bc = beta[:, s : s + chunk_size].transpose(1, 2)  # (B, H, C)
        gam = g[:, s : s + chunk_size].transpose(1, 2).cumsum(-1)  # (B, H, C)
        n = qc.shape[2]
        lower = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        decay = (gam[..., :, None] - gam[..., None, :]).masked_fill(~lower, float("-inf")).exp()  # (B,H,C,C)
        k_beta = kc * bc[..., None]
        # A = strictly-lower (beta_i k_i . k_j) decay_ij ; T = (I + A)^{-1} by forward substitution
        a = (k_beta @ kc.transpose(-1, -2) * decay).masked_fill(lower.logical_not().logical_or(
            torch.eye(n, dtype=torch.bool, device=q.device)), 0.0)
        eye = torch.eye(n, device=q.device, dtype=torch.float32)
        t_mat = torch.linalg.solve_triangular(eye + a, eye.expand_as(a), upper=False, unitriangular=True)
        u = t_mat @ (vc * bc[..., None])  # pseudo-values of the chunk
        w = t_mat @ (k_beta * gam.exp()[..., None])  # how the incoming state is read by each delta update
        v_new = u - w @ state  # (B, H, C, V)
        attn = (qc @ kc.transpose(-1, -2) * decay).masked_fill(~lower, 0.0)
        o = (qc * gam.exp()[..., None]) @ state + attn @ v_new
        outs.append(o.transpose(1, 2))
        last = gam[..., -1]  # (B, H)
        state = state * last.exp()[..., None, None] + (kc * (last[..., None] - gam).exp()[..., None]).transpose(
            -1, -2
        ) @ v_new
    return torch.cat(outs, dim=1).to(dtype), state


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
