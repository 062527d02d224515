"""One packed-document rule for every kernel: a document starts at each row start and wherever the position id is 0
(``hybrid_hf.modeling.masking``); positions that jump without restarting stay one document."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from hybrid_hf.modeling.masking import cu_seqlens_from_position_ids, document_ids_from_position_ids

KERNELS = [("transformers", "eager"), ("transformers", "sdpa"), ("sdpa", "sdpa"), ("flex", "sdpa")]


def test_rule_on_positions():
    jump = torch.tensor([[0, 1, 2, 5, 6]])
    restart = torch.tensor([[0, 1, 2, 0, 1]])
    assert cu_seqlens_from_position_ids(jump) is None
    assert cu_seqlens_from_position_ids(restart).tolist() == [0, 3, 5]
    assert document_ids_from_position_ids(jump).tolist() == [[0, 0, 0, 0, 0]]
    assert document_ids_from_position_ids(restart).tolist() == [[0, 0, 0, 1, 1]]


@pytest.mark.parametrize("pattern", ["SF", "LF"])
@pytest.mark.parametrize("kernel, implementation", KERNELS, ids=[f"{k}-{i}" for k, i in KERNELS])
def test_every_kernel_follows_the_rule(pattern, kernel, implementation):
    extra = {"linear_attention_type": "gated_deltanet"} if "L" in pattern else {}
    model = tiny_model(pattern, attention_kernel=kernel, **extra)
    model.set_attn_implementation(implementation)
    ids = torch.randint(3, 128, (1, 5))
    with torch.no_grad():
        jump = model(ids, position_ids=torch.tensor([[0, 1, 2, 5, 6]])).logits
        restart = model(ids, position_ids=torch.tensor([[0, 1, 2, 0, 1]])).logits
        first, second = model(ids[:, :3]).logits, model(ids[:, 3:]).logits
    torch.testing.assert_close(restart, torch.cat([first, second], 1), atol=1e-5, rtol=0)
    # one document: the tokens after the jump see the first three (their logits differ from the isolated run)
    torch.testing.assert_close(jump[:, :3], first, atol=1e-5, rtol=0)
    assert (jump[:, 3:] - second).abs().max() > 1e-3
    reference = tiny_model(pattern, attention_kernel="transformers", **extra)
    reference.set_attn_implementation("eager")
    with torch.no_grad():
        expected = reference(ids, position_ids=torch.tensor([[0, 1, 2, 5, 6]]), attention_mask=torch.ones(1, 5)).logits
    torch.testing.assert_close(jump, expected, atol=1e-5, rtol=0)  # an explicit mask disables packing detection
