"""The report as a reader sees it: badge colours that mean good or bad news for the shop, findings that lead with
their answer and fold their numbers, figures whose text never overlaps and whose panels share their axes, and the
page rendered in a real headless browser (Debian's chromium) without overlapping text or shrunken figures.

The hand-made run of :mod:`tests.pipeline.test_report` (known verdicts) is the input.
"""

from __future__ import annotations

import html as htmllib
import itertools
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from markupsafe import escape
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

from advrec.report import format_summary
from advrec.report.plots import DPI, build_figures
from tests.pipeline import test_report as hand_made

# the hand-made run and its report (module fixtures of test_report, built once more for this module)
fake_run, report, _results = hand_made.fake_run, hand_made.report, hand_made._results

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install "
                                    "chromium): the report cannot be rendered in a headless browser here")
LAPTOP = (1366, 900)  # the window a reader opens the report in


def _sections(html: str) -> dict[str, str]:
    """Finding id -> the HTML of its section on the page."""
    return dict(re.findall(r'<section id="finding-(\w)">(.*?)</section>', html, re.S))


def _badges(fragment: str) -> list[tuple[str, str]]:
    """(tone class, answer) of every badge in ``fragment``."""
    return re.findall(r'<span class="ans (\w+)"[^>]*>([^<]+)</span>', fragment)


def test_badge_colours_say_whether_the_answer_is_good_news_not_yes_or_no(report):
    """A red 'yes' marked the defense working and a green 'no' the oracle's caveat (issue 23): now the same answer
    takes the colour of what it means for the shop, per question."""
    sections = _sections((report / "report.html").read_text())
    assert set(sections) == {"o", "a", "b", "c", "d", "l"}
    # the planted truth: the oracle rose (a control: info), PGD eps 8 raised CHR (bad), eps 4 did not (good),
    # pgd_at did not lower the SR significantly (bad), prevented only part of the rise (mixed), (d) untested;
    # the ladder: pgd_at holds on VBPR's threat (good), AMR on the standard extractor rose as much (bad): partly
    expected = {"o": {("info", "yes")}, "a": {("bad", "yes"), ("good", "no")}, "b": {("bad", "no")},
                "c": {("mixed", "partly"), ("untested", "n/a")}, "d": {("untested", "n/a")},
                "l": {("mixed", "partly"), ("good", "protects"), ("bad", "fails")}}
    for fid, badges in expected.items():
        assert set(_badges(sections[fid])) == badges, fid
    html = (report / "report.html").read_text()
    legend = re.search(r'<ul class="legend">(.*?)</ul>', html, re.S).group(1)
    for tone in ("good", "bad", "mixed", "info", "untested"):
        assert f'<span class="ans {tone}">' in legend
    assert "good news for the shop" in legend and "bad news for the shop" in legend
    # "yes" is bad news for an attack and a control's result for the oracle: colour follows meaning, not the word
    tones_of_yes = {t for s in sections.values() for t, a in _badges(s) if a == "yes"}
    assert tones_of_yes == {"info", "bad"}


def test_findings_lead_with_a_one_line_answer_and_a_table_and_fold_the_numbers(report):
    html = (report / "report.html").read_text()
    res = _results(report)
    for fid, section in _sections(html).items():
        lead, grid, details = (section.index(s) for s in ('<p class="lead">', '<table class="grid">', "<details>"))
        assert lead < grid < details, fid  # answer first, then the table, then the numbers on demand
        for f in (f for f in res["findings"] if f["id"] == fid):
            assert section.index(str(escape(f["statement"]))) > details  # every number is still on the page
    a = _sections(html)["a"]
    lead = re.search(r'<p class="lead">(.*?)</p>', a, re.S).group(1)
    assert re.sub(r"<[^>]+>", "", lead).startswith("yes2 of 4 extractor x attack settings (PGD eps 8 under standard, "
                                                    "PGD eps 8 under pgd_at)")
    # the table gives each finding's answer and each recommender x mode cell's direction and effect
    rows = re.findall(r"<tr>(.*?)</tr>", re.search(r'<table class="grid">(.*?)</table>', a, re.S).group(1), re.S)
    assert len(rows) == 2 + 4  # two header rows (mode over recommender), one row per extractor x attack setting
    pgd_at_eps8 = next(r for r in rows if ">pgd_at<" in r and ">PGD eps 8<" in r)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", pgd_at_eps8)[3:]
    assert cells == ["· +0.0083", "▲ +0.05", "· +0.0083", "▲ +0.05"]  # vbpr, amr per mode: only AMR's rise
    assert pgd_at_eps8.count('class="t-bad"') == 2


def test_the_text_summary_leads_each_question_with_its_answer_and_keeps_every_statement(report):
    res = _results(report)
    text = format_summary(res)
    glance = text[text.index("findings at a glance"):]
    assert "(a) Did the attacks raise the origin category's CHR@K?\n    Yes for 2 of 4 extractor x attack settings " \
           "(PGD eps 8 under standard, PGD eps 8 under pgd_at); no for 2 of 4" in glance
    assert "(c) Did the robust extractors prevent the CHR rise?\n    Partly for 1 of 2" in glance
    for f in res["findings"]:
        assert f["statement"] in text


# -- figures -----------------------------------------------------------------------------------------------


def _drawn_texts(fig: Figure) -> list[tuple[str, Bbox, float]]:
    """(text, box in pixels, size in points) of every text the renderer actually draws (ticks outside the view
    limits and hidden labels are not drawn)."""
    canvas = FigureCanvasAgg(fig)
    renderer = canvas.get_renderer()
    drawn: dict[int, tuple[str, Bbox, float]] = {}
    draw_text = renderer.draw_text

    def record(gc, x, y, s, prop, angle, ismath=False, mtext=None):
        if s.strip():
            if mtext is not None:
                box = mtext.get_window_extent(renderer)
            else:  # a line of a multi-line text: its own box
                w, h, d = renderer.get_text_width_height_descent(s, prop, ismath)
                box = Bbox.from_bounds(x, y - d, w, h)
            drawn[id(mtext) if mtext is not None else len(drawn) + 10**9] = (s, box, prop.get_size_in_points())
        return draw_text(gc, x, y, s, prop, angle, ismath=ismath, mtext=mtext)

    renderer.draw_text = record
    canvas.draw()
    return list(drawn.values())


def _overlap(a: Bbox, b: Bbox, tol: float = 1.0) -> bool:
    return min(a.x1, b.x1) - max(a.x0, b.x0) > tol and min(a.y1, b.y1) - max(a.y0, b.y0) > tol


def layout_problems(fig: Figure, min_points: float = 9.0, min_marker_gap: float = 5.0) -> list[str]:
    """What a reader would trip on in ``fig``: texts that overlap each other or any panel or leave the figure,
    text too small to read, and markers that sit on one another (a series hidden under another)."""
    texts = _drawn_texts(fig)
    width, height = fig.bbox.width, fig.bbox.height
    panels = [ax for ax in fig.axes if ax.get_visible()]
    problems = []
    for s, box, size in texts:
        if box.x0 < -1 or box.y0 < -1 or box.x1 > width + 1 or box.y1 > height + 1:
            problems.append(f"text {s!r} leaves the figure")
        if size < min_points:
            problems.append(f"text {s!r} is {size:g} pt")
        for ax in panels:
            if _overlap(box, ax.get_window_extent()):
                problems.append(f"text {s!r} lies over a panel")
    for (s1, b1, _), (s2, b2, _) in itertools.combinations(texts, 2):
        if _overlap(b1, b2):
            problems.append(f"texts {s1!r} and {s2!r} overlap")
    for ax in panels:
        points = [ax.transData.transform(np.column_stack([line.get_xdata(), line.get_ydata()]))
                  for line in ax.get_lines() if line.get_marker() not in (None, "None", "", " ")]
        pts = np.concatenate(points) if points else np.zeros((0, 2))
        for p, q in itertools.combinations(pts, 2):
            if np.hypot(*(p - q)) < min_marker_gap:
                problems.append(f"two markers {np.hypot(*(p - q)):.1f} px apart in {ax.get_title()!r}")
    return problems


def test_the_figure_check_finds_overlapping_labels_and_hidden_series():
    """The check itself: the old layout's faults (crowded rotated tick labels running into the panel below, a
    title over the panel above, a suptitle over a panel title, two series on one point) are each reported."""
    fig = Figure(figsize=(4, 3), dpi=DPI)
    top, bottom = fig.subplots(2, 1)
    fig.subplots_adjust(hspace=0.05, top=0.88)
    top.set_xticks(range(12), [f"PGD eps {i} plc" for i in range(12)], rotation=60, fontsize=9)
    bottom.set_title("standard / amr", fontsize=9)
    top.set_title("standard / vbpr", fontsize=9)
    fig.suptitle("Effect on CHR@10 of 'sandal' (retrain)", y=0.93, fontsize=10)
    bottom.plot([1, 2], [0.1, 0.2], "o")
    bottom.plot([1, 2], [0.1, 0.25], "s")
    problems = layout_problems(fig)

    def overlapping(a: str, b: str) -> bool:
        return any(p.endswith("overlap") and repr(a) in p and repr(b) in p for p in problems)

    assert overlapping("PGD eps 0 plc", "PGD eps 1 plc")
    assert "text 'standard / amr' lies over a panel" in problems  # a title over the panel above it
    assert overlapping("Effect on CHR@10 of 'sandal' (retrain)", "standard / vbpr")
    assert "text 'PGD eps 5 plc' lies over a panel" in problems
    assert any(p.startswith("two markers 0.0 px apart") for p in problems)


def test_figures_share_their_axes_draw_zero_and_intervals_and_have_no_overlap(report):
    figs = build_figures(_results(report))
    assert set(figs) == {"effects_retrain", "effects_deployment", "chr_vs_k_retrain", "chr_vs_k_deployment",
                         "sr_vs_budget", "feature_mse_vs_budget", "ladder"}
    for name, fig in figs.items():
        assert layout_problems(fig) == [], name
        assert fig.bbox.width <= 1100, name  # shown at its own size on a laptop screen, not shrunk
        panels = [ax for ax in fig.axes if ax.get_visible()]
        assert all(ax.get_window_extent().width >= 250 and ax.get_window_extent().height >= 150 for ax in panels)
        assert len({ax.get_ylim() for ax in panels}) == 1, name  # one scale: defenses compared by eye
        horizontal = name.startswith("effects_") or name == "ladder"  # effects run along x, levels along y
        for ax in panels:
            zero = [line for line in ax.get_lines() if list(line.get_xdata() if horizontal else line.get_ydata())
                    == [0, 0]]
            assert zero, f"{name}: no zero line in {ax.get_title()!r}"
        if name.startswith("effects_"):
            assert len({ax.get_xlim() for ax in panels}) == 1
            # every point with an interval has its bar: planted effects have 95% intervals across 3 replicates
            for ax in panels:
                markers = {line.get_ydata()[0]: line.get_xdata()[0] for line in ax.get_lines()
                           if line.get_marker() not in ("None", None, "")}
                bars = {line.get_ydata()[0]: tuple(line.get_xdata()) for line in ax.get_lines()
                        if line.get_marker() in ("None", None, "") and line.get_ydata()[0] in markers}
                assert len(markers) == 2 * (1 + 2 * 2)  # per recommender: the oracle, 2 settings x (attack, placebo)
                assert set(bars) == set(markers) and all(lo <= markers[y] <= hi for y, (lo, hi) in bars.items())


# -- the page in a headless browser -------------------------------------------------------------------------

# Injected into a copy of report.html only (the report itself has no scripts): opens every <details>, then
# measures the box of every run of text (per line) and every image, clipped to the scroll boxes around it, and
# reports each pair of different texts/images whose boxes intersect, the page's width, each plot's shown size and
# the colour of every badge.
MEASURE = r"""
window.addEventListener('load', () => {
  for (const d of document.querySelectorAll('details')) d.open = true;
  const clip = (el) => {
    let c = {l: -1e9, t: -1e9, r: 1e9, b: 1e9};
    for (let a = el.parentElement; a; a = a.parentElement) {
      const cs = getComputedStyle(a);
      if (cs.overflowX !== 'visible' || cs.overflowY !== 'visible') {
        const r = a.getBoundingClientRect();
        c = {l: Math.max(c.l, r.left), t: Math.max(c.t, r.top), r: Math.min(c.r, r.right), b: Math.min(c.b, r.bottom)};
      }
    }
    return c;
  };
  const boxes = [];
  const add = (id, el, r, what) => {
    const c = clip(el);
    const b = {id, what, l: Math.max(r.left, c.l), t: Math.max(r.top, c.t), r: Math.min(r.right, c.r),
               b: Math.min(r.bottom, c.b)};
    if (b.r - b.l > 1 && b.b - b.t > 1) boxes.push(b);
  };
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  let id = 0;
  for (let n = walker.nextNode(); n; n = walker.nextNode(), id++) {
    if (!n.textContent.trim() || n.parentElement.closest('script,style')) continue;
    const range = document.createRange();
    range.selectNodeContents(n);
    for (const r of range.getClientRects()) add(id, n.parentElement, r, n.textContent.trim().slice(0, 60));
  }
  for (const img of document.images) add(id++, img, img.getBoundingClientRect(), 'image ' + img.alt);
  const overlaps = [];
  for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
    const a = boxes[i], b = boxes[j];
    if (a.id !== b.id && Math.min(a.r, b.r) - Math.max(a.l, b.l) > 1.5 && Math.min(a.b, b.b) - Math.max(a.t, b.t) > 1.5)
      overlaps.push([a.what, b.what]);
  }
  const plots = [...document.querySelectorAll('.plot img')].map(img => {
    const r = img.getBoundingClientRect();
    return {alt: img.alt, natural: img.naturalWidth, shown: r.width, right: r.right};
  });
  const badges = [...document.querySelectorAll('span.ans')].map(s => [s.className, getComputedStyle(s).backgroundColor]);
  const out = document.createElement('pre');
  out.id = 'advrec-layout';
  out.textContent = JSON.stringify({overlaps: overlaps.slice(0, 50), n_overlaps: overlaps.length, n_boxes: boxes.length,
    page_width: document.documentElement.scrollWidth, viewport: window.innerWidth, plots, badges});
  document.body.appendChild(out);
});
"""


def measure_in_browser(html: str, tmp_path: Path, extra_css: str = "") -> dict:
    """Render ``html`` (with :data:`MEASURE` and ``extra_css`` injected) in headless chromium in a laptop-sized
    window and return the measurements."""
    page = tmp_path / "page.html"
    page.write_text(html.replace("</head>", f"<style>{extra_css}</style></head>", 1)
                    .replace("</body>", f"<script>{MEASURE}</script></body>", 1), encoding="utf-8")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={LAPTOP[0]},{LAPTOP[1]}", "--dump-dom",
           page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    found = re.search(r'<pre id="advrec-layout">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"chromium returned no measurements (exit {proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(htmllib.unescape(found.group(1)))


@needs_chromium
def test_the_report_renders_without_overlap_in_a_headless_browser(report, tmp_path):
    m = measure_in_browser((report / "report.html").read_text(), tmp_path)
    assert m["n_boxes"] > 500  # the numbers, tables and figures were measured, not an empty page
    assert m["n_overlaps"] == 0, m["overlaps"]
    assert m["page_width"] <= m["viewport"]  # nothing runs off a laptop screen sideways
    assert {p["alt"] for p in m["plots"]} >= {"effects_retrain", "chr_vs_k_deployment", "sr_vs_budget"}
    for p in m["plots"]:
        assert p["shown"] >= p["natural"] - 1 and p["right"] <= m["viewport"], p  # shown at full size
    # one colour per tone on the whole page, and a different colour for each tone
    colours: dict[str, set[str]] = {}
    for cls, colour in m["badges"]:
        colours.setdefault(cls.split()[-1], set()).add(colour)
    assert set(colours) == {"good", "bad", "mixed", "info", "untested"}
    assert all(len(c) == 1 for c in colours.values()) and len({c.pop() for c in colours.values()}) == 5


@needs_chromium
def test_the_browser_check_finds_a_heading_over_text(report, tmp_path):
    """The check itself: headings pulled over the text below them are reported."""
    m = measure_in_browser((report / "report.html").read_text(), tmp_path, extra_css="h3{margin-bottom:-1.2em}")
    assert any(a.startswith("(a) Did the attacks raise") and b == "yes" for a, b in m["overlaps"]), m["overlaps"]


def test_the_scenario_caveat_is_said_once_above_the_answers_and_kept_in_every_statement(report):
    """When even the oracle cannot raise exposure every statement starts with the caveat: the page says it once,
    before any answer, instead of nine times in the folded numbers only."""
    from advrec.report.findings import derive_findings
    from advrec.report.html import render_html

    results = _results(report)
    results["scenario"]["feasibility"] = {
        "measured": True, "k": 10, "feasible": False,
        "chosen": {"origin": "sandal", "target": "sneaker", "effect": -0.002, "p_adjusted": 0.9, "n_pairs": 9}}
    results["findings"] = derive_findings(results)
    html = render_html(results, {}, {}, None, 10)
    caveat = re.search(r'<p class="warn"><b>Caveat \(scenario\):</b> (.*?)</p>', html, re.S)
    assert caveat and caveat.group(1).startswith("On this catalog even a perfect visual disguise did not raise")
    assert caveat.start() < html.index('<section id="finding-o">')
    for f in results["findings"]:
        assert str(escape(f["statement"])) in html
    text = format_summary(results)
    assert text.index("CAVEAT (scenario): On this catalog") < text.index("(o) Control:")
