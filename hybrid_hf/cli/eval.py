"""``hybrid-hf eval``: token-weighted loss and perplexity of a model folder on a text/jsonl file."""

from __future__ import annotations

import argparse

from . import validation as check

EXAMPLES = """examples:
  hybrid-hf eval runs/tiny-pt/final --data held_out.txt
  hybrid-hf eval runs/tiny-pt/final --data val.jsonl --block-size 2048 --output runs/tiny-pt/eval.json

The JSON printed (and written to --output) has loss (mean next-token cross-entropy over all scored tokens, nats),
perplexity, tokens and documents; `hybrid-hf card --eval-results` renders it as a table.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="loss and perplexity on a text/jsonl file",
        description="Evaluate MODEL_DIR's next-token loss and perplexity on a text or jsonl file. Documents are "
        "packed into rows of --block-size tokens exactly as `hybrid-hf train` does (positions restart per document).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL_DIR", type=check.model_source, help="model folder with config, weights and tokenizer")
    p.add_argument("--data", required=True, metavar="FILE", type=check.existing_file, help="text (.txt) or jsonl (.jsonl) file")
    p.add_argument("--text-field", default="text", help="field of jsonl rows holding the text (default: text)")
    p.add_argument("--block-size", type=check.block_size, default=512, help="tokens per packed row (default: 512)")
    p.add_argument("--batch-size", type=check.positive_int, default=8, help="rows per forward pass (default: 8)")
    p.add_argument("--max-documents", type=check.positive_int, help="evaluate only the first N documents")
    p.add_argument("--no-reset-positions", action="store_true",
                   help="pack as contiguous text (positions do not restart at documents)")
    p.add_argument("--device", type=check.torch_device, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="weights dtype (default: float32)")
    p.add_argument("--output", metavar="FILE", type=check.output_file, help="also write the results as JSON here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..training import causal_lm_dataset, evaluate_causal_lm

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    docs = check.load_documents(args.data, args.text_field, "--data")[: args.max_documents]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).to(device)
    check.check_block_size(args.block_size, model.config)
    dataset = causal_lm_dataset(tokenizer, docs, args.block_size, reset_positions=not args.no_reset_positions)
    results = evaluate_causal_lm(model, dataset, args.batch_size)
    results.update({"documents": len(docs), "block_size": args.block_size, "data": str(args.data)})
    return check.print_json_result(results, args.output)
