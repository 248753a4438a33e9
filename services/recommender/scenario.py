"""Pick the attack scenario from a clean run: a low-exposure origin and a high-exposure target category.

The study chose origin/target by hand from per-class CHR over all users (e.g. sandal -> running
shoe on Amazon Men). Here: rank categories by CHR@K (count form); the candidates are the few least
exposed categories with at least ``min_items`` items (an attack needs items to push) and the few most
exposed categories (:func:`candidate_pairs`); among them the pipeline measures the oracle (a perfect
visual disguise) in deployment and keeps, among the pairs where its rise is real, the one where it raises the
origin's exposure most (:func:`choose_pair`), so the scenario asks a question a rise can answer. Without that measurement
(no recommender reads the extractor's features) the origin is the least exposed candidate and the
target the most exposed one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from advrec_common.errors import InvalidInput
from services.recommender.metrics.category import chr_all_categories


def propose_scenario(
    top_items: Tensor, item_category: Tensor, category_names: Sequence[str], k: int, min_items: int = 5
) -> dict[str, Any]:
    """-> {"origin": row, "target": row, "table": rows sorted by CHR desc}; row = {id, name, chr, n_items}."""
    n_cat = len(category_names)
    cats = torch.as_tensor(item_category).long()
    if n_cat == 0 or (cats.numel() and int(cats.max()) >= n_cat):
        raise InvalidInput(f"item categories must index category_names ({n_cat} names)")
    chr_ = chr_all_categories(top_items, cats, n_cat, k, form="count")
    n_items = torch.bincount(cats, minlength=n_cat)
    order = sorted(range(n_cat), key=lambda c: (-float(chr_[c]), c))
    table = [{"id": c, "name": category_names[c], "chr": float(chr_[c]), "n_items": int(n_items[c])} for c in order]
    eligible = [row for row in table if row["n_items"] >= min_items]
    if not eligible:
        raise InvalidInput(f"no category has at least {min_items} items")
    origin = min(eligible, key=lambda r: (r["chr"], -r["n_items"], r["id"]))
    targets = [row for row in table if row["id"] != origin["id"] and row["n_items"] > 0]
    if not targets:
        raise InvalidInput("need a second category with items to serve as target")
    return {"origin": origin, "target": targets[0], "table": table, "k": int(k)}


def scenario_warnings(table: Sequence[dict[str, Any]], origin: str, target: str, k: int, *,
                      automatic_origin: bool, min_items: int, automatic_target: bool = True) -> list[str]:
    """Why a scenario may not ask the study's question (a less exposed category pushed toward a more
    exposed one), from the clean ranking ``table`` (rows {name, chr, n_items}); [] when nothing is odd."""
    rows = {r["name"]: r for r in table}
    o, t = rows.get(origin), rows.get(target)
    if o is None or t is None:
        return []
    n_total = sum(int(r["n_items"]) for r in table)
    fix = ("label the items (dataset.categories) or name scenario.origin and scenario.target"
           if automatic_origin or automatic_target else
           "the clean ranking (scenario.csv) shows which categories are less exposed than the target")
    out = []
    eligible = [r["name"] for r in table if r["n_items"] >= min_items]
    if automatic_origin and eligible == [origin]:
        out.append(f"only '{origin}' has at least {min_items} items (scenario.min_items), so it is the automatic "
                   f"origin as the only candidate, not as the least exposed category; {fix}")
    if float(o["chr"]) >= float(t["chr"]):
        out.append(f"the origin '{origin}' is already at least as exposed as the target '{target}' (clean CHR@{k}, "
                   f"count form: {float(o['chr']):.3g} vs {float(t['chr']):.3g}): the study pushes a less exposed "
                   f"category toward a more exposed one; {fix}")
    if n_total and o["n_items"] > n_total / 2:
        out.append(f"the origin '{origin}' holds {o['n_items']} of the catalog's {n_total} items "
                   f"({o['n_items'] / n_total:.0%}): its exposure has little room to rise; {fix}")
    return out


def candidate_pairs(table: Sequence[dict[str, Any]], *, origin: str | None, target: str | None, min_items: int,
                    n: int) -> list[tuple[str, str]]:
    """(origin, target) names to measure: the ``n`` least exposed categories with at least ``min_items`` items
    (or the given origin) x the ``n`` most exposed categories with items (or the given target), keeping the
    pairs whose target is more exposed than the origin (the study's question) unless both are given; rows of
    ``table`` are {name, chr, n_items, id}. With no such pair, the least exposed origin and the most exposed
    other target."""
    rows = sorted(table, key=lambda r: (-float(r["chr"]), r["id"]))
    chr_of = {r["name"]: float(r["chr"]) for r in rows}
    origins = [origin] if origin is not None else [
        r["name"] for r in sorted((r for r in rows if r["n_items"] >= min_items and r["name"] != target),
                                  key=lambda r: (float(r["chr"]), -r["n_items"], r["id"]))[:n]]
    targets = [target] if target is not None else [
        r["name"] for r in rows if r["n_items"] > 0 and r["name"] != origin][:n]
    pairs = [(o, t) for o in origins for t in targets if o != t]
    if origin is not None and target is not None:
        return pairs
    # the study's question: a less exposed category pushed toward a more exposed one
    upward = [(o, t) for o, t in pairs if chr_of.get(t, 0.0) > chr_of.get(o, 0.0)]
    return upward or pairs[:1]


def choose_pair(measured: Sequence[dict[str, Any]], alpha: float = 0.05) -> dict[str, Any]:
    """The pair whose oracle raised the origin's exposure most among the pairs where that rise is real, and
    whether one is.

    ``measured``: rows {origin, target, effect, p_value, ...} (the oracle's effect on the origin's CHR in
    deployment). A pair's rise is real when its effect is positive and its p-value, Bonferroni-adjusted for the
    number of pairs tried (the choice looks at all of them), is at most ``alpha``. Among those pairs the largest
    rise is chosen (``feasible`` True); when there is none, the largest rise of all (``feasible`` False).
    ``p_adjusted`` is the chosen pair's adjusted p (None when it could not be tested)."""
    if not measured:
        raise InvalidInput("no candidate pair was measured")
    n = len(measured)

    def adjusted(row: dict[str, Any]) -> float | None:
        p = row.get("p_value")
        return None if p is None else min(1.0, float(p) * n)

    real = [r for r in measured if float(r["effect"]) > 0 and adjusted(r) is not None and adjusted(r) <= alpha]
    pool = real or list(measured)
    best = max(pool, key=lambda r: (float(r["effect"]), -measured.index(r)))
    return {**best, "p_adjusted": adjusted(best), "n_pairs": n, "feasible": bool(real)}
