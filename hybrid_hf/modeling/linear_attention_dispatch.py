"""One dispatch point for the recurrent mixers' maths: fla's Triton kernels on CUDA when installed (and when their
backward is trustworthy), else the PyTorch reference of ``linear_attention_ops``.

fla and triton are imported by name at call time (``importlib``), so loading a checkpoint with remote code never
requires them.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import warnings

import torch

from .linear_attention_ops import (
    gated_delta_chunked,
    gated_delta_recurrent,
    scalar_decay_chunked,
    scalar_decay_recurrent,
)


@functools.cache
def fla_available() -> bool:
    """Whether flash-linear-attention's Triton ops can be imported (CUDA machines only)."""
    if importlib.util.find_spec("fla") is None or not torch.cuda.is_available():
        return False
    try:
        importlib.import_module("fla.ops.gated_delta_rule")
        importlib.import_module("fla.ops.simple_gla")
    except Exception:
        return False
    return True


def triton_version() -> str | None:
    """The installed triton's version, or None without triton."""
    try:
        return importlib.import_module("triton").__version__
    except Exception:
        return None


@functools.cache
def fla_backward_is_safe(kind: str = "gated_delta") -> bool:
    """Whether fla's backward of this mixer kind can be trusted here. fla refuses (or, before it checked, silently
    got wrong) the gradients of its gated chunk kernels — GDN and simple GLA alike, through ``chunk_bwd_dqkwg`` —
    on Hopper with 3.4 <= triton < 3.7.1 (fla issue #640; seen on an H200 with triton 3.6 for both). There, fla
    serves GDN's gated backward through its TileLang backend when tilelang (and nvcc) are installed: that path is
    used once ``gated_delta_backward_verified`` has checked it against the reference on this GPU."""
    if torch.cuda.get_device_capability()[0] != 9:
        return True
    version = triton_version()
    if version is None:
        return False
    if not triton_has_hopper_bwd_bug(version):
        return True
    return kind == "gated_delta" and fla_tilelang_backward_available() and gated_delta_backward_verified()


@functools.cache
def fla_tilelang_backward_available() -> bool:
    """Whether fla's TileLang backend for the gated chunk backward (its fix for #640 on Hopper) can run: fla
    registers it, tilelang and a usable nvcc are installed, and ``FLA_TILELANG`` does not switch it off."""
    try:
        backend = importlib.import_module("fla.ops.common.backends.tilelang").CommonTileLangBackend
        return bool(backend.can_use())
    except Exception:
        return False


@functools.cache
def gated_delta_backward_verified(tolerance: float = 0.05) -> bool:
    """Run fla's GDN forward + backward once on a small bf16 problem on the current GPU and compare every gradient
    with the fp32 PyTorch reference (relative L2 error <= ``tolerance``); False if it raises or differs. Runs
    outside any autocast / tracing / no-grad context of the caller (it is first reached inside a model forward)."""
    if not torch.cuda.is_available():
        return False
    with torch.autocast("cuda", enabled=False), torch.enable_grad():
        return _gated_delta_check(tolerance)


@torch.compiler.disable
def _gated_delta_check(tolerance: float) -> bool:
    try:
        chunk_gated_delta_rule = importlib.import_module("fla.ops.gated_delta_rule").chunk_gated_delta_rule
        gen = torch.Generator(device="cuda").manual_seed(0)
        b, t, h, dk, dv = 1, 192, 2, 64, 128

        def rand(*shape):
            return torch.randn(*shape, device="cuda", generator=gen)

        q = torch.nn.functional.normalize(rand(b, t, h, dk), dim=-1)
        k = torch.nn.functional.normalize(rand(b, t, h, dk), dim=-1)
        v, g = rand(b, t, h, dv), -0.1 * torch.rand(b, t, h, device="cuda", generator=gen)
        beta, weight = torch.rand(b, t, h, device="cuda", generator=gen), rand(b, t, h, dv)
        inputs = [q, k, v, g, beta]
        fast = [x.bfloat16().requires_grad_(True) if i < 3 else x.clone().requires_grad_(True)  # g, beta fp32
                for i, x in enumerate(inputs)]
        ref = [x.clone().requires_grad_(True) for x in inputs]
        o_fast, _ = chunk_gated_delta_rule(*fast[:3], g=fast[3], beta=fast[4], scale=1.0)
        (o_fast.float() * weight).sum().backward()
        o_ref, _ = gated_delta_chunked(*ref)
        (o_ref * weight).sum().backward()
        for a, r in zip([o_fast, *(x.grad for x in fast)], [o_ref, *(x.grad for x in ref)]):
            if not bool(torch.isfinite(a).all()) or (a.float() - r).norm() > tolerance * r.norm():
                return False
        return True
    except Exception:
        return False


def triton_has_hopper_bwd_bug(version: str) -> bool:
    """Whether this triton version is in fla #640's broken range (3.4 <= triton < 3.7.1)."""
    parsed = tuple(int(p) for p in version.split("+")[0].split(".")[:3] if p.isdigit())
    return (3, 4, 0) <= parsed < (3, 7, 1)


@functools.cache
def _warn_reference_on_cuda(kind: str) -> None:
    warnings.warn(
        f"hybrid_hf: flash-linear-attention is not installed (or not importable), so the {kind} layers run the "
        "PyTorch reference on CUDA, about 10x slower to train than fla's kernels; pip install 'hybrid_hf[cuda]'.",
        stacklevel=4,
    )


@functools.cache
def _warn_unsafe_backward(kind: str) -> None:
    fix = "Install triton >= 3.7.1 for the fast kernel"
    if kind == "gated_delta":
        fix += (", or tilelang (fla's TileLang backend for this backward; it needs nvcc)" if not
                fla_tilelang_backward_available() else "; fla's TileLang backend is installed but failed the "
                "one-time check against the PyTorch reference on this GPU (gated_delta_backward_verified)")
    warnings.warn(
        f"hybrid_hf: fla's {kind} backward is wrong/refused on Hopper with triton >= 3.4, < 3.7.1 (fla issue #640); "
        f"training uses the PyTorch reference for these layers instead (inference still uses fla). {fix}.",
        stacklevel=4,
    )


def use_fla(x: torch.Tensor, kind: str) -> bool:
    """Whether the fla kernel serves this call (CUDA, fla installed, and a trustworthy backward when one is needed).
    On CUDA without fla the reference runs, with a one-time warning."""
    if not x.is_cuda:
        return False
    if not fla_available():
        _warn_reference_on_cuda(kind)
        return False
    if torch.is_grad_enabled() and x.requires_grad and not fla_backward_is_safe(kind):
        _warn_unsafe_backward(kind)
        return False
    return True


# Under torch.compile the kernel choice and fla's kernels run eagerly (``torch.compiler.disable``), while the PyTorch
# reference stays traceable: traced by dynamo, the memoised availability checks were re-run symbolically, their imports
# failed inside the trace, and compiled training silently took the reference although fla was installed.
@torch.compiler.disable
def kernel_choice(x: torch.Tensor, kind: str) -> bool:
    """``use_fla(x, kind)``, always evaluated eagerly (also inside a compiled forward)."""
    return use_fla(x, kind)


@torch.compiler.disable
def _fla_scalar_decay(q, k, v, g, initial_state, cu_seqlens):
    chunk_simple_gla = importlib.import_module("fla.ops.simple_gla").chunk_simple_gla
    return chunk_simple_gla(q, k, v, g=g, scale=1.0, initial_state=initial_state, output_final_state=True,
                            cu_seqlens=cu_seqlens)


@torch.compiler.disable
def _fla_gated_delta(q, k, v, g, beta, initial_state, cu_seqlens):
    chunk_gated_delta_rule = importlib.import_module("fla.ops.gated_delta_rule").chunk_gated_delta_rule
    return chunk_gated_delta_rule(q, k, v, g=g, beta=beta, scale=1.0, initial_state=initial_state,
                                  output_final_state=True, cu_seqlens=cu_seqlens)


def scalar_decay_attention(q, k, v, g, initial_state=None, cu_seqlens=None, chunk_size: int = 64):
    """Scalar-decay linear attention: fla ``chunk_simple_gla`` on CUDA, else the PyTorch reference."""
    if kernel_choice(q, "scalar"):
        return _fla_scalar_decay(q, k, v, g, initial_state, cu_seqlens)
    if cu_seqlens is not None:
        return _per_document(scalar_decay_attention, cu_seqlens, q, k, v, g, chunk_size=chunk_size)
    if q.shape[1] == 1:
        return scalar_decay_recurrent(q, k, v, g, initial_state)
    return scalar_decay_chunked(q, k, v, g, initial_state, chunk_size)


def gated_delta_attention(q, k, v, g, beta, initial_state=None, cu_seqlens=None, chunk_size: int = 64):
    """Gated delta rule: fla ``chunk_gated_delta_rule`` on CUDA (when its backward is safe), else the reference."""
    if kernel_choice(q, "gated_delta"):
        return _fla_gated_delta(q, k, v, g, beta, initial_state, cu_seqlens)
    if cu_seqlens is not None:
        return _per_document(gated_delta_attention, cu_seqlens, q, k, v, g, beta, chunk_size=chunk_size)
    if q.shape[1] == 1:
        return gated_delta_recurrent(q, k, v, g, beta, initial_state)
    return gated_delta_chunked(q, k, v, g, beta, initial_state, chunk_size)


def _per_document(fn, cu_seqlens, *tensors, chunk_size: int):
    """Reference path for packed input (batch 1): run each document from a zero state."""
    bounds = cu_seqlens.tolist()
    outs, states = [], []
    for start, end in zip(bounds[:-1], bounds[1:]):
        o, s = fn(*(t[:, start:end] for t in tensors), chunk_size=chunk_size)
        outs.append(o)
        states.append(s)
    return torch.cat(outs, dim=1), torch.cat(states, dim=0)
