"""``hybrid-hf convert``: import a Llama / Qwen3 / SmolLM3 / Mistral checkpoint and turn it into a hybrid."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import validation as check

EXAMPLES = """examples:
  # import only: the same model as a hybrid_hf folder (same logits), ready for `hybrid-hf analyze`
  hybrid-hf convert ./Qwen3-0.6B --out runs/qwen3-imported
  # 1:1 sliding window (even layers windowed to 512 keys), NoPE on the kept full-attention layers
  hybrid-hf convert ./Qwen3-0.6B --out runs/qwen3-swa --pattern SF --window 512 --nope-full
  # explicit layers, turned into Gated DeltaNet initialised from their attention
  hybrid-hf convert ./Llama-3.2-1B --out runs/llama-gdn --sliding-layers 0,2,4,6 --recurrent gated_deltanet
  # keep the 4 layers with the strongest retrieval heads full, window the rest
  hybrid-hf convert ./SmolLM3-3B --out runs/smol-swa --select retrieval --keep-full 4 --window 256 \\
      --calibration-data corpus.txt
  # then heal by distillation from the original model
  hybrid-hf train runs/qwen3-swa --teacher ./Qwen3-0.6B --data corpus.txt --output-dir runs/qwen3-swa-healed

The converted layers are sliding-window layers (no new parameters) unless --recurrent is given. OUT receives the
model (safetensors + remote code), the source's tokenizer and conversion.json (layer types, scores, choices).
"""

def register(subparsers: argparse._SubParsersAction) -> None:
    from ..convert import SELECTION_METHODS
    from ..modeling.configuration_hybrid import LINEAR_ATTENTION_TYPES

    p = subparsers.add_parser(
        "convert",
        help="import a Llama/Qwen3/SmolLM3/Mistral checkpoint and convert layers to sliding-window or recurrent",
        description="Load SRC (a Llama, Qwen3, SmolLM3, Mistral or hybrid_hf folder or Hub id) as an equivalent "
        "hybrid_hf model, optionally turn some full-attention layers into sliding-window layers (zero new "
        "parameters) or recurrent layers initialised from their attention, and save the result to OUT.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", metavar="SRC", type=check.folder_or_hub_id, help="checkpoint folder or Hub id")
    p.add_argument("--out", required=True, metavar="DIR", type=check.output_folder, help="folder to write the converted model to")
    g = p.add_argument_group("which layers to convert (at most one; none: import only)")
    choice = g.add_mutually_exclusive_group()
    choice.add_argument("--sliding-layers", metavar="I,J,...", type=check.index_list,
                        help="comma-separated indices of full-attention layers to convert")
    choice.add_argument("--pattern", metavar="LETTERS",
                        help="letters F (keep) and S or L (convert) tiled over the depth, e.g. SF for 1:1")
    choice.add_argument("--select", choices=SELECTION_METHODS,
                        help="rank full-attention layers from data (retrieval-head score or NLL increase when "
                        "windowed) and keep the top --keep-full")
    g.add_argument("--keep-full", type=check.positive_int, metavar="K", help="full-attention layers to keep with --select")
    g.add_argument("--calibration-data", metavar="FILE", type=check.existing_file,
                   help="text/jsonl file for --select: haystack of the needle samples (retrieval) or text (nll)")
    g.add_argument("--calibration-length", type=check.block_size, default=512,
                   help="tokens per calibration sample/row (default: 512)")
    g.add_argument("--calibration-samples", type=check.positive_int, default=8,
                   help="calibration samples (retrieval) or rows (nll) (default: 8)")
    g.add_argument("--text-field", default="text", help="field of jsonl rows holding the text (default: text)")
    g = p.add_argument_group("what the converted layers become")
    g.add_argument("--recurrent", choices=LINEAR_ATTENTION_TYPES,
                   help="make the converted layers this recurrent mixer (initialised from the attention's Q/K/V/O) "
                   "instead of sliding-window attention")
    g.add_argument("--window", type=check.positive_int, metavar="W",
                   help="sliding window in keys including the current token (default: the model's own); also "
                   "the window --select nll tests each layer with")
    g.add_argument("--nope-full", action="store_true", help="drop RoPE from the kept full-attention layers")
    g.add_argument("--seed", type=check.seed, default=0, help="seed of the freshly initialised parameters (default: 0)")
    p.set_defaults(func=run)


def _calibration_rows(tokenizer, docs: list[str], length: int, rows: int):
    import torch

    ids: list[int] = []
    for d in docs:
        ids += tokenizer(d, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
        if len(ids) >= length * rows:
            break
    n = min(rows, len(ids) // length)
    if n == 0:
        raise ValueError(f"--calibration-data: fewer than --calibration-length={length} tokens of text")
    return torch.tensor(ids[: n * length]).view(n, length)


def run(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from ..convert import hybridize, import_model, layer_scores, plan_layer_types, select_full_layers
    from ..data import read_documents
    from ..hub import layer_diagram

    out = Path(args.out)
    if args.keep_full is not None and args.select is None:
        raise ValueError("--keep-full: only with --select")
    if args.select is not None and (args.keep_full is None or args.calibration_data is None):
        raise ValueError("--select: needs --keep-full K and --calibration-data FILE")
    if args.recurrent is None and args.pattern and "L" in args.pattern:
        raise ValueError(f"--pattern: invalid value {args.pattern!r}; letter L (recurrent) needs --recurrent")
    model = import_model(args.source)
    tokenizer = None
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.source)
    except (OSError, ValueError):
        print(f"no tokenizer found in {args.source!r}; OUT gets the model only")
    record: dict = {"source": str(args.source), "source_layer_types": list(model.config.layer_types)}
    recurrent = args.recurrent is not None
    types = None
    if args.sliding_layers is not None:
        types = plan_layer_types(model.config, converted_layers=args.sliding_layers, recurrent=recurrent)
    elif args.pattern is not None:
        types = plan_layer_types(model.config, pattern=args.pattern, recurrent=recurrent)
    elif args.select is not None:
        if tokenizer is None:
            raise ValueError("--select: SRC has no tokenizer to encode --calibration-data with")
        docs = read_documents(args.calibration_data, args.text_field)
        if args.select == "retrieval":
            from ..evaluation import make_sample

            samples = [make_sample("niah_single", tokenizer, args.calibration_length,
                                   depth=(i + 0.5) / args.calibration_samples, seed=i, haystack=docs)
                       for i in range(args.calibration_samples)]
            scores = layer_scores(model, "retrieval", samples=samples)
        else:
            window = args.window or model.config.sliding_window
            if window is None:
                raise ValueError("--select nll: needs --window W (the model has no sliding window)")
            rows = _calibration_rows(tokenizer, docs, args.calibration_length, args.calibration_samples)
            scores = layer_scores(model, "nll", input_ids=rows, sliding_window=window)
        keep = select_full_layers(scores, args.keep_full)
        types = plan_layer_types(model.config, full_layers=keep, recurrent=recurrent)
        record.update(select=args.select, scores=[None if s != s else float(s) for s in scores.tolist()],
                      kept_full=keep)
        print(f"{args.select} scores per layer: " + ", ".join(
            f"{i}: {s:.4f}" for i, s in enumerate(scores.tolist()) if s == s) + f"; keeping {keep} full")
    if types is not None or args.nope_full:
        model = hybridize(model, types if types is not None else list(model.config.layer_types),
                          linear_attention_type=args.recurrent, sliding_window=args.window,
                          nope_full_attention=args.nope_full, seed=args.seed)
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    record.update(layer_types=list(model.config.layer_types), position_encodings=list(model.config.position_encodings),
                  sliding_window=model.config.sliding_window, linear_attention_type=model.config.linear_attention_type)
    (out / "conversion.json").write_text(json.dumps(record, indent=1))
    print(layer_diagram(model.config))
    print(f"saved to {out}")
    return 0
