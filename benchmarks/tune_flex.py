"""Sliding-window FlexAttention block sizes: fwd+bwd time per (block mask size, kernel tile) against Flex's defaults.

The default block mask uses 128x128 blocks; a window of 128 keys then spans two key blocks per query block, and half
of the computed scores are masked. Smaller key blocks waste less. This measures, for each N and W, the configurations
below (median of 3 interleaved rounds) so that ``attention_kernels`` can use the best one.

Run (GPU):  python benchmarks/tune_flex.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONFIGS: dict[str, tuple[tuple[int, int], dict]] = {
    "default (mask 128x128)": ((128, 128), {}),
    "mask 128x64, BLOCK_N=64": ((128, 64), {"BLOCK_M": 128, "BLOCK_N": 64}),
    "mask 64x64, BLOCK 64x64": ((64, 64), {"BLOCK_M": 64, "BLOCK_N": 64}),
}


def timeit(fn, iters: int = 10) -> float:
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def _case(flex, create_block_mask, d: int, heads: int, n: int, w: int) -> list[dict]:
    rows: list[dict] = []
    q, k, v = (torch.randn(1, heads, n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    g = torch.randn(1, heads, n, d, device="cuda", dtype=torch.bfloat16)
    fns, ref = {}, None
    for name, (block, opts) in CONFIGS.items():
        bm = create_block_mask(lambda b, h, i, j: (i >= j) & (i - j < w), None, None, n, n, device="cuda",
                               BLOCK_SIZE=block)
        kw = {"kernel_options": opts} if opts else {}
        try:
            out = flex(q, k, v, block_mask=bm, scale=d**-0.5, **kw)
            out.backward(g)
        except Exception as ex:  # a tile the kernel refuses: record and skip
            rows.append({"d": d, "N": n, "W": w, "config": name, "error": repr(ex)[:200]})
            continue
        ref = out if ref is None else ref

        def run(bm=bm, kw=kw) -> None:
            flex(q, k, v, block_mask=bm, scale=d**-0.5, **kw).backward(g)

        fns[name] = (run, float((out - ref).abs().max()))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(3):
        for name, (fn, _) in fns.items():
            times[name].append(timeit(fn))
    base = sorted(times["default (mask 128x128)"])[1]
    for name, ts in times.items():
        t = sorted(ts)[1]
        row = {"d": d, "N": n, "W": w, "config": name, "ms": round(t * 1e3, 3), "vs_default": round(t / base, 3),
               "maxdiff": fns[name][1]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    from hybrid_hf.modeling.attention_kernels import raise_recompile_limits

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--head-dims", type=int, nargs="+", default=[128])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    raise_recompile_limits()
    flex = torch.compile(flex_attention, dynamic=False)
    rows = []
    for d in args.head_dims:
        heads = 16
        for n in (8192, 32768):
            for w in (128, 512, 2048):
                rows += _case(flex, create_block_mask, d, heads, n, w)
    (args.out / "tune-flex-h200.json").write_text(json.dumps(rows, indent=1))
    lines = ["# FlexAttention sliding-window block sizes (fwd+bwd, bf16, 16 heads, one H200)", "",
             f"Command: `python {' '.join(sys.argv)}`; torch {torch.__version__}.", "",
             "| head_dim | N | W | config | ms | vs default |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['d']} | {r['N']} | {r['W']} | {r['config']} | {r.get('ms', r.get('error'))} |"
              f" {r.get('vs_default', '')} |" for r in rows]
    (args.out / "tune-flex-h200.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
