"""Retrieval heads: the paper's attention-mass score, Wu et al.'s copy-paste score, tracing over checkpoints,
and attention entropy. Works on any model that returns ``attentions`` (layers without attention give ``None``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch


def needle_mass(attentions: Sequence[torch.Tensor | None], needle_positions: Sequence[int], query_position: int
                ) -> torch.Tensor:
    """(layers, heads) attention mass that the query token puts on the needle tokens, for one sample.

    ``attentions[l]`` is (batch=1, heads, q, k); recurrent layers (``None``) get NaN rows.
    """
    heads = next(a.shape[1] for a in attentions if a is not None)
    out = torch.full((len(attentions), heads), float("nan"))
    idx = torch.as_tensor(list(needle_positions), dtype=torch.long)
    for layer, att in enumerate(attentions):
        if att is not None:
            out[layer] = att[0, :, query_position, :].float().index_select(-1, idx.to(att.device)).sum(-1).cpu()
    return out


@torch.no_grad()
def retrieval_head_scores(model, samples: Sequence[Any]) -> torch.Tensor:
    """The paper's score: mean over samples of the attention mass on the needle's answer tokens at the query
    position (the last prompt token), per (layer, head). ``samples`` carry ``input_ids`` and ``needle_spans``."""
    device = next(model.parameters()).device
    total = None
    for s in samples:
        ids = torch.tensor([s.input_ids], device=device)
        att = model(ids, output_attentions=True, use_cache=False).attentions
        positions = [p for a, b in s.needle_spans for p in range(a, b)]
        mass = needle_mass(att, positions, len(s.input_ids) - 1)
        total = mass if total is None else total + mass
    return total / len(samples)


def top_heads(scores: torch.Tensor, k: int = 4) -> list[tuple[int, int, float]]:
    """The global top-``k`` (layer, head, score) entries of a (layers, heads) score table (NaNs ignored)."""
    flat = torch.nan_to_num(scores, nan=float("-inf")).flatten()
    values, idx = flat.topk(min(k, flat.numel()))
    heads = scores.shape[1]
    return [(int(i) // heads, int(i) % heads, float(v)) for v, i in zip(values, idx)]


def copy_paste_scores(step_attentions: Sequence[Sequence[torch.Tensor | None]], generated: Sequence[int],
                      prompt: Sequence[int], needle_positions: Sequence[int]) -> torch.Tensor:
    """Wu et al.'s retrieval score per (layer, head): while decoding, a head scores ``1/|needle|`` at each step whose
    top-1 attended position lies in the needle and holds the token just generated.

    ``step_attentions[t][l]`` is the layer-``l`` attention (1, heads, 1, keys) of decoding step ``t``, whose keys
    are the last ``keys`` positions of the ``len(prompt) + t`` tokens seen so far.
    """
    needle = set(needle_positions)
    first = next(a for a in step_attentions[0] if a is not None)
    scores = torch.zeros(len(step_attentions[0]), first.shape[1])
    for t, layers in enumerate(step_attentions):
        token = generated[t]
        for layer, att in enumerate(layers):
            if att is None:
                scores[layer] = float("nan")
                continue
            offset = len(prompt) + t - att.shape[-1]  # sliding caches hold only the last keys
            top = (att[0, :, -1, :].float().argmax(-1) + offset).tolist()
            for head, pos in enumerate(top):
                if pos in needle and pos < len(prompt) and prompt[pos] == token:
                    scores[layer, head] += 1.0 / len(needle)
    return scores


@torch.no_grad()
def copy_paste_retrieval_scores(model, samples: Sequence[Any], max_new_tokens: int = 8) -> torch.Tensor:
    """Mean Wu et al. score over samples (greedy decoding with per-step attentions)."""
    device = next(model.parameters()).device
    total = None
    for s in samples:
        ids = torch.tensor([s.input_ids], device=device)
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, output_attentions=True,
                             return_dict_in_generate=True, pad_token_id=0)
        steps = [[a[..., -1:, :] if a is not None else None for a in layer_atts] for layer_atts in out.attentions]
        generated = out.sequences[0, ids.shape[1]:].tolist()
        positions = [p for a, b in s.needle_spans for p in range(a, b)]
        sc = copy_paste_scores(steps, generated, s.input_ids, positions)
        total = sc if total is None else total + sc
    return total / len(samples)


RETRIEVAL_THRESHOLD = 0.1


def trace_from_tables(steps: Sequence[int], tables: Sequence[torch.Tensor],
                      heads: Sequence[tuple[int, int]] | None = None, k: int = 4,
                      threshold: float = RETRIEVAL_THRESHOLD) -> dict[str, Any]:
    """Emergence of retrieval heads from per-checkpoint (layers, heads) score tables: the top-``k`` heads of the
    last table (unless ``heads`` are given), their score curves, and the first step each reaches ``threshold``."""
    if heads is None:
        heads = [(layer, head) for layer, head, _ in top_heads(tables[-1], k)]
    curves = {f"L{layer}H{head}": [float(t[layer, head]) for t in tables] for layer, head in heads}
    first = {name: next((s for s, v in zip(steps, vals) if v >= threshold), None) for name, vals in curves.items()}
    return {"steps": list(steps), "heads": [list(h) for h in heads], "curves": curves, "first_step_above": first,
            "threshold": threshold,
            "max_score_per_step": [float(torch.nan_to_num(t, nan=0).max()) for t in tables]}


def trace_heads(load: Callable[[Any], Any], checkpoints: Sequence[tuple[int, Any]], samples: Sequence[Any],
                heads: Sequence[tuple[int, int]] | None = None, k: int = 4,
                threshold: float = RETRIEVAL_THRESHOLD) -> dict[str, Any]:
    """Trace retrieval heads over training: find the top-``k`` heads on the final checkpoint (unless ``heads`` are
    given), score them on every checkpoint, and report the first step each passes ``threshold``.

    ``checkpoints`` are ``(step, handle)`` pairs in training order; ``load(handle)`` returns a model.
    """
    tables = [retrieval_head_scores(load(handle), samples) for _, handle in checkpoints]
    return trace_from_tables([s for s, _ in checkpoints], tables, heads, k, threshold)


def teacher_forced_copy_scores(attentions: Sequence[torch.Tensor | None], input_ids: Sequence[int],
                               answer_start: int, needle_positions: Sequence[int]) -> torch.Tensor:
    """Wu et al.'s copy-paste score without generation (one forward over prompt + gold answer): for each answer
    token, a head scores ``1/n_answer`` when its top-1 attention at the position predicting that token lies in the
    needle and holds that same token id. Returns (layers, heads); layers without attention are NaN."""
    needle = set(needle_positions)
    targets = list(range(answer_start, len(input_ids)))
    heads = next(a.shape[1] for a in attentions if a is not None)
    out = torch.full((len(attentions), heads), float("nan"))
    for layer, att in enumerate(attentions):
        if att is None:
            continue
        top = att[0, :, answer_start - 1 : len(input_ids) - 1, :].float().argmax(-1).cpu()  # (heads, answer)
        hits = torch.zeros(heads)
        for j, t in enumerate(targets):
            for h in range(heads):
                pos = int(top[h, j])
                hits[h] += pos in needle and input_ids[pos] == input_ids[t]
        out[layer] = hits / max(len(targets), 1)
    return out


def attention_entropy(attentions: Sequence[torch.Tensor | None], last_queries: int = 4) -> torch.Tensor:
    """(layers, heads) entropy of the last ``last_queries`` query rows, each normalised by ``log(q + 1)`` (the
    entropy of a uniform distribution over the visible keys), averaged over those rows."""
    heads = next(a.shape[1] for a in attentions if a is not None)
    out = torch.full((len(attentions), heads), float("nan"))
    for layer, att in enumerate(attentions):
        if att is None:
            continue
        q_len = att.shape[-2]
        vals = []
        for q in range(q_len - last_queries, q_len):
            p = att[0, :, q, : q + 1].float().clamp_min(1e-12)
            p = p / p.sum(-1, keepdim=True)
            h = -(p * p.log()).sum(-1)
            vals.append(h / math.log(q + 1) if q > 0 else torch.zeros_like(h))
        out[layer] = torch.stack(vals).mean(0).cpu()
    return out
