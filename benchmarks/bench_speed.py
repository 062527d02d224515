"""Speed benchmark: hybrid_hf against transformers' own Qwen3 with the same shapes, side by side in one run.

Every hybrid_hf ratio is to the fastest transformers row of the same case (and batch) in the same run.

Sections (each writes JSON lines; a Markdown table is rendered at the end):
  train    train step tokens/s, MFU and peak memory (3:1 SWA-512, 1:1 SWA-128 + NoPE full, GDN hybrid); baselines:
           transformers Qwen3 SDPA eager and torch.compile(model); ours eager and compile_layers() (--forced-kernels:
           also with FlexAttention / flash-attn forced; --train-precisions bf16 amp: also fp32 weights under bf16
           autocast, as Trainer(bf16=True) trains, as cases named "... amp")
  prefill  32k prefill (ours vs Qwen3) and 128k prefill of a ~1B 1:1 SWA-128 hybrid (ours)
  decode   greedy decode of 128 tokens at 32k context, batch 1 and 16, all-full and 3:1 SWA-512: Qwen3 generate
           (dynamic cache; static cache, auto-compiled) built from our weights through hybrid_hf.export vs ours
           (stock generate at batch 1, generate_fast(compile=True), generate(cache_implementation="static")); bytes per
           step vs HBM bandwidth; token agreement and logit difference over the first decode steps at batch 1
  kernels  sliding-window attention fwd+bwd: our dispatch vs FlexAttention, W in {128, 512, 2048}, N in {8k, 32k}

Usage (GPU):  python benchmarks/bench_speed.py --out benchmarks/results --sections train prefill decode kernels
  one call per decode model kind and batch fits a 600 s limit, e.g.
              python benchmarks/bench_speed.py --sections decode --decode-models "3:1 SWA-512" --decode-batches 16
Smoke (CPU):  python benchmarks/bench_speed.py --smoke --out /tmp/bench"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybrid_hf import HybridConfig, HybridForCausalLM  # noqa: E402
from hybrid_hf.export import map_state_dict, target_config  # noqa: E402
from hybrid_hf.generation import fast_path_refusal, generate_fast, release_decode_buffers  # noqa: E402
from hybrid_hf.modeling.attention_dispatch import available_kernels  # noqa: E402
from hybrid_hf.modeling.attention_kernels import causal_attention  # noqa: E402

PEAK_FLOPS = 790e12  # bf16 dense matmul measured on the H200 (KINDS.md); the baseline file uses the same
TRAIN_CASES: list[str] | None = None
FORCED_KERNELS = False
TRAIN_PRECISIONS: list[str] = ["bf16"]  # "amp": fp32 weights under bf16 autocast, as Trainer(bf16=True) trains
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
def compile_skip_reason() -> str | None:
    """Why torch.compile rows are not run here (--smoke on CPU), or None when they are."""
    if SMOKE and device() == "cpu":
        return "torch.compile rows are not run in --smoke on CPU"
    return None


def best_transformers(kind: str, case: str, batch: int | None = None) -> dict | None:
    """The fastest transformers row of ``kind`` for ``case`` (and ``batch``) recorded so far in this run."""
    rows = [r for r in RESULTS if r.get("kind") == kind and r.get("case") == case and r.get("impl") == "transformers"
            and r.get("tok_s") and (batch is None or r.get("batch") == batch)]
    return max(rows, key=lambda r: r["tok_s"]) if rows else None


def _vs_best(row: dict, kind: str, batch: int | None = None) -> float | None:
    best = best_transformers(kind, row["case"], batch)
    return round(row["tok_s"] / best["tok_s"], 2) if best and row.get("tok_s") else None


def _train_run(case: str, variant: str, impl: str, build, layer_types, window, *, compile_blocks: bool = False,
               compile_model: bool = False, amp: bool = False) -> None:
    """One train row; ``build()`` makes the model (after the skip check, so skipped rows cost nothing)."""
    name = f"{variant} [{case}]"
    skip = compile_skip_reason() if (compile_blocks or compile_model) else None
    if skip:
        emit(kind="train", model=name, case=case, impl=impl, variant=variant, skipped=skip)
        return
    t0 = time.time()
    try:
        _train_case(name, case, variant, impl, build(), layer_types, window, compile_blocks, compile_model, t0, amp)
    except Exception as ex:  # one failing case must not hide the others
        emit(kind="train_error", model=name, case=case, impl=impl, error=repr(ex)[:500],
             tb=traceback.format_exc()[-1500:], row_wall_s=round(time.time() - t0, 1))
    gc.collect()
    reset_peak()


def _train_case(name: str, case: str, variant: str, impl: str, model, layer_types, window, compile_blocks: bool,
                compile_model: bool, t_row: float, amp: bool = False) -> None:
    s = shapes()
    dev = device()
    dtype = torch.bfloat16 if dev == "cuda" and not amp else torch.float32
    model = model.to(dev, dtype).train()
    params = list(model.parameters())
    if compile_blocks:
        model.compile_layers()
    opt = torch.optim.AdamW(params, lr=1e-4, fused=dev == "cuda")
    run_model = torch.compile(model) if compile_model else model  # the whole model, forward and backward
    ids = torch.randint(0, s["vocab"], (s["batch"], s["seq"]), device=dev)
    losses = []

    def step():
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=amp):
            out = run_model(input_ids=ids, labels=ids)
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
    row = dict(kind="train", model=name, case=case, impl=impl, variant=variant, tokens=s["batch"] * s["seq"],
               seq=s["seq"], params_M=round(sum(p.numel() for p in params) / 1e6, 1), tok_s=round(tok_s),
               step_ms=round(t * 1e3, 1), mfu_6N=round(six_n * tok_s / PEAK_FLOPS, 3),
               mfu_6N_attn=round(with_attn * tok_s / PEAK_FLOPS, 3), flops_per_token=with_attn,
               first_step_s=round(first_step_s, 1), peak_GiB=peak_gib(), final_loss=round(float(losses[-1]), 4))
    if impl == "hybrid_hf":  # the baselines of this case ran before (the Markdown recomputes every row's ratio)
        row["vs_best_transformers"] = _vs_best(row, "train")
    row["row_wall_s"] = round(time.time() - t_row, 1)
    emit(**row)


def _forced_train_kernels() -> list[str]:
    """Kernels the train section also forces (--forced-kernels), to compare with what ``attention_kernel="auto"``
    picks."""
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
    for (label, lt, w, extra), precision in itertools.product(cases, TRAIN_PRECISIONS):
        if TRAIN_CASES is not None and label not in TRAIN_CASES:
            continue
        amp = precision == "amp"
        case = f"{label} amp" if amp else label  # ratios compare rows of one precision
        run = partial(_train_run, case, amp=amp)
        # baselines first: every hybrid_hf row's ratio is to the fastest of them
        run("transformers Qwen3 sdpa", "transformers", partial(qwen3_model, lt, w), lt, w)
        run("transformers Qwen3 sdpa + torch.compile", "transformers", partial(qwen3_model, lt, w), lt, w,
            compile_model=True)
        cfg = ours_config(lt, w, fused_cross_entropy=True, **extra)
        run("hybrid_hf kernels+fusedCE", "hybrid_hf", partial(HybridForCausalLM, cfg), lt, w)
        run("hybrid_hf kernels+fusedCE+compile", "hybrid_hf", partial(HybridForCausalLM, cfg), lt, w,
            compile_blocks=True)
        for forced in _forced_train_kernels() if FORCED_KERNELS else []:  # another kernel forced for every layer
            forced_cfg = ours_config(lt, w, fused_cross_entropy=True, attention_kernel=forced, **extra)
            run(f"hybrid_hf {forced}+fusedCE+compile", "hybrid_hf", partial(HybridForCausalLM, forced_cfg), lt, w,
                compile_blocks=True)
    # GDN hybrid (1:1 with full attention) when the mixer is available (no transformers model of these shapes)
    if (TRAIN_CASES is not None and "1:1 GDN" not in TRAIN_CASES) or "bf16" not in TRAIN_PRECISIONS:
        return  # (the GDN row is bf16 only)
    lt = ["linear_attention", "full_attention"] * (n // 2)
    try:  # HybridConfig validates the mixer choice; each row builds its own model
        cfg = ours_config(lt, None, fused_cross_entropy=True, linear_attention_type="gated_deltanet")
    except ValueError as err:
        emit(kind="train", model="hybrid_hf GDN 1:1", case="1:1 GDN", impl="hybrid_hf", skipped=str(err)[:300])
        return
    _train_run("1:1 GDN", "hybrid_hf kernels+fusedCE", "hybrid_hf", partial(HybridForCausalLM, cfg), lt, None)
    _train_run("1:1 GDN", "hybrid_hf kernels+fusedCE+compile", "hybrid_hf", partial(HybridForCausalLM, cfg), lt, None,
               compile_blocks=True)


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
HBM_BYTES_PER_S = 4.3e12  # HBM bandwidth measured on the H200 (spec sheet: 4.8e12 B/s); the decode roofline's 100%
DECODE_MODELS = ("all full", "3:1 SWA-512")
DECODE_ROWS = ("hf-dynamic", "hf-static", "ours-stock", "ours-fast", "ours-fast-triton", "ours-static", "check")
DECODE_BATCHES = [1, 16]
DECODE_SELECTED: dict = {"models": list(DECODE_MODELS), "batches": DECODE_BATCHES, "rows": list(DECODE_ROWS),
                         "rounds": 2, "check_steps": 8, "check_ctx": None}


def decode_layer_types(label: str) -> tuple[list[str], int | None]:
    """Layer types and window of a decode model kind."""
    n = shapes()["layers"]
    if label == "all full":
        return ["full_attention"] * n, None
    return swa_pattern(3, n), shapes()["window"]


def qwen3_from(model: HybridForCausalLM):
    """transformers' Qwen3 holding exactly ``model``'s weights, through the public exporter's config and state-dict
    mapping (``hybrid_hf.export``), on the model's device and dtype, SDPA attention."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    weight = model.get_input_embeddings().weight
    cfg = Qwen3Config(**target_config(model.config, "qwen3"))
    cfg._attn_implementation = "sdpa"
    with torch.device(weight.device):
        hf = Qwen3ForCausalLM(cfg)
    hf = hf.to(weight.dtype).eval()
    hf.load_state_dict(map_state_dict(model.config, model.state_dict(), "qwen3"), strict=True)
    return hf


def decode_bytes_per_step(model, layer_types: list[str], window: int | None, batch: int, ctx: int) -> int:
    """Bytes one decode step must read: every parameter once (a tied LM head counted once, as the matmul weight it
    is; the embedding row read is negligible), the K/V of every full layer at ``ctx`` and of every sliding layer's
    window, for ``batch`` rows."""
    weight = model.get_input_embeddings().weight
    params = sum(p.numel() * p.element_size() for p in model.parameters())  # parameters() yields a tied weight once
    kv_per_token = 2 * model.config.num_key_value_heads * model.config.head_dim * weight.element_size()
    keys = sum(ctx if t == "full_attention" else min(window or ctx, ctx) for t in layer_types
               if t in ("full_attention", "sliding_attention"))
    return params + batch * keys * kv_per_token


def _roofline(bytes_per_step: int, tok_s: float, batch: int) -> dict:
    step_s = batch / tok_s  # one step produces one token per row
    achieved = bytes_per_step / step_s
    return dict(bytes_per_step=bytes_per_step, step_ms=round(step_s * 1e3, 3), achieved_TBps=round(achieved / 1e12, 3),
                roofline_pct=round(100 * achieved / HBM_BYTES_PER_S, 1))


def _time_generate(gen, new: int, rounds: int, same_warmup: bool) -> tuple[torch.Tensor, dict]:
    """Decode time of ``new`` tokens: ``gen(n)`` (prompt + n tokens) after an untimed warm-up call (identical
    arguments when ``same_warmup``: it compiles and captures), as min over rounds of ``gen(new + 1)`` minus min over
    rounds of ``gen(1)`` (the prefill and its first token)."""
    sync()
    t0 = time.perf_counter()
    gen(new + 1 if same_warmup else 2)
    sync()
    first = time.perf_counter() - t0
    prefill, total, out = [], [], None
    for _ in range(rounds):
        t0 = time.perf_counter()
        gen(1)
        sync()
        prefill.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        out = gen(new + 1)
        sync()
        total.append(time.perf_counter() - t0)
    decode_s = min(total) - min(prefill)  # <= 0 only when timing noise exceeds the decode (tiny --smoke shapes)
    return out, dict(first_call_s=round(first, 1), prefill_s=round(min(prefill), 3), total_s=round(min(total), 3),
                     decode_s=decode_s)


def _decode_row(case: str, variant: str, impl: str, batch: int, ids: torch.Tensor, gen, bytes_per_step: int, *,
                same_warmup: bool, reference: torch.Tensor | None = None, note: str | None = None
                ) -> torch.Tensor | None:
    """One decode row; returns its generated tokens (B, new + 1) on the CPU, or None when it failed."""
    s = shapes()
    name = f"{variant} [{case}]"
    common = dict(kind="decode", model=name, case=case, impl=impl, variant=variant, batch=batch, ctx=ids.shape[1],
                  new=s["new"])
    if note:
        common["note"] = note
    t_row = time.time()
    try:
        reset_peak()
        resident = torch.cuda.memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
        out, times = _time_generate(gen, s["new"], DECODE_SELECTED["rounds"] if not SMOKE else 1, same_warmup)
        tokens = out[:, ids.shape[1]:].cpu()
        decode_s = times.pop("decode_s")
        row = dict(common, **times, peak_GiB=peak_gib(), resident_GiB_at_start=round(resident, 2),
                   generated=tokens.shape[1])
        if decode_s > 0:
            tok_s = batch * s["new"] / decode_s
            row.update(tok_s=round(tok_s, 1), **_roofline(bytes_per_step, tok_s, batch))
        else:
            row.update(tok_s=None, timing="decode time below the prefill's timing noise")
        if reference is not None and reference.shape == tokens.shape:
            row["agreement_vs_hf_dynamic"] = round(float((tokens == reference).float().mean()), 3)
        if impl == "hybrid_hf":  # the baselines of this case and batch ran before (the Markdown recomputes all)
            row["vs_best_transformers"] = _vs_best(row, "decode", batch)
        row["row_wall_s"] = round(time.time() - t_row, 1)
        emit(**row)
        return tokens
    except Exception as ex:  # one failing row must not hide the others
        emit(**dict(common, kind="decode_error"), error=repr(ex)[:500], tb=traceback.format_exc()[-1500:],
             row_wall_s=round(time.time() - t_row, 1))
        return None


def _hf_generate(hf, ids: torch.Tensor, n: int, **kw) -> torch.Tensor:
    with torch.no_grad():
        return hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, **kw)


def _ours_generate(model: HybridForCausalLM, ids: torch.Tensor, n: int, **kw) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=n, do_sample=False, **kw)


def _route(model: HybridForCausalLM, ids: torch.Tensor, **kw) -> str:
    """Where ``model.generate`` sends the row's call: ``generate_fast`` or transformers' loop (and why)."""
    reason = fast_path_refusal(model, ids, max_new_tokens=shapes()["new"] + 1, do_sample=False, **kw)
    return "routed to generate_fast" if reason is None else f"transformers loop: {reason}"


def _check_row(case: str, hf_ref: tuple[torch.Tensor, torch.Tensor] | None, ours, ids: torch.Tensor,
               fast: dict) -> None:
    """Greedy tokens and step logits of ours ``generate_fast`` vs transformers ``generate`` (same weights)."""
    steps = DECODE_SELECTED["check_steps"]
    if hf_ref is None:
        emit(kind="decode_check", case=case, error="no transformers reference (its generate failed or was not run)")
        return
    try:
        out, logits = generate_fast(ours, ids, steps, return_logits=True, **fast)
        tokens, logits = out[:, ids.shape[1]:].cpu(), logits.float().cpu()
        ref_tokens, ref_logits = hf_ref
        same = (tokens == ref_tokens)[0]
        first_div = int((~same).nonzero()[0]) if not bool(same.all()) else steps
        compared = min(first_div + 1, steps)  # step i's logits see the tokens before i: equal up to the divergence
        diff = (logits[:, :compared] - ref_logits[:, :compared]).abs()
        emit(kind="decode_check", case=case, ctx=ids.shape[1], batch=ids.shape[0], steps=steps,
             token_agreement=round(float(same.float().mean()), 3), first_divergence=first_div if first_div < steps
             else None, steps_compared=compared, max_abs_logit_diff=float(diff.max()),
             mean_abs_logit_diff=float(diff.mean()),
             max_abs_logit=round(float(ref_logits[:, :compared].abs().max()), 3),
             ours=f"generate_fast(compile={fast['compile']}, return_logits=True)",
             baseline="transformers Qwen3 generate(output_logits=True, return_dict_in_generate=True), dynamic cache")
    except Exception as ex:
        emit(kind="decode_check", case=case, error=repr(ex)[:500], tb=traceback.format_exc()[-1500:])


@section
def decode() -> None:
    s = shapes()
    dev, dtype = device(), (torch.bfloat16 if device() == "cuda" else torch.float32)
    ctx, rows = s["ctx"], DECODE_SELECTED["rows"]
    batches = [b if not SMOKE else min(b, 2) for b in DECODE_SELECTED["batches"]]
    no_compile = compile_skip_reason() or ("no torch.compile on CPU" if dev == "cpu" else None)
    fast = {"compile": no_compile is None}  # compiled decoder layers inside the CUDA graph
    check_ctx = min(DECODE_SELECTED["check_ctx"] or ctx, ctx)
    for case in DECODE_SELECTED["models"]:
        lt, w = decode_layer_types(case)
        torch.manual_seed(0)
        with torch.device(dev):
            ours = HybridForCausalLM(ours_config(lt, w))
        ours = ours.to(dtype).eval()
        prompts = {}
        for b in batches:
            torch.manual_seed(b)
            prompts[b] = torch.randint(0, s["vocab"], (b, ctx), device=dev)
        check_ids = prompts[1][:, ctx - check_ctx:] if 1 in batches and "check" in rows else None
        bytes_of = {b: decode_bytes_per_step(ours, lt, w, b, ctx) for b in batches}
        hf = qwen3_from(ours)  # the same weights; ours waits on the CPU while transformers runs alone on the GPU
        ours.to("cpu")
        reset_peak()
        ref: dict[int, torch.Tensor | None] = {}
        hf_check = None
        if "hf-dynamic" in rows:
            for b in batches:
                ref[b] = _decode_row(case, "transformers Qwen3 generate (dynamic cache)", "transformers", b,
                                     prompts[b], partial(_hf_generate, hf, prompts[b]), bytes_of[b],
                                     same_warmup=False)
        if check_ids is not None:
            try:
                with torch.no_grad():
                    o = hf.generate(check_ids, max_new_tokens=DECODE_SELECTED["check_steps"],
                                    min_new_tokens=DECODE_SELECTED["check_steps"], do_sample=False,
                                    output_logits=True, return_dict_in_generate=True)
                hf_check = (o.sequences[:, check_ids.shape[1]:].cpu(), torch.stack(o.logits, 1).float().cpu())
            except Exception as ex:
                emit(kind="decode_check", case=case, error=f"transformers generate: {ex!r}"[:500],
                     tb=traceback.format_exc()[-1500:])
        if "hf-static" in rows:
            note = None if dev == "cuda" else "transformers compiles the static-cache decode only on an accelerator"
            for b in batches:
                _decode_row(case, 'transformers Qwen3 generate (cache_implementation="static", auto-compiled)',
                            "transformers", b, prompts[b],
                            partial(_hf_generate, hf, prompts[b], cache_implementation="static"), bytes_of[b],
                            same_warmup=True, reference=ref.get(b), note=note)
        del hf
        gc.collect()
        torch.compiler.reset()  # drops transformers' compiled decode and its CUDA-graph pools before our rows
        reset_peak()
        ours.to(dev)
        for b in batches:
            ids = prompts[b]
            if "ours-stock" in rows and b == 1:
                _decode_row(case, 'hybrid_hf generate (cache_implementation="dynamic", stock loop)', "hybrid_hf", b,
                            ids, partial(_ours_generate, ours, ids, cache_implementation="dynamic"), bytes_of[b],
                            same_warmup=False, reference=ref.get(b),
                            note=_route(ours, ids, cache_implementation="dynamic"))
            if "ours-fast" in rows:
                _decode_row(case, f"hybrid_hf generate_fast(compile={fast['compile']})", "hybrid_hf", b, ids,
                            partial(generate_fast, ours, ids, **fast), bytes_of[b], same_warmup=True,
                            reference=ref.get(b), note=no_compile)
            if "ours-fast-triton" in rows and dev == "cuda":  # the Triton flash-decoding attention (opt-in)
                _decode_row(case, f"hybrid_hf generate_fast(compile={fast['compile']}, decode_kernel=\"triton\")",
                            "hybrid_hf", b, ids, partial(generate_fast, ours, ids, decode_kernel="triton", **fast),
                            bytes_of[b], same_warmup=True, reference=ref.get(b), note=no_compile)
            if "check" in rows and b == 1 and check_ids is not None:
                _check_row(case, hf_check, ours, check_ids, fast)
            if "ours-static" in rows:
                _decode_row(case, 'hybrid_hf generate (cache_implementation="static")', "hybrid_hf", b, ids,
                            partial(_ours_generate, ours, ids, cache_implementation="static"), bytes_of[b],
                            same_warmup=True, reference=ref.get(b),
                            note=_route(ours, ids, cache_implementation="static")
                            + ("" if dev == "cuda" else "; the routed path compiles only on CUDA"))
        release_decode_buffers(ours)
        del ours
        gc.collect()
        reset_peak()


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


def _ratio(row: dict, kind: str) -> str:
    """``row``'s tokens/s over the fastest transformers row of its case (and batch) in this run's results."""
    best = best_transformers(kind, row.get("case"), row.get("batch") if kind == "decode" else None)
    return f"{row['tok_s'] / best['tok_s']:.2f}" if best and row.get("tok_s") else ""


def markdown(env: dict) -> str:
    lines = ["# hybrid_hf speed benchmark", "", f"Command: `python {' '.join(sys.argv)}`", "",
             "Environment: " + ", ".join(f"{k}={v}" for k, v in env.items() if k != "command"), ""]
    rows = [r for r in RESULTS if r.get("kind") == "train"]
    if rows:
        lines += ["## Train step (bf16 weights; cases ending in 'amp': fp32 weights under bf16 autocast; AdamW fused)", "",
                  "Ratio: tokens/s over the fastest transformers row of the same case in this run "
                  "(eager SDPA or `torch.compile(model)`).", "",
                  "| case | model | tokens/step | tok/s | / best transformers | MFU 6N | MFU 6N+attn | peak GiB |"
                  " first step s | row wall s |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if "skipped" in r:
                lines.append(f"| {r.get('case', '')} | {r['model']} | skipped: {r['skipped']} | | | | | | | |")
            else:
                lines.append(f"| {r.get('case', '')} | {r['model']} | {r['tokens']} | {r['tok_s']} |"
                             f" {_ratio(r, 'train')} | {r['mfu_6N']} | {r['mfu_6N_attn']} | {r['peak_GiB']} |"
                             f" {r['first_step_s']} | {r.get('row_wall_s', '')} |")
        for case in dict.fromkeys(r.get("case") for r in rows):
            best = best_transformers("train", case)
            ours = [r for r in rows if r.get("case") == case and r.get("impl") == "hybrid_hf" and r.get("tok_s")]
            if best and ours:
                top = max(ours, key=lambda r: r["tok_s"])
                lines.append(f"- {case}: best hybrid_hf / best transformers = {top['tok_s']} / {best['tok_s']} = "
                             f"**{top['tok_s'] / best['tok_s']:.2f}×** ({top['variant']} vs {best['variant']})")
        lines.append("")
    rows = [r for r in RESULTS if r.get("kind") == "prefill"]
    if rows:
        lines += ["## Prefill", "", "| model | context | seconds | peak GiB |", "|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['ctx']} | {r['seconds']} | {r['peak_GiB']} |" for r in rows]
        lines.append("")
    rows = [r for r in RESULTS if r.get("kind") == "decode"]
    if rows:
        order = {c: i for i, c in enumerate(DECODE_MODELS)}
        rows = sorted(rows, key=lambda r: (order.get(r["case"], len(order)), r["batch"]))  # stable: run order kept
        new = rows[0]["new"]
        lines += [f"## Decode (greedy, {new} new tokens after the prompt)", "",
                  "tok/s = batch × new tokens / (time of generate(new + 1) − time of generate(1)), minimum over "
                  "rounds, after an untimed warm-up call (identical arguments for compiled paths, which compile and "
                  "capture there). Ratio: over the fastest transformers `generate` of the same case and batch. "
                  f"Roofline: bytes a step must read (all weights once + full-layer K/V at the context + sliding "
                  f"windows) / time per step, as % of {HBM_BYTES_PER_S / 1e12:.1f} TB/s. Agreement: greedy tokens "
                  "equal to transformers' dynamic-cache generate (same weights).", "",
                  "| case | batch | context | model | tok/s | / best transformers | ms/step | GB/step | TB/s |"
                  " roofline % | agreement | peak GiB | first call s | row wall s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            head = f"| {r['case']} | {r['batch']} | {r['ctx']} | {r['model']}"
            if "skipped" in r:
                lines.append(f"{head} | skipped: {r['skipped']} | | | | | | | | | |")
                continue
            note = f" ({r['note']})" if r.get("note") else ""
            if r.get("tok_s") is None:
                lines.append(f"{head}{note} | n/a: {r.get('timing', '')} | | | | | | {r.get('agreement_vs_hf_dynamic', '')}"
                             f" | {r['peak_GiB']} | {r['first_call_s']} | {r.get('row_wall_s', '')} |")
                continue
            lines.append(f"{head}{note} | {r['tok_s']} | {_ratio(r, 'decode')} | {r['step_ms']} |"
                         f" {r['bytes_per_step'] / 1e9:.3f} | {r['achieved_TBps']} | {r['roofline_pct']} |"
                         f" {r.get('agreement_vs_hf_dynamic', '')} | {r['peak_GiB']} | {r['first_call_s']} |"
                         f" {r.get('row_wall_s', '')} |")
        for case, batch in dict.fromkeys((r["case"], r["batch"]) for r in rows):
            best = best_transformers("decode", case, batch)
            ours = [r for r in rows if (r["case"], r["batch"]) == (case, batch) and r["impl"] == "hybrid_hf"
                    and r.get("tok_s")]
            if best and ours:
                top = max(ours, key=lambda r: r["tok_s"])
                lines.append(f"- {case}, batch {batch}: best hybrid_hf / best transformers = {top['tok_s']} / "
                             f"{best['tok_s']} tok/s = **{top['tok_s'] / best['tok_s']:.2f}×** ({top['variant']} vs "
                             f"{best['variant']})")
        lines.append("")
    rows = [r for r in RESULTS if r.get("kind") == "decode_check" and "error" not in r]
    if rows:
        lines += ["## Decode agreement with transformers (same weights, batch 1)", "",
                  "Ours `generate_fast(..., return_logits=True)` vs transformers Qwen3 `generate(output_logits=True)` "
                  "built from our weights with `hybrid_hf.export` (target qwen3). Logits are compared over the steps "
                  "whose inputs are still equal (up to and including the first divergent token).", "",
                  "| case | context | steps | token agreement | first divergence | steps compared | max abs logit diff |"
                  " mean abs logit diff | max abs logit |", "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['case']} | {r['ctx']} | {r['steps']} | {r['token_agreement']} |"
                  f" {'' if r['first_divergence'] is None else r['first_divergence']} | {r['steps_compared']} |"
                  f" {r['max_abs_logit_diff']:.3g} | {r['mean_abs_logit_diff']:.3g} | {r['max_abs_logit']} |" for r in rows]
        lines.append("")
    rows = [r for r in RESULTS if r.get("kind") == "swa_kernel_fwdbwd" and "skipped" not in r]
    if rows:
        lines += ["## Sliding-window attention fwd+bwd", "",
                  "| N | W | ours kernel | Flex ms | ours ms | ours/Flex | max diff |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['N']} | {r['W']} | {r.get('ours_kernel', '')} | {r['flex_ms']} | {r['ours_ms']} | {r['ratio']} |"
                  f" {r['maxdiff']} |" for r in rows]
        lines.append("")
    walls = [r for r in RESULTS if "section" in r and "wall_s" in r]
    if walls:
        lines += ["Section wall times: " + ", ".join(f"{r['section']} {r['wall_s']} s" for r in walls), ""]
    errors = [r for r in RESULTS if "error" in r]
    if errors:
        lines += ["## Errors", ""] + [f"- {r.get('section') or r.get('model') or r.get('case')}: {r['error']}"
                                      for r in errors]
    return "\n".join(lines) + "\n"


def main() -> None:
    global OUT, SMOKE, TRAIN_CASES, FORCED_KERNELS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default: $OUT, else benchmarks/results; --smoke: a temporary folder)")
    parser.add_argument("--sections", nargs="+", default=["train", "prefill", "decode", "kernels"],
                        choices=["train", "prefill", "decode", "kernels"])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU, to check the script itself")
    parser.add_argument("--tag", default="", help="suffix of the result file names")
    parser.add_argument("--train-cases", nargs="+", choices=["3:1 SWA-512", "1:1 SWA-128 NoPE-full", "1:1 GDN"],
                        help="train section: run only these cases (default: all)")
    parser.add_argument("--forced-kernels", action="store_true",
                        help="train section: also run hybrid_hf with each other available attention kernel forced "
                             "(flex, flash_attn) + compile (off by default: it costs a compile per kernel and case)")
    parser.add_argument("--train-precisions", nargs="+", choices=["bf16", "amp"], default=["bf16"],
                        help="train section: bf16 weights (default) and/or amp = fp32 weights under bf16 autocast, "
                             "as Trainer(bf16=True) trains (its rows are the case name + ' amp')")
    parser.add_argument("--decode-models", nargs="+", choices=DECODE_MODELS, default=list(DECODE_MODELS),
                        help="decode section: model kinds (default: all)")
    parser.add_argument("--decode-batches", nargs="+", type=int, default=DECODE_BATCHES,
                        help="decode section: batch sizes (default: 1 16; the agreement check needs 1)")
    parser.add_argument("--decode-rows", nargs="+", choices=DECODE_ROWS, default=list(DECODE_ROWS),
                        help="decode section: which rows (default: all; ours-stock runs at batch 1 only, check is "
                             "the batch-1 agreement/logit check)")
    parser.add_argument("--decode-rounds", type=int, default=2,
                        help="decode section: timed rounds per row, minimum taken (default: 2)")
    parser.add_argument("--check-steps", type=int, default=8, help="decode check: greedy steps compared (default: 8)")
    parser.add_argument("--check-ctx", type=int, default=None,
                        help="decode check: prompt length (default: the decode context; the last tokens of the "
                             "batch-1 prompt)")
    args = parser.parse_args()
    OUT, SMOKE, TRAIN_CASES, FORCED_KERNELS = args.out, args.smoke, args.train_cases, args.forced_kernels
    TRAIN_PRECISIONS[:] = args.train_precisions
    if min(args.decode_batches) < 1 or args.decode_rounds < 1 or args.check_steps < 1:
        parser.error("--decode-batches, --decode-rounds and --check-steps must be positive")
    DECODE_SELECTED.update(models=args.decode_models, batches=args.decode_batches, rows=args.decode_rows,
                           rounds=args.decode_rounds, check_steps=args.check_steps, check_ctx=args.check_ctx)
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
