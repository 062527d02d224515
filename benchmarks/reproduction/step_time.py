"""Cost of one reproduction run's training step and checkpoint evaluation, to size the main run (GPU).

  python benchmarks/reproduction/step_time.py --out $OUT --arms full swa128 --batches 4 8 --compile both
  python benchmarks/reproduction/step_time.py --out $OUT --concurrent 20 --arms swa128     # aggregate, 20 processes

For every (arm, batch, compile) it trains ``--steps`` steps with ``hybrid_hf.training.train_loop`` on the study's
needle mixture (after ``--warmup`` untimed steps, which include compilation) and times the steps between
synchronisations, then times one ``CheckpointProbe`` evaluation. ``--concurrent P`` starts P processes of the first
configuration at once and reports their summed steps/s (the GPU time-slices between processes; this is what a main
call with P runs gets). Writes OUT/step_time.jsonl and OUT/step_time.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from hybrid_hf import HybridForCausalLM  # noqa: E402
from hybrid_hf.data import NeedleMixture  # noqa: E402
from hybrid_hf.reproduction import (  # noqa: E402
    ARMS,
    MODEL_SIZES,
    CheckpointProbe,
    batch_function,
    model_config,
    prepare,
    settings_for,
)
from hybrid_hf.training import LoopConfig, train_loop  # noqa: E402


def measure(arm: str, batch: int, compile: bool, args) -> dict:
    s = settings_for(args.profile, size=args.size, batch=batch, answer_weight=args.answer_weight)
    prep = prepare(args.work, s)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    torch.compiler.reset()  # every configuration compiles afresh (no recompile limit reached across rows)
    torch.manual_seed(0)
    cfg = model_config(arm, s, len(prep.tokenizer))
    model = HybridForCausalLM(cfg).to(dev)
    mix = NeedleMixture(prep.tokenizer, prep.train_stream, s.seq_len, s.needles, s.long_fraction, seed=0)
    stamps: list[float] = []
    batches = batch_function(mix, s)  # exactly what run_arm trains on

    def batch_fn(step: int):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        return batches(step)

    total = args.warmup + args.steps
    t0 = time.perf_counter()
    train_loop(model, batch_fn, LoopConfig(steps=total + 1, lr=s.learning_rate, warmup=10, compile=compile))
    wall = time.perf_counter() - t0
    timed = stamps[args.warmup:total + 1]
    step_s = (timed[-1] - timed[0]) / (len(timed) - 1)
    full_layers = [i for i, t in enumerate(cfg.layer_types) if t == "full_attention"]
    probe = CheckpointProbe(prep.tokenizer, prep.held_out, s, full_layers)
    model.eval()
    evals = []
    for _ in range(2):  # the first includes warm-up (eager attention weights, new shapes)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        e0 = time.perf_counter()
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            probe(model, 0)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        evals.append(time.perf_counter() - e0)
    tokens = batch * s.seq_len
    return {"arm": arm, "size": s.size, "batch": batch, "seq_len": s.seq_len, "compile": compile,
            "answer_weight": s.answer_weight, "step_ms": round(1000 * step_s, 2),
            "steps_per_s": round(1 / step_s, 3), "tok_per_s": round(tokens / step_s), "first_steps_s":
            round(wall - step_s * args.steps, 1), "eval_s": round(evals[-1], 2), "eval_first_s": round(evals[0], 2),
            "eval_in_steps": round(evals[-1] / step_s, 1),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if dev.type == "cuda" else None}


def concurrent(args) -> list[dict]:
    """P processes of the first configuration at once; each writes its row, summed here."""
    out = Path(args.out)
    procs = []
    for i in range(args.concurrent):
        cmd = [sys.executable, __file__, "--out", str(out / f"proc{i}"), "--work", str(args.work), "--arms",
               args.arms[0], "--batches", str(args.batches[0]), "--compile", "on" if args.compile == "on" else "off",
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--size", args.size, "--profile",
               args.profile, "--answer-weight", str(args.answer_weight)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen(cmd, env=env))
    codes = [p.wait() for p in procs]
    rows = [json.loads(line) for i in range(args.concurrent) if (out / f"proc{i}" / "step_time.jsonl").exists()
            for line in (out / f"proc{i}" / "step_time.jsonl").read_text().splitlines()]
    agg = {"concurrent": args.concurrent, "exit_codes": codes, "arm": args.arms[0], "batch": args.batches[0],
           "compile": args.compile == "on", "sum_steps_per_s": round(sum(r["steps_per_s"] for r in rows), 2),
           "sum_tok_per_s": sum(r["tok_per_s"] for r in rows), "per_process_step_ms": [r["step_ms"] for r in rows]}
    return [agg]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--work", type=Path, help="prepared data (default OUT/../repro-work, shared with run.py)")
    p.add_argument("--profile", default="main", choices=["smoke", "pilot", "main"])
    p.add_argument("--size", default="d256", choices=list(MODEL_SIZES))
    p.add_argument("--arms", nargs="+", default=["full", "swa128", "swa2048", "swa128-nope"], choices=ARMS)
    p.add_argument("--batches", nargs="+", type=int, default=[8])
    p.add_argument("--compile", default="off", choices=["off", "on", "both"])
    p.add_argument("--answer-weight", type=float, default=5.0)
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    p.add_argument("--concurrent", type=int, default=0, help="P > 0: P processes of the first configuration")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.work = args.work or out.resolve().parent / "repro-work"
    if args.concurrent:
        rows = concurrent(args)
    else:
        modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
        rows = []
        for arm in args.arms:
            for batch in args.batches:
                for comp in modes:
                    row = measure(arm, batch, comp, args)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    env = {"python": platform.python_version(), "torch": torch.__version__, "argv": sys.argv,
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    with (out / "step_time.jsonl").open("w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    keys = list(rows[0])
    lines = ["# Reproduction step cost", "", f"Command: `python {' '.join(sys.argv)}`; environment: {env}", "",
             "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k)) for k in keys) + " |" for r in rows]
    (out / "step_time.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
