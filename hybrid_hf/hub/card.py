"""Model cards for hybrid_hf checkpoints: layer-pattern diagram, per-layer RoPE/NoPE and window, parameter counts,
training data, evaluation tables and the paper's citation, rendered from ``model_cards/hybrid_hf.md``."""

from __future__ import annotations

import json
import math
import re
import string
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..modeling import HybridConfig, HybridForCausalLM

TEMPLATE_NAME = "hybrid_hf.md"

PAPER_TITLE = "Rethinking the Role of Efficient Attention in Hybrid Architectures"
PAPER_ARXIV = "2606.15378"
CITATION = f"""@misc{{hybrid_attention_2026,
  title         = {{{PAPER_TITLE}}},
  year          = {{2026}},
  eprint        = {{{PAPER_ARXIV}}},
  archivePrefix = {{arXiv}},
  url           = {{https://arxiv.org/abs/{PAPER_ARXIV}}}
}}"""

_TYPE_NAME = {"full_attention": "full attention", "sliding_attention": "sliding-window attention",
              "linear_attention": "linear attention"}
_DIAGRAM_WIDTH = 16  # layers per diagram row

EvalResults = Mapping[str, Any] | Sequence[Mapping[str, Any]]


def template_path() -> Path:
    """The card template: ``model_cards/`` of a source checkout, else the copy installed under ``share/``."""
    candidates = [
        Path(__file__).resolve().parents[2] / "model_cards" / TEMPLATE_NAME,
        Path(sys.prefix) / "share" / "hybrid_hf" / "model_cards" / TEMPLATE_NAME,
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"hybrid_hf model-card template {TEMPLATE_NAME!r} not found in {[str(c) for c in candidates]}; "
        "pass template=PATH."
    )


# ------------------------------------------------------------------------------------------- counting
def _count(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def parameter_counts(model_or_config: nn.Module | HybridConfig) -> dict[str, Any]:
    """Parameter counts: total, embedding, output head (0 when tied), non-embedding, and per layer (mixer, MLP, norms).

    A config is instantiated on the meta device, so no memory is spent on weights.
    """
    if isinstance(model_or_config, HybridConfig):
        with torch.device("meta"):
            model = HybridForCausalLM(model_or_config)
    else:
        model = model_or_config
    base = getattr(model, "model", model)
    config = base.config
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())  # tied weights once
    embedding = _count(base.embed_tokens)
    head = getattr(model, "lm_head", None)
    tied = head is not None and head.weight is base.embed_tokens.weight
    head_count = 0 if head is None or tied else _count(head)
    layers = []
    for i, layer in enumerate(base.layers):
        mixer = getattr(layer, "self_attn", None) or getattr(layer, "linear_attn", None)
        layers.append({
            "layer": i,
            "type": config.layer_types[i],
            "mixer": _count(mixer),
            "mlp": _count(layer.mlp),
            "norms": _count(layer.input_layernorm) + _count(layer.post_attention_layernorm),
            "total": _count(layer),
        })
    by_type: dict[str, int] = {}
    for row in layers:
        by_type[row["type"]] = by_type.get(row["type"], 0) + row["total"]
    return {
        "total": total,
        "embedding": embedding,
        "output_head": head_count,
        "tied_embeddings": tied,
        "non_embedding": total - embedding - head_count,
        "final_norm": _count(base.norm),
        "layers": layers,
        "by_layer_type": by_type,
    }


def _fmt(n: int) -> str:
    if n >= 1e9:
        short = f"{n / 1e9:.2f}B"
    elif n >= 1e6:
        short = f"{n / 1e6:.1f}M"
    elif n >= 1e3:
        short = f"{n / 1e3:.1f}K"
    else:
        short = str(n)
    return f"{short} ({n:,})"


# ------------------------------------------------------------------------------------------- pattern
def _positions(config: HybridConfig, i: int) -> str:
    t = config.layer_types[i]
    if t == "linear_attention":
        return "none (recurrent)"
    if config.position_encodings[i] == "nope":
        return "NoPE"
    params = config.rope_parameters[t]
    kind = params.get("rope_type", "default")
    theta = params.get("rope_theta")
    return f"RoPE θ={theta:g}" + ("" if kind == "default" else f" ({kind})")


def _mixer_name(config: HybridConfig, layer_type: str) -> str:
    if layer_type == "linear_attention":
        return str(config.linear_attention_type)
    return "GQA softmax" if config.num_key_value_heads != config.num_attention_heads else "MHA softmax"


def layer_diagram(config: HybridConfig) -> str:
    """Text diagram of the layer stack: one box per layer with its type letter, then position encoding per layer.

    Example (4 layers of ``swa128-nope``)::

        embed ─► [S]─[F]─[S]─[F] ─► norm ─► lm_head
                  0   1   2   3
                  R   N   R   N
    """
    letters = [config.layer_letter(i) for i in range(config.num_hidden_layers)]
    pos = ["-" if t == "linear_attention" else ("N" if pe == "nope" else "R")
           for t, pe in zip(config.layer_types, config.position_encodings)]
    rows = []
    n = len(letters)
    for start in range(0, n, _DIAGRAM_WIDTH):
        chunk = range(start, min(n, start + _DIAGRAM_WIDTH))
        lead = "embed ─► " if start == 0 else "      ─► "
        tail = " ─► norm ─► lm_head" if start + _DIAGRAM_WIDTH >= n else " ─►"
        pad = " " * len(lead)
        rows.append(lead + "─".join(f"[{letters[i]}]" for i in chunk) + tail)
        rows.append(pad + "".join(f" {i:<3}" for i in chunk).rstrip())
        rows.append(pad + "".join(f" {pos[i]:<3}" for i in chunk).rstrip())
    return "\n".join(rows)


def _legend(config: HybridConfig) -> str:
    parts = []
    types = config.layer_types
    if "sliding_attention" in types:
        parts.append(f"`S` sliding-window attention ({config.sliding_window} keys including the current token)")
    if "full_attention" in types:
        parts.append("`F` full (global) causal attention")
    if "linear_attention" in types:
        parts.append(f"`L` linear attention / recurrent mixer (`{config.linear_attention_type}`)")
    parts.append("`R` RoPE, `N` NoPE (no positional encoding), `-` none (recurrent layer)")
    return "Legend: " + "; ".join(parts) + "."


def architecture_summary(config: HybridConfig) -> str:
    """One sentence: pattern, window, and where RoPE/NoPE are used."""
    pattern = config.layer_pattern
    n = len(pattern)
    counts = {c: pattern.count(c) for c in dict.fromkeys(pattern)}  # in order of first appearance
    period = next(p for p in range(1, n + 1) if n % p == 0 and pattern == pattern[:p] * (n // p))
    names = {"F": "full attention", "S": f"sliding-window attention (window {config.sliding_window})",
             "L": f"{config.linear_attention_type} linear attention"}
    if len(counts) == 1:
        body = f"All {n} layers use {names[pattern[0]]}."
    else:
        g = math.gcd(*counts.values())
        ratio = ":".join(str(counts[c] // g) for c in counts)
        body = (f"It interleaves {' and '.join(names[c] for c in counts)} in a {ratio} ratio "
                f"(repeating unit `{pattern[:period]}`, {n} layers).")
    nope = sorted({_TYPE_NAME[t] for t, pe in zip(config.layer_types, config.position_encodings)
                   if pe == "nope" and t != "linear_attention"})
    rope = sorted({_TYPE_NAME[t] for t, pe in zip(config.layer_types, config.position_encodings) if pe == "rope"})
    if nope:
        body += f" NoPE (no positional encoding) on {' and '.join(nope)} layers"
        body += f", RoPE on {' and '.join(rope)} layers." if rope else "."
    elif rope:
        body += " RoPE on all attention layers."
    return body


# ------------------------------------------------------------------------------------------- tables
def _architecture_rows(config: HybridConfig, counts: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [
        ("layers", f"{config.num_hidden_layers} (`{config.layer_pattern}`)"),
        ("hidden size", str(config.hidden_size)),
        ("MLP (SwiGLU) width", str(config.intermediate_size)),
        ("attention heads (query / key-value)", f"{config.num_attention_heads} / {config.num_key_value_heads}"),
        ("head dim", str(config.head_dim)),
    ]
    if "sliding_attention" in config.layer_types:
        rows.append(("sliding window", f"{config.sliding_window} keys (including the current token)"))
    if "linear_attention" in config.layer_types:
        rows.append(("recurrent mixer", f"`{config.linear_attention_type}`"))
    rows += [
        ("QK-norm", "yes" if config.use_qk_norm else "no"),
        ("vocabulary", str(config.vocab_size)),
        ("max positions (trained context)", str(config.max_position_embeddings)),
        ("tied input/output embeddings", "yes" if counts["tied_embeddings"] else "no"),
        ("non-embedding parameters", _fmt(counts["non_embedding"])),
    ]
    caps = [(f, getattr(config, f, None)) for f in ("eval_full_attention_window", "eval_efficient_window")]
    for field, value in caps:
        if value is not None:
            rows.append((f"`{field}` (inference cap)", str(value)))
    return rows


def _table_rows(rows: Sequence[tuple[str, str]]) -> str:
    return "\n".join(f"| {k} | {v} |" for k, v in rows)


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def render_eval_tables(results: EvalResults | None) -> str:
    """Markdown for evaluation results.

    Accepts a flat ``{metric: value}`` dict (one table), a ``{table title: {metric: value}}`` dict (one table per
    title), or a list of row dicts sharing keys (one table, columns in first-seen order).
    """
    if not results:
        return "No evaluation results were provided."
    if isinstance(results, Mapping):
        if all(isinstance(v, Mapping) for v in results.values()):
            return "\n\n".join(f"### {title}\n\n" + render_eval_tables(table) for title, table in results.items())
        lines = ["| metric | value |", "|---|---:|"]
        lines += [f"| {k} | {_fmt_value(v)} |" for k, v in results.items()]
        return "\n".join(lines)
    rows = list(results)
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt_value(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _front_matter(license: str, tags: Sequence[str], datasets: Sequence[str], base_model: str | None) -> str:
    lines = [f"license: {license}", "library_name: transformers", "pipeline_tag: text-generation", "tags:"]
    lines += [f"- {t}" for t in tags]
    if datasets:
        lines.append("datasets:")
        lines += [f"- {d}" for d in datasets]
    if base_model:
        lines.append(f"base_model: {base_model}")
    return "\n".join(lines)


def render_model_card(
    model_or_config: nn.Module | HybridConfig,
    *,
    model_name: str | None = None,
    repo_id: str | None = None,
    description: str | None = None,
    training_data: str | None = None,
    datasets: Sequence[str] = (),
    eval_results: EvalResults | None = None,
    license: str = "apache-2.0",
    base_model: str | None = None,
    has_tokenizer: bool = True,
    template: str | Path | None = None,
) -> str:
    """Render the model card (README.md) of a hybrid_hf model.

    Args:
        model_or_config: The model (exact parameter counts) or its ``HybridConfig``.
        model_name: Card title; defaults to the last part of ``repo_id`` or "hybrid_hf model".
        repo_id: Hub id used in the usage snippet.
        description: Free text under the title.
        training_data: Free text (Markdown) for the "Training data" section.
        datasets: Hub dataset ids for the card metadata.
        eval_results: Evaluation tables, see ``render_eval_tables``.
        license: SPDX-style license id for the metadata.
        base_model: Hub id of the model this one was fine-tuned from, if any.
        has_tokenizer: Whether the checkpoint ships a tokenizer (changes the usage snippet).
        template: Path to a ``string.Template`` file; defaults to ``model_cards/hybrid_hf.md``.
    """
    config = model_or_config if isinstance(model_or_config, HybridConfig) else model_or_config.config
    counts = parameter_counts(model_or_config)
    name = model_name or (repo_id.split("/")[-1] if repo_id else "hybrid_hf model")
    tags = ["hybrid_hf", "hybrid-attention", "custom_code"]
    if "sliding_attention" in config.layer_types:
        tags.append("sliding-window-attention")
    if "linear_attention" in config.layer_types:
        tags.append(str(config.linear_attention_type).replace("_", "-"))
    if "nope" in config.position_encodings:
        tags.append("nope")
    layer_rows = []
    for row in counts["layers"]:
        i, t = row["layer"], row["type"]
        window = config.layer_window(i)
        layer_rows.append(
            f"| {i} | `{config.layer_letter(i)}` {_TYPE_NAME[t]} | {_mixer_name(config, t)} | "
            f"{window if window is not None else 'all'} | {_positions(config, i)} | {row['total']:,} |"
        )
    param_rows = [
        ("total", _fmt(counts["total"])),
        ("embedding" + (" (tied with the output head)" if counts["tied_embeddings"] else ""), _fmt(counts["embedding"])),
    ]
    if counts["output_head"]:
        param_rows.append(("output head", _fmt(counts["output_head"])))
    param_rows.append(("**non-embedding**", f"**{_fmt(counts['non_embedding'])}**"))
    for t, n in counts["by_layer_type"].items():
        k = sum(1 for r in counts["layers"] if r["type"] == t)
        param_rows.append((f"{_TYPE_NAME[t]} layers ({k}, mixer + MLP + norms)", _fmt(n)))
    param_rows.append(("final norm", _fmt(counts["final_norm"])))
    tok_usage = (
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id or name}")\n'
        'inputs = tokenizer("The lighthouse keeper", return_tensors="pt")\n'
        "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=32)[0]))"
        if has_tokenizer
        else "# This checkpoint ships no tokenizer: pass token ids directly."
    )
    values = {
        "front_matter": _front_matter(license, tags, datasets, base_model),
        "model_name": name,
        "description": description or "",
        "repo_id": repo_id or name,
        "tokenizer_usage": tok_usage,
        "architecture_summary": architecture_summary(config),
        "architecture_table": _table_rows(_architecture_rows(config, counts)),
        "layer_legend": _legend(config),
        "layer_diagram": layer_diagram(config),
        "layer_table": "\n".join(layer_rows),
        "parameter_table": _table_rows(param_rows),
        "training_data": training_data or "Not specified.",
        "evaluation": render_eval_tables(eval_results),
        "citation": CITATION,
        "lora_targets": json.dumps(_present_lora_targets(model_or_config)),
    }
    text = Path(template or template_path()).read_text(encoding="utf-8")
    return re.sub(r"\n{3,}", "\n\n", string.Template(text).safe_substitute(values))


def _present_lora_targets(model_or_config: nn.Module | HybridConfig) -> list[str]:
    """The registered default LoRA targets that exist in this model (names of its Linear modules)."""
    from ..training.peft_targets import LORA_TARGET_MODULES

    if isinstance(model_or_config, HybridConfig):
        with torch.device("meta"):
            model_or_config = HybridForCausalLM(model_or_config)
    names = {n.rsplit(".", 1)[-1] for n, m in model_or_config.named_modules() if isinstance(m, nn.Linear)}
    return [t for t in LORA_TARGET_MODULES if t in names]


def load_eval_results(path: str | Path) -> EvalResults:
    """Evaluation results from a JSON file (any shape accepted by ``render_eval_tables``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_eval_results: no such file {str(path)!r}.")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"load_eval_results: {str(path)!r} is not valid JSON ({err}).") from None
    if not isinstance(results, (dict, list)) or (isinstance(results, list) and not all(isinstance(r, dict) for r in results)):
        raise ValueError(f"load_eval_results: {str(path)!r} holds a {type(results).__name__}; allowed: a JSON object "
                         "of metrics or of tables, or a list of row objects.")
    return results
