"""``hybrid-hf push``: prepare a Hub-ready checkpoint folder and upload it with huggingface_hub."""

from __future__ import annotations

import argparse

from . import validation as check
from .card import add_card_arguments, card_kwargs

EXAMPLES = """examples:
  hybrid-hf push runs/tiny-pt/final me/tiny-swa128 --private
  hybrid-hf push runs/s1/final me/s1-swa128 --revision step-10000 --commit-message "10k steps" \\
      --eval-results runs/s1/eval.json --training-data @data_card.md
  hybrid-hf push runs/s1/final me/s1-swa128 --prepare-only --output-dir hub_ready/   # no network

The folder gets model.safetensors, config.json with auto_map, the remote-code modelling files,
generation_config.json, the tokenizer and a README.md model card. The token comes from --token, else HF_TOKEN or
the one saved by `hf auth login`. With HF_HUB_OFFLINE=1 or no network the command stops with a clear message and
the prepared folder (kept when --output-dir is given) can be pushed later.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "push",
        help="prepare a Hub checkpoint folder (weights, remote code, card) and upload it",
        description="Prepare a self-contained checkpoint folder from MODEL_DIR and upload it to the Hugging Face "
        "Hub repository REPO_ID (created if missing) with huggingface_hub.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL_DIR", type=check.model_folder, help="saved model folder (e.g. OUTPUT_DIR/final of `train`)")
    p.add_argument("repo_id", metavar="REPO_ID", type=check.hub_repo_id, help="Hub repository, e.g. me/my-hybrid")
    g = p.add_argument_group("upload")
    g.add_argument("--private", action="store_true", help="create the repository as private")
    g.add_argument("--revision", metavar="BRANCH", help="upload to this branch (created if missing)")
    g.add_argument("--commit-message", help="commit message (default: 'Upload REPO_ID (hybrid_hf)')")
    g.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing directly")
    g.add_argument("--token", help="Hub token (default: HF_TOKEN or the saved login)")
    g.add_argument("--output-dir", type=check.output_folder, help="keep the prepared folder here (default: a temporary folder)")
    g.add_argument("--prepare-only", action="store_true", help="only prepare --output-dir; no network access")
    g.add_argument("--overwrite", action="store_true", help="allow a non-empty --output-dir")
    add_card_arguments(p, repo_id_option=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..hub import HubError, prepare_checkpoint, publish

    kwargs = card_kwargs(args)
    if args.prepare_only:
        if not args.output_dir:
            raise check.CLIError("--prepare-only needs --output-dir (the folder to prepare)")
        folder = prepare_checkpoint(args.model, args.output_dir, overwrite=args.overwrite, **kwargs)
        print(f"prepared {folder}; upload it with `hybrid-hf push {args.model} {args.repo_id}`")
        return 0
    kwargs.pop("repo_id")
    try:
        url = publish(
            args.model,
            args.repo_id,
            output_dir=args.output_dir,
            token=args.token,
            private=args.private,
            revision=args.revision,
            commit_message=args.commit_message,
            create_pr=args.create_pr,
            overwrite=args.overwrite,
            **kwargs,
        )
    except HubError as err:  # the input was fine; the Hub could not be reached or refused
        raise check.CLIError(str(err), exit_code=1) from err
    print(f"uploaded: {url}")
    return 0
