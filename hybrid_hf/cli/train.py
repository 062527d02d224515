"""``hybrid-hf train``: pretrain or fine-tune a model folder on a text/jsonl file with transformers.Trainer."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import validation as check

EXAMPLES = """examples:
  # pretrain the model made by `hybrid-hf init` on a text file, eval and checkpoint every 200 steps
  hybrid-hf train runs/tiny --data corpus.txt --output-dir runs/tiny-pt --max-steps 1000 --eval-fraction 0.05
  # LoRA fine-tune (default targets), bf16, gradient checkpointing, 4 x 2 accumulated rows per step
  hybrid-hf train runs/tiny-pt/final --data chat.jsonl --output-dir runs/ft --lora --bf16 \\
      --gradient-checkpointing --batch-size 4 --grad-accum 2
  # resume the last checkpoint of an interrupted run
  hybrid-hf train runs/tiny --data corpus.txt --output-dir runs/tiny-pt --max-steps 1000 --resume
  # several GPUs: the same command under accelerate (DDP or FSDP2 config)
  accelerate launch --config_file benchmarks/fsdp/fsdp2.yaml -m hybrid_hf.cli.main train runs/s1 --data c.txt --output-dir runs/s1-pt

Text files hold one document per paragraph (blank-line separated); jsonl files one document per line in --text-field.
Documents are tokenized, ended with eos and packed into rows of --block-size tokens whose position ids restart at
every document (no attention across documents). The result is in OUTPUT_DIR/final (LoRA: merged; the adapter alone
in OUTPUT_DIR/adapter) with metrics in OUTPUT_DIR/train_results.json.
"""


LORA_DEFAULTS = {"lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "lora_targets": None}


def register(subparsers: argparse._SubParsersAction) -> None:
    from transformers import SchedulerType

    p = subparsers.add_parser(
        "train",
        help="pretrain or fine-tune on a text/jsonl file (Trainer: progress bar, eval, checkpoints)",
        description="Train MODEL_DIR (from `hybrid-hf init`, a previous run, or any saved causal LM with a tokenizer) "
        "on a text or jsonl file with transformers.Trainer: progress bar, periodic evaluation and checkpoints, exact "
        "resume.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL_DIR", type=check.model_source, help="model folder with config, weights and tokenizer")
    p.add_argument("--data", required=True, metavar="FILE", type=check.existing_file, help="training text (.txt) or jsonl (.jsonl) file")
    p.add_argument("--output-dir", required=True, type=check.output_folder, help="folder for checkpoints, logs and the final model")
    p.add_argument("--text-field", default="text", help="field of jsonl rows holding the text (default: text)")
    g = p.add_argument_group("evaluation")
    held_out = g.add_mutually_exclusive_group()
    held_out.add_argument("--eval-data", metavar="FILE", type=check.existing_file, help="held-out text/jsonl file")
    held_out.add_argument("--eval-fraction", type=check.fraction, default=0.0,
                          help="hold out this fraction of --data documents, in [0, 1) (default: 0)")
    g.add_argument("--eval-steps", type=check.positive_int, help="evaluate every N steps (default: --save-steps)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--block-size", type=check.block_size, default=512, help="tokens per packed row (default: 512)")
    g.add_argument("--batch-size", type=check.positive_int, default=8, help="rows per device and micro-batch (default: 8)")
    g.add_argument("--grad-accum", type=check.positive_int, default=1, help="gradient accumulation steps (default: 1)")
    g.add_argument("--lr", type=check.positive_float, default=1e-3, help="peak learning rate (default: 1e-3; use ~2e-4 for LoRA)")
    g.add_argument("--weight-decay", type=check.non_negative_float, default=0.1, help="AdamW weight decay (default: 0.1)")
    g.add_argument("--warmup-steps", type=check.non_negative_int, default=10, help="linear warmup steps (default: 10)")
    g.add_argument("--scheduler", default="cosine", choices=[s.value for s in SchedulerType], metavar="NAME",
                   help=f"transformers lr_scheduler_type: {', '.join(s.value for s in SchedulerType)} (default: cosine)")
    g.add_argument("--max-steps", type=check.max_steps, default=-1, help="optimizer steps; -1 uses --epochs (default: -1)")
    g.add_argument("--epochs", type=check.positive_float, default=1.0, help="epochs when --max-steps is -1 (default: 1)")
    g.add_argument("--bf16", action="store_true", help="bf16 mixed precision")
    g.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    g.add_argument("--no-reset-positions", action="store_true",
                   help="pack as contiguous text (positions do not restart at documents)")
    g.add_argument("--seed", type=check.seed, default=0, help="seed for data order and dropout (default: 0)")
    g = p.add_argument_group("LoRA")
    g.add_argument("--lora", action="store_true", help="train LoRA adapters instead of all weights")
    g.add_argument("--lora-r", type=check.positive_int, default=LORA_DEFAULTS["lora_r"], help="LoRA rank (default: 8)")
    g.add_argument("--lora-alpha", type=check.positive_int, default=LORA_DEFAULTS["lora_alpha"], help="LoRA alpha (default: 16)")
    g.add_argument("--lora-dropout", type=check.fraction, default=LORA_DEFAULTS["lora_dropout"], help="LoRA dropout, in [0, 1) (default: 0)")
    g.add_argument("--lora-targets", type=check.name_list,
                   help="comma-separated module names (default: hybrid_hf's registered targets)")
    g = p.add_argument_group("distillation (heal a converted model)")
    g.add_argument("--teacher", metavar="FOLDER", type=check.model_source,
                   help="train on KL to this model's next-token distribution instead of the labels (e.g. the model "
                   "before `hybrid-hf convert`); same vocabulary required")
    g.add_argument("--temperature", type=check.positive_float, default=1.0, help="softmax temperature of the KL (default: 1)")
    g.add_argument("--ce-weight", type=check.non_negative_float, default=0.0,
                   help="add this weight times the label cross-entropy to the KL (default: 0)")
    g.add_argument("--hidden-mse-layers", metavar="I,J,...", type=check.index_list, default=[],
                   help="also match these hidden states (indices into output_hidden_states) by MSE")
    g = p.add_argument_group("logging and checkpoints")
    g.add_argument("--logging-steps", type=check.positive_int, default=10, help="log the loss every N steps (default: 10)")
    g.add_argument("--save-steps", type=check.positive_int, default=200, help="checkpoint every N steps (default: 200)")
    g.add_argument("--save-total-limit", type=check.positive_int, default=3, help="checkpoints kept (default: 3)")
    # const is not a string, so argparse does not pass it through `type`
    g.add_argument("--resume", nargs="?", const=True, metavar="CHECKPOINT", type=check.existing_folder,
                   help="resume from CHECKPOINT, or with no value from the last one in --output-dir")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    g.add_argument("--report-to", default="none", help="Trainer report_to, e.g. tensorboard (default: none)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer
    from transformers.trainer_utils import get_last_checkpoint

    from ..training import apply_lora, causal_lm_dataset, evaluate_causal_lm, split_documents, training_arguments

    out = Path(args.output_dir)
    _check_option_combinations(args)
    docs = check.load_documents(args.data, args.text_field, "--data")
    if args.eval_data:
        train_docs, eval_docs = docs, check.load_documents(args.eval_data, args.text_field, "--eval-data")
    else:
        train_docs, eval_docs = split_documents(docs, args.eval_fraction)
        if args.eval_fraction and not eval_docs:
            raise check.CLIError(f"--eval-fraction {args.eval_fraction} needs at least 2 documents in --data "
                                 f"({len(docs)} found)")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    check.check_block_size(args.block_size, model.config)
    reset = not args.no_reset_positions
    train_ds = causal_lm_dataset(tokenizer, train_docs, args.block_size, reset_positions=reset)
    eval_ds = causal_lm_dataset(tokenizer, eval_docs, args.block_size, reset_positions=reset) if eval_docs else None
    print(f"train: {len(train_docs)} documents -> {len(train_ds)} rows of {args.block_size} tokens"
          + (f"; eval: {len(eval_docs)} documents -> {len(eval_ds)} rows" if eval_ds else ""))

    if args.lora:
        model = apply_lora(model, r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout,
                           target_modules=args.lora_targets)
        model.print_trainable_parameters()
    targs = training_arguments(
        str(out),
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        lr_scheduler_type=args.scheduler,
        max_steps=args.max_steps,
        num_train_epochs=args.epochs,
        bf16=args.bf16,
        gradient_checkpointing=args.gradient_checkpointing,
        logging_steps=args.logging_steps,
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        eval_strategy="steps" if eval_ds is not None else "no",
        eval_steps=args.eval_steps or args.save_steps,
        seed=args.seed,
        data_seed=args.seed,
        disable_tqdm=args.no_progress,
        report_to=args.report_to,
    )
    trainer_kwargs = {}
    trainer_cls = Trainer
    if args.teacher:
        from ..training import DistillationTrainer

        trainer_cls = DistillationTrainer
        trainer_kwargs = dict(teacher=AutoModelForCausalLM.from_pretrained(args.teacher), temperature=args.temperature,
                              ce_weight=args.ce_weight, hidden_layers=args.hidden_mse_layers)
    trainer = trainer_cls(model=model, args=targs, train_dataset=train_ds, eval_dataset=eval_ds,
                          processing_class=tokenizer, **trainer_kwargs)
    resume = str(args.resume) if args.resume not in (None, True) else None
    if args.resume is True:
        resume = get_last_checkpoint(str(out)) if out.is_dir() else None
        if resume is None:
            print(f"no checkpoint in {str(out)!r}; starting from scratch")
    result = trainer.train(resume_from_checkpoint=resume)

    metrics = {"train": result.metrics, "log_history": trainer.state.log_history}
    if eval_ds is not None:  # on every rank: a sharded (FSDP) model needs all of them for a forward pass
        metrics["eval"] = evaluate_causal_lm(trainer.model, eval_ds, args.batch_size)
    final = out / "final"
    if args.lora:
        trainer.save_model(str(out / "adapter"))
        if trainer.is_fsdp_enabled:
            print(f"adapter saved to {out / 'adapter'}; merge it on one process (peft merge_and_unload)")
        elif trainer.is_world_process_zero():
            trainer.model.merge_and_unload().save_pretrained(final)
    else:
        trainer.save_model(str(final))  # every rank takes part in gathering sharded weights
    if not trainer.is_world_process_zero():
        return 0
    tokenizer.save_pretrained(final)
    if "eval" in metrics:
        print(f"eval loss {metrics['eval']['loss']:.4f}, perplexity {metrics['eval']['perplexity']:.2f}")
    (out / "train_results.json").write_text(json.dumps(metrics, indent=1))
    print(f"final model: {final}")
    return 0


def _check_option_combinations(args: argparse.Namespace) -> None:
    """Options that would be silently ignored are errors."""
    lora = [f"--{name.replace('_', '-')}" for name, default in LORA_DEFAULTS.items() if getattr(args, name) != default]
    if lora and not args.lora:
        raise check.CLIError(f"{', '.join(lora)} only apply with --lora")
    if args.eval_steps is not None and not (args.eval_data or args.eval_fraction):
        raise check.CLIError("--eval-steps needs an evaluation set (--eval-data or --eval-fraction)")
