"""Item promotion seen from the recommender: what a seller's image does to *their* items' scores and lists.

Two halves, both over a fitted model and the catalog's clean item side:

* **Objectives** a white-box attacker ascends (Liu & Larson's INSA: the insider back-propagates the
  item's score through the recommender): :func:`mean_score_objective` is the item's mean predicted score
  over a set of users; :func:`topk_objective` is a smooth surrogate of how many of those users hold the
  item in their top-K, ``mean_u sigmoid((s_ui - tau_ui) / T)`` with ``tau_ui`` the score the item must
  beat to enter user u's clean top-K (a mean-score gain need not reach anyone's list). Each maps the
  features the extractor gives the attacked images (raw units, as extracted) and their catalog rows to
  one value per image, differentiably, so an attack on the image model can ascend it.
* **Measurements** (:func:`item_standing`, :func:`promotion_metrics`): per attacked item, its mean score,
  the share of users whose score rose, its HR@K (the share of users who may be recommended it -- it is
  not among their training items -- and hold it in their top-K), its share of all top-K slots, and its
  median rank, before and after (re-scored with attacked features in deployment, or from the model
  retrained on them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from advrec_common.datasets.types import Interactions
from advrec_common.errors import InvalidInput
from services.recommender.items import ItemSide
from services.recommender.models.base import Recommender
from services.recommender.pairs import as_index
from services.recommender.scoring import score_blocks

# features (n,D) | None, spatial maps (n,D',h,w) | None, catalog rows (n,) -> objective (n,)
ItemObjective = Callable[[Tensor | None, Tensor | None, Tensor], Tensor]


def _scaled(model: Recommender, features: Tensor | None, spatial: Tensor | None) -> dict[str, Tensor]:
    """Attacked rows in the model's scaled units (the clean scale of ``fit``), as ``_prepare`` scales them."""
    out = {}
    if "features" in model.needs:
        if features is None:
            raise InvalidInput(f"{model.name} reads pooled features: the attack must give them")
        out["features"] = features.to(model.device) / model.feature_scale
    if "spatial" in model.needs:
        if spatial is None:
            raise InvalidInput(f"{model.name} reads feature maps: the attack must give them")
        out["spatial"] = spatial.to(model.device).flatten(2).transpose(1, 2) / model.spatial_scale
    return out


def _state_with_rows(model: Recommender, clean: dict[str, Tensor], rows: Tensor, replaced: dict[str, Tensor]) -> Any:
    """The model's item state with ``rows`` of the scaled clean item tensors replaced (out of place, so
    gradients reach the replacements)."""
    prepared = dict(clean)
    for name, value in replaced.items():
        prepared[name] = clean[name].index_put((rows,), value.to(clean[name].dtype))
    return model._item_state(prepared)


def _check_model(model: Recommender) -> None:
    if not model.needs & {"features", "spatial"}:
        raise InvalidInput(f"{model.name} does not read the extractor's features: an attack through the extractor "
                           "cannot reach it (item promotion needs vbpr, amr, deepstyle or acf)")


def _clean_prepared(model: Recommender, clean: ItemSide) -> dict[str, Tensor]:
    with torch.no_grad():
        return {k: v.detach() for k, v in model._prepare(clean).items()}


def mean_score_objective(model: Recommender, clean: ItemSide, users: Tensor) -> ItemObjective:
    """INSA's objective: the item's mean predicted score over ``users`` (U,), from its attacked features."""
    _check_model(model)
    model.eval()
    prepared = _clean_prepared(model, clean)
    users = users.to(model.device)

    def objective(features: Tensor | None, spatial: Tensor | None, rows: Tensor) -> Tensor:
        rows = rows.to(model.device)
        state = _state_with_rows(model, prepared, rows, _scaled(model, features, spatial))
        return model.score_items(users, state, rows).mean(0)

    return objective


@dataclass(frozen=True)
class EntryBar:
    """What an item must score to enter each user's clean top-K: ``tau`` (U,N) and ``eligible`` (U,N) (the item
    is not among the user's training items), for the items ``rows`` (N,); ``temperature`` in score units."""

    rows: Tensor
    tau: Tensor
    eligible: Tensor
    temperature: float


def entry_bar(model: Recommender, clean: ItemSide, train: Interactions, users: Tensor, rows: Tensor, k: int,
              temperature: float) -> EntryBar:
    """Per user and item, the clean K-th best score among the user's candidates other than the item (the
    (K+1)-th when the item already holds one of the K slots); the temperature is ``temperature`` times the
    mean over users of their candidates' score spread (std), so it scales with the model."""
    if k < 1 or k >= model.n_items:
        raise InvalidInput(f"k must be in [1, {model.n_items - 1}], got {k}")
    if temperature <= 0:
        raise InvalidInput(f"temperature must be > 0, got {temperature}")
    exclude = as_index(train, model.device)
    rows = rows.to(model.device)
    taus, elig, spreads = [], [], []
    with torch.no_grad():
        for s, e, scores in score_blocks(model, users.to(model.device), clean):
            block = users[s:e].to(model.device)
            scores = scores.clone()
            exclude.mask_(scores, block)
            finite = torch.isfinite(scores)
            n = finite.sum(1).clamp(min=2)
            mean = torch.where(finite, scores, 0).sum(1) / n
            spreads.append((torch.where(finite, scores - mean[:, None], 0).pow(2).sum(1) / (n - 1)).sqrt())
            top = torch.topk(scores, k + 1, dim=1).values  # (B, K+1)
            own = scores[:, rows]  # (B, N); -inf where the item is a training item
            inside = own >= top[:, k - 1 : k]
            taus.append(torch.where(inside, top[:, k : k + 1], top[:, k - 1 : k]))
            elig.append(torch.isfinite(own))
    spread = float(torch.cat(spreads).mean()) if spreads else 1.0
    return EntryBar(rows, torch.cat(taus), torch.cat(elig), temperature * max(spread, 1e-12))


def topk_objective(model: Recommender, clean: ItemSide, users: Tensor, bar: EntryBar) -> ItemObjective:
    """The exposure-aware objective: mean over eligible ``users`` of sigmoid((s_ui - tau_ui) / T), a smooth
    count of the users whose top-K the item enters (``bar`` from :func:`entry_bar` for the same users)."""
    _check_model(model)
    model.eval()
    prepared = _clean_prepared(model, clean)
    users = users.to(model.device)
    position = {int(r): j for j, r in enumerate(bar.rows.tolist())}

    def objective(features: Tensor | None, spatial: Tensor | None, rows: Tensor) -> Tensor:
        rows = rows.to(model.device)
        cols = torch.as_tensor([position[int(r)] for r in rows.tolist()], device=model.device)
        state = _state_with_rows(model, prepared, rows, _scaled(model, features, spatial))
        s = model.score_items(users, state, rows)  # (U, n)
        tau, ok = bar.tau[:, cols].to(s.device), bar.eligible[:, cols].to(s.device)
        soft = torch.sigmoid((s - torch.where(ok, tau, s)) / bar.temperature) * ok
        return soft.sum(0) / ok.sum(0).clamp(min=1)

    return objective


@dataclass
class ItemStanding:
    """Where items stand for every user: ``scores`` (U,N), ``ranks`` (U,N) 1-based among the user's candidates
    (0 where the item is one of the user's training items), and ``kth`` (U,) the user's K-th best candidate
    score (what an item must beat to enter the top-K), with ``k``."""

    scores: np.ndarray
    ranks: np.ndarray
    kth: np.ndarray
    k: int


def item_standing(model: Recommender, train: Interactions, rows: Sequence[int] | np.ndarray, k: int,
                  items: ItemSide | None = None) -> ItemStanding:
    """Scores and ranks of the catalog rows ``rows`` (N,) for every user and each user's K-th best candidate
    score, in one scoring pass over user blocks (memory (block, I)); ``items`` re-scores with a replaced item
    side (deployment)."""
    if not 1 <= int(k) <= model.n_items:
        raise InvalidInput(f"k must be in [1, {model.n_items}], got {k}")
    idx = torch.as_tensor(np.asarray(rows, dtype=np.int64), device=model.device)
    users = torch.arange(model.n_users, device=model.device)
    exclude = as_index(train, model.device)
    scores, ranks, kth = [], [], []
    with torch.no_grad():
        for s, e, block_scores in score_blocks(model, users, items):
            own = block_scores[:, idx].clone()  # (B, N)
            block_scores = block_scores.clone()
            exclude.mask_(block_scores, users[s:e])
            masked_own = block_scores[:, idx]
            rank = torch.stack([(block_scores > masked_own[:, j : j + 1]).sum(1) + 1 for j in range(idx.numel())], 1) \
                if idx.numel() else torch.zeros(e - s, 0, dtype=torch.long)
            ranks.append(torch.where(torch.isfinite(masked_own), rank, 0).cpu())
            scores.append(own.float().cpu())
            kth.append(torch.topk(block_scores, int(k), dim=1).values[:, -1].float().cpu())
    return ItemStanding(torch.cat(scores).numpy().astype(np.float64), torch.cat(ranks).numpy().astype(np.int64),
                        torch.cat(kth).numpy().astype(np.float64), int(k))


def promotion_metrics(before: ItemStanding, after: ItemStanding, ks: Sequence[int]) -> dict[str, Any]:
    """Per item (lists of N values): mean score before/after and its shift (the prediction shift), the share
    of users whose score rose, the mean score it lacked to reach the K-th slot of the users whose top-K it was
    not in (``gap_before``, at ``before.k``), the median rank among eligible users before/after, and per K its
    HR@K (share of eligible users holding it in their top-K) and its share of all top-K slots before/after."""
    if before.scores.shape != after.scores.shape:
        raise InvalidInput(f"before and after cover other users or items: {before.scores.shape} vs {after.scores.shape}")
    eligible = before.ranks > 0
    n_users = before.scores.shape[0]
    n_eligible = eligible.sum(0)
    outside = eligible & (before.ranks > before.k)
    gap = np.where(outside, np.maximum(before.kth[:, None] - before.scores, 0.0), 0.0).sum(0)
    out: dict[str, Any] = {
        "score_before": before.scores.mean(0).tolist(), "score_after": after.scores.mean(0).tolist(),
        # the mean score an item lacked, over the users whose top-K it was not in, to reach their K-th slot
        "gap_k": before.k, "gap_before": (gap / np.maximum(outside.sum(0), 1)).tolist(),
        "prediction_shift": (after.scores - before.scores).mean(0).tolist(),
        "share_rose": (after.scores > before.scores).mean(0).tolist(),
        "n_eligible": n_eligible.tolist(),
        "median_rank_before": _masked_median(before.ranks, eligible),
        "median_rank_after": _masked_median(after.ranks, eligible),
        "per_k": [],
    }
    for k in sorted(set(int(k) for k in ks)):
        hit0 = eligible & (before.ranks <= k)
        hit1 = eligible & (after.ranks <= k)
        out["per_k"].append({
            "k": k,
            "hr_before": (hit0.sum(0) / np.maximum(n_eligible, 1)).tolist(),
            "hr_after": (hit1.sum(0) / np.maximum(n_eligible, 1)).tolist(),
            "slots_before": (hit0.sum(0) / (n_users * k)).tolist(),
            "slots_after": (hit1.sum(0) / (n_users * k)).tolist(),
        })
    return out


def _masked_median(ranks: np.ndarray, mask: np.ndarray) -> list[float | None]:
    return [float(np.median(ranks[mask[:, j], j])) if mask[:, j].any() else None for j in range(ranks.shape[1])]


def least_exposed(top: np.ndarray, candidates: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` items of ``candidates`` that hold the fewest slots of the clean top-K lists ``top`` (R,U,K) (every
    replicate's lists; ties in catalog order) -- the items a seller most wants to promote."""
    if n < 1:
        raise InvalidInput(f"n must be >= 1, got {n}")
    candidates = np.asarray(candidates, dtype=np.int64)
    if candidates.size == 0:
        raise InvalidInput("no candidate items to choose from")
    flat = np.asarray(top).reshape(-1)
    counts = np.bincount(flat[flat >= 0], minlength=int(max(candidates.max(), flat.max(initial=0))) + 1)
    order = np.lexsort((candidates, counts[candidates]))
    return np.sort(candidates[order[:n]])


def most_exposed(top: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` items that hold the most slots of the clean top-K lists ``top`` (R,U,K) (ties in catalog order):
    the popular items whose look an expert attacker (EXPA) imitates."""
    if n < 1:
        raise InvalidInput(f"n must be >= 1, got {n}")
    flat = np.asarray(top).reshape(-1)
    counts = np.bincount(flat[flat >= 0])
    order = np.lexsort((np.arange(counts.size), -counts))
    return np.sort(order[: min(n, int((counts > 0).sum()))])
