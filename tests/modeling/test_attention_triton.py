"""The Triton window-attention kernel (``attention_kernel="triton"``) against a plain fp32 reference.

On a GPU the kernels run compiled, in bf16 (within bf16 tolerance of the reference, and no worse than masked SDPA
in bf16). On CPU the same cases run through triton's interpreter (``TRITON_INTERPRET=1``, fp32, exact to 1e-5) in a
subprocess, since the interpreter must be chosen before the kernels are defined.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
ON_GPU = torch.cuda.is_available() and HAS_TRITON
RUNS_HERE = ON_GPU or (INTERPRET and HAS_TRITON)

# (batch, q heads, kv heads, Tq, Tk, head_dim, window, packed documents)
CPU_CASES = [
    (1, 2, 2, 37, 37, 16, 8, False),  # window smaller than a block
    (1, 2, 2, 200, 200, 16, 40, False),  # several blocks: masked edges and unmasked interior
    (2, 4, 2, 50, 50, 16, None, False),  # plain causal, grouped-query heads
    (1, 2, 1, 150, 230, 16, 70, False),  # queries are the last Tq of Tk positions (cached prefix)
    (1, 2, 2, 64, 64, 32, 100, False),  # window longer than the sequence
    (1, 2, 1, 150, 150, 16, 33, True),  # packed documents
]
GPU_CASES = [
    (2, 4, 2, 1000, 1000, 64, 128, False),
    (1, 16, 16, 4096, 4096, 128, 512, False),
    (1, 16, 8, 2048, 2048, 64, 2048, False),
    (1, 4, 1, 777, 2000, 64, 300, False),
    (1, 8, 4, 3000, 3000, 64, 256, True),
    (1, 4, 4, 1500, 1500, 128, None, False),
    (1, 4, 2, 1000, 1000, 64, 64, False),
]


def reference(q, k, v, window, scale, doc=None, dtype=torch.float32):
    """Masked softmax attention computed in ``dtype`` (fp32: the reference; bf16: the SDPA baseline); (B, Tq, H, D)."""
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    t_q, t_k = q.shape[2], k.shape[2]
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    qi = torch.arange(t_q, device=q.device)[:, None] + (t_k - t_q)
    ki = torch.arange(t_k, device=q.device)[None]
    keep = ki <= qi
    if window is not None:
        keep &= qi - ki < window
    if doc is not None:
        keep &= doc[qi] == doc[ki]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=scale).transpose(1, 2)


def _inputs(case, device, dtype):
    b, h, hkv, t_q, t_k, d, window, packed = case
    gen = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(b, t_q, h, d, generator=gen).to(device, dtype).transpose(1, 2)  # the model's strided layout
    k = torch.randn(b, hkv, t_k, d, generator=gen).to(device, dtype)
    v = torch.randn(b, hkv, t_k, d, generator=gen).to(device, dtype)
    doc = None
    if packed:
        cuts = torch.tensor([0, t_k // 5, t_k // 2, t_k // 2 + 3, t_k])
        doc = torch.repeat_interleave(torch.arange(4), cuts.diff()).to(device, torch.int32)
    grad = torch.randn(b, t_q, h, d, generator=gen).to(device, dtype)
    return [t.requires_grad_() for t in (q, k, v)], doc, grad, window, d**-0.5


def _run(fn, q, k, v, grad):
    out = fn(q, k, v)
    return [out.detach(), *torch.autograd.grad(out, (q, k, v), grad)]


@pytest.mark.skipif(not RUNS_HERE, reason="needs CUDA + triton, or triton's interpreter (see the subprocess test)")
@pytest.mark.parametrize("case", GPU_CASES if ON_GPU else CPU_CASES, ids=str)
def test_window_kernel_matches_reference(case):
    from hybrid_hf.modeling.attention_triton import window_attention

    device, dtype = ("cuda", torch.bfloat16) if ON_GPU else ("cpu", torch.float32)
    (q, k, v), doc, grad, window, scale = _inputs(case, device, dtype)
    ours = _run(lambda *t: window_attention(*t, window=window, scale=scale, doc=doc), q, k, v, grad)
    ref = _run(lambda *t: reference(*t, window, scale, doc), q, k, v, grad)
    names = ("out", "dq", "dk", "dv")
    if not ON_GPU:
        for name, a, b in zip(names, ours, ref):
            torch.testing.assert_close(a, b.to(a.dtype), atol=1e-5, rtol=1e-5, msg=name)
        return
    # bf16: no further from the fp32 reference than masked SDPA computed in bf16 (plus a small floor)
    base = _run(lambda *t: reference(*t, window, scale, doc, dtype), q, k, v, grad)
    for name, a, b, r in zip(names, ours, base, ref):
        err, base_err = (a.float() - r.float()).abs().max(), (b.float() - r.float()).abs().max()
        assert err <= 2 * base_err + 1e-2 * r.abs().max(), (name, float(err), float(base_err))


@pytest.mark.skipif(not ON_GPU, reason="needs CUDA + triton")
def test_window_kernel_under_torch_compile():
    """Compiled callers get the kernel as an opaque custom op: same values and gradients as eager."""
    from hybrid_hf.modeling.attention_triton import window_attention

    (q, k, v), doc, grad, window, scale = _inputs(GPU_CASES[0], "cuda", torch.bfloat16)
    fn = torch.compile(lambda a, b, c: window_attention(a, b, c, window=window, scale=scale), fullgraph=True)
    compiled = _run(fn, q, k, v, grad)
    eager = _run(lambda *t: window_attention(*t, window=window, scale=scale), q, k, v, grad)
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.skipif(ON_GPU or INTERPRET or not HAS_TRITON, reason="CPU run without the interpreter only")
def test_window_kernel_in_triton_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-p", "no:cacheprovider", str(Path(__file__)),
         "-k", "matches_reference"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert f"{len(CPU_CASES)} passed" in result.stdout, result.stdout[-2000:]


@pytest.mark.skipif(not ON_GPU, reason="needs CUDA + triton")
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compile_layers"])
def test_model_with_triton_kernel_matches_sdpa_kernel(compiled):
    """A model on the Triton kernel gives the logits and gradients of the masked-SDPA reference kernel (bf16), also
    for packed rows (restarting position ids) and under ``compile_layers`` (the kernel as a custom op)."""
    from conftest import tiny_config

    from hybrid_hf import HybridForCausalLM

    ids = torch.randint(3, 128, (2, 512), device="cuda")
    positions = torch.cat([torch.arange(200), torch.arange(312)]).repeat(2, 1).cuda()  # two documents per row
    results = {}
    for kernel in ("sdpa", "triton"):
        torch.manual_seed(0)
        cfg = tiny_config("SSSF", sliding_window=64, hidden_size=256, attention_kernel=kernel)
        model = HybridForCausalLM(cfg).cuda().to(torch.bfloat16)
        if compiled and kernel == "triton":
            model.compile_layers()
        logits = model(ids, position_ids=positions).logits.float()
        logits.square().mean().backward()
        results[kernel] = (logits.detach(), model.model.layers[0].self_attn.q_proj.weight.grad.float())
    (ref_logits, ref_grad), (logits, grad) = results["sdpa"], results["triton"]
    assert (logits - ref_logits).abs().max() <= 3e-2 * ref_logits.abs().max()
    assert (grad - ref_grad).abs().max() <= 5e-2 * ref_grad.abs().max()
