"""``model.generate`` routed to ``generate_fast``: same tokens as transformers' own loop and as a no-cache argmax
loop; every call the fast path cannot serve falls back to transformers' loop (CPU, fp32)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from hybrid_hf.generation import (
    decode_cache,
    fast_path_refusal,
    generate_fast,
    release_decode_buffers,
    reset_fallback_log,
)
from hybrid_hf.modeling import fast_generation


def _no_cache_greedy(model, prompt: torch.Tensor, new: int) -> torch.Tensor:
    seq = prompt
    with torch.no_grad():
        for _ in range(new):
            nxt = model(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    return seq


@pytest.mark.parametrize("pattern, mixer", [("SF", None), ("FF", None), ("LF", "gated_deltanet"), ("LF", "mamba2")])
def test_routed_greedy_equals_stock_loop_and_no_cache_reference(pattern, mixer):
    model = tiny_model(pattern, **({"linear_attention_type": mixer} if mixer else {}))
    prompt = torch.randint(3, 128, (2, 11))
    assert fast_path_refusal(model, prompt, max_new_tokens=9, do_sample=False) is None
    routed = model.generate(prompt, max_new_tokens=9, do_sample=False)
    stock = model.generate(prompt, max_new_tokens=9, do_sample=False, cache_implementation="dynamic")
    assert routed.shape == (2, 20)
    assert torch.equal(routed, stock)
    assert torch.equal(routed, _no_cache_greedy(model, prompt, 9))
    assert torch.equal(routed, generate_fast(model, prompt, 9))
    if "L" not in pattern:  # attention-only models keep the fast path's static cache: the call went there
        assert decode_cache(model) is not None
        release_decode_buffers(model)


@pytest.mark.parametrize("options", [
    dict(do_sample=True),  # transformers' default top_k=50 applies
    dict(do_sample=True, temperature=0.7, top_k=20, top_p=0.9),
    dict(do_sample=True, top_k=0, top_p=0.6),
    dict(do_sample=True, temperature=1.3, num_return_sequences=3),
])
def test_routed_sampling_draws_the_same_tokens_as_transformers_with_the_same_seed(options):
    model = tiny_model("SF")
    prompt = torch.randint(3, 128, (2, 7))
    assert fast_path_refusal(model, prompt, max_new_tokens=12, **options) is None
    torch.manual_seed(123)
    routed = model.generate(prompt, max_new_tokens=12, **options)
    torch.manual_seed(123)
    stock = model.generate(prompt, max_new_tokens=12, cache_implementation="dynamic", **options)
    assert torch.equal(routed, stock)
    greedy = model.generate(prompt, max_new_tokens=12, do_sample=False)
    if options.get("num_return_sequences", 1) == 1:
        assert not torch.equal(routed, greedy)  # it really sampled


def test_top_k_one_sampling_is_greedy_and_bad_controls_are_refused():
    model = tiny_model("SF")
    prompt = torch.randint(3, 128, (2, 7))
    greedy = generate_fast(model, prompt, 8)
    assert torch.equal(generate_fast(model, prompt, 8, do_sample=True, top_k=1), greedy)
    assert torch.equal(generate_fast(model, prompt, 8, do_sample=True, top_p=1e-6), greedy)
    with pytest.raises(ValueError, match="top_p"):
        generate_fast(model, prompt, 8, do_sample=True, top_p=1.5)
    with pytest.raises(ValueError, match="temperature"):
        generate_fast(model, prompt, 8, do_sample=True, temperature=0.0)


def test_stop_tokens_end_generation_like_transformers():
    model = tiny_model("SF")
    prompt = torch.randint(3, 128, (2, 9))
    greedy = model.generate(prompt, max_new_tokens=10, do_sample=False)
    stops = [int(greedy[0, 11]), int(greedy[1, 13])]  # row 0 stops at new token 3, row 1 by new token 5
    kw = dict(max_new_tokens=10, do_sample=False, eos_token_id=stops, pad_token_id=0)
    routed = model.generate(prompt, **kw)
    stock = model.generate(prompt, cache_implementation="dynamic", **kw)
    assert routed.shape[1] < greedy.shape[1]  # every row finished early: the output is shorter
    assert torch.equal(routed, stock)
    # a long budget: the host checks for the end only every STOP_CHECK_EVERY steps, the output is still cut where
    # the last row stopped, and the step logits with it
    kw_long = dict(kw, max_new_tokens=3 * fast_generation.STOP_CHECK_EVERY)
    long = model.generate(prompt, **kw_long)
    assert torch.equal(long, routed) and torch.equal(long, model.generate(prompt, cache_implementation="dynamic",
                                                                          **kw_long))
    seq, logits = generate_fast(model, prompt, kw_long["max_new_tokens"], eos_token_id=stops, pad_token_id=0,
                                return_logits=True)
    assert torch.equal(seq, long) and logits.shape[1] == long.shape[1] - prompt.shape[1]
    # min_new_tokens keeps the stop tokens out for that many steps, as transformers' processor does
    kw["min_new_tokens"] = 6
    assert torch.equal(model.generate(prompt, **kw), model.generate(prompt, cache_implementation="dynamic", **kw))


@pytest.mark.parametrize("call, reason", [
    (dict(num_beams=2), "num_beams"),
    (dict(repetition_penalty=1.3), "repetition_penalty"),
    (dict(return_dict_in_generate=True, output_logits=True), "output_logits"),
    (dict(cache_implementation="dynamic"), "cache_implementation"),
    (dict(use_cache=False), "use_cache"),
    (dict(attention_mask=torch.tensor([[0, 1, 1, 1, 1, 1, 1], [1] * 7])), "padded"),
])
def test_calls_the_fast_path_cannot_serve_fall_back_with_one_log_per_reason(call, reason, monkeypatch):
    model = tiny_model("SF")
    prompt = torch.randint(3, 128, (2, 7))
    refusal = fast_path_refusal(model, prompt, max_new_tokens=5, **call)
    assert refusal is not None and reason in refusal
    messages: list[str] = []
    monkeypatch.setattr(fast_generation.logger, "info", messages.append)
    reset_fallback_log()
    first = model.generate(prompt, max_new_tokens=5, do_sample=False, **call)
    model.generate(prompt, max_new_tokens=5, do_sample=False, **call)
    assert len(messages) == 1 and refusal in messages[0]
    sequences = first.sequences if hasattr(first, "sequences") else first
    assert sequences.shape == (2, 12)


def test_assisted_decoding_knobs_without_an_assistant_keep_the_fast_path():
    """transformers 5.17's pipeline config carries num_assistant_tokens=20 on every call; with no assistant model
    or prompt lookup, such knobs change nothing, so they must not send the call to the slow loop."""
    model = tiny_model("SF")
    prompt = torch.randint(3, 128, (1, 7))
    knobs = dict(num_assistant_tokens=20, num_assistant_tokens_schedule="constant", assistant_confidence_threshold=0.3)
    assert fast_path_refusal(model, prompt, max_new_tokens=5, **knobs) is None
    # prompt lookup is assisted decoding without an assistant model: transformers' loop, with the knobs
    assert "prompt_lookup_num_tokens" in fast_path_refusal(model, prompt, max_new_tokens=5, prompt_lookup_num_tokens=3,
                                                           **knobs)


def test_receptive_field_caps_fall_back_to_the_masked_loop():
    model = tiny_model("SF", eval_full_attention_window=4)
    prompt = torch.randint(3, 128, (2, 9))
    assert "receptive-field caps" in fast_path_refusal(model, prompt, max_new_tokens=4)
    assert torch.equal(model.generate(prompt, max_new_tokens=4, do_sample=False), _no_cache_greedy(model, prompt, 4))


def test_streamer_falls_back_and_streams():
    from transformers.generation.streamers import BaseStreamer

    class Collect(BaseStreamer):
        def __init__(self) -> None:
            self.chunks: list[torch.Tensor] = []

        def put(self, value: torch.Tensor) -> None:
            self.chunks.append(value)

        def end(self) -> None:
            pass

    model = tiny_model("SF")
    prompt = torch.randint(3, 128, (1, 7))
    streamer = Collect()
    assert "streamer" in fast_path_refusal(model, prompt, streamer=streamer)
    out = model.generate(prompt, max_new_tokens=4, do_sample=False, streamer=streamer)
    assert len(streamer.chunks) == 5 and torch.equal(out, model.generate(prompt, max_new_tokens=4, do_sample=False))


def test_routed_output_is_a_normal_tensor_and_the_mode_is_kept():
    model = tiny_model("SF").train()
    prompt = torch.randint(3, 128, (2, 7))
    out = model.generate(prompt, max_new_tokens=3, do_sample=False)
    out[:, -1] = 0  # not an inference-mode tensor
    assert model.training
    # with dropout active, transformers' loop (which keeps the mode) serves the call
    dropping = tiny_model("SF", attention_dropout=0.1).train()
    assert "dropout" in fast_path_refusal(dropping, prompt, max_new_tokens=3)


def test_routed_generate_under_autocast_matches_the_stock_loop():
    model = tiny_model("SF")
    prompt = torch.randint(3, 128, (2, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        routed = model.generate(prompt, max_new_tokens=6, do_sample=False)
        stock = model.generate(prompt, max_new_tokens=6, do_sample=False, cache_implementation="dynamic")
    assert torch.equal(routed, stock)


def test_lora_adapters_are_used_on_the_fast_path():
    peft = pytest.importorskip("peft")
    model = tiny_model("SF")
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj"],
                                                      init_lora_weights=False))
    prompt = torch.randint(3, 128, (2, 7))
    routed = lora.generate(input_ids=prompt, max_new_tokens=6, do_sample=False)
    with lora.disable_adapter():
        base = lora.generate(input_ids=prompt, max_new_tokens=6, do_sample=False)
    assert torch.equal(routed, _no_cache_greedy(lora, prompt, 6))
    assert not torch.equal(routed, base)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA-graph decode path needs a GPU")
@pytest.mark.parametrize("cache_implementation", [None, "static"])
def test_routed_cuda_graph_generate_matches_stock_loop_and_full_forward(cache_implementation):
    model = tiny_model("SF").cuda()
    prompt = torch.randint(3, 128, (2, 11), device="cuda")
    kw = dict(max_new_tokens=24, do_sample=False)
    routed = model.generate(prompt, cache_implementation=cache_implementation, **kw)
    stock = model.generate(prompt, cache_implementation="dynamic", **kw)
    assert torch.equal(routed, stock)
    # the step logits of graph replays are copies (a replay overwrites the graph's output buffer)
    seq, logits = generate_fast(model, prompt, 24, compile=cache_implementation == "static", return_logits=True)
    with torch.no_grad():
        full = model(seq, use_cache=False).logits[:, 10:-1]
    assert (logits - full).abs().max().item() <= 1e-3


def test_text_generation_pipeline_takes_the_fast_path(monkeypatch):
    from transformers import pipeline

    from hybrid_hf.data import sample_documents, train_tokenizer

    tok = train_tokenizer(sample_documents(), vocab_size=300)
    model = tiny_model("SF", vocab_size=len(tok))
    calls: list[int] = []
    real = fast_generation.generate_fast

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(fast_generation, "generate_fast", counting)
    pipe = pipeline("text-generation", model=model, tokenizer=tok)
    fast = pipe("The keeper counted", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert calls == [1]
    stock = pipe("The keeper counted", max_new_tokens=8, do_sample=False, cache_implementation="dynamic")
    assert fast == stock[0]["generated_text"] and calls == [1]
