"""Training data in the paper's shape: natural text mixed with long documents that carry needles.

A batch row is either a *short document* (a window of packed natural text) or, with probability
``long_fraction``, a *long document*: a natural-text haystack with ``needles`` RULER-style needle sentences
("One of the special magic numbers for {key} is: {value}.") inserted at random positions, each queried once at a
random later position by the RULER query followed by the answer. The needle and query are tokenised exactly as
``hybrid_hf.evaluation.make_sample`` tokenises them, so a model trained here can be scored on its NIAH prompts with
``answer_ids``. Every batch is a pure function of ``(seed, step)``: resuming needs no data state, and all
architectures trained with one seed see the same rows in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..evaluation.tasks import ADJECTIVES, NEEDLE, NOUNS, QUERY

KEYS = tuple(f"{a}-{n}" for a in ADJECTIVES for n in NOUNS)


def tokenize_stream(tokenizer, documents: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """All ``documents`` tokenised and concatenated, each followed by eos, as one ``int32`` array."""
    out: list[int] = []
    for i in range(0, len(documents), batch_size):
        for ids in tokenizer(list(documents[i : i + batch_size]), add_special_tokens=False)["input_ids"]:
            out += ids + [tokenizer.eos_token_id]
    return np.asarray(out, dtype=np.int32)


def answer_ids(tokenizer, value: str) -> list[int]:
    """Token ids that answer a query for ``value``: a space, then the value tokenised on its own (the needle
    sentence holds the value's tokens after the space token that ends its prefix, so the answer is a copy)."""
    return list(tokenizer(" ", add_special_tokens=False)["input_ids"]) + \
        list(tokenizer(value, add_special_tokens=False)["input_ids"])


class NeedleMixture:
    """Batches of ``seq_len`` tokens: short documents (natural text) and long documents with needles.

    Args:
        tokenizer: A transformers tokenizer (e.g. from ``hybrid_hf.data.train_tokenizer``).
        stream: Natural text as one token array (``tokenize_stream``); the haystack and the short documents are
            windows of it at random offsets.
        seq_len: Tokens per row.
        needles: Needle/query pairs per long document.
        long_fraction: Probability that a row is a long document (the paper's 1:1 mix is 0.5).
        seed: Data seed; ``batch(step, n)`` depends only on ``(seed, step, n)``.
    """

    def __init__(self, tokenizer, stream: np.ndarray, seq_len: int, needles: int = 8, long_fraction: float = 0.5,
                 seed: int = 0) -> None:
        if seq_len < 16:
            raise ValueError(f"NeedleMixture: seq_len={seq_len} must be >= 16.")
        if len(stream) <= seq_len:
            raise ValueError(f"NeedleMixture: stream has {len(stream)} tokens; need more than seq_len={seq_len}.")
        if not 0.0 <= long_fraction <= 1.0:
            raise ValueError(f"NeedleMixture: long_fraction={long_fraction} must be in [0, 1].")
        if not 0 <= needles <= len(KEYS):
            raise ValueError(f"NeedleMixture: needles={needles} must be in [0, {len(KEYS)}].")
        self.tok, self.stream, self.seq_len = tokenizer, np.asarray(stream, dtype=np.int64), seq_len
        self.needles, self.long_fraction, self.seed = needles, long_fraction, seed
        self._cache: dict[str, list[int]] = {}
        self.max_special = max(len(self.needle_ids(k, "9999999")) + len(self.query_ids(k)) + 8 for k in KEYS)
        if needles and needles * self.max_special >= seq_len // 2:
            raise ValueError(f"NeedleMixture: {needles} needles of up to {self.max_special} tokens leave less than half "
                             f"of seq_len={seq_len} for the haystack; use fewer needles or longer rows.")

    def _enc(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = list(self.tok(text, add_special_tokens=False)["input_ids"])
        return self._cache[text]

    def needle_ids(self, key: str, value: str) -> list[int]:
        """The needle sentence, tokenised in the pieces ``make_sample`` uses (prefix, value, suffix)."""
        prefix, _, suffix = NEEDLE.format(key=key, value=value).partition(value)
        return self._enc(prefix) + list(self.tok(value, add_special_tokens=False)["input_ids"]) + self._enc(suffix)

    def query_ids(self, key: str) -> list[int]:
        return self._enc(" " + QUERY.format(key=key))

    def _haystack(self, rng: np.random.Generator, n: int) -> list[int]:
        start = int(rng.integers(0, len(self.stream) - n))
        return self.stream[start : start + n].tolist()

    def long_document(self, rng: np.random.Generator) -> tuple[list[int], list[tuple[int, int, int]]]:
        """Haystack + needles + (query, answer) pairs, exactly ``seq_len`` tokens; also, per answer, its token span
        ``[start, end)`` and the distance from its needle's first token to the answer's first token."""
        keys = [KEYS[i] for i in rng.choice(len(KEYS), size=self.needles, replace=False)]
        items = []
        for k in keys:
            value = str(int(rng.integers(10**6, 10**7)))
            answer = answer_ids(self.tok, value)
            items.append((self.needle_ids(k, value), self.query_ids(k), answer))
        special = sum(len(a) + len(b) + len(c) for a, b, c in items)
        n_hay = self.seq_len - special
        events = []  # (haystack offset, 0 = needle before 1 = query at the same offset, item index)
        for i in range(len(items)):
            a = int(rng.integers(0, n_hay))
            b = int(rng.integers(a, n_hay + 1))
            events += [(a, 0, i), (b, 1, i)]
        events.sort()
        hay = self._haystack(rng, n_hay)
        ids: list[int] = []
        needle_at: dict[int, int] = {}
        answers = []
        last = 0
        for pos, kind, i in events:
            ids += hay[last:pos]
            last = pos
            needle, query, answer = items[i]
            if kind == 0:
                needle_at[i] = len(ids)
                ids += needle
            else:
                ids += query
                answers.append((len(ids), len(ids) + len(answer), len(ids) - needle_at[i]))
                ids += answer
        return ids + hay[last:], answers

    def rows(self, step: int, batch_size: int) -> list[tuple[list[int], list[tuple[int, int, int]]]]:
        """The rows of ``batch(step, batch_size)`` with their answer spans (``long_document``'s; none for short
        documents). A pure function of ``(seed, step, batch_size)``."""
        rng = np.random.default_rng([self.seed, step])
        return [self.long_document(rng) if self.needles and rng.random() < self.long_fraction
                else (self._haystack(rng, self.seq_len), []) for _ in range(batch_size)]

    def batch(self, step: int, batch_size: int) -> torch.Tensor:
        """(batch_size, seq_len) int64 token ids for training step ``step``."""
        return torch.tensor([ids for ids, _ in self.rows(step, batch_size)], dtype=torch.long)

    def weighted_batch(self, step: int, batch_size: int, answer_weight: float) -> dict[str, torch.Tensor]:
        """``batch(step, batch_size)`` (same rows) as ``{"input_ids", "loss_weight"}`` for ``train_loop``.

        ``loss_weight`` (float32, shaped like ``input_ids``) is aligned with the tokens as *labels*, like the
        ``labels`` of a causal LM: ``loss_weight[b, t]`` weights the loss of predicting token ``t`` (made at
        position ``t - 1``); ``train_loop`` shifts it with the labels. It is ``answer_weight`` on every answer
        token (the spans ``[start, end)`` of ``long_document``) and 1 elsewhere.
        """
        if not answer_weight >= 0:
            raise ValueError(f"NeedleMixture: answer_weight={answer_weight} must be >= 0.")
        rows = self.rows(step, batch_size)
        weight = torch.ones(batch_size, self.seq_len, dtype=torch.float32)
        for b, (_, answers) in enumerate(rows):
            for start, end, _ in answers:
                weight[b, start:end] = answer_weight
        return {"input_ids": torch.tensor([ids for ids, _ in rows], dtype=torch.long), "loss_weight": weight}
