"""``hybrid-hf init``: create a model folder (config, randomly initialised weights, tokenizer) from a preset."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import validation as check

EXAMPLES = """examples:
  hybrid-hf init runs/tiny --preset swa128 --size tiny --vocab-size 1024
  hybrid-hf init runs/s1-nope --preset swa128-nope --size s1 --tokenizer-corpus corpus.jsonl
  hybrid-hf init runs/custom --preset full --size s2 --tokenizer ./my_tokenizer --set max_position_embeddings=4096
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..data.tokenizer import SPECIAL_TOKENS
    from ..modeling import PRESETS, SIZES

    p = subparsers.add_parser(
        "init",
        help="create a model folder from a preset (config, random weights, tokenizer)",
        description=(
            "Create OUTPUT_DIR holding a randomly initialised hybrid_hf model of one of the paper's presets, saved "
            "with safetensors and Hub remote code, plus a tokenizer: an existing one (--tokenizer) or a byte-level "
            "BPE trained offline on --tokenizer-corpus (default: hybrid_hf.data.build_corpus()). The config's "
            "vocabulary and special-token ids are taken from the tokenizer."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("output_dir", metavar="OUTPUT_DIR", type=check.output_folder,
                   help="folder to create (must be empty or absent)")
    p.add_argument("--preset", default="swa128", choices=sorted(PRESETS), help="architecture preset (default: swa128)")
    p.add_argument("--size", default="s1", choices=list(SIZES), help="model size; s1..s5 are the paper's (default: s1)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--tokenizer", metavar="PATH", type=check.folder_or_hub_id,
                        help="existing tokenizer folder (or Hub id) to use instead of training one")
    source.add_argument("--tokenizer-corpus", metavar="FILE", type=check.existing_file,
                        help="text/jsonl file to train the BPE tokenizer on "
                        "(default: offline corpus from hybrid_hf.data.build_corpus)")
    p.add_argument("--vocab-size", type=check.int_range(256 + len(SPECIAL_TOKENS)), default=8192,
                   help="BPE vocabulary size when training one (default: 8192)")
    p.add_argument("--text-field", default="text", help="field of jsonl rows holding the text (default: text)")
    p.add_argument("--max-position-embeddings", type=check.positive_int, help="context length recorded in the config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   type=check.config_override,
                   help="any HybridConfig field (repeatable); VALUE is JSON or a Python literal (true/True, "
                   "null/None, [..]), else a string, and must have the field's type, "
                   "e.g. --set sliding_window=64 --set use_qk_norm=true")
    p.add_argument("--seed", type=check.seed, default=0, help="seed of the random initialisation (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty OUTPUT_DIR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoTokenizer

    from ..data import build_corpus, train_tokenizer
    from ..hub import layer_diagram, parameter_counts
    from ..modeling import HybridConfig, HybridForCausalLM

    out = Path(args.output_dir)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise check.CLIError(f"OUTPUT_DIR {str(out)!r} is not empty (use --overwrite to write into it)")
    if args.tokenizer:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    else:
        docs = (check.load_documents(args.tokenizer_corpus, args.text_field, "--tokenizer-corpus")
                if args.tokenizer_corpus else build_corpus())
        print(f"training a {args.vocab_size}-token BPE tokenizer on {len(docs)} documents "
              f"({sum(map(len, docs)):,} characters)")
        tokenizer = train_tokenizer(docs, vocab_size=args.vocab_size)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    settings = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
                "bos_token_id": tokenizer.bos_token_id, **dict(args.overrides)}
    vocab = settings.pop("vocab_size", None)
    if vocab is None:
        vocab = -(-len(tokenizer) // 64) * 64  # round up to a multiple of 64
    elif vocab < len(tokenizer):
        raise check.CLIError(f"--set vocab_size={vocab} is smaller than the tokenizer ({len(tokenizer)} tokens); "
                             f"allowed: at least {len(tokenizer)}")
    if args.max_position_embeddings:
        settings["max_position_embeddings"] = args.max_position_embeddings
    config = HybridConfig.from_preset(args.preset, args.size, vocab_size=vocab, **settings)
    torch.manual_seed(args.seed)
    model = HybridForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    counts = parameter_counts(model)
    print(f"{args.preset} at size {args.size}: {counts['total']:,} parameters "
          f"({counts['non_embedding']:,} non-embedding), vocabulary {vocab}")
    print(layer_diagram(config))
    print(f"saved to {out}")
    return 0
