"""Speed benchmark: hybrid_hf against transformers' own Qwen3 with the same shapes, side by side in one run.

Sections (each writes JSON lines; a Markdown table is rendered at the end):
  train    train step tokens/s, MFU and peak memory (3:1 SWA-512, 1:1 SWA-128 + NoPE full, GDN hybrid)
  prefill  32k prefill (ours vs Qwen3) and 128k prefill of a ~1B 1:1 SWA-128 hybrid (ours)
  decode   greedy decode of 128 tokens at 32k context, batch 1 and 16 (ours generate_fast vs Qwen3 generate)
  kernels  sliding-window attention fwd+bwd: our dispatch vs FlexAttention, W in {128, 512, 2048}, N in {8k, 32k}

Usage (GPU):  python benchmarks/bench_speed.py --out benchmarks/results --sections train prefill decode kernels
Smoke (CPU):  python benchmarks/bench_speed.py --smoke --out /tmp/bench
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybrid_hf import HybridConfig, HybridForCausalLM  # noqa: E402
from hybrid_hf.generation import generate_fast  # noqa: E402
from hybrid_hf.modeling.attention_dispatch import available_kernels  # noqa: E402
from hybrid_hf.modeling.attention_kernels import causal_attention  # noqa: E402

PEAK_FLOPS = 790e12  # bf16 dense matmul measured on the H200 (KINDS.md); the baseline file uses the same
TRAIN_CASES: list[str] | None = None
RESULTS: list[dict] = []
OUT: Path | None = None
SMOKE = False


def emit(**kw) -> None:
    print(json.dumps(kw), flush=True)
    RESULTS.append(kw)
    if OUT is not None:
        with open(OUT / "speed.jsonl", "a") as f:
            f.write(json.dumps(kw) + "\n")


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timeit(fn, warmup: int = 2, iters: int = 5) -> float:
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - t0) / iters


def peak_gib() -> float:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else 0.0


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def section(fn):
    def run():
        t0 = time.time()
        try:
            fn()
        except Exception as ex:  # keep the other sections going; the error is part of the record
            emit(section=fn.__name__, error=repr(ex)[:500], tb=traceback.format_exc()[-1500:])
        emit(section=fn.__name__, wall_s=round(time.time() - t0, 1))
        reset_peak()

    run.__name__ = fn.__name__
    return run


# ----------------------------------------------------------------------------------------------- shapes
def shapes() -> dict:
    if SMOKE:
        return dict(layers=4, hidden=64, heads=4, kv=2, head_dim=16, ffn=128, vocab=256, seq=128, batch=2,
                    ctx=256, new=8, big_ctx=512, window=16)
    return dict(layers=24, hidden=1024, heads=16, kv=8, head_dim=64, ffn=3072, vocab=32000, seq=8192, batch=2,
                ctx=32768, new=128, big_ctx=131072, window=512)


def ours_config(layer_types: list[str], window: int | None, **extra) -> HybridConfig:
    s = shapes()
    return HybridConfig(
        vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["ffn"], num_hidden_layers=len(layer_types),
        num_attention_heads=s["heads"], num_key_value_heads=s["kv"], head_dim=s["head_dim"], layer_types=layer_types,
        sliding_window=window, use_qk_norm=True, tie_word_embeddings=True, max_position_embeddings=1 << 18,
        rope_theta=1e6, **extra,
    )


def qwen3_model(layer_types: list[str], window: int | None):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    s = shapes()
    cfg = Qwen3Config(
        vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["ffn"], num_hidden_layers=len(layer_types),
        num_attention_heads=s["heads"], num_key_value_heads=s["kv"], head_dim=s["head_dim"], layer_types=layer_types,
        sliding_window=window, use_sliding_window=window is not None, tie_word_embeddings=True,
        max_position_embeddings=1 << 18, rope_theta=1e6,
    )
    cfg._attn_implementation = "sdpa"
    return Qwen3ForCausalLM(cfg)


def swa_pattern(ratio: int, n: int) -> list[str]:
    return (["sliding_attention"] * ratio + ["full_attention"]) * (n // (ratio + 1))


def train_flops_per_token(model, layer_types: list[str], window: int | None, seq: int) -> tuple[float, float]:
    """(6N, 6N + attention) FLOPs per token; N counts every matmul weight incl. the (tied) LM head."""
    s = shapes()
    n_params = sum(p.numel() for p in model.parameters())
    six_n = 6 * n_params
    attn = 0.0
    d_attn = s["heads"] * s["head_dim"]
    for t in layer_types:
        if t == "full_attention":
            ctx = (seq + 1) / 2
        elif t == "sliding_attention":
            ctx = sum(min(i + 1, window) for i in range(seq)) / seq
        else:
            ctx = 0.0
        attn += 12 * d_attn * ctx
    return six_n, six_n + attn


# ------------------------------------------------------------------------------------------------ train
def _train_run(name: str, model, layer_types, window, compile_blocks: bool = False) -> None:
    try:
        _train_case(name, model, layer_types, window, compile_blocks)
    except Exception as ex:  # one failing case must not hide the others
        emit(kind="train_error", model=name, error=repr(ex)[:500], tb=traceback.format_exc()[-1500:])
    reset_peak()


def _train_case(name: str, model, layer_types, window, compile_blocks: bool) -> None:
    s = shapes()
    dev = device()
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    model = model.to(dev, dtype).train()
    if compile_blocks:
        model.compile_layers()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev == "cuda")
    ids = torch.randint(0, s["vocab"], (s["batch"], s["seq"]), device=dev)
    losses = []

    def step():
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out.loss.detach())

    reset_peak()
    t_compile = time.perf_counter()
    step()
    sync()
    first_step_s = time.perf_counter() - t_compile
    t = timeit(step, warmup=1, iters=5 if not SMOKE else 2)
    tok_s = s["batch"] * s["seq"] / t
    six_n, with_attn = train_flops_per_token(model, layer_types, window, s["seq"])
    emit(kind="train", model=name, tokens=s["batch"] * s["seq"], seq=s["seq"], params_M=round(
        sum(p.numel() for p in model.parameters()) / 1e6, 1), tok_s=round(tok_s), step_ms=round(t * 1e3, 1),
        mfu_6N=round(six_n * tok_s / PEAK_FLOPS, 3), mfu_6N_attn=round(with_attn * tok_s / PEAK_FLOPS, 3),
        flops_per_token=with_attn, first_step_s=round(first_step_s, 1), peak_GiB=peak_gib(),
        final_loss=round(float(losses[-1]), 4))


def _forced_train_kernels() -> list[str]:
    """Kernels the train section also forces, to compare with what ``attention_kernel="auto"`` picks."""
    if not torch.cuda.is_available():
        return []
    return [k for k in available_kernels(torch.device("cuda")) if k in ("flex", "flash_attn")]


@section
def train() -> None:
    s = shapes()
    n = s["layers"]
    torch.manual_seed(0)
    cases = [
        ("3:1 SWA-512", swa_pattern(3, n), s["window"], {}),
        ("1:1 SWA-128 NoPE-full", swa_pattern(1, n), 128 if not SMOKE else 8,
         {"position_encodings": {"full_attention": "nope", "sliding_attention": "rope"}}),
    ]
    for label, lt, w, extra in cases:
        if TRAIN_CASES is not None and label not in TRAIN_CASES:
            continue
        _train_run(f"transformers Qwen3 sdpa [{label}]", qwen3_model(lt, w), lt, w)
        cfg = ours_config(lt, w, fused_cross_entropy=True, **extra)
        _train_run(f"hybrid_hf kernels+fusedCE [{label}]", HybridForCausalLM(cfg), lt, w)
        if not SMOKE:
            _train_run(f"hybrid_hf kernels+fusedCE+compile [{label}]", HybridForCausalLM(cfg), lt, w, True)
            for forced in _forced_train_kernels():  # the same with another kernel forced for every attention layer
                forced_cfg = ours_config(lt, w, fused_cross_entropy=True, attention_kernel=forced, **extra)
                _train_run(f"hybrid_hf {forced}+fusedCE+compile [{label}]", HybridForCausalLM(forced_cfg), lt, w, True)
    # GDN hybrid (1:1 with full attention) when the mixer is available
    if TRAIN_CASES is not None and "1:1 GDN" not in TRAIN_CASES:
        return
    lt = ["linear_attention", "full_attention"] * (n // 2)
    try:
        cfg = ours_config(lt, None, fused_cross_entropy=True, linear_attention_type="gated_deltanet")
        model = HybridForCausalLM(cfg)
    except ValueError as err:
        emit(kind="train", model="hybrid_hf GDN 1:1", skipped=str(err)[:300])
        return
    _train_run("hybrid_hf kernels+fusedCE [1:1 GDN]", model, lt, None)


# ---------------------------------------------------------------------------------------------- prefill
def _ours_prefill(model, ctx: int, chunk: int) -> tuple[float, float]:
    ids = torch.randint(0, model.config.vocab_size, (1, ctx), device=device())
    reset_peak()
    sync()
    t0 = time.perf_counter()
    generate_fast(model, ids, 1, prefill_chunk_size=chunk, cuda_graph=False)
    sync()
    return time.perf_counter() - t0, peak_gib()


@section
def prefill() -> None:
    s = shapes()
    dev, dtype = device(), (torch.bfloat16 if device() == "cuda" else torch.float32)
    lt = swa_pattern(3, s["layers"])
    torch.manual_seed(0)
    hf = qwen3_model(lt, s["window"]).to(dev, dtype).eval()
    ids = torch.randint(0, s["vocab"], (1, s["ctx"]), device=dev)
    with torch.no_grad():
        hf(ids, use_cache=True, logits_to_keep=1)  # warm-up
        reset_peak()
        sync()
        t0 = time.perf_counter()
        hf(ids, use_cache=True, logits_to_keep=1)
        sync()
    emit(kind="prefill", model="transformers Qwen3 sdpa [3:1 SWA-512]", ctx=s["ctx"],
         seconds=round(time.perf_counter() - t0, 3), peak_GiB=peak_gib())
    del hf
    ours = HybridForCausalLM(ours_config(lt, s["window"])).to(dev, dtype).eval()
    _ours_prefill(ours, s["ctx"], 8192)  # warm-up (compiles the Flex kernels for these shapes)
    sec, mem = _ours_prefill(ours, s["ctx"], 8192)
    emit(kind="prefill", model="hybrid_hf generate_fast [3:1 SWA-512]", ctx=s["ctx"], chunk=8192,
         seconds=round(sec, 3), peak_GiB=mem)
    del ours
    # ~1B 1:1 SWA-128 hybrid, 128k tokens
    big = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=20, num_attention_heads=16,
               num_key_value_heads=8, head_dim=128) if not SMOKE else {}
    cfg = HybridConfig.from_preset("swa128-nope", size="s1" if not SMOKE else "tiny",
                                   vocab_size=s["vocab"], max_position_embeddings=1 << 18, **big)
    model = HybridForCausalLM(cfg).to(dev, dtype).eval()
    n_params = sum(p.numel() for p in model.parameters())
    _ours_prefill(model, 16384 if not SMOKE else 64, 8192 if not SMOKE else 32)
    sec, mem = _ours_prefill(model, s["big_ctx"], 8192 if not SMOKE else 128)
    emit(kind="prefill", model=f"hybrid_hf generate_fast [1:1 SWA-128 NoPE-full, {n_params / 1e9:.2f}B]",
         ctx=s["big_ctx"], chunk=8192, seconds=round(sec, 3), peak_GiB=mem, tok_s=round(s["big_ctx"] / sec))


# ----------------------------------------------------------------------------------------------- decode
@section
def decode() -> None:
    s = shapes()
    dev, dtype = device(), (torch.bfloat16 if device() == "cuda" else torch.float32)
    n, new, ctx = s["layers"], s["new"], s["ctx"]
    for label, lt, batch in (
        ("all full", ["full_attention"] * n, 1),
        ("3:1 SWA-512", swa_pattern(3, n), 1),
        ("3:1 SWA-512", swa_pattern(3, n), 16 if not SMOKE else 2),
    ):
        w = s["window"] if "SWA" in label else None
        torch.manual_seed(0)
        ids = torch.randint(0, s["vocab"], (batch, ctx), device=dev)
        hf = qwen3_model(lt, w).to(dev, dtype).eval()
        with torch.no_grad():
            reset_peak()
            sync()
            t0 = time.perf_counter()
            hf.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=False)
            sync()
            t_prefill = time.perf_counter() - t0
            t0 = time.perf_counter()
            hf_out = hf.generate(ids, max_new_tokens=new + 1, min_new_tokens=new + 1, do_sample=False)
            sync()
            t_all = time.perf_counter() - t0
        hf_tok_s = batch * new / max(t_all - t_prefill, 1e-6)
        emit(kind="decode", model=f"transformers Qwen3 generate [{label}]", batch=batch, ctx=ctx, new=new,
             tok_s=round(hf_tok_s, 1), prefill_s=round(t_prefill, 3), peak_GiB=peak_gib())
        with torch.no_grad():
            hf_probe_logits = hf(ids[:1, -2048:], use_cache=False, logits_to_keep=1).logits.float()
        state = hf.state_dict()
        del hf
        reset_peak()
        ours = HybridForCausalLM(ours_config(lt, w)).to(dev, dtype).eval()
        missing = ours.load_state_dict(state, strict=False)  # same weights: identical parameter names
        fast = {"compile": dev == "cuda"}  # compiled decoder layers inside the CUDA graph
        t0 = time.perf_counter()
        generate_fast(ours, ids, 4, **fast)  # first call: compiles, captures the decode graph (kept for these shapes)
        sync()
        first_call_s = time.perf_counter() - t0
        reset_peak()
        sync()
        t0 = time.perf_counter()
        generate_fast(ours, ids, 1, **fast)
        sync()
        t_prefill = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = generate_fast(ours, ids, new + 1, **fast)
        sync()
        t_all = time.perf_counter() - t0
        tok_s = batch * new / max(t_all - t_prefill, 1e-6)
        agree = float((out[:, ctx:] == hf_out[:, ctx:]).float().mean())
        with torch.no_grad():
            probe = ids[:1, -2048:]
            ours_logits = ours(probe, use_cache=False, logits_to_keep=1).logits.float()
            hf_logits = hf_probe_logits[:1]
        logit_diff = float((ours_logits - hf_logits).abs().max())
        emit(kind="decode", model=f"hybrid_hf generate_fast(compile)+cudagraph [{label}]", batch=batch, ctx=ctx,
             new=new,
             tok_s=round(tok_s, 1), speedup_vs_hf=round(tok_s / hf_tok_s, 1), prefill_s=round(t_prefill, 3),
             first_call_s=round(first_call_s, 1),
             peak_GiB=peak_gib(), greedy_token_agreement_with_hf=round(agree, 3),
             max_logit_diff_vs_hf_2k_prompt=round(logit_diff, 4),
             unmatched_keys=len(missing.missing_keys) + len(missing.unexpected_keys))
        del ours


# ---------------------------------------------------------------------------------------------- kernels
@section
def kernels() -> None:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    dev = device()
    if dev != "cuda":
        emit(kind="swa_kernel_fwdbwd", skipped="FlexAttention has no CPU backward; GPU only")
        return
    dtype = torch.bfloat16
    # dynamic=False: one static kernel per shape, as our dispatch compiles it (the default would recompile the second
    # sequence length with dynamic shapes and hand the baseline a slower kernel)
    flex = torch.compile(flex_attention, dynamic=False)
    heads, d = (16, 128) if not SMOKE else (2, 16)
    for n in ((8192, 32768) if not SMOKE else (256,)):
        for w in (128, 512, 2048):
            _swa_case(flex, create_block_mask, n, w, heads, d, dtype)


def _sliding_kernels() -> list[str]:
    """Every sliding-window kernel of ours this machine can run: our Triton kernel, and flash-attn's when installed."""
    return [k for k in available_kernels(torch.device("cuda")) if k in ("triton", "flash_attn")]


def _swa_case(flex, create_block_mask, n: int, w: int, heads: int, d: int, dtype: torch.dtype) -> None:
    q, k, v = (torch.randn(1, heads, n, d, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    g = torch.randn(1, heads, n, d, device="cuda", dtype=dtype)
    block_mask = create_block_mask(lambda b, h, i, j: (i >= j) & (i - j < w), None, None, n, n, device="cuda")

    def run_flex():
        flex(q, k, v, block_mask=block_mask, scale=d**-0.5).backward(g)

    o1 = flex(q, k, v, block_mask=block_mask, scale=d**-0.5)
    for kernel in _sliding_kernels():
        def run_ours(kernel=kernel):
            causal_attention(q, k, v, window=w, scale=d**-0.5, kernel=kernel).transpose(1, 2).backward(g)

        o2 = causal_attention(q, k, v, window=w, scale=d**-0.5, kernel=kernel).transpose(1, 2)
        maxdiff = float((o1 - o2).abs().max())
        # interleaved rounds, median of each: one round of either can catch a clock or neighbour hiccup
        rounds = [(timeit(run_flex, 2, 10), timeit(run_ours, 2, 10)) for _ in range(3 if not SMOKE else 1)]
        t_flex = sorted(r[0] for r in rounds)[len(rounds) // 2]
        t_ours = sorted(r[1] for r in rounds)[len(rounds) // 2]
        emit(kind="swa_kernel_fwdbwd", N=n, W=w, heads=heads, head_dim=d, ours_kernel=kernel,
             flex_ms=round(t_flex * 1e3, 3), ours_ms=round(t_ours * 1e3, 3), ratio=round(t_ours / t_flex, 3),
             maxdiff=maxdiff)


# --------------------------------------------------------------------------------------------- report
def environment() -> dict:
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "command": " ".join(sys.argv), "smoke": SMOKE}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, sms=p.multi_processor_count, cuda=torch.version.cuda)
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("flash-attn", "flash-attn-4", "nvidia-cutlass-dsl", "flash-linear-attention"):
        try:
            env[dist] = version(dist)
        except PackageNotFoundError:
            env[dist] = None
    return env


def markdown(env: dict) -> str:
    lines = ["# hybrid_hf speed benchmark", "", "Environment: " + ", ".join(f"{k}={v}" for k, v in env.items()), ""]
    rows = [r for r in RESULTS if r.get("kind") == "train"]
    if rows:
        lines += ["## Train step (bf16, AdamW fused)", "", "| model | tokens/step | tok/s | MFU 6N | MFU 6N+attn |"
                  " peak GiB | first step s |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            if "skipped" in r:
                lines.append(f"| {r['model']} | skipped: {r['skipped']} | | | | | |")
            else:
                lines.append(f"| {r['model']} | {r['tokens']} | {r['tok_s']} | {r['mfu_6N']} | {r['mfu_6N_attn']} |"
                             f" {r['peak_GiB']} | {r['first_step_s']} |")
        lines.append("")
    rows = [r for r in RESULTS if r.get("kind") == "prefill"]
    if rows:
        lines += ["## Prefill", "", "| model | context | seconds | peak GiB |", "|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['ctx']} | {r['seconds']} | {r['peak_GiB']} |" for r in rows]
        lines.append("")
    rows = [r for r in RESULTS if r.get("kind") == "decode"]
    if rows:
        lines += ["## Decode (greedy, 128 new tokens)", "", "| model | batch | context | tok/s | speed-up | peak GiB |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['batch']} | {r['ctx']} | {r['tok_s']} | {r.get('speedup_vs_hf', '')} |"
                  f" {r['peak_GiB']} |" for r in rows]
        lines.append("")
    rows = [r for r in RESULTS if r.get("kind") == "swa_kernel_fwdbwd" and "skipped" not in r]
    if rows:
        lines += ["## Sliding-window attention fwd+bwd", "",
                  "| N | W | ours kernel | Flex ms | ours ms | ours/Flex | max diff |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['N']} | {r['W']} | {r.get('ours_kernel', '')} | {r['flex_ms']} | {r['ours_ms']} | {r['ratio']} |"
                  f" {r['maxdiff']} |" for r in rows]
        lines.append("")
    errors = [r for r in RESULTS if "error" in r]
    if errors:
        lines += ["## Errors", ""] + [f"- {r.get('section') or r.get('model')}: {r['error']}" for r in errors]
    return "\n".join(lines) + "\n"


def main() -> None:
    global OUT, SMOKE, TRAIN_CASES
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default: $OUT, else benchmarks/results; --smoke: a temporary folder)")
    parser.add_argument("--sections", nargs="+", default=["train", "prefill", "decode", "kernels"],
                        choices=["train", "prefill", "decode", "kernels"])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU, to check the script itself")
    parser.add_argument("--tag", default="", help="suffix of the result file names")
    parser.add_argument("--train-cases", nargs="+", choices=["3:1 SWA-512", "1:1 SWA-128 NoPE-full", "1:1 GDN"],
                        help="train section: run only these cases (default: all)")
    args = parser.parse_args()
    OUT, SMOKE, TRAIN_CASES = args.out, args.smoke, args.train_cases
    if OUT is None:
        OUT = Path(tempfile.mkdtemp(prefix="bench-smoke-")) if SMOKE else Path(os.environ.get("OUT", "benchmarks/results"))
    OUT.mkdir(parents=True, exist_ok=True)
    env = environment()
    emit(kind="env", **env)
    for name in args.sections:
        globals()[name]()
    tag = f"-{args.tag}" if args.tag else ""
    (OUT / f"speed{tag}.json").write_text(json.dumps({"environment": env, "results": RESULTS}, indent=1))
    (OUT / f"speed{tag}.md").write_text(markdown(env))
    print(markdown(env))


if __name__ == "__main__":
    main()
