"""hybrid_hf.export: exact exports to stock transformers architectures, refusals, RoPE polarity, CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import BLOCK_HYBRID_HF, tiny_config, tiny_model
from transformers import AutoModelForCausalLM

from hybrid_hf import HybridConfig, HybridForCausalLM
from hybrid_hf.cli.main import main
from hybrid_hf.data import sample_documents, train_tokenizer
from hybrid_hf.export import (
    ARCHITECTURES,
    ATOL,
    ExportVerificationError,
    export_model,
    export_targets,
    refusal_message,
    verify_export,
)

NOPE_FULL = {"full_attention": "nope", "sliding_attention": "rope"}
MAMBA2 = dict(linear_attention_type="mamba2", linear_num_heads=4, linear_head_dim=16, linear_state_size=8,
              linear_chunk_size=8)
GDN = dict(linear_attention_type="gated_deltanet", linear_num_heads=2, linear_head_dim=16, linear_expand_v=2.0,
           linear_chunk_size=8, use_qk_norm=True)

# target -> (pattern, overrides) of a tiny model it expresses exactly.
SUPPORTED = {
    # SWA-NoPE design; larger weights make the RoPE polarity test sensitive
    "smollm3": ("SF", dict(position_encodings=NOPE_FULL, attention_bias=True, initializer_range=0.1)),
    "qwen3": ("SF", dict(use_qk_norm=True, tie_word_embeddings=False)),
    "llama": ("F", dict()),
    "granitemoehybrid": ("LF", MAMBA2),
    "qwen3_5": ("LF", dict(GDN, attention_bias=True)),
}


def exportable(target: str, seed: int = 0):
    """A tiny model for ``target`` with every vector parameter (norms, D, dt_bias, A_log, biases) moved off its
    initial value, so that a wrong norm offset or a dropped skip cannot pass unnoticed."""
    pattern, overrides = SUPPORTED[target]
    model = tiny_model(pattern, seed=seed, **overrides)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls gain nothing from threads, and on a busy shared CPU two threads make them ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every supported target exported once: {target: (model, folder)}."""
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for target in SUPPORTED:
        model = exportable(target)
        out[target] = (model, export_model(model, target, root / target))
    return out


# Loads every exported folder with stock transformers only (hybrid_hf blocked, no remote code).
STOCK_LOAD = BLOCK_HYBRID_HF + textwrap.dedent(
    """
    import json, torch
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(1)
    jobs, ids_path, out_path = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    ids = torch.load(ids_path)
    results = {}
    for target, folder in jobs.items():
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        assert type(model).__module__.startswith("transformers.models."), type(model).__module__
        with torch.no_grad():
            logits = model(ids, use_cache=False).logits
        gen = model.generate(ids[:, :12], max_new_tokens=6, do_sample=False, pad_token_id=0)
        results[target] = {"class": type(model).__name__, "logits": logits, "generated": gen}
    torch.save(results, out_path)
    """
)


def test_round_trip_in_fresh_process_without_hybrid_hf(exported, tmp_path):
    ids = torch.randint(3, 128, (2, 21), generator=torch.Generator().manual_seed(3))  # > 5 windows of 4
    torch.save(ids, tmp_path / "ids.pt")
    jobs = {t: str(folder) for t, (_, folder) in exported.items()}
    subprocess.run(
        [sys.executable, "-c", STOCK_LOAD, json.dumps(jobs), str(tmp_path / "ids.pt"), str(tmp_path / "out.pt")],
        check=True, cwd=tmp_path, timeout=300,
    )
    results = torch.load(tmp_path / "out.pt")
    for target, (model, folder) in exported.items():
        got = results[target]
        assert got["class"] == ARCHITECTURES[target]
        assert "auto_map" not in json.loads((folder / "config.json").read_text())
        assert not any(p.suffix == ".py" for p in folder.iterdir())
        with torch.no_grad():
            ours = model(ids, use_cache=False).logits
        torch.testing.assert_close(got["logits"], ours, atol=1e-4, rtol=0)
        expected = model.generate(ids[:, :12], max_new_tokens=6, do_sample=False, pad_token_id=0)
        assert torch.equal(got["generated"], expected), target


def test_export_writes_card_and_stock_config(exported):
    _, folder = exported["qwen3"]
    card = (folder / "README.md").read_text()
    assert "Qwen3ForCausalLM" in card and "#39514" in card and "#22528" in card and "smollm3" in card
    config = json.loads((folder / "config.json").read_text())
    assert config["use_sliding_window"] is True and config["sliding_window"] == 4
    assert config["layer_types"] == ["sliding_attention", "full_attention"] * 2
    granite = json.loads((exported["granitemoehybrid"][1] / "config.json").read_text())
    assert granite["layer_types"] == ["mamba", "attention"] * 2  # Granite-4's spelling, read by 5.17 and 5.24
    assert "time_step_limit" not in granite  # the default (0, inf); infinity has no plain-JSON form
    assert granite["num_local_experts"] == 0 and granite["attention_multiplier"] == pytest.approx(16**-0.5)


def test_no_rope_layers_polarity(exported, tmp_path):
    """SmolLM3's no_rope_layers[i] == 1 means RoPE. The inverted list must break equality, so the round trip above
    proves the polarity."""
    model, folder = exported["smollm3"]
    config = json.loads((folder / "config.json").read_text())
    assert model.config.position_encodings == ["rope", "nope", "rope", "nope"]
    assert config["no_rope_layers"] == [1, 0, 1, 0]
    flipped = tmp_path / "flipped"
    shutil.copytree(folder, flipped)
    config["no_rope_layers"] = [1 - v for v in config["no_rope_layers"]]
    (flipped / "config.json").write_text(json.dumps(config))
    ids = torch.randint(3, 128, (2, 21), generator=torch.Generator().manual_seed(4))
    stock = AutoModelForCausalLM.from_pretrained(flipped, dtype=torch.float32).eval()
    with torch.no_grad():
        diff = (stock(ids).logits - model(ids).logits).abs().max().item()
    assert diff > 100 * ATOL
    with pytest.raises(ExportVerificationError, match="logits differ"):
        verify_export(model, flipped)


def test_export_targets_lists_reasons_and_caveats():
    swa_nope = {t.target: t for t in export_targets(exportable("smollm3").config)}
    assert [t for t, s in swa_nope.items() if s.supported] == ["smollm3"]
    assert any("`position_encodings`" in r for r in swa_nope["qwen3"].reasons)
    qwen = {t.target: t for t in export_targets(exportable("qwen3").config)}
    assert qwen["qwen3"].supported and any("--model-impl transformers" in c for c in qwen["qwen3"].caveats)
    assert any("`use_qk_norm`" in r for r in qwen["smollm3"].reasons)
    full = {t.target: t for t in export_targets(exportable("llama").config)}
    assert full["llama"].supported and full["smollm3"].supported and not full["qwen3"].supported


# (pattern, overrides, target, text the refusal must contain: the blocking field and, where one exists, the nearest
# target)
REFUSALS = [
    ("SF", dict(use_qk_norm=True, position_encodings=NOPE_FULL), "smollm3", ["`use_qk_norm`", "qwen3"]),
    ("SF", dict(use_qk_norm=True, position_encodings=NOPE_FULL), "qwen3", ["`position_encodings`", "smollm3"]),
    ("SF", dict(use_qk_norm=False), "qwen3", ["`use_qk_norm`", "smollm3"]),
    ("SF", dict(rope_theta=10000.0, sliding_rope_theta=500.0), "smollm3", ["`sliding_rope_theta`"]),
    ("SF", dict(), "llama", ["'sliding_attention'", "smollm3"]),
    ("LF", dict(linear_attention_type="lightning"), "smollm3", ["'linear_attention'", "granitemoehybrid"]),
    ("LF", dict(linear_attention_type="lightning"), "granitemoehybrid", ["'lightning'"]),
    ("SLFL", dict(MAMBA2), "granitemoehybrid", ["mixes 'sliding_attention'"]),
    ("LF", dict(MAMBA2, linear_num_heads=3), "granitemoehybrid", ["`linear_num_heads`"]),
    ("LF", dict(MAMBA2, hidden_act="gelu"), "granitemoehybrid", ["`hidden_act`"]),
    ("LF", dict(MAMBA2, use_qk_norm=True), "granitemoehybrid", ["`use_qk_norm`"]),
    ("LF", dict(MAMBA2, position_encodings=["nope", "rope", "nope", "nope"]), "granitemoehybrid", ["RoPE and NoPE"]),
    ("LF", dict(GDN, use_qk_norm=False), "qwen3_5", ["`use_qk_norm`"]),
    ("LF", dict(GDN, position_encodings="nope"), "qwen3_5", ["`position_encodings`"]),
    ("LF", dict(GDN), "granitemoehybrid", ["`linear_attention_type`", "qwen3_5"]),
    ("SF", dict(position_encodings=NOPE_FULL, eval_full_attention_window=8), "smollm3", ["`eval_full_attention_window`"]),
    ("SF", dict(position_encodings=NOPE_FULL, eval_attention_sink_size=2, eval_efficient_window=2), "smollm3",
     ["`eval_attention_sink_size`", "`eval_efficient_window`"]),
]


@pytest.mark.parametrize("pattern,overrides,target,needles", REFUSALS)
def test_refusals_name_the_blocking_field(tmp_path, pattern, overrides, target, needles):
    model = tiny_model(pattern, **overrides)
    with pytest.raises(ValueError) as err:
        export_model(model, target, tmp_path / "out")
    for needle in needles:
        assert needle in str(err.value)
    assert ARCHITECTURES[target] in str(err.value)
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("preset,overrides,supported,needle", [
    ("swa128-nope", {}, ["smollm3"], None),
    ("full", {}, ["smollm3", "llama"], None),
    ("gdn", {}, [], "`use_qk_norm`=False"),
    ("gdn", {"use_qk_norm": True}, ["qwen3_5"], None),
    ("mamba2", {}, [], "`linear_num_heads`*`linear_head_dim`=640"),
    ("mamba2", {"linear_num_heads": 8}, ["granitemoehybrid"], None),
])
def test_paper_presets(preset, overrides, supported, needle):
    targets = export_targets(HybridConfig.from_preset(preset, "s1", **overrides))
    assert [t.target for t in targets if t.supported] == supported
    if needle:
        assert needle in "\n".join(r for t in targets for r in t.reasons)


def test_swa128_nope_preset_exports_to_smollm3(tmp_path):
    """The paper's design with its real window: the write-time check runs a probe of 2 x 128 + 5 tokens."""
    torch.manual_seed(0)
    config = HybridConfig.from_preset("swa128-nope", "tiny", vocab_size=128, max_position_embeddings=512)
    folder = export_model(HybridForCausalLM(config).eval(), "smollm3", tmp_path / "out")
    written = json.loads((folder / "config.json").read_text())
    assert written["sliding_window"] == 128 and written["no_rope_layers"] == [1, 0, 1, 0]


def test_refuses_length_dependent_rope():
    # Checked on the config: HybridForCausalLM itself cannot be built with dynamic RoPE on transformers 5.24.
    config = tiny_config("F", rope_parameters={"rope_type": "dynamic", "factor": 2.0})
    message = refusal_message(config, "llama")
    assert "`rope_parameters.rope_type`='dynamic'" in message and "LlamaForCausalLM" in message
    assert not any(t.supported for t in export_targets(config))


def test_bad_arguments(tmp_path):
    model = tiny_model("F")
    with pytest.raises(ValueError, match="`to`='gpt2'"):
        export_model(model, "gpt2", tmp_path / "out")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        export_model(model, "llama", tmp_path / "busy")
    with pytest.raises(ValueError, match="no config.json"):
        export_model(tmp_path / "busy", "llama", tmp_path / "out")


def test_lossy_export_fails_verification_and_leaves_nothing(tmp_path):
    # bf16 storage of an fp32 model rounds the weights: a real mismatch, caught before out_dir appears.
    with pytest.raises(ExportVerificationError, match="logits differ"):
        export_model(exportable("llama"), "llama", tmp_path / "out", dtype=torch.bfloat16)
    assert list(tmp_path.iterdir()) == []


def test_bf16_source_exports_exactly(tmp_path):
    model = exportable("smollm3").to(torch.bfloat16)
    folder = export_model(model, "smollm3", tmp_path / "out")
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"


def test_cli_export_list_refusal_and_tokenizer(tmp_path, capsys):
    tokenizer = train_tokenizer(sample_documents(), vocab_size=300)
    model = tiny_model("SF", use_qk_norm=True, vocab_size=len(tokenizer))
    model.save_pretrained(tmp_path / "src")
    tokenizer.save_pretrained(tmp_path / "src")

    assert main(["export", str(tmp_path / "src"), "--list"]) == 0
    listing = capsys.readouterr().out
    assert "qwen3" in listing and "Qwen3ForCausalLM" in listing and "`use_qk_norm`" in listing

    assert main(["export", str(tmp_path / "src"), "--to", "smollm3", "--out", str(tmp_path / "s")]) == 2
    assert "`use_qk_norm`" in capsys.readouterr().err and not (tmp_path / "s").exists()

    assert main(["export", str(tmp_path / "src"), "--to", "qwen3", "--out", str(tmp_path / "q")]) == 0
    out = capsys.readouterr().out
    assert "warning:" in out and "#39514" in out and "--model-impl transformers" in out
    assert (tmp_path / "q" / "tokenizer.json").is_file()
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    assert type(stock).__name__ == "Qwen3ForCausalLM"
