"""Write a hybrid_hf model as a checkpoint of a stock transformers architecture, verified at write time."""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from ..modeling import HybridConfig, HybridForCausalLM
from .targets import ARCHITECTURES, blocking_reasons, export_targets, map_state_dict, serving_caveats, target_config

# Verification tolerance on fp32 logits (max absolute difference).
ATOL = 1e-4
# Attention implementations the exported model is checked under (both build the window from the mask).
VERIFY_IMPLEMENTATIONS = ("sdpa", "eager")
GENERATED_TOKENS = 8


class ExportVerificationError(RuntimeError):
    """The exported checkpoint, loaded in stock transformers, does not reproduce the source model."""


def _load_source(model_or_folder: HybridForCausalLM | str | Path) -> tuple[HybridForCausalLM, Path | None]:
    if isinstance(model_or_folder, nn.Module):
        if not isinstance(model_or_folder, HybridForCausalLM):
            raise ValueError(
                f"export: `model_or_folder` must be a HybridForCausalLM or its folder, not {type(model_or_folder).__name__}."
            )
        return model_or_folder, None
    folder = Path(model_or_folder)
    if not (folder / "config.json").is_file():
        raise ValueError(f"export: `model_or_folder`={str(folder)!r} is not a model folder (no config.json).")
    config = AutoConfig.from_pretrained(folder)
    if not isinstance(config, HybridConfig):
        raise ValueError(
            f"export: `model_or_folder`={str(folder)!r} holds a {type(config).__name__}, not a hybrid_hf model."
        )
    return HybridForCausalLM.from_pretrained(folder, dtype="auto"), folder


def refusal_message(config: HybridConfig, target: str) -> str | None:
    """The ValueError text for exporting ``config`` to ``target``, or None when it is exactly expressible."""
    reasons = blocking_reasons(config, target)
    if not reasons:
        return None
    supported = [s.target for s in export_targets(config) if s.supported]
    tail = f"exactly expressible targets for this model: {', '.join(supported)}" if supported else (
        "no target expresses this model exactly"
    )
    lines = "\n".join(f"  - {r}" for r in reasons)
    return f"export: cannot export exactly to `to`={target!r} ({ARCHITECTURES[target]}):\n{lines}\n({tail}.)"


def export_model(
    model_or_folder: HybridForCausalLM | str | Path,
    to: str,
    out_dir: str | Path,
    overwrite: bool = False,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``model_or_folder`` as a checkpoint of the stock architecture ``to`` (see ``export_targets``) in
    ``out_dir``, loadable by plain transformers without hybrid_hf or remote code.

    Refuses (``ValueError`` naming the blocking fields) unless the model is exactly expressible. Before ``out_dir``
    appears, the written checkpoint is loaded with the stock class and must match the source in fp32 (max abs logit
    difference <= ``ATOL`` on a probe batch longer than the window, under sdpa and eager) and in cached greedy
    generation; otherwise ``ExportVerificationError`` and nothing is left behind. Tokenizer files beside a source
    folder are copied; a README notes the target and engine caveats. Returns ``out_dir``.

    ``dtype`` sets the stored weight dtype (default: the source's). A dtype narrower than the source's rounds the
    weights, which verification reports as a mismatch; so can Qwen3.5's ``w - 1`` norm weights in bf16 when a norm
    weight is below 0.5 (then export in float32).
    """
    if to not in ARCHITECTURES:
        raise ValueError(f"export: invalid `to`={to!r}; allowed: {', '.join(ARCHITECTURES)}.")
    model, folder = _load_source(model_or_folder)
    config = model.config
    message = refusal_message(config, to)
    if message:
        raise ValueError(message)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ValueError(f"export: `out_dir`={str(out)!r} exists and is not empty; pass overwrite=True (--overwrite).")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        _write(model, folder, to, staging, dtype or model.dtype)
        verify_export(model, staging)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out


def _write(model: HybridForCausalLM, folder: Path | None, to: str, out: Path, dtype: torch.dtype) -> None:
    config = model.config
    stock_config = AutoConfig.for_model(_model_type(to), **target_config(config, to))
    state = map_state_dict(config, model.state_dict(), to)
    stock = AutoModelForCausalLM.from_config(stock_config, dtype=dtype)
    expected = set(stock.state_dict())
    if set(state) != expected:
        raise ExportVerificationError(
            f"export to {to}: weight names do not match {ARCHITECTURES[to]} (missing {sorted(expected - set(state))}, "
            f"unexpected {sorted(set(state) - expected)})."
        )
    # Mapping (e.g. Qwen3.5's `w - 1` norms) is done in the source dtype; `dtype` only sets what is stored.
    stock.load_state_dict({k: v.detach() for k, v in state.items()}, strict=True)
    if model.generation_config is not None:
        stock.generation_config = copy.deepcopy(model.generation_config)
    stock.save_pretrained(out)
    if to == "granitemoehybrid":
        _granite4_config_spelling(out / "config.json")
    tokenizer = _tokenizer(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    (out / "README.md").write_text(model_card(config, to, has_tokenizer=tokenizer is not None))


def _model_type(to: str) -> str:
    return {"qwen3_5": "qwen3_5_text"}.get(to, to)


def _granite4_config_spelling(path: Path) -> None:
    """Write the config as Granite-4 checkpoints do: layer types "mamba"/"attention" (transformers 5.17 and 5.24 read
    both spellings, serving engines expect these) and no ``time_step_limit`` (its infinite bound has no plain-JSON
    form; the class default is the same (0, inf))."""
    data = json.loads(path.read_text())
    legacy = {"linear_attention": "mamba", "full_attention": "attention"}
    data["layer_types"] = [legacy[t] for t in data["layer_types"]]
    data.pop("time_step_limit", None)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _tokenizer(folder: Path | None) -> PreTrainedTokenizerBase | None:
    if folder is None:
        return None
    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError):
        return None


def model_card(config: HybridConfig, to: str, has_tokenizer: bool) -> str:
    """README of an exported checkpoint: target, how to load it, engine caveats."""
    arch = ARCHITECTURES[to]
    caveats = serving_caveats(config, to)
    lines = [
        "---",
        "library_name: transformers",
        "tags: [hybrid_hf-export]",
        "---",
        f"# {arch} export of a hybrid_hf model",
        "",
        f"Exported by `hybrid_hf.export` to the stock transformers architecture `{arch}`: loadable without hybrid_hf "
        "and without remote code. At export time its fp32 logits matched the source model (max abs diff <= "
        f"{ATOL:g}) on a probe longer than the window, and cached greedy generation matched.",
        "",
        f"Layers: `{config.layer_pattern}` ({_legend(config)}); positional encoding per layer: "
        f"{config.position_encodings}.",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM" + (", AutoTokenizer" if has_tokenizer else ""),
        'model = AutoModelForCausalLM.from_pretrained("PATH")',
        *(['tokenizer = AutoTokenizer.from_pretrained("PATH")'] if has_tokenizer else []),
        "```",
    ]
    if caveats:
        lines += ["", "## Serving caveats", "", *(f"- {c}" for c in caveats)]
    return "\n".join(lines) + "\n"


def _legend(config: HybridConfig) -> str:
    names = {
        "F": "full attention",
        "S": f"sliding window of {config.sliding_window}",
        "L": f"{config.linear_attention_type}",
    }
    return ", ".join(f"{k} {v}" for k, v in names.items() if k in config.layer_pattern)


# ---------------------------------------------------------------------------------------- verification
def _probe(config: HybridConfig) -> torch.Tensor:
    """Two rows longer than twice the window (and two recurrent chunks), from a fixed generator."""
    recurrent = "linear_attention" in config.layer_types
    length = max(32, (config.sliding_window or 0) * 2 + 5, 2 * config.linear_chunk_size + 5 if recurrent else 0)
    length = min(length, config.max_position_embeddings)
    gen = torch.Generator().manual_seed(0)
    low = 3 if config.vocab_size > 3 else 0
    return torch.randint(low, config.vocab_size, (2, length), generator=gen)


@torch.no_grad()
def verify_export(source: HybridForCausalLM, folder: str | Path) -> float:
    """Check that the stock checkpoint in ``folder`` reproduces ``source``: fp32 logits within ``ATOL`` under each of
    ``VERIFY_IMPLEMENTATIONS`` and identical cached greedy generation. Returns the largest logit difference; raises
    ``ExportVerificationError`` otherwise."""
    # Rebuilt rather than cast: casting a bf16 model up would keep its bf16-rounded RoPE buffers.
    ours = HybridForCausalLM(copy.deepcopy(source.config)).eval()
    ours.load_state_dict({k: v.float() for k, v in source.state_dict().items()})
    ids = _probe(ours.config)
    reference = ours(ids, use_cache=False).logits
    prompt = ids[:, : max(ids.shape[1] // 2, 1)]
    gen_kwargs = dict(max_new_tokens=GENERATED_TOKENS, do_sample=False, use_cache=True,
                      pad_token_id=ours.config.pad_token_id if ours.config.pad_token_id is not None else 0)
    expected = ours.generate(prompt, **gen_kwargs)
    worst = 0.0
    for impl in VERIFY_IMPLEMENTATIONS:
        stock = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation=impl).eval()
        if type(stock).__module__.split(".")[0] != "transformers":
            raise ExportVerificationError(f"export: {folder} loaded as {type(stock)}, not a stock transformers class.")
        diff = (stock(ids, use_cache=False).logits - reference).abs().max().item()
        worst = max(worst, diff)
        if not diff <= ATOL:
            raise ExportVerificationError(
                f"export: {type(stock).__name__} ({impl}) logits differ from the source by {diff:.3g} > {ATOL:g}."
            )
        got = stock.generate(prompt, **gen_kwargs)
        if not torch.equal(got, expected):
            raise ExportVerificationError(
                f"export: cached greedy generation of {type(stock).__name__} ({impl}) differs from the source."
            )
    return worst
