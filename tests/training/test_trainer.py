"""transformers.Trainer end to end: loss goes down, exact resume, gradient accumulation, checkpointing, bf16."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from conftest import tiny_config, tiny_model
from torch.utils.data import Dataset
from transformers import Trainer

from hybrid_hf import HybridForSequenceClassification
from hybrid_hf.data import sample_documents, train_tokenizer
from hybrid_hf.training import causal_lm_dataset, evaluate_causal_lm, training_arguments


class Rows(Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def _text_dataset(block_size: int = 32):
    tok = train_tokenizer(sample_documents(), vocab_size=400)
    return tok, causal_lm_dataset(tok, sample_documents(), block_size)


def _args(tmp_path, name, **kw):
    defaults = dict(max_steps=5, per_device_train_batch_size=4, learning_rate=3e-3, warmup_steps=0,
                    logging_steps=1, save_steps=1000, disable_tqdm=True, lr_scheduler_type="constant")
    defaults.update(kw)
    return training_arguments(str(tmp_path / name), **defaults)


def _losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def _model(tok, **kw):
    return tiny_model("SF", vocab_size=len(tok), **kw)


def test_trainer_five_steps_decrease_loss(tmp_path):
    tok, ds = _text_dataset()
    model = _model(tok)
    before = evaluate_causal_lm(model, ds)
    trainer = Trainer(model=model, args=_args(tmp_path, "run", max_steps=8), train_dataset=ds)
    trainer.train()
    losses = _losses(trainer)
    assert len(losses) == 8
    assert sum(losses[-3:]) / 3 < losses[0] - 0.2
    after = evaluate_causal_lm(model, ds)
    assert after["loss"] < before["loss"] and after["perplexity"] < before["perplexity"]


def test_resume_from_checkpoint_is_exact(tmp_path):
    tok, ds = _text_dataset()
    full = Trainer(model=_model(tok), args=_args(tmp_path, "full", max_steps=6, save_steps=3), train_dataset=ds)
    full.train()
    # The interrupted run: same seed and data, stopped at the step-3 checkpoint, then resumed in a new Trainer.
    resumed = Trainer(model=_model(tok, seed=123), args=_args(tmp_path, "full", max_steps=6, save_steps=3),
                      train_dataset=ds)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))
    history = [h for h in resumed.state.log_history if "loss" in h]
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5, 6]  # steps 1-3 come from the checkpoint's state
    assert _losses(resumed) == _losses(full)  # bit-exact, including the steps run after resuming
    for (n, a), (_, b) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(a, b), n


def _ragged_rows(n: int = 8, length: int = 24):
    """Rows with very different numbers of real tokens (right padding, masked and ignored)."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        real = 4 + (i * 7) % (length - 4)
        ids = torch.zeros(length, dtype=torch.long)
        ids[:real] = torch.randint(3, 128, (real,), generator=g)
        mask = (torch.arange(length) < real).long()
        labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
        rows.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return Rows(rows)


def test_gradient_accumulation_scales_by_tokens_in_batch(tmp_path):
    """4 rows in one batch == 2 micro-batches of 2 (Trainer passes num_items_in_batch to the model's loss)."""
    ds = _ragged_rows()
    common = dict(max_steps=2, optim="sgd", learning_rate=0.5, max_grad_norm=0.0, weight_decay=0.0)
    one = Trainer(model=tiny_model("SF"), args=_args(tmp_path, "ga1", per_device_train_batch_size=4, **common),
                  train_dataset=ds)
    one.train()
    acc = Trainer(model=tiny_model("SF"), args=_args(tmp_path, "ga2", per_device_train_batch_size=2,
                                                     gradient_accumulation_steps=2, **common), train_dataset=ds)
    acc.train()
    assert acc.model_accepts_loss_kwargs
    moved = max((a - b).abs().max() for a, b in zip(one.model.parameters(), tiny_model("SF").parameters()))
    assert moved > 1e-3
    for (n, a), (_, b) in zip(one.model.named_parameters(), acc.model.named_parameters()):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5, msg=n)


def test_gradient_checkpointing_gives_the_same_losses(tmp_path):
    tok, ds = _text_dataset()
    plain = Trainer(model=_model(tok), args=_args(tmp_path, "plain", max_steps=3), train_dataset=ds)
    plain.train()
    ckpt = Trainer(model=_model(tok), args=_args(tmp_path, "gc", max_steps=3, gradient_checkpointing=True),
                   train_dataset=ds)
    ckpt.train()
    assert ckpt.model.model.gradient_checkpointing
    torch.testing.assert_close(torch.tensor(_losses(ckpt)), torch.tensor(_losses(plain)), atol=1e-5, rtol=0)


def test_bf16_training_runs_close_to_fp32(tmp_path):
    tok, ds = _text_dataset()
    fp32 = Trainer(model=_model(tok), args=_args(tmp_path, "fp32", max_steps=4), train_dataset=ds)
    fp32.train()
    bf16 = Trainer(model=_model(tok), args=_args(tmp_path, "bf16", max_steps=4, bf16=True), train_dataset=ds)
    bf16.train()
    a, b = torch.tensor(_losses(fp32)), torch.tensor(_losses(bf16))
    assert torch.isfinite(b).all() and b[-1] < b[0]
    assert (a - b).abs().max() < 0.1 and not torch.equal(a, b)  # bf16 autocast really ran


def test_sequence_classification_trainer(tmp_path):
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(16):
        label = i % 2
        ids = torch.randint(3, 64, (12,), generator=g) + 64 * label  # class is visible in the token range
        rows.append({"input_ids": ids, "labels": torch.tensor(label)})
    torch.manual_seed(0)
    model = HybridForSequenceClassification(tiny_config("SF", num_labels=2))
    trainer = Trainer(model=model, args=_args(tmp_path, "cls", max_steps=10, per_device_train_batch_size=8),
                      train_dataset=Rows(rows))
    trainer.train()
    losses = _losses(trainer)
    assert sum(losses[-3:]) / 3 < losses[0]


def test_multi_process_benchmark_matches_one_process(tmp_path):
    """benchmarks/fsdp/train_fsdp.py: 2 processes (DDP over gloo, via accelerate) and 1 process optimise the same
    global-batch loss, so in fp32 their loss curves agree (the GPU run of the same script compares FSDP2 and DDP)."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "fsdp" / "train_fsdp.py"
    args = [str(script), "--size", "tiny", "--seq-len", "32", "--global-batch", "4", "--steps", "4", "--warmup", "2"]
    # Launcher state left in this process's environment by earlier tests must not reach the children.
    launcher = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC")
    env = {k: v for k, v in os.environ.items() if not k.startswith(launcher + ("GROUP_", "ROLE_", "ACCELERATE_", "FSDP_"))}
    env.update(OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true")
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one.json")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    # --standalone: a fresh rendezvous on a free local port, never the fixed default 29500 that another job on the
    # same host may hold (a shared store makes torchrun's exit barrier wait out its 300 s timeout).
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args,
                          "--out", str(tmp_path / "two.json")], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert (a["num_processes"], b["num_processes"], b["distributed_type"]) == (1, 2, "MULTI_CPU")
    assert a["losses"][-1] < a["losses"][0]
    torch.testing.assert_close(torch.tensor(b["losses"]), torch.tensor(a["losses"]), atol=1e-5, rtol=0)
