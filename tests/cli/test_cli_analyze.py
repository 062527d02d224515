"""``hybrid-hf analyze``: every analysis runs end to end on a tiny random model."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_model

from hybrid_hf.cli.main import main
from hybrid_hf.data import sample_documents, train_tokenizer


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze")
    tok = train_tokenizer(sample_documents(), vocab_size=300)
    paths = []
    for seed in (0, 1):
        path = root / f"ckpt{seed}"
        tiny_model("SF", seed=seed, vocab_size=len(tok), sliding_window=16, max_position_embeddings=1024).save_pretrained(path)
        tok.save_pretrained(path)
        paths.append(str(path))
    return root, paths


def _run(args, tmp_path, capsys):
    out = tmp_path / "out.json"
    assert main(args + ["--output", str(out)]) == 0
    capsys.readouterr()
    return json.loads(out.read_text())


def test_analyze_niah_and_cap(folders, tmp_path, capsys):
    _, (a, _) = folders
    res = _run(["analyze", "niah", a, "--lengths", "160", "--depths", "0", "1", "--samples", "1",
                "--out", str(tmp_path / "niah")], tmp_path, capsys)
    assert "niah_single" in res["summary"] and (tmp_path / "niah" / "longctx.png").exists()
    res = _run(["analyze", "longctx", a, "--tasks", "passkey", "variable_tracking", "--lengths", "160", "--depths",
                "0.5", "--samples", "1", "--out", str(tmp_path / "suite")], tmp_path, capsys)
    assert set(res["summary"]) == {"passkey", "variable_tracking"}
    res = _run(["analyze", "cap", a, "--full-window", "8", "--sinks", "1", "--lengths", "160", "--samples", "1"],
               tmp_path, capsys)
    assert set(res) >= {"uncapped", "capped"}


def test_analyze_heads_entropy_trace_distance(folders, tmp_path, capsys):
    _, (a, b) = folders
    res = _run(["analyze", "retrieval-heads", a, "--length", "160", "--samples", "2", "--copy-paste"], tmp_path, capsys)
    assert len(res["scores"]) == 4 and len(res["top_heads"]) == 4 and "copy_paste" in res
    res = _run(["analyze", "entropy", a, "--length", "160", "--samples", "2"], tmp_path, capsys)
    assert all(0 <= v <= 1.0001 for row in res["entropy"] for v in row)
    res = _run(["analyze", "trace", b, a, "--length", "160", "--samples", "2", "--threshold", "0", "--steps", "100",
                "200", "--plot", str(tmp_path / "trace.png")], tmp_path, capsys)
    assert res["steps"] == [100, 200] and len(res["curves"]) == 4
    assert set(res["first_step_above"].values()) == {100} and (tmp_path / "trace.png").stat().st_size > 1000
    res = _run(["analyze", "weight-distance", b, "--reference", a], tmp_path, capsys)
    assert len(res["layers"]) == 4 and all(r["qk_l2"] > 0 for r in res["layers"])


def test_analyze_probe_gradient_scaling(folders, tmp_path, capsys):
    _, (a, _) = folders
    res = _run(["analyze", "probe", a, "--length", "200", "--samples", "40", "--classes", "2"], tmp_path, capsys)
    assert len(res["accuracy_per_layer"]) == 5
    res = _run(["analyze", "gradient-influence", a, "--length", "160", "--samples", "1", "--distances", "1", "100"],
               tmp_path, capsys)
    assert set(res["influence"]) == {"1", "100"}
    table = tmp_path / "fit.tsv"
    rows = ["N\tD\tL"] + [f"{n}\t{n * m}\t{30 * n ** -0.25 + 400 * (n * m) ** -0.3}"
                          for n in (1e7, 2e7, 4e7, 8e7) for m in (100, 300, 1000)]
    table.write_text("\n".join(rows))
    res = _run(["analyze", "scaling-fit", str(table), "--holdout-n", "8e7"], tmp_path, capsys)
    assert abs(res["alpha"] - 0.25) < 0.05 and res["r2_holdout"] > 0.9


def test_analyze_help_lists_every_analysis(capsys):
    with pytest.raises(SystemExit):
        main(["analyze", "--help"])
    text = capsys.readouterr().out
    for name in ("niah", "retrieval-heads", "trace", "entropy", "weight-distance", "probe", "gradient-influence",
                 "cap", "scaling-fit"):
        assert name in text
