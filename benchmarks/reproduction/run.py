"""Small-scale reproduction of the paper's claims, with seeds and confidence intervals (library:
``hybrid_hf.reproduction``; statistics: ``hybrid_hf.analysis.statistics``; loop: ``hybrid_hf.training.loop``;
data: ``hybrid_hf.data.mixture`` and ``hybrid_hf.data.docstrings``).

  python benchmarks/reproduction/run.py all --smoke --out OUT                       # CPU, whole pipeline, < 60 s
  python benchmarks/reproduction/run.py pilot --out $OUT --budget-s 300             # pick the model size and steps
  python benchmarks/reproduction/run.py all --out $OUT --seeds 0 1 2 3 --size d256 --steps 1500 --budget-s 500
  python benchmarks/reproduction/run.py report --out DIR --runs CALL1 CALL2 ...     # combine returned runs

``--profile docs`` adds ~36M characters of installed documentation to the docstring prose (Linux kernel, Python
and Perl docs; ``bash benchmarks/reproduction/fetch_text.sh runs/text`` unpacks them from Debian's packages, then
``--text-root runs/text/usr/share``), so long runs repeat the natural text less (``main``: ~33 passes in 3000 steps,
``docs``: ~7).

``benchmarks/reproduction/step_time.py`` measures one run's step and evaluation cost (eager / compiled, batch,
P concurrent processes) to size a main call. ``--compile`` torch.compiles each run's training step.

``--answer-weight W`` (pilot, all, train) weighs the needle answers' tokens W-fold in the training loss (a deviation
from the paper's plain LM loss, applied to every arm; see ``hybrid_hf.reproduction.study``).

``all`` prepares the data once (docstring prose of the installed Python code, held-out split, tokenizer), then
trains every (arm, seed) as its own process on the one GPU, concurrently, and writes OUT/runs.jsonl (raw per-seed
results), OUT/environment.json, OUT/log.jsonl and (if scipy and matplotlib are installed) the report. Every call is
self-contained; more seeds come from more calls with other ``--seeds``, combined by ``report``. ``train`` runs one
(arm, seed) and takes ``--checkpoint``/``--resume`` to continue a run across calls where the checkpoint survives.
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

from hybrid_hf.reproduction import (  # noqa: E402
    ARMS,
    MODEL_SIZES,
    PROFILES,
    load_runs,
    loss_statement,
    prepare,
    run_arm,
    settings_for,
    write_report,
)

DEFAULT_ARMS = ("full", "swa128", "swa512", "swa2048", "swa128-nope")


def environment() -> dict:
    import torch
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "cuda": torch.version.cuda, "cpu_count": os.cpu_count(), "argv": sys.argv}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_memory_mib"] = torch.cuda.get_device_properties(0).total_memory // 2**20
    try:
        env["git"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                    cwd=Path(__file__).parent).stdout.strip() or None
    except OSError:
        env["git"] = None
    for mod in ("triton", "fla", "scipy", "matplotlib"):
        try:
            env[mod] = __import__(mod).__version__
        except ImportError:
            env[mod] = None
    return env


def overrides(args) -> dict:
    return {"size": args.size, "steps": args.steps, "batch": args.batch, "seq_len": args.seq_len,
            "eval_every": args.eval_every, "lr": args.lr, "answer_weight": args.answer_weight,
            "compile": True if args.compile else None, "text_root": args.text_root}


def launch(args, jobs: list[tuple[str, str, int]], work: Path, out: Path, deadline: float) -> dict:
    """One training process per (size, arm, seed), all at once; returns exit codes."""
    procs = {}
    env = {**os.environ, "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "OMP_NUM_THREADS": "1"}
    for size, arm, seed in jobs:
        cmd = [sys.executable, __file__, "train", "--arm", arm, "--seed", str(seed), "--work", str(work),
               "--profile", args.profile, "--size", size, "--result", str(work / "results" / f"{size}-{arm}-{seed}.json"),
               "--deadline", str(deadline), "--log", str(out / "log.jsonl")]
        for flag in ("steps", "batch", "seq_len", "eval_every", "lr", "answer_weight", "text_root"):
            if getattr(args, flag) is not None:
                cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        if args.compile:
            cmd += ["--compile"]
        if args.no_final:
            cmd += ["--no-final", "--final-reserve-s", str(args.final_reserve_s)]
        if args.checkpoint_dir:
            cmd += ["--checkpoint", str(Path(args.checkpoint_dir) / f"{size}-{arm}-{seed}.pt"), "--resume"]
        procs[f"{size}-{arm}-{seed}"] = subprocess.Popen(cmd, env=env)
    return {k: p.wait() for k, p in procs.items()}


def cmd_train(args) -> None:
    import torch

    torch.set_num_threads(1)  # many runs share the machine's cores
    s = settings_for(args.profile, **overrides(args))
    run_arm(args.arm, args.seed, args.work, s, args.result, checkpoint=args.checkpoint, resume=args.resume,
            deadline=args.deadline, final_reserve_s=args.final_reserve_s, log_path=args.log, final=not args.no_final)


def cmd_all(args, pilot: bool = False) -> None:
    t0 = time.time()
    out, work = Path(args.out), Path(args.work or Path(args.out).resolve().parent / "repro-work")
    out.mkdir(parents=True, exist_ok=True)
    sizes = args.sizes if pilot else [args.size or settings_for(args.profile).size]
    s = settings_for(args.profile, **{**overrides(args), "size": sizes[0]})
    info = prepare(work, s, workers=os.cpu_count() or 1).info
    print(json.dumps({"prepared": info}), flush=True)
    deadline = t0 + args.budget_s
    jobs = [(size, arm, seed) for size in sizes for arm in args.arms for seed in args.seeds]
    codes = launch(args, jobs, work, out, deadline)
    runs = [json.loads(p.read_text()) for p in sorted((work / "results").glob("*.json"))
            if p.stem.split("-", 1)[0] in sizes]
    with (out / "runs.jsonl").open("w") as fh:
        for r in runs:
            fh.write(json.dumps(r) + "\n")
    env = {**environment(), "exit_codes": codes, "wall_s": round(time.time() - t0, 1), "jobs": len(jobs),
           "data": info}
    (out / "environment.json").write_text(json.dumps(env, indent=1))
    if pilot:
        write_pilot(out, runs, len(jobs))
        return
    try:
        write_report(runs, out, commands=[" ".join(sys.argv)], environment=env)
    except ImportError as exc:  # the raw runs are what matters on the device; the report can be rebuilt anywhere
        print(f"report skipped ({exc}); rebuild with: run.py report --runs {out}", flush=True)


def answer_losses(r: dict) -> dict:
    """First- and last-checkpoint answer losses of a run: on the NIAH prompts (mean nats per answer token) and in
    the farthest distance bin that has answers at the last checkpoint (``None`` where a record lacks them)."""
    first, last = r["curve"][0], r["curve"][-1]
    by_dist = last.get("answer_loss_by_distance") or {}
    seen = [int(k) for k, v in by_dist.items() if v is not None]
    far = str(max(seen)) if seen else None
    return {"niah_answer_loss_first": first["niah"].get("answer_loss"),
            "niah_answer_loss_last": last["niah"].get("answer_loss"), "far_bin": far,
            "far_answer_loss_first": (first.get("answer_loss_by_distance") or {}).get(far) if far else None,
            "far_answer_loss_last": by_dist.get(far) if far else None}


def write_pilot(out: Path, runs: list[dict], n_procs: int) -> None:
    """Per size: steps/s per process, full-attention emergence, and the steps a main run of 25 processes (5 arms x
    5 seeds... scaled by process count) would reach in 400 s of training, assuming the GPU is shared evenly."""
    from hybrid_hf.analysis.statistics import first_crossing

    rows = {}
    for r in runs:
        size = r["settings"]["size"]
        c = r["curve"]
        e = first_crossing([h["step"] for h in c], [h["niah"]["acc"] for h in c], r["settings"]["niah_threshold"])
        row = rows.setdefault(size, {"params": {}, "runs": []})
        row["params"][r["arm"]] = r["non_embedding_params"]
        row["runs"].append({"arm": r["arm"], "seed": r["seed"], "steps": r["steps_done"],
                            "steps_per_s": r["steps_done"] / max(r["train_s"] + r["eval_s"], 1e-9),
                            "emergence_niah": e, "final_niah": c[-1]["niah"]["acc"], "eval_share":
                            r["eval_s"] / max(r["train_s"] + r["eval_s"], 1e-9), **answer_losses(r)})
    lines = ["# Pilot: which size learns retrieval reliably, and how many steps fit", "",
             f"{n_procs} processes ran concurrently. Projection: a main call with P processes gets about "
             f"{n_procs}/P of a pilot process's speed (GPU shared evenly). {loss_statement(runs)}", "",
             "Answer losses (nats per answer token, step 0 -> last checkpoint) show how close a run got when NIAH "
             "stays low: on the held-out NIAH prompts, and on held-out long documents for the farthest "
             "needle-to-answer distance bin (upper edge in tokens).", "",
             "| size | arm | seed | steps | steps/s | first step NIAH >= 0.5 | final NIAH | NIAH answer loss | "
             "far answer loss (bin) | eval share |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def pair(a, b) -> str:
        return "-" if a is None or b is None else f"{a:.2f} -> {b:.2f}"

    for size, row in rows.items():
        for x in sorted(row["runs"], key=lambda x: (x["arm"], x["seed"])):
            lines.append(f"| {size} | {x['arm']} | {x['seed']} | {x['steps']} | {x['steps_per_s']:.2f} | "
                         f"{'never' if x['emergence_niah'] is None else round(x['emergence_niah'])} | "
                         f"{x['final_niah']:.2f} | {pair(x['niah_answer_loss_first'], x['niah_answer_loss_last'])} | "
                         f"{pair(x['far_answer_loss_first'], x['far_answer_loss_last'])} ({x['far_bin'] or '-'}) | "
                         f"{x['eval_share']:.0%} |")
    lines += ["", "| size | non-emb params (full) | full: all seeds reached | slowest full emergence | projected steps "
              "per run in 400 s with 20 / 25 processes |", "|---|---|---|---|---|"]
    for size, row in rows.items():
        full = [x for x in row["runs"] if x["arm"] == "full"]
        speed = sum(x["steps_per_s"] for x in row["runs"]) / len(row["runs"])
        proj = [int(speed * n_procs / p * 400) for p in (20, 25)]
        reached = full and all(x["emergence_niah"] is not None for x in full)
        slow = max((x["emergence_niah"] or float("inf")) for x in full) if full else float("inf")
        row.update(projected_steps_20=proj[0], projected_steps_25=proj[1], full_reached=bool(reached), slowest=slow)
        lines.append(f"| {size} | {row['params'].get('full', '-'):,} | {bool(reached)} | "
                     f"{'never' if slow == float('inf') else round(slow)} | {proj[0]} / {proj[1]} |")
    ok = [size for size, row in rows.items() if row["full_reached"] and row["slowest"] < 0.6 * row["projected_steps_20"]]
    pick = min(ok, key=lambda z: MODEL_SIZES[z]["hidden_size"]) if ok else None
    if pick:
        steps = rows[pick]["projected_steps_20"] * 9 // 10 // 50 * 50
        lines += ["", f"Recommendation: `--size {pick} --steps {steps}` (smallest size whose full-attention runs all "
                  "reached the criterion before 60% of the projected steps of a 20-process main call)."]
    else:
        lines += ["", "Recommendation: no size met the criterion within 60% of the projected steps; take the size with "
                  "the earliest full-attention emergence, fewer arms (drop gdn) or fewer seeds per call."]
    (out / "pilot.md").write_text("\n".join(lines) + "\n")
    (out / "pilot.json").write_text(json.dumps(rows, indent=1, default=str))
    print("\n".join(lines), flush=True)


def cmd_report(args) -> None:
    runs = load_runs(args.runs)
    envs = []
    for p in map(Path, args.runs):
        f = p / "environment.json" if p.is_dir() else p.with_name("environment.json")
        if f.exists():
            envs.append(json.loads(f.read_text()))
    cmds = [e["argv"] and " ".join(["python3", *e["argv"]]) for e in envs] + [" ".join(["python", *sys.argv])]
    res = write_report(runs, args.out, commands=cmds, environment={"calls": envs} if envs else None)
    print(json.dumps({k: v.get("verdict") for k, v in res.items() if isinstance(v, dict) and "verdict" in v},
                     indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["train", "all", "pilot", "report", "prepare"])
    p.add_argument("--out", help="folder for results (all, pilot, report)")
    p.add_argument("--work", type=Path, help="folder for the prepared data and per-run results (default OUT/../repro-work)")
    p.add_argument("--profile", default="main", choices=list(PROFILES),
                   help="main: docstring prose; docs: + kernel/Python/Perl documentation (see --text-root)")
    p.add_argument("--text-root", help="stands in for /usr/share when reading the docs profile's documentation "
                   "(a folder that benchmarks/reproduction/fetch_text.sh filled)")
    p.add_argument("--smoke", action="store_true", help="= --profile smoke (tiny CPU run of the whole pipeline)")
    p.add_argument("--arms", nargs="+", choices=ARMS, help=f"default {' '.join(DEFAULT_ARMS)} (pilot: full swa128)")
    p.add_argument("--seeds", nargs="+", type=int, help="default 0 1 2 3 (pilot and smoke: 0 1)")
    p.add_argument("--sizes", nargs="+", choices=list(MODEL_SIZES), default=["d256", "d384"], help="pilot sizes")
    p.add_argument("--size", choices=list(MODEL_SIZES))
    p.add_argument("--steps", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--seq-len", type=int)
    p.add_argument("--eval-every", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--answer-weight", type=float,
                   help="loss weight of the needle answers' tokens (default: the profile's, 1 = the paper's plain LM "
                        "loss; > 1 is a deviation from the paper, recorded in every run and in the report)")
    p.add_argument("--compile", action="store_true", help="torch.compile each run's training step (same maths)")
    p.add_argument("--budget-s", type=float, default=500.0, help="wall seconds for the whole call (all, pilot)")
    p.add_argument("--checkpoint-dir", help="all: per-run checkpoints here, resumed when present")
    p.add_argument("--runs", nargs="+", help="report: run result files or folders (runs.jsonl, *.json)")
    # train (one run; what `all` spawns)
    p.add_argument("--arm", choices=ARMS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--result", help="train: result JSON path")
    p.add_argument("--checkpoint", help="train: checkpoint path (written every 4 evaluations and at the end)")
    p.add_argument("--resume", action="store_true", help="train: continue from --checkpoint if it exists")
    p.add_argument("--deadline", type=float, default=float("inf"), help="train: time.time() to stop training by")
    p.add_argument("--final-reserve-s", type=float, default=60.0, help="train: seconds kept for the final evaluation")
    p.add_argument("--log", help="train: append one JSON line per evaluation here")
    p.add_argument("--no-final", action="store_true",
                   help="all, train: skip the final NIAH-by-length evaluation (an intermediate leg of a run chained "
                        "with --checkpoint-dir; the last leg runs it); the final reserve drops to 10 s")
    args = p.parse_args()
    if args.smoke:
        args.profile = "smoke"
        args.sizes = ["tiny"]
        args.size = args.size or "tiny"
        if args.final_reserve_s == 60.0:
            args.final_reserve_s = 5.0
    if args.no_final and args.final_reserve_s == 60.0:
        args.final_reserve_s = 10.0
    pilot = args.command == "pilot"
    args.arms = args.arms or (["full", "swa128"] if pilot else list(DEFAULT_ARMS))
    args.seeds = args.seeds or ([0, 1] if pilot or args.profile == "smoke" else [0, 1, 2, 3])
    if pilot and args.profile == "main":
        args.profile = "pilot"
    if args.command == "train":
        if not (args.arm and args.work and args.result):
            p.error("train needs --arm, --work and --result")
        cmd_train(args)
    elif args.command in ("all", "pilot"):
        if not args.out:
            p.error(f"{args.command} needs --out")
        cmd_all(args, pilot=pilot)
    elif args.command == "prepare":
        if not args.work:
            p.error("prepare needs --work")
        s = settings_for(args.profile, **overrides(args))
        print(json.dumps(prepare(args.work, s, workers=os.cpu_count() or 1).info, indent=1))
    else:
        if not (args.out and args.runs):
            p.error("report needs --out and --runs")
        cmd_report(args)


if __name__ == "__main__":
    main()
