"""Packed batches (position_ids restarting per document) give the same per-document loss as unpacked ones."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config, tiny_model

from hybrid_hf import HybridForCausalLM
from hybrid_hf.training import (
    IGNORE_INDEX,
    TokenBlockDataset,
    flatten_batch,
    pack_documents,
    per_document_loss,
    per_token_loss,
)

DOC_LENGTHS = (7, 13, 5, 20, 9)


def _docs(seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 128, (n,), generator=g).tolist() for n in DOC_LENGTHS]


def _model(pattern: str, impl: str, **overrides) -> HybridForCausalLM:
    if "L" in pattern:
        try:
            HybridForCausalLM(tiny_config(pattern, linear_attention_type="gated_deltanet"))
        except Exception as err:  # the recurrent mixers are added by separate work
            pytest.skip(f"pattern {pattern!r} cannot be built yet: {type(err).__name__}: {err}")
        return tiny_model(pattern, linear_attention_type="gated_deltanet", attn_implementation=impl, **overrides)
    return tiny_model(pattern, attn_implementation=impl, **overrides)


@torch.no_grad()
def _unpacked_losses(model, docs) -> list[float]:
    out = []
    for d in docs:
        ids = torch.tensor([d])
        out.append(float(per_token_loss(model(ids).logits, ids)[0, :-1].mean()))
    return out


# (attn_implementation, attention_kernel): "transformers" is the masking-utils path (the default on CPU); "sdpa" and
# "flex" are hybrid_hf's fused kernels (the default for training on CUDA), forced here so that they run on CPU too.
BACKENDS = [("eager", "transformers"), ("sdpa", "transformers"), ("sdpa", "sdpa"), ("sdpa", "flex")]


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("impl,kernel", BACKENDS)
@pytest.mark.parametrize("pattern", ["F", "SF", "LF"])
def test_flattened_batch_matches_unpacked_per_document(pattern, impl, kernel):
    model = _model(pattern, impl, attention_kernel=kernel)
    docs = _docs()
    batch = flatten_batch(docs)  # transformers.DataCollatorWithFlattening layout: one row, positions restart
    assert batch["input_ids"].shape == (1, sum(DOC_LENGTHS))
    packed = per_document_loss(model, batch)
    reference = _unpacked_losses(model, docs)
    assert len(packed) == len(docs)
    torch.testing.assert_close(torch.tensor(packed), torch.tensor(reference), atol=2e-5, rtol=0)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("kernel", ["transformers", "sdpa", "flex"])
@pytest.mark.parametrize("pattern", ["F", "SF", "LF"])
def test_packed_rows_match_unpacked_documents(pattern, kernel):
    """Several rows, documents cut at row boundaries: each piece scores as an independent document."""
    model = _model(pattern, "sdpa", attention_kernel=kernel)
    docs = _docs(1)
    rows = pack_documents(docs, 16)
    batch = {k: torch.tensor([r[k] for r in rows]) for k in rows[0]}
    packed = per_document_loss(model, batch)
    # The same pieces, each run alone.
    pieces = []
    for r in rows:
        pos = r["position_ids"]
        starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
        for a, b in zip(starts, starts[1:]):
            if r["labels"][a] == IGNORE_INDEX and all(t == 0 for t in r["input_ids"][a:b]):
                continue  # padding "document"
            pieces.append(r["input_ids"][a:b])
    reference = _unpacked_losses(model, [p for p in pieces if len(p) > 1])
    torch.testing.assert_close(torch.tensor(packed), torch.tensor(reference), atol=2e-5, rtol=0)


def test_pack_documents_layout():
    docs = [[10, 11, 12], [20, 21, 22, 23, 24], [30, 31]]
    rows = pack_documents(docs, 4)
    assert [r["input_ids"] for r in rows] == [[10, 11, 12, 20], [21, 22, 23, 24], [30, 31, 0, 0]]
    assert [r["position_ids"] for r in rows] == [[0, 1, 2, 0], [0, 1, 2, 3], [0, 1, 0, 1]]
    assert [r["labels"] for r in rows] == [
        [-100, 11, 12, -100],
        [-100, 22, 23, 24],
        [-100, 31, -100, -100],
    ]
    assert len(pack_documents(docs, 4, drop_last=True)) == 2
    plain = pack_documents(docs, 4, reset_positions=False, drop_last=True)
    assert [r["position_ids"] for r in plain] == [[0, 1, 2, 3]] * 2
    assert plain[1]["labels"] == [21, 22, 23, 24]
    ds = TokenBlockDataset(rows)
    assert len(ds) == 3 and ds[0]["input_ids"].dtype == torch.long
    with pytest.raises(ValueError, match="no rows"):
        TokenBlockDataset([])
