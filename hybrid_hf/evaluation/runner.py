"""Run the long-context suite on a model: greedy answers, scores, tables, a length x depth heatmap, binned loss."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from ..modeling.loss import token_losses
from .tasks import Sample


def score_answer(text: str, answers: list[str]) -> float:
    """RULER's string match: the fraction of expected answers that appear in the generated text."""
    return sum(a in text for a in answers) / len(answers)


@torch.no_grad()
def evaluate_samples(model, tokenizer, samples: list[Sample], max_new_tokens: int = 12) -> list[dict[str, Any]]:
    """Greedy-decode each sample and score it. Each record says whether the needle lay inside the model's sliding
    window (``within_window``; always True for models without sliding layers)."""
    model.eval()
    device = next(model.parameters()).device
    window = getattr(model.config, "sliding_window", None)
    has_sliding = "sliding_attention" in getattr(model.config, "layer_types", [])
    records = []
    for s in samples:
        ids = torch.tensor([s.input_ids], device=device)
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        distance = s.needle_distance()
        records.append({
            "task": s.task, "length": s.length, "depth": s.depth, "score": score_answer(text, s.answers),
            "output": text, "answers": s.answers, "needle_distance": distance,
            "within_window": (not has_sliding) or window is None or distance < window,
        })
    return records


def summarize(records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean score per task and length: ``{task: {length: score}}``."""
    acc: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        acc[r["task"]][r["length"]].append(r["score"])
    return {t: {str(n): sum(v) / len(v) for n, v in sorted(by_len.items())} for t, by_len in acc.items()}


def markdown_table(summary: dict[str, dict[str, float]]) -> str:
    lengths = sorted({int(n) for by_len in summary.values() for n in by_len})
    lines = ["| task | " + " | ".join(str(n) for n in lengths) + " |", "|---" * (len(lengths) + 1) + "|"]
    for task, by_len in summary.items():
        lines.append(f"| {task} | " + " | ".join(f"{100 * by_len.get(str(n), float('nan')):.1f}" for n in lengths) + " |")
    return "\n".join(lines)


def heatmap(records: list[dict[str, Any]], path: str | Path, title: str = "NIAH accuracy") -> Path:
    """Length x depth heatmap of mean score (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    lengths = sorted({r["length"] for r in records})
    depths = sorted({r["depth"] for r in records})
    grid = np.full((len(depths), len(lengths)), np.nan)
    for i, d in enumerate(depths):
        for j, n in enumerate(lengths):
            vals = [r["score"] for r in records if r["depth"] == d and r["length"] == n]
            if vals:
                grid[i, j] = float(np.mean(vals))
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(lengths), 1.0 + 0.45 * len(depths)))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.2f}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@torch.no_grad()
def position_binned_loss(model, input_ids: torch.Tensor, bin_size: int) -> list[float]:
    """Mean next-token loss per position bin (a LongPPL-like view of how loss falls with context)."""
    model.eval()
    per_pos = token_losses(model(input_ids, use_cache=False).logits, input_ids)[:, :-1].mean(0)
    return [float(per_pos[s : s + bin_size].mean()) for s in range(0, per_pos.numel(), bin_size)]


def save_results(records: list[dict[str, Any]], out_dir: str | Path, name: str = "longctx") -> dict[str, Path]:
    """JSON records, Markdown table and heatmap under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(records)
    (out / f"{name}.json").write_text(json.dumps({"summary": summary, "records": records}, indent=1))
    (out / f"{name}.md").write_text(markdown_table(summary) + "\n")
    return {"json": out / f"{name}.json", "md": out / f"{name}.md", "png": heatmap(records, out / f"{name}.png")}
