"""Category exposure of top-K lists (study-protocol section 5), vectorised over users.

Lists are (U,K') item-index tensors from :func:`services.recommender.scoring.topk` (training items
already removed; -1 = empty slot). ``item_category`` (I,) holds each item's category (the clean
classification of its image in the study).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from advrec_common.datasets.types import Interactions
from advrec_common.errors import InvalidInput
from services.recommender.pairs import PairIndex


def _cut(top_items: Tensor, item_category: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(categories of the first k slots (U,k) with -1 for empty slots, validity mask (U,k))."""
    if top_items.ndim != 2:
        raise InvalidInput(f"top_items must be (U,K'), got {tuple(top_items.shape)}")
    if int(k) < 1 or int(k) > top_items.shape[1]:
        raise InvalidInput(f"k must be in [1, {top_items.shape[1]}], got {k}")
    top = top_items[:, : int(k)].long()
    cat = item_category.to(top.device).long()
    if top.numel() and int(top.max()) >= cat.numel():
        raise InvalidInput(f"item index {int(top.max())} has no category (only {cat.numel()} items)")
    valid = top >= 0
    return torch.where(valid, cat[top.clamp(min=0)], torch.full_like(top, -1)), valid


def chr_at_k(
    top_items: Tensor,
    item_category: Tensor,
    category: int,
    k: int,
    form: Literal["normalized", "count"] = "count",
) -> tuple[float, Tensor]:
    """CHR@k of one category -> (mean over users, per-user values (U,)).

    "normalized": the docstring formula 1/(k|U|) sum_u #{category items in L_u^k} (in [0,1]);
    "count": what the study's code reports (divided by |U| only: mean number per list, Q4).
    """
    cats, _ = _cut(top_items, item_category, k)
    # float64: exact multiples of 1/k, so equal count changes give equal differences (replicate ties)
    per_user = (cats == int(category)).sum(1).double()
    if form == "normalized":
        per_user = per_user / int(k)
    elif form != "count":
        raise InvalidInput(f"form must be 'normalized' or 'count', got {form!r}")
    return (float(per_user.mean()) if per_user.numel() else 0.0), per_user


def chr_all_categories(
    top_items: Tensor, item_category: Tensor, n_categories: int, k: int,
    form: Literal["normalized", "count"] = "count",
) -> Tensor:
    """CHR@k of every category at once (C,) via one bincount."""
    cats, valid = _cut(top_items, item_category, k)
    counts = torch.bincount(cats[valid], minlength=int(n_categories))[: int(n_categories)].float()
    denom = max(top_items.shape[0], 1) * (int(k) if form == "normalized" else 1)
    return counts / denom


def ncdcg_at_k(
    top_items: Tensor,
    item_category: Tensor,
    category: int,
    k: int,
    exclude_train_from_ideal: Interactions | None = None,
    users: Tensor | None = None,
) -> tuple[float, Tensor]:
    """nCDCG@k of one category -> (mean, per-user (U,)).

    Gain 3 (= 2^(1+1) - 1) for a category item, discount 1/log2(pos + 1) (pos 1-based).
    IDCG over min(k, |I_c|) positions as in the study (Q5); with ``exclude_train_from_ideal``
    (the training interactions; rows of ``top_items`` belong to ``users``, default 0..U-1) the
    ideal list uses |I_c minus I+_u| instead. A user with an empty ideal list scores 0.
    """
    cats, _ = _cut(top_items, item_category, k)
    dev = cats.device
    k = int(k)
    discount = 1.0 / torch.log2(torch.arange(k, device=dev, dtype=torch.float64) + 2.0)
    dcg = 3.0 * ((cats == int(category)).double() * discount).sum(1)
    in_cat = item_category.to(dev).long() == int(category)
    n_cat = torch.full((cats.shape[0],), int(in_cat.sum()), device=dev)
    if exclude_train_from_ideal is not None:
        u = torch.arange(cats.shape[0], device=dev) if users is None else users.to(dev).long()
        rows, cols = PairIndex(exclude_train_from_ideal, dev).rows_cols(u)
        owned = torch.zeros(cats.shape[0], dtype=torch.long, device=dev)
        owned.index_add_(0, rows, in_cat[cols].long())
        n_cat = n_cat - owned
    ideal_cum = torch.cat([torch.zeros(1, device=dev, dtype=torch.float64), torch.cumsum(3.0 * discount, 0)])
    idcg = ideal_cum[n_cat.clamp(max=k)]
    per_user = torch.where(idcg > 0, dcg / idcg.clamp(min=1e-12), torch.zeros_like(dcg))
    return (float(per_user.mean()) if per_user.numel() else 0.0), per_user


def item_exposure(top_items: Tensor, items: Tensor, k: int, metric: Literal["chr", "chr_count", "ncdcg"],
                  item_category: Tensor | None = None, category: int | None = None) -> Tensor:
    """Each of ``items``' (N,) share of its category's exposure in the lists (U,K') -> (N,) float64.

    Summed over the category's items it gives the category's metric: ``chr`` (normalised CHR@k: the item's
    slots / (k|U|)), ``chr_count`` (slots / |U|), ``ncdcg`` (its gain 3/log2(pos+1) in each user's list
    divided by that user's IDCG over min(k, |I_c|) positions, over |U|; ``item_category`` and ``category``
    give |I_c|). In deployment, where each item's scores depend on its own features only, these are the
    units a category's change is tested over (the items moved, not the replicates)."""
    if top_items.ndim != 2:
        raise InvalidInput(f"top_items must be (U,K'), got {tuple(top_items.shape)}")
    k = int(k)
    if k < 1 or k > top_items.shape[1]:
        raise InvalidInput(f"k must be in [1, {top_items.shape[1]}], got {k}")
    top = top_items[:, :k].long().cpu()
    items = torch.as_tensor(items).long().cpu()
    n_users = max(int(top.shape[0]), 1)
    size = 1 + max(int(top.max()) if top.numel() else 0, int(items.max()) if items.numel() else 0)
    lookup = torch.full((size,), -1, dtype=torch.long)
    lookup[items] = torch.arange(items.numel())
    where = lookup[top.clamp(min=0)].masked_fill(top < 0, -1)  # (U,k): the item's position in ``items`` or -1
    hit = where >= 0
    if metric in ("chr", "chr_count"):
        counts = torch.bincount(where[hit], minlength=items.numel()).double()
        return counts / (n_users * (k if metric == "chr" else 1))
    if metric != "ncdcg":
        raise InvalidInput(f"metric must be chr, chr_count or ncdcg, got {metric!r}")
    if item_category is None or category is None:
        raise InvalidInput("ncdcg needs item_category and category (the ideal list's length)")
    discount = 1.0 / torch.log2(torch.arange(k, dtype=torch.float64) + 2.0)
    n_cat = int((item_category.cpu().long() == int(category)).sum())
    idcg = float((3.0 * discount[: min(k, n_cat)]).sum())
    if idcg <= 0:
        return torch.zeros(items.numel(), dtype=torch.float64)
    gains = (3.0 * discount)[None, :].expand_as(where)[hit] / idcg
    return torch.zeros(items.numel(), dtype=torch.float64).index_add_(0, where[hit], gains) / n_users


def rank_shift(top_before: Tensor, top_after: Tensor, items: Tensor) -> dict[str, float | int]:
    """Position change of the given (attacked) items between two top-K lists (U,K) of the same users.

    Positions are 1-based; an item missing from a list counts at position K+1. The shift is
    before - after (> 0 = moved up), taken over the (user, item) pairs where the item is in at
    least one of the two lists (pairs absent from both carry no information and are skipped).
    Returns {mean, median, n_pairs, entered, left} (entered/left: pairs that joined/left the lists).
    """
    if top_before.shape != top_after.shape or top_before.ndim != 2:
        raise InvalidInput(f"lists must have equal (U,K) shapes, got {tuple(top_before.shape)}, {tuple(top_after.shape)}")
    items = torch.as_tensor(items).long().flatten().unique()
    k = top_before.shape[1]
    size = 1 + max([0] + [int(t.max()) for t in (top_before, top_after, items) if t.numel()])
    lookup = torch.full((size,), -1, dtype=torch.long)
    lookup[items] = torch.arange(items.numel())

    def positions(top: Tensor) -> Tensor:
        pos = torch.full((top.shape[0], items.numel()), k + 1, dtype=torch.long)
        sel = lookup[top.clamp(min=0)].masked_fill(top < 0, -1)
        rows, slots = torch.nonzero(sel >= 0, as_tuple=True)
        pos[rows, sel[rows, slots]] = slots + 1
        return pos

    before, after = positions(top_before.cpu().long()), positions(top_after.cpu().long())
    seen = (before <= k) | (after <= k)
    shift = (before - after)[seen].float()
    return {
        "mean": float(shift.mean()) if shift.numel() else 0.0,
        "median": float(shift.quantile(0.5)) if shift.numel() else 0.0,
        "n_pairs": int(shift.numel()),
        "entered": int(((before > k) & (after <= k)).sum()),
        "left": int(((before <= k) & (after > k)).sum()),
    }
