"""Model equivalences: cached decoding, attention backends, padding, positions, windows, gradients."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config, tiny_model

from hybrid_hf import HybridForCausalLM, HybridForSequenceClassification
from hybrid_hf.modeling import output_cache

W = 4  # tiny_config's sliding window


def _generate_with_logits(model, input_ids, n_new, **kwargs):
    return model.generate(
        input_ids,
        max_new_tokens=n_new,
        min_new_tokens=n_new,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=0,
        **kwargs,
    )


@pytest.mark.parametrize("pattern", ["F", "S", "SF", "SSSF"])
@pytest.mark.parametrize("encoding", ["rope", "nope"])
def test_cached_generate_matches_no_cache_forward(pattern, encoding):
    model = tiny_model(pattern, position_encodings=encoding)
    prompt = torch.randint(3, 128, (2, 7), generator=torch.Generator().manual_seed(1))
    out = _generate_with_logits(model, prompt, 3 * W)
    seq = out.sequences
    assert seq.shape[1] == 7 + 3 * W
    with torch.no_grad():
        full = model(seq, use_cache=False).logits
    step_logits = torch.stack(out.logits, dim=1)  # (B, new, V)
    ref = full[:, 6:-1]
    assert (step_logits - ref).abs().max().item() <= 1e-4
    assert torch.equal(seq[:, 7:], ref.argmax(-1))


@pytest.mark.parametrize("pattern", ["SF", "SSSF"])
def test_sliding_cache_holds_window_and_decodes_far_beyond(pattern):
    model = tiny_model(pattern)
    prompt = torch.randint(3, 128, (1, 5))
    out = model.generate(prompt, max_new_tokens=10 * W, min_new_tokens=10 * W, do_sample=False,
                         return_dict_in_generate=True, pad_token_id=0)
    cache = output_cache(out)
    total = out.sequences.shape[1]
    for i, t in enumerate(model.config.layer_types):
        keys = cache.layers[i].keys
        if t == "sliding_attention":
            assert keys.shape[-2] <= W  # only the window is kept (transformers keeps W-1)
        else:
            assert keys.shape[-2] == total - 1
    assert cache.get_seq_length() == total - 1


def test_chunked_prefill_matches_full_forward():
    model = tiny_model("SF")
    ids = torch.randint(3, 128, (2, 23))
    with torch.no_grad():
        ref = model(ids, use_cache=False).logits
        cache = None
        pieces = []
        for a, b in [(0, 9), (9, 10), (10, 17), (17, 23)]:
            out = model(ids[:, a:b], past_key_values=cache, use_cache=True)
            cache = output_cache(out)
            pieces.append(out.logits)
    assert (torch.cat(pieces, 1) - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("pattern", ["F", "SF", "S"])
def test_attention_backends_agree(pattern):
    torch.manual_seed(0)
    cfg = tiny_config(pattern)
    ids = torch.randint(3, 128, (2, 19))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding exercises the masked path too
    outs = {}
    for impl in ("eager", "sdpa", "flex_attention"):
        torch.manual_seed(0)
        model = HybridForCausalLM._from_config(cfg, attn_implementation=impl).eval()
        with torch.no_grad():
            outs[impl] = model(ids, attention_mask=mask).logits
    valid = mask.bool()
    for impl in ("sdpa", "flex_attention"):
        assert (outs[impl] - outs["eager"])[valid].abs().max().item() <= 1e-5, impl


@pytest.mark.parametrize("pattern", ["F", "SF"])
def test_left_padded_batch_equals_rows_alone(pattern):
    model = tiny_model(pattern)
    g = torch.Generator().manual_seed(3)
    rows = [torch.randint(3, 128, (n,), generator=g) for n in (9, 5, 7)]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    batched = _generate_with_logits(model, ids, 2 * W, attention_mask=mask)
    for i, r in enumerate(rows):
        alone = _generate_with_logits(model, r[None], 2 * W)
        assert torch.equal(batched.sequences[i, width:], alone.sequences[0, len(r):])
        diff = max((a[i] - b[0]).abs().max().item() for a, b in zip(batched.logits, alone.logits))
        assert diff <= 1e-4


def test_beam_search_cached_equals_uncached():
    model = tiny_model("SF")
    prompt = torch.randint(3, 128, (2, 6))
    kw = dict(max_new_tokens=3 * W, min_new_tokens=3 * W, num_beams=3, do_sample=False, pad_token_id=0)
    with_cache = model.generate(prompt, use_cache=True, **kw)
    without = model.generate(prompt, use_cache=False, **kw)
    assert torch.equal(with_cache, without)


def _layer_output(model, ids, position_ids):
    captured = {}
    attn = model.model.layers[0].self_attn

    def hook(module, args, output):
        captured["out"] = output[0]

    handle = attn.register_forward_hook(hook)
    with torch.no_grad():
        # An explicit mask keeps transformers from reading non-contiguous position ids as packed documents.
        model(ids, attention_mask=torch.ones_like(ids), position_ids=position_ids, use_cache=False)
    handle.remove()
    return captured["out"]


def test_nope_layer_ignores_positions_rope_layer_does_not():
    """NoPE output is invariant to any change of position ids (shift or stretch). RoPE is relative, so a uniform
    shift leaves it unchanged up to float error, but stretching the positions changes it."""
    ids = torch.randint(3, 128, (1, 12))
    pos = torch.arange(12)[None]
    nope = tiny_model("F", position_encodings="nope")
    base = _layer_output(nope, ids, pos)
    assert torch.allclose(base, _layer_output(nope, ids, pos + 37), atol=1e-6)
    assert torch.allclose(base, _layer_output(nope, ids, pos * 3), atol=1e-6)
    rope = tiny_model("F", position_encodings="rope")
    base = _layer_output(rope, ids, pos)
    shift_diff = (base - _layer_output(rope, ids, pos + 37)).abs().max().item()
    stretch_diff = (base - _layer_output(rope, ids, pos * 3)).abs().max().item()
    assert shift_diff <= 1e-6
    assert stretch_diff > 1e-4 and stretch_diff > 100 * shift_diff


def test_swa_nope_mixes_encodings_per_layer():
    model = tiny_model("SF", position_encodings={"full_attention": "nope", "sliding_attention": "rope"})
    uses = [layer.self_attn.use_rope for layer in model.model.layers]
    assert uses == [True, False, True, False]
    assert model.model.rotary_emb.layer_types == ["sliding_attention"]


@pytest.mark.parametrize("impl", ["eager", "sdpa", "flex_attention"])
def test_window_is_w_keys_including_self(impl):
    cfg = tiny_config("S", num_hidden_layers=1)
    torch.manual_seed(0)
    model = HybridForCausalLM._from_config(cfg, attn_implementation=impl).eval()
    ids = torch.randint(3, 128, (1, 12))
    changed = ids.clone()
    changed[0, 0] = (ids[0, 0] + 1) % 128
    with torch.no_grad():
        diff = (model(ids).logits - model(changed).logits).abs().amax(-1)[0]
    affected = (diff > 1e-6).nonzero().flatten().tolist()
    assert affected == list(range(W))


def test_output_attentions_shapes_and_window_zeros():
    model = tiny_model("SF")  # sdpa by default; weights come from the eager path
    ids = torch.randint(3, 128, (2, 10))
    with torch.no_grad():
        out = model(ids, output_attentions=True, output_hidden_states=True)
        plain = model(ids).logits
    assert torch.allclose(out.logits, plain, atol=1e-5)
    assert len(out.attentions) == 4 and len(out.hidden_states) == 5
    for t, a in zip(model.config.layer_types, out.attentions):
        assert a.shape == (2, 4, 10, 10)
        assert torch.allclose(a.sum(-1), torch.ones(2, 4, 10), atol=1e-5)
        assert torch.all(a.triu(1) == 0)
        if t == "sliding_attention":
            assert torch.all(a.tril(-W) == 0)
        else:
            assert a[0, :, -1, 0].abs().sum() > 0


def test_receptive_field_cap_on_full_layers_equals_sliding_layers():
    full = tiny_model("F", eval_full_attention_window=W)
    sliding = HybridForCausalLM(tiny_config("S", sliding_window=W)).eval()
    sliding.load_state_dict(full.state_dict())
    ids = torch.randint(3, 128, (2, 16))
    with torch.no_grad():
        assert torch.allclose(full(ids).logits, sliding(ids).logits, atol=1e-5)
        uncapped = tiny_model("F")
        assert not torch.allclose(full(ids).logits, uncapped(ids).logits, atol=1e-3)


def test_receptive_field_cap_with_sinks_keeps_first_tokens_visible():
    model = tiny_model("F", num_hidden_layers=1, eval_full_attention_window=3, eval_attention_sink_size=1)
    ids = torch.randint(3, 128, (1, 12))
    with torch.no_grad():
        attn = model(ids, output_attentions=True).attentions[0][0, 0]
    visible = (attn > 0).int()
    for q in range(12):
        expect = {k for k in range(q + 1) if k > q - 3 or k < 1}
        assert set(visible[q].nonzero().flatten().tolist()) == expect


def _cap_keys(n, window, sinks):
    """Keys (q, k) a capped layer must see: causal, the last ``window`` keys or one of the first ``sinks``."""
    q, k = torch.arange(n)[:, None], torch.arange(n)[None, :]
    return (k <= q) & ((k > q - window) | (k < sinks))


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_capped_sliding_layers_with_sinks_equal_an_explicit_mask(attn_implementation):
    # 14 tokens > W + sinks: the sinks lie outside the trained window of the later queries and must stay visible
    n, cap, sinks = 14, 3, 2
    kw = dict(num_hidden_layers=2, attn_implementation=attn_implementation)
    capped = tiny_model("S", eval_efficient_window=cap, eval_attention_sink_size=sinks, **kw)
    plain = tiny_model("S", **kw)
    ids = torch.randint(3, 128, (2, n), generator=torch.Generator().manual_seed(3))
    allowed = _cap_keys(n, cap, sinks)
    explicit = torch.zeros(1, 1, n, n).masked_fill(~allowed, torch.finfo(torch.float32).min)
    narrowed = explicit.masked_fill(~(allowed & (torch.arange(n)[None, :] > torch.arange(n)[:, None] - W)),
                                    torch.finfo(torch.float32).min)  # what the buggy cap computed
    with torch.no_grad():
        out = capped(ids, use_cache=False).logits
        ref = plain(ids, attention_mask={"sliding_attention": explicit}, use_cache=False).logits
        old = plain(ids, attention_mask={"sliding_attention": narrowed}, use_cache=False).logits
    assert (out - ref).abs().max().item() <= 1e-5
    assert (out[:, W + sinks :] - old[:, W + sinks :]).abs().max().item() > 1e-3


@pytest.mark.parametrize("pattern, field", [("F", "eval_full_attention_window"), ("S", "eval_efficient_window")])
@pytest.mark.parametrize("cap", [3, 6])
def test_capped_layer_attention_weights_cover_exactly_cap_and_sinks(pattern, field, cap):
    n, sinks = 12, 2
    model = tiny_model(pattern, num_hidden_layers=1, **{field: cap, "eval_attention_sink_size": sinks})
    ids = torch.randint(3, 128, (1, n))
    with torch.no_grad():
        attn = model(ids, output_attentions=True).attentions[0][0]  # (heads, q, k)
    local = min(cap, W) if pattern == "S" else cap  # a cap never widens a sliding layer beyond its window
    allowed = _cap_keys(n, local, sinks).expand_as(attn)
    assert torch.all(attn[allowed] > 0) and torch.all(attn[~allowed] == 0)
    assert torch.all(attn[:, -1, :sinks] > 0)  # the sinks, W + sinks tokens back, stay visible


@pytest.mark.parametrize("cap", [W, 2 * W])
def test_sliding_cap_at_least_the_window_without_sinks_changes_nothing(cap):
    capped = tiny_model("SF", eval_efficient_window=cap)
    plain = tiny_model("SF")
    ids = torch.randint(3, 128, (2, 16))
    with torch.no_grad():
        assert torch.equal(capped(ids, use_cache=False).logits, plain(ids, use_cache=False).logits)


@pytest.mark.parametrize("pattern, field", [("F", "eval_full_attention_window"), ("S", "eval_efficient_window")])
def test_capped_layer_sinks_restart_with_each_packed_document(pattern, field):
    model = tiny_model(pattern, num_hidden_layers=2, **{field: 2, "eval_attention_sink_size": 1})
    a, b = torch.randint(3, 128, (1, 9)), torch.randint(3, 128, (1, 11))
    pos = torch.cat([torch.arange(9), torch.arange(11)])[None]
    with torch.no_grad():
        packed = model(torch.cat([a, b], 1), position_ids=pos, use_cache=False).logits
        alone = torch.cat([model(a, use_cache=False).logits, model(b, use_cache=False).logits], 1)
    assert (packed - alone).abs().max().item() <= 1e-5


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("pattern, field", [("F", "eval_full_attention_window"), ("S", "eval_efficient_window")])
def test_capped_layer_sinks_skip_left_padding(pattern, field, attn_implementation):
    model = tiny_model(pattern, num_hidden_layers=2, attn_implementation=attn_implementation,
                       **{field: 3, "eval_attention_sink_size": 2})
    long, short = torch.randint(3, 128, (1, 14)), torch.randint(3, 128, (1, 10))
    ids = torch.cat([long, torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1)])
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    with torch.no_grad():
        batched = model(ids, attention_mask=mask, use_cache=False).logits
        alone = model(short, use_cache=False).logits
        first = model(long, use_cache=False).logits
    assert (batched[1, 4:] - alone[0]).abs().max().item() <= 1e-5
    assert (batched[0] - first[0]).abs().max().item() <= 1e-5


def test_capped_sliding_layers_decode_with_the_sliding_cache():
    model = tiny_model("SF", eval_efficient_window=3, eval_full_attention_window=6)
    prompt = torch.randint(3, 128, (2, 7), generator=torch.Generator().manual_seed(1))
    out = _generate_with_logits(model, prompt, 2 * W)
    with torch.no_grad():
        full = model(out.sequences, use_cache=False).logits
    assert (torch.stack(out.logits, dim=1) - full[:, 6:-1]).abs().max().item() <= 1e-4
    sinks = tiny_model("SF", eval_efficient_window=3, eval_attention_sink_size=1)
    with pytest.raises(ValueError, match="use_cache=False"):
        _generate_with_logits(sinks, prompt, 2)


def test_static_cache_refuses_receptive_field_caps():
    from hybrid_hf.modeling.static_cache import HybridStaticCache

    model = tiny_model("SF", eval_full_attention_window=4)
    cache = HybridStaticCache(model.config, batch_size=1, max_length=32, device="cpu", dtype=torch.float32)
    with torch.no_grad(), pytest.raises(ValueError, match="HybridStaticCache"):
        model(torch.randint(3, 128, (1, 5)), past_key_values=cache)


def test_gradient_checkpointing_gives_same_gradients():
    ids = torch.randint(3, 128, (2, 12))
    grads = []
    for ckpt in (False, True):
        model = tiny_model("SF").train()
        if ckpt:
            model.gradient_checkpointing_enable()
        loss = model(ids, labels=ids).loss
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_sequence_classification_uses_last_token():
    torch.manual_seed(0)
    cfg = tiny_config("SF", num_labels=3)
    model = HybridForSequenceClassification(cfg).eval()
    ids = torch.randint(3, 128, (2, 8))
    out = model(ids, labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3) and out.loss.ndim == 0


def test_tied_embeddings_and_untied_option():
    tied = tiny_model("SF")
    assert tied.lm_head.weight.data_ptr() == tied.model.embed_tokens.weight.data_ptr()
    untied = tiny_model("SF", tie_word_embeddings=False)
    assert untied.lm_head.weight.data_ptr() != untied.model.embed_tokens.weight.data_ptr()


def test_qk_norm_and_gqa_shapes():
    model = tiny_model("SF", use_qk_norm=True, num_key_value_heads=1)
    attn = model.model.layers[1].self_attn
    assert attn.q_norm is not None and attn.k_proj.out_features == 16
    ids = torch.randint(3, 128, (1, 9))
    out = _generate_with_logits(model, ids, 2 * W)
    with torch.no_grad():
        full = model(out.sequences).logits
    assert (torch.stack(out.logits, 1) - full[:, 8:-1]).abs().max() <= 1e-4


def test_missing_inputs_error_is_clear(model):
    with pytest.raises(ValueError, match="input_ids"):
        model()
