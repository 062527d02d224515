"""The Triton flash-decoding kernel (``decode_kernel="triton"``) against the static cache's torch decode attention.

On a GPU it runs compiled, in bf16 and fp32; on CPU the same cases run through triton's interpreter
(``TRITON_INTERPRET=1``, fp32) in a subprocess, since the interpreter must be chosen before the kernels are defined.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hybrid_hf.generation import generate_fast
from hybrid_hf.modeling.static_cache import HybridStaticCache, decode_attention

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
ON_GPU = torch.cuda.is_available() and HAS_TRITON
RUNS_HERE = ON_GPU or (INTERPRET and HAS_TRITON)
DEVICE = "cuda" if ON_GPU else "cpu"

# (batch, q heads, kv heads, key slots, head_dim, filled slots)
CASES = [
    (2, 4, 2, 48, 16, 37),  # grouped-query heads, a partly filled buffer, several splits
    (1, 8, 2, 40, 32, 40),  # four query heads per key/value head, all slots filled (a ring)
    (3, 6, 3, 20, 16, 1),  # one filled slot: most splits are empty
    (1, 4, 4, 9000, 16, 8500),  # a long buffer: 256-key splits, many of them merged
]


@pytest.mark.skipif(not RUNS_HERE, reason="needs CUDA + triton, or triton's interpreter (see the subprocess test)")
@pytest.mark.parametrize("case", CASES)
def test_flash_decode_matches_decode_attention(case):
    from hybrid_hf.modeling.attention_triton_decode import flash_decode

    b, hq, hkv, t, d, filled = case
    torch.manual_seed(0)
    q, k, v = (torch.randn(b, h, n, d, device=DEVICE) for h, n in ((hq, 1), (hkv, t), (hkv, t)))
    valid = torch.zeros(t, dtype=torch.bool, device=DEVICE)
    valid[torch.randperm(t, device=DEVICE)[:filled]] = True
    torch.testing.assert_close(flash_decode(q, k, v, valid, 0.25), decode_attention(q, k, v, valid, 0.25),
                               atol=1e-5, rtol=1e-5)
    if ON_GPU:  # bf16: within bf16 rounding of the fp32 reference
        ref = decode_attention(q, k, v, valid, 0.25)
        out = flash_decode(q.bfloat16(), k.bfloat16(), v.bfloat16(), valid, 0.25).float()
        assert (out - ref).abs().max().item() <= 2e-2


@pytest.mark.skipif(not RUNS_HERE, reason="needs CUDA + triton, or triton's interpreter (see the subprocess test)")
@pytest.mark.parametrize("pattern", ["SF", "FF"])
def test_generate_fast_with_triton_decode_matches_torch_decode(pattern):
    from conftest import tiny_model

    model = tiny_model(pattern).to(DEVICE)
    prompt = torch.randint(3, 128, (2, 11), device=DEVICE)
    seq, logits = generate_fast(model, prompt, 10, return_logits=True)
    seq_t, logits_t = generate_fast(model, prompt, 10, return_logits=True, decode_kernel="triton")
    assert torch.equal(seq, seq_t)
    assert (logits - logits_t).abs().max().item() <= 1e-4


@pytest.mark.skipif(ON_GPU or INTERPRET or not HAS_TRITON, reason="CPU run without the interpreter only")
def test_decode_kernel_in_triton_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-p", "no:cacheprovider", str(Path(__file__)),
         "-k", "matches", "--rootdir", str(Path(__file__).parents[2])],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert f"{len(CASES) + 2} passed" in result.stdout, result.stdout[-2000:]


def test_decode_kernel_choices_are_checked():
    from conftest import tiny_config

    with pytest.raises(ValueError, match="decode_kernel='flash'.*allowed: torch, triton"):
        HybridStaticCache(tiny_config(), 1, 16, "cpu", torch.float32, decode_kernel="flash")
    if not INTERPRET:
        with pytest.raises(ValueError, match="needs a CUDA device"):
            HybridStaticCache(tiny_config(), 1, 16, "cpu", torch.float32, decode_kernel="triton")
