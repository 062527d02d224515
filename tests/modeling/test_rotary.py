"""RoPE scaling: every transformers rope_type builds, round-trips, validates, and rotates exactly as transformers does
(its ``ROPE_INIT_FUNCTIONS`` and a stock ``LlamaRotaryEmbedding``/``LlamaForCausalLM`` with the same parameters)."""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch
import transformers
from torch import nn
from transformers import GlmConfig, LlamaConfig, LlamaForCausalLM
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.glm.modeling_glm import GlmRotaryEmbedding
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from hybrid_hf import HybridConfig, HybridForCausalLM
from hybrid_hf.modeling.configuration_hybrid import SUPPORTED_ROPE_TYPES
from hybrid_hf.modeling.modeling_hybrid import HybridRotaryEmbedding as ReexportedRotary
from hybrid_hf.modeling.rotary import HybridRotaryEmbedding, apply_rotary_pos_emb, rope_inv_freq

HEAD_DIM, MAX_POS, ORIGINAL = 8, 16, 4  # positions beyond ORIGINAL and beyond MAX_POS are both exercised

# One case per rope_type (plus variants), with every optional key of some type set somewhere.
CASES: dict[str, dict] = {
    "default": {"rope_type": "default", "rope_theta": 100.0},
    "default_partial": {"rope_type": "default", "rope_theta": 100.0, "partial_rotary_factor": 0.5},
    "linear": {"rope_type": "linear", "factor": 4.0, "rope_theta": 100.0},
    "dynamic": {"rope_type": "dynamic", "factor": 3.0, "rope_theta": 100.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL, "rope_theta": 100.0},
    "yarn_options": {
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL, "rope_theta": 100.0,
        "attention_factor": 1.25, "beta_fast": 16.0, "beta_slow": 2.0, "truncate": False,
    },
    "yarn_mscale": {
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL, "rope_theta": 100.0,
        "mscale": 1.0, "mscale_all_dim": 0.5,
    },
    "llama3": {
        "rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": ORIGINAL, "rope_theta": 100.0,
    },
    "longrope": {
        "rope_type": "longrope", "original_max_position_embeddings": ORIGINAL, "rope_theta": 100.0,
        "short_factor": [1.0, 1.1, 1.3, 1.6], "long_factor": [1.5, 2.5, 4.0, 6.0],
    },
    "longrope_factor": {
        "rope_type": "longrope", "original_max_position_embeddings": ORIGINAL, "rope_theta": 100.0, "factor": 2.0,
        "attention_factor": 1.1, "short_factor": [1.0, 1.0, 1.2, 1.4], "long_factor": [2.0, 3.0, 4.0, 5.0],
    },
    "proportional": {"rope_type": "proportional", "rope_theta": 100.0, "partial_rotary_factor": 0.5, "factor": 2.0},
}
TYPE_OF = {name: params["rope_type"] for name, params in CASES.items()}
# Growing lengths, then decode-style single positions (as a cached decode passes them)
LENGTHS = (2, ORIGINAL, ORIGINAL + 1, 10, MAX_POS, MAX_POS + 1, 25, 40)
DECODE_POSITIONS = (40, 41, 47)


@pytest.fixture(autouse=True)
def _quiet_transformers():
    """LlamaConfig logs advice for some valid parameters (e.g. yarn's implicit factor); keep the output readable."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    yield
    transformers.logging.set_verbosity(verbosity)


def _sizes(**extra) -> dict:
    return dict(hidden_size=32, num_attention_heads=4, head_dim=HEAD_DIM, max_position_embeddings=MAX_POS, **extra)


def _hybrid_config(rope_parameters: dict, pattern: str = "F", **extra) -> HybridConfig:
    return HybridConfig(
        vocab_size=64, intermediate_size=64, num_hidden_layers=2, num_key_value_heads=2, layer_pattern=pattern,
        sliding_window=4 if "S" in pattern else None, rope_parameters=dict(rope_parameters), **_sizes(), **extra,
    )


def _llama_rotary(rope_parameters: dict) -> nn.Module:
    """A stock transformers rotary module: Llama's, or GLM's for a partial ``default`` (Llama's default rotates
    whole heads; the scaled types honour ``partial_rotary_factor`` in both)."""
    if "partial_rotary_factor" in rope_parameters:
        return GlmRotaryEmbedding(GlmConfig(**_sizes(), rope_parameters=dict(rope_parameters)))
    return LlamaRotaryEmbedding(LlamaConfig(**_sizes(), rope_parameters=dict(rope_parameters)))


def _calls():
    """position_ids of successive calls: whole sequences of growing length, then single decode positions."""
    for n in LENGTHS:
        yield torch.arange(n)[None]
    for p in DECODE_POSITIONS:
        yield torch.tensor([[p]])


def test_every_transformers_rope_type_is_supported_and_tested():
    assert set(SUPPORTED_ROPE_TYPES) == {"default", *ROPE_INIT_FUNCTIONS}
    assert set(TYPE_OF.values()) == set(SUPPORTED_ROPE_TYPES)
    assert ReexportedRotary is HybridRotaryEmbedding  # still importable from modeling_hybrid


@pytest.mark.parametrize("name", [n for n in CASES if TYPE_OF[n] != "default"])
def test_inv_freq_equals_rope_init_functions(name):
    params = CASES[name]
    ours = _hybrid_config(params).rope_parameters["full_attention"]
    reference_config = LlamaConfig(**_sizes(), rope_parameters=dict(params))
    init = ROPE_INIT_FUNCTIONS[params["rope_type"]]
    for seq_len in (None, ORIGINAL + 1, 3 * MAX_POS):
        inv_freq, scaling = rope_inv_freq(_hybrid_config(params), ours, seq_len=seq_len)
        ref_inv_freq, ref_scaling = init(reference_config, None, seq_len=seq_len)
        assert torch.equal(inv_freq, ref_inv_freq.float()), seq_len
        assert scaling == pytest.approx(ref_scaling, rel=0, abs=0)


@pytest.mark.parametrize("name", list(CASES))
def test_rotary_tables_equal_llama_rotary_embedding_below_and_beyond_original_max(name):
    """cos, sin (and so the attention scaling they carry) equal transformers' for growing lengths and decode steps;
    dynamic NTK rescales beyond max_position_embeddings and longrope switches factors beyond the original length."""
    params = CASES[name]
    ours, ref = HybridRotaryEmbedding(_hybrid_config(params)), _llama_rotary(params)
    assert ours.attention_scaling["full_attention"] == ref.attention_scaling
    x = torch.zeros(1, dtype=torch.float32)
    for position_ids in _calls():
        cos, sin = ours(x, position_ids)["full_attention"]
        ref_cos, ref_sin = ref(x, position_ids)
        assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin), position_ids.max()
        # a fresh transformers module sees the same length for the first time: the same tables
        fresh_cos, _ = _llama_rotary(params)(x, position_ids)
        assert torch.equal(cos, fresh_cos)
    # bf16 tables are the fp32 ones rounded, as in transformers
    bf16, position_ids = torch.zeros(1, dtype=torch.bfloat16), torch.arange(50)[None]
    cos, _ = ours(bf16, position_ids)["full_attention"]
    assert cos.dtype == torch.bfloat16 and torch.equal(cos, _llama_rotary(params)(bf16, position_ids)[0])


def test_scaling_changes_the_tables_where_transformers_does():
    x = torch.zeros(1)
    dynamic = HybridRotaryEmbedding(_hybrid_config(CASES["dynamic"]))
    plain = HybridRotaryEmbedding(_hybrid_config(CASES["default"]))
    short, long = torch.arange(MAX_POS)[None], torch.arange(2 * MAX_POS)[None]
    assert torch.equal(dynamic(x, short)["full_attention"][0], plain(x, short)["full_attention"][0])
    assert not torch.allclose(dynamic(x, long)["full_attention"][0], plain(x, long)["full_attention"][0])
    longrope = HybridRotaryEmbedding(_hybrid_config(CASES["longrope"]))
    at_original = longrope(x, torch.arange(ORIGINAL)[None])["full_attention"][0]
    beyond = longrope(x, torch.arange(ORIGINAL + 1)[None])["full_attention"][0]
    assert not torch.allclose(at_original, beyond[:, :ORIGINAL])


@pytest.mark.parametrize("name", ["yarn", "dynamic", "longrope"])
def test_sliding_rope_theta_and_nope_layers(name):
    """Sliding layers rotate with their own base and the same scaling; NoPE layer types get no tables."""
    params = {k: v for k, v in CASES[name].items() if k != "rope_theta"}
    x = torch.zeros(1)
    cfg = _hybrid_config(params, pattern="SF", rope_theta=1000.0, sliding_rope_theta=50.0)
    both = HybridRotaryEmbedding(cfg)
    nope_full = HybridRotaryEmbedding(
        _hybrid_config(params, pattern="SF", position_encodings={"full_attention": "nope", "sliding_attention": "rope"},
                       sliding_rope_theta=50.0)
    )
    assert both.layer_types == ["full_attention", "sliding_attention"] and nope_full.layer_types == ["sliding_attention"]
    ref_full, ref_sliding = _llama_rotary({**params, "rope_theta": 1000.0}), _llama_rotary({**params, "rope_theta": 50.0})
    ref_nope_sliding = _llama_rotary({**params, "rope_theta": 50.0})
    for position_ids in _calls():
        tables, nope_tables = both(x, position_ids), nope_full(x, position_ids)
        assert set(nope_tables) == {"sliding_attention"}
        assert torch.equal(tables["full_attention"][0], ref_full(x, position_ids)[0])
        assert torch.equal(tables["sliding_attention"][1], ref_sliding(x, position_ids)[1])
        assert torch.equal(nope_tables["sliding_attention"][0], ref_nope_sliding(x, position_ids)[0])


def test_per_layer_type_parameters():
    """A dict keyed by layer type gives each type its own rope_type (Gemma3-style)."""
    rp = {"full_attention": CASES["yarn"], "sliding_attention": {"rope_type": "default", "rope_theta": 10.0}}
    cfg = _hybrid_config(rp, pattern="SF")
    rotary, x, pos = HybridRotaryEmbedding(cfg), torch.zeros(1), torch.arange(40)[None]
    assert torch.equal(rotary(x, pos)["full_attention"][0], _llama_rotary(CASES["yarn"])(x, pos)[0])
    assert torch.equal(rotary(x, pos)["sliding_attention"][1], _llama_rotary(rp["sliding_attention"])(x, pos)[1])


def test_partial_rotary_leaves_the_other_channels_alone():
    cfg = _hybrid_config(CASES["default_partial"])
    cos, sin = HybridRotaryEmbedding(cfg)(torch.zeros(1), torch.arange(6)[None])["full_attention"]
    assert cos.shape[-1] == HEAD_DIM // 2
    q, k = torch.randn(1, 2, 6, HEAD_DIM), torch.randn(1, 2, 6, HEAD_DIM)
    q_rot, k_rot = apply_rotary_pos_emb(q, k, cos, sin)
    assert torch.equal(q_rot[..., HEAD_DIM // 2 :], q[..., HEAD_DIM // 2 :])
    full_q, _ = apply_rotary_pos_emb(q[..., : HEAD_DIM // 2], k[..., : HEAD_DIM // 2], cos, sin)
    assert torch.equal(q_rot[..., : HEAD_DIM // 2], full_q)
    assert not torch.equal(k_rot, k)


@pytest.mark.parametrize("nope_full", [False, True])
@pytest.mark.parametrize("name", list(CASES))
def test_config_round_trip_unchanged_and_model_reloads(tmp_path, name, nope_full):
    encodings = {"full_attention": "nope", "sliding_attention": "rope"} if nope_full else "rope"
    cfg = _hybrid_config(CASES[name], pattern="SF", sliding_rope_theta=50.0, position_encodings=encodings)
    cfg.save_pretrained(tmp_path)
    again = HybridConfig.from_pretrained(tmp_path)
    assert again.to_dict() == cfg.to_dict()
    assert json.loads(again.to_json_string()) == json.loads(cfg.to_json_string())
    assert again.rope_parameters["sliding_attention"]["rope_theta"] == 50.0
    x, pos = torch.zeros(1), torch.arange(50)[None]
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        for a, b in zip(HybridRotaryEmbedding(cfg)(x, pos).values(), HybridRotaryEmbedding(again)(x, pos).values())
    )


def _stock_twin(model: HybridForCausalLM) -> LlamaForCausalLM:
    """transformers' Llama with the same weights: an all-full-attention RoPE hybrid without QK-norm is a Llama."""
    cfg = model.config
    twin = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
            num_key_value_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim, rms_norm_eps=cfg.rms_norm_eps,
            max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=True,
            rope_parameters=dict(cfg.rope_parameters["full_attention"]), attn_implementation="eager",
        )
    ).eval()
    twin.load_state_dict(model.state_dict())
    return twin


def _generate(model: nn.Module, prompt: torch.Tensor, new: int) -> tuple[torch.Tensor, torch.Tensor]:
    out = model.generate(
        prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0,
        output_logits=True, return_dict_in_generate=True,
    )
    return out.sequences, torch.stack(out.logits, dim=1)


@pytest.mark.parametrize("name", ["dynamic", "yarn_options", "llama3", "longrope", "proportional"])
def test_logits_and_cached_decode_equal_stock_llama(name):
    """Full forward and cached greedy decode (prompt below the original length, decode past max positions) give
    transformers Llama's logits. With static frequencies the cached decode also equals the full forward; with
    dynamic and longrope it does so only up to the length where the frequencies change: beyond, the cached keys
    keep the frequencies of the step that wrote them (in transformers too), so the stock model is the reference."""
    torch.manual_seed(0)
    model = HybridForCausalLM(_hybrid_config(CASES[name], attn_implementation="eager")).eval()
    twin = _stock_twin(model)
    prompt, new = torch.randint(3, 64, (1, ORIGINAL - 1)), MAX_POS
    ids = torch.randint(3, 64, (2, MAX_POS + 8))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, twin(ids).logits)
        seq, logits = _generate(model, prompt, new)
        twin_seq, twin_logits = _generate(twin, prompt, new)
        assert torch.equal(seq, twin_seq) and torch.equal(logits, twin_logits)
        static = TYPE_OF[name] not in ("dynamic", "longrope")
        until = seq.shape[1] - 1 if static else MAX_POS if TYPE_OF[name] == "dynamic" else ORIGINAL
        full = model(seq[:, :until], use_cache=False).logits[:, prompt.shape[1] - 1 :]
        assert (logits[:, : full.shape[1]] - full).abs().max().item() <= 1e-5


class _TransformersRotary(nn.Module):
    """The hybrid rotary interface ({layer type: (cos, sin)}) served by transformers' LlamaRotaryEmbedding."""

    def __init__(self, config: HybridConfig, layer_types: list[str]) -> None:
        super().__init__()
        self.layer_types = layer_types
        self.per_type = nn.ModuleDict({t: _llama_rotary(config.rope_parameters[t]) for t in layer_types})

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {t: module(x, position_ids) for t, module in self.per_type.items()}


@pytest.mark.parametrize("name", ["dynamic", "yarn", "longrope"])
@pytest.mark.parametrize("nope_full", [False, True])
def test_hybrid_logits_equal_a_model_running_transformers_rotary(name, nope_full):
    """A sliding/full hybrid with its own sliding base (and optionally NoPE full layers) gives the logits it gives
    when its rotary module is replaced by transformers' rotary modules, beyond the original length and max."""
    params = {k: v for k, v in CASES[name].items() if k != "rope_theta"}
    encodings = {"full_attention": "nope", "sliding_attention": "rope"} if nope_full else "rope"
    cfg = _hybrid_config(params, pattern="SF", position_encodings=encodings, rope_theta=300.0, sliding_rope_theta=30.0)
    torch.manual_seed(0)
    model = HybridForCausalLM(cfg).eval()
    ids = torch.randint(3, 64, (1, MAX_POS + 12))
    with torch.no_grad():
        ours = model(ids).logits
        model.model.rotary_emb = _TransformersRotary(cfg, model.model.rotary_emb.layer_types)
        assert torch.equal(ours, model(ids).logits)


def test_generate_fast_matches_generate_with_dynamic_rope():
    """The static-cache decode step (the one replayed as a CUDA graph on GPU) rescales dynamic NTK as generate does."""
    from hybrid_hf.generation import generate_fast

    torch.manual_seed(0)
    model = HybridForCausalLM(_hybrid_config(CASES["dynamic"], pattern="SF")).eval()
    prompt = torch.randint(3, 64, (2, 5))
    seq, logits = generate_fast(model, prompt, MAX_POS, return_logits=True)
    ref_seq, ref_logits = _generate(model, prompt, MAX_POS)
    assert torch.equal(seq, ref_seq)
    assert (logits - ref_logits[:, : logits.shape[1]]).abs().max().item() <= 1e-4


def test_init_weights_restores_the_frequency_tables():
    model = HybridForCausalLM(_hybrid_config(CASES["longrope"], pattern="SF"))
    rotary = model.model.rotary_emb
    expected = {name: buf.clone() for name, buf in rotary.named_buffers()}
    assert set(expected) == {"full_attention_inv_freq", "full_attention_long_inv_freq", "sliding_attention_inv_freq",
                             "sliding_attention_long_inv_freq"}
    for buf in rotary.buffers():
        buf.zero_()
    model._init_weights(rotary)
    assert all(torch.equal(buf, expected[name]) for name, buf in rotary.named_buffers())


def test_legacy_rope_scaling_and_partial_rotary_factor_keys():
    cfg = _hybrid_config({}, rope_theta=500.0, rope_scaling={"type": "linear", "factor": 2.0}, partial_rotary_factor=0.5)
    assert cfg.rope_parameters["full_attention"] == {
        "rope_type": "linear", "factor": 2.0, "rope_theta": 500.0, "partial_rotary_factor": 0.5
    }
    assert not hasattr(cfg, "partial_rotary_factor") or cfg.partial_rotary_factor is None
    # assigned after construction (transformers 5.24 standardises in the setter, 5.17 leaves it to the model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers 5.24 deprecates the name
        cfg.rope_scaling = {"rope_type": "yarn", "factor": 2.0, "rope_theta": 500.0}
    rotary = HybridRotaryEmbedding(cfg)
    assert cfg.rope_parameters["full_attention"]["rope_type"] == "yarn" and rotary.attention_scaling["full_attention"] > 1
    cfg.rope_parameters = {"rope_type": "linear"}
    with pytest.raises(ValueError, match=r"`rope_parameters\.factor`"):
        HybridForCausalLM(cfg)


def test_validate_rope_catches_in_place_edits():
    cfg = _hybrid_config(CASES["linear"])
    cfg.validate_rope()
    cfg.rope_parameters["full_attention"]["factor"] = "4"
    with pytest.raises(ValueError, match=r"`rope_parameters\.full_attention\.factor`"):
        cfg.validate_rope()


LONG = [1.0, 2.0, 3.0, 4.0]
BAD_ROPE = [
    ({"rope_type": "ntk-magic"}, "rope_parameters.rope_type"),
    ({"rope_type": 3}, "rope_parameters.rope_type"),
    ({"rope_type": "linear"}, "rope_parameters.factor"),
    ({"rope_type": "dynamic"}, "rope_parameters.factor"),
    ({"rope_type": "linear", "factor": "2"}, "rope_parameters.factor"),
    ({"rope_type": "linear", "factor": True}, "rope_parameters.factor"),
    ({"rope_type": "linear", "factor": 0.5}, "rope_parameters.factor"),
    ({"rope_type": "linear", "factor": None}, "rope_parameters.factor"),
    ({"rope_type": "linear", "factor": float("inf")}, "rope_parameters.factor"),
    ({"rope_type": "linear", "factr": 2.0}, "rope_parameters.factr"),
    ({"rope_type": "default", "factor": 2.0}, "rope_parameters.factor"),
    ({"rope_type": "default", "rope_theta": "1e4"}, "rope_parameters.rope_theta"),
    ({"rope_type": "default", "rope_theta": 0}, "rope_parameters.rope_theta"),
    ({"rope_type": "default", "partial_rotary_factor": 1.5}, "rope_parameters.partial_rotary_factor"),
    ({"rope_type": "default", "partial_rotary_factor": 0.1}, "rope_parameters.partial_rotary_factor"),
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2.5},
     "rope_parameters.original_max_position_embeddings"),
    ({"rope_type": "yarn", "factor": 4.0, "truncate": "yes"}, "rope_parameters.truncate"),
    ({"rope_type": "yarn", "factor": 4.0, "beta_fast": 1.0, "beta_slow": 2.0}, "rope_parameters.beta_fast"),
    ({"rope_type": "yarn", "factor": 4.0, "attention_factor": -1.0}, "rope_parameters.attention_factor"),
    ({"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0}, "rope_parameters.high_freq_factor"),
    ({"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0},
     "rope_parameters.high_freq_factor"),
    ({"rope_type": "longrope", "short_factor": LONG}, "rope_parameters.long_factor"),
    ({"rope_type": "longrope", "short_factor": LONG, "long_factor": LONG[:3]}, "rope_parameters.long_factor"),
    ({"rope_type": "longrope", "short_factor": [1, "2", 3, 4], "long_factor": LONG}, "rope_parameters.short_factor"),
    ({"rope_type": "proportional", "factor": None}, "rope_parameters.factor"),
    ({"full_attention": {"rope_type": "linear"}}, "rope_parameters.full_attention.factor"),
    ({"full_attention": "linear"}, "rope_parameters.full_attention"),
    ({"full_attention": {"rope_type": "default"}, "linear_attention": {}}, "rope_parameters"),
]


@pytest.mark.parametrize("rope_parameters,field", BAD_ROPE, ids=[f"{i}-{f}" for i, (_, f) in enumerate(BAD_ROPE)])
def test_invalid_rope_parameters_raise_value_error_naming_the_key(rope_parameters, field):
    with pytest.raises(ValueError) as err:
        _hybrid_config(rope_parameters)
    assert f"`{field}`" in str(err.value) and "allowed" in str(err.value)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"sliding_rope_theta": -1.0, "pattern": "SF"}, "sliding_rope_theta"),
        ({"rope_theta": "big"}, "rope_theta"),
        ({"rope_scaling": "linear"}, "rope_scaling"),
        ({"position_encodings": "nope"}, "rope_parameters"),  # scaling, but no RoPE layer to scale
        ({"pattern": "SF", "position_encodings": {"full_attention": "nope", "sliding_attention": "rope"},
          "rope_parameters": {"full_attention": CASES["linear"]}}, "rope_parameters.full_attention"),
    ],
)
def test_invalid_rope_shorthands_raise_value_error(kwargs, field):
    pattern = kwargs.pop("pattern", "F")
    rope_parameters = kwargs.pop("rope_parameters", CASES["linear"] if "position_encodings" in kwargs else {})
    with pytest.raises(ValueError) as err:
        _hybrid_config(rope_parameters, pattern=pattern, **kwargs)
    assert f"`{field}`" in str(err.value) and "allowed" in str(err.value)


def test_flat_scaling_with_nope_full_layers_scales_the_rope_layers():
    cfg = _hybrid_config(CASES["yarn"], pattern="SF",
                         position_encodings={"full_attention": "nope", "sliding_attention": "rope"})
    assert cfg.rope_parameters["sliding_attention"]["rope_type"] == "yarn"
    # the NoPE-only type keeps its base alone, so the stored form validates again (model build, from_pretrained)
    assert cfg.rope_parameters["full_attention"] == {"rope_type": "default", "rope_theta": 100.0}
    assert HybridRotaryEmbedding(cfg).layer_types == ["sliding_attention"]
    assert HybridConfig.from_dict(cfg.to_dict()).rope_parameters == cfg.rope_parameters


def test_save_pretrained_ships_rotary(tmp_path):
    """rotary.py travels with the remote code (tests/modeling/test_save_load.py loads such a folder without hybrid_hf)."""
    model = HybridForCausalLM(_hybrid_config(CASES["dynamic"], pattern="SF", sliding_rope_theta=30.0)).eval()
    model.save_pretrained(tmp_path)
    assert {"rotary.py", "modeling_hybrid.py", "configuration_hybrid.py"} <= set(os.listdir(tmp_path))
    loaded = HybridForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(3, 64, (1, MAX_POS + 8))  # beyond max: the dynamic rescaling runs
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
