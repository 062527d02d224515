"""hybrid_hf.hub: model card, prepared checkpoint folder (fresh-process load), upload path without network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from unittest import mock

import pytest
import torch
from conftest import BLOCK_HYBRID_HF, tiny_config, tiny_model

from hybrid_hf import HybridForCausalLM
from hybrid_hf.data import sample_documents, train_tokenizer
from hybrid_hf.hub import (
    CITATION,
    HubError,
    check_checkpoint,
    check_repo_id,
    layer_diagram,
    parameter_counts,
    prepare_checkpoint,
    publish,
    push_folder,
    render_eval_tables,
    render_model_card,
    template_path,
)
from hybrid_hf.training import apply_lora

NOPE = {"full_attention": "nope", "sliding_attention": "rope"}


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(sample_documents(), vocab_size=400)


def test_parameter_counts_match_the_model():
    model = tiny_model("SF")
    counts = parameter_counts(model)
    unique = {id(p): p for p in model.parameters()}
    assert counts["total"] == sum(p.numel() for p in unique.values())
    assert counts["tied_embeddings"] and counts["output_head"] == 0
    assert counts["embedding"] == 128 * 64
    assert counts["non_embedding"] == counts["total"] - 128 * 64
    assert sum(r["total"] for r in counts["layers"]) + counts["final_norm"] == counts["non_embedding"]
    assert parameter_counts(model.config) == counts  # from the config alone, on the meta device
    untied = parameter_counts(tiny_config("SF", tie_word_embeddings=False))
    assert untied["output_head"] == 128 * 64 and untied["non_embedding"] == counts["non_embedding"]


def test_layer_diagram_shows_types_and_positions():
    diagram = layer_diagram(tiny_config("SF", position_encodings=NOPE))
    lines = diagram.splitlines()
    assert lines[0] == "embed ─► [S]─[F]─[S]─[F] ─► norm ─► lm_head"
    assert lines[1].split() == ["0", "1", "2", "3"] and lines[2].split() == ["R", "N", "R", "N"]
    # Letters, indices and encodings are column-aligned.
    assert [lines[0].index("[S]") + 1, lines[0].index("[F]") + 1] == [lines[1].index("0"), lines[1].index("1")]
    long = layer_diagram(tiny_config("F", num_hidden_layers=20)).splitlines()
    assert len(long) == 6 and long[3].startswith("      ─► ") and long[3].endswith("lm_head")


def test_model_card_contents():
    model = tiny_model("SF", position_encodings=NOPE)
    evals = {"RULER": {"16K": 52.88, "32K": 46.98}, "LongBench": {"16K": 19.02}}
    card = render_model_card(model, repo_id="me/tiny-nope", training_data="Ten short essays.", eval_results=evals,
                             datasets=["me/essays"])
    counts = parameter_counts(model)
    assert card.startswith("---\nlicense: apache-2.0\n") and "- me/essays" in card
    assert layer_diagram(model.config) in card
    assert f"{counts['total']:,}" in card and f"**{counts['non_embedding'] / 1e3:.1f}K ({counts['non_embedding']:,})**" in card
    assert "| 0 | `S` sliding-window attention | GQA softmax | 4 | RoPE θ=10000 |" in card
    assert "| 1 | `F` full attention | GQA softmax | all | NoPE |" in card
    assert "NoPE (no positional encoding) on full attention layers, RoPE on sliding-window attention layers" in card
    assert "### RULER" in card and "| 32K | 46.98 |" in card and "| 16K | 19.02 |" in card
    assert "Ten short essays." in card and CITATION in card and "2606.15378" in card
    assert 'from_pretrained("me/tiny-nope", trust_remote_code=True)' in card
    assert 'target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]' in card
    assert "$" not in card.replace("$$", "")  # every placeholder filled
    bare = render_model_card(model.config, has_tokenizer=False)
    assert "No evaluation results were provided." in bare and "Not specified." in bare
    assert "ships no tokenizer" in bare


def test_eval_table_shapes():
    assert render_eval_tables({"loss": 2.5, "tokens": 12345}).splitlines() == [
        "| metric | value |", "|---|---:|", "| loss | 2.5 |", "| tokens | 12,345 |"]
    rows = render_eval_tables([{"task": "niah", "16K": 0.9}, {"task": "qa", "32K": 0.5}]).splitlines()
    assert rows[0] == "| task | 16K | 32K |" and rows[3] == "| qa |  | 0.5 |"


def test_template_lives_in_model_cards():
    path = template_path()
    assert path.parent.name == "model_cards" and "$layer_diagram" in path.read_text()


def test_prepare_checkpoint_folder(tmp_path, tokenizer):
    model = tiny_model("SF", vocab_size=len(tokenizer))
    folder = prepare_checkpoint(model, tmp_path / "ckpt", tokenizer=tokenizer, repo_id="me/x",
                                eval_results={"loss": 3.0})
    files = set(os.listdir(folder))
    assert {"model.safetensors", "config.json", "generation_config.json", "README.md", "tokenizer.json",
            "configuration_hybrid.py", "modeling_hybrid.py"} <= files
    assert not any(f.endswith((".bin", ".pkl")) for f in files)
    config = check_checkpoint(folder)
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_hybrid.HybridForCausalLM"
    gen = json.loads((folder / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tokenizer.eos_token_id and gen["pad_token_id"] == tokenizer.pad_token_id
    assert "[S]─[F]" in (folder / "README.md").read_text()
    with pytest.raises(FileExistsError):
        prepare_checkpoint(model, folder)
    (folder / "modeling_hybrid.py").unlink()
    with pytest.raises(ValueError, match="modeling_hybrid.py missing"):
        check_checkpoint(folder)


def test_prepare_merges_peft_and_reads_a_saved_folder(tmp_path):
    base = tiny_model("SF")
    lora = apply_lora(base)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.fill_(0.01)
    ids = torch.randint(3, 128, (1, 9))
    with torch.no_grad():
        expected = lora(ids).logits
    folder = prepare_checkpoint(lora, tmp_path / "merged")
    reloaded = HybridForCausalLM.from_pretrained(folder).eval()
    assert not any("lora" in k for k in reloaded.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, expected, atol=1e-5, rtol=1e-5)
    again = prepare_checkpoint(folder, tmp_path / "again")  # from a path
    assert "ships no tokenizer" in (again / "README.md").read_text()


FRESH_LOAD = BLOCK_HYBRID_HF + textwrap.dedent(
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder, out_path = sys.argv[1:3]
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok("The keeper counted the steps.", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    gen = model.generate(ids, max_new_tokens=5, do_sample=False)
    fast = importlib.import_module(type(model).__module__.rsplit(".", 1)[0] + ".fast_generation")
    assert fast.fast_path_refusal(model, ids, max_new_tokens=5, do_sample=False) is None  # generate was routed
    torch.save({"ids": ids, "logits": logits, "generated": gen}, out_path)
    """
)


def test_prepared_folder_loads_with_remote_code_in_fresh_process(tmp_path, tokenizer):
    model = tiny_model("SF", vocab_size=len(tokenizer), position_encodings=NOPE)
    folder = prepare_checkpoint(model, tmp_path / "ckpt", tokenizer=tokenizer)
    script = tmp_path / "load.py"
    script.write_text(FRESH_LOAD)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, str(script), str(folder), str(tmp_path / "out.pt")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    remote = torch.load(tmp_path / "out.pt")
    assert torch.equal(remote["ids"], tokenizer("The keeper counted the steps.", return_tensors="pt").input_ids)
    with torch.no_grad():
        assert torch.equal(remote["logits"], model(remote["ids"]).logits)
    local = model.generate(remote["ids"], max_new_tokens=5, do_sample=False)
    assert torch.equal(remote["generated"], local)


@pytest.fixture
def prepared(tmp_path):
    return prepare_checkpoint(tiny_model("F"), tmp_path / "ready")


def test_push_folder_calls_hub_api(prepared, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    api = mock.Mock()
    api.upload_folder.return_value = mock.Mock(commit_url="https://hub.example/me/x/commit/abc")
    url = push_folder(prepared, "me/x", private=True, revision="v1", commit_message="first", api=api)
    assert url == "https://hub.example/me/x/commit/abc"
    api.create_repo.assert_called_once_with("me/x", private=True, exist_ok=True, repo_type="model")
    api.create_branch.assert_called_once_with("me/x", branch="v1", exist_ok=True, repo_type="model")
    kwargs = api.upload_folder.call_args.kwargs
    assert kwargs["folder_path"] == str(prepared) and kwargs["revision"] == "v1"
    assert kwargs["commit_message"] == "first" and kwargs["repo_id"] == "me/x"


def test_publish_prepares_then_uploads(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    seen = {}

    def upload_folder(**kwargs):
        seen["files"] = set(os.listdir(kwargs["folder_path"]))
        seen["card"] = open(os.path.join(kwargs["folder_path"], "README.md")).read()
        return mock.Mock(commit_url="url")

    api = mock.Mock(upload_folder=upload_folder)
    assert publish(tiny_model("SF"), "me/y", api=api, training_data="essays") == "url"
    assert {"model.safetensors", "README.md", "modeling_hybrid.py"} <= seen["files"]
    assert "essays" in seen["card"] and 'from_pretrained("me/y"' in seen["card"]
    api.create_branch.assert_not_called()


def test_offline_mode_fails_clearly_before_any_call(prepared, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    api = mock.Mock()
    with pytest.raises(HubError, match="offline mode is on") as err:
        push_folder(prepared, "me/x", api=api)
    assert str(prepared) in str(err.value) and "hybrid-hf push" in str(err.value)
    assert not api.mock_calls


def test_network_and_auth_errors_are_explained(prepared, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    api = mock.Mock(endpoint="https://hub.example")
    api.create_repo.side_effect = ConnectionError("Name or service not known")
    with pytest.raises(HubError, match="Cannot reach the Hugging Face Hub at https://hub.example"):
        push_folder(prepared, "me/x", api=api)
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    api.create_repo.side_effect = LocalTokenNotFoundError("no token")
    with pytest.raises(HubError, match="HF_TOKEN"):
        push_folder(prepared, "me/x", api=api)
    api.create_repo.side_effect = HfHubHTTPError("401 Unauthorized", response=mock.Mock(status_code=401))
    with pytest.raises(HubError, match="write access"):
        push_folder(prepared, "me/x", api=api)


def test_real_client_offline_raises_hub_error(prepared, monkeypatch):
    """No mock: with HF_HUB_OFFLINE the real HfApi path stops with HubError, never a raw traceback."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError, match="offline"):
        publish(prepared, "me/z")


@pytest.mark.parametrize("repo_id", ["bad id", "a/b/c", "me/x..y"])
def test_invalid_repo_id_fails_before_any_work(repo_id, prepared, tmp_path):
    api = mock.Mock()
    with pytest.raises(ValueError, match="invalid Hub repository id") as err:
        publish(tiny_model("F"), repo_id, output_dir=tmp_path / "never", api=api)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="namespace/name"):
        push_folder(prepared, repo_id, api=api)
    assert not api.mock_calls and not (tmp_path / "never").exists()
    assert check_repo_id("me/ok-model") == "me/ok-model"
