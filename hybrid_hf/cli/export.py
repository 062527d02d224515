"""``hybrid-hf export``: write a saved model as a checkpoint of a stock transformers architecture."""

from __future__ import annotations

import argparse
import sys

from . import validation as check

EXAMPLES = """examples:
  hybrid-hf export runs/swa128-nope/final --list                 # which targets express this model, and why not
  hybrid-hf export runs/swa128-nope/final --to smollm3 --out exports/smollm3
  hybrid-hf export runs/mamba2/final --to granitemoehybrid --out exports/granite --overwrite

Targets: smollm3 (SWA/full, per-layer RoPE/NoPE, no QK-norm), qwen3 (SWA/full, RoPE everywhere, QK-norm),
llama (all full, RoPE, no QK-norm), granitemoehybrid (Mamba-2/full), qwen3_5 (Gated DeltaNet/full, QK-norm, RoPE).
A model a target cannot express exactly is refused with the blocking fields named (exit 2). The written folder loads
with plain transformers (no hybrid_hf, no remote code); it is checked against the source (fp32 logits, cached
greedy generation) before it appears (exit 1 if that fails). Serving caveats are printed and written to its README.
"""


DTYPES = ("auto", "float32", "bfloat16", "float16")

def register(subparsers: argparse._SubParsersAction) -> None:
    from ..export import TARGETS

    p = subparsers.add_parser(
        "export",
        help="export to a stock transformers architecture (SmolLM3, Qwen3, Llama, GraniteMoeHybrid, Qwen3.5)",
        description="Write the hybrid_hf model in FOLDER as an exactly equivalent checkpoint of a stock transformers "
        "architecture, for serving engines such as vLLM and SGLang.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="FOLDER", type=check.model_folder, help="saved hybrid_hf model folder (e.g. OUTPUT_DIR/final of `train`)")
    p.add_argument("--to", choices=TARGETS, metavar="ARCH", help=f"export target, one of: {', '.join(TARGETS)}")
    p.add_argument("--out", metavar="DIR", type=check.output_folder, help="folder to write the exported checkpoint to")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    p.add_argument("--dtype", choices=DTYPES, default="auto",
                   help="stored weight dtype (default auto: the source's; narrowing fails verification)")
    p.add_argument("--list", action="store_true", help="list every target with whether it expresses the model")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoConfig

    from ..export import ExportVerificationError, export_model, export_targets, serving_caveats

    if args.list:
        try:
            config = AutoConfig.from_pretrained(args.model)
            targets = export_targets(config)
        except (OSError, ValueError, AttributeError) as err:
            print(f"hybrid-hf export: {args.model}: {err}", file=sys.stderr)
            return 2
        for t in targets:
            print(f"{t.target:18s} {t.architecture:30s} {'yes' if t.supported else 'no'}")
            for line in t.reasons or t.caveats:
                print(f"    {'-' if t.reasons else 'caveat:'} {line}")
        return 0
    if not args.to or not args.out:
        print("hybrid-hf export: --to ARCH and --out DIR are required (or --list)", file=sys.stderr)
        return 2
    try:
        dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
        out = export_model(args.model, args.to, args.out, overwrite=args.overwrite, dtype=dtype)
    except ValueError as err:
        print(f"hybrid-hf {err}", file=sys.stderr)
        return 2
    except ExportVerificationError as err:
        print(f"hybrid-hf {err}", file=sys.stderr)
        return 1
    print(f"exported {args.model} -> {out} ({args.to}); verified against the source")
    for caveat in serving_caveats(AutoConfig.from_pretrained(args.model), args.to):
        print(f"warning: {caveat}")
    return 0
