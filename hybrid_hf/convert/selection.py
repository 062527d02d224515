"""Which full-attention layers to keep: rank them from data and keep the top k.

- ``"retrieval"``: the layer's best retrieval-head score (``hybrid_hf.analysis.retrieval_head_scores``: attention
  mass on the needle's answer tokens at the query, on needle-in-a-haystack samples). Layers hosting retrieval heads
  are the ones a sliding window or a recurrence would cut off from distant tokens.
- ``"nll"``: the increase in next-token loss on calibration text when that layer alone is windowed (one pass per
  layer; the text must be longer than the window for the score to mean anything).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..analysis import retrieval_head_scores
from ..modeling import HybridForCausalLM
from ..modeling.loss import token_losses
from .hybridize import hybridize, plan_layer_types

SELECTION_METHODS = ("retrieval", "nll")


def _full_layers(model: HybridForCausalLM) -> list[int]:
    return [i for i, t in enumerate(model.config.layer_types) if t == "full_attention"]


@torch.no_grad()
def _mean_nll(model: HybridForCausalLM, input_ids: torch.Tensor, batch_size: int) -> float:
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, input_ids.shape[0], batch_size):
        ids = input_ids[start : start + batch_size].to(device)
        total += float(token_losses(model(ids, use_cache=False).logits, ids).sum())
        count += ids[:, 1:].numel()
    return total / count


@torch.no_grad()
def layer_scores(
    model: HybridForCausalLM,
    method: str,
    *,
    samples: Sequence[Any] | None = None,
    input_ids: torch.Tensor | None = None,
    sliding_window: int | None = None,
    batch_size: int = 1,
) -> torch.Tensor:
    """Importance of each full-attention layer (higher: keep it full), NaN for the other layers.

    Args:
        model: A hybrid_hf model (e.g. from ``import_model``).
        method: ``"retrieval"`` (needs ``samples``: objects with ``input_ids`` and ``needle_spans``, such as
            ``hybrid_hf.evaluation.make_sample`` returns) or ``"nll"`` (needs ``input_ids`` (rows, tokens) of
            calibration text and ``sliding_window``).
        batch_size: Calibration rows per forward (``"nll"``).

    Returns:
        A float tensor of ``num_hidden_layers`` entries: the layer's maximum retrieval-head score, or the
        calibration loss increase (nats per token) when it alone is windowed.
    """
    if method not in SELECTION_METHODS:
        raise ValueError(f"layer_scores: invalid `method`={method!r}; allowed: {', '.join(SELECTION_METHODS)}.")
    full = _full_layers(model)
    scores = torch.full((model.config.num_hidden_layers,), float("nan"))
    was_training = model.training
    model.eval()
    try:
        if method == "retrieval":
            if not samples:
                raise ValueError("layer_scores: invalid `samples`=None; allowed: a non-empty list of needle samples "
                                 "(hybrid_hf.evaluation.make_sample) for method='retrieval'.")
            per_head = retrieval_head_scores(model, samples)
            for i in full:
                scores[i] = per_head[i].max()
            return scores
        if input_ids is None or input_ids.dim() != 2 or input_ids.shape[1] < 2:
            raise ValueError("layer_scores: invalid `input_ids`; allowed: a (rows, tokens >= 2) tensor of calibration "
                             "text for method='nll'.")
        if sliding_window is None:
            raise ValueError("layer_scores: invalid `sliding_window`=None; allowed: the window to test each layer "
                             "with (a positive integer) for method='nll'.")
        base = _mean_nll(model, input_ids, batch_size)
        for i in full:
            windowed = hybridize(model, plan_layer_types(model.config, converted_layers=[i]),
                                 sliding_window=sliding_window).eval()
            scores[i] = _mean_nll(windowed, input_ids, batch_size) - base
            del windowed
        return scores
    finally:
        model.train(was_training)


def select_full_layers(scores: torch.Tensor, keep_full: int) -> list[int]:
    """Indices (ascending) of the ``keep_full`` highest-scoring layers; NaN entries (not full attention) never
    count. Ties go to the earlier layer."""
    candidates = [i for i in range(scores.numel()) if not torch.isnan(scores[i])]
    if not isinstance(keep_full, int) or isinstance(keep_full, bool) or not 0 <= keep_full <= len(candidates):
        raise ValueError(f"select_full_layers: invalid `keep_full`={keep_full!r}; allowed: an integer in "
                         f"[0, {len(candidates)}] (the number of full-attention layers).")
    ranked = sorted(candidates, key=lambda i: (-float(scores[i]), i))
    return sorted(ranked[:keep_full])
