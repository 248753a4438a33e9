"""The study's questions, answered from the measured numbers (never from expectations).

Every answer decides on Benjamini-Hochberg adjusted p-values at the run's false discovery rate
(:mod:`.stats`), counts both ways ("rose in a of n cells, fell in b, unchanged in c") and quotes
effect sizes with their 95 % intervals across replicates.

(o) Could moving features raise the origin's exposure at all? The oracle (positive control: every
    origin item disguised as a real target item).
(a) Did the attack raise the origin category's CHR@K? Per defense and attack setting, across the
    recommender x mode cells; with each cell's placebo and the attack's share of the oracle.
    (o) and (a) answer yes only when some cell rose and none fell; rises and falls together are
    "partly" (:func:`rise_answer`). An attack's change counts only when it is significant *and*
    beyond its placebo's (:func:`direction`).

When the scenario's oracle, measured in deployment before any attack, could not raise the origin's
exposure, every finding starts by saying so (:func:`infeasible_caveat`).
(b) Did the robust extractors lower the attack's success rate? Paired on the same images (McNemar).
(c) Did they prevent the rise? The baseline's significant rises, cell by cell, under each defense.
(d) (the study's reading) Does the exposure change follow the feature loss rather than the SR?
    Spearman over distinct attack cells, per mode.
(p) Can a seller promote an item with an image? Item promotion (:mod:`.promotion`): the promoted items'
    score and exposure, each beyond its placebo.

Each finding is a dict with ``id``, ``question``, ``answer`` (yes / no / partly / n/a), a
``statement`` generated from the numbers, and the numbers themselves.
"""

from __future__ import annotations

from typing import Any

from advrec.report.collect import (
    attack_keys,
    attack_label,
    attack_summary,
    baselines_of,
    evaluations_of,
    finite,
    interval_text,
    matching,
    per_k,
    signed,
    summary_k,
    summary_value,
    view_names,
)
from advrec.report.promotion import finding_p
from advrec.report.stats import MIN_POINTS

Finding = dict[str, Any]


def _p(p: Any) -> str:
    v = finite(p)
    return "n/a" if v is None else f"{v:.2g}"


def _v(x: Any) -> str:
    v = finite(x)
    return "n/a" if v is None else f"{v:.4g}"


def _sr(x: Any) -> str:
    v = finite(x)
    return "n/a" if v is None else f"{v:.0f}%"


def _chr(e: dict[str, Any] | None, k: int) -> dict[str, Any] | None:
    row = per_k(e, k) if e else None
    return (row or {}).get("chr")


def effect_text(m: dict[str, Any] | None) -> str:
    """'+0.0123 [+0.004, +0.021], adj. p=0.01' (or n/a)."""
    if not m:
        return "n/a"
    eff = finite(m.get("effect"))
    if eff is None:
        return "n/a"
    return f"{signed(eff)}{interval_text(m, 3)}, adj. p={_p(m.get('p_adjusted'))}"


def direction(m: dict[str, Any] | None) -> str:
    """'rose' / 'fell': significant at the run's FDR and, for an attack with a placebo, also beyond its
    placebo's change (``beyond_placebo`` significant, same sign); 'like placebo': significant against the
    clean model but not beyond the placebo (noise of the perturbation's size moved it as much);
    'unchanged'; or 'untested' (no p-value: one replicate)."""
    if not m or finite(m.get("p_adjusted")) is None:
        return "untested"
    if not m.get("significant"):
        return "unchanged"
    eff = finite(m.get("effect")) or 0.0
    if eff == 0:
        return "unchanged"
    beyond = m.get("beyond_placebo")
    if isinstance(beyond, dict):
        b = finite(beyond.get("effect")) or 0.0
        if finite(beyond.get("p_adjusted")) is None:
            return "untested"
        if not beyond.get("significant") or b * eff <= 0:
            return "like placebo"
    return "rose" if eff > 0 else "fell"


def _counts(ms: list[dict[str, Any] | None]) -> dict[str, int]:
    dirs = [direction(m) for m in ms]
    return {"rose": dirs.count("rose"), "fell": dirs.count("fell"), "unchanged": dirs.count("unchanged"),
            "like_placebo": dirs.count("like placebo"), "untested": dirs.count("untested"), "n": len(dirs)}


def rise_answer(c: dict[str, int]) -> str:
    """'yes' when some cell rose and none fell, 'partly' when cells rose and others fell, 'n/a' when no
    cell could be tested, else 'no'. Rises and falls count only beyond their placebo (:func:`direction`)."""
    if c["untested"] == c["n"]:
        return "n/a"
    return "no" if not c["rose"] else "partly" if c["fell"] else "yes"


UNTESTED = ("with one replicate there is no variance across replicates to test an effect against (set "
            "replicates to 3 or more)")


def _count_text(c: dict[str, int]) -> str:
    text = f"rose in {c['rose']} of {c['n']} cells, fell in {c['fell']}, unchanged in {c['unchanged']}"
    if c.get("like_placebo"):
        text += f", moved no more than its placebo in {c['like_placebo']}"
    return text + (f", untested in {c['untested']}" if c.get("untested") else "")


def _cell_name(e: dict[str, Any]) -> str:
    return f"{e['recommender']} {e['mode']}"


def _oracle_share(results: dict[str, Any], e: dict[str, Any], k: int) -> float | None:
    """The attack's effect as a fraction of the oracle's in the same extractor/recommender/mode."""
    att, ora = _chr(e, k), _chr(matching(results, e, "oracle"), k)
    a, o = finite((att or {}).get("effect")), finite((ora or {}).get("effect"))
    if a is None or o is None or o == 0 or not (ora or {}).get("significant"):
        return None
    return a / o


def _share_text(share: float) -> str:
    """'40% of the oracle's', or 'opposite to the oracle's, 1.6x its size' when the signs differ."""
    return f"{share:.0%} of the oracle's" if share >= 0 else f"opposite to the oracle's, {-share:.2g}x its size"


def finding_oracle(results: dict[str, Any], ext: str, k: int, origin: str) -> Finding | None:
    evs = evaluations_of(results, "oracle", ext)
    if not evs:
        return None
    ms = [_chr(e, k) for e in evs]
    c = _counts(ms)
    best = max(zip(evs, ms, strict=True), key=lambda em: finite((em[1] or {}).get("effect")) or float("-inf"))
    detail = f"largest: {_cell_name(best[0])} {effect_text(best[1])}"
    answer = rise_answer(c)
    setting = f"giving each '{origin}' item the features of a real target item under the {ext} extractor"
    if answer == "n/a":
        text = f"Untested: {setting} changed CHR@{k} by {detail.removeprefix('largest: ')} at most; {UNTESTED}."
    elif answer == "yes":
        text = f"Yes: {setting} raised CHR@{k}: {_count_text(c)} ({detail}). Features can move this category up."
    elif answer == "partly":
        text = (f"Partly: {setting} raised CHR@{k} in some cells and lowered it in others: {_count_text(c)} "
                f"({detail}). Features can move this category, but not up everywhere: an attack's 'no' is weak "
                "evidence of robustness in the cells where the oracle did not rise.")
    else:
        text = (f"No: even the oracle (each '{origin}' item disguised as a real target item) did not raise "
                f"CHR@{k} significantly under the {ext} extractor: {_count_text(c)} ({detail}). Moving these "
                f"items' features toward the target did not raise their exposure with {evs[0].get('n_replicates', 1)} "
                "replicates, so an attack's 'no' under this extractor is weak evidence of robustness.")
    return {"id": "o", "question": f"Could moving the features raise CHR@{k} of the origin under {ext}?",
            "answer": answer, "statement": text, "extractor": ext, "k": k, **c}


def finding_a(results: dict[str, Any], ext: str, method: str, eps: float, k: int) -> Finding | None:
    evs = evaluations_of(results, "attack", ext, method, eps)
    if not evs:
        return None
    origin = results["scenario"].get("origin")
    label = attack_label(method, eps)
    ms = [_chr(e, k) for e in evs]
    c = _counts(ms)
    parts = []
    for e, m in zip(evs, ms, strict=True):
        plac = _chr(matching(results, e, "placebo"), k)
        share = _oracle_share(results, e, k)
        extra = f"; placebo {effect_text(plac)}" if plac else ""
        extra += f"; {_share_text(share)}" if share is not None else ""
        parts.append(f"{_cell_name(e)} {effect_text(m)}{extra}")
    beyond = sum(1 for e in evs if ((_chr(e, k) or {}).get("beyond_placebo") or {}).get("significant"))
    has_placebo = any(matching(results, e, "placebo") or (_chr(e, k) or {}).get("beyond_placebo") for e in evs)
    answer = rise_answer(c)
    effects = "; ".join(parts)
    if answer == "n/a":
        text = (f"Untested: under the {ext} extractor, {label}'s effects on CHR@{k} of '{origin}' were not tested: "
                f"{UNTESTED}. Effects: {effects}.")
    else:
        verb = {"yes": "raised", "partly": "moved both ways", "no": "did not raise"}[answer]
        placebo = (" (a change counts only when it is significant and beyond its placebo's)" if has_placebo
                   else " (no placebo in this run, so a change counts when it is significant: controls)")
        text = (f"{answer.capitalize()}: under the {ext} extractor, {label} {verb} CHR@{k} of '{origin}': "
                f"{_count_text(c)} at FDR {results['alpha']:.0%}{placebo}. Effects across replicates: {effects}.")
    return {"id": "a", "question": f"Did {label} raise CHR@{k} of the origin category under {ext}?",
            "answer": answer, "statement": text, "extractor": ext, "method": method, "eps": eps, "k": k,
            "beyond_placebo": beyond, **c}


def backbone_caveat(results: dict[str, Any], base: str, ext: str) -> str:
    """A sentence when ``ext`` is compared with a baseline of another backbone (no standard extractor of its
    own backbone in the run): the difference then mixes architecture with the defense ('' otherwise)."""
    exts = results.get("extractors", {})
    b0, b1 = exts.get(base, {}).get("backbone"), exts.get(ext, {}).get("backbone")
    if not b0 or not b1 or b0 == b1:
        return ""
    return (f" Caveat: {ext} ({b1}) is compared with {base} ({b0}), another backbone, because the run has no "
            f"standard {b1}: the difference mixes architecture with the defense (add a standard {b1} to isolate "
            f"the defense).")


def finding_b(results: dict[str, Any], pair: dict[str, Any]) -> Finding:
    base, ext, method, eps = pair["baseline"], pair["extractor"], pair["method"], pair["eps"]
    label = attack_label(method, eps)
    sr0 = summary_value(attack_summary(results, base, method, eps), "SR %")
    sr1 = summary_value(attack_summary(results, ext, method, eps), "SR %")
    q = f"Did the {ext} extractor lower the success rate of {label}?"
    out: Finding = {"id": "b", "question": q, "extractor": ext, "baseline": base, "method": method, "eps": eps,
                    "sr_baseline": sr0, "sr": sr1, **{k: pair.get(k) for k in ("n_paired", "base_only", "defense_only",
                                                                               "p_value", "p_adjusted")}}
    weak = results["extractors"].get(ext, {}).get("weak")
    caveat = (f" Caveat: the {ext} extractor classifies fewer than half of the origin items as the origin class "
              f"({_sr(100 * (results['extractors'][ext].get('origin_recognition') or 0))}), so it attacks images "
              "it already misreads.") if weak else ""
    caveat += backbone_caveat(results, base, ext)
    if pair["n_paired"] == 0:
        return {**out, "answer": "n/a", "statement": f"{label}: no image was attacked and eligible under both "
                f"{base} and {ext}; their success rates cannot be compared on the same images.{caveat}"}
    nums = (f"SR {_sr(sr0)} under {base} vs {_sr(sr1)} under {ext}; on the {pair['n_paired']} images eligible under "
            f"both, {pair['base_only']} fooled only {base}, {pair['defense_only']} only {ext} "
            f"(exact McNemar adj. p={_p(pair.get('p_adjusted'))})")
    if pair.get("significant") and pair["base_only"] > pair["defense_only"]:
        answer, text = "yes", f"Yes: {ext} lowered the success rate of {label}: {nums}."
    elif pair["base_only"] > pair["defense_only"]:
        answer, text = "no", f"No: under {ext} fewer images were fooled by {label}, but not significantly: {nums}."
    else:
        answer, text = "no", f"No: {ext} did not lower the success rate of {label}: {nums}."
    return {**out, "answer": answer, "statement": text + caveat, "weak_defense": bool(weak),
            "same_backbone": not backbone_caveat(results, base, ext)}


def finding_c(results: dict[str, Any], base: str, ext: str, method: str, eps: float, k: int) -> Finding | None:
    base_evs = evaluations_of(results, "attack", base, method, eps)
    if not base_evs or not evaluations_of(results, "attack", ext, method, eps):
        return None
    label = attack_label(method, eps)
    origin = results["scenario"].get("origin")
    risen = [e for e in base_evs if direction(_chr(e, k)) == "rose"]
    q = f"Did the {ext} extractor prevent the CHR@{k} rise under {label}?"
    out: Finding = {"id": "c", "question": q, "extractor": ext, "baseline": base, "method": method, "eps": eps, "k": k,
                    "n_risen_baseline": len(risen), "same_backbone": not backbone_caveat(results, base, ext)}
    if all(direction(_chr(e, k)) == "untested" for e in base_evs):
        return {**out, "answer": "n/a", "statement": f"Untested: whether {label} raised CHR@{k} of '{origin}' under "
                f"{base} was not tested, so neither is whether {ext} prevented it: {UNTESTED}."}
    if not risen:
        return {**out, "answer": "n/a", "statement": f"Nothing for {ext} to prevent: {label} raised CHR@{k} of '{origin}' "
                f"significantly in none of the {len(base_evs)} cells under {base} (FDR {results['alpha']:.0%})."}
    parts, still = [], 0
    for e in risen:
        twin = next((d for d in evaluations_of(results, "attack", ext, method, eps)
                     if (d["recommender"], d["mode"]) == (e["recommender"], e["mode"])), None)
        m = _chr(twin, k)
        still += direction(m) == "rose"
        parts.append(f"{_cell_name(e)}: {base} {effect_text(_chr(e, k))} -> {ext} {effect_text(m)}")
    if still == 0:
        answer, verdict = "yes", "none of the baseline's significant rises remains significant"
    elif still < len(risen):
        answer, verdict = "partly", f"{len(risen) - still} of the baseline's {len(risen)} significant rises are gone"
    else:
        answer, verdict = "no", f"every one of the baseline's {len(risen)} significant rises remains"
    text = f"{answer.capitalize()}: under {ext}, {verdict} (FDR {results['alpha']:.0%}): " + "; ".join(parts) + "."
    return {**out, "answer": answer, "statement": text + backbone_caveat(results, base, ext), "n_still_risen": still}


def finding_d(results: dict[str, Any], k: int, mode: str) -> Finding | None:
    rows = {c["with"]: c for c in results.get("correlations", []) if c["mode"] == mode and c["k"] == k}
    fl, sr = rows.get("feature_mse"), rows.get("sr")
    if not fl or not sr:
        return None
    q = f"Does the CHR@{k} change follow the feature loss rather than the success rate ({mode})?"
    n = fl["n"]
    if fl.get("p_value") is None and sr.get("p_value") is None:
        return {"id": "d", "question": q, "answer": "n/a", "mode": mode, "k": k, "n": n,
                "statement": f"n/a ({mode}): {n} distinct attack cells (at least {MIN_POINTS} with varying values "
                             f"are needed: with fewer, no rank correlation can reach p < 0.05)."}

    def txt(c: dict[str, Any]) -> str:
        return "n/a" if c.get("rho") is None else f"rho={c['rho']:.2f}, adj. p={_p(c.get('p_adjusted'))}"

    # No test compares the two correlations, so "rather than" needs the SR's to be absent, not smaller.
    r_fl, r_sr = finite(fl.get("rho")), finite(sr.get("rho"))
    fl_sig, sr_sig = bool(fl.get("significant")), bool(sr.get("significant"))
    head = f"over {n} distinct attack cells, the mean CHR@{k} effect"
    both = f"the feature MSE ({txt(fl)}) and the SR ({txt(sr)}) (Spearman, FDR {results['alpha']:.0%})"
    if fl_sig and not sr_sig:
        answer, text = "yes", f"Yes ({mode}): {head} correlates significantly with {both.replace(' and ', ', not with ', 1)}."
    elif fl_sig:
        answer, text = "partly", (f"Partly ({mode}): {head} correlates significantly with both {both}; with {n} cells "
                                  "the two correlations cannot be told apart.")
    else:
        answer, text = "no", f"No ({mode}): {head} does not correlate significantly with the feature MSE: {both}."
    return {"id": "d", "question": q, "answer": answer, "statement": text, "mode": mode, "k": k,
            "n": n, "rho_feature_mse": r_fl, "rho_sr": r_sr}


def infeasible_caveat(results: dict[str, Any]) -> str | None:
    """The sentence every finding starts with when the scenario's oracle, measured in deployment before any
    attack, could not raise the origin's exposure (None when it could, or was not measured)."""
    feas = (results.get("scenario") or {}).get("feasibility") or {}
    if not feas.get("measured") or feas.get("feasible"):
        return None
    chosen = feas.get("chosen") or {}
    eff, p = finite(chosen.get("effect")), finite(chosen.get("p_adjusted"))
    detail = (f" (the best of {chosen.get('n_pairs')} candidate pairs, '{chosen.get('origin')}' -> "
              f"'{chosen.get('target')}', changed CHR@{feas.get('k')} by {signed(eff)} in deployment, "
              f"Bonferroni-adjusted p={_p(p)})") if eff is not None else ""
    return f"On this catalog even a perfect visual disguise did not raise exposure significantly{detail}: a 'no' " \
           "says nothing about robustness."


def derive_findings(results: dict[str, Any]) -> list[Finding]:
    """Every finding (o, a, b, c, d) in a fixed, deterministic order; each starts with the scenario's
    caveat when even the oracle could not raise the origin's exposure (:func:`infeasible_caveat`)."""
    out = _findings(results)
    caveat = infeasible_caveat(results)
    if caveat:
        for f in out:
            f["statement"] = f"{caveat} {f['statement']}"
            f["infeasible_scenario"] = True
    return out


def _findings(results: dict[str, Any]) -> list[Finding]:
    k = summary_k(results)
    origin = results["scenario"].get("origin")
    extractors = view_names(results)
    out: list[Finding] = []
    for ext in extractors:
        f = finding_oracle(results, ext, k, origin)
        if f:
            out.append(f)
    for ext in extractors:
        for method, eps in attack_keys(results):
            f = finding_a(results, ext, method, eps, k)
            if f:
                out.append(f)
    out += [finding_b(results, pair) for pair in results.get("sr_pairs", [])]
    for ext, base in baselines_of(results).items():
        for method, eps in attack_keys(results):
            f = finding_c(results, base, ext, method, eps, k)
            if f:
                out.append(f)
    for mode in results["spec"]["modes"]:
        d = finding_d(results, k, mode)
        if d:
            out.append(d)
    out += finding_p(results)
    return out


QUESTIONS = {
    "o": "(o) Control: could moving the features raise the origin category's CHR@K at all (the oracle)?",
    "a": "(a) Did the attacks raise the origin category's CHR@K?",
    "b": "(b) Did the robust extractors lower the attacks' success rate?",
    "c": "(c) Did the robust extractors prevent the CHR rise?",
    "d": "(d) Does the CHR change follow the feature loss rather than the success rate?",
    "p": "(p) Can a seller promote an item with an image?",
    "l": "(l) What protects? The defense ladder against the adaptive attacker",
}
