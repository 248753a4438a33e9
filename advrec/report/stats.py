"""The run's tests, corrected together: every verdict decides on a Benjamini-Hochberg adjusted p-value.

The family is every test the report's verdicts rest on:

* each evaluation's effect on the origin category's exposure, per K and metric (CHR@K and
  nCDCG@K; CHR's count form is the same test), for the attacks and their controls: in retrain the paired
  t-test across replicates, in deployment the sign-flip test over the origin items' changes (the deployed
  models are fixed; :mod:`services.recommender.metrics.effects`);
* each attack's effect beyond its placebo's (``beyond_placebo``: in retrain, replicate r's attack minus
  replicate r's placebo, paired t-test across replicates; in deployment, item by item the attack's change
  minus its placebo's, sign-flip test over the origin items);
* each paired success-rate comparison of a defended extractor with the baseline on the same images
  (exact McNemar: a binomial test on the discordant pairs);
* each rank correlation of the exposure change with the feature loss and with the success rate,
  per mode, over distinct attack cells;
* each item-promotion cell's change of the promoted items' score and exposure, and the change beyond
  its placebo's (:mod:`.promotion`).

:func:`annotate` writes ``p_adjusted`` and ``significant`` (adjusted p <= alpha: a false discovery
rate of alpha over the family) next to every raw p-value. The study's own test (paired over users
of replicate-averaged values, the study tables' ``*``) is corrected in its own family and reported,
never used for a verdict.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
from scipy import stats

from advrec.report.collect import TESTED_METRICS, attack_summary, finite, matching, summary_value
from advrec.report.promotion import promotion_tests
from services.recommender.metrics.effects import item_effect, replicate_effect

# a correlation needs at least this many distinct points to be tested at all: with 4, the exact test's
# smallest two-sided p is 2/4! = 0.083, so no order of 4 points could ever be significant at 0.05 (a
# "no" would be the test's design, not the data's answer); with 5 it is 2/5! = 0.017
MIN_POINTS = 5
# up to this many points the rank correlation's p-value enumerates every pairing (9! = 362,880)
EXACT_MAX_POINTS = 9
PERMUTATIONS = 99_999  # above it: this many seeded random pairings


def benjamini_hochberg(pvalues: list[float]) -> list[float]:
    """BH-adjusted p-values (``scipy.stats.false_discovery_control``), same order; [] for []."""
    if not pvalues:
        return []
    return [float(v) for v in stats.false_discovery_control(np.asarray(pvalues, dtype=np.float64), method="bh")]


def mcnemar_exact(base_only: int, defense_only: int) -> float | None:
    """Two-sided exact McNemar p-value from the discordant counts (None when there are none)."""
    n = int(base_only) + int(defense_only)
    if n == 0:
        return None
    return float(stats.binomtest(int(base_only), n, 0.5).pvalue)


def spearman(xs: list[float], ys: list[float], seed: int = 0) -> tuple[float, float]:
    """(rho, two-sided p) of Spearman's rank correlation by permutation of the pairings: exact up to
    :data:`EXACT_MAX_POINTS` points (every pairing), else :data:`PERMUTATIONS` seeded random pairings
    (p = (1 + hits) / (1 + draws), never 0). Two-sided p = 2 x the smaller tail, at most 1; average
    ranks for ties.

    The few distinct attack cells of a run are far too few for the t approximation of
    ``scipy.stats.spearmanr``, which gives p = 0 at a perfect rank agreement of 9 points (exact:
    2/9! = 5.5e-6)."""
    ra = stats.rankdata(np.asarray(xs, dtype=np.float64))
    rb = stats.rankdata(np.asarray(ys, dtype=np.float64))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    if denom == 0:
        raise ValueError("a rank correlation needs varying values on both sides")
    observed = float(ra @ rb) / denom
    tol = 1e-12
    if ra.size <= EXACT_MAX_POINTS:
        pairings = np.fromiter(itertools.chain.from_iterable(itertools.permutations(range(ra.size))), dtype=np.int8)
        null = (rb[pairings.reshape(-1, ra.size)] @ ra) / denom
        upper, lower = float(np.mean(null >= observed - tol)), float(np.mean(null <= observed + tol))
    else:
        rng = np.random.default_rng(seed)
        null = (rng.permuted(np.tile(rb, (PERMUTATIONS, 1)), axis=1) @ ra) / denom
        upper = (1 + int(np.sum(null >= observed - tol))) / (1 + PERMUTATIONS)
        lower = (1 + int(np.sum(null <= observed + tol))) / (1 + PERMUTATIONS)
    return observed, min(1.0, 2 * min(upper, lower))


def correlations(results: dict[str, Any], k: int) -> list[dict[str, Any]]:
    """Per mode: Spearman correlation, over distinct attack cells, of the mean CHR@k effect (across
    recommenders) with the cell's feature MSE and with its SR. n = the number of cells (each cell's
    SR and feature loss are one measurement, shared by its recommenders: pooling recommender x mode
    rows would count them several times)."""
    out = []
    for mode in results["spec"]["modes"]:
        points: dict[tuple[str, str, float], list[float]] = {}
        for e in results["evaluations"]:
            if e["control"] != "attack" or e["mode"] != mode:
                continue
            row = next((r for r in e.get("per_k", []) if r.get("k") == k), None)
            eff = finite(((row or {}).get("chr") or {}).get("effect"))
            if eff is not None:
                points.setdefault((e["extractor"], e["method"], e["eps"]), []).append(eff)
        xs_fl, xs_sr, ys = [], [], []
        for (ext, method, eps), effects in points.items():
            s = attack_summary(results, ext, method, eps)
            fl, sr = summary_value(s, "feature MSE"), summary_value(s, "SR %")
            if fl is None or sr is None:
                continue
            xs_fl.append(fl)
            xs_sr.append(sr)
            ys.append(float(np.mean(effects)))
        for name, xs in (("feature_mse", xs_fl), ("sr", xs_sr)):
            entry: dict[str, Any] = {"mode": mode, "k": k, "with": name, "n": len(ys), "rho": None, "p_value": None}
            if len(ys) >= MIN_POINTS and np.ptp(xs) > 0 and np.ptp(ys) > 0:
                rho, p = spearman(xs, ys)
                entry.update(rho=finite(rho), p_value=finite(p), p_method="exact permutation"
                             if len(ys) <= EXACT_MAX_POINTS else f"{PERMUTATIONS} random permutations")
            out.append(entry)
    return out


def _exposure_tests(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every (evaluation, K, metric) effect dict that carries a p-value (mutated in place by annotate)."""
    out = []
    for e in results["evaluations"]:
        for row in e.get("per_k", []):
            for metric in TESTED_METRICS:
                m = row.get(metric)
                if isinstance(m, dict):
                    out.append(m)
    return out


def beyond_placebo(results: dict[str, Any]) -> list[dict[str, Any]]:
    """For every attack evaluation with a placebo twin, per K and tested metric: the attack's effect minus
    the placebo's, replicate by replicate (both compare with the same clean model of that seed).
    Stored as ``<metric>["beyond_placebo"]``; returns the new test dicts."""
    out = []
    for e in results["evaluations"]:
        if e["control"] != "attack":
            continue
        twin = matching(results, e, "placebo")
        if twin is None:
            continue
        rows = {r["k"]: r for r in twin.get("per_k", [])}
        for row in e.get("per_k", []):
            for metric in TESTED_METRICS:
                a, p = row.get(metric), (rows.get(row["k"]) or {}).get(metric)
                if not isinstance(a, dict) or not isinstance(p, dict):
                    continue
                after_a, after_p = a.get("after_per_replicate"), p.get("after_per_replicate")
                if not after_a or not after_p or len(after_a) != len(after_p):
                    continue
                items_a, items_p = a.get("item_deltas"), p.get("item_deltas")
                if e["mode"] == "deployment" and items_a and items_p and len(items_a) == len(items_p) >= 2:
                    # deployment: item by item, the attack's change minus its placebo's (the models are fixed)
                    eff = item_effect(np.asarray(items_a) - np.asarray(items_p))
                    test = {k: eff[k] for k in ("effect", "ci_low", "ci_high", "n_items", "test")}
                else:
                    eff = replicate_effect(after_p, after_a)
                    test = {k: eff[k] for k in ("effect", "ci_low", "ci_high", "n_replicates")}
                test["p_value"] = eff["p_value"]
                a["beyond_placebo"] = test
                out.append(test)
    return out


def annotate(results: dict[str, Any], k: int) -> dict[str, Any]:
    """Add the run-wide tests to ``results`` and correct every p-value for multiplicity (in place).

    Adds ``sr_pairs[*].p_value``, ``correlations``, and to every test ``p_adjusted`` and
    ``significant``; to every exposure effect also ``user_p_adjusted`` (the study's test in its own
    family). Returns a summary of the family (sizes, alpha).
    """
    alpha = results["alpha"]
    for pair in results.get("sr_pairs", []):
        pair["p_value"] = mcnemar_exact(pair["base_only"], pair["defense_only"])
    results["correlations"] = correlations(results, k)
    tests = (_exposure_tests(results) + beyond_placebo(results) + results.get("sr_pairs", []) + results["correlations"]
             + promotion_tests(results))
    testable = [t for t in tests if finite(t.get("p_value")) is not None]
    for t, adj in zip(testable, benjamini_hochberg([float(t["p_value"]) for t in testable]), strict=True):
        t["p_adjusted"] = adj
        t["significant"] = adj <= alpha
    for t in tests:
        if finite(t.get("p_value")) is None:
            t["p_adjusted"], t["significant"] = None, False
    study = [m for m in _exposure_tests(results) if finite(m.get("user_t_pvalue")) is not None]
    for m, adj in zip(study, benjamini_hochberg([float(m["user_t_pvalue"]) for m in study]), strict=True):
        m["user_p_adjusted"] = adj
    return {"alpha": alpha, "method": "Benjamini-Hochberg", "n_tests": len(testable),
            "n_untestable": len(tests) - len(testable), "n_significant": sum(bool(t["significant"]) for t in testable),
            "n_study_tests": len(study)}
