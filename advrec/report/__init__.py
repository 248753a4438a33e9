"""The study report: ``results.json``, ``findings.json``, ``summary.txt``, ``tables/*.csv`` and a
self-contained ``report.html``, built from the artifacts of one run.

Modules: :mod:`~advrec.report.collect` (numbers from artifacts, read through each domain's
artifact module), :mod:`~advrec.report.findings` (answers to the study's questions),
:mod:`~advrec.report.tables` (CSV rows and the CLI summary), :mod:`~advrec.report.plots`
(matplotlib, Agg), :mod:`~advrec.report.gallery` (before/after images), :mod:`~advrec.report.html`
(the page). Importing this package stays light (no matplotlib/torch) so the CLI can call
:func:`format_summary`. The report knows no pipeline: its inputs are a :class:`RunArtifacts`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from advrec.report.tables import format_summary

if TYPE_CHECKING:
    from advrec.report.collect import RunArtifacts

__all__ = ["build_report", "format_summary"]


def build_report(art: RunArtifacts, spec: dict[str, Any], gallery_users: int, out: Path) -> dict[str, Any]:
    """Write the report files into ``out``; returns a small summary (counts and seconds)."""
    from advrec.report.collect import collect_results, json_clean, summary_k
    from advrec.report.findings import derive_findings
    from advrec.report.gallery import build_gallery, gallery_meta
    from advrec.report.html import render_html
    from advrec.report.ladder import finding_l, ladder
    from advrec.report.plots import build_plots
    from advrec.report.stats import annotate
    from advrec.report.tables import build_tables, long_rows, write_csv, write_parquet

    t0 = time.perf_counter()
    results = collect_results(art, spec)
    results["tests"] = annotate(results, summary_k(results))
    results = json_clean(results)
    results["ladder"] = json_clean(ladder(results))
    results["findings"] = json_clean(derive_findings(results) + finding_l(results))
    gallery = build_gallery(art, results, int(gallery_users))
    results["gallery"] = json_clean(gallery_meta(gallery))
    k = summary_k(results)

    tables = build_tables(results)
    (out / "tables").mkdir()
    for name, rows in tables.items():
        write_csv(out / "tables" / f"{name}.csv", rows)
    long = long_rows(results)
    write_csv(out / "tables" / "long.csv", long)
    write_parquet(out / "tables" / "long.parquet", long)
    _dump(out / "results.json", results)
    _dump(out / "findings.json", {"schema_version": results["schema_version"], "k": k, "alpha": results["alpha"],
                                  "origin": results["scenario"].get("origin"),
                                  "target": results["scenario"].get("target"), "findings": results["findings"]})
    (out / "summary.txt").write_text(format_summary(results) + "\n")
    plots = build_plots(results)
    (out / "report.html").write_text(render_html(results, tables, plots, gallery, k), encoding="utf-8")
    return {"n_findings": len(results["findings"]), "n_evaluations": len(results["evaluations"]),
            "n_plots": len(plots), "seconds": round(time.perf_counter() - t0, 3)}


def _dump(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, allow_nan=False))
