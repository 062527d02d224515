"""examples/: each script runs end to end (small settings) in a subprocess, as a user would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2", **(env or {})}
    return subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                          timeout=600, env=env)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrain")
    proc = _run("pretrain_tiny.py", "--output-dir", str(out), "--max-chars", "60000", "--vocab-size", "600",
                "--max-steps", "30", "--block-size", "64")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sample:" in proc.stdout
    return out


def test_pretrain_from_scratch(pretrained):
    result = json.loads((pretrained / "pretrain_results.json").read_text())
    assert result["eval_after"]["loss"] < result["eval_before"]["loss"] - 0.5
    assert (pretrained / "final" / "model.safetensors").exists() and (pretrained / "final" / "tokenizer.json").exists()


def test_finetune_with_lora(pretrained, tmp_path):
    proc = _run("finetune_lora.py", "--base", str(pretrained / "final"), "--output-dir", str(tmp_path),
                "--max-steps", "15")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "lora_results.json").read_text())
    assert result["eval_after"]["loss"] < result["eval_before"]["loss"]
    assert result["reload_gap"] == 0.0 and result["merge_gap"] < 1e-4
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert (tmp_path / "merged" / "model.safetensors").exists()


def test_push_to_hub_offline(pretrained, tmp_path):
    ready = tmp_path / "ready"
    proc = _run("push_to_hub.py", str(pretrained / "final"), "me/tiny", "--output-dir", str(ready),
                env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 1
    assert "offline mode is on" in proc.stderr and "hybrid-hf push" in proc.stderr
    card = (ready / "README.md").read_text()
    assert "| held-out loss |" in card and "[S]─[F]─[S]─[F]" in card
    assert {"model.safetensors", "tokenizer.json", "modeling_hybrid.py"} <= set(os.listdir(ready))


def test_convert_and_distill(tmp_path):
    proc = _run("convert_and_distill.py", "--output-dir", str(tmp_path), "--teacher-steps", "10",
                "--distill-steps", "6", "--eval-every", "3", "--eval-samples", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "convert_results.json").read_text())
    assert result["import_max_logit_gap"] <= 1e-5
    assert result["layer_types"] == ["sliding_attention", "full_attention"] * 2
    assert [p["step"] for p in result["curve"]] == [0, 3, 6]
    assert all(p["kl"] >= 0 and 0 <= p["niah"] <= 1 for p in result["curve"])
    assert (tmp_path / "teacher" / "config.json").exists() and (tmp_path / "student" / "model.safetensors").exists()
