"""The report's plots as base64 PNG strings (inline in the HTML page).

Figures are built with ``matplotlib.figure.Figure`` on the Agg canvas: no pyplot, so no global
figure registry, no GUI backend and nothing to close -- safe inside workers and threads.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before anything could import pyplot

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from advrec.report.collect import (  # noqa: E402
    attack_keys,
    attack_label,
    attack_summary,
    finite,
    is_oracle,
    per_k,
    summary_k,
    summary_value,
)

DPI = 80


def figure_png(fig: Figure) -> str:
    """Render a figure to a base64 PNG (no metadata: the same figure gives the same bytes)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _grid(nrows: int, ncols: int, w: float = 3.4, h: float = 2.5, top: float = 0.5) -> tuple[Figure, list[list[Any]]]:
    """A grid of axes with fixed margins in inches (``top`` for a suptitle): an automatic layout
    engine (constrained / tight bbox) costs several draws per figure."""
    width, height = w * ncols, h * nrows + top
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    fig.subplots_adjust(left=0.7 / width, right=1 - 0.15 / width, bottom=0.55 / height, top=1 - top / height,
                        wspace=0.75 / w, hspace=0.9 / h)
    return fig, [list(r) for r in axes]


def chr_vs_k(results: dict[str, Any], mode: str) -> str | None:
    """CHR@K vs K of the origin category: rows = recommenders, columns = extractors.

    Black: before (clean, mean over replicates); one line per attack setting after the attack; stars
    mark the Ks where the effect is significant at the run's FDR (replicate test, BH-adjusted).
    """
    exts = [e["name"] for e in results["spec"]["extractors"]]
    recs = [r["name"] for r in results["spec"]["recommenders"]]
    evs = [e for e in results["evaluations"] if e["mode"] == mode and e.get("per_k") and e["control"] == "attack"]
    if not evs:
        return None
    fig, axes = _grid(len(recs), len(exts))
    colors = matplotlib.colormaps["tab10"]
    for i, rec in enumerate(recs):
        for j, ext in enumerate(exts):
            ax = axes[i][j]
            cell = [e for e in evs if (e["recommender"], e["extractor"]) == (rec, ext)]
            if cell:
                rows = sorted(cell[0]["per_k"], key=lambda r: r["k"])
                ax.plot([r["k"] for r in rows], [finite(r["chr"]["before"]) for r in rows], "k-o", ms=3, label="clean")
            for c, (method, eps) in enumerate(attack_keys(results)):
                e = next((e for e in cell if (e["method"], e["eps"]) == (method, eps)), None)
                if e is None:
                    continue
                rows = sorted(e["per_k"], key=lambda r: r["k"])
                ks, after = [r["k"] for r in rows], [finite(r["chr"]["after"]) for r in rows]
                ax.plot(ks, after, "-o", ms=3, color=colors(c % 10), label=attack_label(method, eps))
                sig = [(k, a) for k, a, r in zip(ks, after, rows, strict=True)
                       if r["chr"].get("significant")]
                if sig:
                    ax.plot(*zip(*sig, strict=True), "*", ms=10, color=colors(c % 10))
            ax.set_xticks(sorted({r["k"] for e in cell for r in e["per_k"]}))
            ax.set_title(f"{ext} / {rec}", fontsize=9)
            ax.set_xlabel("K", fontsize=8)
            ax.set_ylabel("CHR@K", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"CHR@K of '{results['scenario'].get('origin')}' ({mode}; * = significant at FDR "
                 f"{results['alpha']:g})", fontsize=10)
    return figure_png(fig)


def effects(results: dict[str, Any], mode: str, k: int) -> str | None:
    """CHR@k effect (after - before) with its 95% interval across replicates: rows = recommenders,
    columns = extractors; per panel the oracle, then each attack setting beside its placebo. Filled
    markers: significant at the run's FDR."""
    exts = [e["name"] for e in results["spec"]["extractors"]]
    recs = [r["name"] for r in results["spec"]["recommenders"]]
    evs = [e for e in results["evaluations"] if e["mode"] == mode]
    if not evs:
        return None
    settings = attack_keys(results)
    slots = [("oracle", None)] + [(c, s) for s in settings for c in ("attack", "placebo")]
    colors = {"oracle": "#2a7", "attack": "#b33", "placebo": "#888"}
    fig, axes = _grid(len(recs), len(exts), w=max(3.4, 0.45 * len(slots) + 1), h=2.6)
    for i, rec in enumerate(recs):
        for j, ext in enumerate(exts):
            ax = axes[i][j]
            ax.axhline(0, color="k", lw=0.6)
            labels = []
            for x, (control, setting) in enumerate(slots):
                e = next((e for e in evs if (e["recommender"], e["extractor"], e["control"]) == (rec, ext, control)
                          and (is_oracle(control) or (e["method"], e["eps"]) == setting)), None)
                labels.append("oracle" if control == "oracle" else
                              attack_label(*setting) + (" plc" if control == "placebo" else ""))
                m = ((per_k(e, k) if e else None) or {}).get("chr") or {}
                eff, lo, hi = finite(m.get("effect")), finite(m.get("ci_low")), finite(m.get("ci_high"))
                if eff is None:
                    continue
                if lo is not None and hi is not None:
                    ax.plot([x, x], [lo, hi], color=colors[control], lw=1.5)
                ax.plot([x], [eff], "o", ms=6, color=colors[control],
                        markerfacecolor=colors[control] if m.get("significant") else "white")
            ax.set_xticks(range(len(slots)))
            ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=6)
            ax.set_title(f"{ext} / {rec}", fontsize=9)
            ax.set_ylabel(f"CHR@{k} effect", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.subplots_adjust(bottom=0.3)
    fig.suptitle(f"Effect on CHR@{k} of '{results['scenario'].get('origin')}' ({mode}): mean over replicates, 95% "
                 "interval; filled = significant", fontsize=10)
    return figure_png(fig)


def vs_budget(results: dict[str, Any], label: str) -> str | None:
    """An attack-summary quantity (``label`` of SUMMARY_ALIASES) vs eps: one panel per method, one line per extractor."""
    methods = list(dict.fromkeys(m for m, _ in attack_keys(results)))
    exts = [e["name"] for e in results["spec"]["extractors"]]
    if not any(summary_value(a["summary"], label) is not None for a in results["attacks"]):
        return None
    fig, axes = _grid(1, len(methods), 3.4, 2.6, top=0.3)
    for j, method in enumerate(methods):
        ax = axes[0][j]
        budgets = [eps for m, eps in attack_keys(results) if m == method]
        for ext in exts:
            ys = [summary_value(attack_summary(results, ext, method, eps), label) for eps in budgets]
            ax.plot(budgets, ys, "-o", ms=4, label=ext)
        ax.set_xticks(budgets)
        ax.set_title(method.upper(), fontsize=9)
        ax.set_xlabel("eps (/255)", fontsize=8)
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    return figure_png(fig)


def build_plots(results: dict[str, Any]) -> dict[str, str]:
    """Plot name -> base64 PNG (plots without data are left out)."""
    k = summary_k(results)
    plots: dict[str, str | None] = {f"effects_{mode}": effects(results, mode, k) for mode in results["spec"]["modes"]}
    plots.update({f"chr_vs_k_{mode}": chr_vs_k(results, mode) for mode in results["spec"]["modes"]})
    plots["sr_vs_budget"] = vs_budget(results, "SR %")
    plots["feature_mse_vs_budget"] = vs_budget(results, "feature MSE")
    return {k: v for k, v in plots.items() if v}


PLOT_CAPTIONS = {
    "sr_vs_budget": "Success rate (% of attacked images classified as the target) vs budget, per extractor.",
    "feature_mse_vs_budget": "Feature loss (MSE between clean and attacked features of the attacked items) vs budget.",
}


def caption(name: str) -> str:
    if name.startswith("effects_"):
        return (f"Effect of each perturbation on the origin category's CHR@K ({name[8:]} mode): the oracle (green), "
                "each attack (red) beside its placebo (grey); bars: 95% interval across replicates; filled: "
                "significant at the run's FDR.")
    if name.startswith("chr_vs_k_"):
        return (f"CHR@K of the origin category before (black) and after each attack, {name[9:]} mode; "
                "stars: significant at the run's FDR.")
    return PLOT_CAPTIONS.get(name, name)
