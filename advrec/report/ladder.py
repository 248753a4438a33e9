"""The defense ladder: what each rung costs, and what it protects against the adaptive attacker.

Rungs: the undefended extractor (the baseline), every defended extractor of the spec (adversarial training:
PGD-AT, Free-AT), every defense in front of an extractor (``defenses:``: JPEG, bit depth, median, random
resize-and-pad, a denoiser, a detector) and recommender adversarial training (AMR on the baseline extractor).
Per rung, on the run's numbers:

* **clean accuracy**: HR@10 and AUC of the clean recommender (mean and 95 % Student-t interval across its
  replicates) and their cost against the baseline, in points;
* **the threat**: the attack cell whose exposure gain under the baseline is the largest that is significant
  and beyond its placebo (a category attack on CHR@K, or item promotion on the promoted items' top-K share, at
  the headline K and the scenario's recommender) -- that cell's exposure change under the rung against the
  adaptive attacker (it attacks the composition: BPDA, EOT, end to end, detector-aware; for adversarial
  training and AMR the white-box attacker is the adaptive one) and against the non-adaptive one (it attacks the
  bare extractor; the defense is applied after), each with its verdict;
* **protection**: the baseline's gain minus the rung's gain under the adaptive attacker, and per point of HR@10
  lost (the ladder's order: rungs that cost nothing first, by protection);
* a detector's share of attacked uploads it flagged (its true-positive rate on them; its false-positive rate
  on clean images is the rate it was set at) and every rung's latency per image (features step).

Nothing is computed here that results.json does not hold: these are views of the evaluations and their tests.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

from advrec.report.collect import NOISE, finite, per_k, summary_k, view_names
from advrec.report.findings import direction
from advrec.report.promotion import cell_label, gained, method_label, per_item
from advrec_common.conventions import NONADAPTIVE
from services.recommender.metrics.effects import replicate_effect, sign_flip_test

HR = "hr@10"


def _exact(x: Any) -> float | None:
    """An exposure change as a number, float noise of a zero difference as 0 (a detector's +1.2e-18 is +0)."""
    v = finite(x)
    return None if v is None else (0.0 if abs(v) < NOISE else v)


def _mean_ci(values: list[float]) -> dict[str, float | None]:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "ci_low": None, "ci_high": None}
    if v.size < 2:
        return {"mean": float(v.mean()), "ci_low": None, "ci_high": None}
    half = float(stats.t.ppf(0.975, v.size - 1)) * float(v.std(ddof=1)) / math.sqrt(v.size)
    return {"mean": float(v.mean()), "ci_low": float(v.mean() - half), "ci_high": float(v.mean() + half)}


def _clean(results: dict[str, Any], view: str, rec: str) -> dict[str, Any]:
    row = next((c for c in results["clean"] if (c["extractor"], c["recommender"]) == (view, rec)), None)
    if row is None:
        return {}
    reps = row.get("accuracy_per_replicate") or [row["accuracy"]]
    return {metric: _mean_ci([finite(r.get(metric)) for r in reps]) for metric in (HR, "auc")}


def _threat_cells(results: dict[str, Any], rec: str, k: int) -> list[dict[str, Any]]:
    """Every attack cell at the baseline (category: per method, eps and mode; promotion: per method, eps and mode)
    with its exposure effect and verdict, as a key to find the same cell under any rung."""
    base = results["baseline"]
    cells = []
    for e in results["evaluations"]:
        if (e["control"], e["extractor"], e["recommender"]) != ("attack", base, rec):
            continue
        m = (per_k(e, k) or {}).get("chr") or {}
        cells.append({"kind": "category", "method": e["method"], "eps": e["eps"], "mode": e["mode"],
                      "effect": _exact(m.get("effect")), "verdict": direction(m),
                      "label": f"{e['method'].upper()} eps {e['eps']:g} on the origin's CHR@{k} ({e['mode']})"})
    promo = results.get("promotion") or {}
    for e in promo.get("evaluations", []):
        if (e["control"], e["extractor"], e["recommender"], e.get("source")) != ("attack", base, rec, None):
            continue
        t = ((e.get("tests") or {}).get("exposure") or {}).get("change") or {}
        cells.append({"kind": "promotion", "method": e["method"], "eps": e["eps"], "mode": e["mode"],
                      "effect": _exact(t.get("effect")), "verdict": gained(e, "exposure"),
                      "label": f"{method_label(e['method'], e['eps'], promo.get('k', k))} on the promoted items' "
                               f"top-{promo.get('k', k)} share ({e['mode']})"})
    return cells


def _cell_under(results: dict[str, Any], cell: dict[str, Any], view: str, rec: str, k: int) -> dict[str, Any] | None:
    """The threat cell's exposure effect and verdict under ``view`` (a non-adaptive view: its transfers)."""
    if cell["kind"] == "category":
        for e in results["evaluations"]:
            if (e["control"], e["extractor"], e["recommender"], e["method"], e["eps"], e["mode"]) == (
                    "attack", view, rec, cell["method"], cell["eps"], cell["mode"]):
                m = (per_k(e, k) or {}).get("chr") or {}
                return {"effect": _exact(m.get("effect")), "ci_low": _exact(m.get("ci_low")),
                        "ci_high": _exact(m.get("ci_high")), "verdict": direction(m)}
        return None
    for e in (results.get("promotion") or {}).get("evaluations", []):
        if (e["control"], e["extractor"], e["recommender"], e["method"], e["eps"], e["mode"]) == (
                "attack", view, rec, cell["method"], cell["eps"], cell["mode"]):
            t = ((e.get("tests") or {}).get("exposure") or {}).get("change") or {}
            return {"effect": _exact(t.get("effect")), "ci_low": _exact(t.get("ci_low")),
                    "ci_high": _exact(t.get("ci_high")), "verdict": gained(e, "exposure")}
    return None


def _success(results: dict[str, Any], view: str) -> dict[str, float | None]:
    """(method eps label) -> the attack's success rate under a view (the attacker's own objective)."""
    return {f"{a['method'].upper()} eps {a['eps']:g}": finite(a["summary"].get("success"))
            for a in results["attacks"] if a["extractor"] == view}


def _weaker_promotion(results: dict[str, Any], view: str) -> list[str]:
    """Promotion cells where the adaptive attacker reached significantly less of its own objective than the
    non-adaptive one (the bare extractor's images delivered through the defense): the score for insa / expa,
    the top-K share for insa_topk; per item in deployment (sign-flip), per replicate in retrain (paired t); raw
    p <= 0.05, no correction (a warning errs toward alarm)."""
    promo = results.get("promotion") or {}
    k = promo.get("k")
    evs = [e for e in promo.get("evaluations", []) if e["control"] == "attack"]
    out = []
    for ad in (e for e in evs if e["extractor"] == view):
        na = next((e for e in evs if e["extractor"] == view + NONADAPTIVE and (e["method"], e["eps"], e["recommender"],
                   e["mode"]) == (ad["method"], ad["eps"], ad["recommender"], ad["mode"])), None)
        if na is None:
            continue
        quantity = "exposure" if ad["method"] == "insa_topk" else "score"
        a, n = per_item(ad, quantity, k), per_item(na, quantity, k)
        if a.shape != n.shape:
            continue
        test = sign_flip_test(a.mean(0) - n.mean(0)) if ad["mode"] == "deployment" else replicate_effect(
            n.mean(1), a.mean(1))
        p = finite(test.get("p_value"))
        if test["effect"] < 0 and p is not None and p <= 0.05:
            out.append(f"{cell_label(ad, k)} on {ad['recommender']} ({ad['mode']}): {quantity} "
                       f"{test['effect']:+.3g} against the non-adaptive, p={p:.2g}")
    return out


def _flagged(results: dict[str, Any], view: str) -> float | None:
    """The share of a view's attacked uploads a detector flagged (category attacks and promotion, pooled)."""
    rates = [finite(a["summary"].get("flagged")) for a in results["attacks"] if a["extractor"] == view]
    rates += [finite(a["summary"].get("flagged")) for a in (results.get("promotion") or {}).get("attacks", [])
              if a["extractor"] == view]
    rates = [r for r in rates if r is not None]
    return float(np.mean(rates)) if rates else None


def ladder(results: dict[str, Any]) -> dict[str, Any] | None:
    """The ladder (rows in rank order, the threat cell, the recommender it is read on), or None when the run has
    no rung besides its baseline."""
    names = view_names(results)
    exts = results["extractors"]
    base = results["baseline"]
    visual = [r["name"] for r in results["spec"]["recommenders"] if any(
        c["recommender"] == r["name"] and c.get("uses_extractor", True) for c in results["clean"])]
    rec = ((results.get("scenario") or {}).get("feasibility") or {}).get("recommender") or (visual or [None])[0]
    rungs = [n for n in names if n != base and not n.endswith(NONADAPTIVE) and exts[n].get("defense") != "standard"]
    amr = "amr" in visual and rec != "amr"
    if rec is None or (not rungs and not amr):
        return None
    k = summary_k(results)
    cells = _threat_cells(results, rec, k)
    rose = [c for c in cells if c["verdict"] == "rose" and c["effect"] is not None]
    threat = max(rose, key=lambda c: c["effect"]) if rose else None
    base_clean = _clean(results, base, rec)

    def row(name: str, view: str, on: str, what: str) -> dict[str, Any]:
        clean = _clean(results, view, on)
        cost = {m: (100 * (base_clean[m]["mean"] - clean[m]["mean"])
                    if clean.get(m, {}).get("mean") is not None and base_clean.get(m, {}).get("mean") is not None
                    else None) for m in (HR, "auc")}
        out: dict[str, Any] = {"rung": name, "what": what, "extractor": view, "recommender": on, "clean": clean,
                               "cost_points": cost, "seconds_per_image": finite(exts[view].get("seconds_per_image")),
                               "flagged_adaptive": _flagged(results, view),
                               "flagged_non_adaptive": _flagged(results, view + NONADAPTIVE)
                               if view + NONADAPTIVE in exts else None}
        out["sr_adaptive"] = _success(results, view)
        if view + NONADAPTIVE in exts:
            out["sr_non_adaptive"] = _success(results, view + NONADAPTIVE)
            # the adaptive attacker sees everything the non-adaptive one does: succeeding less is its defect
            out["weaker_adaptive"] = sorted(a for a, v in out["sr_adaptive"].items()
                                            if v is not None and (out["sr_non_adaptive"].get(a) or 0) > v)
            out["weaker_adaptive"] += _weaker_promotion(results, view)
        rung_defense = exts[view].get("rung_defense") or {}
        report = rung_defense.get("report") or {}
        if report.get("false_positive"):
            out["detector"] = {"fpr_held_out": report["false_positive"].get("rate"),
                               "tpr_held_out": (report.get("true_positive") or {}).get("rate"),
                               "threshold": report.get("threshold")}
        if threat is not None:
            adaptive = _cell_under(results, threat, view, on, k)
            non_adaptive = _cell_under(results, threat, view + NONADAPTIVE, on, k) if view + NONADAPTIVE in exts \
                else None
            out.update(adaptive=adaptive, non_adaptive=non_adaptive)
            if adaptive and adaptive["effect"] is not None:
                protected = threat["effect"] - adaptive["effect"]
                lost = cost[HR]
                out.update(protected=protected,
                           protected_per_point=(protected / lost) if lost is not None and lost > 0 else None,
                           holds=_holds(adaptive, threat))
        return out

    rows = [row(n, n, rec, _what(exts[n])) for n in rungs]
    if amr:
        rows.append(row("amr", base, "amr", "recommender adversarial training (AMR) on the baseline extractor"))
    rows.sort(key=lambda r: (r.get("protected") is None, (r["cost_points"][HR] or 0) > 0,
                             -(r.get("protected_per_point") or 0) if (r["cost_points"][HR] or 0) > 0
                             else -(r.get("protected") or 0)))
    return {"baseline": base, "recommender": rec, "k": k, "threat": threat, "baseline_clean": base_clean,
            "baseline_seconds_per_image": finite(exts[base].get("seconds_per_image")), "rows": rows}


def _holds(adaptive: dict[str, Any], threat: dict[str, Any]) -> str:
    """'holds': no significant rise under the adaptive attacker *and* its 95 % interval lies below the undefended
    gain; 'collapses': the adaptive attacker's rise is significant and beyond its placebo; 'inconclusive': no
    significant rise, but the interval does not exclude the undefended gain (a "no" of a weak test is not
    protection); 'untested'."""
    verdict = adaptive.get("verdict", "untested")
    if verdict == "rose":
        return "collapses"
    if verdict == "untested":
        return "untested"
    hi = finite(adaptive.get("ci_high"))
    return "holds" if hi is not None and hi < threat["effect"] else "inconclusive"


def _what(ext: dict[str, Any]) -> str:
    if ext.get("rung"):
        label = (ext.get("rung_defense") or {}).get("label") or ext["rung"]
        return f"{label} in front of {ext.get('base')}"
    return f"extractor adversarial training ({ext.get('defense') or ext.get('source')})"


def finding_l(results: dict[str, Any]) -> list[dict[str, Any]]:
    """(l) What protects? Against the adaptive attacker, per rung (:func:`_holds`): it protects when the threat's
    gain under it is not a significant rise and its interval lies below the undefended gain, does not when the
    adaptive attacker's rise is significant beyond its placebo, else it is inconclusive; at what cost in clean
    accuracy; and where the non-adaptive attacker made a failing rung look protective."""
    lad = results.get("ladder")
    if not lad:
        return []
    threat = lad["threat"]
    q = "What protects the recommender against the adaptive attacker, and at what cost?"
    if threat is None:
        return [{"id": "l", "question": q, "answer": "n/a", "statement":
                 "Nothing to protect: no attack raised exposure significantly beyond its placebo under the "
                 f"undefended {lad['baseline']} extractor ({lad['recommender']}), so no rung can be shown to "
                 "protect; the ladder's costs and latencies are in the table."}]
    holds, collapses, parts = [], [], []
    for r in lad["rows"]:
        ad, na = r.get("adaptive") or {}, r.get("non_adaptive") or {}
        cost = r["cost_points"][HR]
        cost_text = "n/a" if cost is None else f"{cost:+.2g} points of HR@10"
        state = r.get("holds", "untested")
        interval = (f" [{ad['ci_low']:+.3g}, {ad['ci_high']:+.3g}]" if ad.get("ci_low") is not None
                    and ad.get("ci_high") is not None else "")
        if state == "collapses":
            collapses.append(r["rung"])
            text = f"does not protect: the adaptive attacker still raised it by {ad['effect']:+.3g}{interval}"
            if na and na.get("verdict") not in (None, "rose"):
                text += f", though against the non-adaptive attacker it looked protective ({na['effect']:+.3g}, {na['verdict']})"
        elif state == "holds":
            holds.append(r["rung"])
            text = f"protects: under the adaptive attacker {ad['effect']:+.3g}{interval}, below the undefended gain"
        elif state == "inconclusive":
            text = (f"inconclusive: under the adaptive attacker {ad['effect']:+.3g}{interval}, no significant rise but "
                    "not clearly below the undefended gain")
        else:
            text = "untested"
        parts.append(f"{r['rung']} ({r['what']}): {text}; cost {cost_text}")
    if not holds and not collapses:
        answer = "n/a"
    else:
        answer = "yes" if holds and not collapses else "partly" if holds else "no"
    def names(rungs: list[str], one: str, many: str) -> str:
        listed = rungs[0] if len(rungs) == 1 else ", ".join(rungs[:-1]) + " and " + rungs[-1] if rungs else ""
        return f"{listed} {one if len(rungs) == 1 else many}"

    head = {"yes": f"Yes: {names(holds, 'protects', 'protect')}",
            "partly": f"Partly: {names(holds, 'protects', 'protect')}, {names(collapses, 'does', 'do')} not",
            "no": f"No: {names(collapses, 'does', 'do')} not protect, no rung was shown to",
            "n/a": "Inconclusive: no rung was shown to protect or to fail"}[answer]
    weaker = [f"{r['rung']} ({', '.join(r['weaker_adaptive'])})" for r in lad["rows"] if r.get("weaker_adaptive")]
    warning = (" WARNING: the adaptive attacker succeeded less often (category attacks: SR), or reached significantly "
               "less of its objective (promotion), than the non-adaptive one on "
               f"{'; '.join(weaker)}: an adaptive attack weaker than the non-adaptive one is a defect of the attack, "
               "not protection: those rungs' verdicts are not evidence.") if weaker else ""
    text = (f"{head} against the adaptive attacker, on the threat {threat['label']} (under the undefended "
            f"{lad['baseline']} extractor it rose by {threat['effect']:+.3g}, beyond its placebo; {lad['recommender']}). "
            "Rungs in the ladder's order (protection per point of HR@10 lost): " + "; ".join(parts) + "." + warning)
    return [{"id": "l", "question": q, "answer": answer, "statement": text, "protects": holds, "collapses": collapses}]


def ladder_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The ladder as CSV rows, in rank order."""
    lad = results.get("ladder")
    if not lad:
        return []
    out = []
    for rank, r in enumerate(lad["rows"], 1):
        ad, na = r.get("adaptive") or {}, r.get("non_adaptive") or {}
        row = {"rank": rank, "rung": r["rung"], "what": r["what"], "recommender": r["recommender"],
               "HR@10": r["clean"].get(HR, {}).get("mean"), "HR@10 CI low": r["clean"].get(HR, {}).get("ci_low"),
               "HR@10 CI high": r["clean"].get(HR, {}).get("ci_high"), "AUC": r["clean"].get("auc", {}).get("mean"),
               "HR@10 cost (points)": r["cost_points"][HR], "AUC cost (points)": r["cost_points"]["auc"],
               "threat under non-adaptive": na.get("effect"), "non-adaptive verdict": na.get("verdict", ""),
               "threat under adaptive": ad.get("effect"), "adaptive verdict": ad.get("verdict", ""),
               "verdict": r.get("holds", ""),
               "protected": r.get("protected"), "protected per point": r.get("protected_per_point"),
               "flagged (adaptive)": r.get("flagged_adaptive"), "flagged (non-adaptive)": r.get("flagged_non_adaptive"),
               **{f"SR% {a} (adaptive)": v for a, v in (r.get("sr_adaptive") or {}).items()},
               **{f"SR% {a} (non-adaptive)": v for a, v in (r.get("sr_non_adaptive") or {}).items()},
               "ms per image": None if r.get("seconds_per_image") is None else 1000 * r["seconds_per_image"]}
        out.append(row)
    return out
