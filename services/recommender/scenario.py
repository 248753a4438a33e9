"""Pick the attack scenario from a clean run: a low-exposure origin and a high-exposure target category.

The study chose origin/target by hand from per-class CHR over all users (e.g. sandal -> running
shoe on Amazon Men). Here: rank categories by CHR@K (count form); origin = the least exposed
category with at least ``min_items`` items (an attack needs items to push); target = the most
exposed category other than the origin.
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
