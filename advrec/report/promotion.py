"""Item promotion in the report: numbers, tests and the finding "(p) Can a seller promote an item with an image?"

A promotion cell is (extractor, method, eps, recommender, source): the attack on the promoted items' images
under ``extractor`` (white-box against ``recommender`` for insa/insa_topk), or, with ``source``, another
extractor's attacked images delivered to ``extractor`` (a transfer attack). Each cell has an attack and a
placebo evaluation per mode. Two quantities are tested, each against the clean model (the change) and
against the placebo (the change beyond the placebo's):

* **score**: the prediction shift, the item's mean score over all users after - before;
* **exposure**: the item's share of all top-K slots at the run's headline K, after - before.

The unit of the test follows what is independent. In *deployment* one model re-scores the catalog and each
item's score depends on its own features only, so the promoted items are independent units: per item, the
change averaged over replicates (minus the placebo's), tested by the sign-flip test over items. In *retrain*
the items share one retrained model per replicate, so the replicates are the units: per replicate, the mean
change over items, paired t-test across replicates (as the category effects).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from advrec.report.collect import finite, signed, view_names
from services.recommender.metrics.effects import replicate_effect, sign_flip_test

QUANTITIES = ("score", "exposure")
METHOD_LABELS = {"insa": "INSA", "insa_topk": "INSA-top{k}", "expa": "EXPA"}


def method_label(method: str, eps: float, k: int) -> str:
    """'INSA eps 8', 'INSA-top10 eps 8', 'EXPA eps 8'."""
    return f"{METHOD_LABELS.get(method, method.upper()).format(k=k)} eps {eps:g}"


def cell_label(ev: dict[str, Any], k: int) -> str:
    label = method_label(ev["method"], ev["eps"], k)
    return label + (f" from {ev['source']}" if ev.get("source") else "")


def per_item(ev: dict[str, Any], quantity: str, k: int) -> np.ndarray:
    """(R, N) change of each promoted item per replicate: the prediction shift, or the change in its share of
    the top-``k`` slots."""
    reps = ev["per_replicate"]
    if quantity == "score":
        return np.asarray([r["prediction_shift"] for r in reps], dtype=np.float64)
    rows = [next(x for x in r["per_k"] if x["k"] == k) for r in reps]
    return np.asarray([np.asarray(x["slots_after"]) - np.asarray(x["slots_before"]) for x in rows], dtype=np.float64)


def level(ev: dict[str, Any], quantity: str, k: int, when: str) -> float:
    """The items' mean score or top-``k`` slot share ``when`` ("before"/"after"), averaged over replicates."""
    reps = ev["per_replicate"]
    if quantity == "score":
        return float(np.mean([np.mean(r[f"score_{when}"]) for r in reps]))
    return float(np.mean([np.mean(next(x for x in r["per_k"] if x["k"] == k)[f"slots_{when}"]) for r in reps]))


def _test(values: np.ndarray, baseline: np.ndarray | None, mode: str) -> dict[str, Any]:
    """The change (``baseline`` None) or the change beyond ``baseline`` (the placebo's), with its test: items as
    units in deployment, replicates in retrain (see the module docstring)."""
    if mode == "deployment":
        d = values.mean(0) - (baseline.mean(0) if baseline is not None else 0.0)
        out = sign_flip_test(d)
        out["unit"] = "items"
    else:
        after = values.mean(1)
        before = baseline.mean(1) if baseline is not None else np.zeros_like(after)
        out = replicate_effect(before, after)
        out["unit"] = "replicates"
        out["n_positive_items"] = int(((values - (baseline if baseline is not None else 0.0)).mean(0) > 0).sum())
    return {k: out.get(k) for k in ("effect", "ci_low", "ci_high", "p_value", "test", "unit", "n", "n_positive",
                                    "n_negative", "n_replicates", "n_positive_items") if k in out}


def promotion_tests(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per attack evaluation of ``results["promotion"]``: its ``tests`` (quantity -> {"change", "beyond_placebo"})
    added in place; returns every test dict (for the run's Benjamini-Hochberg family)."""
    promo = results.get("promotion")
    if not promo:
        return []
    k = promo["k"]
    out: list[dict[str, Any]] = []
    for ev in promo["evaluations"]:
        if ev["control"] != "attack":
            continue
        twin = placebo_of(promo, ev)
        ev["tests"] = {}
        for quantity in QUANTITIES:
            values = per_item(ev, quantity, k)
            tests = {"change": _test(values, None, ev["mode"])}
            if twin is not None:
                tests["beyond_placebo"] = _test(values, per_item(twin, quantity, k), ev["mode"])
            ev["tests"][quantity] = tests
            out.extend(tests.values())
    return out


def placebo_of(promo: dict[str, Any], ev: dict[str, Any]) -> dict[str, Any] | None:
    """The placebo evaluation of the same promotion cell and mode."""
    key = ("placebo", ev["extractor"], ev["method"], ev["eps"], ev["recommender"], ev.get("source"), ev["mode"])
    return next((e for e in promo["evaluations"]
                 if (e["control"], e["extractor"], e["method"], e["eps"], e["recommender"], e.get("source"),
                     e["mode"]) == key), None)


def gained(ev: dict[str, Any], quantity: str) -> str:
    """'rose' when the change is significant and beyond the placebo's (same sign), 'fell' likewise, 'like placebo'
    when only the change is significant, 'unchanged', or 'untested'."""
    tests = (ev.get("tests") or {}).get(quantity) or {}
    change, beyond = tests.get("change") or {}, tests.get("beyond_placebo")
    if finite(change.get("p_adjusted")) is None:
        return "untested"
    eff = finite(change.get("effect")) or 0.0
    if not change.get("significant") or eff == 0:
        return "unchanged"
    if beyond is not None:
        if finite(beyond.get("p_adjusted")) is None:
            return "untested"
        if not beyond.get("significant") or (finite(beyond.get("effect")) or 0.0) * eff <= 0:
            return "like placebo"
    return "rose" if eff > 0 else "fell"


def _p(x: Any) -> str:
    v = finite(x)
    return "n/a" if v is None else f"{v:.2g}"


def _shift_text(ev: dict[str, Any], promo: dict[str, Any], quantity: str) -> str:
    k = promo["k"]
    tests = ev["tests"][quantity]
    ch, bp = tests["change"], tests.get("beyond_placebo") or {}
    twin = placebo_of(promo, ev)
    if quantity == "score":
        gap = _gap(ev)
        text = f"mean score {signed(ch['effect'])}"
        if gap:
            text += f" ({ch['effect'] / gap:.0%} of the gap to users' {ordinal(k)} item)"
    else:
        b, a = level(ev, "exposure", k, "before"), level(ev, "exposure", k, "after")
        ratio = f", x{a / b:.3g}" if b > 0 else ""
        text = f"share of top-{k} slots {b:.2g} -> {a:.2g}{ratio}"
    if twin is not None:
        plc = _test(per_item(twin, quantity, k), None, ev["mode"])
        text += f" (placebo {signed(plc['effect'])}; beyond it {signed(bp.get('effect') or 0.0)}, adj. p={_p(bp.get('p_adjusted'))}"
        if ev["mode"] == "deployment" and bp.get("n"):
            text += f", {bp.get('n_positive')} of {bp.get('n')} items above their placebo"
        text += ")"
    return text


def _gap(ev: dict[str, Any]) -> float | None:
    gaps = [np.mean(r.get("gap_before") or [np.nan]) for r in ev["per_replicate"]]
    g = float(np.nanmean(gaps)) if gaps else float("nan")
    return g if np.isfinite(g) and g > 0 else None


def ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def finding_p(results: dict[str, Any]) -> list[dict[str, Any]]:
    """(p) per extractor and mode: could a seller raise their items' score, and their exposure, with an image?
    Both count a cell only when its change is significant and beyond its placebo's; white-box and transfer
    attacks are separate findings. Effect sizes: the prediction shift (and the share of the gap to the users'
    K-th item it closes), the top-K slot share before -> after."""
    promo = results.get("promotion")
    if not promo:
        return []
    k = promo["k"]
    n_items = len(promo["items"]["ids"])
    what = promo["items"].get("chosen_by") or "the spec's items"
    out = []
    exts = view_names(results)
    for ext, mode, transfer in ((e, m, t) for e in exts for m in promo["modes"] for t in (False, True)):
        evs = [e for e in promo["evaluations"] if e["control"] == "attack" and e["extractor"] == ext
               and e["mode"] == mode and e.get("tests") and bool(e.get("source")) == transfer]
        if not evs:
            continue
        how = f"crafted on {evs[0]['source']}, delivered to {ext}" if transfer else f"crafted on {ext}"
        score = [gained(e, "score") for e in evs]
        exposure = [gained(e, "exposure") for e in evs]
        if all(x == "untested" for x in score + exposure):
            answer = "n/a"
        elif "rose" in exposure:
            answer = "yes"
        elif "rose" in score:
            answer = "partly"
        else:
            answer = "no"
        head = {"yes": f"Yes ({how}, {mode}): an image raised the promoted items' exposure",
                "partly": f"Partly ({how}, {mode}): an image raised the promoted items' scores but not their "
                          "exposure (a score gain that reached too few top-K lists)",
                "no": f"No ({how}, {mode}): no attack raised the promoted items' score or exposure beyond its "
                      "placebo",
                "n/a": f"Untested ({how}, {mode}): one replicate gives no test"}[answer]
        cells = []
        for e in evs:
            cells.append(f"{cell_label(e, k)} on {e['recommender']}: score {gained(e, 'score')}, "
                         f"{_shift_text(e, promo, 'score')}; exposure {gained(e, 'exposure')}, "
                         f"{_shift_text(e, promo, 'exposure')}")
        counts = (f"score rose beyond placebo in {score.count('rose')} of {len(evs)} cells, exposure in "
                  f"{exposure.count('rose')}")
        out.append({
            "id": "p", "question": f"Can a seller promote an item with an image ({how}, {mode})?",
            "answer": answer, "extractor": ext, "mode": mode, "k": k, "n_items": n_items, "transfer": transfer,
            "score_rose": score.count("rose"), "exposure_rose": exposure.count("rose"), "n": len(evs),
            "statement": f"{head}: {counts} ({n_items} items: {what}; FDR {results['alpha']:.0%}). "
                         + "; ".join(cells) + ".",
        })
    return out


def promotion_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One CSV row per promotion attack evaluation: before/after levels, changes and tests of both quantities."""
    promo = results.get("promotion")
    if not promo:
        return []
    k = promo["k"]
    rows = []
    for e in promo["evaluations"]:
        if e["control"] != "attack":
            continue
        row: dict[str, Any] = {"extractor": e["extractor"], "attack": cell_label(e, k), "method": e["method"],
                               "eps_255": e["eps"], "source": e.get("source") or "", "recommender": e["recommender"],
                               "mode": e["mode"], "n_items": len(promo["items"]["ids"])}
        for q in QUANTITIES:
            tests = (e.get("tests") or {}).get(q) or {}
            row[f"{q} before"] = level(e, q, k, "before")
            row[f"{q} after"] = level(e, q, k, "after")
            for name in ("change", "beyond_placebo"):
                t = tests.get(name) or {}
                row[f"{q} {name} effect"] = finite(t.get("effect"))
                row[f"{q} {name} p adjusted"] = finite(t.get("p_adjusted"))
                row[f"{q} {name} significant"] = "yes" if t.get("significant") else "no"
            row[f"{q} verdict"] = gained(e, q)
        reps = e["per_replicate"]
        row["share of users whose score rose"] = float(np.mean([np.mean(r["share_rose"]) for r in reps]))
        med0 = [x for r in reps for x in r["median_rank_before"] if x is not None]
        med1 = [x for r in reps for x in r["median_rank_after"] if x is not None]
        row["median rank before"] = float(np.median(med0)) if med0 else None
        row["median rank after"] = float(np.median(med1)) if med1 else None
        for x in reps[0]["per_k"]:
            kk = x["k"]
            row[f"HR@{kk} before"] = float(np.mean([np.mean(next(y for y in r["per_k"] if y["k"] == kk)["hr_before"])
                                                    for r in reps]))
            row[f"HR@{kk} after"] = float(np.mean([np.mean(next(y for y in r["per_k"] if y["k"] == kk)["hr_after"])
                                                   for r in reps]))
        rows.append(row)
    return rows


def promotion_item_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One CSV row per promotion attack evaluation and promoted item (means over replicates): its score before and
    after, prediction shift and its placebo's, the share of users whose score rose, HR@K and the share of top-K
    slots before and after at every K, and its median rank before and after."""
    promo = results.get("promotion")
    if not promo:
        return []
    k = promo["k"]
    rows = []
    for e in promo["evaluations"]:
        if e["control"] != "attack":
            continue
        twin = placebo_of(promo, e)
        reps = e["per_replicate"]

        def mean_of(field: str, reps: list[dict[str, Any]] = reps) -> np.ndarray:
            return np.nanmean(np.asarray([[np.nan if v is None else v for v in r[field]] for r in reps], float), 0)

        shift = mean_of("prediction_shift")
        placebo_shift = per_item(twin, "score", k).mean(0) if twin is not None else None
        for j, item in enumerate(promo["items"]["ids"]):
            row: dict[str, Any] = {
                "extractor": e["extractor"], "attack": cell_label(e, k), "recommender": e["recommender"],
                "mode": e["mode"], "item": item, "score before": float(mean_of("score_before")[j]),
                "score after": float(mean_of("score_after")[j]), "prediction shift": float(shift[j]),
                "placebo prediction shift": None if placebo_shift is None else float(placebo_shift[j]),
                "share of users whose score rose": float(mean_of("share_rose")[j]),
                "median rank before": finite(float(mean_of("median_rank_before")[j])),
                "median rank after": finite(float(mean_of("median_rank_after")[j]))}
            for x in reps[0]["per_k"]:
                kk = x["k"]
                at = [next(y for y in r["per_k"] if y["k"] == kk) for r in reps]
                for name, field in (("HR", "hr"), ("top-K share", "slots")):
                    label = name.replace("K", str(kk)) if "K" in name else f"{name}@{kk}"
                    row[f"{label} before"] = float(np.mean([a[f"{field}_before"][j] for a in at]))
                    row[f"{label} after"] = float(np.mean([a[f"{field}_after"][j] for a in at]))
            rows.append(row)
    return rows
