"""Long-context suite: deterministic generators, exact needle placement, scoring, tables, heatmap, binned loss."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from hybrid_hf.data import sample_documents, train_tokenizer
from hybrid_hf.evaluation import (
    TASKS,
    evaluate_samples,
    make_sample,
    make_suite,
    position_binned_loss,
    save_results,
    score_answer,
    summarize,
)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(sample_documents() * 2, vocab_size=300)


@pytest.mark.parametrize("task", TASKS)
def test_generators_are_deterministic_and_exact_length(tokenizer, task):
    a = make_sample(task, tokenizer, 400, 0.5, seed=3)
    b = make_sample(task, tokenizer, 400, 0.5, seed=3)
    c = make_sample(task, tokenizer, 400, 0.5, seed=4)
    assert a.input_ids == b.input_ids and a.answers == b.answers
    assert a.input_ids != c.input_ids
    assert a.length == len(a.input_ids) == 400
    # every answer value sits at its recorded token span
    text_at_spans = [tokenizer.decode(a.input_ids[s:e]) for s, e in a.needle_spans]
    for value in a.answers if task != "variable_tracking" else a.answers[:1]:
        assert any(value in t for t in text_at_spans) or task == "variable_tracking"


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_needle_placed_at_requested_depth(tokenizer, depth):
    s = make_sample("niah_single", tokenizer, 600, depth, seed=0)
    start, hay = s.meta["needle_start"], s.meta["haystack_tokens"]
    assert start == round(depth * hay)  # the needle block begins at `depth` of the haystack
    assert s.needle_spans[0][0] >= start
    assert tokenizer.decode(s.input_ids[s.needle_spans[0][0]:s.needle_spans[0][1]]).strip() == s.answers[0]
    needle_text = tokenizer.decode(s.input_ids[start:s.needle_spans[0][1]])
    assert needle_text.startswith("One of the special magic numbers for")


def test_natural_text_haystack(tokenizer):
    s = make_sample("niah_single", tokenizer, 500, 0.3, seed=1, haystack=sample_documents())
    text = tokenizer.decode(s.input_ids)
    assert "The grass is green" not in text and s.answers[0] in text


def test_too_short_and_bad_arguments(tokenizer):
    with pytest.raises(ValueError, match="length"):
        make_sample("niah_multikey", tokenizer, 20, 0.5, seed=0)
    with pytest.raises(ValueError, match="task"):
        make_sample("summarize", tokenizer, 200, 0.5, seed=0)
    with pytest.raises(ValueError, match="depth"):
        make_sample("passkey", tokenizer, 200, 1.5, seed=0)


def test_scoring_is_ruler_string_match():
    assert score_answer("the number is 1234567.", ["1234567"]) == 1.0
    assert score_answer("1234567 and 7654321", ["1234567", "1111111"]) == 0.5
    assert score_answer("nothing", ["1"]) == 0.0


def test_runner_records_window_membership_and_writes_outputs(tokenizer, tmp_path):
    model = tiny_model("SF", vocab_size=len(tokenizer), sliding_window=128)
    suite = make_suite(tokenizer, ["niah_single"], [200, 300], [0.0, 1.0], samples_per_cell=1)
    records = evaluate_samples(model, tokenizer, suite, max_new_tokens=3)
    assert len(records) == 4
    for r, s in zip(records, suite):
        assert r["within_window"] == (s.needle_distance() < 128)
    assert {r["within_window"] for r in records} == {False, True}  # depth 1.0 inside, 0.0 outside
    summary = summarize(records)
    assert set(summary["niah_single"]) == {"200", "300"}
    files = save_results(records, tmp_path)
    assert files["png"].stat().st_size > 1000 and "niah_single" in files["md"].read_text()


def test_position_binned_loss_shape():
    model = tiny_model("SF")
    ids = torch.randint(3, 128, (2, 64))
    bins = position_binned_loss(model, ids, 16)
    assert len(bins) == 4 and all(b > 0 for b in bins)
