"""Checks shared by every ``hybrid-hf`` sub-command: argparse ``type=`` functions and the user-error class.

A ``type=`` function turns the option's text into its value or raises ``argparse.ArgumentTypeError``; argparse then
prints ``hybrid-hf CMD: error: argument --OPTION: MESSAGE`` (one line, see ``ArgumentParser.error``) and exits 2.
Checks that need more than one option or loaded data raise ``CLIError``, which ``main`` prints the same way.
Path checks return the text unchanged (a ``str``, as argparse would without them).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import inspect
import json
import math
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any


class CLIError(Exception):
    """A user error: ``main`` prints ``hybrid-hf CMD: error: MESSAGE`` without a traceback and exits ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (argparse's default repeats the whole usage text before the message)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


# ------------------------------------------------------------------------------------------------ numbers
def _bad(text: str, allowed: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(f"invalid value {text!r}; allowed: {allowed}")


def int_range(low: int | None = None, high: int | None = None, *, special: dict[int, str] | None = None,
              allowed: str | None = None) -> Callable[[str], int]:
    """An integer in ``[low, high]`` (either bound optional), or one of ``special`` (value -> meaning)."""
    special = special or {}
    if allowed is None:
        span = ("an integer" if low is None and high is None else f"an integer <= {high}" if low is None else
                f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]")
        span = {"an integer >= 1": "a positive integer", "an integer >= 0": "a non-negative integer"}.get(span, span)
        allowed = " or ".join([*(f"{k} ({v})" for k, v in special.items()), span])

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise _bad(text, allowed) from None
        if value in special:
            return value
        if (low is not None and value < low) or (high is not None and value > high):
            raise _bad(text, allowed)
        return value

    parse.__name__ = "integer"
    return parse


def float_range(low: float | None = None, high: float | None = None, *, low_open: bool = False,
                high_open: bool = False) -> Callable[[str], float]:
    """A finite number in the interval from ``low`` to ``high`` (open or closed at each end, either optional)."""
    if low is not None and high is not None:
        allowed = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        allowed = {(0, True): "a positive number", (0, False): "a non-negative number"}.get(
            (low, low_open), f"a number {'>' if low_open else '>='} {low:g}")
    else:
        allowed = "a finite number"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise _bad(text, allowed) from None
        if not math.isfinite(value):
            raise _bad(text, allowed)
        if low is not None and (value < low or (low_open and value == low)):
            raise _bad(text, allowed)
        if high is not None and (value > high or (high_open and value == high)):
            raise _bad(text, allowed)
        return value

    parse.__name__ = "number"
    return parse


positive_int = int_range(1)
non_negative_int = int_range(0)
seed = int_range(0, 2**32 - 1)  # numpy's seed range (Trainer seeds numpy too)
block_size = int_range(2, allowed="an integer >= 2 (tokens per row; the loss needs two)")
max_steps = int_range(1, special={-1: "train for --epochs"})
positive_float = float_range(0, low_open=True)
non_negative_float = float_range(0)
fraction = float_range(0, 1, high_open=True)  # dropout, held-out share
unit_interval = float_range(0, 1)  # depths, scores


# ------------------------------------------------------------------------------------------------ paths
def existing_file(text: str) -> str:
    """A file that exists."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is {'a folder' if path.is_dir() else 'not an existing file'}")
    return text


def existing_folder(text: str) -> str:
    """A folder that exists."""
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is {'a file' if path.exists() else 'not an existing folder'}")
    return text


def model_folder(text: str) -> str:
    """A saved model folder (one holding ``config.json``)."""
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not an existing model folder")
    if not (path / "config.json").is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is not a model folder (no config.json)")
    return text


def model_source(text: str) -> str:
    """A saved model folder, or a Hub model id (``namespace/name``) when no local path of that name exists; a missing
    bare name is reported as a missing folder (far more often a typo than a Hub id)."""
    if Path(text).exists() or text.count("/") != 1:
        return model_folder(text)
    return hub_repo_id(text)


def output_folder(text: str) -> str:
    """A folder to write into: absent, or an existing folder (not a file)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is an existing file, not a folder")
    return text


def output_file(text: str) -> str:
    """A file to write: absent or an existing file (not a folder)."""
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; expected a file name")
    return text


def folder_or_hub_id(text: str) -> str:
    """An existing folder, or (when no such path exists) a valid Hub repository id."""
    path = Path(text)
    if path.exists():
        if not path.is_dir():
            raise argparse.ArgumentTypeError(f"{text!r} is a file; expected a folder or a Hub id")
        return text
    return hub_repo_id(text)


def hub_repo_id(text: str) -> str:
    """A Hugging Face Hub repository id (``name`` or ``namespace/name``), checked offline."""
    from ..hub import check_repo_id

    try:
        return check_repo_id(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def text_or_file(text: str) -> str:
    """Literal text, or ``@FILE`` for the content of a file."""
    if not text.startswith("@"):
        return text
    path = Path(text[1:])
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text!r}: no such file {text[1:]!r} (TEXT or @FILE)")
    return path.read_text(encoding="utf-8")


def name_list(text: str) -> list[str]:
    """Comma-separated names, none empty."""
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise _bad(text, "comma-separated names, none empty (e.g. q_proj,v_proj)")
    return names


def index_list(text: str) -> list[int]:
    """Comma-separated non-negative integers (layer indices)."""
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() for p in parts):
        raise _bad(text, "comma-separated non-negative integers (e.g. 2,4)")
    return [int(p) for p in parts]


def torch_device(text: str) -> str:
    """A torch device string whose device type is usable here."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise _bad(text, "a torch device such as cpu, cuda, cuda:1, mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available on this machine (use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return text


# ------------------------------------------------------------------------------------------------ config overrides
def _config_fields() -> dict[str, Any]:
    """Keyword arguments HybridConfig accepts -> their type hint (``Any`` where it cannot be resolved)."""
    from transformers import PreTrainedConfig

    from ..modeling import HybridConfig

    fields: dict[str, Any] = {}
    for cls in (PreTrainedConfig, HybridConfig):  # HybridConfig's own hints win
        try:
            hints = typing.get_type_hints(cls.__init__)
        except Exception:  # noqa: BLE001 - a forward reference transformers never resolves (e.g. torch.dtype)
            hints = {}
        for name, param in inspect.signature(cls.__init__).parameters.items():
            if name != "self" and param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
                fields[name] = hints.get(name, Any)
    for internal in ("transformers_version", "architectures"):
        fields.pop(internal, None)
    return fields


def _literal(text: str) -> Any:
    """JSON, else a Python literal (``True``, ``None``, ``['a', 'b']``), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def _kinds(hint: Any) -> set[type] | None:
    """The plain types a hint allows (``None``: anything)."""
    if hint is Any:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        out: set[type] = set()
        for arg in typing.get_args(hint):
            sub = _kinds(arg)
            if sub is None:
                return None
            out |= sub
        return out
    if origin is typing.Literal:
        return {type(v) for v in typing.get_args(hint)}
    if hint is type(None):
        return {type(None)}
    base = origin or hint
    return {base} if isinstance(base, type) else None


_KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
               dict: "a JSON object", type(None): "null", tuple: "a list"}


def _fits(value: Any, kinds: set[type]) -> bool:
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, int) and float in kinds:
        return True
    return any(isinstance(value, k) for k in kinds if k is not bool)


def config_override(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` for a HybridConfig field: VALUE is JSON or a Python literal (``true``/``True``,
    ``null``/``None``, ``[1, 2]``), else a plain string, and must have the field's type."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    fields = _config_fields()
    if key not in fields:
        close = difflib.get_close_matches(key, fields, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise argparse.ArgumentTypeError(
            f"unknown HybridConfig field {key!r}{hint} (fields: {', '.join(sorted(fields))})")
    value = _literal(raw)
    kinds = _kinds(fields[key])
    if kinds is None or _fits(value, kinds):
        return key, value
    if str in kinds:  # e.g. hidden_act=123 is meant as text
        return key, raw
    wanted = " or ".join(dict.fromkeys(_KIND_NAMES.get(k, k.__name__) for k in sorted(kinds, key=str)))
    raise argparse.ArgumentTypeError(f"{key}={raw!r}: expected {wanted} (VALUE is JSON or a Python literal)")


# ------------------------------------------------------------------------------------------------ data
def load_documents(path: str | Path, text_field: str, option: str) -> list[str]:
    """Documents of a ``--data``-like option (``hybrid_hf.data.read_documents``); none at all is an error."""
    from ..data import read_documents

    try:
        docs = read_documents(path, text_field)
    except ValueError as err:
        raise CLIError(f"{option}: {str(err).removeprefix('read_documents: ')}") from err
    if not docs:
        what = f"no non-empty {text_field!r} fields" if Path(path).suffix == ".jsonl" else "no text"
        raise CLIError(f"{option} {str(path)!r} holds no documents ({what})")
    return docs


def check_block_size(value: int, config: Any, option: str = "--block-size") -> None:
    """Rows longer than the model's context would run RoPE and caches past what the config supports."""
    limit = getattr(config, "max_position_embeddings", None)
    if isinstance(limit, int) and value > limit:
        raise CLIError(f"{option} {value} exceeds the model's max_position_embeddings={limit}; allowed: 2..{limit}")


def print_json_result(result: dict, output: str | None) -> int:
    """Print a command's JSON result and, with ``--output``, also write it there; returns the exit status 0."""
    import json
    from pathlib import Path

    text = json.dumps(result, indent=1)
    print(text)
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(text + "\n")
    return 0
