"""The reproduction pipeline end to end on CPU (tiny models), the mixture, and the resumable loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("scipy")
pytest.importorskip("matplotlib")

from hybrid_hf import HybridForCausalLM  # noqa: E402
from hybrid_hf.data import NeedleMixture  # noqa: E402
from hybrid_hf.reproduction import load_runs, model_config, prepare, run_arm, settings_for, write_report  # noqa: E402
from hybrid_hf.training import LoopConfig, train_loop  # noqa: E402


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    return work, prepare(work, settings_for("smoke"))


def test_mixture_rows_and_answer_spans(prepared):
    _, prep = prepared
    s = settings_for("smoke")
    mix = NeedleMixture(prep.tokenizer, prep.train_stream, s.seq_len, needles=2, seed=3)
    b1, b2 = mix.batch(5, 4), mix.batch(5, 4)
    assert b1.shape == (4, s.seq_len) and torch.equal(b1, b2)  # a pure function of (seed, step)
    assert not torch.equal(b1, mix.batch(6, 4))
    ids, answers = mix.long_document(np.random.default_rng(0))
    assert len(ids) == s.seq_len and len(answers) == 2
    for start, end, dist in answers:
        needle_value = ids[start - dist : start - dist + 64]
        assert all(t in needle_value for t in ids[start:end])  # the answer's tokens are in its needle sentence
    assert prep.info["overlap_held_out_train"] == 0


def test_loop_resume_matches_a_straight_run(prepared, tmp_path):
    _, prep = prepared
    s = settings_for("smoke")
    mix = NeedleMixture(prep.tokenizer, prep.train_stream, s.seq_len, needles=2)

    def fresh():
        torch.manual_seed(0)
        return HybridForCausalLM(model_config("swa128", s, len(prep.tokenizer)))

    def evaluate(model, step):
        return {"p0": float(next(model.parameters()).flatten()[0])}

    straight = fresh()
    full = train_loop(straight, lambda st: mix.batch(st, 2), LoopConfig(steps=4, warmup=1, eval_steps=[2, 4]), evaluate)
    first = fresh()
    ckpt = tmp_path / "run.pt"
    part = train_loop(first, lambda st: mix.batch(st, 2), LoopConfig(steps=2, warmup=1, eval_steps=[2]), evaluate, ckpt)
    assert part.step == 2 and ckpt.exists()
    resumed = fresh()
    rest = train_loop(resumed, lambda st: mix.batch(st, 2), LoopConfig(steps=4, warmup=1, eval_steps=[2, 4]), evaluate,
                      ckpt, resume=True)
    assert rest.step == 4 and [h["step"] for h in rest.history] == [2, 4]
    for a, b in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b)
    assert full.history[-1]["p0"] == pytest.approx(rest.history[-1]["p0"])


def test_pipeline_smoke(prepared, tmp_path):
    """Every arm but gdn x 2 seeds, tiny and few steps, then the claim report with its tests and plots."""
    work, _ = prepared
    s = settings_for("smoke", steps=3, eval_every=3, length_multiples=(1, 2))
    for arm in ("full", "swa128", "swa512", "swa2048", "swa128-nope"):
        for seed in (0, 1):
            run_arm(arm, seed, work, s, tmp_path / "runs" / f"{arm}-{seed}.json")
    runs = load_runs([tmp_path / "runs"])
    assert len(runs) == 10 and all(r["steps_done"] == 3 for r in runs)
    assert [h["step"] for h in runs[0]["curve"]] == [0, 3]
    res = write_report(runs, tmp_path / "report", commands=["test"])
    for name in ("report.md", "analysis.json", "runs.jsonl", "emergence.png", "length.png"):
        assert (tmp_path / "report" / name).exists()
    assert res["laziness"]["arms"] == ["swa128", "swa512", "swa2048"]
    assert "trend" in res["laziness"]["auc_niah"]
    assert set(res["nope"]["by_length"]) == {str(s.seq_len), str(2 * s.seq_len)}
    assert "verdict" in res["convergence"]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "(a) Large-Window Laziness" in text and "(b) NoPE gain" in text


def test_windows_keep_the_paper_ratios():
    s = settings_for("main")
    assert [s.window(a) for a in ("swa128", "swa512", "swa2048", "full")] == [32, 128, 512, None]
    with pytest.raises(ValueError, match="size"):
        settings_for("main", size="huge")
    with pytest.raises(ValueError, match="arm"):
        model_config("swa64", s, 100)
