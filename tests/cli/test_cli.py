"""The hybrid-hf command: complete --help, and init -> train -> eval -> card -> push end to end on a tiny preset."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from hybrid_hf.cli.main import build_parser, main
from hybrid_hf.data import sample_documents, write_documents

MINE = ("init", "train", "eval", "card", "push")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("name", MINE)
def test_help_is_complete(name, capsys):
    sub = _subparsers(build_parser())[name]
    assert sub.description and "examples:" in (sub.epilog or "")
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and action.help.strip(), f"{name}: {action.dest} has no help"
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for action in sub._actions:
        for flag in action.option_strings:
            assert flag in out


def test_console_script_is_installed():
    exe = shutil.which("hybrid-hf") or os.path.join(os.path.dirname(sys.executable), "hybrid-hf")
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and all(name in proc.stdout for name in MINE)


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    root = tmp_path_factory.mktemp("texts")
    docs = sample_documents()
    write_documents(docs[:9], root / "train.txt")
    write_documents(docs[9:], root / "val.jsonl")
    return root


def test_init_train_eval_card_push_end_to_end(tmp_path, texts, capsys, monkeypatch):
    model_dir, run_dir = tmp_path / "model", tmp_path / "run"
    assert main(["init", str(model_dir), "--preset", "swa128-nope", "--size", "tiny", "--vocab-size", "512",
                 "--tokenizer-corpus", str(texts / "train.txt"), "--set", "sliding_window=16"]) == 0
    config = json.loads((model_dir / "config.json").read_text())
    assert config["layer_types"] == ["sliding_attention", "full_attention"] * 2 and config["sliding_window"] == 16
    assert config["position_encodings"] == ["rope", "nope"] * 2 and config["vocab_size"] == 512
    assert (model_dir / "model.safetensors").exists() and (model_dir / "tokenizer.json").exists()
    assert "[S]─[F]─[S]─[F]" in capsys.readouterr().out

    eval_before = tmp_path / "before.json"
    assert main(["eval", str(model_dir), "--data", str(texts / "val.jsonl"), "--block-size", "64",
                 "--output", str(eval_before)]) == 0
    assert main(["train", str(model_dir), "--data", str(texts / "train.txt"), "--eval-data", str(texts / "val.jsonl"),
                 "--output-dir", str(run_dir), "--block-size", "64", "--max-steps", "24", "--save-steps", "12",
                 "--logging-steps", "4", "--lr", "3e-3", "--no-progress"]) == 0
    results = json.loads((run_dir / "train_results.json").read_text())
    losses = [h["loss"] for h in results["log_history"] if "loss" in h]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert any("eval_loss" in h for h in results["log_history"])  # periodic evaluation ran
    assert (run_dir / "checkpoint-12").is_dir() and (run_dir / "checkpoint-24").is_dir()
    assert (run_dir / "final" / "model.safetensors").exists()

    eval_after = tmp_path / "after.json"
    assert main(["eval", str(run_dir / "final"), "--data", str(texts / "val.jsonl"), "--block-size", "64",
                 "--output", str(eval_after)]) == 0
    before, after = json.loads(eval_before.read_text()), json.loads(eval_after.read_text())
    assert after["loss"] < before["loss"] and after["tokens"] == before["tokens"] > 0
    assert after["loss"] == pytest.approx(results["eval"]["loss"], rel=1e-5)

    assert main(["card", str(run_dir / "final"), "--repo-id", "me/tiny", "--eval-results", str(eval_after),
                 "--training-data", "Nine sample essays."]) == 0
    card = (run_dir / "final" / "README.md").read_text()
    assert "[S]─[F]─[S]─[F]" in card and "Nine sample essays." in card and "| perplexity |" in card

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_dir = tmp_path / "hub"
    assert main(["push", str(run_dir / "final"), "me/tiny", "--output-dir", str(hub_dir), "--private"]) == 1
    assert "offline mode is on" in capsys.readouterr().err
    assert (hub_dir / "README.md").exists() and (hub_dir / "tokenizer.json").exists()
    assert main(["push", str(run_dir / "final"), "me/tiny", "--output-dir", str(tmp_path / "hub2"),
                 "--prepare-only"]) == 0
    assert (tmp_path / "hub2" / "model.safetensors").exists()


def test_train_lora_and_resume(tmp_path, texts):
    model_dir, run_dir = tmp_path / "model", tmp_path / "run"
    assert main(["init", str(model_dir), "--preset", "full", "--size", "tiny", "--vocab-size", "400",
                 "--tokenizer-corpus", str(texts / "train.txt")]) == 0
    common = ["train", str(model_dir), "--data", str(texts / "train.txt"), "--output-dir", str(run_dir),
              "--block-size", "64", "--save-steps", "3", "--logging-steps", "1", "--no-progress", "--lora"]
    assert main([*common, "--max-steps", "3"]) == 0
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()
    assert main([*common, "--max-steps", "5", "--resume"]) == 0  # continues from checkpoint-3
    steps = [h["step"] for h in json.loads((run_dir / "train_results.json").read_text())["log_history"] if "loss" in h]
    assert steps == [1, 2, 3, 4, 5]
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "final")
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    assert not any("lora" in k for k in merged.state_dict())
    changed = [k for k, v in merged.state_dict().items() if not torch.equal(v, base.state_dict()[k])]
    assert changed and all(k.endswith("proj.weight") for k in changed)  # only LoRA-targeted weights moved
