"""The study report: ``results.json``, ``findings.json``, ``summary.txt``, ``tables/*.csv`` and a
self-contained ``report.html``, built from the artifacts of one run (the ``report`` step).

Modules: :mod:`report_collect` (numbers from artifacts), :mod:`report_findings` (answers to the
study's questions), :mod:`report_tables` (CSV rows and the CLI summary), :mod:`report_plots`
(matplotlib, Agg), :mod:`report_gallery` (before/after images), :mod:`report_html` (the page).
Importing this module stays light (no matplotlib/torch) so the CLI can call :func:`format_summary`.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from advrec.pipeline.report_tables import format_summary

if TYPE_CHECKING:
    from advrec.pipeline.executor import StepContext

__all__ = ["build_report", "format_summary"]


def build_report(ctx: StepContext) -> None:
    """Write the report files into ``ctx.out`` from ``ctx.params['spec']`` and ``ctx.dep_keys``."""
    from advrec.pipeline.report_collect import Artifacts, collect_results, json_clean, summary_k
    from advrec.pipeline.report_findings import derive_findings
    from advrec.pipeline.report_gallery import build_gallery, gallery_meta
    from advrec.pipeline.report_html import render_html
    from advrec.pipeline.report_plots import build_plots
    from advrec.pipeline.report_tables import build_tables, write_csv

    t0 = time.perf_counter()
    spec = ctx.params.get("spec")
    results = collect_results(ctx.store, ctx.dep_keys, spec)
    results["findings"] = json_clean(derive_findings(results))
    gallery = build_gallery(Artifacts(ctx.store, ctx.dep_keys), results,
                            int(ctx.params.get("gallery_users", spec.get("gallery_users", 1))))
    results["gallery"] = json_clean(gallery_meta(gallery))
    k = summary_k(results)

    tables = build_tables(results)
    (ctx.out / "tables").mkdir()
    for name, rows in tables.items():
        write_csv(ctx.out / "tables" / f"{name}.csv", rows)
    _dump(ctx.out / "results.json", results)
    _dump(ctx.out / "findings.json", {"schema_version": results["schema_version"], "k": k, "alpha": results["alpha"],
                                      "origin": results["scenario"].get("origin"),
                                      "target": results["scenario"].get("target"), "findings": results["findings"]})
    (ctx.out / "summary.txt").write_text(format_summary(results) + "\n")
    plots = build_plots(results)
    (ctx.out / "report.html").write_text(render_html(results, tables, plots, gallery, k), encoding="utf-8")
    ctx.meta.update(n_findings=len(results["findings"]), n_evaluations=len(results["evaluations"]),
                    n_plots=len(plots), seconds=round(time.perf_counter() - t0, 3))


def _dump(path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, allow_nan=False))
