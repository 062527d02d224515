"""Recovery curve of a pretrained model converted to a 1:1 sliding-window hybrid and healed by distillation.

    python benchmarks/convert_recovery.py --out benchmarks/results/convert-recovery-h200      # one H200, < 9 min
    python benchmarks/convert_recovery.py --smoke --out /tmp/convert-smoke                     # CPU, about a minute

1. Initialise a ~300M-parameter stock ``Qwen3ForCausalLM`` (QK-norm, GQA, head_dim 128; random weights made here)
   with an offline BPE tokenizer, and pretrain it for ``--pretrain-s`` seconds on rows of ``block`` tokens, most of
   which hold passkey / NIAH documents built by ``hybrid_hf.evaluation.make_sample`` followed by their answer
   (``hybrid_hf.data.answer_ids``: a copy of the needle's value tokens) and eos, the rest natural text. The answer
   tokens get ``answer_weight`` in the loss. On CUDA the decoder layers are compiled (regional ``torch.compile``,
   eager fallback), weights fp32 under bf16 autocast, AdamW with warmup, a constant phase and a linear decay over
   the time budget. The teacher's NIAH score is measured at the end.
2. Import it into hybrid_hf (logit gap recorded), convert every other layer to a ``--window``-token sliding window
   (zero new parameters).
3. Distil the hybrid from the original (KL on packed rows, ``DistillationTrainer``) for what is left of the budget,
   measuring the held-out KL (natural text and needle documents), held-out loss and the passkey / NIAH score at the
   start and ``evals`` times while it trains.

``--budget-s`` bounds the whole run (from interpreter start): pretraining stops early enough to leave the reserve
for the rest, distillation gets what is left after the measurements, and stops (with a last measurement) at the
deadline. ``convert-recovery.json`` and ``convert-recovery.md`` are rewritten in ``--out`` after every phase and
every measurement, so a run killed from outside still leaves the record so far (``status`` says how far it got).
"""

from __future__ import annotations

import time

T_START = time.time()  # the budget counts from here (imports included)

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import Qwen3Config, Qwen3ForCausalLM  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybrid_hf.convert import hybridize, import_model, plan_layer_types  # noqa: E402
from hybrid_hf.data import answer_ids, build_corpus, tokenize_stream, train_tokenizer  # noqa: E402
from hybrid_hf.evaluation import evaluate_samples, make_sample, summarize  # noqa: E402
from hybrid_hf.modeling.loss import shift_labels, token_losses  # noqa: E402
from hybrid_hf.training import (  # noqa: E402
    IGNORE_INDEX,
    DistillationTrainer,
    RecoveryCallback,
    TokenBlockDataset,
    distillation_loss,
    evaluate_causal_lm,
    mean_kl,
    pack_documents,
    split_documents,
    tokenize_documents,
    training_arguments,
)

PROFILES = {
    # ~300M parameters (20 x 14.9M + 8.4M tied embeddings), Qwen3-0.6B's head layout. Rows of 512 tokens; the NIAH
    # prompts are 240 and 496 tokens, so that prompt + answer + eos fit one training row.
    "h200": dict(hidden_size=1024, num_hidden_layers=20, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                 intermediate_size=2816, vocab=8192, block=512, batch=16, lengths=[240, 496], min_length=96,
                 window=128, pretrain_s=280.0, reserve_s=150.0, distill_min_s=30.0, evals=4, lr=1e-3,
                 warmup_steps=100, decay_from=0.7, distill_lr=3e-4, corpus_chars=8_000_000, pretrain_rows=80_000,
                 distill_rows=8_000, needle_fraction=0.8, answer_weight=5.0, compile=True),
    "smoke": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  intermediate_size=128, vocab=512, block=192, batch=8, lengths=[176], min_length=128, window=16,
                  pretrain_s=20.0, reserve_s=25.0, distill_min_s=5.0, evals=2, lr=3e-3, warmup_steps=20,
                  decay_from=0.7, distill_lr=1e-3, corpus_chars=200_000, pretrain_rows=1_200, distill_rows=300,
                  needle_fraction=0.8, answer_weight=5.0, compile=False),
}
TASKS = ("passkey", "niah_single")
MAX_ANSWER_TOKENS = 9  # " " + at most 7 digit tokens, with one to spare
NIAH_NEW_TOKENS = 10
KL_ROWS = 16
WORKER: dict[str, Any] = {}  # state the forked data workers inherit (tokenizer, haystack, text stream, settings)


# ----------------------------------------------------------------------------------------------------------- data
def needle_document(tokenizer, haystack: list[str], length: int, rng: random.Random) -> tuple[list[int], int, int]:
    """A passkey / NIAH prompt of ``length`` tokens exactly as the evaluation builds it (``make_sample``), then its
    answer (``answer_ids``: the needle's value tokens after a space) and eos; also where the answer starts and its
    length."""
    sample = make_sample(rng.choice(TASKS), tokenizer, length, depth=rng.random(), seed=rng.randrange(2**31),
                         haystack=haystack)
    answer = answer_ids(tokenizer, sample.answers[0])
    if len(answer) > MAX_ANSWER_TOKENS:
        raise ValueError(f"answer {sample.answers[0]!r} takes {len(answer)} tokens > {MAX_ANSWER_TOKENS}")
    return sample.input_ids + answer + [tokenizer.eos_token_id], len(sample.input_ids), len(answer)


def text_documents(stream: np.ndarray, n: int, eos: int, rng: random.Random) -> list[list[int]]:
    """``n`` tokens of natural text from a random offset of ``stream``, split after every eos (one document each)."""
    start = rng.randrange(len(stream) - n)
    piece = stream[start : start + n].tolist()
    docs, cur = [], []
    for tok in piece:
        cur.append(tok)
        if tok == eos:
            docs.append(cur)
            cur = []
    return docs + ([cur] if cur else [])


def build_row(rng: random.Random, tokenizer, haystack: list[str], stream: np.ndarray, block: int, lengths: list[int],
              min_length: int, needle_fraction: float) -> tuple[dict[str, list[int]], list[int]]:
    """One packed row of ``block`` tokens: with probability ``needle_fraction`` one or more needle documents (half of
    the first ones at an evaluation length, the others of random length) and natural text after them, else natural
    text only. Returns the row (``pack_documents``: positions restart per document) and the answer positions."""
    docs: list[list[int]] = []
    answers: list[int] = []
    used = 0
    if rng.random() < needle_fraction:
        while True:
            longest = block - used - MAX_ANSWER_TOKENS - 1
            if longest < min_length:
                break
            fitting = [n for n in lengths if n <= longest]
            if not docs and fitting and rng.random() < 0.4:
                length = rng.choice(fitting)
            else:
                length = rng.randint(min_length, longest)
            ids, start, n_answer = needle_document(tokenizer, haystack, length, rng)
            answers += range(used + start, used + start + n_answer)
            docs.append(ids)
            used += len(ids)
            if rng.random() < 0.3:
                break
    if used < block:
        docs += text_documents(stream, block - used, tokenizer.eos_token_id, rng)
    rows = pack_documents(docs, block, pad_token_id=tokenizer.pad_token_id)
    assert len(rows) == 1, "the documents of a row must fill exactly one block"
    return rows[0], answers


def build_rows_chunk(args: tuple[int, int, float]) -> dict[str, np.ndarray]:
    """``n`` rows from seed ``seed`` (run in a forked worker; reads ``WORKER``) as int32 arrays plus the answer
    mask."""
    seed, n, needle_fraction = args
    w = WORKER
    rng = random.Random(seed)
    out = {k: np.zeros((n, w["block"]), dtype=np.int32) for k in ("input_ids", "position_ids", "labels")}
    out["answer"] = np.zeros((n, w["block"]), dtype=bool)
    for i in range(n):
        row, answers = build_row(rng, w["tokenizer"], w["haystack"], w["stream"], w["block"], w["lengths"],
                                 w["min_length"], needle_fraction)
        for k in ("input_ids", "position_ids", "labels"):
            out[k][i] = row[k]
        out["answer"][i, answers] = True
    return out


def build_rows(n: int, seed: int, needle_fraction: float, workers: int, chunk: int = 500) -> dict[str, np.ndarray]:
    """``n`` rows, deterministic by ``seed`` (chunks of ``chunk`` rows, each from its own seed), built by ``workers``
    forked processes (before any CUDA use) or in this process."""
    jobs = [(seed * 1_000_003 + i, min(chunk, n - i * chunk), needle_fraction) for i in range((n + chunk - 1) // chunk)]
    if workers > 1 and len(jobs) > 1:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the workers are forked after the tokenizer ran
        with multiprocessing.get_context("fork").Pool(min(workers, len(jobs))) as pool:
            parts = pool.map(build_rows_chunk, jobs)
    else:
        parts = [build_rows_chunk(j) for j in jobs]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def check_format(tokenizer, haystack: list[str], lengths: list[int]) -> None:
    """The training documents hold exactly the evaluation prompt followed by a copy of the needle's value."""
    for task in TASKS:
        for length in lengths:
            s = make_sample(task, tokenizer, length, depth=0.5, seed=7, haystack=haystack)
            answer = answer_ids(tokenizer, s.answers[0])
            start, end = s.needle_spans[0]
            assert answer[1:] == s.input_ids[start:end], (task, length, "answer tokens are not the needle's")
            assert tokenizer.decode(answer).strip() == s.answers[0], (task, length, "answer does not decode")


# ------------------------------------------------------------------------------------------------------- training
def weighted_lm_loss(logits: torch.Tensor, labels: torch.Tensor, answer: torch.Tensor, answer_weight: float
                     ) -> tuple[torch.Tensor, ...]:
    """Next-token cross-entropy, answer tokens weighted ``answer_weight`` (ignored labels 0, others 1); also the
    mean loss on the answer tokens and on the other tokens (detached)."""
    ce = token_losses(logits, labels)  # position t scored against labels[t + 1]; 0 where ignored
    valid = shift_labels(labels) != IGNORE_INDEX
    answer = shift_labels(answer, False)
    w = valid.float() + (answer_weight - 1.0) * answer.float()
    loss = (ce * w).sum() / w.sum().clamp(min=1e-6)
    other = valid & ~answer
    with torch.no_grad():
        ans_loss = (ce * answer).sum() / answer.sum().clamp(min=1)
        other_loss = (ce * other).sum() / other.sum().clamp(min=1)
    return loss, ans_loss, other_loss


def compile_layers(model: Qwen3ForCausalLM) -> None:
    """Regional compilation: each decoder layer is compiled (one graph, shared by all layers of the same code)."""
    for layer in model.model.layers:
        layer.compile()


def pretrain(model: Qwen3ForCausalLM, rows: dict[str, torch.Tensor], cfg: dict, deadline: float, device: str,
             use_compile: bool, log: list[dict], progress=None) -> tuple[Qwen3ForCausalLM, dict]:
    """AdamW until ``deadline``: linear warmup over ``warmup_steps``, constant lr up to ``decay_from`` of the time,
    then linear decay to 10%; bf16 autocast on CUDA. Compiled decoder layers when ``use_compile`` (on an error in
    a compiled step the model is rebuilt eager from the same weights and training goes on). ``progress()`` is called
    about every 30 s (the report is rewritten with the loss log so far)."""
    config = model.config

    def optimizer(m):
        return torch.optim.AdamW(m.parameters(), lr=cfg["lr"], betas=(0.9, 0.95), weight_decay=0.1,
                                 fused=device == "cuda")

    compiled = False
    if use_compile:
        compile_layers(model)
        compiled = True
    opt = optimizer(model)
    model.train()
    n, batch = rows["input_ids"].shape[0], cfg["batch"]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0)).to(device)
    start = time.time()
    total = max(deadline - start, 1e-3)
    step, first_step_s, fallback = 0, None, None
    last_print = last_progress = start
    while time.time() < deadline:
        frac = (time.time() - start) / total
        decay = 1.0 if frac < cfg["decay_from"] else max(0.1, 1.0 - 0.9 * (frac - cfg["decay_from"]) / (1 - cfg["decay_from"]))
        lr = cfg["lr"] * min(1.0, (step + 1) / cfg["warmup_steps"]) * decay
        for g in opt.param_groups:
            g["lr"] = lr
        begin = (step * batch) % n
        idx = order[begin : begin + batch]
        if idx.numel() < batch:
            idx = torch.cat([idx, order[: batch - idx.numel()]])
        t_step = time.time()
        try:
            with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
                logits = model(input_ids=rows["input_ids"][idx], position_ids=rows["position_ids"][idx],
                               use_cache=False).logits
            loss, ans_loss, other_loss = weighted_lm_loss(logits, rows["labels"][idx], rows["answer"][idx],
                                                          cfg["answer_weight"])
            del logits
            loss.backward()
        except Exception as exc:  # a compile failure: go on eager with the same weights
            if not compiled:
                raise
            fallback = f"{type(exc).__name__}: {str(exc)[:300]}"
            print(f"pretrain: compiled step failed ({fallback}); continuing eager", flush=True)
            opt.zero_grad(set_to_none=True)
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            with torch.device(device):
                model = Qwen3ForCausalLM(config)
            model.load_state_dict(state)
            model.train()
            opt, compiled = optimizer(model), False
            continue
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if step == 1:
            float(loss.detach())  # waits for the first step (compilation included)
            first_step_s = time.time() - t_step
        if step == 1 or step % 25 == 0:
            entry = {"step": step, "s": round(time.time() - start, 1), "lr": lr, "loss": float(loss.detach()),
                     "answer_loss": float(ans_loss), "text_loss": float(other_loss)}
            log.append(entry)
            if step == 1 or time.time() - last_print > 10:
                last_print = time.time()
                print(f"pretrain step {step}: loss {entry['loss']:.3f} (answer {entry['answer_loss']:.3f}, "
                      f"text {entry['text_loss']:.3f}), lr {lr:.1e}, {entry['s']:.0f} s", flush=True)
            if progress is not None and time.time() - last_progress > 30:
                last_progress = time.time()
                progress()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.time() - start
    model.eval()
    steady = (seconds - (first_step_s or 0.0)) / max(step - 1, 1)
    return model, {"steps": step, "seconds": seconds, "tokens": step * batch * cfg["block"],
                   "first_step_s": first_step_s, "steady_step_s": steady, "compiled": compiled,
                   "compile_fallback": fallback}


def niah_records(model, tokenizer, samples) -> list[dict]:
    return evaluate_samples(model, tokenizer, samples, max_new_tokens=NIAH_NEW_TOKENS)


def niah_summary(records: list[dict], window: int) -> dict[str, Any]:
    """Mean score overall, on the prompts whose needle lies ``window`` or more tokens before the query (beyond the
    student's sliding window; the same prompts for the teacher), and per task and length."""
    beyond = [r["score"] for r in records if r["needle_distance"] >= window]
    return {"niah": sum(r["score"] for r in records) / len(records),
            "niah_beyond_window": sum(beyond) / len(beyond) if beyond else None,
            "niah_by_task_length": summarize(records)}


class Recorder(RecoveryCallback):
    """``RecoveryCallback`` that also measures the KL on needle documents and the held-out loss, writes the report
    after every measurement and stops training (after a last measurement) at ``stop_at``."""

    def __init__(self, *args: Any, needle_batches, loss_rows, window: int, stop_at: float, report, **kwargs: Any
                 ) -> None:
        super().__init__(*args, **kwargs)
        self.window = window
        self.needle_batches, self.loss_rows, self.stop_at, self.report = needle_batches, loss_rows, stop_at, report
        self.measure_s: list[float] = []

    def measure(self, model, step: int) -> dict[str, Any]:
        t = time.time()
        was_training = model.training
        point: dict[str, Any] = {"step": step, "kl": mean_kl(model, self.teacher, self.kl_batches),
                                 "kl_needle": mean_kl(model, self.teacher, self.needle_batches),
                                 "loss": evaluate_causal_lm(model, self.loss_rows, batch_size=4)["loss"]}
        point.update(niah_summary(niah_records(model, self.tokenizer, self.niah_samples), self.window))
        model.train(was_training)
        point["seconds"] = round(time.time() - t, 1)
        point["distill_elapsed_s"] = round(time.time() - self.report.marks.get("distill_start", time.time()), 1)
        self.measure_s.append(time.time() - t)
        if not self.curve or self.curve[-1]["step"] != step:
            self.curve.append(point)
        print(f"distill step {step}: KL text {point['kl']:.4f}, KL needle {point['kl_needle']:.4f}, "
              f"NIAH {point['niah']:.2f} ({point['seconds']:.0f} s)", flush=True)
        self.report.write()
        return point

    def on_step_end(self, args, state, control, model=None, **kwargs):
        super().on_step_end(args, state, control, model=model, **kwargs)
        need = max(self.measure_s[-1] if self.measure_s else 0.0, 1.0)
        if state.global_step < state.max_steps and time.time() + need > self.stop_at:
            if self.curve[-1]["step"] != state.global_step:
                self.measure(model, state.global_step)
            self.report.result["distill_stopped_at_deadline"] = state.global_step
            control.should_training_stop = True
        return control


# --------------------------------------------------------------------------------------------------------- report
class Report:
    """The JSON + Markdown record, rewritten whenever something new is known."""

    def __init__(self, out: Path, command: str) -> None:
        self.out, self.command = out, command
        self.result: dict[str, Any] = {"status": "started", "phases_s": {}}
        self.marks: dict[str, float] = {}
        self.curve: list[dict] = []

    def phase(self, name: str, began: float) -> None:
        self.result["phases_s"][name] = round(time.time() - began, 1)
        print(f"phase {name}: {self.result['phases_s'][name]:.1f} s (total {time.time() - T_START:.0f} s)", flush=True)

    def write(self) -> None:
        self.result["curve"] = self.curve
        self.result["total_seconds"] = round(time.time() - T_START, 1)
        (self.out / "convert-recovery.json").write_text(json.dumps(self.result, indent=1))
        (self.out / "convert-recovery.md").write_text(self.markdown())

    def markdown(self) -> str:
        r, s = self.result, self.result.get("settings", {})
        env = r.get("environment", {})
        lines = ["# Conversion to a 1:1 sliding-window hybrid and recovery by distillation", "",
                 f"`{self.command}` — {env.get('gpu') or 'CPU'}, torch {env.get('torch')}, transformers "
                 f"{env.get('transformers')}.", "",
                 f"Status: **{r['status']}** after {r['total_seconds']:.0f} s (budget {s.get('budget_s')} s).", ""]
        phases = r["phases_s"]
        if phases:
            lines += ["Phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()) + ".", ""]
        pre = r.get("pretrain")
        if pre:
            lines += [
                f"Teacher: stock Qwen3ForCausalLM, {s['parameters'] / 1e6:.1f}M parameters, pretrained "
                f"{pre['seconds']:.0f} s ({pre['steps']} steps of {s['batch']} x {s['block']} tokens, "
                f"{pre['tokens'] / 1e6:.1f}M tokens; {'compiled' if pre['compiled'] else 'eager'} layers, first step "
                f"{pre['first_step_s'] or 0:.1f} s, then {1000 * pre['steady_step_s']:.0f} ms/step) on rows of which "
                f"{s['needle_fraction']:.0%} hold passkey/NIAH documents (answer tokens weighted "
                f"{s['answer_weight']:g}x), the rest natural text. Last logged training loss "
                f"{pre['loss_log'][-1]['loss']:.3f}, on answer tokens {pre['loss_log'][-1]['answer_loss']:.3f}."
                + (f" Compilation failed, trained eager: {pre['compile_fallback']}." if pre["compile_fallback"] else ""),
                ""]
        t = r.get("teacher")
        if t:
            lines += [f"Imported into hybrid_hf with a max logit gap of {r['import_max_logit_gap']:.1e}. Teacher NIAH "
                      f"({', '.join(TASKS)}, prompts of {s['lengths']} tokens, {s['eval_samples']} prompts, greedy "
                      f"{NIAH_NEW_TOKENS} tokens): **{t['niah']:.2f}**; held-out text loss {t['loss']:.3f}.", ""]
            if t["niah"] < 0.5:
                lines += [f"**The teacher did not learn retrieval (NIAH {t['niah']:.2f} < 0.5): the NIAH column below "
                          "does not measure recovery of a retrieval ability; only the KL columns are meaningful.**", ""]
        if "student_layer_types" in r:
            lines += [f"Student: layers {r['student_layer_types']} (S = sliding window of {s['window']} keys, no new "
                      f"parameters), distilled with KL on packed rows for {r.get('distill_steps_done', '?')} of "
                      f"{r.get('distill_steps', '?')} planned steps ({r.get('distill_seconds', 0):.0f} s, "
                      f"{r.get('distill_step_s', 0) * 1000:.0f} ms/step calibrated).", ""]
        if t:
            lines += ["| step | KL text | KL needle docs | held-out text loss | NIAH | NIAH, needle beyond window | "
                      "NIAH by length |", "|---:|---:|---:|---:|---:|---:|---|"]
            rows = [("teacher", {**t, "kl": 0.0, "kl_needle": 0.0})] + [(str(p["step"]), p) for p in self.curve]
            for name, p in rows:
                beyond = "–" if p["niah_beyond_window"] is None else f"{p['niah_beyond_window']:.2f}"
                by_len = {}
                for by in p["niah_by_task_length"].values():
                    for n, v in by.items():
                        by_len.setdefault(n, []).append(v)
                lengths = ", ".join(f"{n}: {sum(v) / len(v):.2f}" for n, v in by_len.items())
                lines.append(f"| {name} | {p['kl']:.4f} | {p['kl_needle']:.4f} | {p['loss']:.3f} | {p['niah']:.2f} | "
                             f"{beyond} | {lengths} |")
            lines.append("")
        return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for convert-recovery.json / .md")
    p.add_argument("--smoke", action="store_true", help="tiny CPU settings (checks the script end to end)")
    p.add_argument("--budget-s", type=float, help="wall budget of the whole run from interpreter start, seconds "
                   "(default: 540 on the GPU profile, 60 for --smoke)")
    p.add_argument("--pretrain-s", type=float, help="pretraining time budget in seconds (default: profile)")
    p.add_argument("--distill-s", type=float, help="cap on the distillation training time (default: what is left)")
    p.add_argument("--window", type=int, help="sliding window of the converted layers (default: profile)")
    p.add_argument("--eval-samples", type=int, help="NIAH prompts per measurement (default: 32; smoke 4)")
    p.add_argument("--workers", type=int, help="processes building the training rows (default: CPU count, max 16; "
                   "smoke 1)")
    p.add_argument("--no-compile", action="store_true", help="train the teacher with eager layers")
    args = p.parse_args(argv)
    cfg = dict(PROFILES["smoke" if args.smoke else "h200"])
    for key in ("pretrain_s", "window"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    budget = args.budget_s if args.budget_s is not None else (60.0 if args.smoke else 540.0)
    eval_samples = args.eval_samples or (4 if args.smoke else 32)
    workers = args.workers or (1 if args.smoke else min(os.cpu_count() or 1, 16))
    deadline = T_START + budget
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/convert_recovery.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = Report(out, command)
    report.result["phases_s"]["startup"] = round(time.time() - T_START, 1)
    t0 = time.time()
    torch.manual_seed(0)

    # data (CPU only: the row workers are forked before CUDA is touched)
    docs = build_corpus(max_chars=cfg["corpus_chars"])
    train_docs, held_docs = split_documents(docs, 0.02, min_eval=2)
    tokenizer = train_tokenizer(train_docs[: max(50, len(train_docs) // 4)], vocab_size=cfg["vocab"])
    haystack = [d[i : i + 1000] for d in train_docs for i in range(0, len(d), 1000) if len(d[i : i + 1000]) > 200]
    stream = tokenize_stream(tokenizer, train_docs)
    check_format(tokenizer, haystack, cfg["lengths"])
    WORKER.update(tokenizer=tokenizer, haystack=haystack, stream=stream, block=cfg["block"], lengths=cfg["lengths"],
                  min_length=cfg["min_length"])
    train = build_rows(cfg["pretrain_rows"], 1, cfg["needle_fraction"], workers)
    distill = build_rows(cfg["distill_rows"], 2, cfg["needle_fraction"], workers)
    needle_kl = build_rows(KL_ROWS, 3, 1.0, 1)
    block = cfg["block"]
    text_rows = pack_documents(tokenize_documents(tokenizer, held_docs), block, pad_token_id=tokenizer.pad_token_id)
    text_rows = text_rows[:KL_ROWS]
    per_cell = max(1, eval_samples // (len(TASKS) * len(cfg["lengths"])))
    samples = [make_sample(task, tokenizer, n, depth=d, seed=50_000 + i, haystack=haystack)
               for n in cfg["lengths"] for task in TASKS
               for i, d in enumerate(torch.linspace(0.0, 0.9, per_cell).tolist())]
    print(f"data: {len(docs)} documents, {len(stream) / 1e6:.1f}M text tokens, {len(train['input_ids'])} "
          f"training rows of {block} tokens ({int(train['answer'].any(1).sum())} with needles), {len(text_rows)} "
          f"held-out text rows, {len(samples)} NIAH prompts", flush=True)
    report.phase("data", t0)

    t0 = time.time()
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if device == "cpu":
        torch.set_num_threads(1)  # smoke-sized matrices: one thread is fastest
    use_compile = cfg["compile"] and device == "cuda" and not args.no_compile
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=cfg["hidden_size"],
                         intermediate_size=cfg["intermediate_size"], num_hidden_layers=cfg["num_hidden_layers"],
                         num_attention_heads=cfg["num_attention_heads"], num_key_value_heads=cfg["num_key_value_heads"],
                         head_dim=cfg["head_dim"], max_position_embeddings=4 * block, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id)
    with torch.device(device):
        teacher_src = Qwen3ForCausalLM(config)
    n_params = sum(p.numel() for p in teacher_src.parameters())
    rows = {k: torch.from_numpy(train[k]).to(device, torch.long) for k in ("input_ids", "position_ids", "labels")}
    rows["answer"] = torch.from_numpy(train["answer"]).to(device)
    del train
    report.result.update(
        settings={**cfg, "budget_s": budget, "device": device, "parameters": n_params, "eval_samples": len(samples),
                  "tasks": list(TASKS), "workers": workers, "compile": use_compile, "niah_new_tokens": NIAH_NEW_TOKENS},
        environment={"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version(),
                     "gpu": torch.cuda.get_device_name() if device == "cuda" else None},
        data={"documents": len(docs), "held_out_documents": len(held_docs), "text_tokens": int(len(stream)),
              "training_rows": int(rows["input_ids"].shape[0]), "kl_text_rows": len(text_rows), "kl_needle_rows": KL_ROWS})
    report.phase("model_init", t0)
    report.write()

    # 1. pretraining, stopped early enough to leave the reserve for the rest
    t0 = time.time()
    pretrain_end = min(t0 + cfg["pretrain_s"], deadline - cfg["reserve_s"])
    report.result["status"] = "pretraining"
    report.write()
    loss_log: list[dict] = []
    report.result["pretrain_loss_log"] = loss_log  # filled while it trains (progress writes)
    teacher_src, pre = pretrain(teacher_src, rows, cfg, pretrain_end, device, use_compile, loss_log,
                                progress=report.write)
    del report.result["pretrain_loss_log"]
    pre["loss_log"] = loss_log
    del rows
    report.result["pretrain"] = pre
    report.phase("pretrain", t0)

    # 2. import (compared with a fresh eager copy of the trained weights, in full fp32), teacher scores
    t0 = time.time()
    with torch.device(device):
        eager_src = Qwen3ForCausalLM(config)
    eager_src.load_state_dict(teacher_src.state_dict())
    eager_src.eval()
    del teacher_src
    teacher = import_model(eager_src).eval()
    probe = torch.tensor([samples[0].input_ids], device=device)
    torch.set_float32_matmul_precision("highest")
    with torch.no_grad():
        gap = float((teacher(probe).logits.float() - eager_src(probe).logits.float()).abs().max())
    torch.set_float32_matmul_precision("high")  # TF32 for the measurements below (both models alike)
    del eager_src
    teacher.config.attention_kernel = "sdpa"  # rows <= 512 tokens: no Triton autotuning / FlexAttention compiling
    loss_rows = TokenBlockDataset(text_rows)
    teacher_point = {"loss": evaluate_causal_lm(teacher, loss_rows, batch_size=4)["loss"]}
    teacher_point.update(niah_summary(niah_records(teacher, tokenizer, samples), cfg["window"]))
    report.result.update(import_max_logit_gap=gap, teacher=teacher_point, status="teacher measured")
    report.phase("teacher_eval", t0)
    report.write()
    print(f"teacher: {n_params / 1e6:.1f}M parameters, NIAH {teacher_point['niah']:.2f}, held-out loss "
          f"{teacher_point['loss']:.3f}, import gap {gap:.1e}", flush=True)
    if teacher_point["niah"] < 0.5:
        print(f"WARNING: teacher NIAH {teacher_point['niah']:.2f} < 0.5: it did not learn retrieval", flush=True)
    measure_guess = report.result["phases_s"]["teacher_eval"]

    # 3. convert, calibrate a distillation step, distil with what is left of the budget
    t0 = time.time()
    student = hybridize(teacher, plan_layer_types(teacher.config, pattern="SF"), sliding_window=cfg["window"])
    student.config.attention_kernel = "sdpa"
    report.result["student_layer_types"] = student.config.layer_pattern

    def batches(rows_: list[dict], size: int = 4) -> list[dict[str, torch.Tensor]]:
        return [{k: torch.tensor([r[k] for r in rows_[i : i + size]]) for k in rows_[0]}
                for i in range(0, len(rows_), size)]

    def as_rows(arrays: dict[str, np.ndarray]) -> list[dict[str, list[int]]]:
        keys = ("input_ids", "position_ids", "labels")
        return [{k: arrays[k][i].tolist() for k in keys} for i in range(len(arrays["input_ids"]))]

    distill_rows = as_rows(distill)
    kl_needle = batches(as_rows(needle_kl))
    # calibration: student forward + backward and teacher forward, as in a distillation step (no update)
    cal = {k: torch.tensor([r[k] for r in distill_rows[: cfg["batch"]]], device=device) for k in distill_rows[0]}
    inputs = {k: cal[k] for k in ("input_ids", "position_ids")}
    student.train()
    step_times = []
    for _ in range(3):
        ts = time.time()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            s_logits = student(**inputs, use_cache=False).logits
            with torch.no_grad():
                t_logits = teacher(**inputs, use_cache=False).logits
            distillation_loss(s_logits, t_logits, cal["labels"])["loss"].backward()
        if device == "cuda":
            torch.cuda.synchronize()
        step_times.append(time.time() - ts)
    student.zero_grad(set_to_none=True)
    del s_logits, t_logits, cal, inputs
    step_s = min(step_times[1:]) * 1.15 + 0.005  # + optimizer step and Trainer overhead
    left = deadline - time.time() - 8.0  # Trainer start-up and the last write
    n_measure = cfg["evals"] + 1
    train_s = left - n_measure * 1.3 * measure_guess
    if train_s < cfg["distill_min_s"]:  # fewer measurements rather than no distillation
        n_measure = max(2, int((left - cfg["distill_min_s"]) / (1.3 * measure_guess)))
        train_s = max(cfg["distill_min_s"] / 2, left - n_measure * 1.3 * measure_guess)
    if args.distill_s is not None:
        train_s = min(train_s, args.distill_s)
    evals = max(1, n_measure - 1)
    every = max(1, int(train_s / step_s) // evals)
    max_steps = every * evals  # the last measurement falls on the last step
    report.result.update(distill_steps=max_steps, distill_step_s=step_s, distill_evals=evals,
                         distill_planned_train_s=round(train_s, 1), status="distilling")
    recorder = Recorder(teacher, batches(text_rows), every=every, niah_samples=samples, tokenizer=tokenizer,
                        max_new_tokens=NIAH_NEW_TOKENS, needle_batches=kl_needle, loss_rows=loss_rows,
                        window=cfg["window"], stop_at=deadline - 3.0, report=report)
    report.curve = recorder.curve
    dargs = training_arguments(str(out / "distill-run"), max_steps=max_steps, learning_rate=cfg["distill_lr"],
                               per_device_train_batch_size=cfg["batch"], warmup_steps=max(1, max_steps // 20),
                               weight_decay=0.0, logging_steps=every, save_strategy="no",
                               bf16=device == "cuda", disable_tqdm=True, use_cpu=device == "cpu")
    trainer = DistillationTrainer(model=student, args=dargs, train_dataset=TokenBlockDataset(distill_rows),
                                  teacher=teacher, callbacks=[recorder])
    report.phase("distill_setup", t0)
    print(f"distill: {max_steps} steps planned ({1000 * step_s:.0f} ms/step, {train_s:.0f} s of training, "
          f"measure every {every})", flush=True)
    t0 = time.time()
    report.marks["distill_start"] = t0
    state = trainer.train()
    report.result.update(distill_seconds=time.time() - t0, distill_steps_done=int(trainer.state.global_step),
                         distill_train_loss=state.training_loss,
                         distill_measurement_s=round(sum(recorder.measure_s), 1), status="complete")
    report.phase("distill", t0)
    report.write()
    lines = report.markdown().splitlines()
    print("\n".join(lines[-len(recorder.curve) - 4 :]))
    print(f"total {time.time() - T_START:.0f} s -> {out}")
    if not math.isfinite(recorder.curve[-1]["kl"]):
        raise SystemExit("distillation diverged (KL is not finite)")
    return report.result


if __name__ == "__main__":
    main()
