"""Recurrent mixers: chunked == recurrent == naive recurrence, cached decoding, packing, padding, save/load."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import tiny_config, tiny_model

from hybrid_hf import HybridConfig
from hybrid_hf.modeling import output_cache
from hybrid_hf.modeling.linear_attention_ops import (
    causal_conv1d,
    gated_delta_chunked,
    gated_delta_recurrent,
    l2_normalize,
    scalar_decay_chunked,
    scalar_decay_recurrent,
)

MIXERS = ["gated_deltanet", "mamba2", "lightning"]


def _naive_scalar(q, k, v, g):
    """Textbook form: o_t = sum_{s<=t} exp(sum_{r=s+1..t} g_r) (q_t . k_s) v_s."""
    b, t, h, _ = q.shape
    out = torch.zeros(b, t, h, v.shape[-1])
    cum = g.cumsum(1)
    for i in range(t):
        for j in range(i + 1):
            w = (cum[:, i] - cum[:, j]).exp() * (q[:, i] * k[:, j]).sum(-1)
            out[:, i] += w[..., None] * v[:, j]
    return out


def _naive_delta(q, k, v, g, beta):
    """Explicit matrices: S_t = a_t (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T."""
    b, t, h, dk = q.shape
    s = torch.zeros(b, h, dk, v.shape[-1])
    eye = torch.eye(dk)
    out = []
    for i in range(t):
        kk = k[:, i]
        transition = g[:, i, :, None, None].exp() * (eye - beta[:, i, :, None, None] * kk[..., :, None] * kk[..., None, :])
        s = transition @ s + beta[:, i, :, None, None] * kk[..., :, None] * v[:, i, :, None, :]
        out.append(torch.einsum("bhk,bhkv->bhv", q[:, i], s))
    return torch.stack(out, 1)


def _inputs(seed=0, b=2, t=45, h=3, dk=8, dv=6):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, t, h, dk, generator=g)
    k = l2_normalize(torch.randn(b, t, h, dk, generator=g))
    v = torch.randn(b, t, h, dv, generator=g)
    decay = -torch.rand(b, t, h, generator=g) * 0.5
    beta = torch.rand(b, t, h, generator=g)
    return q, k, v, decay, beta


@pytest.mark.parametrize("chunk", [8, 16, 64])
def test_scalar_decay_chunked_equals_recurrent_equals_naive(chunk):
    q, k, v, g, _ = _inputs()
    naive = _naive_scalar(q, k, v, g)
    rec, s_rec = scalar_decay_recurrent(q, k, v, g)
    chk, s_chk = scalar_decay_chunked(q, k, v, g, chunk_size=chunk)
    assert (rec - naive).abs().max() <= 1e-4
    assert (chk - naive).abs().max() <= 1e-4
    assert (s_rec - s_chk).abs().max() <= 1e-4


@pytest.mark.parametrize("chunk", [8, 16, 64])
def test_gated_delta_chunked_equals_recurrent_equals_naive(chunk):
    q, k, v, g, beta = _inputs(1)
    naive = _naive_delta(q, k, v, g, beta)
    rec, s_rec = gated_delta_recurrent(q, k, v, g, beta)
    chk, s_chk = gated_delta_chunked(q, k, v, g, beta, chunk_size=chunk)
    assert (rec - naive).abs().max() <= 1e-4
    assert (chk - naive).abs().max() <= 1e-4
    assert (s_rec - s_chk).abs().max() <= 1e-4


def test_chunked_forms_continue_from_a_state():
    q, k, v, g, beta = _inputs(2)
    full, s_full = gated_delta_chunked(q, k, v, g, beta, chunk_size=16)
    a, s_a = gated_delta_chunked(q[:, :20], k[:, :20], v[:, :20], g[:, :20], beta[:, :20], chunk_size=16)
    b, s_b = gated_delta_recurrent(q[:, 20:], k[:, 20:], v[:, 20:], g[:, 20:], beta[:, 20:], s_a)
    assert (torch.cat([a, b], 1) - full).abs().max() <= 1e-4 and (s_b - s_full).abs().max() <= 1e-4
    full, s_full = scalar_decay_chunked(q, k, v, g, chunk_size=16)
    a, s_a = scalar_decay_chunked(q[:, :20], k[:, :20], v[:, :20], g[:, :20], chunk_size=16)
    b, s_b = scalar_decay_chunked(q[:, 20:], k[:, 20:], v[:, 20:], g[:, 20:], s_a, chunk_size=8)
    assert (torch.cat([a, b], 1) - full).abs().max() <= 1e-4 and (s_b - s_full).abs().max() <= 1e-4


def test_causal_conv_with_left_context_equals_full():
    x = torch.randn(2, 5, 20)
    w = torch.randn(5, 4)
    full = causal_conv1d(x, w)
    assert torch.allclose(torch.cat([causal_conv1d(x[..., :12], w), causal_conv1d(x[..., 12:], w, x[..., 9:12])], -1),
                          full, atol=1e-6)


def _linear_model(pattern: str, mixer: str, **kw):
    kw.setdefault("num_hidden_layers", len(pattern) if len(pattern) > 2 else 4)
    return tiny_model(pattern, linear_attention_type=mixer, linear_num_heads=2, linear_head_dim=8,
                      linear_chunk_size=8, **kw)


@pytest.mark.parametrize("mixer", MIXERS)
@pytest.mark.parametrize("pattern", ["LF", "LLLF", "SLF"])
def test_cached_generate_matches_no_cache_forward(pattern, mixer):
    model = _linear_model(pattern, mixer)
    prompt = torch.randint(3, 128, (2, 11), generator=torch.Generator().manual_seed(4))
    out = model.generate(prompt, max_new_tokens=12, min_new_tokens=12, do_sample=False, output_logits=True,
                         return_dict_in_generate=True, pad_token_id=0)
    with torch.no_grad():
        full = model(out.sequences, use_cache=False).logits
    steps = torch.stack(out.logits, 1)
    assert (steps - full[:, 10:-1]).abs().max().item() <= 1e-4
    assert torch.equal(out.sequences[:, 11:], full[:, 10:-1].argmax(-1))


@pytest.mark.parametrize("mixer", MIXERS)
def test_chunked_prefill_and_state_is_constant_size(mixer):
    model = _linear_model("LF", mixer)
    ids = torch.randint(3, 128, (1, 40))
    with torch.no_grad():
        ref = model(ids, use_cache=False).logits
        cache, pieces, sizes = None, [], []
        for a, b in [(0, 13), (13, 14), (14, 33), (33, 40)]:
            out = model(ids[:, a:b], past_key_values=cache, use_cache=True)
            cache = output_cache(out)
            pieces.append(out.logits)
            layer = cache.layers[0]
            conv = layer.conv_states[0]  # Lightning attention has no short convolution
            sizes.append((tuple(layer.recurrent_states[0].shape), None if conv is None else tuple(conv.shape)))
    assert (torch.cat(pieces, 1) - ref).abs().max().item() <= 1e-4
    assert len(set(sizes)) == 1  # O(1) recurrent state, whatever the length


@pytest.mark.parametrize("mixer", MIXERS)
def test_packed_documents_equal_documents_alone(mixer):
    model = _linear_model("LF", mixer)
    docs = [torch.randint(3, 128, (n,)) for n in (9, 14, 6)]
    packed = torch.cat(docs)[None]
    pos = torch.cat([torch.arange(len(d)) for d in docs])[None]
    with torch.no_grad():
        out = model(packed, position_ids=pos).logits[0]
        alone = torch.cat([model(d[None]).logits[0] for d in docs])
    assert (out - alone).abs().max().item() <= 1e-4


@pytest.mark.parametrize("mixer", MIXERS)
def test_packed_rows_batch_two(mixer):
    model = _linear_model("LF", mixer)
    a, b, c, d = (torch.randint(3, 128, (n,)) for n in (5, 7, 8, 4))
    ids = torch.stack([torch.cat([a, b]), torch.cat([c, d])])
    pos = torch.stack([torch.cat([torch.arange(5), torch.arange(7)]), torch.cat([torch.arange(8), torch.arange(4)])])
    with torch.no_grad():
        out = model(ids, position_ids=pos).logits
        ref = [torch.cat([model(x[None]).logits[0], model(y[None]).logits[0]]) for x, y in ((a, b), (c, d))]
    assert (out - torch.stack(ref)).abs().max().item() <= 1e-4


@pytest.mark.parametrize("mixer", MIXERS)
def test_left_padded_batch_equals_rows_alone(mixer):
    model = _linear_model("LF", mixer)
    rows = [torch.randint(3, 128, (n,)) for n in (9, 5)]
    ids = torch.zeros(2, 9, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, 9 - len(r):], mask[i, 9 - len(r):] = r, 1
    kw = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    batched = model.generate(ids, attention_mask=mask, **kw)
    for i, r in enumerate(rows):
        assert torch.equal(batched[i, 9:], model.generate(r[None], **kw)[0, len(r):])


@pytest.mark.parametrize("mixer", MIXERS)
def test_gradients_flow_and_training_step(mixer):
    model = _linear_model("LF", mixer).train()
    ids = torch.randint(3, 128, (2, 20))
    loss = model(ids, labels=ids).loss
    loss.backward()
    mixer_params = [p for n, p in model.named_parameters() if "linear_attn" in n]
    assert mixer_params and all(p.grad is not None and torch.isfinite(p.grad).all() for p in mixer_params)


@pytest.mark.parametrize("mixer", MIXERS)
def test_save_load_identical(tmp_path, mixer):
    from transformers import AutoModelForCausalLM

    model = _linear_model("LF", mixer)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "linear_attention.py").exists() and (tmp_path / "linear_attention_ops.py").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(3, 128, (1, 17))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_invalid_linear_configs():
    with pytest.raises(ValueError, match="`linear_attention_type`"):
        tiny_config("LF", linear_attention_type="rwkv7")
    with pytest.raises(ValueError, match="`linear_num_heads`"):
        tiny_config("LF", linear_attention_type="gated_deltanet", linear_num_heads=0)
    with pytest.raises(ValueError, match="`linear_expand_v`"):
        tiny_config("LF", linear_attention_type="lightning", linear_expand_v=2.0)
    with pytest.raises(ValueError, match="`position_encodings"):
        tiny_config("LF", linear_attention_type="mamba2", position_encodings=["rope"] * 4)
    cfg = tiny_config("LF", linear_attention_type="mamba2")
    assert cfg.position_encodings[0] == "nope"  # recurrent layers take no positions


def test_mixer_presets_are_one_to_one_with_full_attention():
    for name, kind in (("gdn", "gated_deltanet"), ("mamba2", "mamba2"), ("lightning", "lightning")):
        cfg = HybridConfig.from_preset(name, size="s1")
        assert cfg.linear_attention_type == kind
        assert cfg.layer_types == ["linear_attention", "full_attention"] * 3


def test_remote_code_load_with_recurrent_layers(tmp_path):
    import os
    import subprocess
    import sys

    from test_save_load import REMOTE_LOAD

    model = _linear_model("SLF", "gated_deltanet", num_hidden_layers=3)
    model.save_pretrained(tmp_path / "ckpt")
    ids = torch.randint(3, 128, (1, 9))
    torch.save(ids, tmp_path / "ids.pt")
    (tmp_path / "load.py").write_text(REMOTE_LOAD)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    proc = subprocess.run([sys.executable, str(tmp_path / "load.py"), str(tmp_path / "ckpt"), str(tmp_path / "ids.pt"),
                           str(tmp_path / "out.pt")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    remote = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        assert torch.equal(remote["logits"], model(ids).logits)


@pytest.mark.parametrize("mixer", MIXERS)
def test_generate_fast_with_recurrent_layers(mixer):
    from hybrid_hf.generation import generate_fast

    model = _linear_model("SLF", mixer)
    prompt = torch.randint(3, 128, (2, 13))
    seq, logits = generate_fast(model, prompt, 10, prefill_chunk_size=5, return_logits=True)
    with torch.no_grad():
        full = model(seq, use_cache=False).logits
    assert (logits - full[:, 12:-1]).abs().max().item() <= 1e-4


def test_kernel_dispatch_guard_and_cpu_path():
    """fla #640's broken triton range is recognised; CPU tensors always take the reference (no fla, no warning)."""
    from hybrid_hf.modeling import linear_attention_dispatch as kernels

    assert kernels.triton_has_hopper_bwd_bug("3.6.0") and kernels.triton_has_hopper_bwd_bug("3.4.0+git1234")
    assert not kernels.triton_has_hopper_bwd_bug("3.7.1") and not kernels.triton_has_hopper_bwd_bug("3.3.1")
    q = torch.randn(1, 8, 2, 4, requires_grad=True)
    assert not kernels.use_fla(q, "gated_delta")
    out, state = kernels.scalar_decay_attention(q, q, q, -torch.rand(1, 8, 2))
    assert out.shape == (1, 8, 2, 4) and state.shape == (1, 2, 4, 4)


@pytest.mark.parametrize("capability, triton, tilelang, verified, safe_gdn, safe_scalar", [
    ((9, 0), "3.6.0", True, True, True, False),  # Hopper, #640's triton: GDN via fla's TileLang backend, verified
    ((9, 0), "3.6.0", True, False, False, False),  # TileLang installed but the check against the reference failed
    ((9, 0), "3.6.0", False, True, False, False),  # no tilelang: the reference trains
    ((9, 0), "3.7.1", False, False, True, True),  # fixed triton
    ((8, 0), "3.6.0", False, False, True, True),  # not Hopper
    ((9, 0), None, False, False, False, False),  # no triton at all
])
def test_fla_backward_guard_decision(monkeypatch, capability, triton, tilelang, verified, safe_gdn, safe_scalar):
    from hybrid_hf.modeling import linear_attention_dispatch as kernels

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    monkeypatch.setattr(kernels, "triton_version", lambda: triton)
    monkeypatch.setattr(kernels, "fla_tilelang_backward_available", lambda: tilelang)
    monkeypatch.setattr(kernels, "gated_delta_backward_verified", lambda: verified)
    kernels.fla_backward_is_safe.cache_clear()
    try:
        assert kernels.fla_backward_is_safe("gated_delta") is safe_gdn
        assert kernels.fla_backward_is_safe("scalar") is safe_scalar
    finally:
        kernels.fla_backward_is_safe.cache_clear()


def test_tilelang_backend_and_verification_are_false_without_a_gpu_stack():
    from hybrid_hf.modeling import linear_attention_dispatch as kernels

    if not torch.cuda.is_available():
        assert kernels.gated_delta_backward_verified() is False  # no CUDA: the probe cannot run, so it says no
    assert isinstance(kernels.fla_tilelang_backward_available(), bool)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_fla_gated_delta_backward_matches_reference_where_it_is_used():
    """On the GPU: wherever the guard lets fla train GDN, its gradients agree with the reference (the same check
    ``gated_delta_backward_verified`` runs, here reported as a test)."""
    from hybrid_hf.modeling import linear_attention_dispatch as kernels

    if not (kernels.fla_available() and kernels.fla_backward_is_safe("gated_delta")):
        pytest.skip("fla's GDN backward is not used on this machine")
    kernels.gated_delta_backward_verified.cache_clear()
    assert kernels.gated_delta_backward_verified()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-fla message; on a GPU fla may be installed")
def test_cuda_without_fla_says_once_that_the_reference_runs():
    from types import SimpleNamespace

    from hybrid_hf.modeling import linear_attention_dispatch as kernels

    cuda_like = SimpleNamespace(is_cuda=True, requires_grad=True)  # fla_available() is False without a GPU
    with pytest.warns(UserWarning, match="flash-linear-attention is not installed.*hybrid_hf\\[cuda\\]"):
        assert not kernels.use_fla(cuda_like, "test-mixer")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not kernels.use_fla(cuda_like, "test-mixer")  # once per mixer kind


@pytest.mark.parametrize("mixer", MIXERS)
def test_kernel_choice_is_made_eagerly_under_torch_compile(monkeypatch, mixer):
    """The fla-or-reference decision runs as plain Python inside a compiled forward (traced by dynamo, its memoised
    import checks failed inside the trace and compiled GDN training silently ran the reference despite fla); the
    reference maths stays inside the compiled graph."""
    from hybrid_hf.modeling import linear_attention_dispatch

    seen = []
    real = linear_attention_dispatch.use_fla

    def recording_use_fla(x, kind):
        seen.append(torch.compiler.is_compiling())
        return real(x, kind)

    monkeypatch.setattr(linear_attention_dispatch, "use_fla", recording_use_fla)
    name = "gated_delta_chunked" if mixer == "gated_deltanet" else "scalar_decay_chunked"
    reference, traced = getattr(linear_attention_dispatch, name), []

    def recording_reference(*args):
        traced.append(torch.compiler.is_compiling())
        return reference(*args)

    monkeypatch.setattr(linear_attention_dispatch, name, recording_reference)
    model = tiny_model("LF", linear_attention_type=mixer)
    ids = torch.randint(3, 128, (2, 12))
    eager = model(ids).logits
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager", dynamic=False)
    torch.testing.assert_close(compiled(ids).logits, eager)
    assert seen and not any(seen)  # called in both runs, never while tracing
    assert len(seen) == 2 * model.config.layer_types.count("linear_attention")
    assert traced[0] is False and any(traced[1:])  # ...while the PyTorch reference itself is still compiled
