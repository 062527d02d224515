"""Weight distance, layer-wise probing, gradient influence by distance, receptive-field caps, scaling-law fits."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch


@torch.no_grad()
def qk_weight_distance(model, reference) -> list[dict[str, float]]:
    """Per attention layer: mean over query heads of the Frobenius distance of the head's Q rows plus its K rows
    (the K head it shares under GQA) to ``reference``; absolute (``qk_l2``) and relative to the reference norm."""
    rows = []
    ref_layers = reference.base_model.layers
    for i, layer in enumerate(model.base_model.layers):
        attn = getattr(layer, "self_attn", None)
        if attn is None:
            continue
        ref = ref_layers[i].self_attn
        wq, wk = attn.q_proj.weight.float(), attn.k_proj.weight.float()
        rq, rk = ref.q_proj.weight.float(), ref.k_proj.weight.float()
        d = attn.head_dim
        heads, groups = wq.shape[0] // d, wq.shape[0] // wk.shape[0]  # read from the weights: any Llama-like layer
        l2, rel = [], []
        for h in range(heads):
            kv = h // groups
            q_sl, k_sl = slice(h * d, (h + 1) * d), slice(kv * d, (kv + 1) * d)
            diff = torch.cat([(wq[q_sl] - rq[q_sl]).flatten(), (wk[k_sl] - rk[k_sl]).flatten()]).norm()
            norm = torch.cat([rq[q_sl].flatten(), rk[k_sl].flatten()]).norm()
            l2.append(float(diff))
            rel.append(float(diff / norm.clamp_min(1e-12)))
        layer_type = getattr(layer, "layer_type", None) or getattr(attn, "layer_type", None) or "full_attention"
        rows.append({"layer": i, "layer_type": layer_type, "qk_l2": float(np.mean(l2)),
                     "qk_rel_l2": float(np.mean(rel))})
    return rows


@torch.no_grad()
def last_token_features(model, samples: Sequence[Any]) -> torch.Tensor:
    """(layers + 1, samples, hidden) residual stream at the last prompt token, from every layer."""
    device = next(model.parameters()).device
    feats = []
    for s in samples:
        hs = model(torch.tensor([s.input_ids], device=device), output_hidden_states=True, use_cache=False).hidden_states
        feats.append(torch.stack([h[0, -1].float().cpu() for h in hs]))
    return torch.stack(feats, dim=1)


def layerwise_probe(features: torch.Tensor | np.ndarray, labels: Sequence[int], seed: int = 42,
                    test_fraction: float = 0.2, C: float = 0.1) -> list[float]:
    """Test accuracy of a linear probe per layer: StandardScaler + logistic regression (liblinear, one-vs-rest),
    stratified split — the paper's probing recipe. ``features`` is (layers, samples, dim)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    feats = np.asarray(features)
    y = np.asarray(labels)
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=test_fraction, random_state=seed, stratify=y)
    accuracies = []
    for layer in feats:
        clf = make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(C=C, solver="liblinear")))
        clf.fit(layer[idx_train], y[idx_train])
        accuracies.append(float(clf.score(layer[idx_test], y[idx_test])))
    return accuracies


def gradient_influence(model, input_ids: torch.Tensor, distances: Sequence[int], last: int = 20) -> dict[int, float]:
    """E||ds/de_{T-d}||_2: gradient norm of ``s`` (sum of logits averaged over the last ``last`` positions) with
    respect to the input embedding ``d`` tokens before the end, averaged over the batch rows."""
    model.eval()
    emb = model.get_input_embeddings()(input_ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=emb, use_cache=False).logits
    s = logits[:, -last:].float().sum(-1).mean(-1).sum()
    (grad,) = torch.autograd.grad(s, emb)
    t = input_ids.shape[1]
    return {int(d): float(grad[:, t - 1 - d].norm(dim=-1).mean()) for d in distances if 0 <= d < t}


@contextlib.contextmanager
def receptive_field_cap(model, full_attention: int | None = None, efficient: int | None = None,
                        sinks: int = 0) -> Iterator[Any]:
    """Temporarily restrict full-attention layers and/or sliding layers to a window (plus ``sinks`` leading tokens)
    at inference, without retraining (the paper's constraint experiment)."""
    cfg = model.config
    saved = (cfg.eval_full_attention_window, cfg.eval_efficient_window, cfg.eval_attention_sink_size)
    try:
        cfg.eval_full_attention_window, cfg.eval_efficient_window, cfg.eval_attention_sink_size = (
            full_attention, efficient, sinks)
        yield model
    finally:
        cfg.eval_full_attention_window, cfg.eval_efficient_window, cfg.eval_attention_sink_size = saved


def fit_scaling_law(n: Sequence[float], d: Sequence[float], loss: Sequence[float], holdout_n: float | None = None,
                    log_target: bool = False) -> dict[str, Any]:
    """Fit ``L = b N^-alpha + c D^-beta`` (no constant) with a Huber loss (delta 1e-3) on log-residuals, L-BFGS-B from
    the best points of a grid of starts; optionally hold out every point with ``N == holdout_n`` and report its R^2.

    With ``log_target`` the target is ``log L`` (as for log LongPPL)."""
    from scipy.optimize import minimize

    n_arr, d_arr, y = (np.asarray(v, dtype=float) for v in (n, d, loss))
    target = np.log(y) if log_target else y
    train = np.ones_like(n_arr, dtype=bool) if holdout_n is None else n_arr != holdout_n

    def predict(p, nn, dd):
        log_b, alpha, log_c, beta = p
        return np.exp(log_b - alpha * np.log(nn)) + np.exp(log_c - beta * np.log(dd))

    def objective(p):
        r = np.log(np.maximum(predict(p, n_arr[train], d_arr[train]), 1e-12)) - np.log(np.maximum(target[train], 1e-12))
        a = np.abs(r)
        return float(np.sum(np.where(a <= 1e-3, 0.5 * r**2, 1e-3 * (a - 0.5e-3))))

    grid = [(log_b, alpha, log_c, beta) for log_b in (0.0, 2.5, 5.0) for alpha in (0.1, 0.25, 0.5)
            for log_c in (0.0, 2.5, 5.0, 7.5) for beta in (0.1, 0.3, 0.5)]
    starts = sorted(grid, key=objective)[:8]  # refine the best grid points only: same optimum, ~10x faster
    best = min((minimize(objective, list(x0), method="L-BFGS-B", bounds=[(-10, 30), (0.0, 2.0), (-10, 30), (0.0, 2.0)])
                for x0 in starts), key=lambda r: r.fun)
    p = best.x

    def r2(mask):
        if not mask.any():
            return None
        pred = predict(p, n_arr[mask], d_arr[mask])
        ss_res = float(np.sum((target[mask] - pred) ** 2))
        ss_tot = float(np.sum((target[mask] - target[mask].mean()) ** 2))
        return 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res < 1e-12 else 0.0)

    return {"b": math.exp(p[0]), "alpha": float(p[1]), "c": math.exp(p[2]), "beta": float(p[3]),
            "r2_train": r2(train), "r2_holdout": r2(~train) if holdout_n is not None else None}
