"""Where a decode step's time goes: per-token CUDA-graph time of one decode step at 32k context, for several ways of
compiling the decoder layers, and the top GPU kernels of one step.

Same shapes as ``bench_speed.py`` (24 layers, hidden 1024, 16/8 heads, head_dim 64, vocab 32000, bf16). Each variant
prefills 32k tokens into a ``HybridStaticCache``, then times 200 replays of the captured decode step (pure GPU time
per token, no per-call capture cost) and, for the default-compiled variant, profiles one step's kernels.

Run (GPU):  python benchmarks/profile_decode.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_speed import environment, ours_config, shapes, swa_pattern  # noqa: E402

from hybrid_hf import HybridForCausalLM  # noqa: E402
from hybrid_hf.generation import fused_decode_weights  # noqa: E402
from hybrid_hf.modeling.attention_kernels import raise_recompile_limits  # noqa: E402
from hybrid_hf.modeling.static_cache import HybridStaticCache  # noqa: E402

VARIANTS: dict[str, dict | None] = {  # torch.compile options of the decode layers (None: eager)
    "eager layers": None,
    "compile (default mode)": {"dynamic": False},
    "compile max-autotune-no-cudagraphs (generate_fast default)": {"dynamic": False,
                                                                   "mode": "max-autotune-no-cudagraphs"},
    "compile max-autotune-no-cudagraphs + Triton flash-decoding": {"dynamic": False,
                                                                   "mode": "max-autotune-no-cudagraphs"},
}
PROFILED = ("(generate_fast default)", "+ Triton flash-decoding")  # variants whose kernels are listed


@torch.inference_mode()
def measure(model: HybridForCausalLM, batch: int, ctx: int, variant: dict | None, profile: bool,
            decode_kernel: str = "torch") -> dict:
    dev, dtype = "cuda", torch.bfloat16
    cache = HybridStaticCache(model.config, batch, ctx + 512, dev, dtype, decode_kernel)  # room for the timed steps
    ids = torch.randint(0, model.config.vocab_size, (batch, ctx), device=dev)
    for start in range(0, ctx, 8192):
        model(ids[:, start : start + 8192], past_key_values=cache, use_cache=True, logits_to_keep=1)
    t0 = time.perf_counter()
    layers = list(model.model.layers)
    if variant is not None:
        raise_recompile_limits()  # one graph per layer
        layers = [torch.compile(layer, **variant) for layer in layers]
    fused = fused_decode_weights(model)
    tok = torch.zeros(batch, 1, dtype=torch.long, device=dev)

    def step() -> torch.Tensor:  # each step appends one token (the cache advances its own position)
        return model.decode_step(tok, cache, layers, fused)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(10):
        step()
    torch.cuda.synchronize()
    eager_ms = (time.perf_counter() - t0) / 10 * 1e3
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for _ in range(10):
        graph.replay()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(200):
        graph.replay()
    torch.cuda.synchronize()
    graph_ms = (time.perf_counter() - t0) / 200 * 1e3
    row = {"compile_s": round(compile_s, 1), "step_ms_no_graph": round(eager_ms, 3),
           "step_ms_graph": round(graph_ms, 3), "tok_s_graph": round(batch * 1e3 / graph_ms, 1)}
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
        kernels = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
        kernels.sort(key=lambda e: -e.device_time_total)
        row["kernels_per_step"] = sum(e.count for e in kernels)
        row["kernel_us_per_step"] = round(sum(e.device_time_total for e in kernels), 1)
        row["top_kernels"] = [
            {"name": e.key[:90], "count": e.count, "total_us": round(e.device_time_total, 1)} for e in kernels[:15]
        ]
    return row


def write(args: argparse.Namespace, env: dict, rows: list[dict]) -> str:
    (args.out / f"decode-profile-{args.tag}.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1))
    lines = ["# Decode step profile (32k context, batch 1, one H200)", "",
             f"Command: `python {' '.join(sys.argv)}`. Environment: {env}.", "",
             "| model | variant | ms/token (CUDA graph) | tok/s | ms/token (no graph) | compile s |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['variant']} | error: {r['error']} | | | |")
        else:
            lines.append(f"| {r['model']} | {r['variant']} | {r['step_ms_graph']} | {r['tok_s_graph']} |"
                         f" {r['step_ms_no_graph']} | {r['compile_s']} |")
    for r in rows:
        if "top_kernels" in r:
            lines += ["", f"## Top kernels of one step: {r['model']}, {r['variant']}", "",
                      f"{r['kernels_per_step']} kernels, {r['kernel_us_per_step']} us of kernel time.", "",
                      "| kernel | count | total us |", "|---|---|---|"]
            lines += [f"| `{k['name']}` | {k['count']} | {k['total_us']} |" for k in r["top_kernels"]]
    (args.out / f"decode-profile-{args.tag}.md").write_text("\n".join(lines) + "\n")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--tag", default="h200")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    s = shapes()
    rows: list[dict] = []
    env = environment()
    for label, lt in (("3:1 SWA-512", swa_pattern(3, s["layers"])), ("all full", ["full_attention"] * s["layers"])):
        torch.manual_seed(0)
        model = HybridForCausalLM(ours_config(lt, s["window"] if "SWA" in label else None)).cuda().bfloat16().eval()
        for name in args.variants:
            try:
                row = measure(model, 1, s["ctx"], VARIANTS[name], profile=name.endswith(PROFILED),
                              decode_kernel="triton" if "Triton" in name else "torch")
            except Exception as ex:  # record and go on with the next variant
                row = {"error": repr(ex)[:400]}
            row = {"model": label, "batch": 1, "ctx": s["ctx"], "variant": name, **row}
            print(json.dumps(row), flush=True)
            rows.append(row)
            write(args, env, rows)
        del model
        torch.cuda.empty_cache()
    print(write(args, env, rows))


if __name__ == "__main__":
    main()
