"""Analysis tools on hand-built cases with known answers."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import tiny_model

from hybrid_hf.analysis import (
    attention_entropy,
    copy_paste_scores,
    fit_scaling_law,
    gradient_influence,
    layerwise_probe,
    needle_mass,
    qk_weight_distance,
    receptive_field_cap,
    retrieval_head_scores,
    teacher_forced_copy_scores,
    top_heads,
    trace_from_tables,
    trace_heads,
)


def _attn(heads: int, n: int, rows: dict[int, torch.Tensor]) -> torch.Tensor:
    a = torch.full((1, heads, n, n), 1.0 / n)
    for h, row in rows.items():
        a[0, h, -1] = row
    return a


def test_needle_mass_all_on_needle_scores_one():
    n, needle = 10, [3, 4]
    on_needle = torch.zeros(n)
    on_needle[needle] = 0.5
    att = [_attn(2, n, {0: on_needle}), None]
    mass = needle_mass(att, needle, n - 1)
    assert mass[0, 0] == 1.0 and math.isclose(float(mass[0, 1]), 0.2, rel_tol=1e-6)
    assert torch.isnan(mass[1]).all()  # recurrent layer
    assert top_heads(mass, k=1)[0][:2] == (0, 0)


def test_copy_paste_score_counts_top1_copies():
    prompt = [5, 6, 7, 8, 9, 10]
    needle = [2, 3]  # tokens 7, 8
    generated = [7, 8]
    steps = []
    for t, target in enumerate(needle):
        a = torch.zeros(1, 2, 1, len(prompt) + t)
        a[0, 0, 0, target] = 1.0  # head 0 copies from the needle
        a[0, 1, 0, 0] = 1.0  # head 1 looks elsewhere
        steps.append([a])
    scores = copy_paste_scores(steps, generated, prompt, needle)
    assert scores[0, 0] == 1.0 and scores[0, 1] == 0.0


def test_entropy_uniform_is_one_and_one_hot_is_zero():
    n = 16
    uniform = torch.tril(torch.ones(1, 1, n, n))
    uniform = uniform / uniform.sum(-1, keepdim=True)
    one_hot = torch.zeros(1, 1, n, n)
    one_hot[..., 0] = 1.0
    ent = attention_entropy([uniform, one_hot, None])
    assert torch.allclose(ent[0], torch.ones(1), atol=1e-5)
    assert torch.allclose(ent[1], torch.zeros(1), atol=1e-5)
    assert torch.isnan(ent[2]).all()


def test_qk_distance_zero_to_itself_and_gqa_aware():
    model = tiny_model("SF")  # 4 query heads, 2 kv heads
    same = qk_weight_distance(model, model)
    assert all(r["qk_l2"] == 0.0 for r in same) and len(same) == 4
    other = tiny_model("SF")
    with torch.no_grad():
        other.model.layers[1].self_attn.k_proj.weight[16:32] += 1.0  # kv head 1 -> query heads 2, 3
    rows = {r["layer"]: r for r in qk_weight_distance(other, model)}
    expected = math.sqrt(16 * 64) / 2  # two of four query heads moved by ||1||_F over a 16x64 block
    assert math.isclose(rows[1]["qk_l2"], expected, rel_tol=1e-5) and rows[0]["qk_l2"] == 0.0


def test_probe_on_separable_features_is_accurate():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    separable = rng.normal(size=(200, 8)) * 0.1
    separable[np.arange(200), labels] += 3.0
    noise = rng.normal(size=(200, 8))
    acc = layerwise_probe(np.stack([separable, noise]), labels)
    assert acc[0] >= 0.95 and acc[1] < 0.6


def test_gradient_influence_respects_the_sliding_window():
    model = tiny_model("S", num_hidden_layers=1)  # one sliding layer, W = 4: the last token sees 4 positions
    ids = torch.randint(3, 128, (2, 32))
    g = gradient_influence(model, ids, distances=[0, 2, 10, 30], last=1)
    assert g[0] > 0 and g[2] > 0 and g[10] == 0.0 and g[30] == 0.0


def test_receptive_field_cap_context_manager_restores_config():
    model = tiny_model("F")
    ids = torch.randint(3, 128, (1, 20))
    with torch.no_grad():
        base = model(ids).logits
        with receptive_field_cap(model, full_attention=4):
            capped = model(ids).logits
        after = model(ids).logits
    assert not torch.allclose(base, capped, atol=1e-4) and torch.equal(base, after)
    assert model.config.eval_full_attention_window is None


def test_retrieval_scores_and_tracing_on_a_real_model():
    model = tiny_model("SF")
    sample = SimpleNamespace(input_ids=list(range(3, 23)), needle_spans=[(5, 7)])
    scores = retrieval_head_scores(model, [sample])
    assert scores.shape == (4, 4) and torch.all((scores >= 0) & (scores <= 1))
    models = {0: tiny_model("SF", seed=1), 1: model}
    trace = trace_heads(lambda step: models[step], [(0, 0), (1, 1)], [sample], k=2, threshold=0.0)
    assert trace["steps"] == [0, 1] and len(trace["curves"]) == 2
    assert all(v == 0 for v in trace["first_step_above"].values())


def test_scaling_fit_recovers_known_law():
    n = np.array([1e7, 2e7, 4e7, 8e7] * 3)
    d = np.concatenate([n[:4] * 100, n[4:8] * 300, n[8:] * 1000])
    loss = 30 * n**-0.25 + 400 * d**-0.3
    fit = fit_scaling_law(n, d, loss, holdout_n=8e7)
    assert abs(fit["alpha"] - 0.25) < 0.05 and fit["r2_train"] > 0.99 and fit["r2_holdout"] > 0.9


def test_teacher_forced_copy_score_counts_top1_copies_of_the_answer():
    ids = [5, 6, 7, 8, 9, 10, 7, 8]  # needle tokens 7, 8 at positions 2, 3; the answer (positions 6, 7) copies them
    n = len(ids)
    att = torch.zeros(1, 2, n, n)
    att[0, 0, 5, 2] = att[0, 0, 6, 3] = 1.0  # head 0: the position predicting each answer token looks at its source
    att[0, 1, :, 0] = 1.0  # head 1: attends to the first token
    scores = teacher_forced_copy_scores([att, None], ids, answer_start=6, needle_positions=[2, 3])
    assert scores[0, 0] == 1.0 and scores[0, 1] == 0.0 and torch.isnan(scores[1]).all()


def test_trace_from_tables_finds_first_step_over_threshold():
    tables = [torch.tensor([[0.0, 0.05]]), torch.tensor([[0.02, 0.2]]), torch.tensor([[0.12, 0.6]])]
    trace = trace_from_tables([100, 200, 300], tables, k=2, threshold=0.1)
    assert trace["heads"] == [[0, 1], [0, 0]]
    assert trace["first_step_above"] == {"L0H1": 200, "L0H0": 300}
    assert trace["max_score_per_step"] == pytest.approx([0.05, 0.2, 0.6])


@pytest.mark.parametrize("kind", ["full", "efficient"])
def test_receptive_field_cap_limits_visible_keys(kind):
    model = tiny_model("SF", sliding_window=16)  # layers: sliding, full, sliding, full
    ids = torch.randint(3, 128, (1, 24))
    window, sinks = 4, 1
    caps = {"full_attention": window, "sinks": sinks} if kind == "full" else {"efficient": window, "sinks": sinks}
    with torch.no_grad(), receptive_field_cap(model, **caps):
        att = model(ids, output_attentions=True).attentions
    capped_layer, free_layer = (1, 0) if kind == "full" else (0, 1)
    q = torch.arange(24)[:, None]
    k = torch.arange(24)[None, :]
    # the same keys on both layer types: a capped sliding layer keeps its sink even beyond its own W = 16
    allowed = ((k > q - window) & (k <= q)) | ((k < sinks) & (k <= q))
    assert torch.equal(att[capped_layer][0] > 0, allowed.expand(4, -1, -1))
    reach = 16 if kind == "full" else 24  # the other layer keeps its own receptive field
    assert torch.all(att[free_layer][0][:, -1, -reach:] > 0)


def test_tools_run_on_a_plain_transformers_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, attn_implementation="eager")
    model, other = LlamaForCausalLM(cfg), LlamaForCausalLM(cfg)
    with torch.no_grad():
        other.load_state_dict(model.state_dict())
        other.model.layers[0].self_attn.q_proj.weight[:16] += 1.0  # query head 0 only
    rows = qk_weight_distance(other, model)
    assert math.isclose(rows[0]["qk_l2"], math.sqrt(16 * 64) / 4, rel_tol=1e-5) and rows[1]["qk_l2"] == 0.0
    sample = SimpleNamespace(input_ids=list(range(3, 23)), needle_spans=[(5, 7)])
    scores = retrieval_head_scores(model, [sample])
    assert scores.shape == (2, 4) and torch.all((scores > 0) & (scores < 1))
