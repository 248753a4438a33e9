"""The report's tables (written as CSV, rendered in HTML), the long export, and the CLI summary.

Every CSV is tidy enough for ``pandas.read_csv`` without cleanup: numbers are plain numbers (4
significant digits in the study-shaped tables, full precision in ``long.csv``), significance is its
own yes/no column, never a mark glued to a number, and every header states its unit and K.
``long.csv`` / ``long.parquet`` hold one row per evaluation x K x metric.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from advrec.report import answers
from advrec.report.collect import (
    SUMMARY_ALIASES,
    TESTED_METRICS,
    attack_entry,
    attack_keys,
    attack_label,
    attack_summary,
    effect_value,
    finite,
    interval_text,
    is_oracle,
    matching,
    per_k,
    signed,
    summary_extra_keys,
    summary_k,
    summary_value,
    view_names,
)
from advrec.report.ladder import ladder_rows
from advrec.report.promotion import promotion_item_rows, promotion_rows
from services.recommender.kinds import RECOMMENDER_NEEDS

Row = dict[str, Any]

# attack-summary columns shown in the category tables (the rest are in attacks.csv)
CATEGORY_ATTACK_COLUMNS = ("SR %", "feature MSE")
_ACCURACY_ORDER = ("hr", "ndcg", "precision", "recall", "auc", "n_users")
METRIC_UNITS = {
    "chr": "share of the top-K slots held by origin items (CHR@K, normalised)",
    "chr_count": "origin items per top-K list (the study code's CHR@K = K x CHR@K)",
    "ncdcg": "normalised category DCG of the origin items (nCDCG@K)",
}
_METRIC_LABEL = {"chr": "CHR", "chr_count": "CHR count", "ncdcg": "nCDCG"}


def fmt(x: Any, digits: int = 4) -> str:
    """A number to ``digits`` significant digits ('' when missing): for HTML and text."""
    v = finite(x)
    return "" if v is None else f"{v:.{digits}g}"


def num(x: Any, digits: int = 4) -> float | None:
    """A number rounded to ``digits`` significant digits for a CSV cell (None -> empty)."""
    v = finite(x)
    return None if v is None else float(f"{v:.{digits}g}")


def yes_no(flag: Any) -> str:
    return "yes" if flag else "no"


def control_label(e: dict[str, Any]) -> str:
    if is_oracle(e["control"]):
        return {"oracle": "oracle", "oracle_centroid": "oracle (centroid)"}[e["control"]]
    label = attack_label(e["method"], e["eps"])
    return f"{label} placebo" if e["control"] == "placebo" else label


def _clean_accuracy(results: dict[str, Any], ext: str, rec: str) -> dict[str, float]:
    return next((c["accuracy"] for c in results["clean"] if (c["extractor"], c["recommender"]) == (ext, rec)), {})


def _order(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Evaluations in the study's order: per defense, its oracle, then each attack setting (attack then
    placebo), recommenders in spec order."""
    recs = [r["name"] for r in results["spec"]["recommenders"]]
    settings = attack_keys(results)

    def key(e: dict[str, Any]) -> tuple:
        exts = view_names(results)
        setting = -1 if is_oracle(e["control"]) else settings.index((e["method"], e["eps"]))
        return (exts.index(e["extractor"]), setting, ("oracle", "oracle_centroid", "attack", "placebo").index(e["control"]),
                recs.index(e["recommender"]))

    return sorted(results["evaluations"], key=key)


def category_rows(results: dict[str, Any], mode: str) -> list[Row]:
    """Rows defense x (oracle, attack x eps, its placebo) x recommender for one mode.

    Per K and metric: the replicate mean before and after, the effect (after - before) with its 95 %
    interval across replicates, the replicate test's raw and BH-adjusted p, whether it is significant
    at the run's FDR, and the study's own test (paired over users) for reference.
    """
    ks = sorted({r["k"] for e in results["evaluations"] for r in e.get("per_k", [])})
    rows: list[Row] = []
    for e in _order(results):
        if e["mode"] != mode:
            continue
        row: Row = {"defense": e["extractor"], "perturbation": control_label(e), "control": e["control"],
                    "eps (/255)": "" if is_oracle(e["control"]) else e["eps"], "recommender": e["recommender"],
                    "replicates": e.get("n_replicates")}
        summary = attack_summary(results, e["extractor"], e["method"], e["eps"]) if e["control"] == "attack" else {}
        for col in CATEGORY_ATTACK_COLUMNS:
            row[col] = num(summary_value(summary, col))
        for k in ks:
            r = per_k(e, k) or {}
            for metric in TESTED_METRICS:
                m = r.get(metric) or {}
                lab = f"{_METRIC_LABEL[metric]}@{k}"
                row[f"{lab} before"] = num(m.get("before"))
                row[f"{lab} after"] = num(m.get("after"))
                row[f"{lab} effect"] = num(effect_value(m.get("effect")))
                row[f"{lab} 95% CI low"] = num(effect_value(m.get("ci_low")))
                row[f"{lab} 95% CI high"] = num(effect_value(m.get("ci_high")))
                row[f"{lab} p (replicates)"] = num(m.get("p_value"), 3)
                row[f"{lab} p adjusted"] = num(m.get("p_adjusted"), 3)
                row[f"{lab} significant"] = yes_no(m.get("significant"))
                row[f"{lab} study p (users)"] = num(m.get("user_t_pvalue"), 3)
        rows.append(row)
    return rows


def long_rows(results: dict[str, Any]) -> list[Row]:
    """One row per evaluation x K x metric, full precision, for pandas."""
    rows: list[Row] = []
    for e in _order(results):
        for r in e.get("per_k", []):
            for metric in ("chr", "chr_count", "ncdcg"):
                m = r.get(metric)
                if not isinstance(m, dict):
                    continue
                bp = m.get("beyond_placebo") or {}
                rows.append({
                    "extractor": e["extractor"], "defense": results["extractors"][e["extractor"]].get("defense"),
                    "control": e["control"], "method": None if is_oracle(e["control"]) else e["method"],
                    "eps_255": None if is_oracle(e["control"]) else e["eps"], "recommender": e["recommender"],
                    "mode": e["mode"], "k": r["k"], "metric": metric, "unit": METRIC_UNITS[metric],
                    "before": finite(m.get("before")), "after": finite(m.get("after")),
                    "delta": effect_value(m.get("effect")), "ci_low": effect_value(m.get("ci_low")),
                    "ci_high": effect_value(m.get("ci_high")), "p_value": finite(m.get("p_value")),
                    "p_adjusted": finite(m.get("p_adjusted")), "significant": bool(m.get("significant")),
                    "user_p_value": finite(m.get("user_t_pvalue")), "user_p_adjusted": finite(m.get("user_p_adjusted")),
                    "beyond_placebo_delta": effect_value(bp.get("effect")),
                    "beyond_placebo_p_adjusted": finite(bp.get("p_adjusted")),
                    "n_replicates": e.get("n_replicates"), "n_perturbed": e.get("n_perturbed"),
                })
    return rows


def attack_rows(results: dict[str, Any]) -> list[Row]:
    """One row per extractor x attack x eps: SR (over eligible images, and in the float domain), flip
    rate, feature loss, image quality, norms, the placebo's size, the all-zero flag, speed."""
    extra = sorted({k for a in results["attacks"] for k in summary_extra_keys(a["summary"])})
    rows = []
    for a in results["attacks"]:
        s = a["summary"]
        row: Row = {"defense": a["extractor"], "attack": a["method"], "eps (/255)": a["eps"], "norm": a["norm"] or "",
                    "budget space": a["budget_space"] or "", "delivery": a["delivery"] or ""}
        row.update({label: num(summary_value(s, label)) for label in SUMMARY_ALIASES})
        row["delivered perturbation all zero"] = yes_no(s.get("all_zero"))
        pl = a.get("placebo") or {}
        row["placebo Linf /255"] = num(pl.get("linf_255"))
        row["placebo L2 /255"] = num(pl.get("l2_255"))
        row["placebo feature MSE"] = num(pl.get("feat_mse"))
        row.update({key: num(s.get(key)) for key in extra})
        rows.append(row)
    measured = [c for c in SUMMARY_ALIASES if any(r[c] is not None for r in rows)]
    drop = set(SUMMARY_ALIASES) - set(measured)  # quantities this attacker did not measure
    return [{c: v for c, v in r.items() if c not in drop} for r in rows]


def _accuracy_sort_key(name: str) -> tuple[int, int, str]:
    base, _, k = name.partition("@")
    order = _ACCURACY_ORDER.index(base) if base in _ACCURACY_ORDER else len(_ACCURACY_ORDER)
    return order, int(k) if k.isdigit() else 0, name


def _uses_extractor_label(clean: dict[str, Any]) -> str:
    if clean["uses_extractor"]:
        return "yes"
    needs = RECOMMENDER_NEEDS.get(clean["recommender"], frozenset({"images"}))
    return "no (pixels)" if "images" in needs else "no (interactions only)"


def clean_rows(results: dict[str, Any]) -> list[Row]:
    """HR/nDCG/AUC (mean over replicates) of each clean recommender per extractor."""
    names = sorted({n for c in results["clean"] for n in c["accuracy"]}, key=_accuracy_sort_key)
    rows = []
    for c in results["clean"]:
        row: Row = {"defense": c["extractor"], "recommender": c["recommender"],
                    "uses extractor": _uses_extractor_label(c),
                    "replicates": c.get("n_replicates"), "fit seconds (all replicates)": num(c.get("fit_seconds"), 3)}
        row.update({n: num(c["accuracy"].get(n)) for n in names})
        rows.append(row)
    return rows


def scenario_rows(results: dict[str, Any]) -> list[Row]:
    """The clean ranking of categories the scenario was chosen from, with its K and unit."""
    scen = results["scenario"]
    k = scen.get("select_k")
    rows: list[Row] = []
    for i, r in enumerate(scen.get("ranking") or []):
        if not isinstance(r, dict):
            continue
        rows.append({"rank": i + 1, "category": r.get("name", r.get("category")), "id": r.get("id"),
                     f"CHR@{k} (origin items per top-{k} list, all replicates)": num(r.get("chr")),
                     "items": r.get("n_items")})
    return rows


def build_tables(results: dict[str, Any]) -> dict[str, list[Row]]:
    """Table name (the CSV's file stem) -> rows."""
    tables = {f"category_metrics_{mode}": category_rows(results, mode) for mode in results["spec"]["modes"]}
    tables["attacks"] = attack_rows(results)
    tables["clean_accuracy"] = clean_rows(results)
    tables["scenario"] = scenario_rows(results)
    if results.get("ladder"):
        tables["ladder"] = ladder_rows(results)
    if results.get("promotion"):
        tables["promotion"] = promotion_rows(results)
        tables["promotion_items"] = promotion_item_rows(results)
    return tables


def write_csv(path: Path, rows: list[Row]) -> None:
    """Rows -> CSV with the union of their columns (first-seen order); None is an empty cell."""
    fields: dict[str, None] = {}
    for r in rows:
        fields.update(dict.fromkeys(r))
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(fields), restval="")
        writer.writeheader()
        writer.writerows([{k: ("" if v is None else v) for k, v in r.items()} for r in rows])


def write_parquet(path: Path, rows: list[Row]) -> None:
    """Rows -> Parquet (pyarrow), with the same columns and types as the CSV."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fields: dict[str, None] = {}
    for r in rows:
        fields.update(dict.fromkeys(r))
    table = pa.Table.from_pylist([{f: r.get(f) for f in fields} for r in rows]) if rows else pa.table({})
    pq.write_table(table, path)


# -- the plain-text summary the CLI prints ---------------------------------------------------------


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned fixed-width columns under a header and a rule."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def effect_cell(m: dict[str, Any] | None) -> str:
    """'+0.012 [-0.003, +0.027]*' (* = significant at the run's FDR)."""
    if not m or finite(m.get("effect")) is None:
        return ""
    return f"{signed(m['effect'])}{interval_text(m, 2)}{'*' if m.get('significant') else ''}"


def categories_line(results: dict[str, Any]) -> str:
    """Where items' categories came from and why, and what the success rate (SR) is measured by."""
    exts = results.get("extractors") or {}
    src = (results.get("scenario") or {}).get("category_source") or {}
    if not src.get("used"):
        return ""
    what = "the catalog's own labels" if src["used"] == "catalog" else "the class each extractor assigns"
    line = f"categories: {what} ({src.get('reason')})"
    fitted = {n: (e.get("category_head") or {}).get("held_out_accuracy") for n, e in exts.items()
              if (e.get("category_head") or {}).get("kind") == "fitted"}
    own = [n for n in exts if n not in fitted]
    if not fitted:
        return line + "; SR = classified as the target by the extractor's own classifier"
    accs = ", ".join(f"{n} {fmt(a, 3) or 'n/a'}" for n, a in fitted.items())
    line += (f"; SR = classified as the target by a category head fitted on the extractor's clean features "
             f"(held-out accuracy: {accs})")
    if own:
        line += f", or by the extractor's own classifier where its classes are the categories ({', '.join(own)})"
    return line


def promotion_summary(results: dict[str, Any]) -> str | None:
    """The summary's item-promotion tables: per cell, the score shift and the top-K share with their verdicts."""
    promo = results.get("promotion")
    if not promo:
        return None
    k = promo["k"]
    items = promo["items"]
    lines = [f"\n== item promotion: {len(items['ids'])} items ({items.get('chosen_by')}) ==",
             f"score = the items' mean score over users (prediction shift); top-{k} share = their share of all top-{k} "
             "slots; a verdict counts a change only when it is significant and beyond its placebo's"]
    rows_all = promotion_rows(results)
    for mode in promo["modes"]:
        rows = [[r["extractor"], r["attack"], r["recommender"],
                 f"{signed(r['score change effect'] or 0.0)} ({r['score verdict']})",
                 f"{fmt(r['exposure before'], 3)} -> {fmt(r['exposure after'], 3)} ({r['exposure verdict']})"]
                for r in rows_all if r["mode"] == mode]
        lines.append(f"-- {mode} --\n" + text_table(["extractor", "attack", "recommender", "score shift",
                                                      f"top-{k} share"], rows))
    return "\n".join(lines)


def ladder_summary(results: dict[str, Any]) -> str | None:
    """The summary's defense ladder: per rung, its clean-accuracy cost and the threat's exposure change under the
    non-adaptive and the adaptive attacker, in the ladder's order."""
    lad = results.get("ladder")
    if not lad:
        return None
    threat = lad["threat"]
    head = (f"threat: {threat['label']}, under {lad['baseline']} {signed(threat['effect'])} (beyond its placebo)"
            if threat else f"threat: none (no attack raised exposure beyond its placebo under {lad['baseline']})")
    rows = []
    for rank, r in enumerate(ladder_rows(results), 1):
        rows.append([str(rank), r["rung"], r["recommender"], fmt(r["HR@10"], 3), fmt(r["HR@10 cost (points)"], 2),
                     f"{fmt(r['threat under non-adaptive'], 3)} {r['non-adaptive verdict']}".strip(),
                     f"{fmt(r['threat under adaptive'], 3)} {r['adaptive verdict']}".strip(), r["verdict"],
                     fmt(r["flagged (adaptive)"], 2), fmt(r["ms per image"], 3)])
    base_ms = fmt(1000 * lad["baseline_seconds_per_image"] if lad.get("baseline_seconds_per_image") else None, 3)
    return (f"\n== defense ladder ({lad['recommender']}; {head}; {lad['baseline']} alone: HR@10 "
            f"{fmt((lad['baseline_clean'].get('hr@10') or {}).get('mean'), 3)}, {base_ms} ms/img) ==\n"
            + text_table(["#", "rung", "recommender", "HR@10", "cost (pts)", "non-adaptive", "adaptive", "verdict",
                          "flagged", "ms/img"], rows))


def format_summary(results: dict[str, Any]) -> str:
    """Compact per-mode tables of CHR@K effects with intervals, controls beside the attacks, + findings."""
    k = summary_k(results)
    scen = results["scenario"]
    reps = max((e.get("n_replicates") or 1 for e in results["evaluations"]), default=1)
    parts = [f"scenario: push '{scen.get('origin')}' toward '{scen.get('target')}'; chosen by: {scen.get('chosen_by')}",
             f"K = {k}; effect = CHR@{k} after - before (share of top-{k} slots held by origin items), "
             + (f"mean over {reps} replicates with its 95% interval; * = significant at FDR {results['alpha']:g} "
                "(Benjamini-Hochberg over every test of the run)" if reps > 1 else
                "one replicate: no interval and no test (set replicates to 3 or more)")]
    if categories_line(results):
        parts.insert(1, categories_line(results))
    parts[1:1] = [f"WARNING (scenario): {w}" for w in scen.get("warnings") or []]
    for mode in results["spec"]["modes"]:
        rows = []
        for ext in view_names(results):
            oracle_by_rec = {e["recommender"]: e for e in results["evaluations"]
                             if (e["control"], e["extractor"], e["mode"]) == ("oracle", ext, mode)}
            for method, eps in attack_keys(results):
                s = attack_summary(results, ext, method, eps)
                first = True
                for ev in results["evaluations"]:
                    if (ev["control"], ev["mode"], ev["extractor"], ev["method"], ev["eps"]) != (
                            "attack", mode, ext, method, eps):
                        continue
                    r = per_k(ev, k) or {}
                    plac = per_k(matching(results, ev, "placebo") or {}, k) or {}
                    ora = per_k(oracle_by_rec.get(ev["recommender"]) or {}, k) or {}
                    lead = [ext, attack_label(method, eps), fmt(summary_value(s, "SR %"), 3),
                            fmt(summary_value(s, "feature MSE"), 3)] if first else [""] * 4
                    rows.append([*lead, ev["recommender"], fmt((r.get("chr") or {}).get("before")),
                                 effect_cell(r.get("chr")), effect_cell(plac.get("chr")),
                                 effect_cell(ora.get("chr"))])
                    first = False
        header = ["defense", "attack", "SR%", "featMSE", "recommender", f"CHR@{k} before", "attack effect",
                  "placebo effect", "oracle effect"]
        parts.append(f"\n== {mode} ==\n" + text_table(header, rows))
    weak = [n for n, e in results["extractors"].items() if e.get("weak")]
    if weak:
        parts.append(f"\nweak extractor(s): {', '.join(weak)} classify fewer than half of the origin items as the "
                     "origin class; their comparisons attack images they already misread.")
    zero = [f"{a['extractor']} {attack_label(a['method'], a['eps'])}" for a in results["attacks"]
            if a["summary"].get("all_zero")]
    if zero:
        parts.append(f"all-zero delivered perturbation (the delivery erased the attack): {', '.join(zero)}")
    promotion = promotion_summary(results)
    if promotion:
        parts.append(promotion)
    ladder_text = ladder_summary(results)
    if ladder_text:
        parts.append(ladder_text)
    findings = results.get("findings") or []
    if findings:
        parts.append("\nfindings at a glance (each question's answer; the statements below hold the numbers):")
        caveat = answers.caveat(results)
        if caveat:
            parts.append(f"  CAVEAT (scenario): {caveat}")
        parts += [f"  {q['question']}\n    {q['lead_text']}" for q in answers.overview(results)]
        parts.append("\nfindings:")
        parts += [f"  ({f['id']}) {f['statement']}" for f in findings]
    return "\n".join(parts)


__all__ = ["attack_entry", "build_tables", "format_summary", "long_rows", "write_csv", "write_parquet"]
