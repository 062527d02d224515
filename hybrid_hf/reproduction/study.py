"""The small-scale study of the paper's claims: arms, data preparation, checkpoint probes and one training run.

Arms are the paper's presets (``full``, ``swa128``, ``swa512``, ``swa2048``, ``swa128-nope``, ``gdn``; 1:1
alternation, full attention on the odd layers) built with ``HybridConfig.from_preset`` at one of ``MODEL_SIZES``.
The paper's windows are 128/512/2048 of its 16K training context; here they keep those ratios to the training
length ``seq_len`` (4096 -> 32/128/512), and ``prepare`` checks that the smallest window exceeds a needle sentence.

Each run trains one (arm, seed) with ``hybrid_hf.training.train_loop`` on ``hybrid_hf.data.NeedleMixture`` batches
(natural text 1:1 with long documents carrying needles) and scores checkpoints with ``CheckpointProbe``:
teacher-forced NIAH at the training length on held-out text (RULER ``niah_single`` prompts from
``hybrid_hf.evaluation.make_sample``), the retrieval-head scores of ``hybrid_hf.analysis`` (max over full-attention
heads), short-context loss on held-out natural text, and the answer loss binned by needle-to-query distance
(a LongPPL-by-position view). The final checkpoint adds NIAH at 1x/2x/4x the training length.

The training loss is the paper's plain next-token loss unless ``StudySettings.answer_weight`` > 1: then the
answer tokens of the long documents weigh that much more in a weighted mean token loss (a deviation from the paper,
applied identically to every arm, stated in each run record and in the report), so that retrieval gets enough
gradient to emerge within a small run's steps.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import HybridConfig, HybridForCausalLM
from ..analysis import needle_mass, teacher_forced_copy_scores
from ..data import SOURCE_NAMES, build_corpus, train_tokenizer
from ..data.docstrings import corpus_fingerprint, docstring_documents, split_held_out
from ..data.mixture import KEYS, NeedleMixture, answer_ids, tokenize_stream
from ..evaluation import NEEDLE, make_sample
from ..evaluation.tasks import QUERY
from ..training.loop import LoopConfig, train_loop

PAPER_CONTEXT = 16384
ARMS = ("full", "swa128", "swa512", "swa2048", "swa128-nope", "gdn")
SWA_ARMS = ("swa128", "swa512", "swa2048")  # RoPE SWA hybrids in increasing window order
# Width/depth of the study's models (overrides of from_preset's size); head dim 64 except "tiny".
MODEL_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 128},
    "d256": {"hidden_size": 256, "num_hidden_layers": 8, "num_attention_heads": 4, "intermediate_size": 768},
    "d384": {"hidden_size": 384, "num_hidden_layers": 8, "num_attention_heads": 6, "intermediate_size": 1152},
    "d512": {"hidden_size": 512, "num_hidden_layers": 8, "num_attention_heads": 8, "intermediate_size": 1536},
}
MODEL_LR = {"tiny": 3e-3, "d256": 2e-3, "d384": 1.5e-3, "d512": 1e-3}


@dataclass
class StudySettings:
    """Everything that defines one run besides (arm, seed). ``profile`` names the preset it came from."""

    profile: str = "main"
    size: str = "d256"
    seq_len: int = 4096
    batch: int = 8
    steps: int = 2000
    eval_every: int = 50
    warmup: int = 100
    lr: float | None = None  # None: MODEL_LR[size]
    vocab: int = 4096
    needles: int = 16  # needle/query pairs per long document
    long_fraction: float = 0.5
    eval_samples: int = 48  # NIAH prompts per checkpoint at the training length
    head_samples: int = 4  # prompts for the retrieval-head scores per checkpoint
    final_samples: int = 96  # NIAH prompts per length at the final checkpoint
    length_multiples: tuple[int, ...] = (1, 2, 4)
    short_len: int = 512
    short_rows: int = 16
    corpus_chars: int | None = 12_000_000
    held_out_fraction: float = 0.05
    docstring_packages: tuple[str, ...] | None = None  # None: hybrid_hf.data.docstrings.DEFAULT_PACKAGES
    # Installed documentation added to the docstring prose (hybrid_hf.data.build_corpus sources, all of their text);
    # text_root stands in for /usr/share (e.g. a folder the packages were unpacked into, see the study's README).
    text_sources: tuple[str, ...] = ()
    text_root: str | None = None
    niah_threshold: float = 0.5  # emergence criterion on NIAH at the training length
    head_threshold: float = 0.5  # emergence criterion on the max full-layer copy-paste score
    # Loss weight of the long documents' answer tokens (1.0: the paper's plain LM loss; > 1 is a deviation from the
    # paper, the same for every arm, recorded in each run and printed in the report).
    answer_weight: float = 1.0
    compile: bool = False  # torch.compile the training step (LoopConfig.compile); same maths, recorded per run

    def __post_init__(self) -> None:
        if self.size not in MODEL_SIZES:
            raise ValueError(f"size={self.size!r}; allowed: {', '.join(MODEL_SIZES)}.")
        if self.seq_len % (PAPER_CONTEXT // 2048) or self.seq_len < 128:
            raise ValueError(f"seq_len={self.seq_len} must be a multiple of {PAPER_CONTEXT // 2048} and >= 128.")
        for name in ("batch", "steps", "eval_every", "eval_samples", "head_samples", "final_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")
        unknown = [x for x in self.text_sources if x not in SOURCE_NAMES or x == "sample"]
        if unknown:
            raise ValueError(f"text_sources={list(self.text_sources)}: unknown {unknown}; allowed: "
                             f"{', '.join(x for x in SOURCE_NAMES if x != 'sample')}.")
        if self.text_root is not None and not self.text_sources:
            raise ValueError(f"text_root={self.text_root!r} is set but text_sources is empty (profile "
                             f"{self.profile!r}); use the 'docs' profile or name text_sources.")
        if not (self.answer_weight >= 0 and math.isfinite(self.answer_weight)):
            raise ValueError(f"answer_weight={self.answer_weight} must be a finite number >= 0.")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else MODEL_LR[self.size]

    def window(self, arm: str) -> int | None:
        """The arm's sliding window: the paper's window as the same share of the training length."""
        preset = HybridConfig.from_preset(arm, "tiny")
        if "sliding_attention" not in preset.layer_types:
            return None
        return preset.sliding_window * self.seq_len // PAPER_CONTEXT

    def eval_steps(self) -> list[int]:
        return sorted({0, *range(self.eval_every, self.steps + 1, self.eval_every), self.steps})


PROFILES: dict[str, StudySettings] = {
    # A CPU run of the whole pipeline in well under a minute.
    "smoke": StudySettings(profile="smoke", size="tiny", seq_len=384, batch=2, steps=6, eval_every=3, warmup=2,
                           vocab=512, needles=2, eval_samples=4, head_samples=1, final_samples=4, short_len=64,
                           short_rows=2, corpus_chars=None),
    "pilot": StudySettings(profile="pilot", steps=1500),
    "main": StudySettings(),
    # main with ~4x the natural text: the docstrings plus the Linux kernel, Python and Perl documentation sources
    # (Debian's linux-doc-6.1, python3.11-doc, perl-doc), so 3000 steps read it ~7 times instead of ~33.
    "docs": StudySettings(profile="docs", text_sources=("kernel-doc", "python-doc", "perl-doc")),
}


def model_config(arm: str, s: StudySettings, vocab_size: int) -> HybridConfig:
    """The arm's preset at the study's size, window and vocabulary."""
    if arm not in ARMS:
        raise ValueError(f"arm={arm!r}; allowed: {', '.join(ARMS)}.")
    size = MODEL_SIZES[s.size]
    overrides: dict[str, Any] = dict(size, vocab_size=vocab_size, pad_token_id=0, eos_token_id=1, bos_token_id=2,
                                     max_position_embeddings=max(s.length_multiples) * s.seq_len + 64)
    window = s.window(arm)
    if window is not None:
        overrides["sliding_window"] = window
    if arm == "gdn":  # from_preset sizes the mixer for its base size; at paper sizes GDN gets half the heads
        heads = size["num_attention_heads"]
        overrides.update(linear_num_heads=max(1, heads // 2), linear_head_dim=size["hidden_size"] // heads,
                         linear_expand_v=2.0)
    return HybridConfig.from_preset(arm, "tiny", **overrides)


# ---------------------------------------------------------------------------------------------- data
@dataclass
class Prepared:
    """What ``prepare`` wrote under ``work``: the tokenizer, the train token stream and held-out documents."""

    work: Path
    tokenizer: Any
    train_stream: np.ndarray
    held_out: list[str]
    info: dict[str, Any] = field(default_factory=dict)


def prepare(work: str | Path, s: StudySettings, workers: int = 1) -> Prepared:
    """Build (once) the corpus, its held-out split, the tokenizer and the tokenised train stream under ``work``.

    The natural text is docstring prose of the installed Python code (``docstring_documents``; ``smoke``: the
    sample shipped with the package, split the same way). Later calls load what the first wrote.
    """
    from transformers import AutoTokenizer

    work = Path(work)
    info_path = work / "prepared.json"
    if info_path.exists():
        info = json.loads(info_path.read_text())
        if info.get("text_sources", []) != list(s.text_sources):
            raise ValueError(f"work={str(work)!r} was prepared with text_sources={info.get('text_sources', [])}, "
                             f"these settings have {list(s.text_sources)}; use another work folder.")
        return Prepared(work, AutoTokenizer.from_pretrained(work / "tokenizer"), np.load(work / "train_stream.npy"),
                        json.loads((work / "held_out.json").read_text()), info)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if s.profile == "smoke":
        docs = [p for d in build_corpus(sources=["sample"]) for p in d.split("\n") if len(p) > 40] * 3
        source = "hybrid_hf/data/sample.txt paragraphs"
    else:
        kwargs = {} if s.docstring_packages is None else {"packages": s.docstring_packages}
        docs = docstring_documents(workers=workers, max_chars=s.corpus_chars, **kwargs)
        source = "docstring prose of the installed Python code (hybrid_hf.data.docstrings)"
        if s.text_sources:
            found = {}
            for name in s.text_sources:
                extra = build_corpus(None, sources=[name], root=s.text_root, fallback=False)
                if not extra:
                    raise ValueError(f"text_sources: {name!r} found no files under text_root={s.text_root!r} "
                                     "(default /usr/share); install or unpack its package there.")
                docs += extra
                found[name] = sum(map(len, extra))
            source += " + installed documentation (hybrid_hf.data.build_corpus: " + ", ".join(
                f"{k} {v / 1e6:.1f}M chars" for k, v in found.items()) + ")"
    train_docs, held_out = split_held_out(docs, s.held_out_fraction)
    harvest_s = time.time() - t0
    # The tokenizer also sees the needle/query templates and digits, so that they tokenise alike everywhere.
    templates = [NEEDLE.format(key=k, value=i) + QUERY.format(key=k) for i, k in enumerate(KEYS)]
    tok = train_tokenizer(train_docs + templates + [f"{i} " for i in range(10_000)], work / "tokenizer",
                          vocab_size=s.vocab)
    stream = tokenize_stream(tok, train_docs)
    np.save(work / "train_stream.npy", stream)
    (work / "held_out.json").write_text(json.dumps(held_out))
    mix = NeedleMixture(tok, stream, s.seq_len, s.needles, s.long_fraction)
    needle_len = max(len(mix.needle_ids(k, "9999999")) for k in KEYS)
    smallest = min(w for a in SWA_ARMS if (w := s.window(a)) is not None)
    if smallest <= needle_len and s.profile != "smoke":
        raise ValueError(f"seq_len={s.seq_len}: the smallest window ({smallest}) is not longer than a needle sentence "
                         f"({needle_len} tokens); use seq_len >= {PAPER_CONTEXT // 128 * (needle_len + 1)}.")
    info = {"corpus_source": source, "text_sources": list(s.text_sources), "text_root": s.text_root,
            "train": corpus_fingerprint(train_docs), "held_out": corpus_fingerprint(held_out),
            "train_tokens": int(len(stream)), "needle_sentence_tokens": needle_len,
            "query_tokens": max(len(mix.query_ids(k)) for k in KEYS), "harvest_s": round(harvest_s, 1),
            "prepare_s": round(time.time() - t0, 1), "overlap_held_out_train": len(set(train_docs) & set(held_out))}
    info_path.write_text(json.dumps(info, indent=1))
    return Prepared(work, tok, stream, held_out, info)


# ---------------------------------------------------------------------------------------------- probes
class CheckpointProbe:
    """Scores a checkpoint: ``probe(model, step)`` for the periodic metrics, ``probe.final(model)`` for NIAH by
    length. Prompts are fixed (the same for every arm, seed and checkpoint); haystacks are held-out text."""

    def __init__(self, tokenizer, held_out: list[str], s: StudySettings, full_layers: list[int]) -> None:
        self.tok, self.s, self.full_layers = tokenizer, s, full_layers
        self.held_out = held_out
        self.niah = self._prompts(s.seq_len, s.eval_samples, seed=1)
        self.heads = self._prompts(s.seq_len, s.head_samples, seed=2)
        stream = tokenize_stream(tokenizer, held_out)
        rng = np.random.default_rng(3)
        n = s.short_len
        starts = rng.integers(0, len(stream) - n, size=s.short_rows)
        self.short = torch.tensor(np.stack([stream[i : i + n] for i in starts]), dtype=torch.long)
        mix = NeedleMixture(tokenizer, stream, s.seq_len, s.needles, 1.0, seed=4)
        self.long_rows = [mix.long_document(np.random.default_rng([4, i])) for i in range(4)]

    def _prompts(self, length: int, n: int, seed: int) -> list[dict[str, Any]]:
        out = []
        for i in range(n):
            depth = (i + 0.5) / n  # evenly spread depths
            smp = make_sample("niah_single", self.tok, length - 12, round(depth, 4), seed * 1_000_003 + i,
                              haystack=self.held_out)
            ans = answer_ids(self.tok, smp.answers[0])
            a, b = smp.needle_spans[0]
            out.append({"ids": smp.input_ids + ans, "prompt_len": len(smp.input_ids), "needle": list(range(a - 1, b)),
                        "distance": smp.needle_distance()})
        return out

    def _batched(self, model, rows: list[list[int]]) -> torch.Tensor:
        """Logits of right-padded rows (causal: padding after a row never changes its logits)."""
        n = max(map(len, rows))
        ids = torch.tensor([r + [0] * (n - len(r)) for r in rows], device=next(model.parameters()).device)
        return model(ids, use_cache=False).logits

    def _niah(self, model, prompts: list[dict[str, Any]]) -> dict[str, float]:
        hits, logp, nll = [], [], []
        chunk = max(1, 65536 // len(prompts[0]["ids"]))
        for i in range(0, len(prompts), chunk):
            part = prompts[i : i + chunk]
            logits = self._batched(model, [p["ids"] for p in part]).float()
            for j, p in enumerate(part):
                a, n = p["prompt_len"], len(p["ids"])
                lp = torch.log_softmax(logits[j, a - 1 : n - 1], -1)
                gold = torch.tensor(p["ids"][a:], device=lp.device)
                hits.append(bool((lp.argmax(-1) == gold).all()))
                token_logp = lp.gather(-1, gold[:, None])
                logp.append(float(token_logp.sum()))
                nll.append(-float(token_logp.mean()))
        return {"acc": sum(hits) / len(hits), "answer_logp": sum(logp) / len(logp),
                "answer_loss": sum(nll) / len(nll)}

    def __call__(self, model, step: int) -> dict[str, Any]:
        dev = next(model.parameters()).device
        out: dict[str, Any] = {"niah": self._niah(model, self.niah)}
        copy = mass = None
        for p in self.heads:
            att = model(torch.tensor([p["ids"]], device=dev), output_attentions=True, use_cache=False).attentions
            c = teacher_forced_copy_scores(att, p["ids"], p["prompt_len"], p["needle"])
            m = needle_mass(att, p["needle"], p["prompt_len"] - 1)
            copy, mass = (c, m) if copy is None else (copy + c, mass + m)
            del att
        copy, mass = copy / len(self.heads), mass / len(self.heads)
        full = self.full_layers
        out["max_copy_full"] = float(torch.nan_to_num(copy[full], nan=0).max()) if full else None
        out["max_mass_full"] = float(torch.nan_to_num(mass[full], nan=0).max()) if full else None
        out["copy_by_layer"] = [None if math.isnan(v) else round(v, 4) for v in copy.nan_to_num(-1).amax(1).tolist()]
        ids = self.short.to(dev)
        out["short_loss"] = float(model(ids, labels=ids, use_cache=False).loss)
        out["answer_loss_by_distance"] = self._answer_loss_by_distance(model)
        return out

    def distance_bins(self) -> list[int]:
        """Upper edges of the needle-to-query distance bins (powers of two up to the training length)."""
        edges, e = [], self.s.seq_len
        while e >= max(16, self.s.seq_len // 64):
            edges.append(e)
            e //= 2
        return sorted(edges)

    def _answer_loss_by_distance(self, model) -> dict[str, float | None]:
        logits = self._batched(model, [r for r, _ in self.long_rows]).float()
        edges = self.distance_bins()
        sums = {e: [] for e in edges}
        for j, (row, answers) in enumerate(self.long_rows):
            for start, end, dist in answers:
                gold = torch.tensor(row[start:end], device=logits.device)
                nll = torch.nn.functional.cross_entropy(logits[j, start - 1 : end - 1], gold)
                sums[next((e for e in edges if dist <= e), edges[-1])].append(float(nll))
        return {str(e): (sum(v) / len(v) if v else None) for e, v in sums.items()}

    def final(self, model) -> dict[str, Any]:
        """NIAH (teacher-forced exact match) at every length multiple of the training length."""
        out = {}
        for k in self.s.length_multiples:
            prompts = self._prompts(k * self.s.seq_len, self.s.final_samples, seed=10 + k)
            out[str(k * self.s.seq_len)] = self._niah(model, prompts)
        return out


# ---------------------------------------------------------------------------------------------- one run
def batch_function(mix: NeedleMixture, s: StudySettings) -> Callable[[int], Any]:
    """``batch_fn(step)`` of a run for ``train_loop``: plain token ids (``answer_weight`` 1, the paper's loss) or
    ids with the answer tokens' loss weights (``NeedleMixture.weighted_batch``)."""
    if s.answer_weight == 1.0:
        return lambda step: mix.batch(step, s.batch)
    return lambda step: mix.weighted_batch(step, s.batch, s.answer_weight)


def run_arm(arm: str, seed: int, work: str | Path, s: StudySettings, out_json: str | Path,
            checkpoint: str | Path | None = None, resume: bool = False, deadline: float = math.inf,
            final_reserve_s: float = 0.0, log_path: str | Path | None = None, final: bool = True) -> dict[str, Any]:
    """Train and score one (arm, seed); writes and returns the result dict (settings, curve, final NIAH by length).

    ``deadline`` (a ``time.time()`` value) stops training early, ``final_reserve_s`` before it, so the final
    evaluation still fits; ``checkpoint``/``resume`` continue an interrupted run across calls. ``final=False``
    skips the final evaluation (an intermediate leg of a run chained across calls; the last leg runs it).
    """
    prep = prepare(work, s)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    cfg = model_config(arm, s, len(prep.tokenizer))
    model = HybridForCausalLM(cfg).to(dev)
    full_layers = [i for i, t in enumerate(cfg.layer_types) if t == "full_attention"]
    probe = CheckpointProbe(prep.tokenizer, prep.held_out, s, full_layers)
    mix = NeedleMixture(prep.tokenizer, prep.train_stream, s.seq_len, s.needles, s.long_fraction, seed=seed)
    loop = LoopConfig(steps=s.steps, lr=s.learning_rate, warmup=s.warmup, eval_steps=s.eval_steps(),
                      checkpoint_every=max(s.eval_every * 4, 1), compile=s.compile,
                      time_budget_s=max(1.0, deadline - final_reserve_s - time.time()))
    log_fh = open(log_path, "a") if log_path else None  # noqa: SIM115 (closed below)

    def log(entry: dict[str, Any]) -> None:
        if log_fh:
            ev = entry.get("eval", {})
            log_fh.write(json.dumps({"arm": arm, "seed": seed, "step": entry["step"], "niah": ev.get("niah"),
                                     "copy": ev.get("max_copy_full"), "short_loss": ev.get("short_loss")}) + "\n")
            log_fh.flush()

    t0 = time.time()
    state = train_loop(model, batch_function(mix, s), loop, probe, checkpoint, resume, log)
    model.eval()
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        done = state.step == s.steps or not math.isinf(deadline)
        final_niah = probe.final(model) if final and done else {}
    result = {"arm": arm, "seed": seed, "settings": {**asdict(s), "learning_rate": s.learning_rate},
              "window": s.window(arm), "layer_types": cfg.layer_types, "answer_weight": s.answer_weight,
              "loss": "plain next-token loss" if s.answer_weight == 1.0 else
              f"weighted mean token loss, answer tokens x{s.answer_weight:g} (deviation from the paper; "
              "train_loss is this weighted loss)",
              "non_embedding_params": sum(p.numel() for n, p in model.named_parameters()
                                          if "embed" not in n and "lm_head" not in n),
              "steps_done": state.step, "stopped_early": state.stopped_early, "train_s": round(state.train_s, 1),
              "eval_s": round(state.eval_s, 1), "wall_s": round(time.time() - t0, 1), "curve": state.history,
              "train_loss": state.losses, "final_niah": final_niah, "distance_bins": probe.distance_bins(),
              "data": prep.info, "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu"}
    Path(out_json).parent.mkdir(parents=True, exist_ok=True)
    Path(out_json).write_text(json.dumps(result))
    if log_fh:
        log_fh.close()
    return result


def settings_for(profile: str, **overrides: Any) -> StudySettings:
    """A profile of ``PROFILES`` with fields replaced (``None`` values are ignored)."""
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r}; allowed: {', '.join(PROFILES)}.")
    return replace(PROFILES[profile], **{k: v for k, v in overrides.items() if v is not None})
