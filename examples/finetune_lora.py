"""Fine-tune a hybrid model with transformers.Trainer + PEFT LoRA (default target modules), on CPU.

    python examples/pretrain_tiny.py --output-dir runs/pretrain-tiny
    python examples/finetune_lora.py --base runs/pretrain-tiny/final --output-dir runs/lora-tiny

Without --base a fresh tiny model and tokenizer are made on the spot. The fine-tuning text is the essays shipped
with hybrid_hf (hybrid_hf.data.sample_documents). ``LoraConfig(task_type="CAUSAL_LM")`` needs no target_modules:
importing hybrid_hf registers defaults covering every attention/mixer projection and MLP.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer

import hybrid_hf  # noqa: F401  (registers the model and PEFT's default targets)
from hybrid_hf import HybridConfig, HybridForCausalLM
from hybrid_hf.data import sample_documents, train_tokenizer
from hybrid_hf.training import causal_lm_dataset, evaluate_causal_lm, training_arguments


def load_base(path: str | None):
    if path:
        return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    tokenizer = train_tokenizer(sample_documents(), vocab_size=1024)
    config = HybridConfig.from_preset("swa128", "tiny", vocab_size=len(tokenizer), sliding_window=32,
                                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                      bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(0)
    return HybridForCausalLM(config), tokenizer


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", help="base model folder (default: a fresh tiny model)")
    p.add_argument("--output-dir", default="runs/lora-tiny", help="where the adapter and merged model go")
    p.add_argument("--max-steps", type=int, default=60, help="optimizer steps (default: 60)")
    p.add_argument("--block-size", type=int, default=128, help="tokens per packed row (default: 128)")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank (default: 16)")
    args = p.parse_args(argv)
    out = Path(args.output_dir)

    model, tokenizer = load_base(args.base)
    docs = sample_documents()
    train_ds = causal_lm_dataset(tokenizer, docs[:-2], args.block_size)
    eval_ds = causal_lm_dataset(tokenizer, docs[-2:], args.block_size)
    before = evaluate_causal_lm(model, eval_ds)

    lora = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=args.rank, lora_alpha=2 * args.rank))
    lora.print_trainable_parameters()
    targs = training_arguments(str(out / "checkpoints"), max_steps=args.max_steps, per_device_train_batch_size=8,
                               learning_rate=5e-3, warmup_steps=5, logging_steps=10, save_strategy="no")
    Trainer(model=lora, args=targs, train_dataset=train_ds, processing_class=tokenizer).train()
    after = evaluate_causal_lm(lora, eval_ds)
    print(f"held-out loss {before['loss']:.3f} -> {after['loss']:.3f}")

    # Adapters save and reload; merging gives the same logits as the adapted model.
    lora.save_pretrained(out / "adapter")
    ids = tokenizer("The keeper polished the brass.", return_tensors="pt").input_ids
    lora.eval()
    with torch.no_grad():
        adapted = lora(ids).logits
        base_again, _ = load_base(args.base)
        reloaded = PeftModel.from_pretrained(base_again, out / "adapter").eval()
        reload_gap = float((reloaded(ids).logits - adapted).abs().max())
        merged = lora.merge_and_unload()
        merge_gap = float((merged(ids).logits - adapted).abs().max())
    merged.save_pretrained(out / "merged")
    tokenizer.save_pretrained(out / "merged")
    print(f"max |logit gap|: reloaded adapter {reload_gap:.2e}, merged {merge_gap:.2e}")
    result = {"eval_before": before, "eval_after": after, "reload_gap": reload_gap, "merge_gap": merge_gap}
    (out / "lora_results.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
