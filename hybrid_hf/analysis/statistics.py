"""Small-sample statistics for seed-replicated training experiments: confidence intervals, paired tests, a monotone
trend test across ordered conditions, censoring-aware time-to-event tools (log-rank trend test, Kaplan-Meier),
equivalence (TOST) and power / sample-size estimates.

Conventions: every function takes plain sequences of floats (one value per seed), returns a JSON-ready ``dict``,
and raises ``ValueError`` naming the argument on bad input. Paired functions pair ``a[i]`` with ``b[i]`` (the same
seed: same data order and initialisation). Needs scipy (``pip install hybrid_hf[analysis]``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

METHODS = ("t", "bootstrap")
ALTERNATIVES = ("two-sided", "greater", "less")


def _values(name: str, values: Sequence[float], min_n: int = 2) -> np.ndarray:
    x = np.asarray(list(values), dtype=float)
    if x.ndim != 1 or len(x) < min_n:
        raise ValueError(f"{name}: need a flat sequence of at least {min_n} numbers, got {len(x)}.")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: values must be finite numbers, got {x.tolist()}.")
    return x


def _check(confidence: float, alternative: str | None = None) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence}; allowed: a float in (0, 1).")
    if alternative is not None and alternative not in ALTERNATIVES:
        raise ValueError(f"alternative={alternative!r}; allowed: {', '.join(ALTERNATIVES)}.")


def mean_ci(values: Sequence[float], confidence: float = 0.95, method: str = "t", n_boot: int = 10_000,
            seed: int = 0) -> dict[str, Any]:
    """Mean with a ``confidence`` interval: Student t (``method="t"``) or percentile bootstrap of the mean.

    Returns ``mean``, ``low``, ``high``, ``sd`` (sample standard deviation), ``n``, ``method``, ``confidence``.
    """
    from scipy import stats

    _check(confidence)
    if method not in METHODS:
        raise ValueError(f"method={method!r}; allowed: {', '.join(METHODS)}.")
    x = _values("values", values)
    m, sd, n = float(x.mean()), float(x.std(ddof=1)), len(x)
    if method == "t":
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
        low, high = m - half, m + half
    else:
        rng = np.random.default_rng(seed)
        boots = x[rng.integers(0, n, size=(n_boot, n))].mean(1)
        low, high = (float(q) for q in np.quantile(boots, [0.5 - confidence / 2, 0.5 + confidence / 2]))
    return {"mean": m, "low": low, "high": high, "sd": sd, "n": n, "method": method, "confidence": confidence}


def paired_test(a: Sequence[float], b: Sequence[float], confidence: float = 0.95,
                alternative: str = "two-sided") -> dict[str, Any]:
    """Paired comparison of ``b - a``: mean difference with its t interval, paired t test, Wilcoxon signed-rank test
    (exact for small n) and the standardised effect ``dz = mean / sd`` of the differences.

    ``alternative="greater"`` tests whether ``b`` exceeds ``a``. With n <= 5 pairs the two-sided Wilcoxon p-value
    cannot fall below 0.0625 (2/2**n), so report the t test and the interval beside it.
    """
    from scipy import stats

    _check(confidence, alternative)
    x, y = _values("a", a), _values("b", b)
    if len(x) != len(y):
        raise ValueError(f"a and b must have equal lengths (paired by seed), got {len(x)} and {len(y)}.")
    d = y - x
    ci = mean_ci(d, confidence)
    sd = float(d.std(ddof=1))
    if sd == 0.0:  # identical differences: the t statistic is infinite unless they are all zero
        t_stat = 0.0 if d[0] == 0 else math.copysign(math.inf, d[0])
        if d[0] == 0:
            p_t = 1.0
        elif alternative == "two-sided":
            p_t = 0.0
        else:
            p_t = 0.0 if (d[0] > 0) == (alternative == "greater") else 1.0
    else:
        res = stats.ttest_1samp(d, 0.0, alternative=alternative)
        t_stat, p_t = float(res.statistic), float(res.pvalue)
    if np.all(d == 0):
        p_w = 1.0
    else:
        p_w = float(stats.wilcoxon(d, alternative=alternative, zero_method="zsplit").pvalue)
    return {"n": len(d), "mean_diff": ci["mean"], "low": ci["low"], "high": ci["high"], "sd_diff": sd,
            "dz": ci["mean"] / sd if sd > 0 else (0.0 if ci["mean"] == 0 else math.copysign(math.inf, ci["mean"])),
            "t": t_stat, "p_t": p_t, "p_wilcoxon": p_w, "alternative": alternative, "confidence": confidence,
            "differences": d.tolist()}


def trend_test(table: Sequence[Sequence[float]], increasing: bool = True) -> dict[str, Any]:
    """Monotone trend across ordered conditions, blocked by seed: ``table[seed][j]`` is condition ``j`` (in the
    predicted order) of one seed. Page's L test (exact for small tables; ties get mid-ranks), the mean Spearman
    correlation of value with condition index within seed, and how many seeds are strictly monotone."""
    from scipy import stats

    t = np.asarray([list(r) for r in table], dtype=float)
    if t.ndim != 2 or t.shape[0] < 2 or t.shape[1] < 3:
        raise ValueError(f"table: need at least 2 seeds x 3 conditions, got shape {t.shape}.")
    if not np.all(np.isfinite(t)):
        raise ValueError("table: values must be finite numbers.")
    data = t if increasing else -t
    ties = any(len(set(row)) < len(row) for row in data.tolist())
    # The exact null distribution assumes untied ranks; with ties (e.g. censored emergence steps) use the normal one.
    method = "exact" if t.shape[0] * t.shape[1] <= 36 and not ties else "asymptotic"
    page = stats.page_trend_test(data, method=method)
    order = np.arange(t.shape[1])
    rhos = []
    for row in data:
        if np.all(row == row[0]):
            rhos.append(0.0)
        else:
            rhos.append(float(stats.spearmanr(order, row).statistic))
    monotone = int(sum(np.all(np.diff(row) > 0) for row in data))
    return {"n_seeds": t.shape[0], "n_conditions": t.shape[1], "increasing": increasing, "page_L": float(page.statistic),
            "p_page": float(page.pvalue), "page_method": page.method, "mean_spearman": float(np.mean(rhos)),
            "spearman_per_seed": rhos, "strictly_monotone_seeds": monotone}


def _logrank_weights(times: np.ndarray, events: np.ndarray) -> np.ndarray:
    """Per-subject weights ``w`` with ``U(scores) = w @ scores``: the event indicator minus the Nelson-Aalen
    cumulative hazard at the subject's own time (the risk sets do not depend on the scores)."""
    hazard = np.zeros(len(times))
    for tau in np.unique(times[events]):
        n, d = int((times >= tau).sum()), int((events & (times == tau)).sum())
        hazard[times >= tau] += d / n
    return events.astype(float) - hazard


def _logrank_var(times: np.ndarray, events: np.ndarray, scores: np.ndarray) -> float:
    """Hypergeometric variance of ``U`` under the null for these scores."""
    v = 0.0
    for tau in np.unique(times[events]):
        risk = times >= tau
        n, d = int(risk.sum()), int((events & (times == tau)).sum())
        if n > 1:
            v += d * (n - d) / (n - 1) * float(scores[risk].var())
    return v


def logrank_trend_test(times: Sequence[Sequence[float]], events: Sequence[Sequence[bool]], increasing: bool = True,
                       exact_limit: int = 200_000, n_perm: int = 20_000, seed: int = 0) -> dict[str, Any]:
    """Censoring-aware trend test of time-to-event across ordered conditions (the log-rank test for trend).

    ``times[seed][j]`` is the event time (e.g. the emergence step) of condition ``j`` of one seed, ``events[seed][j]``
    whether the event was observed (``False``: censored at that time, e.g. never emerged within the run). The score
    statistic ``U = sum_j j (O_j - E_j)`` over the pooled risk sets is negative when higher conditions have their
    events later. Returns the asymptotic one-sided p (normal approximation of ``U / sqrt(V)``) and a permutation p
    that shuffles conditions within each seed (exact when the ``(k!)^n`` arrangements are at most ``exact_limit``,
    else ``n_perm`` random ones). ``increasing=True`` tests "later events at higher conditions".
    """
    import itertools

    from scipy import stats

    try:
        t = np.asarray([list(r) for r in times], dtype=float)
        e = np.asarray([list(r) for r in events], dtype=bool)
    except (TypeError, ValueError) as err:
        raise ValueError(f"times/events: need equal-length rows (seeds x conditions) of numbers: {err}") from None
    if t.ndim != 2 or t.shape[0] < 1 or t.shape[1] < 2:
        raise ValueError(f"times: need seeds x conditions (at least 1 x 2), got shape {t.shape}.")
    if e.shape != t.shape:
        raise ValueError(f"events: shape {e.shape} must equal the shape of times {t.shape}.")
    if not np.all(np.isfinite(t)):
        raise ValueError("times: values must be finite numbers (a censored run gives its last step).")
    n_seeds, k = t.shape
    w = _logrank_weights(t.ravel(), e.ravel()).reshape(n_seeds, k)
    base = np.arange(k, dtype=float)
    u = float((w * base).sum())
    v = _logrank_var(t.ravel(), e.ravel(), np.tile(base, n_seeds))
    sign = -1.0 if increasing else 1.0  # the predicted direction gives sign * U > 0
    z = sign * u / math.sqrt(v) if v > 0 else 0.0
    # A within-seed arrangement changes only which score each subject carries: U is the sum over seeds of
    # w[seed] @ permuted scores, so each seed contributes one of k! values.
    perms = np.asarray(list(itertools.permutations(range(k))), dtype=float)
    contrib = sign * (w @ perms.T)  # (n_seeds, k!)
    if len(perms) ** n_seeds <= exact_limit:
        totals = contrib[0]
        for row in contrib[1:]:
            totals = (totals[:, None] + row[None, :]).ravel()
        method = "exact"
    else:
        rng = np.random.default_rng(seed)
        picks = rng.integers(0, len(perms), size=(n_perm, n_seeds))
        totals = contrib[np.arange(n_seeds), picks].sum(1)
        method = f"monte carlo ({n_perm})"
    hits, count = int((totals >= sign * u - 1e-9).sum()), len(totals)
    # Monte Carlo: the observed arrangement counts as one of the draws, so p is never 0. No events: nothing to test.
    p_perm = hits / count if method == "exact" else (hits + 1) / (count + 1)
    return {"n_seeds": n_seeds, "n_conditions": k, "increasing": increasing, "events": int(e.sum()),
            "censored": int((~e).sum()), "U": u, "var_U": v, "z": z,
            "p_asymptotic": float(stats.norm.sf(z)) if v > 0 else 1.0, "p_permutation": p_perm,
            "permutation_method": method}


def kaplan_meier(times: Sequence[float], events: Sequence[bool]) -> dict[str, list[float]]:
    """Kaplan-Meier estimate of the fraction still without the event: ``{"time": [...], "survival": [...]}``, one
    point per distinct event time (starting at time 0, survival 1). ``1 - survival`` is the fraction of runs in
    which the event (e.g. retrieval emergence) has happened, censored runs counted correctly."""
    t = _values("times", times, min_n=1)
    ev = np.asarray(list(events), dtype=bool)
    if ev.shape != t.shape:
        raise ValueError(f"events: length {len(ev)} must equal the length of times {len(t)}.")
    out_t, out_s, surv = [0.0], [1.0], 1.0
    for tau in np.unique(t[ev]):
        at_risk = int((t >= tau).sum())
        surv *= 1.0 - int((ev & (t == tau)).sum()) / at_risk
        out_t.append(float(tau))
        out_s.append(surv)
    return {"time": out_t, "survival": out_s}


def equivalence_test(a: Sequence[float], b: Sequence[float], margin: float, alpha: float = 0.05) -> dict[str, Any]:
    """Paired two one-sided tests (TOST) of ``|mean(b - a)| < margin``: equivalent at level ``alpha`` when the
    ``1 - 2 alpha`` t interval of the mean difference lies inside ``(-margin, margin)``."""
    from scipy import stats

    if margin <= 0:
        raise ValueError(f"margin={margin} must be > 0.")
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha={alpha}; allowed: a float in (0, 0.5).")
    x, y = _values("a", a), _values("b", b)
    if len(x) != len(y):
        raise ValueError(f"a and b must have equal lengths (paired by seed), got {len(x)} and {len(y)}.")
    d = y - x
    ci = mean_ci(d, 1 - 2 * alpha)
    se = float(d.std(ddof=1)) / math.sqrt(len(d))
    if se == 0:
        p = 0.0 if abs(ci["mean"]) < margin else 1.0
    else:
        p_low = float(stats.t.sf((ci["mean"] + margin) / se, len(d) - 1))
        p_high = float(stats.t.cdf((ci["mean"] - margin) / se, len(d) - 1))
        p = max(p_low, p_high)
    return {"n": len(d), "mean_diff": ci["mean"], "low": ci["low"], "high": ci["high"], "margin": margin,
            "confidence": 1 - 2 * alpha, "p_tost": p, "equivalent": bool(-margin < ci["low"] and ci["high"] < margin)}


def paired_power(n: int, effect: float, sd: float, alpha: float = 0.05, alternative: str = "two-sided") -> float:
    """Power of the paired t test with ``n`` pairs for a true mean difference ``effect`` whose per-pair standard
    deviation is ``sd`` (noncentral t)."""
    from scipy import stats

    _check(0.5, alternative)
    if n < 2:
        raise ValueError(f"n={n} must be >= 2.")
    if sd <= 0:
        raise ValueError(f"sd={sd} must be > 0.")
    df, nc = n - 1, effect / sd * math.sqrt(n)
    if alternative == "two-sided":
        crit = stats.t.ppf(1 - alpha / 2, df)
        return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))
    crit = stats.t.ppf(1 - alpha, df)
    return float(stats.nct.sf(crit, df, nc) if alternative == "greater" else stats.nct.cdf(-crit, df, nc))


def seeds_for_power(effect: float, sd: float, power: float = 0.8, alpha: float = 0.05,
                    alternative: str = "two-sided", max_n: int = 100_000) -> int | None:
    """Smallest number of seeds (pairs) at which the paired t test reaches ``power`` for ``effect`` and ``sd``;
    ``None`` if not reached by ``max_n`` (e.g. a zero effect)."""
    if not 0.0 < power < 1.0:
        raise ValueError(f"power={power}; allowed: a float in (0, 1).")
    if effect == 0:
        return None
    return _smallest_n(lambda n: paired_power(n, effect, sd, alpha, alternative), power, max_n)


def _smallest_n(power_at: Callable[[int], float], power: float, max_n: int) -> int | None:
    """Smallest n >= 2 with ``power_at(n) >= power`` for a power that grows with n; None beyond ``max_n``. Doubles
    until the power is reached, then bisects (the noncentral t is unstable at huge n, so never start there)."""
    hi = 2
    while power_at(hi) < power:
        if hi >= max_n:
            return None
        hi = min(2 * hi, max_n)
    lo = max(2, hi // 2)
    while lo < hi:
        mid = (lo + hi) // 2
        if power_at(mid) >= power:
            hi = mid
        else:
            lo = mid + 1
    return lo


def equivalence_power(n: int, effect: float, sd: float, margin: float, alpha: float = 0.05) -> float:
    """Power of the paired TOST of ``equivalence_test`` (``|mean difference| < margin`` at level ``alpha``) with
    ``n`` pairs, a true mean difference ``effect`` and per-pair standard deviation ``sd``: the usual noncentral-t
    lower bound ``P(T_low > t) + P(T_high < -t) - 1`` (floored at 0; 0 when ``|effect| >= margin``), tight near
    the powers one plans for (~80%) and conservative for small ``n``."""
    from scipy import stats

    if n < 2:
        raise ValueError(f"n={n} must be >= 2.")
    if sd <= 0 or margin <= 0:
        raise ValueError(f"sd={sd} and margin={margin} must be > 0.")
    if abs(effect) >= margin:
        return 0.0
    df, root_n = n - 1, math.sqrt(n)
    crit = stats.t.ppf(1 - alpha, df)
    low = stats.nct.sf(crit, df, (effect + margin) / sd * root_n)
    high = stats.nct.cdf(-crit, df, (effect - margin) / sd * root_n)
    return float(max(0.0, low + high - 1.0))


def seeds_for_equivalence(effect: float, sd: float, margin: float, power: float = 0.8, alpha: float = 0.05,
                          max_n: int = 100_000) -> int | None:
    """Smallest number of seeds (pairs) at which the paired TOST reaches ``power`` (``equivalence_power``);
    ``None`` when ``|effect| >= margin`` (equivalence is then never the expected outcome) or beyond ``max_n``."""
    if not 0.0 < power < 1.0:
        raise ValueError(f"power={power}; allowed: a float in (0, 1).")
    if abs(effect) >= margin:
        return None
    return _smallest_n(lambda n: equivalence_power(n, effect, sd, margin, alpha), power, max_n)


def first_crossing(steps: Sequence[float], values: Sequence[float], threshold: float,
                   interpolate: bool = True) -> float | None:
    """First step at which ``values`` reach ``threshold`` (linearly interpolated between the two checkpoints that
    bracket it when ``interpolate``); ``None`` if never reached."""
    if len(steps) != len(values):
        raise ValueError(f"steps and values must have equal lengths, got {len(steps)} and {len(values)}.")
    prev = None
    for s, v in zip(steps, values):
        if v >= threshold:
            if not interpolate or prev is None or prev[1] == v:
                return float(s)
            s0, v0 = prev
            return float(s0 + (threshold - v0) / (v - v0) * (s - s0))
        prev = (s, v)
    return None


def normalised_auc(steps: Sequence[float], values: Sequence[float], until: float | None = None) -> float:
    """Area under the curve ``values(steps)`` (trapezoid, starting at the first step) up to ``until`` (default the
    last step), divided by the step range: the curve's mean level, in the units of ``values``."""
    s = np.asarray(list(steps), dtype=float)
    v = np.asarray(list(values), dtype=float)
    if len(s) != len(v) or len(s) < 2:
        raise ValueError(f"steps and values: need equal lengths >= 2, got {len(s)} and {len(v)}.")
    end = s[-1] if until is None else float(until)
    if not s[0] < end <= s[-1]:
        raise ValueError(f"until={until} must lie in ({s[0]}, {s[-1]}].")
    grid = np.append(s[s < end], end)
    vals = np.interp(grid, s, v)
    return float(np.sum((vals[1:] + vals[:-1]) / 2 * np.diff(grid)) / (end - s[0]))
