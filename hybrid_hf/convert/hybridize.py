"""Turn full-attention layers of a hybrid_hf model into sliding-window or recurrent layers.

- ``sliding_attention``: zero new parameters; the layer keeps its projections, QK-norm and RoPE, and only sees the
  last ``sliding_window`` keys (including the current token).
- ``linear_attention``: a recurrent mixer initialised from the attention it replaces, as in Mamba-in-the-Llama
  (Wang et al., 2024) and LoLCATs (Zhang et al., 2024). The mixer takes the attention's head layout
  (``linear_num_heads`` = query heads, ``linear_head_dim`` = ``head_dim``) so the projections fit:

  ========================  ===========================================================  ==========================
  mixer                     copied from the attention (key/value heads repeated for GQA)  fresh (default init)
  ========================  ===========================================================  ==========================
  ``gated_deltanet``        q -> ``q_proj``, k -> ``k_proj``, v -> ``v_proj``,             ``g_proj`` (output gate),
                            o -> ``o_proj``; short conv set to identity                   ``a_proj``/``b_proj``
                                                                                          (decay, beta), ``A_log``,
                                                                                          ``dt_bias``, output norm
  ``mamba2``                q -> C, k -> B (one B/C group: query head 0 and its key        z (gate) and dt rows of
                            head, so C.B is a score the attention computed),              ``in_proj``, ``A_log``,
                            v -> x, o -> ``out_proj``; short conv set to identity;        ``dt_bias``, ``D``, norm
                            ``linear_state_size`` = ``head_dim``
  ``lightning``             q -> ``q_proj``, k -> ``k_proj``, v -> ``v_proj``,             ``g_proj`` (output gate),
                            o -> ``o_proj``                                               output norm
  ========================  ===========================================================  ==========================

  Attention biases, QK-norm weights and RoPE have no counterpart in the recurrent mixers and are dropped. The
  identity short conv passes each projection through unchanged (up to the mixer's SiLU), so the copied q/k/v reach
  the recurrence as the attention computed them.

Optionally the kept full-attention layers become NoPE (``nope_full_attention``), as in the paper's SWA-NoPE design.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..modeling import HybridConfig, HybridForCausalLM
from ..modeling.configuration_hybrid import LINEAR_ATTENTION_TYPES, PATTERN_LETTERS

ATTENTION_TYPES = ("full_attention", "sliding_attention")


def plan_layer_types(
    config: HybridConfig,
    *,
    converted_layers: Sequence[int] | None = None,
    full_layers: Sequence[int] | None = None,
    pattern: str | None = None,
    recurrent: bool = False,
) -> list[str]:
    """Target ``layer_types`` for converting the full-attention layers of ``config``.

    Give exactly one of:
        converted_layers: indices of full-attention layers to convert;
        full_layers: indices of full-attention layers to keep (all other full-attention layers are converted);
        pattern: letters ``F``/``S``/``L`` tiled over the depth (``"SF"``: even layers converted), where ``S`` and
            ``L`` both mark a converted layer.

    Converted layers become ``"linear_attention"`` when ``recurrent`` else ``"sliding_attention"``; layers that are
    not full attention in ``config`` keep their type.
    """
    given = [name for name, v in (("converted_layers", converted_layers), ("full_layers", full_layers),
                                  ("pattern", pattern)) if v is not None]
    if len(given) != 1:
        raise ValueError(f"plan_layer_types: give exactly one of converted_layers, full_layers, pattern; got {given}.")
    n = config.num_hidden_layers
    if pattern is not None:
        if not isinstance(pattern, str) or not pattern or set(pattern) - set(PATTERN_LETTERS) or n % len(pattern):
            raise ValueError(
                f"plan_layer_types: invalid `pattern`={pattern!r}; allowed: letters F, S, L whose count divides "
                f"num_hidden_layers={n}."
            )
        converted = {i for i, c in enumerate(pattern * (n // len(pattern))) if c != "F"}
    else:
        indices = list(converted_layers if converted_layers is not None else full_layers)
        name = given[0]
        for i in indices:
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < n:
                raise ValueError(f"plan_layer_types: invalid `{name}` entry {i!r}; allowed: integers in [0, {n}).")
        converted = set(indices) if converted_layers is not None else set(range(n)) - set(indices)
    target = "linear_attention" if recurrent else "sliding_attention"
    types = list(config.layer_types)
    for i in sorted(converted):
        if types[i] == "full_attention":
            types[i] = target
        elif converted_layers is not None:
            raise ValueError(
                f"plan_layer_types: invalid `converted_layers` entry {i}: layer {i} is {types[i]!r}; allowed: "
                "full-attention layers."
            )
    return types


def _rope_parameters(old: HybridConfig, types: list[str], encodings: list[str]) -> dict[str, dict[str, Any]]:
    """Per-type RoPE parameters after conversion: a full layer turned sliding keeps the full layers' rotation."""
    old_rp = old.rope_parameters

    def uses(cfg_types: Sequence[str], cfg_enc: Sequence[str], t: str, only: Sequence[int] | None = None) -> bool:
        idx = range(len(cfg_types)) if only is None else only
        return any(cfg_types[i] == t and cfg_enc[i] == "rope" for i in idx)

    moved = [i for i, (a, b) in enumerate(zip(old.layer_types, types)) if a == "full_attention" and b != a]
    new_sliding_rope = [i for i in moved if types[i] == "sliding_attention" and encodings[i] == "rope"]
    sliding = old_rp["sliding_attention"]
    if new_sliding_rope:
        if uses(old.layer_types, old.position_encodings, "sliding_attention") and sliding != old_rp["full_attention"]:
            raise ValueError(
                "hybridize: invalid `layer_types`: layers "
                f"{new_sliding_rope} would move from full to sliding attention, whose `rope_parameters` differ "
                f"({old_rp['full_attention']} vs {sliding}); allowed: converting to recurrent, or a model with one "
                "RoPE for all layers."
            )
        sliding = old_rp["full_attention"]
    full = old_rp["full_attention"]
    if not uses(types, encodings, "full_attention"):
        full = {"rope_type": "default", "rope_theta": full["rope_theta"]}  # NoPE everywhere: tables unused
    if not uses(types, encodings, "sliding_attention"):
        sliding = {"rope_type": "default", "rope_theta": sliding["rope_theta"]}
    return {"full_attention": dict(full), "sliding_attention": dict(sliding)}


def hybrid_config_for(
    config: HybridConfig,
    layer_types: Sequence[str],
    *,
    linear_attention_type: str | None = None,
    sliding_window: int | None = None,
    nope_full_attention: bool = False,
) -> HybridConfig:
    """The config of ``config``'s model converted to ``layer_types`` (see ``hybridize``)."""
    types = list(layer_types)
    if len(types) != config.num_hidden_layers:
        raise ValueError(
            f"hybridize: invalid `layer_types` of {len(types)} entries; allowed: num_hidden_layers="
            f"{config.num_hidden_layers} entries."
        )
    for i, (old, new) in enumerate(zip(config.layer_types, types)):
        if new not in ("full_attention", "sliding_attention", "linear_attention"):
            raise ValueError(f"hybridize: invalid `layer_types[{i}]`={new!r}; allowed: full_attention, "
                             "sliding_attention, linear_attention.")
        if old != new and old != "full_attention":
            raise ValueError(
                f"hybridize: invalid `layer_types[{i}]`={new!r}: layer {i} is {old!r}; allowed: changing "
                "full-attention layers only."
            )
    overrides: dict[str, Any] = {"layer_types": types}
    new_linear = [i for i, (a, b) in enumerate(zip(config.layer_types, types)) if a != b == "linear_attention"]
    if new_linear:
        if linear_attention_type not in LINEAR_ATTENTION_TYPES:
            raise ValueError(f"hybridize: invalid `linear_attention_type`={linear_attention_type!r}; allowed: "
                             f"{', '.join(LINEAR_ATTENTION_TYPES)}.")
        if "linear_attention" in config.layer_types and linear_attention_type != config.linear_attention_type:
            raise ValueError(f"hybridize: invalid `linear_attention_type`={linear_attention_type!r}; allowed: "
                             f"{config.linear_attention_type!r}, the mixer of the model's recurrent layers.")
        layout = (config.num_attention_heads, config.head_dim, 1.0)
        if "linear_attention" in config.layer_types and (
            config.linear_num_heads, config.linear_head_dim, float(config.linear_expand_v)) != layout:
            raise ValueError(
                "hybridize: invalid `layer_types`: new recurrent layers take the attention's head layout "
                f"(linear_num_heads, linear_head_dim, linear_expand_v)={layout}; allowed: a model whose existing "
                "recurrent layers have that layout."
            )
        # the attention's head layout, so that its projections can be copied (see the module docstring)
        overrides.update(linear_attention_type=linear_attention_type, linear_num_heads=config.num_attention_heads,
                         linear_head_dim=config.head_dim, linear_expand_v=1.0)
        if linear_attention_type == "mamba2":
            overrides["linear_state_size"] = config.head_dim
    elif linear_attention_type is not None and linear_attention_type not in LINEAR_ATTENTION_TYPES:
        raise ValueError(f"hybridize: invalid `linear_attention_type`={linear_attention_type!r}; allowed: "
                         f"{', '.join(LINEAR_ATTENTION_TYPES)}.")
    if "sliding_attention" in types:
        window = sliding_window if sliding_window is not None else config.sliding_window
        if "sliding_attention" in config.layer_types and window != config.sliding_window:
            raise ValueError(f"hybridize: invalid `sliding_window`={sliding_window!r}; allowed: "
                             f"{config.sliding_window}, the window of the model's sliding layers (one window).")
        if window is None:
            raise ValueError("hybridize: invalid `sliding_window`=None; allowed: a positive integer (keys per "
                             "query, including the current token) when converting layers to sliding attention.")
        overrides["sliding_window"] = window
    encodings = [
        "nope" if t == "linear_attention" or (nope_full_attention and t == "full_attention") else pe
        for t, pe in zip(types, config.position_encodings)
    ]
    overrides["position_encodings"] = encodings
    overrides["rope_parameters"] = _rope_parameters(config, types, encodings)
    data = config.to_dict()
    for key in ("rope_theta", "sliding_rope_theta", "layer_pattern", "transformers_version", "architectures"):
        data.pop(key, None)
    data.update(overrides)
    return HybridConfig.from_dict(data)


def _expand_kv(weight: torch.Tensor, heads: int, kv_heads: int, head_dim: int) -> torch.Tensor:
    """(kv_heads*head_dim, d) key/value rows repeated so that query head h gets key/value head h // groups."""
    return weight.view(kv_heads, head_dim, -1).repeat_interleave(heads // kv_heads, dim=0).reshape(heads * head_dim, -1)


def _identity_conv(weight: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(weight)
    out[:, -1] = 1.0  # the causal conv's last tap multiplies the current token
    return out


def _recurrent_init(kind: str, attn: dict[str, torch.Tensor], config: HybridConfig, fresh: dict[str, torch.Tensor]
                    ) -> dict[str, torch.Tensor]:
    """State-dict entries (relative to ``linear_attn.``) of a recurrent mixer initialised from attention weights
    ``attn`` (relative to ``self_attn.``); ``fresh`` holds the newly initialised mixer's entries."""
    h, kv, hd = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    q, o = attn["q_proj.weight"], attn["o_proj.weight"]
    k = _expand_kv(attn["k_proj.weight"], h, kv, hd)
    v = _expand_kv(attn["v_proj.weight"], h, kv, hd)
    out = dict(fresh)
    if kind in ("gated_deltanet", "lightning"):
        out.update({"q_proj.weight": q, "k_proj.weight": k, "v_proj.weight": v, "o_proj.weight": o})
        if kind == "gated_deltanet":
            out["conv_weight"] = _identity_conv(fresh["conv_weight"])
        return out
    # mamba2: in_proj rows are [z (h*hd), x (h*hd), B (n), C (n), dt (h)] with n = head_dim
    in_proj = fresh["in_proj.weight"].clone()
    inner = h * hd
    in_proj[inner : 2 * inner] = v
    in_proj[2 * inner : 2 * inner + hd] = attn["k_proj.weight"][:hd]  # B <- key head 0
    in_proj[2 * inner + hd : 2 * inner + 2 * hd] = q[:hd]  # C <- query head 0 (reads key head 0)
    out.update({"in_proj.weight": in_proj, "out_proj.weight": o, "conv_weight": _identity_conv(fresh["conv_weight"])})
    return out


@torch.no_grad()
def hybridize(
    model: HybridForCausalLM,
    layer_types: Sequence[str] | str,
    *,
    linear_attention_type: str | None = None,
    sliding_window: int | None = None,
    nope_full_attention: bool = False,
    seed: int = 0,
) -> HybridForCausalLM:
    """A copy of ``model`` with some full-attention layers turned into sliding-window or recurrent layers.

    Args:
        model: A hybrid_hf model, e.g. from ``import_model`` (left unchanged).
        layer_types: Target per-layer types (only full-attention layers may change), or a pattern of letters
            ``F``/``S``/``L`` tiled over the depth. ``plan_layer_types`` builds them from layer indices.
        linear_attention_type: Mixer of new ``"linear_attention"`` layers: ``gated_deltanet``, ``mamba2``,
            ``lightning`` (initialised from the attention, see the module docstring).
        sliding_window: Window of new sliding layers (keys including the current token); default the model's.
        nope_full_attention: Drop RoPE from the full-attention layers that remain.
        seed: Seed of the freshly initialised parameters.

    Returns:
        The converted model on the same device and dtype, in the same train/eval mode. Everything not converted
        is copied exactly: with only sliding layers added and windows longer than the input, the logits are equal.
    """
    old = model.config
    if isinstance(layer_types, str):
        if not layer_types or set(layer_types) - set(PATTERN_LETTERS) or old.num_hidden_layers % len(layer_types):
            raise ValueError(f"hybridize: invalid `layer_types` pattern {layer_types!r}; allowed: letters F, S, L "
                             f"whose count divides num_hidden_layers={old.num_hidden_layers}.")
        reps = old.num_hidden_layers // len(layer_types)
        layer_types = [PATTERN_LETTERS[c] for c in layer_types * reps]
    config = hybrid_config_for(old, layer_types, linear_attention_type=linear_attention_type,
                               sliding_window=sliding_window, nope_full_attention=nope_full_attention)
    param = next(model.parameters())
    # fresh parameters from `seed` without touching the caller's random state
    with torch.random.fork_rng(devices=[param.device] if param.device.type == "cuda" else []), torch.device(param.device):
        torch.manual_seed(seed)
        new = HybridForCausalLM(config).to(param.dtype)
    src = model.state_dict()
    state = new.state_dict()
    for name in state:
        if name in src and src[name].shape == state[name].shape:
            state[name] = src[name]
    prefix = f"{model.base_model_prefix}.layers."
    for i, (a, b) in enumerate(zip(old.layer_types, config.layer_types)):
        if a == b or b != "linear_attention":
            continue
        attn = {k[len(f"{prefix}{i}.self_attn."):]: v for k, v in src.items() if k.startswith(f"{prefix}{i}.self_attn.")}
        mixer_prefix = f"{prefix}{i}.linear_attn."
        fresh = {k[len(mixer_prefix):]: v for k, v in state.items() if k.startswith(mixer_prefix)}
        for k, v in _recurrent_init(config.linear_attention_type, attn, config, fresh).items():
            state[mixer_prefix + k] = v
    new.load_state_dict(state, strict=True)
    if getattr(model, "generation_config", None) is not None:
        new.generation_config = model.generation_config
    return new.train(model.training)
