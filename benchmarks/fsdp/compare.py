"""Compare per-step losses of train_fsdp.py runs against a reference run; write JSON and a Markdown table.

The bf16 noise scale is the gap between the reference (one device, bf16 autocast) and the same run in fp32: a
multi-GPU run whose largest per-step gap to the reference stays within ``--tolerance`` times that scale (or below
``--floor``) matches "within bf16 noise".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def gaps(a: list[float], b: list[float]) -> dict[str, float]:
    d = [abs(x - y) for x, y in zip(a, b)]
    return {"max_abs": max(d), "mean_abs": sum(d) / len(d), "final_abs": d[-1], "final_rel": d[-1] / abs(b[-1])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="JSON files written by train_fsdp.py (missing ones are reported)")
    p.add_argument("--reference", default="single-bf16", help="label of the reference run")
    p.add_argument("--noise", default="single-fp32", help="label of the run that sets the bf16 noise scale")
    p.add_argument("--tolerance", type=float, default=1.5, help="allowed multiple of the noise scale")
    p.add_argument("--floor", type=float, default=0.02, help="gaps below this are always within noise")
    p.add_argument("--json", required=True, help="comparison JSON to write")
    p.add_argument("--markdown", required=True, help="Markdown table to write")
    args = p.parse_args(argv)

    runs, missing = {}, []
    for path in args.runs:
        try:
            r = json.loads(Path(path).read_text())
            runs[r["label"]] = r
        except (OSError, ValueError, KeyError):
            missing.append(path)
    if args.reference not in runs:
        raise SystemExit(f"compare: reference run {args.reference!r} missing; have {sorted(runs)}; unreadable {missing}")
    ref = runs[args.reference]["losses"]
    noise = gaps(runs[args.noise]["losses"], ref)["max_abs"] if args.noise in runs else None
    limit = max(args.floor, args.tolerance * noise) if noise is not None else args.floor
    summary = {"reference": args.reference, "noise_run": args.noise, "noise_max_abs": noise, "limit": limit, "runs": {}}
    for label, r in runs.items():
        g = gaps(r["losses"], ref)
        g["within_bf16_noise"] = label == args.reference or g["max_abs"] <= limit
        summary["runs"][label] = {
            **g,
            "distributed_type": r["distributed_type"],
            "fsdp_version": r.get("fsdp_version"),
            "num_processes": r["num_processes"],
            "mixed_precision": r["mixed_precision"],
            "median_step_s": r["median_step_s"],
            "losses": r["losses"],
        }
    summary["unreadable"] = missing
    Path(args.json).write_text(json.dumps(summary, indent=1))

    first = runs[args.reference]
    n = len(ref)
    steps = sorted({1, *range(10, n + 1, 10), n})
    order = [args.reference] + [k for k in runs if k != args.reference]
    lines = [
        f"# FSDP2 / DDP vs one GPU: `{first['preset']}` at size `{first['size']}` "
        f"({first['parameters'] / 1e6:.1f}M parameters), {first['global_batch']} x {first['seq_len']} tokens per step, "
        f"{first['device']}, torch {first['torch']}",
        "",
        "Loss of the whole global batch at each step (every run sees the same rows at the same step).",
        "",
        "| step | " + " | ".join(order) + " |",
        "|---:|" + "---:|" * len(order),
    ]
    for s in steps:
        lines.append(f"| {s} | " + " | ".join(f"{runs[k]['losses'][s - 1]:.4f}" for k in order) + " |")
    lines += [
        "",
        f"Gaps to `{args.reference}` (bf16 noise scale = max gap of `{args.noise}`: "
        f"{'n/a' if noise is None else f'{noise:.4f}'}; limit {limit:.4f}):",
        "",
        "| run | processes | engine | precision | max abs gap | mean abs gap | final gap (rel) | median step | within bf16 noise |",
        "|---|---:|---|---|---:|---:|---:|---:|---|",
    ]
    for k in order:
        s = summary["runs"][k]
        engine = s["distributed_type"] + (f" v{s['fsdp_version']}" if s["fsdp_version"] else "")
        lines.append(
            f"| {k} | {s['num_processes']} | {engine} | {s['mixed_precision']} | {s['max_abs']:.4f} | "
            f"{s['mean_abs']:.4f} | {s['final_abs']:.4f} ({100 * s['final_rel']:.2f}%) | "
            f"{1000 * s['median_step_s']:.0f} ms | {'yes' if s['within_bf16_noise'] else 'NO'} |"
        )
    if missing:
        lines += ["", "Runs that did not produce results: " + ", ".join(f"`{m}`" for m in missing)]
    Path(args.markdown).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
