"""generate_fast and the static cache: equal to a full forward, buffers reused, decode attention (CPU)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config, tiny_model


@pytest.mark.parametrize("pattern", ["F", "SF", "SSSF"])
@pytest.mark.parametrize("chunk", [5, 64])
def test_generate_fast_static_cache_matches_full_forward(pattern, chunk):
    from hybrid_hf.generation import generate_fast

    model = tiny_model(pattern, position_encodings={"full_attention": "nope", "sliding_attention": "rope"})
    prompt = torch.randint(3, 128, (2, 13))
    seq, logits = generate_fast(model, prompt, 12, prefill_chunk_size=chunk, return_logits=True)
    with torch.no_grad():
        full = model(seq, use_cache=False).logits
    assert (logits - full[:, 12:-1]).abs().max().item() <= 1e-4
    assert torch.equal(seq[:, 13:], full[:, 12:-1].argmax(-1))
    # and the same tokens as transformers' generate with the dynamic cache
    ref = model.generate(prompt, max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0,
                         cache_implementation="dynamic")
    assert torch.equal(seq, ref)


def test_generate_fast_compiled_decode_layers_match_eager():
    from hybrid_hf.generation import generate_fast

    model = tiny_model("SF")
    prompt = torch.randint(3, 128, (2, 13))
    seq, logits = generate_fast(model, prompt, 6, return_logits=True)
    seq_c, logits_c = generate_fast(model, prompt, 6, return_logits=True, compile=True)
    assert torch.equal(seq, seq_c)
    assert (logits - logits_c).abs().max().item() <= 1e-5
    assert all(not hasattr(layer, "_orig_mod") for layer in model.model.layers)  # the model itself stays eager


def test_generate_fast_reuses_buffers_across_calls_and_tracks_weight_changes():
    from hybrid_hf.generation import decode_cache, generate_fast, release_decode_buffers

    model = tiny_model("SF", sliding_window=4)
    first = generate_fast(model, torch.randint(3, 128, (2, 13)), 6)
    cache = decode_cache(model)
    prompt = torch.randint(3, 128, (2, 9))  # shorter: stale keys of the first call sit beyond it in the buffers
    seq, logits = generate_fast(model, prompt, 6, return_logits=True)
    assert decode_cache(model) is cache  # same buffers, restarted
    with torch.no_grad():
        full = model(seq, use_cache=False).logits
    assert (logits - full[:, 8:-1]).abs().max().item() <= 1e-4
    assert not torch.equal(first[:, :9], seq[:, :9])
    # a weight update (e.g. a training step) rebuilds the fused decode weights
    with torch.no_grad():
        model.model.layers[1].self_attn.k_proj.weight.mul_(3.0)
        model.model.layers[0].mlp.up_proj.weight.mul_(-1.0)
    seq, logits = generate_fast(model, prompt, 6, return_logits=True)
    with torch.no_grad():
        full = model(seq, use_cache=False).logits
    assert (logits - full[:, 8:-1]).abs().max().item() <= 1e-4
    release_decode_buffers(model)
    assert decode_cache(model) is None


def test_static_cache_refuses_prompts_beyond_max_length():
    from hybrid_hf.modeling.static_cache import HybridStaticCache

    model = tiny_model("SF")
    cache = HybridStaticCache(model.config, batch_size=1, max_length=10, device="cpu", dtype=torch.float32)
    with torch.no_grad(), pytest.raises(ValueError, match="12 tokens exceed max_length=10"):
        model(torch.randint(3, 128, (1, 12)), past_key_values=cache, use_cache=True)


def test_static_cache_sliding_layers_hold_exactly_the_window():
    from hybrid_hf.modeling.static_cache import HybridStaticCache

    cfg = tiny_config("SF", sliding_window=4)
    cache = HybridStaticCache(cfg, batch_size=1, max_length=1000, device="cpu", dtype=torch.float32)
    sizes = cache.kv_bytes()
    per_token = 2 * cfg.num_key_value_heads * cfg.head_dim * 4  # k+v, fp32
    assert sizes["sliding_attention"] == 2 * 4 * per_token  # two sliding layers, W tokens each
    assert sizes["full_attention"] == 2 * 1024 * per_token  # max_length rounded up to whole decode splits


@pytest.mark.parametrize("split", [1024, 64])
def test_decode_attention_matches_sdpa_with_gqa_and_split_k(split):
    from hybrid_hf.modeling.static_cache import decode_attention

    torch.manual_seed(0)
    q = torch.randn(3, 8, 1, 16)
    keys, values = torch.randn(3, 2, 512, 16), torch.randn(3, 2, 512, 16)
    valid = torch.arange(512) <= 300
    ref = torch.nn.functional.scaled_dot_product_attention(
        q, keys[:, :, :301].repeat_interleave(4, 1), values[:, :, :301].repeat_interleave(4, 1), scale=0.3
    )
    out = decode_attention(q, keys, values, valid, 0.3, split_size=split)
    assert (out - ref).abs().max().item() <= 1e-5


def test_generate_fast_rejects_bad_input():
    from hybrid_hf.generation import generate_fast

    model = tiny_model("SF")
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_fast(model, torch.ones(1, 3, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="cuda_graph"):
        generate_fast(model, torch.ones(1, 3, dtype=torch.long), 2, cuda_graph=True)
