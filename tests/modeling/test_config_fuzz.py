"""Seeded HybridConfig fuzzer: every config the constructor accepts builds a model that runs a forward pass and
survives ``save_pretrained``/``from_pretrained`` unchanged; every rejection is a ``ValueError`` that names the field
and the allowed values. Values known to be invalid whatever the other fields are must be rejected."""

from __future__ import annotations

import copy
import inspect
import math
import random
import re

import pytest
import torch

from hybrid_hf import HybridConfig, HybridForCausalLM

PARAMS = set(inspect.signature(HybridConfig.__init__).parameters) - {"self", "kwargs"}

COMMON = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    pad_token_id=0,
    eos_token_id=1,
    bos_token_id=2,
)
BASES = [
    dict(layer_pattern="F"),
    dict(layer_pattern="SF", sliding_window=4),
    dict(layer_pattern="LF", linear_attention_type="gated_deltanet", linear_expand_v=2.0),
    dict(layer_pattern="LS", sliding_window=3, linear_attention_type="mamba2", linear_state_size=8),
    dict(layer_pattern="LF", linear_attention_type="lightning", position_encodings={"full_attention": "nope"}),
]

# Wrong types and out-of-range values for integer fields; positive ones also reject 0, required ones None.
_BAD_INT = ["8", True, False, 8.0, 2.5, -1, math.nan, math.inf, [8], {"n": 8}, 2**62]
_BAD_REAL = ["0.5", True, math.nan, math.inf, -math.inf, [0.5], {"x": 1.0}, 10**400]
_BAD_BOOL = ["True", "False", 1, 0, 1.0, None, [True]]
_BAD_NAME = ["", 1, True, 2.5, ["silu"], {"silu": 1}]


def _ints(valid: list, zero_ok: bool = False, none_ok: bool = False, bad: tuple = ()) -> tuple[list, list]:
    return valid, _BAD_INT + list(bad) + ([] if zero_ok else [0]) + ([] if none_ok else [None])


def _reals(valid: list, bad: list, none_ok: bool = False) -> tuple[list, list]:
    return valid, _BAD_REAL + bad + ([] if none_ok else [None])


_BOOL = ([True, False], _BAD_BOOL)
_TOKEN = _ints([None, 0, 5, 63], zero_ok=True, none_ok=True)

# field -> (values valid on their own, values invalid whatever the other fields are). A valid value may still be
# rejected together with other fields (e.g. num_hidden_layers=3 with layer_pattern="SF").
SPEC: dict[str, tuple[list, list]] = {
    "vocab_size": _ints([64, 2, 3, 100, 2**20]),
    "hidden_size": _ints([32, 4, 8, 16, 24, 30, 48, 2**14]),
    "intermediate_size": _ints([48, 1, 7, 2**16]),
    "num_hidden_layers": _ints([2, 1, 3, 4, 6, 1000]),
    "num_attention_heads": _ints([4, 1, 2, 3, 8]),
    "num_key_value_heads": _ints([None, 1, 2, 3, 4], none_ok=True),
    "head_dim": _ints([None, 2, 4, 6, 8, 16], none_ok=True, bad=(1, 7)),  # RoPE rotates pairs of dimensions
    "hidden_act": (["silu", "gelu", "gelu_pytorch_tanh", "relu"], _BAD_NAME + ["swish2", "SiLU", None]),
    "max_position_embeddings": _ints([64, 4, 8, 16384, 2**30]),
    "initializer_range": _reals([0.02, 0.0, 0, 0.5, 1], [-0.1, -1]),
    "rms_norm_eps": _reals([1e-6, 1e-5, 1e-30, 0.5, 1], [0, 0.0, -1e-6, 1e-300]),  # 1e-300 is 0 in float32
    "use_cache": _BOOL,
    "tie_word_embeddings": _BOOL,
    "layer_types": (
        [None, ["full_attention"] * 2, ["sliding_attention", "full_attention"], ("full_attention", "full_attention"),
         ["linear_attention", "full_attention"], ["full_attention"] * 3],
        ["full_attention", "FF", 5, True, {"full_attention": 2}, [1, 2], ["mamba", "full_attention"], [None, None],
         ["linear_attention"] * 2],  # no attention layer: transformers' cache cannot measure the sequence
    ),
    "layer_pattern": ([None, "F", "S", "SF", "FS", "LF", "FF"], ["", "X", "sf", "SFX", "L", 1, True, ["S", "F"], 2.0]),
    "sliding_window": _ints([None, 1, 3, 4, 100, 2**31 - 1], none_ok=True),
    "position_encodings": (
        [None, "rope", "nope", {"full_attention": "nope"}, {"sliding_attention": "nope", "full_attention": "rope"},
         ["rope", "nope"], ["nope", "nope"], ("rope", "rope")],
        ["alibi", "", 1, True, {"global": "nope"}, {"full_attention": "yarn"}, {"full_attention": None}, [None, None],
         {"rope"}],
    ),
    # RoPE scaling (rope_type) is fuzzed with the RoPE tests; here only the container and the theta shorthands.
    "rope_parameters": ([None, {}, {"rope_type": "default", "rope_theta": 500.0}], ["default", 1, True, ["default"]]),
    "rope_theta": _reals([None, 10000.0, 10000, 2.5, 1e6, 1e30], [0, -1.0, 1e-300], none_ok=True),
    "sliding_rope_theta": _reals([None, 10000.0, 500, 1e6], [0, -1.0, 1e-300], none_ok=True),
    "use_qk_norm": _BOOL,
    "attention_bias": _BOOL,
    "attention_dropout": _reals([0.0, 0, 0.1, 0.5], [1.0, 1, -0.1, 1.5]),
    "linear_attention_type": (
        [None, "gated_deltanet", "mamba2", "lightning"], _BAD_NAME + ["rwkv", "GDN", ["mamba2"]]
    ),
    "linear_num_heads": _ints([None, 1, 2, 3, 4], none_ok=True),
    "linear_head_dim": _ints([None, 4, 5, 6, 8, 16], none_ok=True),
    "linear_expand_v": _reals([1.0, 1, 2.0, 2, 0.5, 1.5, 0.25], [0, 0.0, -1.0]),
    "linear_conv_kernel_size": _ints([4, 2, 3, 8], bad=(1,)),
    "linear_chunk_size": _ints([64, 1, 2, 3, 16, 256]),
    "linear_state_size": _ints([64, 1, 8, 16]),
    "eval_full_attention_window": _ints([None, 1, 4, 16, 2**31 - 1], none_ok=True),
    "eval_efficient_window": _ints([None, 1, 4, 16, 2**31 - 1], none_ok=True),
    "eval_attention_sink_size": _ints([0, 1, 4, 2**20], zero_ok=True),
    "attention_kernel": (
        ["auto", "sdpa", "transformers", "flex", "flash_attn", "triton"], _BAD_NAME + ["flash", "SDPA", None]
    ),
    "fused_cross_entropy": _BOOL,
    "pad_token_id": _TOKEN,
    "bos_token_id": _TOKEN,
    "eos_token_id": ([None, 1, 63, [1, 2], (1, 2)], ["1", True, 2.5, -1, math.nan, [-1], [], ["1"], [True], 2**62]),
}
# Anything, valid or not depending on the field; only the generic contract is checked for these.
JUNK = [None, 0, 1, -1, True, "x", 2.5, 2**40, math.nan, [], {}, ["full_attention"]]

# Kernels that need CUDA refuse a CPU forward with a ValueError naming attention_kernel (documented).
CUDA_KERNELS = ("flash_attn", "triton")
BUILD_BUDGET = 300_000  # parameters; larger accepted configs are only checked to save and load


def _named_field(err: ValueError) -> str:
    msg = str(err)
    match = re.search(r"`(\w+)", msg)
    assert match and match.group(1) in PARAMS, f"error names no HybridConfig field: {msg}"
    assert re.search(r"allowed: \S", msg), f"error gives no allowed values: {msg}"
    return match.group(1)


def _estimated_params(cfg: HybridConfig) -> int:
    """An upper estimate from the config alone (building a huge model just to count it would hang the fuzzer)."""
    d, layers = cfg.hidden_size, cfg.num_hidden_layers
    attn = d * cfg.head_dim * 2 * (cfg.num_attention_heads + cfg.num_key_value_heads)
    mixer = 0
    if "linear_attention" in cfg.layer_types:
        width = cfg.linear_num_heads * cfg.linear_head_dim * max(1.0, cfg.linear_expand_v)
        mixer = int(8 * d * width + 2 * (d + cfg.linear_conv_kernel_size) * cfg.linear_state_size)
        mixer += cfg.linear_conv_kernel_size * 4 * width
    return 2 * cfg.vocab_size * d + layers * (max(attn, mixer) + 3 * d * cfg.intermediate_size)


def _config_dict(cfg: HybridConfig) -> dict:
    out = cfg.to_dict()
    out.pop("_name_or_path", None)
    return out


def _check_accepted(cfg: HybridConfig, folder) -> None:
    if _estimated_params(cfg) > BUILD_BUDGET or cfg.num_hidden_layers > 8 or cfg.head_dim > 64:
        cfg.save_pretrained(folder)
        assert _config_dict(HybridConfig.from_pretrained(folder)) == _config_dict(cfg)
        return
    torch.manual_seed(0)
    model = HybridForCausalLM(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, min(8, cfg.max_position_embeddings)))
    with torch.no_grad():
        try:
            logits = model(ids).logits
        except ValueError as err:
            assert cfg.attention_kernel in CUDA_KERNELS and "attention_kernel" in str(err), err
            logits = None
    assert logits is None or torch.isfinite(logits).all()
    model.save_pretrained(folder)
    loaded = HybridForCausalLM.from_pretrained(folder).eval()
    assert _config_dict(loaded.config) == _config_dict(model.config)
    if logits is not None:
        with torch.no_grad():
            assert torch.equal(loaded(ids).logits, logits)


def _draw(rng: random.Random) -> tuple[dict, list[str], list[str]]:
    """Base config with 1-3 fields replaced: ``(kwargs, mutated fields, fields given a known-invalid value)``."""
    kwargs = {**COMMON, **copy.deepcopy(rng.choice(BASES))}
    fields = rng.sample(sorted(SPEC), rng.choice([1, 2, 2, 3]))
    bad = []
    for field in fields:
        valid, invalid = SPEC[field]
        roll = rng.random()
        if roll < 0.35:
            kwargs[field] = copy.deepcopy(rng.choice(valid))
        elif roll < 0.85:
            kwargs[field] = copy.deepcopy(rng.choice(invalid))
            bad.append(field)
        else:
            kwargs[field] = copy.deepcopy(rng.choice(JUNK))
    return kwargs, fields, bad


def test_spec_covers_every_constructor_argument():
    assert set(SPEC) == PARAMS


@pytest.mark.parametrize("field", sorted(SPEC))
def test_each_invalid_value_is_rejected_naming_its_field(field):
    for value in SPEC[field][1]:
        for base in BASES:
            kwargs = {**COMMON, **copy.deepcopy(base), field: copy.deepcopy(value)}
            with pytest.raises(ValueError) as err:
                HybridConfig(**kwargs)
            assert _named_field(err.value) == field, (value, str(err.value))


def test_each_valid_value_alone_is_accepted_and_saves(tmp_path):
    """A lone valid value never breaks the base configs, except where it contradicts the base's layer layout."""
    layout = {"layer_types", "layer_pattern", "num_hidden_layers", "position_encodings", "linear_attention_type",
              "linear_expand_v", "sliding_window", "head_dim", "hidden_size", "vocab_size", "num_attention_heads",
              "num_key_value_heads", "linear_head_dim"}
    for field, (valid, _) in sorted(SPEC.items()):
        for value in valid:
            kwargs = {**COMMON, **BASES[0], field: copy.deepcopy(value)}
            try:
                cfg = HybridConfig(**kwargs)
            except ValueError as err:
                assert field in layout, (field, value, str(err))
                _named_field(err)
                continue
            cfg.save_pretrained(tmp_path)
            assert _config_dict(HybridConfig.from_pretrained(tmp_path)) == _config_dict(cfg)


def test_fuzzed_configs_are_rejected_clearly_or_work(tmp_path):
    rng = random.Random(13)
    outcomes = {"rejected": 0, "accepted": 0}
    seen: set[str] = set()
    for i in range(400):
        kwargs, fields, bad = _draw(rng)
        context = f"case {i}: {({f: kwargs[f] for f in fields})}"
        try:
            cfg = HybridConfig(**kwargs)
        except ValueError as err:
            named = _named_field(err)
            if len(fields) == 1 and bad:
                assert named == bad[0], f"{context}: {err}"
            outcomes["rejected"] += 1
            continue
        assert not bad, f"{context}: accepted invalid {bad}"
        key = cfg.to_json_string()
        if key not in seen:  # many draws give the same config back
            seen.add(key)
            _check_accepted(cfg, tmp_path / str(i))
        outcomes["accepted"] += 1
    # the draw mixes both outcomes (the seed is fixed; a change of the spec may shift the split)
    assert outcomes["rejected"] > 200 and outcomes["accepted"] > 50, outcomes
