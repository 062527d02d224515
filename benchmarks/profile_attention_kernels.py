"""Where an attention fwd+bwd's time goes, per kernel: wall time vs GPU kernel time vs host (launch) time.

For each shape and each kernel this machine can run (FlexAttention, hybrid_hf's Triton window kernel, flash-attn /
FlashAttention-4 when installed, SDPA for full causal layers) it records

- ``wall_ms``: one fwd+bwd as the training loop sees it (median of rounds, synchronised);
- ``gpu_ms``: the sum of the CUDA kernels' device time per fwd+bwd (``torch.profiler``);
- ``host_ms``: the Python/launch time per fwd+bwd in a loop while the GPU is kept busy (nothing waits on the GPU),
  i.e. the floor below which the call cannot go however fast its kernels are.

``wall_ms`` close to ``host_ms`` and well above ``gpu_ms`` means the kernel is launch-bound at that size. These
numbers back the ``attention_kernel="auto"`` choice in ``hybrid_hf/modeling/attention_dispatch.py``.

Shapes: the ``bench_speed.py`` kernel shapes (1 x 16 heads x d=128, N in {8k, 32k}, W in {128, 512, 2048, full}) and
the model's training shape (2 x 8192 tokens, 16 query / 8 KV heads, d=64, W in {128, 512, full}).

Run (GPU):  python benchmarks/profile_attention_kernels.py --out benchmarks/results --tag h200
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

from bench_speed import environment, timeit  # noqa: E402

from hybrid_hf.modeling.attention_dispatch import available_kernels  # noqa: E402
from hybrid_hf.modeling.attention_kernels import causal_attention  # noqa: E402

# (label, batch, q heads, kv heads, head dim, tokens, window)
CASES = [("kernel", 1, 16, 16, 128, n, w) for n in (8192, 32768) for w in (128, 512, 2048, None)]
CASES += [("model", 2, 16, 8, 64, 8192, w) for w in (128, 512, None)]


def kernels_for(window: int | None) -> list[str]:
    """Every kernel this GPU can run; SDPA (an O(T^2) boolean mask for windows) only for full causal layers."""
    return [k for k in available_kernels(torch.device("cuda")) if k != "sdpa" or window is None]


def wall_ms(fn, rounds: int = 3, iters: int = 20) -> float:
    """Median over rounds of the synchronised time per call (``bench_speed.timeit``), in ms."""
    return sorted(timeit(fn, 1, iters) for _ in range(rounds))[rounds // 2] * 1e3


def host_ms(fn, iters: int = 20) -> float:
    """Launch time per call of ``fn`` in steady state, with the GPU busy ahead of the calls (``torch.cuda._sleep``)
    so that no call waits on the device: the floor below which a call cannot go however fast its kernels are."""
    fn()
    torch.cuda.synchronize()
    torch.cuda._sleep(400_000_000)  # ~0.2 s of GPU spinning queued ahead of the calls
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    elapsed = time.perf_counter() - t0
    torch.cuda.synchronize()
    return elapsed / iters * 1e3


def gpu_ms(fn, iters: int = 10) -> float:
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    # as the profiler's own "Self CUDA time total": device-side events, user annotations excluded
    total_us = sum(e.self_device_time_total for e in prof.key_averages()
                   if e.device_type == DeviceType.CUDA and not e.is_user_annotation)
    return total_us / iters / 1e3


def measure(label: str, batch: int, hq: int, hkv: int, d: int, n: int, window: int | None) -> list[dict]:
    dev, dtype = "cuda", torch.bfloat16
    q = torch.randn(batch, hq, n, d, device=dev, dtype=dtype, requires_grad=True)
    k, v = (torch.randn(batch, hkv, n, d, device=dev, dtype=dtype, requires_grad=True) for _ in range(2))
    grad = torch.randn(batch, n, hq, d, device=dev, dtype=dtype)
    rows = []
    for kernel in kernels_for(window):
        def step(kernel=kernel):
            causal_attention(q, k, v, window=window, scale=d**-0.5, kernel=kernel).backward(grad)

        try:
            step()  # compile / autotune outside the timings
            row = dict(shape=label, batch=batch, heads=hq, kv_heads=hkv, head_dim=d, N=n, W=window or "full",
                       kernel=kernel, wall_ms=round(wall_ms(step), 3), gpu_ms=round(gpu_ms(step), 3),
                       host_ms=round(host_ms(step), 3))
        except Exception as ex:  # a kernel that cannot run this shape is a result too
            row = dict(shape=label, N=n, W=window or "full", kernel=kernel, error=repr(ex)[:300])
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def markdown(env: dict, rows: list[dict]) -> str:
    lines = ["# Attention kernels: wall vs GPU vs host time per fwd+bwd", "",
             "Environment: " + ", ".join(f"{k}={v}" for k, v in env.items()), "",
             "| shape | B x Hq/Hkv x d | N | W | kernel | wall ms | GPU ms | host ms |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['shape']} | | {r['N']} | {r['W']} | {r['kernel']} | error: {r['error']} | | |")
        else:
            lines.append(f"| {r['shape']} | {r['batch']} x {r['heads']}/{r['kv_heads']} x {r['head_dim']} | {r['N']} |"
                         f" {r['W']} | {r['kernel']} | {r['wall_ms']} | {r['gpu_ms']} | {r['host_ms']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--tag", default="h200")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("profile_attention_kernels.py needs a CUDA GPU.")
    args.out.mkdir(parents=True, exist_ok=True)
    env = environment()
    rows = [row for case in CASES for row in measure(*case)]
    stem = f"attention-kernels-profile-{args.tag}"
    (args.out / f"{stem}.json").write_text(json.dumps({"environment": env, "results": rows}, indent=1))
    text = markdown(env, rows)
    (args.out / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
