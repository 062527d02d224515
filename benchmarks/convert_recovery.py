"""Recovery curve of a pretrained model converted to a 1:1 sliding-window hybrid and healed by distillation.

    python benchmarks/convert_recovery.py --out benchmarks/results/convert-recovery-h200      # one H200, < 9 min
    python benchmarks/convert_recovery.py --smoke --out /tmp/convert-smoke                     # CPU, about a minute

1. Initialise a ~300M-parameter stock ``Qwen3ForCausalLM`` (QK-norm, GQA, head_dim 128; random weights made here)
   with an offline BPE tokenizer, and pretrain it for ``--pretrain-s`` seconds on offline text mixed with
   needle-in-a-haystack documents (prompt + answer), so that it can retrieve.
2. Import it into hybrid_hf (logit gap recorded), convert every other layer to a ``--window``-token sliding window
   (zero new parameters).
3. Distil the hybrid from the original (KL on packed rows, ``DistillationTrainer``) for ``--distill-s`` seconds,
   measuring the held-out KL and the passkey / NIAH score at the start and ``evals`` times while it trains.

Writes ``convert-recovery.json`` (settings, environment, teacher scores, curve) and ``convert-recovery.md`` into
``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import sys
import time
from pathlib import Path

import torch
import transformers
from transformers import Qwen3Config, Qwen3ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybrid_hf.convert import hybridize, import_model, plan_layer_types
from hybrid_hf.data import build_corpus, train_tokenizer
from hybrid_hf.evaluation import evaluate_samples, make_sample
from hybrid_hf.training import (
    DistillationTrainer,
    RecoveryCallback,
    TokenBlockDataset,
    pack_documents,
    tokenize_documents,
    training_arguments,
)

PROFILES = {
    # ~300M parameters (20 x 14.9M + 8.4M tied embeddings), Qwen3-0.6B's head layout
    "h200": dict(hidden_size=1024, num_hidden_layers=20, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                 intermediate_size=2816, vocab=8192, block=1024, batch=16, lengths=[512, 1024], window=128,
                 pretrain_s=200.0, distill_s=120.0, evals=4, lr=1e-3, distill_lr=3e-4, corpus_chars=None,
                 needle_docs=4000),
    "smoke": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  intermediate_size=128, vocab=512, block=256, batch=8, lengths=[192], window=16,
                  pretrain_s=20.0, distill_s=10.0, evals=2, lr=3e-3, distill_lr=1e-3, corpus_chars=200_000,
                  needle_docs=200),
}
TASKS = ("passkey", "niah_single")


def needle_documents(tokenizer, n: int, lengths: list[int], haystack: list[str], seed: int) -> list[list[int]]:
    """Needle prompts with their answer and eos appended: training text that teaches retrieval."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        s = make_sample(rng.choice(TASKS), tokenizer, rng.choice(lengths), depth=rng.random(),
                        seed=seed * 1_000_003 + i, haystack=haystack)
        docs.append(s.input_ids + tokenizer(" " + s.answers[0], add_special_tokens=False)["input_ids"]
                    + [tokenizer.eos_token_id])
    return docs


def niah_score(model, tokenizer, samples) -> float:
    records = evaluate_samples(model, tokenizer, samples, max_new_tokens=12)
    return sum(r["score"] for r in records) / len(records)


def pretrain(model, rows, batch: int, seconds: float, lr: float, device: str) -> dict:
    """AdamW with warmup and linear decay over the time budget; bf16 autocast on CUDA."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=device == "cuda")
    model.train()
    start, step, losses = time.time(), 0, []
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    while time.time() - start < seconds:
        idx = [order[(step * batch + j) % len(order)] for j in range(batch)]
        b = {k: torch.tensor([rows[i][k] for i in idx], device=device) for k in rows[0]}
        frac = (time.time() - start) / seconds
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 50) * max(0.05, 1.0 - frac)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(**b, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if step % 50 == 0 or step == 1:
            value = float(loss.detach())
            losses.append({"step": step, "loss": value, "s": round(time.time() - start, 1)})
            print(f"pretrain step {step}: loss {value:.3f} ({time.time() - start:.0f} s)", flush=True)
    model.eval()
    return {"steps": step, "seconds": time.time() - start, "tokens": step * batch * len(rows[0]["input_ids"]),
            "loss_log": losses}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for convert-recovery.json / .md")
    p.add_argument("--smoke", action="store_true", help="tiny CPU settings (checks the script end to end)")
    p.add_argument("--pretrain-s", type=float, help="pretraining time budget in seconds (default: profile)")
    p.add_argument("--distill-s", type=float, help="distillation time budget in seconds (default: profile)")
    p.add_argument("--window", type=int, help="sliding window of the converted layers (default: profile)")
    p.add_argument("--eval-samples", type=int, default=16, help="NIAH prompts per measurement (default: 16)")
    args = p.parse_args(argv)
    cfg = dict(PROFILES["smoke" if args.smoke else "h200"])
    for key in ("pretrain_s", "distill_s", "window"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if device == "cpu":
        torch.set_num_threads(1)  # smoke-sized matrices: one thread is fastest
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    torch.manual_seed(0)

    docs = build_corpus(max_chars=cfg["corpus_chars"] or 20_000_000)
    tokenizer = train_tokenizer(docs[: max(50, len(docs) // 4)], vocab_size=cfg["vocab"])
    haystack = docs[: max(20, len(docs) // 10)]
    block = cfg["block"]
    text = tokenize_documents(tokenizer, docs)
    needles = needle_documents(tokenizer, cfg["needle_docs"], cfg["lengths"], haystack, seed=1)
    # text and needle documents interleaved (the shorter list is cycled): both kinds in every stretch of rows
    n = max(len(text), len(needles))
    mixed = [d for i in range(n) for d in (text[i % len(text)], needles[i % len(needles)])]
    rows = pack_documents(mixed, block, pad_token_id=tokenizer.pad_token_id, drop_last=True)
    held_out = pack_documents(tokenize_documents(tokenizer, docs[-20:]) + needle_documents(
        tokenizer, 20, cfg["lengths"], haystack, seed=2), block, pad_token_id=tokenizer.pad_token_id)[:16]
    samples = [make_sample(TASKS[i % 2], tokenizer, n, depth=d, seed=50_000 + i, haystack=haystack)
               for n in cfg["lengths"] for i, d in enumerate(
                   torch.linspace(0.0, 0.9, args.eval_samples // len(cfg["lengths"])).tolist())]
    print(f"data: {len(docs)} documents, {len(rows)} rows of {block} tokens ({time.time() - t0:.0f} s)", flush=True)

    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=cfg["hidden_size"],
                         intermediate_size=cfg["intermediate_size"], num_hidden_layers=cfg["num_hidden_layers"],
                         num_attention_heads=cfg["num_attention_heads"], num_key_value_heads=cfg["num_key_value_heads"],
                         head_dim=cfg["head_dim"], max_position_embeddings=4 * block, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id)
    with torch.device(device):
        teacher_src = Qwen3ForCausalLM(config)
    n_params = sum(p.numel() for p in teacher_src.parameters())
    pre = pretrain(teacher_src, rows, cfg["batch"], cfg["pretrain_s"], cfg["lr"], device)

    teacher = import_model(teacher_src).eval()
    probe = torch.tensor([samples[0].input_ids], device=device)
    with torch.no_grad():
        gap = float((teacher(probe).logits.float() - teacher_src(probe).logits.float()).abs().max())
    del teacher_src
    teacher_niah = niah_score(teacher, tokenizer, samples)
    print(f"teacher: {n_params / 1e6:.1f}M parameters, NIAH {teacher_niah:.2f}, import gap {gap:.1e}", flush=True)

    student = hybridize(teacher, plan_layer_types(teacher.config, pattern="SF"), sliding_window=cfg["window"])
    kl_batches = [{k: torch.tensor([r[k] for r in held_out[i : i + 4]]) for k in held_out[0]}
                  for i in range(0, len(held_out), 4)]
    step_s = pre["seconds"] / max(pre["steps"], 1)
    max_steps = max(cfg["evals"], int(cfg["distill_s"] / (1.5 * step_s)))  # teacher forward + student step
    every = max(1, max_steps // cfg["evals"])
    recovery = RecoveryCallback(teacher, kl_batches, every=every, niah_samples=samples, tokenizer=tokenizer,
                                max_new_tokens=12)
    dargs = training_arguments(str(out / "distill-run"), max_steps=max_steps, learning_rate=cfg["distill_lr"],
                               per_device_train_batch_size=cfg["batch"], warmup_steps=max(1, max_steps // 20),
                               weight_decay=0.0, logging_steps=every, save_strategy="no",
                               bf16=device == "cuda", disable_tqdm=True, use_cpu=device == "cpu")
    distill_rows = rows[len(rows) // 2 :] or rows
    start = time.time()
    DistillationTrainer(model=student, args=dargs, train_dataset=TokenBlockDataset(distill_rows), teacher=teacher,
                        callbacks=[recovery]).train()
    distill_s = time.time() - start

    result = {
        "settings": {**cfg, "device": device, "parameters": n_params, "distill_steps": max_steps,
                     "eval_samples": len(samples), "tasks": list(TASKS)},
        "environment": {"torch": torch.__version__, "transformers": transformers.__version__,
                        "python": platform.python_version(),
                        "gpu": torch.cuda.get_device_name() if device == "cuda" else None},
        "pretrain": pre, "import_max_logit_gap": gap, "teacher_niah": teacher_niah,
        "student_layer_types": student.config.layer_pattern, "distill_seconds": distill_s,
        "curve": recovery.curve, "total_seconds": time.time() - t0,
    }
    (out / "convert-recovery.json").write_text(json.dumps(result, indent=1))
    lines = [
        "# Conversion to a 1:1 sliding-window hybrid and recovery by distillation",
        "",
        f"`python benchmarks/convert_recovery.py{' --smoke' if args.smoke else ''} --out {args.out}` — "
        f"{result['environment']['gpu'] or 'CPU'}, torch {torch.__version__}, transformers {transformers.__version__}.",
        "",
        f"Teacher: stock Qwen3ForCausalLM, {n_params / 1e6:.1f}M parameters, pretrained {pre['seconds']:.0f} s "
        f"({pre['steps']} steps, {pre['tokens'] / 1e6:.1f}M tokens) on offline text + needle documents; imported "
        f"into hybrid_hf with a max logit gap of {gap:.1e}. NIAH ({', '.join(TASKS)}, lengths "
        f"{cfg['lengths']}, {len(samples)} prompts): **{teacher_niah:.2f}**.",
        "",
        f"Student: layers {student.config.layer_pattern} (S = sliding window of {cfg['window']} keys, no new "
        f"parameters), distilled with KL on packed rows for {max_steps} steps ({distill_s:.0f} s).",
        "",
        "| step | held-out KL(teacher ‖ student) | NIAH |",
        "|---:|---:|---:|",
    ]
    lines += [f"| {pt['step']} | {pt['kl']:.4f} | {pt['niah']:.2f} |" for pt in recovery.curve]
    (out / "convert-recovery.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-len(recovery.curve) - 2 :]))
    print(f"total {time.time() - t0:.0f} s -> {out}")
    if not math.isfinite(recovery.curve[-1]["kl"]):
        raise SystemExit("distillation diverged (KL is not finite)")
    return result


if __name__ == "__main__":
    main()
