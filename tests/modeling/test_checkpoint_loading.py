"""Weights that do not fit the config they are loaded with: a clear error naming the tensors and the config field,
for HybridForCausalLM and the Auto classes (in-library and as Hub remote code); never a silent re-initialisation."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers
from conftest import BLOCK_HYBRID_HF, tiny_model
from transformers import AutoModelForCausalLM

from hybrid_hf import HybridForCausalLM, HybridForSequenceClassification, HybridModel
from hybrid_hf.modeling import CheckpointMismatchError


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "model"
    model = tiny_model("SF")
    model.save_pretrained(folder)
    return folder, model


def _with_config(saved, tmp_path, **changes):
    """A copy of the saved folder whose config.json has ``changes`` (None deletes a key) but the same weights."""
    folder, _ = saved
    target = tmp_path / "edited"
    target.mkdir()
    for f in folder.iterdir():
        (target / f.name).write_bytes(f.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (target / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    return target


# config change -> fragments of the error (the field, what the config builds vs what the checkpoint has, a tensor)
CHANGES = {
    "hidden_size": ({"hidden_size": 96}, ["hidden_size (the config gives 96, the checkpoint has 64",
                                          "model.embed_tokens.weight [128, 64] vs [128, 96]"]),
    "intermediate_size": ({"intermediate_size": 96}, ["intermediate_size (the config gives 96, the checkpoint has 128",
                                                      "model.layers.{0, 1, 2, 3}.mlp.gate_proj.weight [128, 64] vs [96, 64]"]),
    "num_attention_heads": ({"num_attention_heads": 2}, ["num_attention_heads * head_dim (the config gives 2 * 16 = 32, "
                                                         "the checkpoint has 64", "self_attn.q_proj.weight"]),
    "num_key_value_heads": ({"num_key_value_heads": 1}, ["num_key_value_heads * head_dim (the config gives 1 * 16 = 16",
                                                         "self_attn.k_proj.weight [32, 64] vs [16, 64]"]),
    "head_dim": ({"head_dim": 8}, ["* head_dim (the config gives 4 * 8 = 32"]),
    "vocab_size": ({"vocab_size": 256}, ["vocab_size (the config gives 256, the checkpoint has 128"]),
    "more_layers": ({"num_hidden_layers": 6, "layer_types": None, "position_encodings": None},
                    ["num_hidden_layers (the config builds 6 layers, the checkpoint has 4)",
                     "Missing from the checkpoint: model.layers.{4, 5}."]),
    "fewer_layers": ({"num_hidden_layers": 2, "layer_types": None, "position_encodings": None},
                     ["num_hidden_layers (the config builds 2 layers, the checkpoint has at least 4)",
                      "Not used by the config: model.layers.{2, 3}."]),
    "layer_types": ({"layer_types": ["linear_attention", "full_attention"] * 2, "position_encodings": None,
                     "linear_attention_type": "gated_deltanet"},
                    ["layer_types (layers 0, 2 are linear_attention in the config, the checkpoint holds self_attn"]),
    "use_qk_norm": ({"use_qk_norm": True}, ["use_qk_norm (the config sets True, the checkpoint has no q_norm/k_norm"]),
    "tie_word_embeddings": ({"tie_word_embeddings": False}, ["tie_word_embeddings", "lm_head.weight"]),
}


@pytest.mark.parametrize("name", list(CHANGES))
def test_mismatch_names_tensors_and_field(name, saved, tmp_path):
    changes, fragments = CHANGES[name]
    folder = _with_config(saved, tmp_path, **changes)
    with pytest.raises(CheckpointMismatchError) as err:
        HybridForCausalLM.from_pretrained(folder)
    message = str(err.value)
    assert message.startswith(f"HybridForCausalLM.from_pretrained({str(folder)!r}): the checkpoint's weights do not "
                              "fit the config")
    for fragment in fragments:
        assert fragment in message, message
    # The same error through the Auto class, and it is what transformers users catch as well as a ValueError.
    with pytest.raises(CheckpointMismatchError, match="Likely cause") as err:
        AutoModelForCausalLM.from_pretrained(folder)
    assert isinstance(err.value, ValueError) and isinstance(err.value, RuntimeError)


def test_base_model_is_checked_too(saved, tmp_path):
    folder = _with_config(saved, tmp_path, hidden_size=96)
    with pytest.raises(CheckpointMismatchError, match="hidden_size"):
        HybridModel.from_pretrained(folder)


def test_ignore_mismatched_sizes_loads_with_reinitialised_tensors(saved, tmp_path):
    folder = _with_config(saved, tmp_path, intermediate_size=96)
    model, info = HybridForCausalLM.from_pretrained(folder, ignore_mismatched_sizes=True, output_loading_info=True)
    assert model.model.layers[0].mlp.gate_proj.weight.shape == (96, 64)
    assert len(info["mismatched_keys"]) == 12
    _, original = saved
    torch.testing.assert_close(model.model.embed_tokens.weight, original.model.embed_tokens.weight)


def test_matching_checkpoint_loads_unchanged(saved):
    folder, original = saved
    model = HybridForCausalLM.from_pretrained(folder)
    assert isinstance(model, HybridForCausalLM)
    ids = torch.tensor([[3, 5, 7, 9, 11, 13]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, original(ids).logits)
    loaded = HybridForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert isinstance(loaded, tuple) and not any(loaded[1][k] for k in ("missing_keys", "mismatched_keys"))


def test_a_new_task_head_is_not_an_error(tmp_path):
    """A classifier from an untied causal LM: new ``score`` head, unused ``lm_head`` (transformers' usual warning)."""
    tiny_model("SF", tie_word_embeddings=False).save_pretrained(tmp_path / "lm")
    model, info = HybridForSequenceClassification.from_pretrained(tmp_path / "lm", num_labels=3,
                                                                  output_loading_info=True)
    assert set(info["missing_keys"]) == {"score.weight"} and set(info["unexpected_keys"]) == {"lm_head.weight"}
    assert model.score.weight.shape == (3, 64)


def test_error_replaces_transformers_table_which_stays_otherwise(saved, tmp_path):
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    log = logging.getLogger("transformers.modeling_utils")
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_warning()
    log.addHandler(handler)
    try:
        with pytest.raises(CheckpointMismatchError):
            HybridForCausalLM.from_pretrained(_with_config(saved, tmp_path, hidden_size=96))
        assert not any("LOAD REPORT" in m for m in seen)
        tiny_model("SF", tie_word_embeddings=False).save_pretrained(tmp_path / "lm")
        HybridForSequenceClassification.from_pretrained(tmp_path / "lm", num_labels=3)
        assert any("LOAD REPORT" in m and "score.weight" in m for m in seen)
    finally:
        log.removeHandler(handler)
        transformers.logging.set_verbosity(verbosity)


REMOTE_MISMATCH = BLOCK_HYBRID_HF + textwrap.dedent(
    """
    from transformers import AutoModelForCausalLM
    try:
        AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)
    except ValueError as err:
        assert type(err).__name__ == "CheckpointMismatchError", type(err)
        assert type(err).__module__.startswith("transformers_modules"), type(err).__module__
        print(err)
    else:
        raise SystemExit("loaded a model whose config does not fit its weights")
    """
)


def test_remote_code_raises_the_same_error(saved, tmp_path):
    folder = _with_config(saved, tmp_path, hidden_size=96)
    script = tmp_path / "load.py"
    script.write_text(REMOTE_MISMATCH)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, str(script), str(folder)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "hidden_size (the config gives 96, the checkpoint has 64" in proc.stdout
