"""The study's three questions, answered from the measured numbers (never from expectations).

(a) Did the attacks raise the origin category's CHR@K?  Per defense and attack setting: how many
    recommender x mode cells rose significantly (paired t-test p <= alpha, after > before).
(b) Did the robust extractors lower the attack's success rate?  SR of each defended extractor vs
    the undefended baseline, with a two-sided Fisher exact test on the success counts.
(c) Did they prevent the CHR rise?  Is the CHR change under each defended extractor still
    significant, cell by cell, compared with the baseline?
(d) (the study's reading) Does the CHR change follow the feature loss rather than the SR?
    Spearman correlations over every attacked cell.

Each finding is a dict with ``id``, ``question``, ``answer`` (yes / no / partly / n/a), a
``statement`` generated from the numbers, and the numbers themselves.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

from advrec.report.collect import (
    attack_keys,
    attack_label,
    attack_summary,
    baseline_extractor,
    finite,
    is_significant,
    per_k,
    summary_k,
    summary_value,
)

Finding = dict[str, Any]


def _p(p: Any) -> str:
    v = finite(p)
    return "p=n/a" if v is None else f"p={v:.2g}"


def _v(x: Any) -> str:
    v = finite(x)
    return "n/a" if v is None else f"{v:.4g}"


def _sr(x: Any) -> str:
    v = finite(x)
    return "n/a" if v is None else f"{v:.0f}%"


def _cells(results: dict[str, Any], ext: str, method: str, eps: float, k: int) -> list[dict[str, Any]]:
    """CHR@k of every recommender x mode cell of one attack setting under one extractor."""
    out = []
    for e in results["evaluations"]:
        if (e["extractor"], e["method"], e["eps"]) != (ext, method, eps):
            continue
        row = per_k(e, k)
        if row is None or "chr" not in row:
            continue
        c = row["chr"]
        before, after = finite(c.get("before")), finite(c.get("after"))
        up = before is not None and after is not None and after > before
        down = before is not None and after is not None and after < before
        sig = is_significant(c.get("t_pvalue"), results["alpha"])
        out.append({"recommender": e["recommender"], "mode": e["mode"], "before": before, "after": after,
                    "t_pvalue": finite(c.get("t_pvalue")), "wilcoxon_pvalue": finite(c.get("wilcoxon_pvalue")),
                    "rose": up and sig, "fell": down and sig, "change": (after - before) if up or down else 0.0})
    return out


def _strongest(cells: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The significant rise with the smallest p, else the largest (possibly non-significant) change."""
    rising = [c for c in cells if c["rose"]]
    if rising:
        return min(rising, key=lambda c: (c["t_pvalue"], -c["change"]))
    return max(cells, key=lambda c: c["change"], default=None)


def _cell_ref(c: dict[str, Any]) -> str:
    return f"{c['recommender']} {c['mode']}"


def finding_a(results: dict[str, Any], ext: str, method: str, eps: float, k: int) -> Finding | None:
    cells = _cells(results, ext, method, eps, k)
    if not cells:
        return None
    origin = results["scenario"].get("origin")
    n_up, n_down = sum(c["rose"] for c in cells), sum(c["fell"] for c in cells)
    best = _strongest(cells)
    label = attack_label(method, eps)
    detail = f"{_cell_ref(best)}: {_v(best['before'])} -> {_v(best['after'])}, {_p(best['t_pvalue'])}"
    if n_up:
        text = (f"Yes: {label} raised CHR@{k} of '{origin}' significantly in {n_up} of {len(cells)} recommender x "
                f"mode cells under the {ext} extractor (strongest: {detail}).")
    else:
        text = (f"No: {label} did not raise CHR@{k} of '{origin}' significantly in any of the {len(cells)} "
                f"recommender x mode cells under the {ext} extractor (largest change: {detail}).")
    if n_down:
        text += f" It lowered it significantly in {n_down} cell(s)."
    return {"id": "a", "question": f"Did {label} raise CHR@{k} of the origin category?", "answer": "yes" if n_up else "no",
            "statement": text, "extractor": ext, "method": method, "eps": eps, "k": k, "n_cells": len(cells),
            "n_rose": n_up, "n_fell": n_down, "strongest": best}


def _success_count(summary: dict[str, Any]) -> tuple[int, int] | None:
    n = finite(summary.get("n_attacked"))
    sr = summary_value(summary, "SR %")
    if not n or sr is None:
        return None
    return int(round(sr / 100.0 * n)), int(n)


def finding_b(results: dict[str, Any], base: str, ext: str, method: str, eps: float) -> Finding:
    label = attack_label(method, eps)
    s0, s1 = attack_summary(results, base, method, eps), attack_summary(results, ext, method, eps)
    sr0, sr1 = summary_value(s0, "SR %"), summary_value(s1, "SR %")
    c0, c1 = _success_count(s0), _success_count(s1)
    q = f"Did the {ext} extractor lower the success rate of {label}?"
    out: Finding = {"id": "b", "question": q, "extractor": ext, "baseline": base, "method": method, "eps": eps,
                    "sr_baseline": sr0, "sr": sr1, "n_baseline": c0[1] if c0 else None, "n": c1[1] if c1 else None}
    if c0 is None or c1 is None or sr0 is None or sr1 is None:
        return {**out, "answer": "n/a", "p_fisher": None,
                "statement": f"{label}: no attacked images under {base if c0 is None else ext}; SR cannot be compared."}
    p = float(stats.fisher_exact([[c0[0], c0[1] - c0[0]], [c1[0], c1[1] - c1[0]]])[1])
    nums = f"from {_sr(sr0)} ({c0[1]} images, {base}) to {_sr(sr1)} ({c1[1]} images, {ext})"
    test = f"Fisher exact {_p(p)}"
    if sr1 < sr0 and is_significant(p, results["alpha"]):
        answer, text = "yes", f"Yes: {ext} lowered the SR of {label} {nums} ({test})."
    elif sr1 < sr0:
        answer, text = "no", f"No: under {ext} the SR of {label} fell only {nums}, not significantly ({test})."
    else:
        answer, text = "no", f"No: {ext} did not lower the SR of {label}: it went {nums} ({test})."
    return {**out, "answer": answer, "statement": text, "p_fisher": p}


def finding_c(results: dict[str, Any], base: str, ext: str, method: str, eps: float, k: int) -> Finding | None:
    base_cells, cells = _cells(results, base, method, eps, k), _cells(results, ext, method, eps, k)
    if not base_cells or not cells:
        return None
    label = attack_label(method, eps)
    origin = results["scenario"].get("origin")
    n0, n1 = sum(c["rose"] for c in base_cells), sum(c["rose"] for c in cells)
    q = f"Did the {ext} extractor prevent the CHR@{k} rise under {label}?"
    out: Finding = {"id": "c", "question": q, "extractor": ext, "baseline": base, "method": method, "eps": eps, "k": k,
                    "n_cells": len(cells), "n_rose_baseline": n0, "n_rose": n1}
    counts = f"significant rises: {n1} of {len(cells)} cells under {ext} vs {n0} of {len(base_cells)} under {base}"
    if n0 == 0:
        return {**out, "answer": "n/a", "statement": f"Nothing to prevent: {label} raised CHR@{k} of '{origin}' "
                f"significantly in no cell under {base} ({counts})."}
    b = _strongest(base_cells)
    same = next((c for c in cells if (c["recommender"], c["mode"]) == (b["recommender"], b["mode"])), None)
    sr0 = summary_value(attack_summary(results, base, method, eps), "SR %")
    sr1 = summary_value(attack_summary(results, ext, method, eps), "SR %")
    sr_verb = "fell" if (sr0 is not None and sr1 is not None and sr1 < sr0) else "went"
    text = (f"{label} raised CHR@{k} of '{origin}' from {_v(b['before'])} to {_v(b['after'])} ({_p(b['t_pvalue'])}) "
            f"under the {base} extractor ({_cell_ref(b)}); under {ext} SR {sr_verb} from {_sr(sr0)} to {_sr(sr1)}")
    if same is not None and same["rose"]:
        text += f" yet CHR@{k} still rose to {_v(same['after'])} ({_p(same['t_pvalue'])})"
    elif same is not None and same["after"] is not None and same["before"] is not None and same["after"] > same["before"]:
        text += f" and CHR@{k} rose only to {_v(same['after'])}, not significantly ({_p(same['t_pvalue'])})"
    elif same is not None:
        text += f" and CHR@{k} did not rise ({_v(same['before'])} -> {_v(same['after'])}, {_p(same['t_pvalue'])})"
    if n1 == 0:
        answer, verdict = "yes", "the defense prevented every significant rise"
    elif n1 < n0:
        answer, verdict = "partly", "the defense prevented some of the significant rises, not all"
    else:
        answer, verdict = "no", "the defense did not prevent the rise"
    text = f"{answer.capitalize()}: {text}; {counts}: {verdict}."
    return {**out, "answer": answer, "statement": text, "baseline_cell": b, "cell": same}


def finding_d(results: dict[str, Any], k: int) -> Finding | None:
    """Spearman correlation of the CHR@k change with feature MSE and with SR over every attacked cell."""
    change, fl, sr = [], [], []
    for e in results["evaluations"]:
        row = per_k(e, k)
        s = attack_summary(results, e["extractor"], e["method"], e["eps"])
        if row is None or "chr" not in row:
            continue
        b, a = finite(row["chr"].get("before")), finite(row["chr"].get("after"))
        f, r = summary_value(s, "feature MSE"), summary_value(s, "SR %")
        if None in (a, b, f, r):
            continue
        change.append(a - b)
        fl.append(f)
        sr.append(r)
    if len(change) < 4 or np.ptp(change) == 0:
        return None

    def rho(x: list[float]) -> tuple[float | None, float | None]:
        if np.ptp(x) == 0:
            return None, None
        res = stats.spearmanr(change, x)
        return finite(res.statistic), finite(res.pvalue)

    (r_fl, p_fl), (r_sr, p_sr) = rho(fl), rho(sr)
    stronger = r_fl is not None and (r_sr is None or abs(r_fl) > abs(r_sr))
    yes = stronger and is_significant(p_fl, results["alpha"])
    fl_txt = "n/a" if r_fl is None else f"rho={r_fl:.2f}, {_p(p_fl)}"
    sr_txt = "n/a (SR constant)" if r_sr is None else f"rho={r_sr:.2f}, {_p(p_sr)}"
    text = (f"{'Yes' if yes else 'No'}: across {len(change)} attacked recommender cells, the CHR@{k} change "
            f"correlates with the feature MSE ({fl_txt}) {'more' if stronger else 'not more'} than with the SR "
            f"({sr_txt}) (Spearman).")
    return {"id": "d", "question": f"Does the CHR@{k} change follow the feature loss rather than the success rate?",
            "answer": "yes" if yes else "no", "statement": text, "k": k, "n_cells": len(change),
            "rho_feature_mse": r_fl, "p_feature_mse": p_fl, "rho_sr": r_sr, "p_sr": p_sr}


def derive_findings(results: dict[str, Any]) -> list[Finding]:
    """Every finding (a, b, c, d) in a fixed, deterministic order."""
    k = summary_k(results)
    base = baseline_extractor(results)
    extractors = [e["name"] for e in results["spec"]["extractors"]]
    defended = [n for n in extractors if n != base]
    out: list[Finding] = []
    for ext in extractors:
        for method, eps in attack_keys(results):
            f = finding_a(results, ext, method, eps, k)
            if f:
                out.append(f)
    for ext in defended:
        for method, eps in attack_keys(results):
            out.append(finding_b(results, base, ext, method, eps))
    for ext in defended:
        for method, eps in attack_keys(results):
            f = finding_c(results, base, ext, method, eps, k)
            if f:
                out.append(f)
    d = finding_d(results, k)
    if d:
        out.append(d)
    return out


QUESTIONS = {
    "a": "(a) Did the attacks raise the origin category's CHR@K?",
    "b": "(b) Did the robust extractors lower the attacks' success rate?",
    "c": "(c) Did the robust extractors prevent the CHR rise?",
    "d": "(d) Does the CHR change follow the feature loss rather than the success rate?",
}
