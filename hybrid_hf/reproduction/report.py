"""Combine per-(arm, seed) results of the study into per-claim verdicts with confidence intervals, plots and a
Markdown report.

Claims tested (the paper's, at small scale):
  (a) Large-Window Laziness: retrieval emerges later the larger the SWA window (swa128 < swa512 < swa2048).
      Endpoints per seed: the step at which NIAH at the training length first reaches ``niah_threshold``
      (interpolated between checkpoints; runs that never reach it count as their last step, i.e. conservatively
      early), the first step the best full-attention head's copy-paste score reaches ``head_threshold``, and the
      area under the NIAH-vs-step curve (no censoring). Tests: Page's trend test across windows within seed and
      paired tests of swa2048 vs swa128.
  (b) NoPE on the full layers of swa128 raises NIAH at 1x/2x/4x the training length without hurting short-context
      loss: paired differences swa128-nope - swa128 with t intervals; short loss by equivalence (TOST).
  (1) Hybrids converge to the full-attention model's long-context quality: final NIAH and long-distance answer loss
      of each hybrid minus full, judged by equivalence within a margin.
Verdicts: "reproduced", "not reproduced" or "inconclusive at N seeds" (with the seeds needed for 80% power at the
observed effect and variance); (b) may be split: "gain reproduced; no short-context cost inconclusive at N seeds"
when the NIAH gain is established but short-loss non-inferiority (upper end of the 90% interval below the margin)
is not (seeds then: those the one-sided test needs).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..analysis.statistics import (
    equivalence_test,
    first_crossing,
    kaplan_meier,
    logrank_trend_test,
    mean_ci,
    normalised_auc,
    paired_test,
    seeds_for_power,
    trend_test,
)
from .study import SWA_ARMS

ALPHA = 0.05
NIAH_MARGIN = 0.10  # equivalence margin for NIAH (fraction of prompts)
LOSS_MARGIN = 0.02  # equivalence margin for losses (nats)


def load_runs(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Per-run result dicts from JSON files, ``.jsonl`` files (one run per line) or folders holding either; other
    records found there (evaluation logs, environments, analyses) are skipped."""

    def is_run(d: Any) -> bool:
        return isinstance(d, dict) and {"arm", "seed", "curve", "steps_done"} <= d.keys()

    runs: list[dict[str, Any]] = []
    for p in map(Path, paths):
        files = sorted(p.rglob("*.json*")) if p.is_dir() else [p]
        for f in files:
            if f.suffix == ".jsonl":
                runs += [d for line in f.read_text().splitlines() if line.strip() and is_run(d := json.loads(line))]
            elif f.suffix == ".json" and is_run(d := json.loads(f.read_text())):
                runs.append(d)
    if not runs:
        raise ValueError(f"load_runs: no run results under {[str(p) for p in paths]}.")
    seen = {}
    for r in runs:  # a run returned twice (e.g. a resumed call) keeps its longest version, with its final evaluation
        key = (r["arm"], r["seed"])
        rank = (r["steps_done"], bool(r.get("final_niah")))
        if key not in seen or rank > (seen[key]["steps_done"], bool(seen[key].get("final_niah"))):
            seen[key] = r
    return sorted(seen.values(), key=lambda r: (r["arm"], r["seed"]))


def run_metrics(r: dict[str, Any], until: int) -> dict[str, Any]:
    """Endpoints of one run; ``until`` is the step range shared by all runs (for the area under the curve)."""
    s = r["settings"]
    c = [h for h in r["curve"] if h["step"] <= until]
    steps = [h["step"] for h in c]
    niah = [h["niah"]["acc"] for h in c]
    copy = [h["max_copy_full"] or 0.0 for h in c]
    last = r["curve"][-1]
    e_niah = first_crossing(steps, niah, s["niah_threshold"])
    e_head = first_crossing(steps, copy, s["head_threshold"])
    answer = [h["niah"].get("answer_loss") for h in c]  # recorded by runs since the answer-weight change
    auc_answer = normalised_auc(steps, answer) if len(steps) > 1 and None not in answer else None
    far = str(max(int(k) for k, v in last["answer_loss_by_distance"].items() if v is not None)) \
        if any(v is not None for v in last["answer_loss_by_distance"].values()) else None
    return {"emergence_niah": e_niah, "emergence_niah_censored": e_niah is None,
            "emergence_head": e_head, "emergence_head_censored": e_head is None,
            "auc_niah": normalised_auc(steps, niah) if len(steps) > 1 else niah[-1],
            "auc_answer_loss": auc_answer,
            "steps_done": r["steps_done"], "final_niah": last["niah"]["acc"],
            "final_niah_by_length": {k: v["acc"] for k, v in r.get("final_niah", {}).items()},
            "short_loss": last["short_loss"], "far_answer_loss": last["answer_loss_by_distance"].get(far) if far else None}


def _by_arm(runs: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    until = min(r["curve"][-1]["step"] for r in runs)
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for r in sorted(runs, key=lambda r: (_arm_rank(r["arm"]), r["seed"])):
        out.setdefault(r["arm"], {})[r["seed"]] = run_metrics(r, until)
    return out


def _arm_rank(arm: str) -> int:
    """Report order of the arms: full, the SWA windows ascending, NoPE, GDN, then anything else."""
    order = ["full", *SWA_ARMS, "swa128-nope", "gdn"]
    return order.index(arm) if arm in order else len(order)


def _paired(m: dict, a: str, b: str, key: str, sub: str | None = None) -> tuple[list[float], list[float], list[int]]:
    seeds = sorted(set(m.get(a, {})) & set(m.get(b, {})))
    def val(arm: str, sd: int) -> float | None:
        v = m[arm][sd][key]
        if sub is not None:
            v = v.get(sub) if v else None
        return v
    pairs = [(val(a, sd), val(b, sd), sd) for sd in seeds]
    pairs = [(x, y, sd) for x, y, sd in pairs if x is not None and y is not None]
    return [x for x, _, _ in pairs], [y for _, y, _ in pairs], [sd for _, _, sd in pairs]


def _censor(m: dict, arm: str, seed: int, key: str) -> float:
    v = m[arm][seed][key]
    return float(m[arm][seed]["steps_done"]) if v is None else float(v)


def _comparison(x: list[float], y: list[float], alternative: str = "two-sided") -> dict[str, Any] | None:
    if len(x) < 2:
        return None
    t = paired_test(x, y, alternative=alternative)
    t["seeds_for_80pct_power"] = (seeds_for_power(t["mean_diff"], t["sd_diff"], alternative=alternative)
                                  if t["sd_diff"] > 0 else None)
    return t


# Settings that must agree for runs to be compared (steps may differ: shorter runs are censored earlier).
COMPARABLE_SETTINGS = ("size", "seq_len", "batch", "warmup", "learning_rate", "vocab", "needles", "long_fraction",
                       "eval_samples", "short_len", "answer_weight", "niah_threshold", "head_threshold",
                       "text_sources")


def check_comparable(runs: list[dict[str, Any]]) -> None:
    """Raise ``ValueError`` naming the field when runs differ in their training data or in a setting of
    ``COMPARABLE_SETTINGS`` (e.g. runs of the ``main`` and ``docs`` profiles combined by mistake)."""
    if not runs:
        raise ValueError("runs: nothing to analyse (no run records found).")
    first = runs[0]
    for r in runs[1:]:
        for key in COMPARABLE_SETTINGS:
            a, b = first["settings"].get(key), r["settings"].get(key)
            if key == "text_sources":  # a list in records, a tuple in settings; absent before the field: docstrings
                a, b = list(a or []), list(b or [])
            if a != b:
                raise ValueError(f"runs are not comparable: settings.{key} is {a!r} in {first['arm']}/{first['seed']} "
                                 f"but {b!r} in {r['arm']}/{r['seed']}; report them separately.")
        da, db = first.get("data", {}).get("train", {}), r.get("data", {}).get("train", {})
        if da.get("sha256") != db.get("sha256"):
            raise ValueError(f"runs are not comparable: data.train.sha256 is {da.get('sha256')!r} in "
                             f"{first['arm']}/{first['seed']} but {db.get('sha256')!r} in {r['arm']}/{r['seed']} "
                             "(different training text); report them separately.")


def analyse(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """All claim tests; the returned dict is what ``write_report`` renders (and is saved as JSON)."""
    check_comparable(runs)
    m = _by_arm(runs)
    n_seeds = {a: len(v) for a, v in m.items()}
    res: dict[str, Any] = {"n_seeds": n_seeds, "metrics": {a: {str(k): v for k, v in d.items()} for a, d in m.items()}}

    # (a) Large-Window Laziness
    swa = [a for a in SWA_ARMS if a in m]
    a_out: dict[str, Any] = {"arms": swa}
    if len(swa) == 3:
        seeds = sorted(set.intersection(*(set(m[a]) for a in swa)))
        endpoints = [("emergence_niah", True), ("emergence_head", True), ("auc_niah", False)]
        if all(m[a][sd]["auc_answer_loss"] is not None for a in swa for sd in seeds):
            endpoints.append(("auc_answer_loss", True))  # secondary, continuous: mean answer loss over training
        for key, increasing in endpoints:
            table = [[_censor(m, a, sd, key) if key.startswith("emergence") else m[a][sd][key] for a in swa]
                     for sd in seeds]
            entry: dict[str, Any] = {"table": table, "seeds": seeds}
            if len(seeds) >= 2:
                entry["trend"] = trend_test(table, increasing=increasing)
                x, y = [row[0] for row in table], [row[2] for row in table]
                entry["large_minus_small"] = _comparison(x, y, "greater" if increasing else "less")
                entry["mid_minus_small"] = _comparison([r[0] for r in table], [r[1] for r in table])
                entry["large_minus_mid"] = _comparison([r[1] for r in table], [r[2] for r in table])
                entry["censored"] = {a: sum(m[a][sd].get(key + "_censored", False) for sd in seeds) for a in swa}
                if key.startswith("emergence"):  # sensitivity analysis that treats never-emerged runs as censored
                    events = [[not m[a][sd].get(key + "_censored", False) for a in swa] for sd in seeds]
                    entry["logrank_trend"] = logrank_trend_test(table, events, increasing=True)
            entry["per_arm"] = {a: mean_ci([row[i] for row in table]) if len(table) > 1 else None
                                for i, a in enumerate(swa)}
            a_out[key] = entry
        a_out["verdict"] = _verdict_trend(a_out, len(seeds))
    res["laziness"] = a_out

    # (b) NoPE gain
    if "swa128" in m and "swa128-nope" in m:
        lengths = sorted({int(k) for sd in m["swa128"].values() for k in sd["final_niah_by_length"]})
        b_out: dict[str, Any] = {"by_length": {}}
        for n in lengths:
            x, y, _ = _paired(m, "swa128", "swa128-nope", "final_niah_by_length", str(n))
            b_out["by_length"][str(n)] = _comparison(x, y)
        x, y, seeds = _paired(m, "swa128", "swa128-nope", "short_loss")
        b_out["short_loss"] = _comparison(x, y)
        b_out["short_loss_equivalence"] = equivalence_test(x, y, LOSS_MARGIN) if len(x) >= 2 else None
        gains = []
        for sd in seeds:
            r, nn = m["swa128"][sd]["final_niah_by_length"], m["swa128-nope"][sd]["final_niah_by_length"]
            ks = [k for k in r if k in nn]
            if ks:
                gains.append(float(np.mean([nn[k] - r[k] for k in ks])))
        b_out["mean_gain_over_lengths"] = _comparison([0.0] * len(gains), gains) if len(gains) >= 2 else None
        b_out["verdict"] = _verdict_nope(b_out, len(seeds), _reached(runs, "swa128") or _reached(runs, "swa128-nope"))
        res["nope"] = b_out

    # (1) convergence to full attention at the final checkpoint
    if "full" in m:
        c_out: dict[str, Any] = {}
        for arm in m:
            if arm == "full":
                continue
            entry = {}
            for key, margin in (("final_niah", NIAH_MARGIN), ("far_answer_loss", LOSS_MARGIN * 5),
                                ("short_loss", LOSS_MARGIN)):
                x, y, _ = _paired(m, "full", arm, key)
                entry[key] = ({**_comparison(x, y), "equivalence": equivalence_test(x, y, margin)}
                              if len(x) >= 2 else None)
            # how fast: claim (1) says the design changes the speed of emergence, not the end point
            seeds = sorted(set(m["full"]) & set(m[arm]))
            if len(seeds) >= 2:
                entry["emergence_niah"] = _comparison([_censor(m, "full", sd, "emergence_niah") for sd in seeds],
                                                      [_censor(m, arm, sd, "emergence_niah") for sd in seeds])
                entry["emergence_niah"]["censored"] = {a: sum(m[a][sd]["emergence_niah_censored"] for sd in seeds)
                                                       for a in ("full", arm)}
                entry["auc_niah"] = _comparison(*_paired(m, "full", arm, "auc_niah")[:2])
            c_out[arm] = entry
        c_out["verdict"] = _verdict_convergence(c_out, min(n_seeds.values()), _reached(runs, "full"))
        res["convergence"] = c_out
    return res


def _verdict_trend(a_out: dict[str, Any], n: int) -> dict[str, Any]:
    primary = a_out.get("emergence_niah", {})
    auc = a_out.get("auc_niah", {})
    if "trend" not in primary:
        return {"verdict": f"inconclusive at {n} seeds", "why": "fewer than 2 seeds"}
    p, p_auc = primary["trend"]["p_page"], auc.get("trend", {}).get("p_page", 1.0)
    comp = primary["large_minus_small"]
    all_censored = all(v == n for v in primary["censored"].values())
    if all_censored:
        return {"verdict": f"inconclusive at {n} seeds", "why": "no SWA run reached the NIAH criterion"}
    if p < ALPHA and primary["trend"]["mean_spearman"] > 0:
        lr = primary.get("logrank_trend")
        sens = (f"; censoring-aware log-rank trend p={lr['p_permutation']:.3g} ({lr['permutation_method']} "
                "permutation)" if lr else "")
        return {"verdict": "reproduced", "why": f"Page trend p={p:.3g} (emergence step grows with the window), "
                f"area-under-curve trend p={p_auc:.3g}{sens}"}
    opposite = paired_test([r[0] for r in primary["table"]], [r[2] for r in primary["table"]], alternative="less")
    if opposite["p_t"] < ALPHA and primary["trend"]["mean_spearman"] < 0:
        return {"verdict": "not reproduced", "why": f"emergence is earlier with the larger window (paired t p="
                f"{opposite['p_t']:.3g})"}
    need = comp.get("seeds_for_80pct_power") if comp else None
    return {"verdict": f"inconclusive at {n} seeds", "why": f"Page trend p={p:.3g}; swa2048 - swa128 emergence "
            f"{comp['mean_diff']:+.0f} steps [{comp['low']:+.0f}, {comp['high']:+.0f}]" if comp else "",
            "seeds_for_80pct_power": need}


def _reached(runs: list[dict[str, Any]], arm: str) -> bool:
    """Whether any run of ``arm`` met the NIAH criterion at its last checkpoint (retrieval was learned at all)."""
    return any(r["curve"][-1]["niah"]["acc"] >= r["settings"]["niah_threshold"] for r in runs if r["arm"] == arm)


def _verdict_nope(b_out: dict[str, Any], n: int, learned: bool = True) -> dict[str, Any]:
    g = b_out.get("mean_gain_over_lengths")
    eq = b_out.get("short_loss_equivalence")
    if not g:
        return {"verdict": f"inconclusive at {n} seeds", "why": "fewer than 2 paired seeds"}
    harmless = eq is not None and eq["high"] < LOSS_MARGIN
    txt = (f"NIAH gain (mean over lengths) {100 * g['mean_diff']:+.1f} points [{100 * g['low']:+.1f}, "
           f"{100 * g['high']:+.1f}]; short-loss difference {eq['mean_diff']:+.4f} [{eq['low']:+.4f}, "
           f"{eq['high']:+.4f}] nats (90% CI; margin {LOSS_MARGIN})" if eq else "")
    if g["low"] > 0 and harmless:
        return {"verdict": "reproduced", "why": txt}
    if g["high"] < 0 or (eq is not None and eq["low"] > LOSS_MARGIN):
        return {"verdict": "not reproduced", "why": txt}
    if g["low"] > 0 and eq is not None:  # the gain is established; "no short-context cost" is not (yet)
        # "no cost" is non-inferiority: the upper end of the 90% interval below +margin (one-sided test at 5%)
        sd = b_out["short_loss"]["sd_diff"] if b_out.get("short_loss") else 0.0
        need = (seeds_for_power(eq["mean_diff"] - LOSS_MARGIN, sd, alternative="less")
                if sd > 0 and eq["mean_diff"] < LOSS_MARGIN else None)
        more = (f"; the non-inferiority test needs ~{need} seeds at the observed difference and spread" if need
                else "; the observed short-loss difference is at or beyond the margin")
        return {"verdict": f"gain reproduced; no short-context cost inconclusive at {n} seeds", "why": txt + more,
                "seeds_for_80pct_power": need}
    if abs(g["low"]) < NIAH_MARGIN and abs(g["high"]) < NIAH_MARGIN:  # no gain: meaningful only if retrieval exists
        if learned:
            return {"verdict": "not reproduced", "why": txt}
        return {"verdict": f"inconclusive at {n} seeds", "why": "no swa128 or swa128-nope run learned retrieval "
                "(final NIAH below the criterion in every seed), so 'no gain' is not evidence: " + txt}
    return {"verdict": f"inconclusive at {n} seeds", "why": txt, "seeds_for_80pct_power": g["seeds_for_80pct_power"]}


def _verdict_convergence(c_out: dict[str, Any], n: int, full_learned: bool = True) -> dict[str, Any]:
    niah = {a: e["final_niah"] for a, e in c_out.items() if isinstance(e, dict) and e.get("final_niah")}
    if not niah:
        return {"verdict": f"inconclusive at {n} seeds", "why": "fewer than 2 paired seeds"}
    eq = {a: e["equivalence"]["equivalent"] for a, e in niah.items()}
    differs = {a: e["p_t"] < ALPHA and abs(e["mean_diff"]) >= NIAH_MARGIN for a, e in niah.items()}
    txt = "; ".join(f"{a} - full {100 * e['mean_diff']:+.0f} points [{100 * e['low']:+.0f}, {100 * e['high']:+.0f}]"
                    for a, e in niah.items())
    if all(eq.values()):
        if not full_learned:  # "as good as full" is vacuous while full itself does not retrieve
            return {"verdict": f"inconclusive at {n} seeds", "why": "the full-attention baseline did not learn "
                    f"retrieval (final NIAH below the criterion in every seed): {txt}"}
        speed = "; ".join(f"{a} emerges {e['emergence_niah']['mean_diff']:+.0f} steps [{e['emergence_niah']['low']:+.0f}"
                          f", {e['emergence_niah']['high']:+.0f}] vs full (+ = later; p={e['emergence_niah']['p_t']:.2g})"
                          for a, e in c_out.items() if isinstance(e, dict) and e.get("emergence_niah")
                          and e["emergence_niah"]["p_t"] < ALPHA)
        return {"verdict": "reproduced", "why": f"every hybrid within +-{NIAH_MARGIN:.0%} of full (TOST): {txt}"
                + (f"; while the speed differs: {speed}" if speed else "")}
    if any(differs.values()):
        return {"verdict": "not reproduced at this training length",
                "why": f"{', '.join(a for a, d in differs.items() if d)} differ from full: {txt}"}
    need = max((e["seeds_for_80pct_power"] or 0) for e in niah.values())
    return {"verdict": f"inconclusive at {n} seeds", "why": txt, "seeds_for_80pct_power": need or None}


# ---------------------------------------------------------------------------------------------- plots
def plots(runs: list[dict[str, Any]], out: Path) -> list[str]:
    """Emergence curves with 95% bands, Kaplan-Meier emergence, NIAH vs length, answer loss by needle distance (at
    the end and over training, per arm). Returns file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = sorted({r["arm"] for r in runs}, key=_arm_rank)
    color = {a: f"C{i}" for i, a in enumerate(arms)}

    def band(ax, arm: str, xs: np.ndarray, ys: np.ndarray, label: str, bounded: bool = False) -> None:
        mean = ys.mean(0)
        ax.plot(xs, mean, color=color[arm], label=label)
        if len(ys) > 1:
            from scipy import stats

            half = stats.t.ppf(0.975, len(ys) - 1) * ys.std(0, ddof=1) / math.sqrt(len(ys))
            low, high = mean - half, mean + half
            if bounded:  # a fraction: the band is drawn inside [0, 1]
                low, high = np.clip(low, 0, 1), np.clip(high, 0, 1)
            ax.fill_between(xs, low, high, color=color[arm], alpha=0.2)

    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    panels = [("niah", "NIAH exact match at the training length"), ("copy", "max copy-paste score, full layers"),
              ("short", "short-context loss, held-out text (nats)"), ("far", "answer loss, farthest distance bin")]
    for arm in arms:
        rs = [r for r in runs if r["arm"] == arm]
        n = min(len(r["curve"]) for r in rs)
        s = rs[0]["settings"]
        tokens = np.array([h["step"] for h in rs[0]["curve"][:n]]) * s["batch"] * s["seq_len"] / 1e6
        label = f"{arm} (W={rs[0]['window']})" if rs[0]["window"] else arm
        far = max(rs[0]["distance_bins"])
        vals = {"niah": [[h["niah"]["acc"] for h in r["curve"][:n]] for r in rs],
                "copy": [[h["max_copy_full"] or 0 for h in r["curve"][:n]] for r in rs],
                "short": [[h["short_loss"] for h in r["curve"][:n]] for r in rs],
                "far": [[h["answer_loss_by_distance"].get(str(far)) or np.nan for h in r["curve"][:n]] for r in rs]}
        for ax, (key, _) in zip(axes.flat, panels):
            band(ax, arm, tokens, np.array(vals[key], dtype=float), f"{label}, n={len(rs)}",
                 bounded=key in ("niah", "copy"))
    for ax, (_, title) in zip(axes.flat, panels):
        ax.set_title(title + " (mean, 95% t band over seeds" + (", clipped to [0, 1])" if "NIAH" in title or "copy"
                                                              in title else ")"), fontsize=9)
        ax.set_xlabel("training tokens (M)")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "emergence.png", dpi=100)
    plt.close(fig)

    names = ["emergence.png", "length.png"]
    per_arm = {a: [r for r in runs if r["arm"] == a] for a in arms}
    fig, axes_km = plt.subplots(1, 2, figsize=(12, 4.2))
    drawn = False
    for ax, (key, title) in zip(axes_km, (("emergence_niah", "NIAH at the training length"),
                                          ("emergence_head", "full-layer copy-paste score"))):
        for arm, rs in per_arm.items():
            ms = [run_metrics(r, r["steps_done"]) for r in rs]
            times = [x[key] if x[key] is not None else r["steps_done"] for x, r in zip(ms, rs)]
            km = kaplan_meier(times, [not x[key + "_censored"] for x in ms])
            last = max(r["steps_done"] for r in rs)
            ax.step([*km["time"], last], [1 - v for v in km["survival"]] + [1 - km["survival"][-1]], where="post",
                    color=color[arm], label=f"{arm}, n={len(rs)}")
            drawn = True
        thr = runs[0]["settings"]["niah_threshold" if key == "emergence_niah" else "head_threshold"]
        ax.set_title(f"fraction of seeds past {title} >= {thr} (Kaplan-Meier)", fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if drawn:
        fig.tight_layout()
        fig.savefig(out / "emergence_km.png", dpi=100)
        names.append("emergence_km.png")
    plt.close(fig)

    # LongPPL-by-position over training: the answer loss per needle-to-answer distance bin, one panel per arm
    cols = min(3, len(arms))
    rows = math.ceil(len(arms) / cols)
    fig, axes_d = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False, sharey=True)
    for ax, arm in zip(axes_d.flat, arms):
        rs = per_arm[arm]
        n = min(len(r["curve"]) for r in rs)
        st = rs[0]["settings"]
        tokens = np.array([h["step"] for h in rs[0]["curve"][:n]]) * st["batch"] * st["seq_len"] / 1e6
        bins = rs[0]["distance_bins"]
        cmap = plt.get_cmap("viridis")
        for j, b in enumerate(bins):
            ys = np.array([[h["answer_loss_by_distance"].get(str(b)) for h in r["curve"][:n]] for r in rs],
                          dtype=float)
            if np.isnan(ys).all():
                continue
            ax.plot(tokens, np.nanmean(ys, 0), color=cmap(j / max(1, len(bins) - 1)), label=f"<= {b}")
        ax.set_title(f"{arm} (n={len(rs)}): answer loss by needle distance", fontsize=9)
        ax.set_xlabel("training tokens (M)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, title="distance (tokens)", title_fontsize=6)
    for ax in list(axes_d.flat)[len(arms):]:
        ax.set_visible(False)
    axes_d[0, 0].set_ylabel("nats per answer token (mean over seeds)")
    fig.tight_layout()
    fig.savefig(out / "longppl.png", dpi=100)
    plt.close(fig)
    names.append("longppl.png")

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for arm in arms:
        rs = [r for r in runs if r["arm"] == arm and r.get("final_niah")]
        if rs:
            lengths = sorted(int(k) for k in rs[0]["final_niah"])
            ys = np.array([[r["final_niah"][str(k)]["acc"] for k in lengths] for r in rs])
            ci = [mean_ci(ys[:, j]) if len(ys) > 1 else {"mean": ys[0, j], "low": ys[0, j], "high": ys[0, j]}
                  for j in range(len(lengths))]
            mean = np.array([c["mean"] for c in ci])
            ax1.errorbar(lengths, mean, yerr=[mean - [c["low"] for c in ci], [c["high"] for c in ci] - mean],
                         marker="o", capsize=3, color=color[arm], label=arm)
        rs = [r for r in runs if r["arm"] == arm]
        bins = rs[0]["distance_bins"]
        ys = np.array([[r["curve"][-1]["answer_loss_by_distance"].get(str(b)) or np.nan for b in bins] for r in rs],
                      dtype=float)
        seen = ~np.isnan(ys).all(0)  # bins without any answer (short rows) are left out
        if seen.any():
            ax2.plot(np.asarray(bins)[seen], np.nanmean(ys[:, seen], 0), marker="o", color=color[arm], label=arm)
    ax1.axvline(runs[0]["settings"]["seq_len"], color="grey", ls="--", lw=0.8)
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # no final evaluation yet: nothing drawn on the left
            ax.legend(fontsize=7)
    ax1.set_xlabel("context length (tokens); dashed: training length")
    ax1.set_title("final NIAH exact match (mean, 95% t interval over seeds)", fontsize=9)
    ax2.set_xlabel("needle-to-answer distance (bin upper edge, tokens)")
    ax2.set_title("final answer loss by distance (LongPPL-by-position view; mean over seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "length.png", dpi=100)
    plt.close(fig)
    return names


# ---------------------------------------------------------------------------------------------- report
def _ci(c: dict[str, Any] | None, scale: float = 1.0, fmt: str = "{:+.1f}") -> str:
    if not c:
        return "-"
    key = "mean_diff" if "mean_diff" in c else "mean"
    return f"{fmt.format(scale * c[key])} [{fmt.format(scale * c['low'])}, {fmt.format(scale * c['high'])}]"


def loss_statement(runs: list[dict[str, Any]]) -> str:
    """One sentence on the training loss of ``runs``: the paper's plain LM loss, or the answer-token weighting
    (a deviation from the paper) with its weight; mixed weights across runs are listed per weight."""
    weights: dict[float, list[str]] = {}
    for r in runs:
        weights.setdefault(float(r["settings"].get("answer_weight", 1.0)), []).append(f"{r['arm']}/{r['seed']}")
    if set(weights) == {1.0}:
        return "Training loss: the paper's plain next-token loss (answer_weight 1)."
    if len(weights) == 1:
        (w,) = weights
        return (f"Training loss: **answer_weight {w:g}**, a deviation from the paper: the long documents' answer "
                f"tokens weigh {w:g}x in a weighted mean token loss, identically for every arm (the paper uses the "
                "plain next-token loss).")
    parts = "; ".join(f"{w:g}: {', '.join(rs)}" for w, rs in sorted(weights.items()))
    return (f"Training loss: **runs differ in answer_weight** (deviation from the paper where > 1; arms are not "
            f"comparable across weights): {parts}.")


def write_report(runs: list[dict[str, Any]], out: str | Path, commands: Sequence[str] = (),
                 environment: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write report.md, analysis.json, runs.jsonl (raw per-seed results) and the plots under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    res = analyse(runs)
    figs = plots(runs, out)
    with (out / "runs.jsonl").open("w") as fh:
        for r in runs:
            fh.write(json.dumps(r) + "\n")
    (out / "analysis.json").write_text(json.dumps({"analysis": res, "environment": environment,
                                                   "commands": list(commands)}, indent=1))
    s = runs[0]["settings"]
    lines = ["# Small-scale reproduction: Large-Window Laziness, the NoPE gain and convergence, with seeds", "",
             f"Seeds per arm: {res['n_seeds']}. Model size {s['size']} ({runs[0]['non_embedding_params']:,} "
             f"non-embedding parameters for {runs[0]['arm']}), training length {s['seq_len']}, batch {s['batch']}, "
             f"{s['steps']} steps planned, constant LR {s['learning_rate']} after {s['warmup']} warmup steps. "
             f"Data: {runs[0]['data']['corpus_source']} ({runs[0]['data']['train']['chars'] / 1e6:.1f} MB train, "
             f"{runs[0]['data']['held_out']['chars'] / 1e6:.2f} MB held out, disjoint by document), mixed 1:1 with "
             f"long documents of {s['needles']} needles each. Windows: "
             + ", ".join(f"{a} {w}" for a, w in sorted({(r["arm"], r["window"]) for r in runs if r["window"]},
                                                        key=lambda aw: _arm_rank(aw[0])))
             + ". Intervals are 95% t intervals over seeds unless marked; tests are paired by seed.", "",
             loss_statement(runs), ""]
    stopped = [f"{r['arm']}/{r['seed']} ({r['steps_done']})" for r in runs if r["steps_done"] < s["steps"]]
    if stopped:
        lines += [f"Stopped before {s['steps']} steps (time budget): {', '.join(stopped)}.", ""]
    lines += ["## Verdicts", "", "| claim | verdict | evidence | seeds for 80% power |", "|---|---|---|---|"]
    for name, key in (("(a) Large-Window Laziness", "laziness"), ("(b) NoPE gain", "nope"),
                      ("(1) hybrids converge to full", "convergence")):
        v = res.get(key, {}).get("verdict")
        if v:
            lines.append(f"| {name} | **{v['verdict']}** | {v.get('why', '')} | {v.get('seeds_for_80pct_power') or '-'} |")
    lazy = res["laziness"].get("arms", [])
    lines += ["", "## (a) Large-Window Laziness", ""]
    if len(lazy) < len(SWA_ARMS):
        lines += [f"Not tested by these runs: it needs the arms {', '.join(SWA_ARMS)}; these have "
                  f"{', '.join(lazy) if lazy else 'none of them'}."]
    else:
        lines += [f"Emergence: first step with NIAH@{s['seq_len']} >= {s['niah_threshold']} (interpolated; a run that "
                  f"never reaches it counts as its last step), first step with a full-layer copy score >= "
                  f"{s['head_threshold']}, the area under the NIAH-vs-step curve (its mean level) and, where recorded, the "
                  "mean NIAH answer loss over training (`auc_answer_loss`, nats per answer token; a continuous "
                  "secondary endpoint that separates arms even when none reaches the NIAH threshold). The Page test is the "
                  "primary test; the log-rank trend test (permutation within seed) is a censoring-aware sensitivity "
                  "analysis: a run that never reached the criterion is censored at its last step instead of tied there; "
                  "`emergence_km.png` shows the fraction of seeds past the criterion per arm (Kaplan-Meier).", "",
                  "| endpoint | " + " | ".join(lazy) +
                  " | Page p (one-sided) | log-rank trend p (permutation / normal) | mean Spearman | swa2048 - swa128 [95% CI] | "
                  "p (t / Wilcoxon) | never reached |",
                  "|---" * (len(lazy) + 7) + "|"]
        for key, fmt in (("emergence_niah", "{:.0f}"), ("emergence_head", "{:.0f}"), ("auc_niah", "{:.3f}"),
                         ("auc_answer_loss", "{:.3f}")):
            e = res["laziness"].get(key)
            if not e or "trend" not in e:
                continue
            comp = e["large_minus_small"]
            cells = [_ci(e["per_arm"][a], fmt=fmt) for a in lazy]
            lr = e.get("logrank_trend")
            lr_cell = f"{lr['p_permutation']:.3g} / {lr['p_asymptotic']:.3g}" if lr else "-"
            lines.append(f"| {key} | " + " | ".join(cells) + f" | {e['trend']['p_page']:.3g} | {lr_cell} | "
                         f"{e['trend']['mean_spearman']:+.2f} | {_ci(comp, fmt=fmt.replace('{:', '{:+'))} | "
                         f"{comp['p_t']:.3g} / {comp['p_wilcoxon']:.3g} | {e['censored']} |")
    if "nope" in res:
        b = res["nope"]
        lines += ["", "## (b) NoPE on the full layers (swa128-nope - swa128, final checkpoint)", "",
                  "| quantity | difference [95% CI] | p (t / Wilcoxon) | seeds for 80% power |", "|---|---|---|---|"]
        for n, c in b["by_length"].items():
            if c:
                lines.append(f"| NIAH@{n} (points) | {_ci(c, 100)} | {c['p_t']:.3g} / {c['p_wilcoxon']:.3g} | "
                             f"{c['seeds_for_80pct_power'] or '-'} |")
        c = b["short_loss"]
        if c:
            eq = b["short_loss_equivalence"]
            lines.append(f"| short loss (nats) | {_ci(c, fmt='{:+.4f}')} | {c['p_t']:.3g} / {c['p_wilcoxon']:.3g} | "
                         f"TOST margin {LOSS_MARGIN}: p={eq['p_tost']:.3g}, equivalent={eq['equivalent']} |")
    if "convergence" in res:
        lines += ["", "## (1) Convergence to full attention (hybrid - full, final checkpoint)", "",
                  f"Equivalence margins: NIAH {NIAH_MARGIN:.0%}, far-distance answer loss {5 * LOSS_MARGIN} nats, "
                  f"short loss {LOSS_MARGIN} nats (90% interval inside the margin).", "",
                  "| arm | NIAH (points) | equivalent | far answer loss | equivalent | short loss | equivalent |",
                  "|---|---|---|---|---|---|---|"]
        for arm, e in res["convergence"].items():
            if arm == "verdict":
                continue
            cells = []
            for key, scale, fmt in (("final_niah", 100, "{:+.1f}"), ("far_answer_loss", 1, "{:+.3f}"),
                                    ("short_loss", 1, "{:+.4f}")):
                c = e.get(key)
                cells += [_ci(c, scale, fmt), str(c["equivalence"]["equivalent"]) if c else "-"]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines += ["", f"How fast (hybrid - full, paired by seed; + = later / larger): the step at which "
                  f"NIAH@{s['seq_len']} first reaches {s['niah_threshold']} (a run that never does counts as its last "
                  "step, which biases the difference toward 0) and the area under the NIAH-vs-step curve.", "",
                  "| arm | emergence (steps) | p (t / Wilcoxon) | never reached (full / arm) | NIAH AUC | "
                  "p (t / Wilcoxon) |",
                  "|---|---|---|---|---|---|"]
        for arm, e in res["convergence"].items():
            if arm == "verdict" or not e.get("emergence_niah"):
                continue
            em, auc = e["emergence_niah"], e["auc_niah"]
            lines.append(f"| {arm} | {_ci(em, fmt='{:+.0f}')} | {em['p_t']:.3g} / {em['p_wilcoxon']:.3g} | "
                         f"{em['censored']['full']} / {em['censored'][arm]} | {_ci(auc, fmt='{:+.3f}')} | {auc['p_t']:.3g} / {auc['p_wilcoxon']:.3g} |")
    lines += ["", "## Per-arm final values (mean [95% CI] over seeds)", "",
              "| arm | seeds | steps | NIAH@train | " + " | ".join(f"NIAH@{k}" for k in _lengths(runs)) +
              " | short loss |", "|---" * (5 + len(_lengths(runs))) + "|"]
    for arm, per in res["metrics"].items():
        vals = list(per.values())
        cell = lambda xs, sc=100, f="{:.1f}": _ci(mean_ci(xs), sc, f) if len(xs) > 1 else f.format(sc * xs[0])  # noqa: E731
        lines.append(f"| {arm} | {len(vals)} | {min(v['steps_done'] for v in vals)} | "
                     f"{cell([v['final_niah'] for v in vals])} | "
                     + " | ".join(cell([v['final_niah_by_length'].get(k, np.nan) for v in vals]) for k in _lengths(runs))
                     + f" | {cell([v['short_loss'] for v in vals], 1, '{:.4f}')} |")
    lines += ["", *[f"![{f}]({f})" for f in figs], ""]
    if commands:
        lines += ["## Commands", "", "```", *commands, "```", ""]
    if environment:
        lines += ["## Environment", "", "```", json.dumps(environment, indent=1), "```", ""]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return res


def _lengths(runs: list[dict[str, Any]]) -> list[str]:
    ks = {k for r in runs for k in r.get("final_niah", {})}
    return sorted(ks, key=int)
