"""Deterministic long-context tasks for any tokenizer: passkey, RULER-style NIAH variants, variable tracking.

Every sample is built at the token level (pieces are tokenised separately and concatenated), so its length is
exact and the needle's token span is known. The query ends with the answer prefix; the model must continue with
the answer. Each sample records the needle depth and its distance to the query token, from which the runner marks
whether the needle lay inside a sliding window.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

REPEATED_HAYSTACK = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
NEEDLE = "One of the special magic numbers for {key} is: {value}. "
QUERY = "What is the special magic number for {key} mentioned in the provided text? The special magic number for {key} is:"
ADJECTIVES = ["amber", "brave", "calm", "dusty", "eager", "fancy", "gentle", "hollow", "icy", "jolly", "kind", "lucky",
              "mellow", "noble", "odd", "proud", "quiet", "rapid", "silent", "tidy", "upbeat", "vivid", "wise", "young"]
NOUNS = ["apple", "bridge", "canyon", "dragon", "engine", "forest", "garden", "harbor", "island", "jacket", "kettle",
         "lantern", "meadow", "needle", "orchard", "pencil", "quartz", "river", "saddle", "tunnel", "umbrella",
         "valley", "window", "yacht"]
TASKS = ("passkey", "niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "variable_tracking")


@dataclass
class Sample:
    """One prompt; ``needle_spans`` are token index ranges [start, end) of the inserted needles' answer values."""

    task: str
    input_ids: list[int]
    answers: list[str]
    depth: float
    length: int
    needle_spans: list[tuple[int, int]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def query_position(self) -> int:
        return len(self.input_ids) - 1

    def needle_distance(self) -> int:
        """Tokens between the farthest needle value and the query position."""
        return self.query_position - min(s for s, _ in self.needle_spans) if self.needle_spans else 0


def _enc(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _key(rng: random.Random) -> str:
    return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"


def _value(rng: random.Random, digits: int = 7) -> str:
    return str(rng.randrange(10 ** (digits - 1), 10**digits))


def _haystack_ids(tokenizer, n_tokens: int, haystack: str | list[str], rng: random.Random) -> list[int]:
    if isinstance(haystack, str):
        unit = _enc(tokenizer, haystack)
        ids = (unit * (n_tokens // max(len(unit), 1) + 1))[:n_tokens]
        return ids
    ids: list[int] = []
    docs = list(haystack)
    start = rng.randrange(len(docs))
    i = 0
    while len(ids) < n_tokens:
        ids += _enc(tokenizer, docs[(start + i) % len(docs)] + " ")
        i += 1
    return ids[:n_tokens]


def _assemble(tokenizer, length: int, depth: float, needles: list[tuple[str, str]], query: str,
              haystack: str | list[str], rng: random.Random) -> tuple[list[int], list[tuple[int, int]], dict[str, int]]:
    """Insert needles (text, value) at ``depth`` of a haystack so the whole prompt has exactly ``length`` tokens;
    returns ids, the token spans of each needle's value, and where the needle block starts."""
    query_ids = _enc(tokenizer, " " + query)
    pieces = []
    for text, value in needles:
        prefix, _, suffix = text.partition(value)
        pieces.append((_enc(tokenizer, prefix), _enc(tokenizer, value), _enc(tokenizer, suffix)))
    needle_len = sum(len(a) + len(b) + len(c) for a, b, c in pieces)
    n_hay = length - needle_len - len(query_ids)
    if n_hay < 1:
        raise ValueError(f"length={length} is too short for the needles and the query ({needle_len + len(query_ids)} tokens)")
    hay = _haystack_ids(tokenizer, n_hay, haystack, rng)
    insert_at = int(round(depth * n_hay))
    ids = hay[:insert_at]
    spans = []
    for prefix, value, suffix in pieces:
        ids += prefix
        spans.append((len(ids), len(ids) + len(value)))
        ids += value + suffix
    ids += hay[insert_at:] + query_ids
    return ids, spans, {"haystack_tokens": n_hay, "needle_start": insert_at}


def make_sample(task: str, tokenizer, length: int, depth: float, seed: int,
                haystack: str | list[str] = REPEATED_HAYSTACK, num_needles: int = 4) -> Sample:
    """Build one sample of ``task`` (one of ``TASKS``) with exactly ``length`` tokens, needles at ``depth``."""
    if task not in TASKS:
        raise ValueError(f"task={task!r}; allowed: {', '.join(TASKS)}")
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth={depth}; allowed: a float in [0, 1]")
    rng = random.Random(f"{task}-{length}-{depth}-{seed}")
    keys = []
    while len(keys) < num_needles:
        k = _key(rng)
        if k not in keys:
            keys.append(k)
    if task == "passkey":
        value = _value(rng, 5)
        needle = f"The pass key is {value}. Remember it. {value} is the pass key. "
        needles = [(needle, value)]
        query = "What is the pass key? The pass key is"
        answers = [value]
    elif task == "niah_single":
        value = _value(rng)
        needles = [(NEEDLE.format(key=keys[0], value=value), value)]
        query, answers = QUERY.format(key=keys[0]), [value]
    elif task == "niah_multikey":  # distractor needles with other keys
        values = [_value(rng) for _ in keys]
        needles = [(NEEDLE.format(key=k, value=v), v) for k, v in zip(keys, values)]
        rng.shuffle(needles)
        query, answers = QUERY.format(key=keys[0]), [values[0]]
    elif task == "niah_multivalue":  # several values for the same key, all must be produced
        values = [_value(rng) for _ in range(num_needles)]
        needles = [(NEEDLE.format(key=keys[0], value=v), v) for v in values]
        query = f"What are all the special magic numbers for {keys[0]} mentioned in the provided text? " \
                f"The special magic numbers for {keys[0]} are:"
        answers = values
    elif task == "niah_multiquery":  # several keys asked at once
        values = [_value(rng) for _ in keys[:2]]
        needles = [(NEEDLE.format(key=k, value=v), v) for k, v in zip(keys[:2], values)]
        query = f"What are the special magic numbers for {keys[0]} and {keys[1]} mentioned in the provided text? " \
                f"The special magic numbers for {keys[0]} and {keys[1]} are:"
        answers = values
    else:  # variable_tracking: a chain of assignments, find every name bound to the value
        value = _value(rng, 5)
        names = ["".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5)) for _ in range(num_needles)]
        chain = [(f"VAR {names[0]} = {value}. ", value)]
        chain += [(f"VAR {names[i]} = VAR {names[i - 1]}. ", names[i]) for i in range(1, num_needles)]
        needles = chain
        query = f"Find all variables that are assigned the value {value} in the text above. Answer:"
        answers = names
    ids, spans, where = _assemble(tokenizer, length, depth, needles, query, haystack, rng)
    return Sample(task=task, input_ids=ids, answers=answers, depth=depth, length=len(ids), needle_spans=spans,
                  meta={"keys": keys[:2], **where})


def make_suite(tokenizer, tasks: list[str], lengths: list[int], depths: list[float], samples_per_cell: int,
               seed: int = 0, haystack: str | list[str] = REPEATED_HAYSTACK) -> list[Sample]:
    """All samples of a length x depth grid, deterministic by ``seed``."""
    return [make_sample(t, tokenizer, n, d, seed * 100_003 + i, haystack)
            for t in tasks for n in lengths for d in depths for i in range(samples_per_cell)]
