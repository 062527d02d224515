"""Packed batches: several documents per row, kept apart by ``position_ids`` that restart at 0 for each document.

transformers' masking utilities (and hybrid_hf's fused kernels) recognise packing from such ``position_ids`` when
``attention_mask`` is None and confine full and sliding attention to each document; recurrent mixers read the same
boundaries. The label of the
first token of every document is -100, as ``DataCollatorWithFlattening`` does, so no document is scored on
predicting its first token from the previous one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch.utils.data import Dataset
from transformers import DataCollatorWithFlattening, PreTrainedTokenizerBase

from ..modeling.loss import IGNORE_INDEX, shift_labels, token_losses
from ..modeling.masking import document_ids_from_position_ids


def tokenize_documents(
    tokenizer: PreTrainedTokenizerBase,
    documents: Iterable[str],
    *,
    add_eos: bool = True,
    max_length: int | None = None,
) -> list[list[int]]:
    """Token ids of each non-empty document, optionally ending in ``eos`` and truncated to ``max_length``."""
    eos = tokenizer.eos_token_id
    out = []
    for doc in documents:
        if not doc.strip():
            continue
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
        if add_eos and eos is not None:
            ids = [*ids, eos]
        out.append(ids[:max_length] if max_length else ids)
    return out


def pack_documents(
    token_lists: Sequence[Sequence[int]],
    block_size: int,
    *,
    reset_positions: bool = True,
    pad_token_id: int = 0,
    drop_last: bool = False,
) -> list[dict[str, list[int]]]:
    """Concatenate documents and cut the stream into rows of ``block_size`` tokens.

    With ``reset_positions`` every document (or piece of one) restarts ``position_ids`` at 0, and the first label of
    each document is ignored; without it rows are plain contiguous text (``run_clm``'s ``group_texts``). The last
    partial row is dropped (``drop_last``) or padded with a pad "document" that is ignored by the loss.

    Returns:
        Rows with ``input_ids``, ``position_ids`` and ``labels``, each a list of ``block_size`` ints.
    """
    if block_size < 2:
        raise ValueError(f"pack_documents: block_size={block_size} must be at least 2.")
    ids: list[int] = []
    starts: list[bool] = []
    for doc in token_lists:
        ids.extend(doc)
        starts.extend(i == 0 for i in range(len(doc)))
    rows = []
    for begin in range(0, len(ids), block_size):
        row_ids = ids[begin : begin + block_size]
        if reset_positions:
            # A document cut by the row boundary continues as a new sequence starting at position 0.
            row_pos, row_labels, p = [], [], 0
            for k, (tok, first) in enumerate(zip(row_ids, starts[begin : begin + block_size])):
                p = 0 if (k == 0 or first) else p + 1
                row_pos.append(p)
                row_labels.append(IGNORE_INDEX if p == 0 else tok)
        else:
            row_pos, row_labels = list(range(len(row_ids))), list(row_ids)
        missing = block_size - len(row_ids)
        if missing:
            if drop_last and rows:
                break
            row_ids = row_ids + [pad_token_id] * missing
            row_pos += list(range(missing))
            row_labels += [IGNORE_INDEX] * missing
        rows.append({"input_ids": row_ids, "position_ids": row_pos, "labels": row_labels})
    return rows


class TokenBlockDataset(Dataset):
    """A list of equally long rows (as from ``pack_documents``) served as tensors to ``Trainer``."""

    def __init__(self, rows: Sequence[dict[str, list[int]]]) -> None:
        if not rows:
            raise ValueError("TokenBlockDataset: no rows; is the text empty or shorter than one block?")
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: torch.tensor(v, dtype=torch.long) for k, v in self.rows[i].items()}


def flatten_batch(token_lists: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
    """One packed row from whole documents, exactly as ``transformers.DataCollatorWithFlattening`` builds it."""
    collator = DataCollatorWithFlattening(return_tensors="pt")
    return collator([{"input_ids": list(t)} for t in token_lists])


def sequence_ids_from_positions(position_ids: torch.Tensor) -> torch.Tensor:
    """Index of the document each token belongs to, per row, by the model's one packed-document rule (a document
    starts at the row start and wherever the position id is 0; ``hybrid_hf.modeling.masking``)."""
    return document_ids_from_position_ids(position_ids)


@torch.no_grad()
def per_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each position predicting the next label (shape of ``labels``; 0 where ignored)."""
    return token_losses(logits, labels, IGNORE_INDEX)


@torch.no_grad()
def per_document_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> list[float]:
    """Mean next-token loss of every document of a packed batch (in row-major order of appearance)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits
    labels = batch["labels"]
    losses = per_token_loss(logits, labels)
    counted = shift_labels(labels, IGNORE_INDEX) != IGNORE_INDEX
    seq = sequence_ids_from_positions(batch["position_ids"])
    out = []
    for r in range(labels.shape[0]):
        for s in seq[r].unique(sorted=True):
            # The loss at position t predicts token t+1, which belongs to the same document when it is counted.
            sel = (seq[r] == s) & counted[r]
            if sel.any():
                out.append(float(losses[r][sel].mean()))
    return out
