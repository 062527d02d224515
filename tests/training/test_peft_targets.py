"""PEFT: default LoRA targets for model_type "hybrid_hf", merge equivalence, adapter save/load, SEQ_CLS."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config, tiny_model
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import nn

from hybrid_hf import HybridForCausalLM, HybridForSequenceClassification
from hybrid_hf.training import LORA_TARGET_MODULES, apply_lora

ATTN_MLP = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def _lora_wrapped(model: nn.Module) -> set[str]:
    return {name for name, module in model.named_modules() if hasattr(module, "lora_A")}


def _randomize_adapters(model: nn.Module, seed: int = 0) -> None:
    """LoRA B starts at zero (a no-op adapter); give it weights so merges and reloads are actually tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_registered_with_peft():
    assert TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING["hybrid_hf"] == LORA_TARGET_MODULES


@pytest.mark.parametrize("pattern", ["SF", "F"])
def test_default_targets_cover_attention_and_mlp_only(pattern):
    model = get_peft_model(tiny_model(pattern), LoraConfig(task_type="CAUSAL_LM"))
    wrapped = _lora_wrapped(model)
    n_layers = model.config.num_hidden_layers
    assert {w.rsplit(".", 1)[-1] for w in wrapped} == ATTN_MLP
    assert len(wrapped) == n_layers * len(ATTN_MLP)
    assert not any(k in w for w in wrapped for k in ("norm", "embed", "lm_head", "conv"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def test_default_targets_reach_recurrent_mixers():
    try:
        base = HybridForCausalLM(tiny_config("LF", linear_attention_type="gated_deltanet"))
    except Exception as err:  # the recurrent mixers are added by separate work
        pytest.skip(f"pattern 'LF' cannot be built yet: {type(err).__name__}: {err}")
    model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM"))
    wrapped = _lora_wrapped(model)
    for i, layer_type in enumerate(base.config.layer_types):
        mine = [w for w in wrapped if f".layers.{i}." in w]
        mixer = "linear_attn" if layer_type == "linear_attention" else "self_attn"
        assert any(f".{mixer}." in w for w in mine), f"layer {i} ({layer_type}) has no adapted mixer projection"
        assert any(".mlp." in w for w in mine)
    for name, module in model.named_modules():
        if name in wrapped:
            assert isinstance(module.base_layer, nn.Linear), name
            assert not any(k in name for k in ("norm", "conv", "A_log", "dt_bias", "a_proj", "b_proj")), name


def test_merge_and_unload_gives_identical_logits():
    base = tiny_model("SF")
    ids = torch.randint(3, 128, (2, 17))
    with torch.no_grad():
        base_logits = base(ids).logits
    model = apply_lora(base, r=4, alpha=8)
    _randomize_adapters(model)
    model.eval()
    with torch.no_grad():
        adapted = model(ids).logits
        merged = model.merge_and_unload()
        assert isinstance(merged, HybridForCausalLM) and not _lora_wrapped(merged)
        merged_logits = merged(ids).logits
    assert (adapted - base_logits).abs().max() > 1e-3  # the adapter does something
    torch.testing.assert_close(merged_logits, adapted, atol=1e-5, rtol=1e-5)


def test_adapter_save_and_load(tmp_path):
    model = apply_lora(tiny_model("SF"))
    _randomize_adapters(model, seed=1)
    model.eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").exists() and (tmp_path / "adapter_config.json").exists()
    reloaded = PeftModel.from_pretrained(tiny_model("SF"), tmp_path).eval()
    ids = torch.randint(3, 128, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, atol=0, rtol=0)


def test_sequence_classification_lora_trains_score_head():
    torch.manual_seed(0)
    base = HybridForSequenceClassification(tiny_config("SF", num_labels=3))
    model = get_peft_model(base, LoraConfig(task_type="SEQ_CLS"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("score" in n for n in trainable) and any("lora_A" in n for n in trainable)
    ids = torch.randint(3, 128, (4, 10))
    out = model(input_ids=ids, labels=torch.tensor([0, 1, 2, 1]))
    out.loss.backward()
    assert out.logits.shape == (4, 3)
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)
