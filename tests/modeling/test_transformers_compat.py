"""The cache argument under both of its names: ``past_key_values`` (transformers < 5.24) and ``cache`` (5.24 on).

transformers 5.24's ``generate`` calls the model with ``cache=``; a forward that only knew ``past_key_values`` took
it as an unknown keyword, decoded every step without the prefix and produced wrong tokens without any error.
"""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from conftest import tiny_config, tiny_model

from hybrid_hf import HybridForSequenceClassification
from hybrid_hf.modeling import output_cache


@pytest.fixture
def deprecations(monkeypatch):
    """Deprecation messages about the cache names emitted while the test runs (``warnings`` and transformers'
    ``logger.warning_once``, whose once-per-process memory is bypassed here)."""
    messages: list[str] = []

    def warning_once(self, msg, *args, **kwargs):
        messages.append(str(msg) % args if args else str(msg))

    monkeypatch.setattr(logging.Logger, "warning_once", warning_once)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield messages
    messages.extend(str(w.message) for w in caught)


def _cache_messages(messages: list[str]) -> list[str]:
    return [m for m in messages if "past_key_values" in m or "cache_params" in m]


@pytest.mark.parametrize("pattern", ["SSSF", "SF"])
def test_generate_greedy_logits_match_full_forward(pattern, deprecations):
    model = tiny_model(pattern)  # window 4: the prompt alone is longer than the sliding cache
    prompt = torch.randint(3, 128, (2, 9))
    new = 12
    out = model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0,
                         return_dict_in_generate=True, output_logits=True)
    steps = torch.stack(out.logits, dim=1)
    with torch.no_grad():
        full = model(out.sequences, use_cache=False).logits
    assert (steps - full[:, prompt.shape[1] - 1 : -1]).abs().max().item() <= 1e-4
    assert torch.equal(out.sequences[:, prompt.shape[1] :], full[:, prompt.shape[1] - 1 : -1].argmax(-1))
    # generate's cache went through the forward: it holds every token but the last sampled one
    assert output_cache(out).get_seq_length() == out.sequences.shape[1] - 1
    assert _cache_messages(deprecations) == []


LINEAR = dict(linear_attention_type="gated_deltanet", linear_num_heads=2, linear_head_dim=8, linear_chunk_size=8)


@pytest.mark.parametrize("pattern", ["SSSF", "LSLF"])
@pytest.mark.parametrize("base", [False, True])
def test_forward_takes_cache_and_past_key_values_alike(pattern, base, deprecations):
    model = tiny_model(pattern, **(LINEAR if "L" in pattern else {}))
    module = model.model if base else model
    ids = torch.randint(3, 128, (2, 15))
    pieces = [(0, 7), (7, 8), (8, 15)]

    def chunked(name: str) -> tuple[torch.Tensor, int]:
        cache, outs = None, []
        with torch.no_grad():
            for a, b in pieces:
                out = module(ids[:, a:b], use_cache=True, **{name: cache})
                cache = output_cache(out)
                outs.append(out.last_hidden_state if base else out.logits)
        return torch.cat(outs, 1), cache.get_seq_length()

    with torch.no_grad():
        ref = module(ids, use_cache=False)
    ref = ref.last_hidden_state if base else ref.logits
    new, new_len = chunked("cache")
    old, old_len = chunked("past_key_values")
    assert new_len == old_len == ids.shape[1]
    assert torch.equal(new, old)
    assert (new - ref).abs().max().item() <= 1e-4
    assert _cache_messages(deprecations) == []


def test_forward_refuses_both_cache_names():
    model = tiny_model("SF")
    ids = torch.randint(3, 128, (1, 5))
    with torch.no_grad():
        cache = output_cache(model(ids, use_cache=True))
        for module in (model, model.model):
            with pytest.raises(ValueError, match="not both"):
                module(ids[:, -1:], cache=cache, past_key_values=cache)


def test_sequence_classification_passes_the_cache_through():
    torch.manual_seed(0)
    model = HybridForSequenceClassification(tiny_config("SF", num_labels=3)).eval()
    ids = torch.randint(3, 128, (1, 6))
    with torch.no_grad():
        out = model(ids, use_cache=True)
    assert output_cache(out).get_seq_length() == 6


def test_trainer_predict_leaves_the_cache_out_of_predictions(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = tiny_model("SF")
    rows = [{"input_ids": torch.randint(3, 128, (16,)), "labels": torch.randint(3, 128, (16,))} for _ in range(4)]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=2, report_to=[], use_cpu=True,
                             use_cache=True)  # the forward returns a cache, which the Trainer must skip
    predictions = Trainer(model=model, args=args).predict(rows).predictions
    assert predictions.shape == (4, 16, 128)
