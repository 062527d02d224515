"""Entry point of the ``hybrid-hf`` command: one sub-command per module of this folder.

Each sub-command module exposes ``register(subparsers)`` which adds its parser and sets ``func`` to a callable
taking the parsed ``argparse.Namespace`` and returning an exit code; adding a sub-command is adding its module name
to ``SUBCOMMAND_MODULES``. Option checks live in ``validation.py`` (argparse ``type=`` functions).

User errors (bad options, missing files, invalid configs) print one line, ``hybrid-hf CMD: error: MESSAGE``, and
exit 2; set ``HYBRID_HF_TRACEBACK=1`` to see the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .validation import ArgumentParser, CLIError

# Sub-command modules, in the order `--help` lists them.
SUBCOMMAND_MODULES = ("init", "train", "eval", "analyze", "card", "push", "convert", "export")

# Errors that mean "the input is wrong" rather than "the code is wrong": ValueError is what every hybrid_hf and
# transformers check raises for bad values (HybridConfig, read_documents, the checkpoint/config mismatch check),
# OSError covers missing files and unloadable model or tokenizer folders.
USER_ERRORS = (CLIError, ValueError, OSError)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="hybrid-hf",
        description="Build, train, evaluate, analyse and publish hybrid_hf models.",
        epilog="Errors in the input are reported as one line, 'hybrid-hf COMMAND: error: ...', with exit status 2; "
        "set HYBRID_HF_TRACEBACK=1 to see the traceback instead.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(f"hybrid_hf.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"hybrid_hf.cli.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as err:
        if os.environ.get("HYBRID_HF_TRACEBACK"):
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"hybrid-hf {args.command}: error: {message}", file=sys.stderr)
        return getattr(err, "exit_code", 2)


if __name__ == "__main__":
    sys.exit(main())
