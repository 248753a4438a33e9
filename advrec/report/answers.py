"""The findings read answer first: what each answer means for the shop (the colour of its badge), a one-line
answer per question, and a small grid per question (its answer per extractor x setting, with each cell's
direction), for the HTML page and the text summary.

Nothing here decides a verdict: answers come from :mod:`.findings` / :mod:`.promotion`, cell directions from
their :func:`~advrec.report.findings.direction` and :func:`~advrec.report.promotion.gained`.

**Tones.** A badge's colour says whether the answer is good news for the shop, never yes/no: an attack that
raised exposure (a: yes) is bad news, a defense that lowered the success rate (b: yes) good news; the oracle
(o) is a control and the correlation (d) an explanation, so their answers are neither (``info``).
"""

from __future__ import annotations

from typing import Any

from advrec.report.collect import attack_label, evaluations_of, finite, per_k, signed
from advrec.report.findings import QUESTIONS, direction, effect_text, infeasible_caveat
from advrec.report.promotion import gained

Finding = dict[str, Any]

# finding id -> answer -> tone; an answer missing here is "info"
TONES: dict[str, dict[str, str]] = {
    "o": {"yes": "info", "partly": "info", "no": "info", "n/a": "untested"},
    "a": {"yes": "bad", "partly": "mixed", "no": "good", "n/a": "untested"},
    "b": {"yes": "good", "no": "bad", "n/a": "untested"},
    "c": {"yes": "good", "partly": "mixed", "no": "bad", "n/a": "untested"},
    "d": {"yes": "info", "partly": "info", "no": "info", "n/a": "untested"},
    "p": {"yes": "bad", "partly": "mixed", "no": "good", "n/a": "untested"},
    "l": {"yes": "good", "partly": "mixed", "no": "bad", "n/a": "untested"},
}
TONE_LEGEND = {
    "good": "good news for the shop",
    "bad": "bad news for the shop",
    "mixed": "both: good news in some cells, bad in others",
    "info": "a control or an explanation: neither good nor bad news",
    "untested": "not tested (one replicate, too few cells) or nothing to test",
}
# why each question's answers take their tones (the page's legend, per question)
TONE_REASONS = {
    "o": "the oracle is a control: its answer says what this run can detect, not what an attacker did",
    "a": "an attack that raised the origin's exposure is bad news",
    "b": "a defense that lowered the attack's success rate is good news",
    "c": "a defense that prevented the rise is good news",
    "d": "an explanation of the mechanism: neither good nor bad news",
    "p": "a seller who can raise their items' exposure with an image is bad news",
    "l": "a rung that protects against the adaptive attacker is good news",
}
SYMBOLS = {"rose": "▲", "fell": "▼", "like placebo": "≈", "unchanged": "·", "untested": "?"}
SYMBOL_LEGEND = ("▲ rose, ▼ fell (significant and beyond its placebo), ≈ moved no more than its placebo, "
                 "· unchanged, ? untested")
# the tone of one cell's direction, per finding id (None: no colour)
_CELL_TONES = {"o": {"rose": "info", "fell": "info"}, "a": {"rose": "bad", "fell": "good"}}
_WORDS = {"yes": "Yes", "partly": "Partly", "no": "No", "n/a": "N/a"}
_UNITS = {"o": "extractors", "a": "extractor x attack settings", "b": "defense x attack settings",
          "c": "defense x attack settings", "d": "modes", "p": "extractor x mode cases", "l": "ladders"}
_MAX_NAMES = 4  # a lead line names the findings of an answer up to this many, else counts them


def tone(fid: str, answer: str) -> str:
    """'good' / 'bad' / 'mixed' / 'info' / 'untested': what ``answer`` to question ``fid`` means for the shop."""
    return TONES.get(fid, {}).get(answer, "info")


def label(results: dict[str, Any], f: Finding) -> str:
    """A finding's short name in a lead line: its extractor, attack setting or mode."""
    fid = f["id"]
    if fid == "o":
        return f["extractor"]
    if fid in ("a", "b", "c"):
        return f"{attack_label(f['method'], f['eps'])} under {f['extractor']}"
    if fid == "d":
        return f["mode"]
    if fid == "l":
        return "the ladder"
    if fid == "p":
        source = _promotion_source(results, f)
        return f"{f['extractor']}{f' (from {source})' if source else ''} in {f['mode']}"
    return f.get("question", fid)


def lead(results: dict[str, Any], fid: str, group: list[Finding]) -> list[dict[str, Any]]:
    """The one-line answer to a question as segments, one per answer given, in yes/partly/no/n/a order:
    ``{answer, word, tone, n, of, names}`` (names empty when more than a handful)."""
    out = []
    for answer in ("yes", "partly", "no", "n/a"):
        names = [label(results, f) for f in group if f["answer"] == answer]
        if names:
            out.append({"answer": answer, "word": _WORDS[answer], "tone": tone(fid, answer), "n": len(names),
                        "of": len(group), "names": names if len(names) <= _MAX_NAMES else []})
    return out


def segment_text(fid: str, seg: dict[str, Any], first: bool = True) -> str:
    """What follows an answer's word or badge: '2 of 9 extractor x attack settings (PGD eps 8 under standard, ...)';
    the unit only in the first segment; just the names when the question has one finding."""
    names = ", ".join(seg["names"])
    if seg["of"] == 1:
        return f"({names})" if names else ""
    count = (("both" if seg["of"] == 2 else f"all {seg['of']}") if seg["n"] == seg["of"]
             else f"{seg['n']} of {seg['of']}")
    if first:
        count += f" {_UNITS.get(fid, 'findings')}"
    return f"{count} ({names})" if names else count


def lead_text(fid: str, segments: list[dict[str, Any]]) -> str:
    """The one-line answer in words: 'Yes for 2 of 9 ... (...); no for 7 of 9.'"""
    parts = []
    for i, seg in enumerate(segments):
        word = seg["word"] if i == 0 else seg["word"].lower()
        rest = segment_text(fid, seg, first=i == 0)
        parts.append(f"{word} for {rest}" if seg["of"] > 1 else f"{word} {rest}".strip())
    return "; ".join(parts) + "."


def _cell(text: str, cell_tone: str | None = None, title: str = "", badge: bool = False,
          label: bool = False) -> dict[str, Any]:
    return {"text": text, "tone": cell_tone, "title": title, "badge": badge, "label": label}


def _label(text: str) -> dict[str, Any]:
    """A row's name (extractor, attack, mode): left-aligned."""
    return _cell(text, label=True)


def _answer_cell(f: Finding) -> dict[str, Any]:
    return _cell(f["answer"], tone(f["id"], f["answer"]), TONE_LEGEND[tone(f["id"], f["answer"])], badge=True)


def _chr(e: dict[str, Any] | None, k: int) -> dict[str, Any] | None:
    return ((per_k(e, k) if e else None) or {}).get("chr")


def _effect_cell(fid: str, m: dict[str, Any] | None) -> dict[str, Any]:
    """One recommender x mode cell: its direction's symbol and its effect (2 significant digits)."""
    d = direction(m)
    eff = finite((m or {}).get("effect"))
    text = SYMBOLS[d] + ("" if eff is None else f" {signed(eff, 2)}")
    return _cell(text, _CELL_TONES.get(fid, {}).get(d), f"{d}: {effect_text(m)}")


def _rec_mode_columns(results: dict[str, Any]) -> list[tuple[str, str]]:
    recs = [r["name"] for r in results["spec"]["recommenders"]]
    return [(mode, rec) for mode in results["spec"]["modes"] for rec in recs]


def _rec_mode_header(results: dict[str, Any], lead_columns: list[str]) -> list[list[dict[str, Any]]]:
    """Two header rows: the lead columns (spanning both), then each mode over its recommenders."""
    recs = [r["name"] for r in results["spec"]["recommenders"]]
    modes = results["spec"]["modes"]
    return [[*(_th(c, rowspan=2) for c in lead_columns), *(_th(m, colspan=len(recs)) for m in modes)],
            [_th(r) for _ in modes for r in recs]]


def _th(text: str, colspan: int = 1, rowspan: int = 1) -> dict[str, Any]:
    return {"text": text, "colspan": colspan, "rowspan": rowspan}


def _cells_row(results: dict[str, Any], fid: str, evs: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    by = {(e["mode"], e["recommender"]): e for e in evs}
    return [_effect_cell(fid, _chr(by.get(c), k)) if c in by else _cell("–", None, "not evaluated (a pixel "
            "recommender has no oracle: it sees no features)" if fid == "o" else "not evaluated")
            for c in _rec_mode_columns(results)]


def grid(results: dict[str, Any], fid: str, group: list[Finding]) -> dict[str, Any] | None:
    """The question's small table: ``{header: [[{text, colspan, rowspan}]], rows: [[cell]], note}``; a cell is
    ``{text, tone, title, badge}`` (the answer's badge, or a recommender x mode cell's direction and effect)."""
    if not group:
        return None
    k = group[0].get("k")
    if fid == "o":
        rows = [[_label(f["extractor"]), _answer_cell(f),
                 *_cells_row(results, fid, evaluations_of(results, "oracle", f["extractor"]), k)] for f in group]
        return {"header": _rec_mode_header(results, ["extractor", "answer"]), "rows": rows,
                "note": f"cells: the oracle's effect on CHR@{k}; {SYMBOL_LEGEND}"}
    if fid == "a":
        rows = [[_label(f["extractor"]), _label(attack_label(f["method"], f["eps"])), _answer_cell(f),
                 *_cells_row(results, fid, evaluations_of(results, "attack", f["extractor"], f["method"], f["eps"]),
                             k)] for f in group]
        return {"header": _rec_mode_header(results, ["extractor", "attack", "answer"]), "rows": rows,
                "note": f"cells: the attack's effect on CHR@{k}; {SYMBOL_LEGEND}"}
    if fid == "b":
        return _grid_b(group)
    if fid == "c":
        return _grid_c(results, group, k)
    if fid == "d":
        return _grid_d(group)
    if fid == "p":
        return _grid_p(results, group)
    if fid == "l":
        return _grid_l(results)
    return None


def _grid_b(group: list[Finding]) -> dict[str, Any]:
    def sr(x: Any) -> str:
        v = finite(x)
        return "n/a" if v is None else f"{v:.0f}%"

    rows = [[_label(f["extractor"]), _label(f["baseline"]), _label(attack_label(f["method"], f["eps"])), _answer_cell(f),
             _cell(f"{sr(f.get('sr_baseline'))} -> {sr(f.get('sr'))}"),
             _cell(f"{f.get('base_only')} / {f.get('defense_only')}" if f.get("n_paired") else "n/a"),
             _cell(_p(f.get("p_adjusted")))] for f in group]
    header = [[_th(c) for c in ("defense", "baseline", "attack", "answer", "SR baseline -> defense",
                                "fooled only baseline / only defense", "adj. p (McNemar)")]]
    return {"header": header, "rows": rows, "note": "SR over the images eligible under each extractor; the test pairs "
            "the images eligible under both"}


def _grid_c(results: dict[str, Any], group: list[Finding], k: int) -> dict[str, Any]:
    rows = []
    for f in group:
        base_evs = evaluations_of(results, "attack", f["baseline"], f["method"], f["eps"])
        def_evs = {(e["mode"], e["recommender"]): e
                   for e in evaluations_of(results, "attack", f["extractor"], f["method"], f["eps"])}
        cells = []
        for col in _rec_mode_columns(results):
            base = next((e for e in base_evs if (e["mode"], e["recommender"]) == col), None)
            if base is None:
                cells.append(_cell(""))
            elif direction(_chr(base, k)) != "rose":
                cells.append(_cell("–", None, f"nothing to prevent: under {f['baseline']} {direction(_chr(base, k))}"))
            else:
                m = _chr(def_evs.get(col), k)
                d = direction(m)
                eff = finite((m or {}).get("effect"))
                cells.append(_cell(SYMBOLS[d] + ("" if eff is None else f" {signed(eff, 2)}"),
                                   "bad" if d == "rose" else "good",
                                   f"{f['baseline']} rose ({effect_text(_chr(base, k))}); {f['extractor']} {d}: "
                                   f"{effect_text(m)}"))
        rows.append([_label(f["extractor"]), _label(attack_label(f["method"], f["eps"])), _answer_cell(f), *cells])
    return {"header": _rec_mode_header(results, ["defense", "attack", "answer"]), "rows": rows,
            "note": f"cells where the baseline's CHR@{k} rose: the defense's effect ({SYMBOL_LEGEND}); "
                    "– where the baseline did not rise (nothing to prevent)"}


def _p(x: Any) -> str:
    v = finite(x)
    return "n/a" if v is None else f"{v:.2g}"


def _grid_d(group: list[Finding]) -> dict[str, Any]:
    def rho(x: Any) -> str:
        v = finite(x)
        return "n/a" if v is None else f"{v:+.2f}"

    rows = [[_label(f["mode"]), _answer_cell(f), _cell(rho(f.get("rho_feature_mse"))), _cell(rho(f.get("rho_sr"))),
             _cell(str(f.get("n")))] for f in group]
    header = [[_th(c) for c in ("mode", "answer", "rho with feature MSE", "rho with SR", "attack cells")]]
    return {"header": header, "rows": rows, "note": "Spearman's rho of the mean CHR effect over distinct attack cells"}


def _promotion_source(results: dict[str, Any], f: Finding) -> str | None:
    if not f.get("transfer"):
        return None
    promo = results.get("promotion") or {}
    return next((e["source"] for e in promo.get("evaluations", [])
                 if e["extractor"] == f["extractor"] and e["mode"] == f["mode"] and e.get("source")), None)


def _grid_p(results: dict[str, Any], group: list[Finding]) -> dict[str, Any]:
    """Rows: extractor (white-box, then each transfer); columns: modes; a cell: the answer and the counts."""
    modes = list(dict.fromkeys(f["mode"] for f in group))
    keys = list(dict.fromkeys((f["extractor"], bool(f.get("transfer"))) for f in group))
    rows = []
    for ext, transfer in keys:
        source = next((_promotion_source(results, f) for f in group if f["extractor"] == ext and f.get("transfer")),
                      None) if transfer else None
        row = [_label(ext), _label(f"transfer from {source}" if transfer else "white-box")]
        for mode in modes:
            f = next((f for f in group if (f["extractor"], bool(f.get("transfer")), f["mode"]) == (ext, transfer, mode)),
                     None)
            if f is None:
                row += [_cell(""), _cell("")]
                continue
            row += [_answer_cell(f), _cell(f"exposure {f.get('exposure_rose')}, score {f.get('score_rose')} of "
                                           f"{f.get('n')}", None, _promotion_cells_title(results, f))]
        rows.append(row)
    header = [[_th("extractor", rowspan=2), _th("images", rowspan=2), *(_th(m, colspan=2) for m in modes)],
              [_th(c) for _ in modes for c in ("answer", "rose beyond placebo")]]
    return {"header": header, "rows": rows, "note": "rose beyond placebo: in how many attack cells the promoted items' "
            "exposure (share of top-K slots) and score rose significantly and beyond the placebo's change"}


# a rung's state (ladder.py's _holds) -> (word, tone)
_RUNG_STATES = {"holds": ("protects", "good"), "collapses": ("fails", "bad"), "inconclusive": ("inconclusive", "mixed"),
                "untested": ("untested", "untested")}


def _grid_l(results: dict[str, Any]) -> dict[str, Any] | None:
    """Rows: the ladder's rungs in its order; columns: the verdict against the adaptive attacker, the threat's
    change under each attacker, the clean cost in HR@10 points."""
    lad = results.get("ladder") or {}
    if not lad.get("rows"):
        return None

    def change(m: dict[str, Any] | None) -> dict[str, Any]:
        if not m or m.get("effect") is None:
            return _cell("–", None, "not evaluated")
        d = m.get("verdict", "untested")
        return _cell(f"{SYMBOLS.get(d, '?')} {signed(m['effect'], 2)}", "bad" if d == "rose" else None,
                     f"{d}: {m['effect']:+.3g} [{m.get('ci_low')}, {m.get('ci_high')}]")

    rows = []
    for r in lad["rows"]:
        word, state_tone = _RUNG_STATES.get(r.get("holds", "untested"), ("untested", "untested"))
        cost = finite(r["cost_points"].get("hr@10"))
        rows.append([_label(r["rung"]), _label(r["what"]), _cell(word, state_tone, TONE_LEGEND[state_tone], badge=True),
                     change(r.get("adaptive")), change(r.get("non_adaptive")),
                     _cell("n/a" if cost is None else f"{cost:+.2g}")])
    header = [[_th(c) for c in ("rung", "what", "vs adaptive attacker", "threat's change, adaptive",
                                "threat's change, non-adaptive", "HR@10 cost (points)")]]
    threat = lad.get("threat")
    note = (f"the threat: {threat['label']} (under the undefended {lad['baseline']} extractor {threat['effect']:+.3g}); "
            if threat else "no threat: nothing rose under the undefended extractor; ")
    return {"header": header, "rows": rows, "note": note + SYMBOL_LEGEND}


def _promotion_cells_title(results: dict[str, Any], f: Finding) -> str:
    promo = results.get("promotion") or {}
    evs = [e for e in promo.get("evaluations", []) if e["control"] == "attack" and e["extractor"] == f["extractor"]
           and e["mode"] == f["mode"] and bool(e.get("source")) == bool(f.get("transfer")) and e.get("tests")]
    return "; ".join(f"{e['method']} eps {e['eps']:g} on {e['recommender']}: score {gained(e, 'score')}, exposure "
                     f"{gained(e, 'exposure')}" for e in evs)


def overview(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per question with findings, in the study's order: ``{id, question, reason, lead, lead_text, grid,
    findings}``."""
    out = []
    for fid, question in QUESTIONS.items():
        group = [f for f in results.get("findings") or [] if f["id"] == fid]
        if not group:
            continue
        segments = lead(results, fid, group)
        out.append({"id": fid, "question": question, "reason": TONE_REASONS.get(fid, ""), "lead": segments,
                    "lead_text": lead_text(fid, segments), "grid": grid(results, fid, group), "findings": group})
    return out


def caveat(results: dict[str, Any]) -> str | None:
    """The scenario's caveat that starts every statement, to show once above the findings (None when none)."""
    if not any(f.get("infeasible_scenario") for f in results.get("findings") or []):
        return None
    return infeasible_caveat(results)
