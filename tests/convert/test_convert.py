"""hybrid_hf.convert: import of tiny Llama / Qwen3 / SmolLM3 / Mistral models (equal logits), conversion to hybrids,
layer selection from data, distillation (KL falls, copying is kept), and the `convert` / `train --teacher` CLI."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    LlamaForCausalLM,
    MistralForCausalLM,
    Qwen3ForCausalLM,
    SmolLM3Config,
    SmolLM3ForCausalLM,
)

from hybrid_hf import HybridConfig, HybridForCausalLM
from hybrid_hf.cli.main import main
from hybrid_hf.convert import (
    hybrid_config_from,
    hybridize,
    import_model,
    layer_scores,
    plan_layer_types,
    select_full_layers,
)
from hybrid_hf.data import train_tokenizer, write_documents
from hybrid_hf.evaluation import Sample
from hybrid_hf.training import (
    DistillationTrainer,
    TokenBlockDataset,
    distillation_loss,
    mean_kl,
    pack_documents,
    training_arguments,
)

COMMON = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)
SOURCES = {
    # GQA, head_dim not hidden/heads, biases on all four projections, untied head
    "llama": (LlamaForCausalLM, dict(head_dim=24, attention_bias=True, rms_norm_eps=1e-5,
                                     rope_parameters={"rope_type": "default", "rope_theta": 5e5})),
    # QK-norm, explicit layer types with a sliding window, tied embeddings
    "qwen3": (Qwen3ForCausalLM, dict(head_dim=32, use_sliding_window=True, sliding_window=5, tie_word_embeddings=True,
                                     layer_types=["sliding_attention", "full_attention"] * 2)),
    # no_rope_layers (1 = RoPE): the NoPE layers are the sliding ones
    "smollm3": (SmolLM3ForCausalLM, dict(use_sliding_window=True, sliding_window=6, no_rope_layers=[1, 0, 1, 1])),
    # every layer sliding
    "mistral": (MistralForCausalLM, dict(sliding_window=7)),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # these models are tiny: one thread is faster than two, and much faster on a shared machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _source(name: str, seed: int = 0, **overrides):
    cls, extra = SOURCES[name]
    config = cls.config_class(**{**COMMON, **extra, **overrides})
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():  # larger than the default init, so that every layer matters to the logits
        for p in model.parameters():
            p.normal_(0, 0.15) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("name", list(SOURCES))
def test_import_gives_equal_logits(name):
    source = _source(name)
    model = import_model(source).eval()
    ids = torch.randint(3, 97, (2, 40), generator=torch.Generator().manual_seed(1))  # longer than every window
    with torch.no_grad():
        ref, out = source(ids).logits, model(ids).logits
    assert (ref - out).abs().max() <= 1e-5
    cfg, src = model.config, source.config
    head_dim = getattr(src, "head_dim", None) or src.hidden_size // src.num_attention_heads
    assert (cfg.head_dim, cfg.num_key_value_heads, cfg.rms_norm_eps) == (head_dim, 2, src.rms_norm_eps)
    assert cfg.tie_word_embeddings == src.tie_word_embeddings
    expected = {"llama": ("FFFF", ["rope"] * 4), "qwen3": ("SFSF", ["rope"] * 4),
                "smollm3": ("FSFF", ["rope", "nope", "rope", "rope"]), "mistral": ("SSSS", ["rope"] * 4)}[name]
    assert (cfg.layer_pattern, cfg.position_encodings) == expected
    assert cfg.use_qk_norm == (name == "qwen3") and cfg.attention_bias == (name == "llama")
    if "S" in cfg.layer_pattern:
        # the probe is sensitive to the window: one key more or less changes the logits
        for window in (cfg.sliding_window - 1, cfg.sliding_window + 1):
            shifted = HybridForCausalLM(HybridConfig.from_dict({**cfg.to_dict(), "sliding_window": window}))
            shifted.load_state_dict(model.state_dict())
            with torch.no_grad():
                assert (shifted.eval()(ids).logits - ref).abs().max() > 1e-3


def test_import_from_folder_and_save_round_trip(tmp_path):
    source = _source("qwen3")
    source.save_pretrained(tmp_path / "src")
    model = import_model(tmp_path / "src")
    model.save_pretrained(tmp_path / "hybrid")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "hybrid")
    ids = torch.randint(3, 97, (1, 24))
    with torch.no_grad():
        ref = source(ids).logits
        assert (model(ids).logits - ref).abs().max() <= 1e-5
        assert (again(ids).logits - ref).abs().max() <= 1e-5
    assert import_model(tmp_path / "hybrid").config.layer_types == model.config.layer_types


@pytest.mark.parametrize("rope", [
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 16, "rope_theta": 5e5},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "rope_theta": 1e4},
    {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
])
def test_import_scaled_rope(rope):
    source = _source("llama", rope_parameters=rope)
    config = hybrid_config_from(source.config)
    assert config.rope_parameters["full_attention"]["rope_type"] == rope["rope_type"]
    try:
        model = import_model(source).eval()
    except AttributeError as err:  # hybrid_hf's rotary tables before the rotary rewrite (transformers >= 5.24)
        pytest.skip(f"scaled RoPE not computable by this hybrid_hf.modeling: {err}")
    ids = torch.randint(3, 97, (1, 64))
    with torch.no_grad():
        assert (source(ids).logits - model(ids).logits).abs().max() <= 1e-5


@pytest.mark.parametrize(("make", "field"), [
    (lambda: LlamaConfig(**COMMON, mlp_bias=True), "mlp_bias"),
    (lambda: LlamaConfig(**COMMON, hidden_act="gelu_new"), "hidden_act"),
    (lambda: LlamaConfig(**COMMON, rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                                    "partial_rotary_factor": 0.5}), "partial_rotary_factor"),
    (lambda: SmolLM3Config(**COMMON, sliding_window=8, layer_types=["sliding_attention", "full_attention"] * 2),
     "use_sliding_window"),
    (lambda: GPT2Config(), "model_type"),
])
def test_import_refuses_what_is_not_expressible(make, field):
    with pytest.raises(ValueError, match=field):
        hybrid_config_from(make())


def test_attention_dropout_is_kept():
    assert hybrid_config_from(LlamaConfig(**COMMON, attention_dropout=0.1)).attention_dropout == 0.1


# --------------------------------------------------------------------------------------------- conversion
def test_plan_layer_types():
    cfg = import_model(_source("qwen3")).config  # S F S F
    assert plan_layer_types(cfg, pattern="FS") == ["sliding_attention"] * 4
    assert plan_layer_types(cfg, full_layers=[3], recurrent=True) == [
        "sliding_attention", "linear_attention", "sliding_attention", "full_attention"]
    for kwargs, field in [({"converted_layers": [0]}, "converted_layers"), ({"converted_layers": [9]}, "converted_layers"),
                          ({"pattern": "SFF"}, "pattern"), ({"pattern": "SF", "full_layers": [1]}, "exactly one")]:
        with pytest.raises(ValueError, match=field):
            plan_layer_types(cfg, **kwargs)


def test_sliding_conversion_adds_no_parameters_and_is_exact_within_the_window():
    model = import_model(_source("llama")).eval()
    swa = hybridize(model, "SF", sliding_window=64, nope_full_attention=False)
    assert sum(p.numel() for p in swa.parameters()) == sum(p.numel() for p in model.parameters())
    ids = torch.randint(3, 97, (2, 40))
    with torch.no_grad():
        assert (swa.eval()(ids).logits - model(ids).logits).abs().max() == 0
    nope = hybridize(model, "SF", sliding_window=8, nope_full_attention=True)
    assert nope.config.position_encodings == ["rope", "nope"] * 2 and nope.config.sliding_window == 8
    with pytest.raises(ValueError, match="sliding_window"):
        hybridize(model, "SF")  # a Llama has no window of its own


@pytest.mark.parametrize("kind", ["gated_deltanet", "mamba2", "lightning"])
def test_recurrent_conversion_copies_the_attention(kind):
    model = import_model(_source("qwen3")).eval()  # GQA: 4 query heads, 2 key/value heads
    hybrid = hybridize(model, plan_layer_types(model.config, converted_layers=[1], recurrent=True),
                       linear_attention_type=kind).eval()
    assert hybrid.config.layer_types[1] == "linear_attention" and hybrid.config.layer_types[3] == "full_attention"
    src, dst = model.state_dict(), hybrid.state_dict()
    attn, mixer = "model.layers.1.self_attn.", "model.layers.1.linear_attn."
    hd = model.config.head_dim
    k_expanded = src[attn + "k_proj.weight"].view(2, hd, -1).repeat_interleave(2, 0).reshape(4 * hd, -1)
    if kind == "mamba2":
        inner = 4 * hd
        in_proj = dst[mixer + "in_proj.weight"]
        assert torch.equal(in_proj[2 * inner : 2 * inner + hd], src[attn + "k_proj.weight"][:hd])  # B
        assert torch.equal(in_proj[2 * inner + hd : 2 * inner + 2 * hd], src[attn + "q_proj.weight"][:hd])  # C
        assert torch.equal(dst[mixer + "out_proj.weight"], src[attn + "o_proj.weight"])
    else:
        assert torch.equal(dst[mixer + "q_proj.weight"], src[attn + "q_proj.weight"])
        assert torch.equal(dst[mixer + "k_proj.weight"], k_expanded)
        assert torch.equal(dst[mixer + "o_proj.weight"], src[attn + "o_proj.weight"])
    for name, value in src.items():  # everything else is carried over exactly
        if not name.startswith("model.layers.1."):
            assert torch.equal(dst[name], value), name
    ids = torch.randint(3, 97, (2, 24))
    with torch.no_grad():
        assert torch.isfinite(hybrid(ids).logits).all()


# ------------------------------------------------------------ a teacher that copies: selection and distillation
VOCAB, HALF = 32, 8
SEQ = 2 * HALF + 2  # <bos> a1..a8 <sep> a1..a8


def _copy_sequences(n: int, seed: int) -> torch.Tensor:
    a = torch.randint(4, VOCAB, (n, HALF), generator=torch.Generator().manual_seed(seed))
    return torch.cat([torch.full((n, 1), 2), a, torch.full((n, 1), 3), a], 1)


def _copy_accuracy(model) -> float:
    ids = _copy_sequences(256, 10_000)
    with torch.no_grad():
        pred = model(ids, use_cache=False).logits.argmax(-1)
    return float((pred[:, HALF + 1 : -1] == ids[:, HALF + 2 :]).float().mean())


def _copy_rows(n_sequences: int, seed: int, per_row: int = 3) -> list[dict[str, list[int]]]:
    """Packed rows of copy sequences (positions restart per sequence); only the copied half is scored."""
    rows = pack_documents(_copy_sequences(n_sequences, seed).tolist(), per_row * SEQ, reset_positions=True)
    for r in rows:
        r["labels"] = [t if p >= HALF + 2 else -100 for t, p in zip(r["labels"], r["position_ids"])]
    return rows


def _stack(rows):
    return {k: torch.tensor([r[k] for r in rows]) for k in rows[0]}


@pytest.fixture(scope="module")
def copy_teacher() -> HybridForCausalLM:
    """A 2-layer Llama trained briefly to copy 8 tokens (an induction head in layer 1), imported."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0,
                         eos_token_id=1, bos_token_id=2)
    llama = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(llama.parameters(), lr=3e-3, weight_decay=0.0)
    for step in range(45):
        ids = _copy_sequences(64, step)
        labels = ids.clone()
        labels[:, : HALF + 2] = -100
        loss = llama(ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    teacher = import_model(llama.eval()).eval()
    assert _copy_accuracy(teacher) > 0.95
    return teacher


def test_layer_selection_finds_the_copying_layer(copy_teacher):
    # a window of 4 keys cannot reach the copied token (10 positions back): only layer 1's induction head can
    nll = layer_scores(copy_teacher, "nll", input_ids=_copy_sequences(8, 20_000), sliding_window=4)
    samples = [Sample(task="copy", input_ids=row[: HALF + 2 + k].tolist(), answers=[], depth=0.0,
                      length=HALF + 2 + k, needle_spans=[(1 + k, 2 + k)])
               for k, row in enumerate(_copy_sequences(6, 30_000))]
    retrieval = layer_scores(copy_teacher, "retrieval", samples=samples)
    assert select_full_layers(nll, 1) == [1] and select_full_layers(retrieval, 1) == [1]
    assert nll[1] > nll[0] + 0.5 and retrieval[1] > 0.5 > retrieval[0]
    assert _copy_accuracy(hybridize(copy_teacher, "FS", sliding_window=4).eval()) < 0.3  # the wrong choice
    with pytest.raises(ValueError, match="keep_full"):
        select_full_layers(nll, 3)


def test_distillation_loss_on_packed_rows_equals_per_document_loss(copy_teacher):
    student = hybridize(copy_teacher, "SF", sliding_window=4).eval()
    rows = _copy_rows(6, 1)
    batch = _stack(rows)
    args = training_arguments("unused", report_to="none", save_strategy="no")
    trainer = DistillationTrainer(model=student, args=args, teacher=copy_teacher, temperature=2.0)
    with torch.no_grad():
        packed = trainer.compute_loss(student, dict(batch))
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in _copy_sequences(6, 1):  # the same documents, one at a time
            labels = ids.clone()
            labels[: HALF + 2] = -100
            parts = distillation_loss(student(ids[None]).logits, copy_teacher(ids[None]).logits, labels[None],
                                      temperature=2.0)
            n = int((labels[1:] != -100).sum())
            total, count = total + float(parts["kl"]) * n, count + n
    assert abs(float(packed) - total / count) < 1e-5
    same = distillation_loss(torch.randn(1, 5, 7), torch.zeros(1, 5, 7), torch.full((1, 5), -100))
    assert float(same["loss"]) == 0.0  # nothing scored


def test_convert_then_distill_recovers_the_teacher(copy_teacher, tmp_path):
    student = hybridize(copy_teacher, "SF", sliding_window=4)
    held_out = [_stack(_copy_rows(48, 999)[i : i + 8]) for i in (0, 8)]
    kl_before, acc_before = mean_kl(student, copy_teacher, held_out), _copy_accuracy(student.eval())
    args = training_arguments(str(tmp_path), max_steps=30, per_device_train_batch_size=16, learning_rate=2e-3,
                              warmup_steps=0, weight_decay=0.0, logging_steps=10, save_strategy="no",
                              disable_tqdm=True)
    trainer = DistillationTrainer(model=student, args=args, train_dataset=TokenBlockDataset(_copy_rows(480, 2)),
                                  teacher=copy_teacher, hidden_layers=[2], hidden_weight=0.1)
    trainer.train()
    kl_after, acc_after = mean_kl(student, copy_teacher, held_out), _copy_accuracy(student.eval())
    logged = [h["kl"] for h in trainer.state.log_history if "kl" in h]
    assert kl_after < 0.25 * kl_before and logged[-1] < logged[0]
    assert acc_after >= max(acc_before, _copy_accuracy(copy_teacher) - 0.02)


# --------------------------------------------------------------------------------------------------- CLI
def test_cli_convert_and_train_with_teacher(tmp_path, capsys):
    source = _source("qwen3", layer_types=["full_attention"] * 4, use_sliding_window=False, vocab_size=300,
                     max_position_embeddings=256)
    texts = [f"Document {i}: the {w} river runs past the {w} mill, and the miller counts {i} sacks." for i, w in
             enumerate(["green", "quiet", "old", "wide"] * 6)]
    tokenizer = train_tokenizer(texts, vocab_size=300)
    src = tmp_path / "src"
    source.save_pretrained(src)
    tokenizer.save_pretrained(src)
    write_documents(texts, tmp_path / "calib.txt")

    assert main(["convert", str(src), "--out", str(tmp_path / "swa"), "--pattern", "SF", "--window", "8",
                 "--nope-full"]) == 0
    swa = AutoModelForCausalLM.from_pretrained(tmp_path / "swa")
    assert swa.config.layer_pattern == "SFSF" and swa.config.position_encodings == ["rope", "nope"] * 2
    assert (tmp_path / "swa" / "tokenizer.json").exists()

    assert main(["convert", str(src), "--out", str(tmp_path / "sel"), "--select", "nll", "--keep-full", "1",
                 "--window", "4", "--calibration-data", str(tmp_path / "calib.txt"), "--calibration-length", "32",
                 "--calibration-samples", "2", "--recurrent", "gated_deltanet"]) == 0
    record = json.loads((tmp_path / "sel" / "conversion.json").read_text())
    assert len(record["kept_full"]) == 1 and record["layer_types"].count("linear_attention") == 3
    assert record["kept_full"] == [max(range(4), key=lambda i: record["scores"][i])]

    out = tmp_path / "healed"
    assert main(["train", str(tmp_path / "swa"), "--teacher", str(src), "--data", str(tmp_path / "calib.txt"),
                 "--output-dir", str(out), "--block-size", "32", "--batch-size", "2", "--max-steps", "2",
                 "--logging-steps", "1", "--save-steps", "100", "--no-progress", "--temperature", "2"]) == 0
    history = json.loads((out / "train_results.json").read_text())["log_history"]
    assert any("kl" in h for h in history) and (out / "final" / "model.safetensors").exists()
    capsys.readouterr()
    assert main(["convert", str(src), "--out", str(tmp_path / "x"), "--select", "nll"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hybrid-hf convert: error:") and "--keep-full" in err[0], err
