"""Bad ``hybrid-hf`` invocations: each exits non-zero with one ``hybrid-hf CMD: error: ...`` line naming the option and
what is allowed, and no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_model

from hybrid_hf.cli.main import main
from hybrid_hf.data import sample_documents, train_tokenizer


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cli_errors")
    tok = train_tokenizer(sample_documents(), vocab_size=300)
    model = root / "model"
    tiny_model("SF", vocab_size=320, max_position_embeddings=256).save_pretrained(model)
    tok.save_pretrained(model)
    # Same weights, config edited afterwards: hidden_size no longer matches.
    bad = root / "bad_model"
    tiny_model("SF", vocab_size=320).save_pretrained(bad)
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "hidden_size": 96}))
    tok.save_pretrained(bad)
    contents = {
        "docs.txt": "first document\n\nsecond document\n",
        "one.txt": "a single document\n",
        "empty.txt": "",
        "blank.jsonl": '{"text": ""}\n{"text": "   "}\n',
        "null.jsonl": '{"text": "fine"}\n{"text": null}\n',
        "number.jsonl": '{"text": 5}\n',
        "nofield.jsonl": '{"body": "x"}\n',
        "broken.jsonl": '{"text": "x"\n',
        "list.jsonl": '["text"]\n',
        "latin1.txt": b"caf\xe9\n",
        "bad.json": "{not json",
        "bad.tsv": "N\tD\tL\n1e7\tabc\t3.0\n",
        "fit.tsv": "N\tD\tL\n" + "\n".join(f"{n}\t{n * m}\t{3 + n ** -0.2}" for n in (1e7, 2e7) for m in (10, 20, 30)),
    }
    out = {"model": str(model), "bad_model": str(bad), "root": str(root)}
    for name, text in contents.items():
        path = root / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        out[name] = str(path)
    (root / "full").mkdir()
    (root / "full" / "x").write_text("x")
    out["full"] = str(root / "full")
    return out


def _train(f, *extra):
    return ["train", f["model"], "--data", f["docs.txt"], "--output-dir", f["root"] + "/run", *extra]


def _init(f, *extra):
    return ["init", f["root"] + "/new", "--size", "tiny", "--vocab-size", "300", "--tokenizer-corpus", f["docs.txt"],
            *extra]


# (name, argv builder, fragments the error line must contain)
CASES = [
    # train: numeric ranges
    ("max-steps-0", lambda f: _train(f, "--max-steps", "0"), ["argument --max-steps", "'0'", "-1", "positive integer"]),
    ("eval-fraction-1.5", lambda f: _train(f, "--eval-fraction", "1.5"), ["argument --eval-fraction", "[0, 1)"]),
    ("eval-fraction-neg", lambda f: _train(f, "--eval-fraction", "-0.5"), ["argument --eval-fraction", "[0, 1)"]),
    ("save-steps-0", lambda f: _train(f, "--save-steps", "0"), ["argument --save-steps", "positive integer"]),
    ("logging-steps-neg", lambda f: _train(f, "--logging-steps", "-3"), ["argument --logging-steps"]),
    ("block-size-1", lambda f: _train(f, "--block-size", "1"), ["argument --block-size", ">= 2"]),
    ("batch-size-text", lambda f: _train(f, "--batch-size", "eight"), ["argument --batch-size", "'eight'"]),
    ("lr-nan", lambda f: _train(f, "--lr", "nan"), ["argument --lr", "positive number"]),
    ("lr-zero", lambda f: _train(f, "--lr", "0"), ["argument --lr", "positive number"]),
    ("epochs-neg", lambda f: _train(f, "--epochs", "-1"), ["argument --epochs"]),
    ("warmup-neg", lambda f: _train(f, "--warmup-steps", "-1"), ["argument --warmup-steps", "non-negative"]),
    ("seed-neg", lambda f: _train(f, "--seed", "-1"), ["argument --seed"]),
    ("lora-dropout-1", lambda f: _train(f, "--lora", "--lora-dropout", "1"), ["argument --lora-dropout", "[0, 1)"]),
    ("lora-targets-empty", lambda f: _train(f, "--lora", "--lora-targets", "q_proj,,v_proj"), ["--lora-targets"]),
    ("scheduler", lambda f: _train(f, "--scheduler", "cosnie"), ["argument --scheduler", "invalid choice", "cosine"]),
    # train: files, data and combinations
    ("model-missing", lambda f: ["train", f["root"] + "/nope", "--data", f["docs.txt"], "--output-dir", "x"],
     ["argument MODEL_DIR", "not an existing model folder"]),
    ("model-no-config", lambda f: ["train", f["full"], "--data", f["docs.txt"], "--output-dir", "x"],
     ["argument MODEL_DIR", "no config.json"]),
    ("data-missing", lambda f: ["train", f["model"], "--data", f["root"] + "/nope.txt", "--output-dir", "x"],
     ["argument --data", "not an existing file"]),
    ("output-dir-file", lambda f: ["train", f["model"], "--data", f["docs.txt"], "--output-dir", f["docs.txt"]],
     ["argument --output-dir", "not a folder"]),
    ("resume-missing", lambda f: _train(f, "--resume", f["root"] + "/nope"), ["argument --resume"]),
    ("jsonl-null", lambda f: _train(f)[:2] + ["--data", f["null.jsonl"], "--output-dir", "x"],
     ["--data", "line 2", "'text' is null", "allowed: a string"]),
    ("jsonl-number", lambda f: _train(f)[:2] + ["--data", f["number.jsonl"], "--output-dir", "x"],
     ["--data", "line 1", "'text' is 5"]),
    ("jsonl-no-field", lambda f: _train(f)[:2] + ["--data", f["nofield.jsonl"], "--output-dir", "x"],
     ["--data", "no field 'text'", "body"]),
    ("jsonl-broken", lambda f: _train(f)[:2] + ["--data", f["broken.jsonl"], "--output-dir", "x"],
     ["--data", "line 1", "not valid JSON"]),
    ("jsonl-list", lambda f: _train(f)[:2] + ["--data", f["list.jsonl"], "--output-dir", "x"],
     ["--data", "not a JSON object"]),
    ("jsonl-blank", lambda f: _train(f)[:2] + ["--data", f["blank.jsonl"], "--output-dir", "x"],
     ["--data", "no documents"]),
    ("text-empty", lambda f: _train(f)[:2] + ["--data", f["empty.txt"], "--output-dir", "x"], ["--data", "no documents"]),
    ("text-not-utf8", lambda f: _train(f)[:2] + ["--data", f["latin1.txt"], "--output-dir", "x"],
     ["--data", "not UTF-8"]),
    ("eval-data-and-fraction", lambda f: _train(f, "--eval-data", f["docs.txt"], "--eval-fraction", "0.1"),
     ["--eval-fraction", "not allowed with argument --eval-data"]),
    ("eval-fraction-one-doc", lambda f: _train(f)[:2] + ["--data", f["one.txt"], "--output-dir", "x",
                                                        "--eval-fraction", "0.5"], ["--eval-fraction", "2 documents"]),
    ("eval-steps-no-eval", lambda f: _train(f, "--eval-steps", "5"), ["--eval-steps", "--eval-data"]),
    ("lora-options-without-lora", lambda f: _train(f, "--lora-r", "4"), ["--lora-r", "only apply with --lora"]),
    ("block-size-beyond-context", lambda f: _train(f, "--block-size", "4096"),
     ["--block-size 4096", "max_position_embeddings=256"]),
    # init
    ("set-unknown-field", lambda f: _init(f, "--set", "slidng_window=64"),
     ["argument --set", "unknown HybridConfig field 'slidng_window'", "did you mean 'sliding_window'"]),
    ("set-bool-word", lambda f: _init(f, "--set", "use_qk_norm=yes"),
     ["argument --set", "use_qk_norm='yes'", "true or false"]),
    ("set-int-text", lambda f: _init(f, "--set", "sliding_window=big"), ["argument --set", "an integer"]),
    ("set-no-equals", lambda f: _init(f, "--set", "sliding_window"), ["argument --set", "KEY=VALUE"]),
    ("set-invalid-config", lambda f: _init(f, "--set", "sliding_window=-3"),
     ["HybridConfig", "sliding_window", "allowed: None or an integer in [1, "]),
    ("set-vocab-too-small", lambda f: ["init", f["root"] + "/new", "--size", "tiny", "--tokenizer", f["model"],
                                       "--set", "vocab_size=10"], ["vocab_size=10", "smaller than the tokenizer"]),
    ("max-position-embeddings-neg", lambda f: _init(f, "--max-position-embeddings", "-1"),
     ["argument --max-position-embeddings", "positive integer"]),
    ("vocab-size-small", lambda f: _init(f, "--vocab-size", "100"), ["argument --vocab-size", ">= 259"]),
    ("tokenizer-corpus-empty", lambda f: ["init", f["root"] + "/new", "--size", "tiny", "--tokenizer-corpus",
                                          f["empty.txt"]], ["--tokenizer-corpus", "no documents"]),
    ("tokenizer-and-corpus", lambda f: _init(f, "--tokenizer", f["model"]), ["not allowed with argument"]),
    ("init-not-empty", lambda f: ["init", f["full"], "--size", "tiny", "--tokenizer", f["model"]],
     ["is not empty", "--overwrite"]),
    ("preset-unknown", lambda f: _init(f, "--preset", "swa64"), ["argument --preset", "invalid choice"]),
    # push / card
    ("push-bad-repo-id", lambda f: ["push", f["model"], "bad id"],
     ["argument REPO_ID", "invalid Hub repository id 'bad id'", "namespace/name"]),
    ("push-repo-id-3-parts", lambda f: ["push", f["model"], "a/b/c"], ["invalid Hub repository id 'a/b/c'"]),
    ("push-prepare-only", lambda f: ["push", f["model"], "me/x", "--prepare-only"], ["--prepare-only needs --output-dir"]),
    ("card-repo-id", lambda f: ["card", f["model"], "--repo-id", "me/x..y", "--output", "-"], ["argument --repo-id"]),
    ("card-dataset-id", lambda f: ["card", f["model"], "--dataset", "no spaces/ok", "--output", "-"],
     ["argument --dataset"]),
    ("card-eval-json", lambda f: ["card", f["model"], "--eval-results", f["bad.json"], "--output", "-"],
     ["bad.json", "not valid JSON"]),
    ("card-training-file", lambda f: ["card", f["model"], "--training-data", "@/nope.md"],
     ["argument --training-data", "no such file"]),
    # eval
    ("eval-batch-0", lambda f: ["eval", f["model"], "--data", f["docs.txt"], "--batch-size", "0"],
     ["argument --batch-size"]),
    ("eval-device", lambda f: ["eval", f["model"], "--data", f["docs.txt"], "--device", "toaster"],
     ["argument --device", "torch device"]),
    ("eval-max-documents-0", lambda f: ["eval", f["model"], "--data", f["docs.txt"], "--max-documents", "0"],
     ["argument --max-documents"]),
    ("eval-config-mismatch", lambda f: ["eval", f["bad_model"], "--data", f["docs.txt"]],
     ["hidden_size (the config gives 96, the checkpoint has 64"]),
    # analyze
    ("analyze-depth", lambda f: ["analyze", "niah", f["model"], "--depths", "1.5"], ["argument --depths", "[0, 1]"]),
    ("analyze-task", lambda f: ["analyze", "niah", f["model"], "--tasks", "needle"], ["argument --tasks"]),
    ("analyze-length-0", lambda f: ["analyze", "entropy", f["model"], "--length", "0"], ["argument --length"]),
    ("analyze-classes-1", lambda f: ["analyze", "probe", f["model"], "--classes", "1"], ["argument --classes"]),
    ("analyze-cap-nothing", lambda f: ["analyze", "cap", f["model"]], ["nothing to cap", "--full-window"]),
    ("analyze-distance", lambda f: ["analyze", "gradient-influence", f["model"], "--length", "64", "--distances",
                                    "8", "64"], ["--distances 64", "below --length 64"]),
    ("analyze-trace-steps", lambda f: ["analyze", "trace", f["model"], f["model"], "--steps", "1"],
     ["--steps has 1 values for 2 checkpoints"]),
    ("analyze-tsv", lambda f: ["analyze", "scaling-fit", f["bad.tsv"]], ["line 2", "three positive numbers"]),
    ("analyze-holdout", lambda f: ["analyze", "scaling-fit", f["fit.tsv"], "--holdout-n", "5"],
     ["--holdout-n 5 matches no N", "1e+07"]),
]


@pytest.mark.parametrize("name,argv,fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_invocation_fails_with_one_clear_line(name, argv, fragments, files, capsys):
    try:
        code = main(argv(files))
    except SystemExit as exit_:  # argparse errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code not in (0, None), f"{name}: accepted"
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("hybrid-hf")]
    assert len(lines) == 1, err
    command = argv(files)[0]
    assert lines[0].startswith(f"hybrid-hf {command}") and ": error: " in lines[0]
    for fragment in fragments:
        assert fragment in lines[0], f"{name}: {fragment!r} not in {lines[0]!r}"


def test_python_spellings_are_accepted_like_json(files, capsys):
    """--set takes JSON or Python literals: use_qk_norm=False and =false mean the same."""
    for spelling, expected in (("False", False), ("true", True), ("True", True)):
        out = Path(files["root"]) / f"init_{spelling}"
        assert main(["init", str(out), "--size", "tiny", "--tokenizer", files["model"], "--set",
                     f"use_qk_norm={spelling}", "--set", "sliding_window=None", "--preset", "full"]) == 0
        config = json.loads((out / "config.json").read_text())
        assert config["use_qk_norm"] is expected and config["sliding_window"] is None
    capsys.readouterr()


def test_runtime_error_in_a_fresh_process_has_no_traceback(files):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-m", "hybrid_hf.cli.main", "train", files["model"], "--data",
                           files["null.jsonl"], "--output-dir", files["root"] + "/run"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("hybrid-hf train: error: --data")
    assert "'text' is null" in proc.stderr


def test_model_argument_takes_a_folder_or_a_hub_id(files, monkeypatch, capsys):
    from hybrid_hf.cli.validation import model_source

    assert model_source(files["model"]) == files["model"] and model_source("org/model") == "org/model"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["eval", "no-such-org/no-such-model", "--data", files["docs.txt"]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("hybrid-hf eval: error:"), err
