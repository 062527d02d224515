"""Fused attention kernel dispatch and fused cross-entropy equal the reference paths (CPU; CUDA runs in benchmarks/)."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from conftest import tiny_config, tiny_model

from hybrid_hf import HybridForCausalLM
from hybrid_hf.modeling.attention_dispatch import available_kernels, compute_dtype, resolve_kernel
from hybrid_hf.modeling.masking import cu_seqlens_from_position_ids


def _pair(pattern: str, kernel: str, **overrides):
    ref = tiny_model(pattern, attention_kernel="transformers", **overrides)
    fast = HybridForCausalLM(tiny_config(pattern, attention_kernel=kernel, **overrides)).eval()
    fast.load_state_dict(ref.state_dict())
    ref.set_attn_implementation("eager")
    return ref, fast


@pytest.mark.parametrize("kernel", ["flex", "sdpa"])
@pytest.mark.parametrize("pattern", ["F", "S", "SF"])
def test_kernel_path_equals_eager(kernel, pattern):
    ref, fast = _pair(pattern, kernel)
    ids = torch.randint(3, 128, (2, 37))
    with torch.no_grad():
        assert (fast(ids).logits - ref(ids).logits).abs().max().item() <= 1e-5


@pytest.mark.parametrize("kernel", ["flex", "sdpa"])
@pytest.mark.parametrize("pattern", ["F", "SF"])
def test_kernel_path_packed_documents_do_not_leak(kernel, pattern):
    ref, fast = _pair(pattern, kernel)
    docs = [torch.randint(3, 128, (n,)) for n in (7, 12, 5)]
    packed = torch.cat(docs)[None]
    position_ids = torch.cat([torch.arange(len(d)) for d in docs])[None]
    with torch.no_grad():
        out = fast(packed, position_ids=position_ids).logits[0]
        ref_packed = ref(packed, position_ids=position_ids).logits[0]
        alone = torch.cat([ref(d[None]).logits[0] for d in docs])
    assert (out - alone).abs().max().item() <= 1e-5
    assert (ref_packed - alone).abs().max().item() <= 1e-5


def test_kernel_path_gradients_match():
    # FlexAttention has no backward outside torch.compile on CPU; its gradients are checked on the GPU benchmark.
    ref, fast = _pair("SF", "sdpa")
    ref.train(), fast.train()
    ids = torch.randint(3, 128, (2, 21))
    for m in (ref, fast):
        m(ids, labels=ids).loss.backward()
    for (name, a), (_, b) in zip(ref.named_parameters(), fast.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5), name


def test_autocast_with_fp32_weights_runs_the_fused_kernel_in_autocast_dtype(monkeypatch):
    """Trainer(bf16=True) keeps fp32 weights under autocast; RoPE's fp32 tables then leave q/k in fp32 beside a bf16
    v. The fused path casts all three to autocast's dtype (as SDPA does under autocast), so the kernel choice and
    its inputs follow the compute dtype, and the loss still matches transformers' eager path."""
    seen: list[tuple[torch.dtype, ...]] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording(q, k, v, *args, **kwargs):
        seen.append((q.dtype, k.dtype, v.dtype))
        return sdpa(q, k, v, *args, **kwargs)

    ref, fast = _pair("SF", "sdpa")
    ids = torch.randint(3, 128, (2, 37))
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert compute_dtype(fast.get_input_embeddings().weight) == torch.bfloat16
        loss = fast(ids, labels=ids).loss
        ref_loss = ref(ids, labels=ids).loss
    loss.backward()
    assert seen and set(seen) == {(torch.bfloat16,) * 3}
    assert abs(loss.item() - ref_loss.item()) <= 2e-2
    assert compute_dtype(fast.get_input_embeddings().weight) == torch.float32


def test_cu_seqlens_from_position_ids():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    assert cu_seqlens_from_position_ids(pos).tolist() == [0, 3, 5, 9]
    assert cu_seqlens_from_position_ids(torch.arange(6)[None]) is None
    assert cu_seqlens_from_position_ids(torch.arange(6).repeat(2, 1)) is None
    # several packed rows: boundaries over the flattened batch, every row start included
    rows = torch.tensor([[0, 1, 0, 1, 2], [3, 4, 0, 1, 2]])
    assert cu_seqlens_from_position_ids(rows).tolist() == [0, 2, 5, 7, 10]


def test_resolve_kernel_auto_and_errors():
    cpu = torch.device("cpu")
    assert resolve_kernel("auto", cpu, "sliding_attention") == "sdpa"
    assert resolve_kernel("flex", cpu, "full_attention") == "flex"
    assert available_kernels(cpu) == ["flex", "sdpa"]
    with pytest.raises(ValueError, match="flash_attn"):
        resolve_kernel("flash_attn", cpu, "full_attention")
    with pytest.raises(ValueError, match="triton"):
        resolve_kernel("triton", cpu, "sliding_attention")


@pytest.mark.parametrize(
    ("triton", "flash", "sliding", "full"),
    [(True, True, "triton", "sdpa"), (False, True, "flash_attn", "sdpa"), (False, False, "flex", "sdpa")],
)
def test_auto_kernel_on_cuda_follows_the_measured_order(monkeypatch, triton, flash, sliding, full):
    """auto on CUDA: sliding layers on our Triton kernel, else flash-attn, else FlexAttention; full layers on SDPA
    even when flash-attn is installed (benchmarks/results/attention-kernels-profile-h200-run13.md)."""
    from hybrid_hf.modeling import attention_dispatch

    monkeypatch.setattr(attention_dispatch, "triton_available", lambda: triton)
    monkeypatch.setattr(attention_dispatch, "flash_attn_available", lambda: flash)
    cuda = torch.device("cuda")  # a device object only: nothing is allocated
    assert resolve_kernel("auto", cuda, "sliding_attention") == sliding
    assert resolve_kernel("auto", cuda, "full_attention") == full
    if flash:  # an explicit choice is honoured whatever auto would pick
        assert resolve_kernel("flash_attn", cuda, "full_attention") == "flash_attn"
    assert available_kernels(cuda) == ["flash_attn"] * flash + ["triton"] * triton + ["flex", "sdpa"]


def test_invalid_kernel_name_is_rejected():
    with pytest.raises(ValueError, match="`attention_kernel`"):
        tiny_config("SF", attention_kernel="cudnn")


def test_fused_cross_entropy_matches_standard_loss_and_grads():
    ids = torch.randint(3, 128, (2, 19))
    labels = ids.clone()
    labels[0, :4] = -100
    losses, grads = [], []
    for fused in (False, True):
        model = tiny_model("SF", fused_cross_entropy=fused).train()
        out = model(ids, labels=labels)
        assert (out.logits is None) == fused
        out.loss.backward()
        losses.append(out.loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(losses[0], losses[1], atol=1e-6)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    # num_items_in_batch (Trainer's gradient accumulation) scales the summed loss
    model = tiny_model("SF", fused_cross_entropy=True)
    ref = tiny_model("SF")
    n = torch.tensor(50)
    a = model(ids, labels=labels, num_items_in_batch=n).loss
    b = ref(ids, labels=labels, num_items_in_batch=n).loss
    assert torch.allclose(a, b, atol=1e-6)


def _fake_flash_attn_module() -> types.ModuleType:
    """flash-attn 2's documented interface, in plain PyTorch: (B, T, H, D) layout, GQA by head-count ratio,
    ``window_size=(left, right)`` with query i (bottom-right aligned) seeing keys [i - left, i + right], and
    ``flash_attn_varlen_func`` over (total, H, D) tokens split by int32 ``cu_seqlens``."""

    def attend(q, k, v, softmax_scale, causal, window_size):
        tq, tk = q.shape[0], k.shape[0]
        k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
        i = torch.arange(tq)[:, None] + (tk - tq)
        j = torch.arange(tk)[None, :]
        left, right = window_size
        keep = j <= i if causal else torch.ones(tq, tk, dtype=torch.bool)
        if left >= 0:
            keep = keep & (j >= i - left)
        if right >= 0:
            keep = keep & (j <= i + right)
        scores = torch.einsum("qhd,khd->hqk", q, k) * softmax_scale
        probs = scores.masked_fill(~keep, float("-inf")).softmax(-1)
        return torch.einsum("hqk,khd->qhd", probs, v)

    def flash_attn_func(q, k, v, softmax_scale=None, causal=False, window_size=(-1, -1)):
        return torch.stack([attend(q[b], k[b], v[b], softmax_scale, causal, window_size) for b in range(q.shape[0])])

    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale=None,
                               causal=False, window_size=(-1, -1)):
        assert cu_seqlens_q.dtype == torch.int32 and cu_seqlens_k.dtype == torch.int32
        assert max_seqlen_q == int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max())
        bounds = cu_seqlens_q.tolist()
        return torch.cat([attend(q[s:e], k[s:e], v[s:e], softmax_scale, causal, window_size)
                          for s, e in zip(bounds[:-1], bounds[1:])])

    module = types.ModuleType("flash_attn")
    module.flash_attn_func, module.flash_attn_varlen_func = flash_attn_func, flash_attn_varlen_func
    return module


def _fake_flash_attn_4_module() -> types.ModuleType:
    """FlashAttention-4's documented interface (``flash_attn.cute``): as flash-attn 2, but an unlimited side of the
    window is ``None`` (not -1), arguments after ``v`` are keywords, and the functions return ``(out, lse)``."""
    fa2 = _fake_flash_attn_module()

    def fa4_window(window_size):
        assert all(w is None or w >= 0 for w in window_size), window_size
        return tuple(-1 if w is None else w for w in window_size)

    def flash_attn_func(q, k, v, *, softmax_scale=None, causal=False, window_size=(None, None)):
        return fa2.flash_attn_func(q, k, v, softmax_scale, causal, fa4_window(window_size)), None

    def flash_attn_varlen_func(q, k, v, *, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None,
                               max_seqlen_k=None, softmax_scale=None, causal=False, window_size=(None, None)):
        out = fa2.flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                         softmax_scale, causal, fa4_window(window_size))
        return out, None

    cute = types.ModuleType("flash_attn.cute")
    cute.flash_attn_func, cute.flash_attn_varlen_func = flash_attn_func, flash_attn_varlen_func
    package = types.ModuleType("flash_attn")
    package.cute = cute
    return package


@pytest.mark.parametrize("version", ["2", "4"])
@pytest.mark.parametrize("window", [None, 4])
def test_flash_attn_dispatch_follows_the_documented_interface(monkeypatch, window, version):
    """The flash-attn branch (CUDA only in practice) passes layout, window and varlen arguments as flash-attn 2 and
    FlashAttention-4 document them: against plain-PyTorch stand-ins of those interfaces it equals the SDPA path."""
    from hybrid_hf.modeling.attention_kernels import causal_attention

    package = _fake_flash_attn_module() if version == "2" else _fake_flash_attn_4_module()
    monkeypatch.setitem(sys.modules, "flash_attn", package)
    if version == "4":
        monkeypatch.setitem(sys.modules, "flash_attn.cute", package.cute)
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 12, 8), torch.randn(2, 2, 12, 8), torch.randn(2, 2, 12, 8)
    ref = causal_attention(q, k, v, window=window, scale=0.3, kernel="sdpa")
    out = causal_attention(q, k, v, window=window, scale=0.3, kernel="flash_attn")
    assert (out - ref).abs().max().item() <= 1e-5
    # chunked prefill: 5 new queries over 12 keys (queries are the last positions)
    ref = causal_attention(q[:, :, -5:], k, v, window=window, scale=0.3, kernel="sdpa")
    out = causal_attention(q[:, :, -5:], k, v, window=window, scale=0.3, kernel="flash_attn")
    assert (out - ref).abs().max().item() <= 1e-5
    # packed documents: boundaries at 0, 5, 12 (row 0) and 12, 19, 24 (row 1, flattened)
    cu = torch.tensor([0, 5, 12, 19, 24], dtype=torch.int32)
    ref = causal_attention(q, k, v, window=window, scale=0.3, kernel="sdpa", cu_seqlens=cu)
    out = causal_attention(q, k, v, window=window, scale=0.3, kernel="flash_attn", cu_seqlens=cu)
    assert (out - ref).abs().max().item() <= 1e-5


def _reference_attention(q, k, v, window, scale, cu_seqlens):
    """fp32 masked attention of (B, H, T, D) inputs; packed boundaries over the flattened rows. (B, Tq, Hq, D)."""
    from hybrid_hf.modeling.masking import document_ids_from_cu_seqlens

    q, k, v = q.float(), k.float(), v.float()
    b, _, t_q, _ = q.shape
    t_k = k.shape[2]
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    qi = torch.arange(t_q, device=q.device)[:, None] + (t_k - t_q)
    ki = torch.arange(t_k, device=q.device)[None]
    keep = ((ki <= qi) & (qi - ki < window)).expand(b, 1, t_q, t_k)
    if cu_seqlens is not None:
        doc = document_ids_from_cu_seqlens(cu_seqlens, b * t_k).view(b, t_k)
        keep = keep & (doc[:, None, :, None] == doc[:, None, None, :])
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=scale).transpose(1, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", ["window", "prefix", "packed"])
@pytest.mark.parametrize("kernel", ["sdpa", "flex", "triton", "flash_attn"])
def test_attention_kernels_match_reference_on_gpu(kernel, case):
    """Each dispatchable kernel, on the GPU in bf16, against an fp32 reference: outputs and gradients."""
    from hybrid_hf.modeling.attention_dispatch import flash_attn_available
    from hybrid_hf.modeling.attention_kernels import causal_attention

    if kernel == "flash_attn" and not flash_attn_available():
        pytest.skip("flash-attn (2.x or FlashAttention-4) is not installed")
    resolve_kernel(kernel, torch.device("cuda"), "sliding_attention")  # raises if it cannot run here
    gen = torch.Generator().manual_seed(0)
    b, hq, hkv, d, window = 2, 8, 4, 64, 96
    t_q, t_k = (300, 1024) if case == "prefix" else (1024, 1024)
    q = torch.randn(b, hq, t_q, d, generator=gen)
    k, v = (torch.randn(b, hkv, t_k, d, generator=gen) for _ in range(2))
    q, k, v = (t.cuda().bfloat16().requires_grad_() for t in (q, k, v))
    cu = torch.tensor([0, 300, 1024, 1500, 2048], dtype=torch.int32, device="cuda") if case == "packed" else None
    grad = torch.randn(b, t_q, hq, d, generator=gen).cuda().bfloat16()
    out = causal_attention(q, k, v, window=window, scale=d**-0.5, kernel=kernel, cu_seqlens=cu)
    ours = [out.detach(), *torch.autograd.grad(out, (q, k, v), grad)]
    ref_out = _reference_attention(q, k, v, window, d**-0.5, cu)
    ref = [ref_out.detach(), *torch.autograd.grad(ref_out, (q, k, v), grad.float())]
    for name, a, r in zip(("out", "dq", "dk", "dv"), ours, ref):
        err = (a.float() - r.float()).abs().max()
        assert err <= 2e-2 * r.abs().max(), (kernel, case, name, float(err), float(r.abs().max()))


def test_kernel_prefill_then_cached_decode_matches():
    ref, fast = _pair("SF", "flex")
    prompt = torch.randint(3, 128, (1, 9))
    kw = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(ref.generate(prompt, **kw), fast.generate(prompt, **kw))
