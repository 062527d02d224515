"""A clear error when a checkpoint's weights do not fit the config it is loaded with.

transformers reports such a load with a generic table (and, depending on the case, an exception or only a warning
while the tensors are silently re-initialised). ``from_pretrained_checked`` wraps ``from_pretrained``: it loads
with transformers' own machinery, then reads the loading report and raises ``CheckpointMismatchError`` naming the
tensors (checkpoint vs expected shapes) and the config field that most likely changed (``hidden_size``,
``num_key_value_heads``, ``layer_types``, ...). ``ignore_mismatched_sizes=True`` turns the error into a warning and
keeps transformers' behaviour (re-initialised tensors).

Shipped as Hub remote code: imports only the standard library and transformers.
"""

from __future__ import annotations

import logging as std_logging
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from transformers.utils import logging

logger = logging.get_logger(__name__)

# Config fields behind the head/width of the recurrent mixers (their tensors mix several of these).
_LINEAR = "linear_num_heads/linear_head_dim/linear_expand_v/linear_state_size"

# Weight name (suffix) -> the config quantity that sets each of its dimensions; first match wins.
_DIM_FIELDS: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = tuple(
    (re.compile(pattern), fields)
    for pattern, fields in (
        (r"(^|\.)(embed_tokens|lm_head)\.weight$", ("vocab_size", "hidden_size")),
        (r"(^|\.)score\.weight$", ("num_labels", "hidden_size")),
        (r"self_attn\.q_proj\.weight$", ("num_attention_heads*head_dim", "hidden_size")),
        (r"self_attn\.q_proj\.bias$", ("num_attention_heads*head_dim",)),
        (r"self_attn\.[kv]_proj\.weight$", ("num_key_value_heads*head_dim", "hidden_size")),
        (r"self_attn\.[kv]_proj\.bias$", ("num_key_value_heads*head_dim",)),
        (r"self_attn\.o_proj\.weight$", ("hidden_size", "num_attention_heads*head_dim")),
        (r"self_attn\.o_proj\.bias$", ("hidden_size",)),
        (r"self_attn\.[qk]_norm\.weight$", ("head_dim",)),
        (r"mlp\.(gate|up)_proj\.weight$", ("intermediate_size", "hidden_size")),
        (r"mlp\.down_proj\.weight$", ("hidden_size", "intermediate_size")),
        (r"linear_attn\.conv_weight$", (_LINEAR, "linear_conv_kernel_size")),
        (r"linear_attn\.(A_log|dt_bias|D)$", ("linear_num_heads",)),
        (r"linear_attn\.(o_proj|out_proj)\.weight$", ("hidden_size", _LINEAR)),
        (r"linear_attn\.\w+_proj\.weight$", (_LINEAR, "hidden_size")),
        (r"linear_attn\.", (_LINEAR,)),
        (r"(layernorm|(^|\.)norm)\.weight$", ("hidden_size",)),
    )
)
_LAYER_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+)$")
# Names inside the decoder stack (with or without the ``model.`` prefix): a missing or unexpected one means the
# config builds a different network than the one saved. A missing ``lm_head`` is a tied/untied mix-up; an unused one
# is normal (a task model loaded from a causal LM), and task heads (``score``) are left to transformers.
_BODY_KEY = re.compile(r"(^|\.)(layers\.\d+|embed_tokens|norm)\.")
_MISSING_KEY = re.compile(_BODY_KEY.pattern + r"|^lm_head\.")
_MAX_LISTED = 8


class CheckpointMismatchError(ValueError, RuntimeError):
    """The checkpoint's weights do not fit the config (a ``ValueError``; also a ``RuntimeError``, which
    transformers raises for the same problem)."""


def from_pretrained_checked(load: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call transformers' ``from_pretrained`` (``load``) and raise ``CheckpointMismatchError`` when weights had other
    shapes than the config builds, or the config builds weights the checkpoint lacks (or the reverse).

    With ``ignore_mismatched_sizes=True`` the explanation is logged as a warning instead and the model (with
    transformers' re-initialised tensors) is returned.
    """
    ignore = bool(kwargs.get("ignore_mismatched_sizes", False))
    want_info = bool(kwargs.get("output_loading_info", False))
    # Loading always completes (transformers would raise for shape mismatches only, with a generic message, and
    # only warn for missing weights); the report decides afterwards.
    held = _HeldLoadReport()
    _REPORT_LOGGER.addFilter(held)
    try:
        model, info = load(*args, **{**kwargs, "ignore_mismatched_sizes": True, "output_loading_info": True})
    except BaseException:
        held.release()
        raise
    problem = describe_loading_problems(model.config, info)
    if problem:
        source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
        message = f"{type(model).__name__}.from_pretrained({str(source)!r}): {problem}"
        if not ignore:
            held.discard()  # the error says it all; transformers' table would only add "Reinit" lines
            raise CheckpointMismatchError(message)
        held.release()
        logger.warning(message)
    else:
        held.release()
    return (model, info) if want_info else model


# transformers logs its loading table on this logger ("... LOAD REPORT from: ...") in 5.17 through 5.24; should
# that change, the table is simply printed as usual.
_REPORT_LOGGER = std_logging.getLogger("transformers.modeling_utils")


class _HeldLoadReport(std_logging.Filter):
    """Holds transformers' loading table back until it is known whether a ``CheckpointMismatchError`` replaces it."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[std_logging.LogRecord] = []

    def filter(self, record: std_logging.LogRecord) -> bool:
        if "LOAD REPORT" in record.getMessage():
            self.records.append(record)
            return False
        return True

    def discard(self) -> None:
        _REPORT_LOGGER.removeFilter(self)

    def release(self) -> None:
        _REPORT_LOGGER.removeFilter(self)
        for record in self.records:
            _REPORT_LOGGER.handle(record)


def describe_loading_problems(config: Any, info: dict[str, Any]) -> str | None:
    """Explain a transformers loading report (``output_loading_info=True``) in terms of config fields, or ``None``
    when every weight of the decoder was loaded with the shape the config builds."""
    mismatched = sorted((str(k), tuple(ckpt), tuple(model)) for k, ckpt, model in info.get("mismatched_keys") or ())
    missing = sorted(str(k) for k in info.get("missing_keys") or () if _MISSING_KEY.search(str(k)))
    unexpected = sorted(str(k) for k in info.get("unexpected_keys") or () if _BODY_KEY.search(str(k)))
    if not (mismatched or missing or unexpected):
        return None
    causes = _shape_causes(config, mismatched) + _key_causes(config, missing, unexpected)
    counts = [f"{len(mismatched)} tensor(s) have other shapes" if mismatched else "",
              f"{len(missing)} weight(s) the config builds are missing" if missing else "",
              f"{len(unexpected)} checkpoint weight(s) are not used" if unexpected else ""]
    parts = [
        f"the checkpoint's weights do not fit the config: {', '.join(c for c in counts if c)}.",
        "Likely cause: " + ("; ".join(causes) if causes else "a config field that changes the network") + ".",
    ]
    if mismatched:
        parts.append("Tensors (checkpoint shape vs shape the config builds): " + _listing(
            (key, f"{list(ckpt)} vs {list(model)}") for key, ckpt, model in mismatched))
    if missing:
        parts.append("Missing from the checkpoint: " + _listing((key, "") for key in missing))
    if unexpected:
        parts.append("Not used by the config: " + _listing((key, "") for key in unexpected))
    parts.append("Load with the config the weights were saved with (or correct config.json); "
                 "ignore_mismatched_sizes=True loads anyway with those weights re-initialised or dropped.")
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------------ causes
def _config_value(config: Any, quantity: str) -> tuple[str, int | None]:
    """``"num_attention_heads*head_dim"`` -> (``"2 * 16 = 32"``, 32) from the config; plain fields as they are."""
    if "/" in quantity:
        return "", None
    names = quantity.split("*")
    values = [getattr(config, n, None) for n in names]
    if not all(isinstance(v, int) for v in values):
        return "", None
    total = 1
    for v in values:
        total *= v
    shown = " * ".join(map(str, values)) + (f" = {total}" if len(values) > 1 else "")
    return shown, total


def _shape_causes(config: Any, mismatched: list[tuple[str, tuple, tuple]]) -> list[str]:
    votes: Counter[tuple[str, int, int]] = Counter()
    unexplained = False
    for key, ckpt, model in mismatched:
        fields = next((f for pattern, f in _DIM_FIELDS if pattern.search(key)), None)
        if fields is None or len(ckpt) != len(model):
            unexplained = True
            continue
        for dim, (a, b) in enumerate(zip(ckpt, model)):
            if a != b:
                votes[(fields[min(dim, len(fields) - 1)], b, a)] += 1
    causes = []
    for (quantity, want, found), count in votes.most_common():
        label = quantity.replace("*", " * ")
        shown, _ = _config_value(config, quantity)
        config_part = f"the config gives {shown}" if shown else f"the config builds {want}"
        causes.append(f"{label} ({config_part}, the checkpoint has {found}; {count} tensor(s))")
    if unexplained and not causes:
        causes.append("a shape field of the config (hidden_size, intermediate_size, head counts, head_dim, vocab_size)")
    return causes


def _key_causes(config: Any, missing: list[str], unexpected: list[str]) -> list[str]:
    causes: list[str] = []
    n_layers = getattr(config, "num_hidden_layers", None)
    layer_types = list(getattr(config, "layer_types", None) or [])
    by_layer: dict[int, dict[str, set[str]]] = defaultdict(lambda: {"missing": set(), "unexpected": set()})
    for kind, keys in (("missing", missing), ("unexpected", unexpected)):
        for key in keys:
            m = _LAYER_KEY.search(key)
            if m:
                by_layer[int(m.group(1))][kind].add(m.group(2))

    beyond = sorted(i for i, v in by_layer.items() if isinstance(n_layers, int) and i >= n_layers and v["unexpected"])
    if beyond:
        causes.append(f"num_hidden_layers (the config builds {n_layers} layers, the checkpoint has at least "
                      f"{beyond[-1] + 1})")
    whole_missing = sorted(i for i, v in by_layer.items() if v["missing"] and not v["unexpected"]
                           and {n.split(".")[0] for n in v["missing"]} >= {"input_layernorm", "mlp"})
    if whole_missing and whole_missing == list(range(whole_missing[0], n_layers or 0)) and whole_missing[0] > 0:
        causes.append(f"num_hidden_layers (the config builds {n_layers} layers, the checkpoint has "
                      f"{whole_missing[0]})")

    swapped: dict[str, list[int]] = defaultdict(list)
    linear_changed: set[str] = set()
    for i, v in sorted(by_layer.items()):
        lost = {n.split(".")[0] for n in v["missing"]}
        extra = {n.split(".")[0] for n in v["unexpected"]}
        if lost & {"self_attn", "linear_attn"} and extra & {"self_attn", "linear_attn"} and lost != extra:
            swapped[next(iter(extra & {"self_attn", "linear_attn"}))].append(i)
        elif "linear_attn" in lost and "linear_attn" in extra:
            linear_changed |= {n.split(".", 1)[1] for n in v["unexpected"] if n.startswith("linear_attn.")}
    for held, layers in swapped.items():
        built = sorted({layer_types[i] for i in layers if i < len(layer_types)})
        causes.append(f"layer_types (layers {', '.join(map(str, layers))} are {'/'.join(built) or 'other types'} in "
                      f"the config, the checkpoint holds {held} weights there)")
    if linear_changed:
        causes.append(f"linear_attention_type (the config builds {getattr(config, 'linear_attention_type', None)!r} "
                      f"mixers, the checkpoint's linear layers hold {', '.join(sorted(linear_changed))})")

    def names(keys: Iterable[str], pattern: str) -> bool:
        return any(re.search(pattern, k) for k in keys)

    for pattern, field, what in (
        (r"self_attn\.[qk]_norm\.", "use_qk_norm", "q_norm/k_norm weights"),
        (r"self_attn\.[qkvo]_proj\.bias$", "attention_bias", "attention biases"),
    ):
        if names(missing, pattern):
            causes.append(f"{field} (the config sets {getattr(config, field, None)}, the checkpoint has no {what})")
        elif names(unexpected, pattern):
            causes.append(f"{field} (the config sets {getattr(config, field, None)}, the checkpoint has {what})")
    if names(missing, r"^lm_head\."):
        causes.append(f"tie_word_embeddings (the config sets {getattr(config, 'tie_word_embeddings', None)}, the "
                      "checkpoint has no separate lm_head)")
    return causes


def _listing(items: Iterable[tuple[str, str]]) -> str:
    """Keys grouped over layers (``model.layers.{0, 2}.mlp.up_proj.weight``), at most ``_MAX_LISTED`` groups."""
    groups: dict[tuple[str, str], list[str]] = {}
    for key, detail in items:
        m = _LAYER_KEY.search(key)
        if m:
            head = key[: m.start(1)]
            groups.setdefault((f"{head}{{}}.{m.group(2)}", detail), []).append(m.group(1))
        else:
            groups.setdefault((key, detail), [])
    lines = []
    for (template, detail), layers in groups.items():
        name = template.format("{" + ", ".join(sorted(layers, key=int)) + "}" if len(layers) > 1 else layers[0]) \
            if layers else template
        lines.append(f"{name} {detail}".rstrip())
    shown = lines[:_MAX_LISTED]
    if len(lines) > _MAX_LISTED:
        shown.append(f"... and {len(lines) - _MAX_LISTED} more")
    return "; ".join(shown)
