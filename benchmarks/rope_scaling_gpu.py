"""GPU check of RoPE scaling in the CUDA-graph decode path (``generate_fast``), which the CPU tests cannot capture.

For plain RoPE (control), every length-dependent rope_type (``dynamic``, ``longrope``) and one static one (``yarn``), a small SF hybrid
decodes past ``max_position_embeddings`` with ``generate_fast`` (decode step captured as a CUDA graph, eager and
compiled) and with ``model.generate`` (DynamicCache); tokens must be equal and logits close. Prints one JSON line per
case and exits non-zero on a mismatch.

    python benchmarks/rope_scaling_gpu.py        # about 1-2 minutes on one H200 (mostly torch.compile)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybrid_hf import HybridConfig, HybridForCausalLM  # noqa: E402
from hybrid_hf.generation import generate_fast  # noqa: E402

MAX_POS, ORIGINAL, HEAD_DIM = 256, 64, 64
CASES = {
    "default": None,  # control: plain RoPE, so a gap seen for the scaled kinds can be told from the decode path's own
    "dynamic": {"rope_type": "dynamic", "factor": 4.0},
    "longrope": {
        "rope_type": "longrope", "original_max_position_embeddings": ORIGINAL,
        "short_factor": [1.0 + 0.02 * i for i in range(HEAD_DIM // 2)],
        "long_factor": [1.0 + 0.2 * i for i in range(HEAD_DIM // 2)],
    },
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL},
}


def main() -> int:
    if not torch.cuda.is_available():
        print("needs a CUDA device", file=sys.stderr)
        return 2
    failed = False
    for name, rope_parameters in CASES.items():
        config = HybridConfig(
            vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
            layer_pattern="SF", sliding_window=32, max_position_embeddings=MAX_POS, rope_parameters=rope_parameters,
            sliding_rope_theta=1000.0,
        )
        torch.manual_seed(0)
        model = HybridForCausalLM(config).cuda().eval()
        prompt = torch.randint(3, 512, (2, ORIGINAL // 2), device="cuda")
        new = MAX_POS  # crosses original_max_position_embeddings and max_position_embeddings
        with torch.no_grad():
            ref = model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0,
                                 output_logits=True, return_dict_in_generate=True)
        ref_logits = torch.stack(ref.logits, dim=1)
        for compile_ in (False, True):
            seq, logits = generate_fast(model, prompt, new, compile=compile_, return_logits=True)
            n = logits.shape[1]
            same_tokens = bool(torch.equal(seq, ref.sequences))
            err = (logits.float() - ref_logits[:, :n].float()).abs().max().item()
            ok = same_tokens and err <= 2e-3
            failed |= not ok
            print(json.dumps({"rope_type": name, "compile": compile_, "cuda_graph": True, "same_tokens": same_tokens,
                              "max_logit_diff": err, "ok": ok}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
