"""The study's tables as rows of strings (written as CSV, rendered in HTML), and the CLI summary.

Values are formatted with 4 significant digits (p-values 3); a ``*`` follows a CHR/nCDCG "after"
value whose paired t-test p <= alpha, like the study's ``score^*``. Full precision is in
``results.json``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from advrec.report.collect import (
    SUMMARY_ALIASES,
    attack_keys,
    attack_label,
    attack_summary,
    finite,
    mark,
    per_k,
    summary_extra_keys,
    summary_k,
    summary_value,
)

Row = dict[str, str]

# attack-summary columns shown in the category tables (the rest are in attacks.csv)
CATEGORY_ATTACK_COLUMNS = ("SR %", "feature MSE", "PSNR", "SSIM")
_ACCURACY_ORDER = ("hr", "ndcg", "precision", "recall", "auc", "n_users")


def fmt(x: Any, digits: int = 4) -> str:
    v = finite(x)
    return "" if v is None else f"{v:.{digits}g}"


def fmt_p(p: Any) -> str:
    return fmt(p, 3)


def _metric_columns(row: Row, prefix: str, metric: dict[str, Any] | None, alpha: float, clean: bool) -> None:
    m = metric or {}
    row[f"{prefix} before"] = fmt(m.get("before"))
    row[f"{prefix} after"] = "" if clean else fmt(m.get("after")) + mark(m.get("t_pvalue"), alpha)
    row[f"{prefix} p (t)"] = "" if clean else fmt_p(m.get("t_pvalue"))
    row[f"{prefix} p (Wilcoxon)"] = "" if clean else fmt_p(m.get("wilcoxon_pvalue"))


def _clean_accuracy(results: dict[str, Any], ext: str, rec: str) -> dict[str, float]:
    return next((c["accuracy"] for c in results["clean"] if (c["extractor"], c["recommender"]) == (ext, rec)), {})


def _category_row(results: dict[str, Any], ev: dict[str, Any], ks: list[int], clean: bool) -> Row:
    ext, rec = ev["extractor"], ev["recommender"]
    row: Row = {"defense": ext, "attack": "clean" if clean else ev["method"],
                "eps": "" if clean else f"{ev['eps']:g}", "recommender": rec}
    summary = {} if clean else attack_summary(results, ext, ev["method"], ev["eps"])
    for col in CATEGORY_ATTACK_COLUMNS:
        row[col] = fmt(summary_value(summary, col))
    acc_before = _clean_accuracy(results, ext, rec)
    for k in ks:
        r = per_k(ev, k) or {}
        _metric_columns(row, f"CHR@{k}", r.get("chr"), results["alpha"], clean)
        _metric_columns(row, f"nCDCG@{k}", r.get("ncdcg"), results["alpha"], clean)
        for name, label in (("hr", "HR"), ("ndcg", "nDCG")):
            row[f"{label}@{k} before"] = fmt(acc_before.get(f"{name}@{k}"))
            row[f"{label}@{k} after"] = "" if clean else fmt(ev["accuracy_after"].get(f"{name}@{k}"))
    return row


def category_rows(results: dict[str, Any], mode: str) -> list[Row]:
    """Rows defense x (clean, attack x eps) x recommender for one mode, in the study's order.

    Each defense starts with its clean rows (the "before" values, identical for every attack of
    that defense), then each attack of the spec in order and each budget.
    """
    ks = sorted({r["k"] for e in results["evaluations"] for r in e.get("per_k", [])})
    evs = [e for e in results["evaluations"] if e["mode"] == mode]
    rows: list[Row] = []
    for ext in (e["name"] for e in results["spec"]["extractors"]):
        mine = [e for e in evs if e["extractor"] == ext]
        first_per_rec: dict[str, dict[str, Any]] = {}
        for e in mine:
            first_per_rec.setdefault(e["recommender"], e)
        rows += [_category_row(results, e, ks, clean=True) for e in first_per_rec.values()]
        for method, eps in attack_keys(results):
            rows += [_category_row(results, e, ks, clean=False) for e in mine if (e["method"], e["eps"]) == (method, eps)]
    return rows


def attack_rows(results: dict[str, Any]) -> list[Row]:
    """One row per extractor x attack x eps: SR, flip rate, feature loss, image quality, norms, speed."""
    extra = sorted({k for a in results["attacks"] for k in summary_extra_keys(a["summary"])})
    rows = []
    for a in results["attacks"]:
        s = a["summary"]
        row: Row = {"defense": a["extractor"], "attack": a["method"], "eps": f"{a['eps']:g}", "norm": a["norm"] or "",
                    "budget space": a["budget_space"] or "", "delivery": a["delivery"] or ""}
        row.update({label: fmt(summary_value(s, label)) for label in SUMMARY_ALIASES})
        row.update({key: fmt(s.get(key)) for key in extra})
        rows.append(row)
    measured = [c for c in SUMMARY_ALIASES if any(r[c] for r in rows)]
    drop = set(SUMMARY_ALIASES) - set(measured)  # quantities this attacker did not measure
    return [{c: v for c, v in r.items() if c not in drop} for r in rows]


def _accuracy_sort_key(name: str) -> tuple[int, int, str]:
    base, _, k = name.partition("@")
    order = _ACCURACY_ORDER.index(base) if base in _ACCURACY_ORDER else len(_ACCURACY_ORDER)
    return order, int(k) if k.isdigit() else 0, name


def clean_rows(results: dict[str, Any]) -> list[Row]:
    """HR/nDCG/AUC (and whatever else was measured) of each clean recommender per extractor."""
    names = sorted({n for c in results["clean"] for n in c["accuracy"]}, key=_accuracy_sort_key)
    rows = []
    for c in results["clean"]:
        row: Row = {"defense": c["extractor"], "recommender": c["recommender"],
                    "uses extractor": "yes" if c["uses_extractor"] else "no (pixels)",
                    "fit seconds": fmt(c.get("fit_seconds"), 3)}
        row.update({n: fmt(c["accuracy"].get(n)) for n in names})
        rows.append(row)
    return rows


def scenario_rows(results: dict[str, Any]) -> list[Row]:
    """The clean ranking of categories the scenario was chosen from (whatever shape it was stored in)."""
    ranking = results["scenario"].get("ranking") or []
    if isinstance(ranking, dict):
        ranking = [{"category": k, "value": v} for k, v in ranking.items()]
    rows: list[Row] = []
    for i, r in enumerate(ranking):
        if isinstance(r, dict):
            rows.append({"rank": str(i + 1), **{str(k): fmt(v) if finite(v) is not None else str(v)
                                                 for k, v in r.items()}})
        else:
            values = r if isinstance(r, list | tuple) else [r]
            rows.append({"rank": str(i + 1), **{f"col{j}": str(v) for j, v in enumerate(values)}})
    return rows


def build_tables(results: dict[str, Any]) -> dict[str, list[Row]]:
    """Table name (the CSV's file stem) -> rows."""
    tables = {f"category_metrics_{mode}": category_rows(results, mode) for mode in results["spec"]["modes"]}
    tables["attacks"] = attack_rows(results)
    tables["clean_accuracy"] = clean_rows(results)
    tables["scenario"] = scenario_rows(results)
    return tables


def write_csv(path: Path, rows: list[Row]) -> None:
    """Rows -> CSV with the union of their columns (first-seen order)."""
    fields: dict[str, None] = {}
    for r in rows:
        fields.update(dict.fromkeys(r))
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(fields), restval="")
        writer.writeheader()
        writer.writerows(rows)


# -- the plain-text summary the CLI prints ---------------------------------------------------------


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned fixed-width columns under a header and a rule."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _arrow(m: dict[str, Any] | None, alpha: float) -> str:
    if not m:
        return ""
    return f"{fmt(m.get('before'))} -> {fmt(m.get('after'))}{mark(m.get('t_pvalue'), alpha)}"


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


def format_summary(results: dict[str, Any]) -> str:
    """Compact per-mode tables (defense | attack | eps | SR% | featMSE | rec | CHR@K | nCDCG@K) + findings."""
    k = summary_k(results)
    scen = results["scenario"]
    alpha = results["alpha"]
    parts = [f"scenario: push '{scen.get('origin')}' toward '{scen.get('target')}'; chosen by: {scen.get('chosen_by')}",
             f"K = {k}; * = paired t-test p <= {alpha:g} against the same extractor's clean run"]
    if categories_line(results):
        parts.insert(1, categories_line(results))
    for mode in results["spec"]["modes"]:
        rows = []
        for ext in (e["name"] for e in results["spec"]["extractors"]):
            for method, eps in attack_keys(results):
                s = attack_summary(results, ext, method, eps)
                first = True
                for ev in results["evaluations"]:
                    if (ev["mode"], ev["extractor"], ev["method"], ev["eps"]) != (mode, ext, method, eps):
                        continue
                    r = per_k(ev, k) or {}
                    lead = [ext, attack_label(method, eps), f"{eps:g}", fmt(summary_value(s, "SR %"), 3),
                            fmt(summary_value(s, "feature MSE"), 3)] if first else [""] * 5
                    rows.append([*lead, ev["recommender"], _arrow(r.get("chr"), alpha), _arrow(r.get("ncdcg"), alpha)])
                    first = False
        header = ["defense", "attack", "eps", "SR%", "featMSE", "recommender", f"CHR@{k} before -> after",
                  f"nCDCG@{k} before -> after"]
        parts.append(f"\n== {mode} ==\n" + text_table(header, rows))
    findings = results.get("findings") or []
    if findings:
        parts.append("\nfindings:")
        parts += [f"  ({f['id']}) {f['statement']}" for f in findings]
    return "\n".join(parts)
