"""``hybrid-hf card``: render the model card (README.md) of a model folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from . import validation as check

EXAMPLES = """examples:
  hybrid-hf card runs/tiny-pt/final
  hybrid-hf card runs/s1/final --repo-id me/s1-swa128 --training-data @data_card.md \\
      --eval-results runs/s1/eval.json --dataset allenai/c4 --output card.md

--eval-results takes a JSON file: a flat {metric: value} object (e.g. the output of `hybrid-hf eval`), an object of
tables {title: {metric: value}}, or a list of row objects.
"""


def add_card_arguments(p: argparse.ArgumentParser, repo_id_option: bool = True) -> None:
    """Model-card options shared by `card` and `push` (which takes the repository id as an argument instead)."""
    g = p.add_argument_group("model card")
    if repo_id_option:
        g.add_argument("--repo-id", type=check.hub_repo_id, help="Hub id shown in the usage snippet (e.g. me/my-model)")
    g.add_argument("--name", help="card title (default: last part of --repo-id)")
    g.add_argument("--description", help="text under the title")
    g.add_argument("--training-data", metavar="TEXT", type=check.text_or_file, help="training-data section; @FILE reads it from a file")
    g.add_argument("--eval-results", metavar="JSON", type=check.existing_file, help="JSON file with evaluation tables")
    g.add_argument("--dataset", action="append", default=[], type=check.hub_repo_id, help="Hub dataset id for the card metadata (repeatable)")
    g.add_argument("--license", default="apache-2.0", help="license id for the card metadata (default: apache-2.0)")
    g.add_argument("--base-model", type=check.hub_repo_id, help="Hub id of the model this one was fine-tuned from")
    g.add_argument("--template", type=check.existing_file, help="card template file (default: model_cards/hybrid_hf.md)")


def card_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    from ..hub import load_eval_results

    return {
        "repo_id": args.repo_id,
        "model_name": args.name,
        "description": args.description,
        "training_data": args.training_data,
        "eval_results": load_eval_results(args.eval_results) if args.eval_results else None,
        "datasets": args.dataset,
        "license": args.license,
        "base_model": args.base_model,
        "template": args.template,
    }


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "card",
        help="render the model card (layer diagram, parameters, evals, citation)",
        description="Render MODEL_DIR's model card from the template in model_cards/: layer pattern diagram, "
        "per-layer type, window and RoPE/NoPE, parameter counts, training data, evaluation tables and the paper's "
        "citation. Only the config is read (weights are not loaded).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL_DIR", type=check.model_folder, help="model folder (config.json is enough)")
    p.add_argument("--output", metavar="FILE", type=check.output_file, help="where to write the card (default: MODEL_DIR/README.md; - prints it)")
    add_card_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from transformers import AutoConfig

    from ..hub import render_model_card

    folder = Path(args.model)
    config = AutoConfig.from_pretrained(folder)
    has_tokenizer = any((folder / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
    card = render_model_card(config, has_tokenizer=has_tokenizer, **card_kwargs(args))
    if args.output == "-":
        print(card)
        return 0
    target = Path(args.output) if args.output else folder / "README.md"
    target.write_text(card, encoding="utf-8")
    print(f"model card written to {target}")
    return 0
