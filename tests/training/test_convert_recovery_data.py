"""benchmarks/convert_recovery.py: its training rows hold the evaluation's NIAH prompts followed by their answer."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from hybrid_hf.data import build_corpus, tokenize_stream, train_tokenizer

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "convert_recovery.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("convert_recovery", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    docs = build_corpus(max_chars=60_000)
    tokenizer = train_tokenizer(docs, vocab_size=512)
    haystack = [d[i : i + 1000] for d in docs for i in range(0, len(d), 1000)]
    module.WORKER.update(tokenizer=tokenizer, haystack=haystack, stream=tokenize_stream(tokenizer, docs), block=192,
                         lengths=[176], min_length=128)
    return module


def test_rows_hold_eval_prompts_and_answers(bench):
    tok = bench.WORKER["tokenizer"]
    bench.check_format(tok, bench.WORKER["haystack"], [176])
    rows = bench.build_rows(6, seed=1, needle_fraction=1.0, workers=1, chunk=4)
    assert rows["input_ids"].shape == (6, 192) and rows["answer"].any(1).all()
    for ids, pos, labels, answer in zip(rows["input_ids"], rows["position_ids"], rows["labels"], rows["answer"]):
        starts = [i for i in range(len(ids)) if pos[i] == 0]
        assert all(labels[i] == -100 for i in starts)
        first = ids[: starts[1]].tolist() if len(starts) > 1 else ids.tolist()
        span = [i for i in range(len(first)) if answer[i]]
        prompt, value = first[: span[0]], tok.decode(first[span[0] : span[-1] + 1]).strip()
        assert first[span[-1] + 1] == tok.eos_token_id
        # the prompt is the evaluation's prompt for that value: the needle's value tokens are the answer's copy
        assert value.isdigit() and tok.decode(prompt).count(value) >= 1
        text = tok.decode(prompt)
        key = re.search(r"The special magic number for (\S+) is:$", text)
        if key:  # niah_single
            assert f"One of the special magic numbers for {key.group(1)} is: {value}. " in text
        else:
            assert text.endswith(" What is the pass key? The pass key is") and f"The pass key is {value}. " in text
