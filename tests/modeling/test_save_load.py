"""save_pretrained / from_pretrained, Auto classes, and Hub remote code in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import BLOCK_HYBRID_HF, tiny_model
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from hybrid_hf import HybridConfig, HybridForCausalLM, HybridForSequenceClassification, HybridModel

# Runs in a fresh interpreter in which `import hybrid_hf` is made impossible.
REMOTE_LOAD = BLOCK_HYBRID_HF + textwrap.dedent(
    """
    import torch
    from transformers import AutoModelForCausalLM
    folder, ids_path, out_path = sys.argv[1:4]
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    ids = torch.load(ids_path)
    with torch.no_grad():
        logits = model(ids).logits
    gen = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    torch.save({"logits": logits, "generated": gen}, out_path)
    """
)


@pytest.mark.parametrize("pattern,encoding", [("SF", {"full_attention": "nope", "sliding_attention": "rope"}), ("F", "rope")])
def test_save_load_identical_logits_and_safetensors(tmp_path, pattern, encoding):
    model = tiny_model(pattern, position_encodings=encoding)
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert "model.safetensors" in files and not any(f.endswith(".bin") for f in files)
    assert {"configuration_hybrid.py", "modeling_hybrid.py", "config.json"} <= files
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "hybrid_hf"
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_hybrid.HybridForCausalLM"
    assert config["auto_map"]["AutoConfig"] == "configuration_hybrid.HybridConfig"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, HybridForCausalLM)
    ids = torch.randint(3, 128, (2, 11))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_auto_classes_are_registered():
    cfg = AutoConfig.for_model("hybrid_hf", num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                               intermediate_size=64, vocab_size=64)
    assert isinstance(cfg, HybridConfig)
    assert isinstance(AutoModel.from_config(cfg), HybridModel)
    assert isinstance(AutoModelForCausalLM.from_config(cfg), HybridForCausalLM)
    assert isinstance(AutoModelForSequenceClassification.from_config(cfg), HybridForSequenceClassification)


def test_remote_code_load_in_fresh_process_without_hybrid_hf(tmp_path):
    model = tiny_model("SF", position_encodings={"full_attention": "nope", "sliding_attention": "rope"})
    folder = tmp_path / "ckpt"
    model.save_pretrained(folder)
    ids = torch.randint(3, 128, (1, 9))
    torch.save(ids, tmp_path / "ids.pt")
    script = tmp_path / "load.py"
    script.write_text(REMOTE_LOAD)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    proc = subprocess.run(
        [sys.executable, str(script), str(folder), str(tmp_path / "ids.pt"), str(tmp_path / "out.pt")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    remote = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        local = model(ids).logits
    assert torch.equal(remote["logits"], local)
    local_gen = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(remote["generated"], local_gen)


# Names a shipped remote-code file must never take: importable packages, and well-known ones that transformers or
# torch probe for (``is_kernels_available()`` imports ``kernels`` from the current directory, say).
WELL_KNOWN_MODULES = {"kernels", "triton", "flash_attn", "fla", "torch", "transformers", "accelerate", "peft", "safetensors",
                      "tokenizers", "einops", "causal_conv1d", "mamba_ssm", "deepspeed", "bitsandbytes", "liger_kernel"}


def test_shipped_files_shadow_no_package_and_load_with_cwd_inside_folder(tmp_path):
    import importlib.util

    model = tiny_model("SLFF", linear_attention_type="gated_deltanet")
    folder = tmp_path / "ckpt"
    model.save_pretrained(folder)
    stems = {p.stem for p in folder.glob("*.py")}
    assert {"modeling_hybrid", "configuration_hybrid", "linear_attention"} <= stems
    for stem in stems:
        assert stem not in WELL_KNOWN_MODULES, stem
        assert importlib.util.find_spec(stem) is None, f"shipped {stem}.py shadows an importable module"
    ids = torch.randint(3, 128, (1, 9))
    torch.save(ids, folder.parent / "ids.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    # `python -c` puts the current directory first on sys.path, as an interactive session inside the folder does
    proc = subprocess.run(
        [sys.executable, "-c", REMOTE_LOAD, ".", str(tmp_path / "ids.pt"), str(tmp_path / "out.pt")],
        cwd=folder, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "out.pt")["logits"], model(ids).logits)
