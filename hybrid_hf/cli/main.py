"""Entry point of the ``hybrid-hf`` command: one sub-command per module of this folder.

Each sub-command module exposes ``register(subparsers)`` which adds its parser and sets ``func`` to a callable
taking the parsed ``argparse.Namespace`` and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Sub-command modules, in the order `--help` lists them.
SUBCOMMAND_MODULES = ("init", "train", "eval", "analyze", "card", "push", "convert")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hybrid-hf",
        description="Build, train, evaluate, analyse and publish hybrid_hf models.",
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
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
