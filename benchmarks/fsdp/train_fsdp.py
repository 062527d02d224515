"""Train a hybrid_hf model through accelerate (single device, DDP or FSDP2) and log the global-batch loss per step.

Every run sees the same global batch at every step, whatever the number of processes: rank ``r`` of ``W`` takes
rows ``[r*G/W, (r+1)*G/W)`` of the step's ``G`` rows. Each rank's loss is its summed token loss divided by the
token count of the whole global batch (the model's ``num_items_in_batch``) times ``W``, because DDP and FSDP
average gradients over ranks; the gradient is then that of the global-batch mean, as on one device.

    accelerate launch --config_file benchmarks/fsdp/fsdp2.yaml benchmarks/fsdp/train_fsdp.py --out run.json

Data: bytes of the offline corpus (``hybrid_hf.data.build_corpus``), so no tokenizer or network is needed.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from hybrid_hf import HybridConfig, HybridForCausalLM
from hybrid_hf.data import build_corpus

BYTE_OFFSET = 3  # ids 0-2 are pad/eos/bos


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="swa128", help="hybrid_hf preset (default: swa128)")
    p.add_argument("--size", default="s1", help="preset size s1..s5 or tiny (default: s1)")
    p.add_argument("--seq-len", type=int, default=1024, help="tokens per row (default: 1024)")
    p.add_argument("--global-batch", type=int, default=16, help="rows per optimizer step over all ranks (default: 16)")
    p.add_argument("--steps", type=int, default=50, help="optimizer steps (default: 50)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default: 1e-3)")
    p.add_argument("--warmup", type=int, default=5, help="linear warmup steps before cosine decay (default: 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights (default: 0)")
    p.add_argument("--attention-kernel", default="sdpa", help="config.attention_kernel (default: sdpa)")
    p.add_argument("--max-chars", type=int, default=4_000_000, help="corpus budget in characters")
    p.add_argument("--label", default=None, help="name of the run in the output (default: derived)")
    p.add_argument("--out", required=True, help="JSON file to write (rank 0)")
    return p.parse_args(argv)


def byte_rows(seq_len: int, n_rows: int, max_chars: int) -> tuple[torch.Tensor, int]:
    """``n_rows`` rows of ``seq_len`` byte tokens from the corpus, repeating it if it is short."""
    text = "\n\n".join(build_corpus(max_chars=max_chars)).encode("utf-8")
    ids = torch.frombuffer(bytearray(text), dtype=torch.uint8).long() + BYTE_OFFSET
    need = seq_len * n_rows
    if ids.numel() < need:
        ids = ids.repeat(math.ceil(need / ids.numel()))
    return ids[:need].view(n_rows, seq_len), len(text)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    accelerator = Accelerator()
    world, rank = accelerator.num_processes, accelerator.process_index
    if args.global_batch % world:
        raise SystemExit(f"--global-batch={args.global_batch} must be divisible by the {world} processes")
    local = args.global_batch // world

    rows, corpus_bytes = byte_rows(args.seq_len, args.steps * args.global_batch, args.max_chars)
    set_seed(args.seed)
    config = HybridConfig.from_preset(
        args.preset,
        args.size,
        vocab_size=256 + 128,
        max_position_embeddings=args.seq_len,
        attention_kernel=args.attention_kernel,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    model = HybridForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)

    def lr_lambda(step: int) -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    # Not passed to prepare(): accelerate would step it once per process and per step.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()

    losses, grad_norms, step_times = [], [], []
    for step in range(args.steps):
        batch = rows[step * args.global_batch : (step + 1) * args.global_batch]
        mine = batch[rank * local : (rank + 1) * local].to(accelerator.device)
        global_tokens = batch.shape[0] * (batch.shape[1] - 1)  # every shifted label counts
        torch.cuda.synchronize() if torch.cuda.is_available() else None
        t0 = time.perf_counter()
        with accelerator.autocast():
            out = model(input_ids=mine, labels=mine, num_items_in_batch=global_tokens, use_cache=False)
        # out.loss = this rank's token-loss sum / global tokens; ranks' gradients are averaged, hence * world.
        accelerator.backward(out.loss * world)
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), 1.0)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP2: DTensor
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        global_loss = accelerator.reduce(out.loss.detach().float(), reduction="sum")
        torch.cuda.synchronize() if torch.cuda.is_available() else None
        step_times.append(time.perf_counter() - t0)
        losses.append(float(global_loss))
        grad_norms.append(float(grad_norm))
        if accelerator.is_main_process and (step % 10 == 0 or step == args.steps - 1):
            print(f"[{args.label or 'run'}] step {step + 1}/{args.steps} loss {losses[-1]:.4f} "
                  f"grad_norm {grad_norms[-1]:.3f} {step_times[-1] * 1000:.0f} ms", flush=True)

    state = accelerator.state
    if accelerator.is_main_process:
        fsdp_version = getattr(getattr(state, "fsdp_plugin", None), "fsdp_version", None)
        result = {
            "label": args.label or f"{state.distributed_type.value.lower()}-{world}",
            "distributed_type": state.distributed_type.value,
            "fsdp_version": fsdp_version,
            "num_processes": world,
            "mixed_precision": state.mixed_precision,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__,
            "preset": args.preset,
            "size": args.size,
            "parameters": n_params,
            "seq_len": args.seq_len,
            "global_batch": args.global_batch,
            "steps": args.steps,
            "lr": args.lr,
            "attention_kernel": args.attention_kernel,
            "corpus_bytes": corpus_bytes,
            "losses": losses,
            "grad_norms": grad_norms,
            "median_step_s": sorted(step_times)[len(step_times) // 2],
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main()
