"""Small-scale reproduction of the paper's two claims on one GPU.

(a) Large-Window Laziness: with a larger SWA window, retrieval heads in the full-attention layers form later.
(b) NoPE on the full-attention layers of a small-window SWA hybrid helps retrieval beyond the training length
    without hurting short-context loss.

The paper's presets (full, swa128, swa512, swa2048, swa128-nope, gdn; 1:1 alternation, full attention on the odd
layers) are built at one small width and trained from scratch in parallel on one GPU, with identical data in
identical order. The paper's windows are relative to its 16K training context, so they are scaled to the training
length here (128/512/2048 of 16384 -> 8/32/128 of 1024); the report states the windows used.

Training data: every sequence is a haystack of random filler sentences (or, with ``--corpus``, half of the
sequences use sentences of a natural-text file) holding several "special magic number" needles, each queried once
at a random later point (multi-query NIAH in the RULER format), so that the loss rewards reading the context and
needle-to-query distances span both sides of every window. Plain next-token loss on all tokens.

Every checkpoint is scored in the training process (no checkpoint files are written):
  - single-needle NIAH (needle at a random depth, query at the end) at lengths up to 4x the training length:
    teacher-forced exact match of the answer, split by whether the needle lay inside the SWA window;
  - the paper's retrieval-head score (attention mass on the answer tokens at the query position) and Wu et al.'s
    copy-paste score (teacher-forced: top-1 attention on the needle token being copied), per (layer, head);
  - normalised attention entropy of the last query positions; short-context loss (256 tokens, no needles);
  - Q/K weights of every attention head, kept to measure their distance to the final checkpoint.
At the end, the library's long-context suite (``hybrid_hf.evaluation``, greedy generation) runs on the final
checkpoint, and retrieval heads are traced over the checkpoints (``hybrid_hf.analysis.trace_from_tables``).

  python benchmarks/reproduction/run.py all --out $OUT --smoke                   # CPU, < 60 s
  python benchmarks/reproduction/run.py all --out $OUT --time-budget 270         # one H200, 7.3 min measured
  python benchmarks/reproduction/run.py train --model swa128 --out DIR            # one model (what `all` spawns)
  python benchmarks/reproduction/run.py report --out DIR                          # rebuild the report from DIR/work
  python benchmarks/reproduction/run.py all --out OUT1 --work W1 --seed 1        # another seed
  python benchmarks/reproduction/run.py report --out C --work OUT0 OUT1          # combined over seeds

``--seed`` (default 0, the runs made before it existed) sets model initialisation and the training data (order and
sampling: needle values, keys and positions); the evaluation prompts stay the same for every seed.

``--out`` receives at most six files: report.md, reproduction.json, retrieval_emergence.png,
length_generalization.png, niah_heatmaps.png, environment.json. Per-model results go to ``--work`` (default
``OUT/../repro-work``); reproduction.json holds them too. ``report`` with several ``--work`` folders (each a work
folder or a run's --out folder) writes a combined report (report.md, combined.json, combined_emergence.png,
combined_length.png) with mean ± sample standard deviation over seeds of the formation steps, NIAH within/beyond
the window and beyond the training length, and short-context loss.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hybrid_hf import PRESETS, HybridConfig, HybridForCausalLM  # noqa: E402
from hybrid_hf.analysis import (  # noqa: E402
    attention_entropy,
    needle_mass,
    qk_weight_distance,
    teacher_forced_copy_scores,
    trace_from_tables,
)
from hybrid_hf.data import build_corpus, read_documents, train_tokenizer  # noqa: E402
from hybrid_hf.evaluation import evaluate_samples, make_suite, summarize  # noqa: E402
from hybrid_hf.evaluation.tasks import ADJECTIVES, NEEDLE, NOUNS, QUERY  # noqa: E402

PAPER_CONTEXT = 16384
MODELS = ("full", "swa128", "swa512", "swa2048", "swa128-nope", "gdn")


def settings(smoke: bool) -> dict:
    if smoke:
        return dict(train_len=256, steps=8, batch=2, every=2, hidden=64, layers=4, heads=4, vocab=1024, lr=3e-3,
                    needles=2, eval_lengths=[256, 512], eval_samples=4, head_samples=2, suite_samples=1,
                    suite_depths=[0.2, 0.8], short_len=64)
    return dict(train_len=1024, steps=3000, batch=16, every=50, hidden=256, layers=8, heads=4, vocab=4096, lr=2e-3,
                needles=8, eval_lengths=[512, 1024, 2048, 4096], eval_samples=48, head_samples=16, suite_samples=2,
                suite_depths=[0.1, 0.3, 0.5, 0.7, 0.9], short_len=256)


# ------------------------------------------------------------------------------------------------ data
SUBJECTS = ["The keeper", "A farmer", "The old clock", "My neighbour", "The river", "A small boat", "The teacher",
            "The wind", "A lighthouse", "The baker", "The committee", "A traveller", "The engine", "The library"]
VERBS = ["counted", "painted", "carried", "remembered", "repaired", "described", "watched", "measured", "followed",
         "ignored", "opened", "borrowed", "collected", "explained"]
OBJECTS = ["the stones", "a letter", "the northern field", "seven lanterns", "the broken gate", "a blue map",
           "the evening tide", "two hundred steps", "the quiet harbour", "an empty jar", "the winter stores",
           "a long story", "the iron bridge", "the last train"]
ENDINGS = ["before dawn", "after the rain", "without a word", "in the valley", "near the market", "once again",
           "for the first time", "at noon", "by the window", "with great care", "on the hill", "every Tuesday"]


def filler_sentences(n: int, seed: int = 7) -> list[str]:
    """Random filler sentences: a haystack that cannot be memorised (a first GPU run with a small natural-text
    haystack learned the text by heart instead of reading the needle)."""
    rng = random.Random(seed)
    return [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(ENDINGS)}."
            for _ in range(n)]


def natural_sentences(docs: list[str]) -> list[str]:
    return [s.strip() + "." for d in docs for s in d.replace("\n", " ").split(". ") if len(s.split()) > 3]


class NeedleData:
    """Token-level generator of haystacks with needles and queries; exact lengths, deterministic per ``rng``."""

    def __init__(self, tokenizer, natural: list[str] | None = None) -> None:
        self.tok = tokenizer
        enc = tokenizer([" " + s for s in filler_sentences(20_000)], add_special_tokens=False)["input_ids"]
        self.filler = [ids for ids in enc if ids]
        self.natural = None
        if natural:
            enc = tokenizer([" " + s for s in natural], add_special_tokens=False)["input_ids"]
            self.natural = [ids for ids in enc if ids]

        self._cache: dict[str, list[int]] = {}

    def enc(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = self.tok(text, add_special_tokens=False)["input_ids"]
        return self._cache[text]

    def _hay(self, n: int, rng: random.Random, natural: bool) -> list[int]:
        pool = self.natural if natural and self.natural else self.filler
        ids: list[int] = []
        while len(ids) < n:
            ids += rng.choice(pool)
        return ids[:n]

    def _needle(self, rng: random.Random, key: str) -> tuple[list[int], list[int], list[int], list[int]]:
        value = str(rng.randrange(10**6, 10**7))
        prefix = self.enc(" " + NEEDLE.format(key=key, value="").split(" .")[0].rstrip())
        value_ids = self.tok(" " + value, add_special_tokens=False)["input_ids"]
        return prefix, value_ids, self.enc("."), self.enc(" " + QUERY.format(key=key))

    def train_sequence(self, length: int, rng: random.Random, needles: int) -> list[int]:
        """Haystack with ``needles`` needles; each is queried (query + answer) at a uniform later point."""
        natural = self.natural is not None and rng.random() < 0.5
        keys = rng.sample([f"{a}-{n}" for a in ADJECTIVES for n in NOUNS], needles)
        events = []  # (haystack position, order, tokens)
        parts = [self._needle(rng, k) for k in keys]
        special = sum(len(p) + 2 * len(v) + len(d) + len(q) for p, v, d, q in parts)
        n_hay = length - special
        if n_hay < 1:
            raise ValueError(f"train length {length} too short for {needles} needles")
        for prefix, value, dot, query in parts:
            a = rng.randrange(n_hay)
            b = rng.randrange(a, n_hay + 1)
            events.append((a, 0, prefix + value + dot))
            events.append((b, 1, query + value))
        events.sort(key=lambda e: (e[0], e[1]))
        hay = self._hay(n_hay, rng, natural)
        ids, last = [], 0
        for pos, _, toks in events:
            ids += hay[last:pos] + toks
            last = pos
        return ids + hay[last:]

    def eval_sample(self, length: int, rng: random.Random, depth: float) -> dict:
        """One RULER niah_single prompt of exactly ``length`` tokens (needle at ``depth``, query at the end) plus
        the gold answer tokens."""
        key = f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"
        prefix, value, dot, query = self._needle(rng, key)
        n_hay = length - len(prefix) - 2 * len(value) - len(dot) - len(query)
        hay = self._hay(n_hay, rng, False)
        cut = int(depth * n_hay)
        ids = hay[:cut] + prefix
        span = (len(ids), len(ids) + len(value))
        ids += value + dot + hay[cut:] + query
        return {"ids": ids + value, "prompt_len": len(ids), "needle_span": span, "depth": depth}


def build_tokenizer(work: Path, vocab: int, corpus: str | None):
    from transformers import AutoTokenizer

    path = work / "tokenizer"
    if (path / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(path), json.loads((work / "natural.json").read_text())
    docs = read_documents(corpus) if corpus else build_corpus(sources=["sample"])  # the same on every machine
    natural = natural_sentences(docs) if corpus else []
    prompts = [NEEDLE.format(key=f"{a}-{n}", value=i) + QUERY.format(key=f"{a}-{n}")
               for i, (a, n) in enumerate((a, n) for a in ADJECTIVES for n in NOUNS)]
    tok = train_tokenizer(docs + filler_sentences(3000) + prompts + [f"{i} " for i in range(10_000)], path,
                          vocab_size=vocab)
    (work / "natural.json").write_text(json.dumps(natural))
    return tok, natural


def make_config(name: str, s: dict, vocab: int) -> HybridConfig:
    size = dict(hidden_size=s["hidden"], intermediate_size=3 * s["hidden"], num_hidden_layers=s["layers"],
                num_attention_heads=s["heads"])
    extra = {}
    if "sliding_window" in PRESETS[name]:  # the paper's window as a share of its 16K training context
        scaled = PRESETS[name]["sliding_window"] * s["train_len"] * s.get("window_scale", 1.0) / PAPER_CONTEXT
        extra["sliding_window"] = max(4, int(scaled))
    return HybridConfig.from_preset(name, size, vocab_size=vocab, max_position_embeddings=8 * s["train_len"],
                                    pad_token_id=0, eos_token_id=1, bos_token_id=2, **extra)


# ---------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_checkpoint(model, data: NeedleData, s: dict, seed: int = 99) -> dict:
    dev = next(model.parameters()).device
    cfg = model.config
    window = cfg.sliding_window if "sliding_attention" in cfg.layer_types else None
    out: dict = {"accuracy": {}, "accuracy_within_window": {}, "accuracy_beyond_window": {}, "n_beyond_window": {},
                 "token_accuracy": {}}
    for n in s["eval_lengths"]:
        rng = random.Random(seed + n)
        smp = [data.eval_sample(n, rng, rng.random()) for _ in range(s["eval_samples"])]
        hits, tok_hits, beyond = [], [], []
        for i in range(0, len(smp), 16):
            chunk = smp[i : i + 16]
            ids = torch.tensor([c["ids"] for c in chunk], device=dev)
            logits = model(ids, use_cache=False).logits
            for j, c in enumerate(chunk):
                p = c["prompt_len"]
                pred = logits[j, p - 1 : -1].argmax(-1)
                ok = pred == ids[j, p:]
                hits.append(bool(ok.all()))
                tok_hits.append(float(ok.float().mean()))
                beyond.append(window is not None and p - 1 - c["needle_span"][0] >= window)
        out["accuracy"][str(n)] = sum(hits) / len(hits)
        out["token_accuracy"][str(n)] = sum(tok_hits) / len(tok_hits)
        far = [h for h, b in zip(hits, beyond) if b]
        near = [h for h, b in zip(hits, beyond) if not b]
        out["accuracy_beyond_window"][str(n)] = sum(far) / len(far) if far else None
        out["accuracy_within_window"][str(n)] = (sum(near) / len(near) if near else None) if window else None
        out["n_beyond_window"][str(n)] = len(far)
    rng = random.Random(seed)
    mass = copy = ent = None
    for _ in range(s["head_samples"]):
        c = data.eval_sample(s["train_len"], rng, rng.uniform(0.05, 0.6))
        ids = torch.tensor([c["ids"]], device=dev)
        att = model(ids, output_attentions=True, use_cache=False).attentions
        needle = list(range(*c["needle_span"]))
        prompt_att = [a[:, :, : c["prompt_len"], : c["prompt_len"]] if a is not None else None for a in att]
        m = needle_mass(att, needle, c["prompt_len"] - 1)
        cp = teacher_forced_copy_scores(att, c["ids"], c["prompt_len"], needle)
        e = attention_entropy(prompt_att)
        mass, copy, ent = (m, cp, e) if mass is None else (mass + m, copy + cp, ent + e)
        del att, prompt_att
    k = s["head_samples"]
    mass, copy, ent = mass / k, copy / k, ent / k
    full = [i for i, t in enumerate(cfg.layer_types) if t == "full_attention"]
    out.update(head_scores=_table(mass), copy_scores=_table(copy), entropy=_table(ent),
               max_head_score_full=float(torch.nan_to_num(mass[full], nan=0).max()),
               max_copy_score_full=float(torch.nan_to_num(copy[full], nan=0).max()))
    rng = random.Random(seed + 1)
    ids = torch.tensor([data._hay(s["short_len"], rng, False) for _ in range(8)], device=dev)
    out["short_loss"] = float(model(ids, labels=ids, use_cache=False).loss)
    return out


def _table(t: torch.Tensor) -> list[list[float | None]]:
    return [[None if v != v else round(float(v), 4) for v in row] for row in t.tolist()]


def _tensor(table: list[list[float | None]]) -> torch.Tensor:
    return torch.tensor([[float("nan") if v is None else v for v in row] for row in table])


# ---------------------------------------------------------------------------------------------- training
def train(name: str, work: Path, smoke: bool, time_budget: float, corpus: str | None, seed: int = 0,
          window_scale: float = 1.0) -> None:
    s = {**settings(smoke), "window_scale": window_scale}
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cpu":  # the models train side by side: one thread each avoids oversubscribing the cores
        torch.set_num_threads(1)
    tok, natural = build_tokenizer(work, s["vocab"], corpus)
    data = NeedleData(tok, natural)
    torch.manual_seed(seed)  # model init (seed 0 reproduces the runs made before --seed existed)
    model = HybridForCausalLM(make_config(name, s, len(tok))).to(dev)
    n_params = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n and "lm_head" not in n)
    opt = torch.optim.AdamW(model.parameters(), lr=s["lr"], weight_decay=0.1, betas=(0.9, 0.95))
    rng = random.Random(1234 + seed)  # identical data, in identical order, for every model of one seed
    curve, qk = [], []
    # dense early (retrieval heads can form within a few hundred steps), sparse later
    ckpt_steps = {x for x in range(s["every"], s["steps"] + 1, s["every"])
                  if x <= s["steps"] // 3 or x % (5 * s["every"]) == 0} | {s["steps"]}
    train_s = 0.0
    for step in range(1, s["steps"] + 1):
        t0 = time.time()
        lr = s["lr"] * min(1.0, step / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / s["steps"])))
        for group in opt.param_groups:
            group["lr"] = lr
        batch = torch.tensor([data.train_sequence(s["train_len"], rng, s["needles"]) for _ in range(s["batch"])],
                             device=dev)
        model.train()
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
            loss = model(batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        train_s += time.time() - t0
        out_of_time = train_s > time_budget
        if step in ckpt_steps or out_of_time:
            model.eval()
            with torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
                ev = evaluate_checkpoint(model, data, s)
            curve.append({"step": step, "tokens": step * s["batch"] * s["train_len"], "train_loss": float(loss.detach()),
                          "train_s": round(train_s, 1), **ev})
            qk.append({k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()
                       if "q_proj" in k or "k_proj" in k})
            print(json.dumps({"model": name, "step": step, "loss": round(float(loss.detach()), 3), "acc": ev["accuracy"],
                              "mass": round(ev["max_head_score_full"], 3), "copy": round(ev["max_copy_score_full"], 3),
                              "train_s": round(train_s, 1)}), flush=True)
        if out_of_time:
            print(json.dumps({"model": name, "stopped_by_time_budget_at_step": step}), flush=True)
            break
    # Q/K distance of every checkpoint to the final one (the paper's reference)
    ref = HybridForCausalLM(model.config).eval()
    ref.load_state_dict({k: v.float().cpu() for k, v in model.state_dict().items()})
    other = HybridForCausalLM(model.config).eval()
    other.load_state_dict(ref.state_dict())
    for entry, weights in zip(curve, qk):
        other.load_state_dict(weights, strict=False)
        entry["qk_distance"] = qk_weight_distance(other, ref)
    try:  # a failure here must not lose the training curves
        suite = final_suite(model, tok, data, s)
    except Exception as exc:  # noqa: BLE001
        suite = {"error": f"{type(exc).__name__}: {exc}", "summary": {}, "records": []}
        print(json.dumps({"model": name, "suite_error": suite["error"]}), flush=True)
    window = model.config.sliding_window if "sliding_attention" in model.config.layer_types else None
    (work / f"{name}.json").write_text(json.dumps({
        "model": name, "seed": seed, "non_embedding_params": n_params, "window": window, "settings": s,
        "tokenizer_sha256": hashlib.sha256((work / "tokenizer" / "tokenizer.json").read_bytes()).hexdigest()[:16],
        "steps_done": curve[-1]["step"], "curve": curve, "suite": suite}))


def final_suite(model, tok, data: NeedleData, s: dict) -> dict:
    """The library's long-context suite (greedy generation) on the final checkpoint."""
    hay = filler_sentences(4000)
    samples = make_suite(tok, ["niah_single", "niah_multikey"], s["eval_lengths"], s["suite_depths"],
                         s["suite_samples"], seed=5, haystack=hay)
    dev = next(model.parameters()).device
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        records = evaluate_samples(model, tok, samples, max_new_tokens=6)
    for r in records:
        r.pop("output", None)
    return {"summary": summarize(records), "records": records}


# ---------------------------------------------------------------------------------------------- report
def first_step(curve: list[dict], key: str, threshold: float) -> int | None:
    return next((c["step"] for c in curve if c[key] >= threshold), None)


def load_results(src: Path, models: list[str]) -> dict:
    """Per-model results of one run: from a --work folder (``MODEL.json``) or, where it has none, from an --out
    folder's ``reproduction.json`` (which holds the same per-model results)."""
    results = {m: json.loads((src / f"{m}.json").read_text()) for m in models if (src / f"{m}.json").exists()}
    if not results and (src / "reproduction.json").exists():
        saved = json.loads((src / "reproduction.json").read_text())["results"]
        results = {m: saved[m] for m in models if m in saved}
    if not results:
        raise SystemExit(f"no model results under {src}")
    return results


def report(out: Path, work: Path, models: list[str]) -> None:
    results = load_results(work, models)
    s = next(iter(results.values()))["settings"]
    for r in results.values():
        steps = [c["step"] for c in r["curve"]]
        r["trace_mass"] = trace_from_tables(steps, [_tensor(c["head_scores"]) for c in r["curve"]], k=4, threshold=0.3)
        r["trace_copy"] = trace_from_tables(steps, [_tensor(c["copy_scores"]) for c in r["curve"]], k=4, threshold=0.1)
        heads = r["trace_mass"]["heads"]
        r["traced_head_entropy"] = [sum(c["entropy"][lay][h] for lay, h in heads) / len(heads) for c in r["curve"]]
    (out / "reproduction.json").write_text(json.dumps({"settings": s, "results": results}, indent=0))
    plots(out, s, results)
    write_report(out, s, results)


def _save_length_plot(fig, ax, s: dict, path: Path) -> None:
    """Axes of a NIAH-by-length plot (log length, training length dashed), then save and close."""
    import matplotlib.pyplot as plt

    ax.axvline(s["train_len"], color="grey", ls="--", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (tokens); dashed: training length")
    ax.set_ylabel("NIAH exact match, final checkpoint")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plots(out: Path, s: dict, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    train_len = str(s["train_len"])
    for name, r in results.items():
        c = r["curve"]
        steps = [x["step"] for x in c]
        label = f"{name} (W={r['window']})" if r["window"] else name
        axes[0, 0].plot(steps, [x["max_head_score_full"] for x in c], marker=".", label=label)
        axes[0, 1].plot(steps, [x["max_copy_score_full"] for x in c], marker=".", label=label)
        axes[1, 0].plot(steps, [x["accuracy"][train_len] for x in c], marker=".", label=label)
        dist = [np.mean([row["qk_rel_l2"] for row in x["qk_distance"] if row["layer_type"] == "full_attention"])
                for x in c]
        axes[1, 1].plot(steps, dist, marker=".", label=label)
    titles = ["paper score: max attention mass on the answer (full layers)",
              "Wu et al. copy-paste score, teacher-forced (full layers)",
              f"single-needle NIAH exact match at {train_len} tokens",
              "Q/K relative distance to the final checkpoint (full layers)"]
    for ax, title in zip(axes.flat, titles):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_ylim(bottom=0)
    axes[0, 1].axhline(0.1, color="grey", ls="--", lw=0.8)
    fig.tight_layout()
    fig.savefig(out / "retrieval_emergence.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results.items():
        last = r["curve"][-1]
        ax.plot(s["eval_lengths"], [last["accuracy"][str(n)] for n in s["eval_lengths"]], marker="o", label=name)
    _save_length_plot(fig, ax, s, out / "length_generalization.png")

    fig, axes = plt.subplots(1, len(results), figsize=(2.6 * len(results), 3.2), squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items()):
        recs = [x for x in r["suite"]["records"] if x["task"] == "niah_single"]
        if not recs:
            ax.set_title(f"{name}: no suite", fontsize=9)
            continue
        lengths, depths = sorted({x["length"] for x in recs}), sorted({x["depth"] for x in recs})
        grid = np.array([[np.mean([x["score"] for x in recs if x["length"] == n and x["depth"] == d] or [np.nan])
                          for n in lengths] for d in depths])
        ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(lengths)), [str(n) for n in lengths], fontsize=7)
        ax.set_yticks(range(len(depths)), [f"{d:.1f}" for d in depths], fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("length")
    axes[0, 0].set_ylabel("needle depth")
    fig.suptitle("niah_single, greedy generation, final checkpoint (green = retrieved)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "niah_heatmaps.png", dpi=100)
    plt.close(fig)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}"


def write_report(out: Path, s: dict, results: dict) -> None:
    lengths = [str(n) for n in s["eval_lengths"]]
    tl = str(s["train_len"])
    seed = next(iter(results.values())).get("seed", 0)
    lines = ["# Small-scale reproduction: retrieval-head emergence (Large-Window Laziness) and NoPE", "",
             f"Seed {seed}. Settings: `{json.dumps(s)}`", "",
             "## (a) Emergence: first checkpoint step at which the criterion holds (`-`: never)", "",
             "| model | window | non-emb params | steps | copy score >= 0.1 | mass >= 0.3 | mass >= 0.5 |"
             f" NIAH@{tl} >= 50% | final mass | final copy |", "|---" * 10 + "|"]
    for name, r in results.items():
        c = r["curve"]
        acc = [{"step": x["step"], "a": x["accuracy"][tl]} for x in c]
        cells = [first_step(c, "max_copy_score_full", 0.1), first_step(c, "max_head_score_full", 0.3),
                 first_step(c, "max_head_score_full", 0.5), first_step(acc, "a", 0.5)]
        lines.append(f"| {name} | {r['window'] or '-'} | {r['non_embedding_params']:,} | {r['steps_done']} | "
                     + " | ".join("-" if v is None else str(v) for v in cells)
                     + f" | {c[-1]['max_head_score_full']:.3f} | {c[-1]['max_copy_score_full']:.3f} |")
    lines += ["", "Traced heads (top-4 by the paper's score on the final checkpoint; first step >= 0.3):", ""]
    for name, r in results.items():
        t = r["trace_mass"]
        lines.append(f"- {name}: " + ", ".join(f"{h} first {t['first_step_above'][h]} final {v[-1]:.2f}"
                                                for h, v in t["curves"].items())
                     + f"; mean normalised entropy of these heads {r['traced_head_entropy'][0]:.2f} (first ckpt)"
                     f" -> {r['traced_head_entropy'][-1]:.2f} (final)")
    lines += ["", "## (b) Final checkpoint: NIAH by length (teacher-forced exact match %; in brackets: needles beyond"
              " the SWA window only) and short-context loss", "",
              "| model | " + " | ".join(lengths) + " | short loss |", "|---" * (len(lengths) + 2) + "|"]
    for name, r in results.items():
        last = r["curve"][-1]
        cells = [f"{_pct(last['accuracy'][n])} ({_pct(last['accuracy_beyond_window'][n])})" for n in lengths]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {last['short_loss']:.3f} |")
    lines += ["", "## Library suite on the final checkpoint (greedy generation, string match %)", "",
              "| model | task | " + " | ".join(lengths) + " |", "|---" * (len(lengths) + 2) + "|"]
    for name, r in results.items():
        if "error" in r["suite"]:
            lines.append(f"| {name} | error: {r['suite']['error'][:80]} |" + " |" * len(lengths))
        for task, by_len in r["suite"]["summary"].items():
            lines.append(f"| {name} | {task} | " + " | ".join(_pct(by_len.get(n)) for n in lengths) + " |")
    lines += ["", "## Automatic reading (one seed per model: a first indication, not a significance test)", ""]
    lines += reading(s, results)
    lines += ["", "![emergence](retrieval_emergence.png)", "", "![length](length_generalization.png)", "",
              "![heatmaps](niah_heatmaps.png)", ""]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def reading(s: dict, results: dict) -> list[str]:
    """Plain statements of what the tables say about (a) and (b)."""
    out = []
    onsets = swa_onsets(results)
    if len(onsets) >= 2:
        shown = ", ".join(f"W={w}: {'never' if st is None else st}" for w, _, st in onsets)
        out.append(f"- (a) first checkpoint with a full-layer copy-paste score >= 0.1: {shown} -> "
                   f"{onset_verdict([st for _, _, st in onsets])}.")
    if "swa128" in results and "swa128-nope" in results:
        rope, nope = results["swa128"]["curve"][-1], results["swa128-nope"]["curve"][-1]
        beyond = [str(n) for n in s["eval_lengths"] if n > s["train_len"]]
        acc = ", ".join(f"{n}: RoPE {_pct(rope['accuracy'][n])}% vs NoPE {_pct(nope['accuracy'][n])}%" for n in beyond)
        at_train = (f"{_pct(rope['accuracy'][str(s['train_len'])])}% vs "
                    f"{_pct(nope['accuracy'][str(s['train_len'])])}%")
        gain = sum(nope["accuracy"][n] - rope["accuracy"][n] for n in beyond) / max(len(beyond), 1)
        dloss = nope["short_loss"] - rope["short_loss"]
        out.append(f"- (b) NIAH beyond the training length ({acc}; at the training length {at_train}); "
                   f"short-context loss RoPE {rope['short_loss']:.3f} vs NoPE {nope['short_loss']:.3f} "
                   f"({dloss:+.3f}). NoPE {'raises' if gain > 0.05 else 'does not raise'} NIAH beyond the training "
                   f"length (mean {100 * gain:+.0f} points) and {'hurts' if dloss > 0.02 else 'does not hurt'} "
                   "short-context loss (threshold 0.02 nats).")
    return out or ["- not enough models for (a) or (b)."]


def swa_onsets(results: dict, threshold: float = 0.1) -> list[tuple[int, str, int | None]]:
    """(window, model, first step with a full-layer copy-paste score >= threshold) for the RoPE SWA models."""
    swa = sorted((r["window"], name) for name, r in results.items()
                 if r["window"] and name.startswith("swa") and not name.endswith("nope"))
    return [(w, name, first_step(results[name]["curve"], "max_copy_score_full", threshold)) for w, name in swa]


def onset_verdict(onsets: list[int | None], threshold: float = 0.1) -> str:
    steps = [st if st is not None else math.inf for st in onsets]
    if all(math.isinf(x) for x in steps):
        return (f"no SWA model formed a retrieval head (copy score >= {threshold}) within the budget: (a) cannot be "
                "judged")
    if all(a <= b for a, b in zip(steps, steps[1:])) and steps[0] < steps[-1]:
        return "onset grows with the window, as Large-Window Laziness predicts"
    if all(a == steps[0] for a in steps):
        return "onset is the same for every window (checkpoint spacing may hide a difference)"
    return "onset does not grow monotonically with the window"


# ------------------------------------------------------------------------------------- report over seeds
def key_numbers(r: dict, s: dict) -> dict:
    """The numbers the combined report compares across seeds, for one model of one run."""
    c, tl = r["curve"], str(s["train_len"])
    last = c[-1]
    beyond = [str(n) for n in s["eval_lengths"] if n > s["train_len"]]
    acc = [{"step": x["step"], "a": x["accuracy"][tl]} for x in c]
    return {
        "steps_done": r["steps_done"],
        "onset_copy_0.1": first_step(c, "max_copy_score_full", 0.1),
        "onset_copy_0.5": first_step(c, "max_copy_score_full", 0.5),
        "onset_mass_0.3": first_step(c, "max_head_score_full", 0.3),
        "onset_niah_50": first_step(acc, "a", 0.5),
        "final_copy": last["max_copy_score_full"],
        "final_mass": last["max_head_score_full"],
        "niah_train_len": last["accuracy"][tl],
        "niah_within_window": last.get("accuracy_within_window", {}).get(tl),
        "niah_beyond_window": last["accuracy_beyond_window"][tl],
        "niah_beyond_train_len": sum(last["accuracy"][n] for n in beyond) / len(beyond) if beyond else None,
        "niah_by_length": {n: last["accuracy"][n] for n in last["accuracy"]},
        "short_loss": last["short_loss"],
    }


def _mean_sd(vals: list[float]) -> tuple[float, float]:
    m = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return m, sd


def _cell(vals: list, kind: str, steps_done: list[int] | None = None) -> str:
    """``mean ± sd [per seed]``; kind 'pct' (fractions as %), 'loss' (3 decimals) or 'step' (None = never formed,
    shown as >steps done; no mean unless every seed formed)."""
    if kind == "step":
        seeds = ", ".join(str(v) if v is not None else f">{d}" for v, d in zip(vals, steps_done))
        if any(v is None for v in vals):
            formed = sum(v is not None for v in vals)
            return f"{formed}/{len(vals)} formed [{seeds}]"
        m, sd = _mean_sd(vals)
        return f"{m:.0f} ± {sd:.0f} [{seeds}]"
    if any(v is None for v in vals):
        return "-"
    scale, fmt = (100, "{:.0f}") if kind == "pct" else (1, "{:.3f}")
    m, sd = _mean_sd([scale * v for v in vals])
    return f"{fmt.format(m)} ± {fmt.format(sd)} [" + ", ".join(fmt.format(scale * v) for v in vals) + "]"


def combined_report(out: Path, sources: list[Path], models: list[str]) -> None:
    """Report over several runs (one per seed): mean ± sample standard deviation of the key numbers."""
    runs = [load_results(src, models) for src in sources]
    seeds = [next(iter(r.values())).get("seed", 0) for r in runs]
    s = next(iter(runs[0].values()))["settings"]
    notes = []
    if len(set(seeds)) < len(seeds):
        notes.append(f"- WARNING: repeated seeds {seeds}: the runs are not independent.")
    if any(next(iter(r.values()))["settings"] != s for r in runs):
        notes.append("- WARNING: the runs used different settings; only the first run's are shown.")
    shas = {r.get("tokenizer_sha256") for run in runs for r in run.values()}
    if len(shas) > 1:
        notes.append(f"- WARNING: the runs used different tokenizers ({sorted(map(str, shas))}).")
    names = [m for m in models if all(m in run for run in runs)]
    keys = {m: [key_numbers(run[m], s) for run in runs] for m in names}
    window = {m: runs[0][m]["window"] for m in names}
    tl = str(s["train_len"])
    lengths = [str(n) for n in s["eval_lengths"]]

    def col(m: str, k: str) -> list:
        return [x[k] for x in keys[m]]

    lines = ["# Small-scale reproduction over seeds: retrieval-head emergence and NoPE", "",
             f"Seeds {seeds} (runs: {', '.join(str(p) for p in sources)}). Each cell: mean ± sample standard "
             "deviation over seeds [value of each seed, in seed order]. The evaluation prompts are the same for "
             "every seed; the seed sets model initialisation and training data.", "",
             f"Settings: `{json.dumps(s)}`", "", *notes, *([""] if notes else []),
             "## (a) Emergence: first checkpoint step at which the criterion holds (>N: not by the last step N)", "",
             "Copy score >= 0.1 is Wu et al.'s threshold; with answers of about four tokens (a leading space token"
             " and digit groups) a head that copies only the first answer token already scores about 0.25, so"
             " copy score >= 0.5 (at least two answer tokens copied by one head) is the stricter criterion.", "",
             f"| model | window | steps done | copy score >= 0.1 | copy score >= 0.5 | mass >= 0.3 | NIAH@{tl} >= 50% |"
             " final copy | final mass |", "|---" * 9 + "|"]
    for m in names:
        done = col(m, "steps_done")
        lines.append(f"| {m} | {window[m] or '-'} | {', '.join(map(str, done))} | "
                     + " | ".join(_cell(col(m, k), "step", done) for k in ("onset_copy_0.1", "onset_copy_0.5",
                                                                             "onset_mass_0.3", "onset_niah_50"))
                     + f" | {_cell(col(m, 'final_copy'), 'loss')} | {_cell(col(m, 'final_mass'), 'loss')} |")
    lines += ["", "## (b) Final checkpoint: NIAH (teacher-forced exact match %) and short-context loss", "",
              f"| model | window | NIAH@{tl} | within window @{tl} | beyond window @{tl} | beyond training length "
              f"(mean of {', '.join(n for n in lengths if int(n) > s['train_len'])}) | short loss |",
              "|---" * 7 + "|"]
    for m in names:
        lines.append(f"| {m} | {window[m] or '-'} | " + " | ".join(
            _cell(col(m, k), "pct") for k in ("niah_train_len", "niah_within_window", "niah_beyond_window",
                                              "niah_beyond_train_len")) + f" | {_cell(col(m, 'short_loss'), 'loss')} |")
    lines += ["", "NIAH by length (all needles, %):", "", "| model | " + " | ".join(lengths) + " |",
              "|---" * (len(lengths) + 1) + "|"]
    for m in names:
        lines.append(f"| {m} | " + " | ".join(_cell([x["niah_by_length"][n] for x in keys[m]], "pct")
                                              for n in lengths) + " |")
    lines += ["", "## Automatic reading over seeds", ""] + combined_reading(s, runs, seeds, keys)
    lines += ["", "![emergence](combined_emergence.png)", "", "![length](combined_length.png)", ""]
    out.mkdir(parents=True, exist_ok=True)
    envs = [json.loads((p / "environment.json").read_text()) if (p / "environment.json").exists() else None
            for p in sources]
    (out / "combined.json").write_text(json.dumps({"seeds": seeds, "sources": [str(p) for p in sources],
                                                   "settings": s, "windows": window, "key_numbers": keys,
                                                   "environments": envs}, indent=1))
    combined_plots(out, s, runs, seeds, names)
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def combined_reading(s: dict, runs: list[dict], seeds: list[int], keys: dict) -> list[str]:
    out = []
    for threshold in (0.1, 0.5):
        verdicts = []
        for seed, run in zip(seeds, runs):
            onsets = swa_onsets(run, threshold)
            if len(onsets) >= 2:
                v = onset_verdict([st for _, _, st in onsets], threshold)
                verdicts.append(v)
                shown = ", ".join(f"W={w}: {'never' if st is None else st}" for w, _, st in onsets)
                out.append(f"- (a) seed {seed}: first step with copy score >= {threshold}: {shown} -> {v}.")
        if verdicts:
            grows = sum(v.startswith("onset grows") for v in verdicts)
            out.append(f"- (a) over seeds, copy score >= {threshold}: the onset grows with the window in {grows} of "
                       f"{len(verdicts)} seeds.")
    if "swa128" in keys and "swa128-nope" in keys:
        gain = [n["niah_beyond_train_len"] - r["niah_beyond_train_len"]
                for r, n in zip(keys["swa128"], keys["swa128-nope"])]
        dloss = [n["short_loss"] - r["short_loss"] for r, n in zip(keys["swa128"], keys["swa128-nope"])]
        g, gsd = _mean_sd(gain)
        d, dsd = _mean_sd(dloss)
        raises = g > 0.05 and all(x > 0 for x in gain)
        out.append(f"- (b) NoPE minus RoPE (swa128), NIAH beyond the training length: {100 * g:+.0f} ± {100 * gsd:.0f}"
                   f" points [{', '.join(f'{100 * x:+.0f}' for x in gain)}]; short-context loss {d:+.3f} ± {dsd:.3f}"
                   f" [{', '.join(f'{x:+.3f}' for x in dloss)}] -> NoPE "
                   f"{'raises' if raises else 'does not consistently raise'} NIAH beyond the training length (mean "
                   f"> 5 points and positive in every seed) and {'hurts' if d > 0.02 else 'does not hurt'} "
                   "short-context loss (mean threshold 0.02 nats).")
    return out or ["- not enough models for (a) or (b)."]


def combined_plots(out: Path, s: dict, runs: list[dict], seeds: list[int], names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tl = str(s["train_len"])
    colors = {m: f"C{i}" for i, m in enumerate(names)}
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for i, (seed, run) in enumerate(zip(seeds, runs)):
        for m in names:
            c = run[m]["curve"]
            steps = [x["step"] for x in c]
            label = f"{m} (W={run[m]['window']})" if run[m]["window"] else m
            kw = dict(color=colors[m], ls=styles[i % len(styles)], lw=1.2, label=f"{label}, seed {seed}")
            axes[0].plot(steps, [x["max_copy_score_full"] for x in c], **kw)
            axes[1].plot(steps, [x["max_head_score_full"] for x in c], **kw)
            axes[2].plot(steps, [x["accuracy"][tl] for x in c], **kw)
    titles = ["Wu et al. copy-paste score, teacher-forced (max over full layers)",
              "paper score: attention mass on the answer (max over full layers)",
              f"single-needle NIAH exact match at {tl} tokens"]
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].axhline(0.1, color="grey", ls="--", lw=0.8)
    axes[2].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "combined_emergence.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for m in names:
        acc = np.array([[run[m]["curve"][-1]["accuracy"][str(n)] for n in s["eval_lengths"]] for run in runs])
        mean = acc.mean(0)
        ax.errorbar(s["eval_lengths"], mean, yerr=[mean - acc.min(0), acc.max(0) - mean], marker="o", capsize=3,
                    label=m, color=colors[m])
    ax.set_title(f"mean over seeds {seeds}; bars: min to max", fontsize=9)
    _save_length_plot(fig, ax, s, out / "combined_length.png")


def environment() -> dict:
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "cuda": torch.version.cuda, "argv": sys.argv}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["train", "report", "all"])
    parser.add_argument("--model", choices=MODELS, help="model to train (command train)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--out", type=Path, required=True, help="folder for the report, JSON and plots")
    parser.add_argument("--work", type=Path, nargs="+",
                        help="folder for the tokenizer and per-model results; command report also takes several "
                             "(one per seed; a run's --out folder with its reproduction.json works too) and then "
                             "writes a combined report with mean ± sd over seeds")
    parser.add_argument("--corpus", help="text/.jsonl file of natural text: half the training haystacks use it")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run of the whole pipeline")
    parser.add_argument("--time-budget", type=float, default=float("inf"),
                        help="seconds of training per model (evaluation excluded) before it stops early")
    parser.add_argument("--seed", type=int, default=0,
                        help="model initialisation and training data (order and sampling); evaluation prompts are "
                             "the same for every seed")
    parser.add_argument("--window-scale", type=float, default=1.0,
                        help="multiply the scaled windows (e.g. 4: 32/128/512 of 1024 instead of 8/32/128)")
    args = parser.parse_args()
    if args.window_scale <= 0:
        parser.error(f"--window-scale must be > 0, got {args.window_scale}")
    if args.work and len(args.work) > 1:
        if args.command != "report":
            parser.error("several --work folders only with command report")
        combined_report(args.out, args.work, args.models)
        return
    work = args.work[0] if args.work else args.out.resolve().parent / "repro-work"
    args.out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    if args.command == "train":
        train(args.model, work, args.smoke, args.time_budget, args.corpus, args.seed, args.window_scale)
        return
    if args.command == "all":
        t0 = time.time()
        build_tokenizer(work, settings(args.smoke)["vocab"], args.corpus)
        extra = ["--smoke"] if args.smoke else []
        extra += ["--corpus", args.corpus] if args.corpus else []
        procs = [subprocess.Popen([sys.executable, __file__, "train", "--model", m, "--out", str(args.out),
                                   "--work", str(work), "--time-budget", str(args.time_budget),
                                   "--seed", str(args.seed), "--window-scale", str(args.window_scale)] + extra)
                 for m in args.models]
        codes = dict(zip(args.models, (p.wait() for p in procs)))
        env = {**environment(), "seed": args.seed, "exit_codes": codes, "wall_s": round(time.time() - t0, 1)}
        (args.out / "environment.json").write_text(json.dumps(env, indent=1))
    report(args.out, work, args.models)


if __name__ == "__main__":
    main()
