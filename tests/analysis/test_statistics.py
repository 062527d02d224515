"""Small-sample statistics (hybrid_hf.analysis.statistics): coverage, known answers, power sanity."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("scipy")

from hybrid_hf.analysis import (  # noqa: E402
    equivalence_power,
    equivalence_test,
    first_crossing,
    kaplan_meier,
    logrank_trend_test,
    mean_ci,
    normalised_auc,
    paired_power,
    paired_test,
    seeds_for_equivalence,
    seeds_for_power,
    trend_test,
)


def test_t_interval_covers_known_mean_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    draws = 4000
    hits = 0
    for _ in range(draws):
        ci = mean_ci(rng.normal(3.0, 2.0, size=5))
        hits += ci["low"] <= 3.0 <= ci["high"]
    # exact coverage 0.95; binomial sd over 4000 draws is 0.0034
    assert abs(hits / draws - 0.95) < 0.015


def test_bootstrap_interval_is_close_to_t_for_large_normal_samples():
    x = np.random.default_rng(1).normal(0.0, 1.0, size=400)
    t, b = mean_ci(x), mean_ci(x, method="bootstrap", n_boot=4000)
    assert abs(t["low"] - b["low"]) < 0.02 and abs(t["high"] - b["high"]) < 0.02


def test_paired_test_known_case():
    a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    b = [x + d for x, d in zip(a, [1.1, 0.9, 1.0, 1.2, 0.8, 1.0, 1.1, 0.9])]
    r = paired_test(a, b)
    assert r["mean_diff"] == pytest.approx(1.0)
    assert r["low"] < 1.0 < r["high"] and r["low"] > 0.8
    assert r["p_t"] < 1e-6
    assert r["p_wilcoxon"] == pytest.approx(2 / 2**8)  # all 8 differences positive: exact two-sided p = 2/256
    one_sided = paired_test(a, b, alternative="greater")
    assert one_sided["p_wilcoxon"] == pytest.approx(1 / 2**8)
    assert paired_test(a, b, alternative="less")["p_t"] > 0.99
    # no difference at all
    same = paired_test(a, a)
    assert same["mean_diff"] == 0 and same["p_t"] == 1.0 and same["p_wilcoxon"] == 1.0


def test_paired_test_false_positive_rate_under_the_null():
    rng = np.random.default_rng(2)
    rejections = sum(paired_test(rng.normal(size=6), rng.normal(size=6))["p_t"] < 0.05 for _ in range(1000))
    assert 0.03 < rejections / 1000 < 0.07


def test_trend_test_detects_a_monotone_increase_and_not_noise():
    table = [[100, 200, 300], [120, 180, 330], [90, 250, 280], [110, 190, 310]]
    up = trend_test(table)
    assert up["p_page"] == pytest.approx(1 / 6**4)  # every seed in the predicted order: exact p = (1/3!)^4
    assert up["strictly_monotone_seeds"] == 4 and up["mean_spearman"] == pytest.approx(1.0)
    down = trend_test(table, increasing=False)
    assert down["p_page"] > 0.99 and down["mean_spearman"] == pytest.approx(-1.0)
    rng = np.random.default_rng(3)
    p = [trend_test(rng.normal(size=(6, 3)))["p_page"] for _ in range(300)]
    assert 0.02 < np.mean(np.array(p) < 0.05) < 0.09


def test_equivalence_test():
    rng = np.random.default_rng(4)
    a = rng.normal(1.0, 0.01, size=8)
    close = equivalence_test(a, a + rng.normal(0.001, 0.002, size=8), margin=0.02)
    assert close["equivalent"] and close["p_tost"] < 0.05
    far = equivalence_test(a, a + 0.05, margin=0.02)
    assert not far["equivalent"] and far["p_tost"] > 0.5


def test_power_and_sample_size():
    # classic value: dz = 1 needs 10 pairs for 80% power, two-sided alpha 0.05 (noncentral t)
    assert seeds_for_power(1.0, 1.0) == 10
    assert 0.80 <= paired_power(10, 1.0, 1.0) < paired_power(11, 1.0, 1.0)
    assert paired_power(9, 1.0, 1.0) < 0.80
    assert seeds_for_power(0.5, 1.0) > seeds_for_power(1.0, 1.0)
    assert seeds_for_power(1.0, 1.0, alternative="greater") < seeds_for_power(1.0, 1.0)
    assert seeds_for_power(0.0, 1.0) is None
    # simulation check of the power formula at n=6, dz=1.5
    rng = np.random.default_rng(5)
    sim = np.mean([paired_test(np.zeros(6), rng.normal(1.5, 1.0, size=6))["p_t"] < 0.05 for _ in range(2000)])
    assert abs(sim - paired_power(6, 1.5, 1.0)) < 0.04


def test_first_crossing_and_auc():
    steps, vals = [0, 100, 200, 300], [0.0, 0.2, 0.6, 0.9]
    assert first_crossing(steps, vals, 0.5) == pytest.approx(175.0)
    assert first_crossing(steps, vals, 0.5, interpolate=False) == 200
    assert first_crossing(steps, vals, 0.95) is None
    assert normalised_auc([0, 10], [0.0, 1.0]) == pytest.approx(0.5)
    assert normalised_auc(steps, vals, until=150) == pytest.approx((0.1 * 100 + (0.2 + 0.4) / 2 * 50) / 150)


@pytest.mark.parametrize("call, field", [
    (lambda: mean_ci([1.0]), "values"),
    (lambda: mean_ci([1.0, 2.0], confidence=1.5), "confidence"),
    (lambda: mean_ci([1.0, 2.0], method="z"), "method"),
    (lambda: paired_test([1.0, 2.0], [1.0, 2.0, 3.0]), "equal lengths"),
    (lambda: paired_test([1.0, 2.0], [1.0, 2.0], alternative="up"), "alternative"),
    (lambda: trend_test([[1.0, 2.0], [1.0, 2.0]]), "table"),
    (lambda: equivalence_test([1.0, 2.0], [1.0, 2.0], margin=0), "margin"),
    (lambda: seeds_for_power(1.0, 1.0, power=1.0), "power"),
    (lambda: paired_power(5, 1.0, 0.0), "sd"),
    (lambda: mean_ci([1.0, math.nan]), "finite"),
])
def test_bad_input_names_the_field(call, field):
    with pytest.raises(ValueError, match=field):
        call()


def test_logrank_trend_with_two_conditions_is_the_two_sample_logrank_test():
    from scipy import stats

    rng = np.random.default_rng(1)
    t = rng.exponential(size=(12, 2)) * [1.0, 2.5]
    e = rng.random((12, 2)) > 0.3
    ours = logrank_trend_test(t, e)
    ref = stats.logrank(stats.CensoredData(uncensored=t[e[:, 0], 0], right=t[~e[:, 0], 0]),
                        stats.CensoredData(uncensored=t[e[:, 1], 1], right=t[~e[:, 1], 1]), alternative="greater")
    assert ours["z"] == pytest.approx(ref.statistic)
    assert ours["p_asymptotic"] == pytest.approx(ref.pvalue)


def test_logrank_trend_exact_permutation_p_on_constructed_cases():
    # Every seed orders its three conditions the same way, all events observed: only the identity arrangement of
    # the 6**4 within-seed permutations is as extreme, so the exact one-sided p is 1/1296.
    times = [[100 + s, 200 + s, 300 + s] for s in range(4)]
    events = [[True] * 3] * 4
    r = logrank_trend_test(times, events)
    assert r["permutation_method"] == "exact"
    assert r["p_permutation"] == pytest.approx(1 / 6**4)
    assert r["p_asymptotic"] < 0.01 and r["z"] > 0
    assert logrank_trend_test(times, events, increasing=False)["p_permutation"] == pytest.approx(1.0)
    # Censoring counts: a condition that never had the event by the end (censored at the last step) ranks as
    # latest, so it supports the trend though its "time" ties with another condition's observed event.
    cens = logrank_trend_test([[1000, 2000, 3000]] * 4, [[True, True, False]] * 4)
    assert cens["censored"] == 4 and cens["p_permutation"] == pytest.approx(1 / 6**4)
    # No events at all: nothing to test.
    none = logrank_trend_test([[10, 10, 10]] * 3, [[False] * 3] * 3)
    assert none["z"] == 0.0 and none["p_permutation"] == 1.0 and none["p_asymptotic"] == 1.0
    with pytest.raises(ValueError, match="events"):
        logrank_trend_test([[1, 2, 3]], [[True, True]])
    many = logrank_trend_test(np.arange(30).reshape(10, 3) % 7 + 1.0, np.ones((10, 3), bool), n_perm=500)
    assert many["permutation_method"].startswith("monte carlo") and many["p_permutation"] > 0
    with pytest.raises(ValueError, match="times/events"):
        logrank_trend_test([[1, 2, 3], [1, 2]], [[True] * 3, [True] * 2])


def test_kaplan_meier_matches_scipy_ecdf_with_censoring():
    from scipy import stats

    rng = np.random.default_rng(2)
    t = np.round(rng.exponential(size=20), 1) + 0.1
    e = rng.random(20) > 0.4
    km = kaplan_meier(t, e)
    ref = stats.ecdf(stats.CensoredData(uncensored=t[e], right=t[~e])).sf.evaluate(np.array(km["time"][1:]))
    np.testing.assert_allclose(km["survival"][1:], ref)
    assert km["time"][0] == 0.0 and km["survival"][0] == 1.0
    assert kaplan_meier([1, 2, 2, 3], [True, True, False, True])["survival"] == [1.0, 0.75, 0.5, 0.0]


def test_equivalence_power_matches_simulation_and_grows_with_seeds():
    rng = np.random.default_rng(11)
    n, effect, sd, margin = 8, 0.005, 0.01, 0.02
    trials = [equivalence_test(np.zeros(n), rng.normal(effect, sd, size=n), margin)["equivalent"]
              for _ in range(4000)]
    assert abs(np.mean(trials) - equivalence_power(n, effect, sd, margin)) < 0.03
    assert equivalence_power(4, effect, sd, margin) < equivalence_power(16, effect, sd, margin)
    need = seeds_for_equivalence(effect, sd, margin)
    assert equivalence_power(need, effect, sd, margin) >= 0.8 > equivalence_power(need - 1, effect, sd, margin)
    assert seeds_for_equivalence(0.03, sd, margin) is None and equivalence_power(5, 0.02, sd, margin) == 0.0
    with pytest.raises(ValueError, match="margin"):
        equivalence_power(5, 0.0, sd, 0.0)
