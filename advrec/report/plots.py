"""The report's plots as base64 PNG strings (inline in the HTML page).

Figures are built with ``matplotlib.figure.Figure`` on the Agg canvas: no pyplot, so no global
figure registry, no GUI backend and nothing to close -- safe inside workers and threads.

Every figure is drawn to be compared by eye and read on a laptop screen: panels of one figure share
their axes (defenses side by side on one scale), effects have a zero line and their 95 % intervals,
series that would land on one another are offset and have distinct markers, tick labels stay
horizontal, legends sit outside the panels, and the constrained layout keeps titles off tick labels.
Figures are at most :data:`MAX_WIDTH_IN` wide at :data:`DPI`, shown at their own pixel size.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before anything could import pyplot

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.colors import LinearSegmentedColormap, to_hex  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from advrec.report.collect import (
    attack_keys,
    attack_label,
    attack_summary,
    finite,
    per_k,
    summary_k,
    summary_value,
    view_names,
)

DPI = 100
MAX_WIDTH_IN = 11.0  # 1100 px: the page's column on a laptop screen, shown unscaled
MAX_COLUMNS = 3
FONT = {"tick": 10, "label": 11, "title": 11, "suptitle": 12, "legend": 10}
# roles of the controls: blue is the page's colour for a control (answers.TONES "info"), grey the placebo
ROLE_COLORS = {"oracle": "#2f5f9e", "oracle_centroid": "#6f93c6", "attack": "#222222", "placebo": "#9e9e9e"}
ROLE_LABELS = {"oracle": "oracle", "oracle_centroid": "centroid oracle", "attack": "attack", "placebo": "placebo"}
# attack settings: shades of orange, light to dark in the spec's order; extractors: their own hues. Neither uses
# red or green (bad and good news on the page), blue (a control) or grey/black (placebo, clean, attack roles).
SETTING_SHADES = ("#F3B35B", "#D9770B", "#9C4A05", "#5E2C02")
EXTRACTOR_COLORS = ("#6A3D9A", "#CC79A7", "#1B7F8C", "#808000", "#B8860B", "#4B0082")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">")


def figure_png(fig: Figure) -> str:
    """Render a figure to a base64 PNG (no metadata: the same figure gives the same bytes)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _grid(n_panels: int, ncols: int, panel_h: float, sharex: bool = True, sharey: bool = True,
          panel_w: float | None = None) -> tuple[Figure, list[Any]]:
    """A constrained-layout figure of ``n_panels`` axes in rows of ``ncols``, sharing their axes; unused
    slots are hidden. Panels are ``MAX_WIDTH_IN / ncols`` wide unless ``panel_w``."""
    nrows = math.ceil(n_panels / ncols)
    width = min(MAX_WIDTH_IN, (panel_w or MAX_WIDTH_IN / ncols) * ncols)
    fig = Figure(figsize=(width, panel_h * nrows + 0.9), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=sharex, sharey=sharey)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n_panels:]:
        ax.set_visible(False)
    for ax in flat[:n_panels]:
        ax.tick_params(labelsize=FONT["tick"])
        ax.grid(True, color="#e6e6e6", lw=0.6)
        ax.set_axisbelow(True)
    return fig, flat[:n_panels]


def _outer_labels(axes: list[Any], ncols: int, xlabel: str | None, ylabel: str | None) -> None:
    """Axis labels on the outer panels only: x under each column's lowest visible panel (with its tick labels,
    which shared axes hide on inner panels), y on the first column."""
    for i, ax in enumerate(axes):
        if not ax.get_visible():
            continue
        below = axes[i + ncols] if i + ncols < len(axes) else None
        if xlabel and (below is None or not below.get_visible()):
            ax.set_xlabel(xlabel, fontsize=FONT["label"])
            ax.xaxis.set_tick_params(labelbottom=True)
        if ylabel and i % ncols == 0:
            ax.set_ylabel(ylabel, fontsize=FONT["label"])


def _legend(fig: Figure, handles: list[Any]) -> None:
    """One legend for the whole figure, below the panels (never over data), in as few rows as fit its width."""
    # an entry is about its label at ~0.6 em per character plus the handle and spacing (points -> pixels)
    px = FONT["legend"] * DPI / 72
    widths = [0.62 * px * len(h.get_label()) + 4.2 * px for h in handles]
    nrows = 1
    while sum(widths[: math.ceil(len(handles) / nrows)]) > 0.92 * fig.bbox.width and nrows < len(handles):
        nrows += 1
    fig.legend(handles=handles, loc="outside lower center", ncols=math.ceil(len(handles) / nrows),
               fontsize=FONT["legend"], frameon=False, columnspacing=1.4, handletextpad=0.4)


def _from_zero(axes: list[Any], top: float | None = None) -> None:
    """Shared y axes from just below 0 (a point at 0 stays off the frame) to ``top`` or the data's top, with a
    zero line in every panel."""
    hi = top if top is not None else max(ax.get_ylim()[1] for ax in axes if ax.get_visible())
    for ax in axes:
        ax.set_ylim(-0.04 * hi, hi * 1.04)
        ax.axhline(0, color="k", lw=0.9, zorder=1)


def _marker(color: str, marker: str, label: str, filled: bool = True, linestyle: str = "none") -> Line2D:
    return Line2D([], [], color=color, marker=marker, ms=7, ls=linestyle, label=label,
                  markerfacecolor=color if filled else "white")


def _shade(i: int, n: int) -> str:
    """The ``i``-th of ``n`` attack settings' shade of orange, light to dark along :data:`SETTING_SHADES`."""
    ramp = LinearSegmentedColormap.from_list("attack settings", SETTING_SHADES)
    return to_hex(ramp(i / (n - 1) if n > 1 else 0.4))


def _offsets(n: int, span: float) -> list[float]:
    """``n`` evenly spaced offsets centred on 0 across ``span`` (0 for one)."""
    if n <= 1:
        return [0.0] * n
    return [span * (i / (n - 1) - 0.5) for i in range(n)]


def effects(results: dict[str, Any], mode: str, k: int) -> str | None:
    """PNG of :func:`effects_figure` (None without evaluations in ``mode``)."""
    fig = effects_figure(results, mode, k)
    return figure_png(fig) if fig else None


def effects_figure(results: dict[str, Any], mode: str, k: int) -> Figure | None:
    """CHR@k effect (after - before) with its 95 % interval across replicates, one panel per extractor on one
    shared effect axis: rows = the oracle, then each attack setting with its placebo just below; one marker shape
    per recommender. Filled markers: significant at the run's FDR."""
    exts = view_names(results)
    recs = [r["name"] for r in results["spec"]["recommenders"]]
    evs = [e for e in results["evaluations"] if e["mode"] == mode]
    if not evs:
        return None
    oracles = [c for c in ("oracle", "oracle_centroid") if any(e["control"] == c for e in evs)]
    rows: list[tuple[str, list[str], tuple[str, float] | None]] = [(ROLE_LABELS[c], [c], None) for c in oracles]
    rows += [(attack_label(*s), ["attack", "placebo"], s) for s in attack_keys(results)]
    # sub-lines of a row: each recommender's attack then its placebo, spread over 80 % of the row
    n_sub = 2 * len(recs)
    offs = _offsets(n_sub, 0.8 * (n_sub - 1) / n_sub if n_sub > 1 else 0.0)
    ncols = min(MAX_COLUMNS, len(exts))
    # 0.2 in (20 px) per marker line, down to 0.12 in for many recommenders x settings: a marker stays clear
    line_h = min(0.2, max(0.12, 4.5 / (n_sub * len(rows))))
    fig, axes = _grid(len(exts), ncols, panel_h=max(2.4, 0.55 + line_h * n_sub * len(rows)))
    for ax, ext in zip(axes, exts, strict=True):
        ax.axvline(0, color="k", lw=0.9, zorder=1)
        for i, (_, controls, setting) in enumerate(rows):
            if i:
                ax.axhline(i - 0.5, color="#cccccc", lw=0.6)
            for j, rec in enumerate(recs):
                for c, control in enumerate(controls):
                    e = next((e for e in evs if (e["recommender"], e["extractor"], e["control"]) == (rec, ext, control)
                              and (setting is None or (e["method"], e["eps"]) == setting)), None)
                    m = ((per_k(e, k) if e else None) or {}).get("chr") or {}
                    eff, lo, hi = finite(m.get("effect")), finite(m.get("ci_low")), finite(m.get("ci_high"))
                    if eff is None:
                        continue
                    y = i + offs[2 * j + c]
                    color = ROLE_COLORS[control]
                    if lo is not None and hi is not None:
                        ax.plot([lo, hi], [y, y], color=color, lw=1.6, solid_capstyle="butt", zorder=2)
                    ax.plot([eff], [y], ls="none", marker=MARKERS[j % len(MARKERS)], ms=7, color=color, zorder=3,
                            markerfacecolor=color if m.get("significant") else "white", markeredgewidth=1.4)
        ax.set_yticks(range(len(rows)), [r[0] for r in rows])
        ax.set_ylim(len(rows) - 0.5, -0.5)  # the first row on top
        defense = results["extractors"].get(ext, {}).get("defense")
        ax.set_title(ext if not defense or defense == ext else f"{ext} ({defense})", fontsize=FONT["title"])
        ax.grid(False, axis="y")
    _outer_labels(axes, ncols, f"effect on CHR@{k} (after - before)", None)
    handles = [_marker(ROLE_COLORS[c], "o", ROLE_LABELS[c]) for c in (*oracles, "attack", "placebo")]
    handles += [_marker("#555555", MARKERS[j % len(MARKERS)], rec, filled=False) for j, rec in enumerate(recs)]
    handles += [_marker("#555555", "o", "filled: significant"),
                Line2D([], [], color="#555555", lw=1.6, label="95% interval")]
    _legend(fig, handles)
    fig.suptitle(f"Effect on CHR@{k} of '{results['scenario'].get('origin')}' ({mode})", fontsize=FONT["suptitle"])
    return fig


def chr_vs_k(results: dict[str, Any], mode: str) -> str | None:
    """PNG of :func:`chr_vs_k_figure`."""
    fig = chr_vs_k_figure(results, mode)
    return figure_png(fig) if fig else None


def _spread(m: dict[str, Any], when: str) -> tuple[float, float] | None:
    """(lowest, highest) replicate value of ``when`` ('before'/'after'), or None with fewer than two."""
    vals = [v for v in (finite(x) for x in m.get(f"{when}_per_replicate") or []) if v is not None]
    return (min(vals), max(vals)) if len(vals) > 1 else None


def chr_vs_k_figure(results: dict[str, Any], mode: str) -> Figure | None:
    """CHR@K vs K of the origin category, one panel per recommender x extractor on shared axes from 0: the clean
    models (black, dashed) and each attack setting after the attack, each series offset along K with its own
    marker; bars: lowest to highest replicate; filled markers: the effect is significant at the run's FDR."""
    exts = view_names(results)
    recs = [r["name"] for r in results["spec"]["recommenders"]]
    evs = [e for e in results["evaluations"] if e["mode"] == mode and e.get("per_k") and e["control"] == "attack"]
    if not evs:
        return None
    settings = attack_keys(results)
    ks = sorted({r["k"] for e in evs for r in e["per_k"]})
    ncols = min(MAX_COLUMNS, len(exts))
    per_rec = math.ceil(len(exts) / ncols) * ncols  # each recommender starts a new row
    fig, slots = _grid(per_rec * len(recs), ncols, panel_h=2.7)
    offs = _offsets(len(settings) + 1, min(0.5, 0.1 * len(settings)))  # 0.1 of a K slot between series
    for i, rec in enumerate(recs):
        for j, ext in enumerate(exts):
            ax = slots[i * per_rec + j]
            cell = [e for e in evs if (e["recommender"], e["extractor"]) == (rec, ext)]
            if cell:
                rows = sorted(cell[0]["per_k"], key=lambda r: r["k"])
                _series(ax, rows, "before", offs[0], "k", "x", ks, linestyle="--", significant=False)
            for c, (method, eps) in enumerate(settings):
                e = next((e for e in cell if (e["method"], e["eps"]) == (method, eps)), None)
                if e is not None:
                    _series(ax, sorted(e["per_k"], key=lambda r: r["k"]), "after", offs[c + 1],
                            _shade(c, len(settings)), MARKERS[c % len(MARKERS)], ks)
            ax.set_title(f"{ext} / {rec}", fontsize=FONT["title"])
            ax.set_xticks(range(len(ks)), [str(k) for k in ks])
    for i in range(len(recs)):  # the empty slots that end a recommender's rows
        for ax in slots[i * per_rec + len(exts):(i + 1) * per_rec]:
            ax.set_visible(False)
    _from_zero(slots)
    _outer_labels(slots, ncols, "K", "CHR@K")
    handles = [_marker("k", "x", "clean (before)", linestyle="--")]
    handles += [_marker(_shade(c, len(settings)), MARKERS[c % len(MARKERS)], attack_label(*s), linestyle="-")
                for c, s in enumerate(settings)]
    handles += [_marker("#555555", "o", "filled: significant effect"),
                Line2D([], [], color="#555555", lw=1.2, label="lowest to highest replicate")]
    _legend(fig, handles)
    fig.suptitle(f"CHR@K of '{results['scenario'].get('origin')}' before and after each attack ({mode})",
                 fontsize=FONT["suptitle"])
    return fig


def _series(ax: Any, rows: list[dict[str, Any]], when: str, offset: float, color: str, marker: str, ks: list[int],
            linestyle: str = "-", significant: bool = True) -> None:
    """One series of CHR@K levels at each K's slot + ``offset``, with its replicate spread as a bar."""
    xs, ys = [], []
    for r in rows:
        m = r.get("chr") or {}
        y = finite(m.get(when))
        if y is None or r["k"] not in ks:
            continue
        x = ks.index(r["k"]) + offset
        xs.append(x)
        ys.append(y)
        spread = _spread(m, when)
        if spread:
            ax.plot([x, x], spread, color=color, lw=1.2, zorder=2)
        filled = m.get("significant") if significant else True
        ax.plot([x], [y], ls="none", marker=marker, ms=7, color=color, zorder=3, markeredgewidth=1.4,
                markerfacecolor=color if filled else "white")
    ax.plot(xs, ys, ls=linestyle, color=color, lw=1.3, zorder=2)


def vs_budget(results: dict[str, Any], label: str) -> str | None:
    """PNG of :func:`vs_budget_figure`."""
    fig = vs_budget_figure(results, label)
    return figure_png(fig) if fig else None


def vs_budget_figure(results: dict[str, Any], label: str) -> Figure | None:
    """An attack-summary quantity (``label`` of SUMMARY_ALIASES) vs eps: one panel per method on one shared
    axis from 0, one series per extractor, offset along eps with its own marker."""
    methods = list(dict.fromkeys(m for m, _ in attack_keys(results)))
    exts = view_names(results)
    if not any(summary_value(a["summary"], label) is not None for a in results["attacks"]):
        return None
    ncols = min(MAX_COLUMNS, len(methods))
    fig, axes = _grid(len(methods), ncols, panel_h=3.0, sharex=False, panel_w=3.7)
    for ax, method in zip(axes, methods, strict=True):
        budgets = [eps for m, eps in attack_keys(results) if m == method]
        step = min((b - a for a, b in zip(budgets, budgets[1:], strict=False)), default=2.0)
        offs = _offsets(len(exts), 0.06 * step * (len(exts) - 1))  # 6 % of a budget step between series
        for j, ext in enumerate(exts):
            points = [(eps + offs[j], summary_value(attack_summary(results, ext, method, eps), label))
                      for eps in budgets]
            points = [(x, y) for x, y in points if y is not None]
            if points:
                ax.plot(*zip(*points, strict=True), "-", marker=MARKERS[j % len(MARKERS)], ms=7, lw=1.3,
                        color=EXTRACTOR_COLORS[j % len(EXTRACTOR_COLORS)], markeredgewidth=1.4)
        ax.set_xticks(budgets, [f"{b:g}" for b in budgets])
        ax.set_xlim(min(budgets) - 0.6 * step, max(budgets) + 0.6 * step)
        ax.set_title(method.upper(), fontsize=FONT["title"])
    _from_zero(axes, 100.0 if label.endswith("%") else None)
    for ax in axes:
        ax.set_xlabel("eps (/255)", fontsize=FONT["label"])
    axes[0].set_ylabel(label, fontsize=FONT["label"])
    _legend(fig, [_marker(EXTRACTOR_COLORS[j % len(EXTRACTOR_COLORS)], MARKERS[j % len(MARKERS)], ext, linestyle="-")
                  for j, ext in enumerate(exts)])
    return fig


def ladder_figure(results: dict[str, Any]) -> Figure | None:
    """The defense ladder at a glance: per rung (rows, in the ladder's order), the threat's exposure change under
    the non-adaptive (hollow) and the adaptive attacker (filled), with their 95 % intervals, against the
    baseline's (dashed) and zero; beside it, the rung's cost in HR@10 points with its interval."""
    lad = results.get("ladder")
    if not lad or not lad.get("threat") or not lad["rows"]:
        return None
    rows = lad["rows"]
    n = len(rows)
    fig = Figure(figsize=(MAX_WIDTH_IN, 0.42 * n + 1.9), dpi=DPI, layout="constrained")
    ax, cost_ax = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [3, 1.3]})
    for a in (ax, cost_ax):
        a.tick_params(labelsize=FONT["tick"])
        a.grid(True, axis="x", color="#e6e6e6", lw=0.6)
        a.set_axisbelow(True)
        a.axvline(0, color="k", lw=0.9, zorder=1)
    ax.axvline(lad["threat"]["effect"], color="k", lw=1.2, ls="--", zorder=1)
    for y, r in enumerate(rows):
        for key, dy, filled in (("non_adaptive", -0.14, False), ("adaptive", 0.14, True)):
            cell = r.get(key) or {}
            eff = finite(cell.get("effect"))
            if eff is None:
                continue
            lo, hi = finite(cell.get("ci_low")), finite(cell.get("ci_high"))
            if lo is not None and hi is not None:
                ax.plot([lo, hi], [y + dy] * 2, color=ROLE_COLORS["attack"], lw=1.4, zorder=2)
            ax.plot([eff], [y + dy], "o", ms=7, color=ROLE_COLORS["attack"], zorder=3,
                    markerfacecolor=ROLE_COLORS["attack"] if filled else "white")
        base_hr = (lad["baseline_clean"].get("hr@10") or {}).get("mean")
        hr = r["clean"].get("hr@10") or {}
        if base_hr is not None and hr.get("mean") is not None:
            cost = 100 * (base_hr - hr["mean"])
            cost_ax.barh([y], [cost], height=0.5, color="#c8c8c8")
            if hr.get("ci_low") is not None:
                cost_ax.plot([100 * (base_hr - hr["ci_high"]), 100 * (base_hr - hr["ci_low"])], [y, y],
                             color="k", lw=1.2)
    ax.set_yticks(range(n), [r["rung"] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel(f"the threat's exposure change ({'CHR' if lad['threat']['kind'] == 'category' else 'top-K share'}"
                  f"@{lad['k']})", fontsize=FONT["label"])
    cost_ax.set_xlabel("HR@10 lost (points)", fontsize=FONT["label"])
    _legend(fig, [_marker(ROLE_COLORS["attack"], "o", "non-adaptive attacker", filled=False),
                  _marker(ROLE_COLORS["attack"], "o", "adaptive attacker"),
                  Line2D([], [], color="k", ls="--", label=f"undefended {lad['baseline']}")])
    return fig


def build_figures(results: dict[str, Any]) -> dict[str, Figure]:
    """Plot name -> Figure (plots without data are left out), before rendering."""
    k = summary_k(results)
    figs: dict[str, Figure | None] = {f"effects_{mode}": effects_figure(results, mode, k)
                                      for mode in results["spec"]["modes"]}
    figs.update({f"chr_vs_k_{mode}": chr_vs_k_figure(results, mode) for mode in results["spec"]["modes"]})
    figs["sr_vs_budget"] = vs_budget_figure(results, "SR %")
    figs["feature_mse_vs_budget"] = vs_budget_figure(results, "feature MSE")
    figs["ladder"] = ladder_figure(results)
    return {name: fig for name, fig in figs.items() if fig is not None}


def build_plots(results: dict[str, Any]) -> dict[str, str]:
    """Plot name -> base64 PNG (plots without data are left out)."""
    return {name: figure_png(fig) for name, fig in build_figures(results).items()}


PLOT_TITLES = {
    "ladder": "The defense ladder",
    "sr_vs_budget": "Success rate vs budget",
    "feature_mse_vs_budget": "Feature loss vs budget",
}
PLOT_CAPTIONS = {
    "ladder": "Per rung, in the ladder's order (protection against the adaptive attacker per point of HR@10 lost): "
              "the threat's exposure change under the non-adaptive attacker (hollow: it attacked the bare extractor) "
              "and the adaptive one (filled: it attacked through the defense), with 95% intervals; dashed: the change "
              "under the undefended extractor. Right: the clean HR@10 the rung costs, in points, with its interval.",
    "sr_vs_budget": "Per extractor, the % of attacked images (eligible: not already classified as the target) "
                    "classified as the target after the attack; one measurement per cell, so no interval.",
    "feature_mse_vs_budget": "Per extractor, the MSE between the clean and attacked features of the attacked items; "
                             "one measurement per cell, so no interval.",
}


def title(name: str) -> str:
    """A plot's heading on the page."""
    if name.startswith("effects_"):
        return f"Effects on the origin's CHR@K ({name[8:]} mode)"
    if name.startswith("chr_vs_k_"):
        return f"CHR@K vs K ({name[9:]} mode)"
    return PLOT_TITLES.get(name, name)


def caption(name: str) -> str:
    """What a plot shows and how to read it."""
    if name.startswith("effects_"):
        return (f"Effect of each perturbation on the origin category's CHR@K at the headline K ({name[8:]} mode), "
                "one panel per extractor on one shared axis: the oracle (blue, a control), each attack (black) "
                "with its placebo (grey) just below it, one marker shape per recommender; bars: 95% interval "
                "across replicates; filled: significant at the run's FDR. Right of the zero line = exposure rose.")
    if name.startswith("chr_vs_k_"):
        return (f"CHR@K of the origin category before (black, dashed) and after each attack setting (shades of "
                f"orange) ({name[9:]} mode), on one shared axis from 0; series are offset along K so none hides "
                "another; bars: lowest to highest replicate; filled: the effect is significant at the run's FDR.")
    return PLOT_CAPTIONS.get(name, name)
