"""Pretrain a tiny hybrid model from scratch on offline text, with transformers.Trainer, on CPU.

    python examples/pretrain_tiny.py --output-dir runs/pretrain-tiny          # about a minute or two on 2 CPU cores

Steps: gather text installed on this machine (hybrid_hf.data.build_corpus), train a byte-level BPE tokenizer, build
a 1:1 sliding-window/full-attention model with NoPE on the full-attention layers, pack documents into rows whose
position ids restart per document, train with Trainer (periodic eval, checkpoints), then evaluate and sample.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import Trainer

from hybrid_hf import HybridConfig, HybridForCausalLM
from hybrid_hf.data import build_corpus, train_tokenizer
from hybrid_hf.hub import layer_diagram
from hybrid_hf.training import causal_lm_dataset, evaluate_causal_lm, split_documents, training_arguments


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", default="runs/pretrain-tiny", help="where checkpoints and the model go")
    p.add_argument("--preset", default="swa128-nope", help="architecture preset (default: swa128-nope)")
    p.add_argument("--max-chars", type=int, default=300_000, help="corpus size in characters (default: 300k)")
    p.add_argument("--vocab-size", type=int, default=2048, help="BPE vocabulary (default: 2048)")
    p.add_argument("--window", type=int, default=32, help="sliding window in keys (default: 32)")
    p.add_argument("--block-size", type=int, default=128, help="tokens per packed row (default: 128)")
    p.add_argument("--max-steps", type=int, default=300, help="optimizer steps (default: 300)")
    p.add_argument("--batch-size", type=int, default=16, help="rows per step (default: 16)")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    out = Path(args.output_dir)

    docs = build_corpus(max_chars=args.max_chars)
    train_docs, eval_docs = split_documents(docs, eval_fraction=0.05)
    tokenizer = train_tokenizer(train_docs, vocab_size=args.vocab_size)
    print(f"{len(docs)} documents, {sum(map(len, docs)):,} characters; vocabulary {len(tokenizer)}")

    config = HybridConfig.from_preset(
        args.preset, "tiny",
        vocab_size=len(tokenizer), sliding_window=args.window, max_position_embeddings=args.block_size,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(0)
    model = HybridForCausalLM(config)
    print(layer_diagram(config))

    train_ds = causal_lm_dataset(tokenizer, train_docs, args.block_size)
    eval_ds = causal_lm_dataset(tokenizer, eval_docs, args.block_size)
    before = evaluate_causal_lm(model, eval_ds)
    targs = training_arguments(
        str(out), max_steps=args.max_steps, per_device_train_batch_size=args.batch_size, learning_rate=3e-3,
        warmup_steps=max(1, args.max_steps // 20), logging_steps=max(1, args.max_steps // 10),
        eval_strategy="steps", save_steps=max(1, args.max_steps // 2), save_total_limit=1,
    )
    trainer = Trainer(model=model, args=targs, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer)
    trainer.train()
    after = evaluate_causal_lm(model, eval_ds)
    print(f"held-out loss {before['loss']:.3f} -> {after['loss']:.3f} (perplexity {after['perplexity']:.1f})")

    final = out / "final"
    model.save_pretrained(final)
    tokenizer.save_pretrained(final)
    prompt = tokenizer("The water", return_tensors="pt")
    sample = model.generate(**prompt, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    print("sample:", tokenizer.decode(sample[0]))
    result = {"eval_before": before, "eval_after": after, "model": str(final)}
    (out / "pretrain_results.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
