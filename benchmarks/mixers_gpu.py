"""GPU check of the recurrent mixers: fla kernels vs the PyTorch reference, and fwd+bwd time vs full attention.

1. Equivalence at T=4096 in bf16: for each recurrence (gated delta rule for Gated DeltaNet, scalar decay for Mamba-2
   and Lightning), the dispatching op (fla on CUDA) against the fp32 chunked reference, forward output and the
   gradients of q, k, v, g (and beta). Tolerance: max |diff| / max |ref| <= 2e-2 (bf16 inputs, fp32 reference).
2. Timing: one mixer layer (hidden 1024) fwd+bwd at 8k and 32k tokens vs a full-attention layer (SDPA causal) of
   the same width, bf16.

Run (GPU, fla wheels carried):  python benchmarks/mixers_gpu.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybrid_hf import HybridConfig  # noqa: E402
from hybrid_hf.modeling import linear_attention as la  # noqa: E402
from hybrid_hf.modeling import linear_attention_dispatch as kernels  # noqa: E402
from hybrid_hf.modeling.attention import HybridAttention  # noqa: E402
from hybrid_hf.modeling.attention_dispatch import LayerPlan  # noqa: E402
from hybrid_hf.modeling.linear_attention_ops import gated_delta_chunked, l2_normalize, scalar_decay_chunked  # noqa: E402
from hybrid_hf.modeling.rotary import HybridRotaryEmbedding  # noqa: E402

RESULTS: list[dict] = []


def emit(**kw) -> None:
    print(json.dumps(kw), flush=True)
    RESULTS.append(kw)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-6))


def equivalence(kind: str, t: int = 4096, h: int = 8, dk: int = 64, dv: int = 64) -> None:
    torch.manual_seed(0)
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: a smoke run of the script itself
    q = torch.randn(1, t, h, dk, device=dev)
    k = l2_normalize(torch.randn(1, t, h, dk, device=dev))
    if kind == "gated_delta":
        q = l2_normalize(q) * dk**-0.5
    v = torch.randn(1, t, h, dv, device=dev)
    g = -torch.rand(1, t, h, device=dev) * 0.1
    beta = torch.rand(1, t, h, device=dev)
    do = torch.randn(1, t, h, dv, device=dev)
    inputs = [q, k, v, g] + ([beta] if kind == "gated_delta" else [])

    def run(fn, tensors):
        leaves = [x.detach().clone().requires_grad_(True) for x in tensors]
        out, _ = fn(*leaves)
        out.float().backward(do)
        return out.detach(), [x.grad for x in leaves]

    ref_fn = gated_delta_chunked if kind == "gated_delta" else scalar_decay_chunked
    fast_fn = kernels.gated_delta_attention if kind == "gated_delta" else kernels.scalar_decay_attention
    ref_out, ref_grads = run(ref_fn, inputs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fast_out, fast_grads = run(fast_fn, [x.bfloat16() for x in inputs])
    fell_back = any("fla" in str(w.message) for w in caught)
    with torch.no_grad():  # forward-only through fla (no backward guard involved)
        fwd_only, _ = fast_fn(*[x.bfloat16() for x in inputs])
    names = ["q", "k", "v", "g", "beta"]
    emit(kind="equivalence", op=kind, T=t, heads=h, fla=kernels.fla_available(), backward_via_reference=fell_back,
         fwd_rel=round(rel(fast_out, ref_out), 5), fwd_only_fla_rel=round(rel(fwd_only, ref_out), 5),
         grad_rel={n: round(rel(a, b), 5) for n, a, b in zip(names, fast_grads, ref_grads)}, tolerance=2e-2)


def fla_gdn_backward_probe() -> None:
    """Does fla's own GDN backward run here? (it refuses on Hopper with triton < 3.7.1)"""
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule

        t, h, d = 256, 4, 64
        q = l2_normalize(torch.randn(1, t, h, d, device="cuda", dtype=torch.bfloat16)).requires_grad_(True)
        k = l2_normalize(torch.randn(1, t, h, d, device="cuda", dtype=torch.bfloat16)).requires_grad_(True)
        v = torch.randn(1, t, h, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        g = (-torch.rand(1, t, h, device="cuda") * 0.1).requires_grad_(True)
        beta = torch.rand(1, t, h, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        o, _ = chunk_gated_delta_rule(q, k, v, g=g, beta=beta, scale=1.0)
        o.sum().backward()
        emit(kind="fla_gdn_backward", ok=True, guard_says_safe=kernels.fla_backward_is_safe(),
             tilelang_backend=kernels.fla_tilelang_backward_available(),
             verified_against_reference=kernels.gated_delta_backward_verified())
    except Exception as ex:
        emit(kind="fla_gdn_backward", ok=False, error=repr(ex)[:300], guard_says_safe=kernels.fla_backward_is_safe(),
             tilelang_backend=kernels.fla_tilelang_backward_available())


def timing(seq: int) -> None:
    base = dict(vocab_size=1000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=2,
                num_attention_heads=16, max_position_embeddings=1 << 17)
    x = torch.randn(1, seq, 1024, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    row = {"kind": "timing", "T": seq}
    for name in ("full", "gdn", "mamba2", "lightning"):
        cfg = HybridConfig.from_preset(name, size="s4", **{k: v for k, v in base.items() if k != "hidden_size"})
        if name == "full":
            layer = HybridAttention(cfg, 0).cuda().bfloat16()
            rope = HybridRotaryEmbedding(cfg).cuda()
            pos = torch.arange(seq, device="cuda")[None]
            cos_sin = rope(x, pos)["full_attention"]
            plan = LayerPlan("sdpa")

            def forward(layer=layer, cos_sin=cos_sin, plan=plan):
                return layer(x, cos_sin, plan)[0]
        else:
            layer = la.build_linear_mixer(cfg, 0).cuda().bfloat16()

            def forward(layer=layer):
                return layer(x)

        def fwd_bwd(forward=forward):
            forward().sum().backward()

        def fwd_only(forward=forward):
            with torch.no_grad():
                forward()

        for label, fn in (("ms", fwd_bwd), ("fwd_ms", fwd_only)):
            try:
                for _ in range(2):
                    fn()
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(3):
                    fn()
                torch.cuda.synchronize()
                row[f"{name}_{label}"] = round((time.perf_counter() - t0) / 3 * 1e3, 2)
            except Exception as ex:
                row[f"{name}_{label}_error"] = repr(ex)[:200]
    row["backward_path"] = ", ".join(
        f"{kind}: {'fla' if kernels.fla_available() and kernels.fla_backward_is_safe(kind) else 'PyTorch reference'}"
        for kind in ("gated_delta", "scalar"))
    emit(**row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import transformers

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    cuda = torch.cuda.is_available()
    emit(kind="env", torch=torch.__version__, transformers=transformers.__version__, triton=triton_version,
         gpu=torch.cuda.get_device_name() if cuda else None, fla=kernels.fla_available(), command=" ".join(sys.argv))
    steps = [lambda: equivalence("gated_delta"), lambda: equivalence("scalar")]
    if cuda:
        steps += [fla_gdn_backward_probe, lambda: timing(8192), lambda: timing(32768)]
    else:
        steps = [lambda: equivalence("gated_delta", t=128), lambda: equivalence("scalar", t=128)]
    for step in steps:
        try:
            step()
        except Exception as ex:
            emit(kind="error", error=repr(ex)[:400], tb=traceback.format_exc()[-1200:])
        write(args.out)  # after every step, so a run stopped at its time limit still leaves its rows


def write(out: Path) -> None:
    (out / "mixers-h200.json").write_text(json.dumps(RESULTS, indent=1))
    lines = ["# Recurrent mixers on one H200", "", f"Environment: {RESULTS[0]}", "", "## fla vs reference (T=4096, bf16 vs fp32)", "",
             "| op | fwd rel | fwd-only fla rel | grad rel | backward through | tolerance |", "|---|---|---|---|---|---|"]
    for r in RESULTS:
        if r["kind"] == "equivalence":
            through = "reference (guard)" if r["backward_via_reference"] else ("fla" if r["fla"] else "reference")
            lines.append(f"| {r['op']} | {r['fwd_rel']} | {r['fwd_only_fla_rel']} | {r['grad_rel']} | {through} |"
                         f" {r['tolerance']} |")
    lines += ["", "## One layer (hidden 1024, bf16), ms: fwd+bwd / fwd only", "",
              "| T | full attention | GDN | Mamba-2 | Lightning | mixer backward via |", "|---|---|---|---|---|---|"]
    for r in RESULTS:
        if r["kind"] == "timing":
            cells = [f"{r.get(f'{n}_ms', 'error')} / {r.get(f'{n}_fwd_ms', 'error')}"
                     for n in ("full", "gdn", "mamba2", "lightning")]
            lines.append(f"| {r['T']} | " + " | ".join(cells) + f" | {r['backward_path']} |")
    lines += [""] + [f"- {r}" for r in RESULTS if r["kind"] in ("fla_gdn_backward", "error")]
    (out / "mixers-h200.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
