"""``hybrid-hf analyze``: the long-context suite and the paper's mechanism analyses on a model folder."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from . import validation as check

EXAMPLES = """examples:
  hybrid-hf analyze niah runs/s1 --lengths 1024 2048 4096 --depths 0 0.25 0.5 0.75 1 --out runs/s1/niah
  hybrid-hf analyze retrieval-heads runs/s1 --length 2048 --top-k 4
  hybrid-hf analyze trace runs/s1/checkpoint-100 runs/s1/checkpoint-200 --steps 100 200 --plot trace.png
  hybrid-hf analyze entropy runs/s1 --length 2048
  hybrid-hf analyze weight-distance runs/s1/checkpoint-200 --reference runs/s1/final
  hybrid-hf analyze probe runs/s1 --samples 200 --classes 8 --length 1024
  hybrid-hf analyze gradient-influence runs/s1 --length 2048 --distances 1 16 128 1024
  hybrid-hf analyze cap runs/s1 --full-window 2048 --sinks 4 --lengths 4096
  hybrid-hf analyze scaling-fit losses.tsv --holdout-n 104427264

Every sub-command prints JSON and, with --output, writes it to a file.
"""


def _common(p: argparse.ArgumentParser, model: bool = True) -> None:
    if model:
        p.add_argument("model", metavar="MODEL_DIR", type=check.model_source,
                       help="model folder (weights, config, tokenizer)")
        p.add_argument("--tokenizer", type=check.existing_folder, help="tokenizer folder (default: MODEL_DIR)")
        p.add_argument("--device", type=check.torch_device, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--seed", type=check.seed, default=0, help="seed of the generated samples (default: 0)")
    p.add_argument("--output", metavar="FILE", type=check.output_file, help="also write the JSON result here")


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..evaluation import TASKS

    parser = subparsers.add_parser(
        "analyze", help="long-context suite and mechanism analyses",
        description="Offline long-context evaluation (passkey, NIAH variants, variable tracking) and the paper's "
        "analyses: retrieval-head scores and their emergence over checkpoints, attention entropy, Q/K weight "
        "distance, layer-wise probing, gradient influence by distance, receptive-field caps, scaling-law fits.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)

    p = sub.add_parser("niah", aliases=["longctx"], help="long-context suite: accuracy table and length x depth heatmap")
    _common(p)
    p.add_argument("--tasks", nargs="+", default=["niah_single"], choices=TASKS, metavar="TASK",
                   help=f"tasks ({', '.join(TASKS)})")
    p.add_argument("--lengths", nargs="+", type=check.positive_int, default=[1024, 2048],
                   help="context lengths in tokens")
    p.add_argument("--depths", nargs="+", type=check.unit_interval, default=[0.0, 0.25, 0.5, 0.75, 1.0],
                   help="needle depths, each in [0, 1]")
    p.add_argument("--samples", type=check.positive_int, default=4, help="samples per (task, length, depth) cell")
    p.add_argument("--haystack", choices=["repeat", "natural"], default="repeat", help="haystack text kind")
    p.add_argument("--out", default="niah", help="folder for JSON, Markdown table and heatmap PNG")
    p.set_defaults(func=_niah)

    for name, func, text in (("retrieval-heads", _heads, "per-head attention mass on the needle (paper's score); "
                              "--copy-paste adds Wu et al.'s score"),
                             ("entropy", _entropy, "normalised attention entropy of the last query positions")):
        p = sub.add_parser(name, help=text)
        _common(p)
        p.add_argument("--length", type=check.positive_int, default=1024, help="prompt length in tokens")
        p.add_argument("--samples", type=check.positive_int, default=8, help="NIAH samples to average over")
        p.add_argument("--top-k", type=check.positive_int, default=4, help="heads to report")
        if name == "retrieval-heads":
            p.add_argument("--copy-paste", action="store_true", help="also compute Wu et al.'s copy-paste score")
        p.set_defaults(func=func)

    p = sub.add_parser("trace", help="retrieval heads across checkpoints: emergence curves and first step > threshold")
    p.add_argument("checkpoints", nargs="+", metavar="CKPT_DIR", type=check.model_source,
                   help="checkpoint folders in training order")
    p.add_argument("--tokenizer", type=check.existing_folder, help="tokenizer folder (default: the last checkpoint)")
    p.add_argument("--device", type=check.torch_device, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--length", type=check.positive_int, default=1024, help="prompt length in tokens")
    p.add_argument("--samples", type=check.positive_int, default=8, help="NIAH samples to average over")
    p.add_argument("--top-k", type=check.positive_int, default=4, help="heads to report")
    p.add_argument("--threshold", type=check.unit_interval, default=0.1,
                   help="score a head must reach, in [0, 1] (default: 0.1)")
    p.add_argument("--steps", nargs="+", type=check.non_negative_int,
                   help="training step of each checkpoint (default: 0, 1, ...)")
    p.add_argument("--plot", metavar="PNG", type=check.output_file, help="also draw the emergence curves to this PNG")
    _common(p, model=False)
    p.set_defaults(func=_trace)

    p = sub.add_parser("weight-distance", help="per-head Q/K weight distance to a reference checkpoint (GQA-aware)")
    _common(p)
    p.add_argument("--reference", required=True, metavar="REF_DIR", type=check.model_source, help="reference checkpoint (e.g. the final one)")
    p.set_defaults(func=_distance)

    p = sub.add_parser("probe", help="layer-wise linear probe of the needle value from the last-token residual")
    _common(p)
    p.add_argument("--length", type=check.positive_int, default=512, help="prompt length in tokens")
    p.add_argument("--samples", type=check.int_range(2), default=200, help="probe dataset size")
    p.add_argument("--classes", type=check.int_range(2), default=8, help="distinct needle values (labels)")
    p.set_defaults(func=_probe)

    p = sub.add_parser("gradient-influence", help="E||ds/de_(T-d)|| by token distance d")
    _common(p)
    p.add_argument("--length", type=check.positive_int, default=1024, help="prompt length in tokens")
    p.add_argument("--samples", type=check.positive_int, default=4, help="samples to average over")
    p.add_argument("--distances", nargs="+", type=check.positive_int, default=[1, 8, 64, 256, 1000],
                   help="token distances d, each below --length")
    p.set_defaults(func=_gradient)

    p = sub.add_parser("cap", help="NIAH with full-attention or efficient layers capped to a window (no retraining)")
    _common(p)
    p.add_argument("--full-window", type=check.positive_int, help="cap full-attention layers to this many keys")
    p.add_argument("--efficient-window", type=check.positive_int, help="cap sliding-window layers to this many keys")
    p.add_argument("--sinks", type=check.non_negative_int, default=0,
                   help="leading tokens kept visible (attention sinks)")
    p.add_argument("--lengths", nargs="+", type=check.positive_int, default=[1024], help="context lengths in tokens")
    p.add_argument("--depths", nargs="+", type=check.unit_interval, default=[0.1, 0.5, 0.9],
                   help="needle depths, each in [0, 1]")
    p.add_argument("--samples", type=check.positive_int, default=2, help="samples per (length, depth) cell")
    p.set_defaults(func=_cap)

    p = sub.add_parser("scaling-fit", help="fit L = b N^-alpha + c D^-beta (Huber in log space), held-out R^2")
    p.add_argument("table", metavar="TSV", type=check.existing_file, help="tab-separated columns N, D, L with a header row")
    p.add_argument("--holdout-n", type=check.positive_float, help="hold out the rows with this N and report their R^2")
    p.add_argument("--log-target", action="store_true", help="fit log L (e.g. log LongPPL)")
    _common(p, model=False)
    p.set_defaults(func=_scaling)


# ------------------------------------------------------------------------------------------------ helpers
def _load(args: argparse.Namespace, path: str | None = None):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hybrid_hf  # noqa: F401  (Auto registration)

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    path = path or args.model
    model = AutoModelForCausalLM.from_pretrained(path).to(device).eval()
    tok = AutoTokenizer.from_pretrained(args.tokenizer or path)
    return model, tok


def _samples(tok, length: int, n: int, seed: int, task: str = "niah_single"):
    from ..evaluation import make_sample

    return [make_sample(task, tok, length, depth=(i + 0.5) / n, seed=seed + i) for i in range(n)]


def _emit(args: argparse.Namespace, result: dict[str, Any]) -> int:
    return check.print_json_result(result, args.output)


def _table(t) -> list[list[float | None]]:
    return [[None if v != v else round(float(v), 5) for v in row] for row in t.tolist()]


# ------------------------------------------------------------------------------------------------ commands
def _niah(args: argparse.Namespace) -> int:
    from ..data import sample_documents
    from ..evaluation import REPEATED_HAYSTACK, evaluate_samples, make_suite, save_results, summarize

    model, tok = _load(args)
    hay = REPEATED_HAYSTACK if args.haystack == "repeat" else sample_documents()
    suite = make_suite(tok, args.tasks, args.lengths, args.depths, args.samples, args.seed, hay)
    records = evaluate_samples(model, tok, suite)
    files = save_results(records, args.out)
    return _emit(args, {"summary": summarize(records), "files": {k: str(v) for k, v in files.items()}})


def _heads(args: argparse.Namespace) -> int:
    from ..analysis import copy_paste_retrieval_scores, retrieval_head_scores, top_heads

    model, tok = _load(args)
    samples = _samples(tok, args.length, args.samples, args.seed)
    scores = retrieval_head_scores(model, samples)
    out = {"scores": _table(scores), "top_heads": top_heads(scores, args.top_k)}
    if args.copy_paste:
        cp = copy_paste_retrieval_scores(model, samples)
        out.update(copy_paste=_table(cp), copy_paste_top_heads=top_heads(cp, args.top_k))
    return _emit(args, out)


def _entropy(args: argparse.Namespace) -> int:
    import torch

    from ..analysis import attention_entropy

    model, tok = _load(args)
    total = None
    for s in _samples(tok, args.length, args.samples, args.seed):
        with torch.no_grad():
            att = model(torch.tensor([s.input_ids], device=model.device), output_attentions=True).attentions
        e = attention_entropy(att)
        total = e if total is None else total + e
    return _emit(args, {"entropy": _table(total / args.samples)})


def _trace(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hybrid_hf  # noqa: F401

    from ..analysis import trace_heads

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tok = AutoTokenizer.from_pretrained(args.tokenizer or args.checkpoints[-1])
    samples = _samples(tok, args.length, args.samples, args.seed)
    steps = args.steps or list(range(len(args.checkpoints)))
    if len(steps) != len(args.checkpoints):
        raise check.CLIError(f"--steps has {len(steps)} values for {len(args.checkpoints)} checkpoints; "
                             "allowed: one step per CKPT_DIR")
    ckpts = list(zip(steps, args.checkpoints))
    trace = trace_heads(lambda p: AutoModelForCausalLM.from_pretrained(p).to(device).eval(), ckpts, samples,
                        k=args.top_k, threshold=args.threshold)
    trace["checkpoints"] = args.checkpoints
    if args.plot:
        _plot_trace(trace, args.plot)
    return _emit(args, trace)


def _plot_trace(trace: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in trace["curves"].items():
        ax.plot(trace["steps"], values, marker="o", label=name)
    ax.axhline(trace["threshold"], color="grey", ls="--", lw=0.8)
    ax.set_xlabel("training step")
    ax.set_ylabel("retrieval score (attention mass on the needle)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _distance(args: argparse.Namespace) -> int:
    from ..analysis import qk_weight_distance

    model, _ = _load(args)
    reference, _ = _load(args, args.reference)
    return _emit(args, {"layers": qk_weight_distance(model, reference)})


def _probe(args: argparse.Namespace) -> int:
    import random

    from ..analysis import last_token_features, layerwise_probe
    from ..evaluation.tasks import make_sample

    model, tok = _load(args)
    values = [str(31415920 + i) for i in range(args.classes)]  # the paper's "hard" label set
    samples, labels = [], []
    rng = random.Random(args.seed)
    for i in range(args.samples):
        label = i % args.classes
        s = make_sample("niah_single", tok, args.length, depth=rng.uniform(0.25, 0.75), seed=args.seed + i)
        text = tok.decode(s.input_ids).replace(s.answers[0], values[label])
        s.input_ids = tok(text, add_special_tokens=False)["input_ids"]
        samples.append(s)
        labels.append(label)
    feats = last_token_features(model, samples)
    return _emit(args, {"accuracy_per_layer": layerwise_probe(feats, labels, seed=args.seed)})


def _gradient(args: argparse.Namespace) -> int:
    import torch

    from ..analysis import gradient_influence

    too_far = [d for d in args.distances if d >= args.length]
    if too_far:
        raise check.CLIError(f"--distances {' '.join(map(str, too_far))}: allowed: distances below --length "
                             f"{args.length}")
    model, tok = _load(args)
    ids = torch.tensor([s.input_ids for s in _samples(tok, args.length, args.samples, args.seed)], device=model.device)
    return _emit(args, {"influence": gradient_influence(model, ids, args.distances)})


def _cap(args: argparse.Namespace) -> int:
    from ..analysis import receptive_field_cap
    from ..evaluation import evaluate_samples, make_suite, summarize

    if args.full_window is None and args.efficient_window is None:
        raise check.CLIError("nothing to cap: give --full-window and/or --efficient-window")
    model, tok = _load(args)
    suite = make_suite(tok, ["niah_single"], args.lengths, args.depths, args.samples, args.seed)
    base = summarize(evaluate_samples(model, tok, suite))
    with receptive_field_cap(model, args.full_window, args.efficient_window, args.sinks):
        capped = summarize(evaluate_samples(model, tok, suite))
    return _emit(args, {"uncapped": base, "capped": capped, "full_window": args.full_window,
                        "efficient_window": args.efficient_window, "sinks": args.sinks})


def _scaling(args: argparse.Namespace) -> int:
    from ..analysis import fit_scaling_law

    n, d, loss = _read_table(args.table)
    if args.holdout_n is not None and args.holdout_n not in n:
        raise check.CLIError(f"--holdout-n {args.holdout_n:g} matches no N in {str(args.table)!r}; allowed: "
                             f"{', '.join(f'{v:g}' for v in sorted(set(n)))}")
    if sum(v != args.holdout_n for v in n) < 4:
        raise check.CLIError(f"{str(args.table)!r}: the fit needs at least 4 rows besides the held-out ones")
    return _emit(args, fit_scaling_law(n, d, loss, holdout_n=args.holdout_n, log_target=args.log_target))


def _read_table(path: str) -> tuple[list[float], list[float], list[float]]:
    """Columns N, D, L of a tab-separated file with a header row; every cell must be a positive number."""
    columns: tuple[list[float], list[float], list[float]] = ([], [], [])
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines()[1:], 2):
        if not line.strip():
            continue
        cells = line.split("\t")
        try:
            values = [float(c) for c in cells[:3]]
        except ValueError:
            values = []
        if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
            raise check.CLIError(f"TSV {str(path)!r} line {lineno}: expected three positive numbers N, D, L "
                                 f"separated by tabs, got {line!r}")
        for column, value in zip(columns, values):
            column.append(value)
    return columns
