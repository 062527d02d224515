"""Convert a pretrained transformers model into a 1:1 sliding-window hybrid and heal it by distillation, on CPU.

    python examples/convert_and_distill.py --output-dir runs/convert-tiny     # about 10 minutes on one CPU core

Steps: train a byte-level BPE tokenizer offline; train a tiny stock ``Qwen3ForCausalLM`` (random init, made here)
on passkey-retrieval prompts until it finds the pass key in a 64-token haystack; save it as an ordinary transformers
folder; import that folder into hybrid_hf (same logits); turn every other layer into a 16-token sliding window
(zero new parameters; ``--select retrieval`` keeps the layers with the strongest retrieval heads full instead);
distil the hybrid from the original with KL on packed rows, recording the KL and the passkey score as it heals.

Measured with the defaults (CPU, one thread, about 9 minutes): teacher passkey 1.00 (16 prompts); after the
conversion 0.00 with KL 2.10; after 20 / 40 / 60 distillation steps KL 0.66 / 0.52 / 0.48 and passkey 0.19 / 0.44 /
0.25 (partly recovered).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM, Trainer

from hybrid_hf.convert import hybridize, import_model, layer_scores, plan_layer_types, select_full_layers
from hybrid_hf.data import build_corpus, train_tokenizer
from hybrid_hf.evaluation import NEEDLE, REPEATED_HAYSTACK, evaluate_samples, make_sample
from hybrid_hf.hub import layer_diagram
from hybrid_hf.training import (
    DistillationTrainer,
    RecoveryCallback,
    TokenBlockDataset,
    pack_documents,
    training_arguments,
)


def passkey_documents(tokenizer, n: int, length: int, seed: int) -> list[list[int]]:
    """``n`` passkey prompts of ``length`` tokens followed by their answer and eos (the model learns retrieval)."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        s = make_sample("passkey", tokenizer, length, depth=rng.uniform(0.0, 0.8), seed=seed * 1_000_003 + i)
        docs.append(s.input_ids + tokenizer(" " + s.answers[0], add_special_tokens=False)["input_ids"]
                    + [tokenizer.eos_token_id])
    return docs


def answer_rows(tokenizer, docs: list[list[int]], length: int) -> list[dict[str, list[int]]]:
    """One prompt per row, padded; only the answer (after the ``length``-token prompt) is scored, which teaches
    retrieval far faster than scoring the haystack too."""
    width = max(map(len, docs))
    rows = []
    for d in docs:
        pad = width - len(d)
        rows.append({"input_ids": d + [tokenizer.pad_token_id] * pad, "position_ids": list(range(width)),
                     "labels": [-100] * length + d[length:] + [-100] * pad})
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", default="runs/convert-tiny", help="where the teacher, student and results go")
    p.add_argument("--length", type=int, default=64, help="tokens per passkey prompt (default: 64)")
    p.add_argument("--window", type=int, default=16, help="sliding window of the converted layers (default: 16)")
    p.add_argument("--select", choices=["pattern", "retrieval"], default="pattern",
                   help="convert the even layers (pattern SF), or keep the top-retrieval half full (default: pattern)")
    p.add_argument("--teacher-steps", type=int, default=800, help="teacher training steps (default: 800)")
    p.add_argument("--distill-steps", type=int, default=60, help="distillation steps (default: 60)")
    p.add_argument("--eval-every", type=int, default=20, help="measure KL and passkey every N steps (default: 20)")
    p.add_argument("--eval-samples", type=int, default=16, help="held-out passkey prompts (default: 16)")
    p.add_argument("--batch-size", type=int, default=16, help="rows per step (default: 16)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest
    out = Path(args.output_dir)

    texts = [REPEATED_HAYSTACK * 4, NEEDLE.format(key="x", value="1234567") * 4, *build_corpus(max_chars=40_000)]
    tokenizer = train_tokenizer(texts, vocab_size=512)
    rows = lambda docs: pack_documents(docs, 2 * (args.length + 8), pad_token_id=tokenizer.pad_token_id)  # noqa: E731

    # 1. a stock transformers model that can retrieve a pass key
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=192, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id)
    teacher = Qwen3ForCausalLM(config)
    train_rows = answer_rows(tokenizer, passkey_documents(tokenizer, args.teacher_steps * args.batch_size, args.length, 1),
                             args.length)
    targs = training_arguments(str(out / "teacher-run"), max_steps=args.teacher_steps, learning_rate=3e-3,
                               per_device_train_batch_size=args.batch_size, warmup_steps=max(1, args.teacher_steps // 20),
                               weight_decay=0.0, logging_steps=max(1, args.teacher_steps // 5), save_strategy="no",
                               disable_tqdm=True)
    Trainer(model=teacher, args=targs, train_dataset=TokenBlockDataset(train_rows)).train()
    teacher.save_pretrained(out / "teacher")
    tokenizer.save_pretrained(out / "teacher")
    samples = [make_sample("passkey", tokenizer, args.length, depth=d, seed=10_000 + i)
               for i, d in enumerate(torch.linspace(0.0, 0.8, args.eval_samples).tolist())]

    def passkey(model) -> float:
        return sum(r["score"] for r in evaluate_samples(model, tokenizer, samples, max_new_tokens=8)) / len(samples)

    # 2. import the folder: a hybrid_hf model with the same logits
    full = import_model(out / "teacher").eval()
    probe = torch.tensor([samples[0].input_ids])
    with torch.no_grad():
        import_gap = float((full(probe).logits - teacher.eval()(probe).logits).abs().max())
    print(f"teacher passkey {passkey(full):.2f}; imported logits differ by {import_gap:.1e}")

    # 3. convert: sliding windows on half of the layers
    if args.select == "retrieval":
        keep = select_full_layers(layer_scores(full, "retrieval", samples=samples), config.num_hidden_layers // 2)
        types = plan_layer_types(full.config, full_layers=keep)
    else:
        types = plan_layer_types(full.config, pattern="SF")
    student = hybridize(full, types, sliding_window=args.window)
    print(layer_diagram(student.config))

    # 4. heal: KL to the teacher on packed rows, measuring KL and passkey as it goes
    held_out = rows(passkey_documents(tokenizer, 16, args.length, 2))
    kl_batches = [{k: torch.tensor([r[k] for r in held_out[i : i + 4]]) for k in held_out[0]}
                  for i in range(0, len(held_out), 4)]
    recovery = RecoveryCallback(full, kl_batches, every=args.eval_every, niah_samples=samples, tokenizer=tokenizer)
    dargs = training_arguments(str(out / "distill-run"), max_steps=args.distill_steps, learning_rate=1e-3,
                               per_device_train_batch_size=args.batch_size, warmup_steps=0, weight_decay=0.0,
                               logging_steps=max(1, args.eval_every), save_strategy="no", disable_tqdm=True)
    distill_rows = rows(passkey_documents(tokenizer, args.distill_steps * args.batch_size * 2, args.length, 3))
    DistillationTrainer(model=student, args=dargs, train_dataset=TokenBlockDataset(distill_rows), teacher=full,
                        callbacks=[recovery]).train()
    student.save_pretrained(out / "student")
    tokenizer.save_pretrained(out / "student")

    curve = recovery.curve
    result = {"teacher_passkey": passkey(full), "import_max_logit_gap": import_gap, "layer_types": types,
              "window": args.window, "curve": curve}
    for point in curve:
        print(f"step {point['step']:4d}: KL {point['kl']:.4f}, passkey {point['niah']:.2f}")
    (out / "convert_results.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
