"""Publish a trained model to the Hugging Face Hub: one call prepares the folder and uploads it.

    python examples/push_to_hub.py runs/pretrain-tiny/final me/tiny-swa128-nope --private
    python examples/push_to_hub.py runs/pretrain-tiny/final me/tiny-swa128-nope --prepare-only   # no network

The folder (kept in --output-dir) holds safetensors weights, config.json with auto_map, the remote-code modelling
files, generation_config.json, the tokenizer and a model card with the layer-pattern diagram, per-layer RoPE/NoPE and
window, parameter counts, training data, evaluation table and the paper's citation. The token comes from HF_TOKEN or
`hf auth login`. Offline (HF_HUB_OFFLINE=1 or no network) the upload stops with a clear message, exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hybrid_hf.hub import HubError, prepare_checkpoint, publish


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="saved model folder (with its tokenizer)")
    p.add_argument("repo_id", help="Hub repository, e.g. me/tiny-swa128-nope")
    p.add_argument("--output-dir", default="runs/hub-ready", help="prepared folder (default: runs/hub-ready)")
    p.add_argument("--private", action="store_true", help="create a private repository")
    p.add_argument("--revision", help="branch to upload to")
    p.add_argument("--prepare-only", action="store_true", help="prepare the folder and stop (no network)")
    args = p.parse_args(argv)

    # Metrics written by examples/pretrain_tiny.py, if present, become the card's evaluation table.
    results_file = Path(args.model).parent / "pretrain_results.json"
    evals = None
    if results_file.exists():
        r = json.loads(results_file.read_text())
        evals = {"held-out loss (before training)": r["eval_before"]["loss"],
                 "held-out loss": r["eval_after"]["loss"], "held-out perplexity": r["eval_after"]["perplexity"]}
    card = dict(
        description="A tiny demonstration model trained on CPU with the hybrid_hf examples.",
        training_data="Offline English text installed on the training machine (hybrid_hf.data.build_corpus).",
        eval_results=evals,
    )
    if args.prepare_only:
        folder = prepare_checkpoint(args.model, args.output_dir, repo_id=args.repo_id, overwrite=True, **card)
        print(f"prepared {folder}")
        return 0
    try:
        url = publish(args.model, args.repo_id, output_dir=args.output_dir, private=args.private,
                      revision=args.revision, overwrite=True, **card)
    except HubError as err:
        print(f"upload failed: {err}", file=sys.stderr)
        return 1
    print(f"uploaded: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
