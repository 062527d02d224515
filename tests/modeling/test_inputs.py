"""Bad tensors get a ValueError naming the argument, its shape and the expected one; all-ignored labels give 0."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import tiny_model
from transformers import DynamicCache

V = 128  # tiny_config's vocabulary

ids8 = torch.randint(3, V, (1, 8))
BAD = [
    ("id >= vocab", {"input_ids": torch.tensor([[5, V]])}, r"`input_ids` contains the id 128.*vocab_size=128"),
    ("negative id", {"input_ids": torch.tensor([[-1, 5]])}, r"`input_ids` contains the id -1"),
    ("empty sequence", {"input_ids": torch.zeros(1, 0, dtype=torch.long)}, r"`input_ids` has shape \(1, 0\)"),
    ("empty batch", {"input_ids": torch.zeros(0, 4, dtype=torch.long)}, r"`input_ids` has shape \(0, 4\)"),
    ("1-D input_ids", {"input_ids": ids8[0]}, r"`input_ids` has shape \(8,\); expected \(batch_size"),
    ("float input_ids", {"input_ids": ids8.float()}, r"`input_ids` has dtype torch.float32"),
    ("3-D inputs_embeds width", {"inputs_embeds": torch.randn(1, 8, 32)}, r"`inputs_embeds` has shape \(1, 8, 32\)"),
    ("both ids and embeds", {"input_ids": ids8, "inputs_embeds": torch.randn(1, 8, 64)}, r"exactly one"),
    ("short mask", {"input_ids": ids8, "attention_mask": torch.ones(1, 5)},
     r"`attention_mask` has shape \(1, 5\); expected \(1, 8\)"),
    ("mask of batch 2", {"input_ids": ids8, "attention_mask": torch.ones(2, 8)},
     r"`attention_mask` has shape \(2, 8\); expected \(1, 8\)"),
    ("1-D mask", {"input_ids": ids8, "attention_mask": torch.ones(8)}, r"`attention_mask` has shape \(8,\)"),
    ("4-D mask of batch 3", {"input_ids": torch.randint(3, V, (2, 8)), "attention_mask": torch.ones(3, 1, 8, 8)},
     r"`attention_mask` has shape \(3, 1, 8, 8\)"),
    ("position_ids too short", {"input_ids": ids8, "position_ids": torch.arange(5)[None]},
     r"`position_ids` has shape \(1, 5\); expected \(1, 8\)"),
    ("1-D position_ids", {"input_ids": ids8, "position_ids": torch.arange(8)}, r"`position_ids` has shape \(8,\)"),
    ("position_ids of batch 3", {"input_ids": torch.randint(3, V, (2, 8)), "position_ids": torch.arange(8).expand(3, 8)},
     r"`position_ids` has shape \(3, 8\); expected \(2, 8\) or \(1, 8\)"),
]


@pytest.mark.parametrize("pattern", ["SF", "LF"])
@pytest.mark.parametrize("case, inputs, message", BAD, ids=[c[0] for c in BAD])
def test_bad_tensor_raises_value_error_naming_the_argument(pattern, case, inputs, message):
    model = tiny_model(pattern, linear_attention_type="gated_deltanet" if "L" in pattern else None)
    with pytest.raises(ValueError, match=message):
        model(**inputs)


def test_mask_must_cover_the_cached_prefix_too():
    model = tiny_model("SF")
    cache = DynamicCache(config=model.config)
    model(ids8, attention_mask=torch.ones(1, 8), cache=cache, use_cache=True)
    nxt = torch.randint(3, V, (1, 1))
    model(nxt, attention_mask=torch.ones(1, 9), cache=cache, use_cache=True)  # cached 8 + 1 new
    with pytest.raises(ValueError, match=r"`attention_mask` has shape \(1, 1\); expected \(1, 10\).*9 \+ 1"):
        model(nxt, attention_mask=torch.ones(1, 1), cache=cache, use_cache=True)


def test_positions_beyond_max_position_embeddings_run_and_warn_once(caplog):
    model = tiny_model("SF", max_position_embeddings=16)
    from transformers.utils import logging as hf_logging

    logging.Logger.warning_once.cache_clear()  # transformers' once-per-process cache: earlier tests may have warned
    hf_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            out = model(torch.randint(3, V, (1, 20))).logits
            model(torch.randint(3, V, (1, 24)))
    finally:
        hf_logging.disable_propagation()
    assert torch.isfinite(out).all()
    warnings = [r for r in caplog.records if "max_position_embeddings=16" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("num_items", [None, 0])
def test_all_ignored_labels_give_zero_loss_with_zero_gradients(fused, num_items):
    model = tiny_model("SF", fused_cross_entropy=fused).train()
    extra = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    loss = model(ids8, labels=torch.full_like(ids8, -100), **extra).loss
    assert loss.item() == 0.0
    loss.backward()
    grad = model.model.embed_tokens.weight.grad
    assert grad is not None and torch.count_nonzero(grad) == 0


@pytest.mark.parametrize("fused", [False, True])
def test_loss_equals_transformers_causal_lm_loss(fused):
    from transformers.loss.loss_utils import ForCausalLMLoss

    model = tiny_model("SF", fused_cross_entropy=fused)
    labels = ids8.clone()
    labels[0, :3] = -100
    with torch.no_grad():
        loss = model(ids8, labels=labels).loss
        reference = ForCausalLMLoss(model(ids8).logits, labels, V)
    torch.testing.assert_close(loss, reference)


@pytest.mark.parametrize("pattern", ["SF", "LF", "FL"])
def test_cached_length_is_an_int_for_every_layer_order(pattern):
    """transformers >= 5.25 counts a linear-attention cache layer's tokens in a tensor; the model reads an int."""
    from hybrid_hf.modeling.cache import cached_length

    model = tiny_model(pattern, linear_attention_type="gated_deltanet" if "L" in pattern else None)
    cache = DynamicCache(config=model.config)
    assert cached_length(cache, model.config.layer_types) == 0
    model(ids8, cache=cache, use_cache=True)
    model(torch.randint(3, V, (1, 1)), cache=cache, use_cache=True)
    length = cached_length(cache, model.config.layer_types)
    assert type(length) is int and length == 9
    assert cached_length(None, model.config.layer_types) == 0
