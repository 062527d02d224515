"""Bit-identity guard for refactors: fixed-seed tiny models of every preset (and a 3:1 pattern, QK-norm, GQA) give
exactly the logits recorded in ``tests/modeling/data/reference_logits.pt``.

Covered per model: a plain batch (mask path on CPU), the fused-kernel path (``attention_kernel`` sdpa/flex), packed
rows whose positions restart at 0, a left-padded batch, ``generate_fast`` (static cache) and ``model.generate``
(dynamic cache) step logits; plus attention weights and a receptive-field cap with sinks.

Regenerate only when a change of outputs is intended: ``PYTHONPATH=$PWD python tests/modeling/test_reference_logits.py``.
Bits depend on the CPU kernels torch picks: on the recording machine's CPU capability and torch version the test
demands ``torch.equal``; elsewhere it checks to 1e-5 (the summation order of a matmul may differ).
"""

from __future__ import annotations

from pathlib import Path

import torch

from hybrid_hf import PRESETS, HybridConfig, HybridForCausalLM

FIXTURE = Path(__file__).parent / "data" / "reference_logits.pt"
VOCAB, LENGTH = 32, 20
# Windows small enough to act within LENGTH tokens (the presets' own 128..2048 would not).
WINDOWS = {"swa128": 4, "swa512": 8, "swa2048": 16, "swa128-nope": 4}


def model_configs() -> dict[str, HybridConfig]:
    out = {}
    for name in PRESETS:
        extra = {"sliding_window": WINDOWS[name]} if name in WINDOWS else {}
        out[name] = HybridConfig.from_preset(name, size="tiny", vocab_size=VOCAB, pad_token_id=0, **extra)
    out["3:1"] = HybridConfig.from_preset("swa128", size="tiny", vocab_size=VOCAB, pad_token_id=0,
                                          layer_pattern="SSSF", sliding_window=6)
    out["qk-norm"] = HybridConfig.from_preset("swa128", size="tiny", vocab_size=VOCAB, pad_token_id=0,
                                              sliding_window=5, use_qk_norm=True)
    out["gqa"] = HybridConfig.from_preset("swa128", size="tiny", vocab_size=VOCAB, pad_token_id=0,
                                          sliding_window=5, num_key_value_heads=1)
    return out


def _model(config: HybridConfig, **overrides) -> HybridForCausalLM:
    torch.manual_seed(0)
    cfg = HybridConfig(**{**config.to_dict(), **overrides})
    return HybridForCausalLM(cfg).eval()


@torch.no_grad()
def compute() -> dict[str, torch.Tensor]:
    from hybrid_hf.generation import generate_fast

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (2, LENGTH), generator=g)
    packed_positions = torch.cat([torch.arange(8), torch.arange(12)])[None]
    mask = torch.ones(2, LENGTH, dtype=torch.long)
    mask[1, :5] = 0
    out: dict[str, torch.Tensor] = {}
    for name, config in model_configs().items():
        model = _model(config)
        out[f"{name}/batch"] = model(ids).logits
        out[f"{name}/packed"] = model(ids[:1], position_ids=packed_positions).logits
        out[f"{name}/padded"] = model(ids, attention_mask=mask).logits
        seq, logits = generate_fast(model, ids[:, :9], 6, return_logits=True)
        out[f"{name}/generate_fast"], out[f"{name}/generate_fast_tokens"] = logits, seq
        gen = model.generate(ids[:1, :9], max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0,
                             output_scores=True, return_dict_in_generate=True)
        out[f"{name}/generate"] = torch.stack(gen.scores, 1)
        if "linear_attention" not in config.layer_types:
            for kernel in ("sdpa", "flex"):
                fused = _model(config, attention_kernel=kernel)
                out[f"{name}/kernel_{kernel}"] = fused(ids).logits
                out[f"{name}/kernel_{kernel}_packed"] = fused(ids[:1], position_ids=packed_positions).logits
    sf = model_configs()["swa128"]
    attn = _model(sf)(ids[:1, :12], output_attentions=True).attentions
    out["swa128/attentions"] = torch.stack(attn)
    capped = _model(sf, eval_full_attention_window=6, eval_attention_sink_size=2)
    out["swa128/capped"] = capped(ids[:1]).logits
    out["swa128/capped_packed"] = capped(ids[:1], position_ids=packed_positions).logits
    return out


def platform() -> dict[str, str]:
    return {"torch": str(torch.__version__), "cpu": torch.backends.cpu.get_cpu_capability()}


def compute_single_threaded() -> dict[str, torch.Tensor]:
    """``compute`` on one thread: the recorded bits do not depend on how a matmul is split over threads (and a tiny
    model runs fastest on one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return compute()
    finally:
        torch.set_num_threads(threads)


def test_logits_are_bit_identical_to_the_recorded_reference():
    recorded = torch.load(FIXTURE, weights_only=True)
    reference = recorded["tensors"]
    exact = recorded["platform"] == platform()
    current = compute_single_threaded()
    assert set(current) == set(reference)
    for key, value in current.items():
        if exact:
            assert torch.equal(value, reference[key]), f"{key}: max diff {(value - reference[key]).abs().max()}"
        else:
            torch.testing.assert_close(value, reference[key], atol=1e-5, rtol=0, msg=key)


if __name__ == "__main__":
    FIXTURE.parent.mkdir(exist_ok=True)
    torch.save({"platform": platform(), "tensors": compute_single_threaded()}, FIXTURE)
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size // 1024} KiB)")
