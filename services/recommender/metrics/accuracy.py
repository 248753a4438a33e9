"""Leave-one-out full-ranking accuracy (the study's ``utils/Evaluator.py``), vectorised over users.

rank r (0-based) of a user's test item = #(items that are neither training items of the user nor
the test item, with score >= the test score) -- ties count against the test item.
HR@k = [r < k]; nDCG@k = log 2 / log(r + 2) if r < k else 0; AUC = 1 - r / #candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from advrec_common.datasets.types import Interactions
from advrec_common.errors import InvalidInput
from services.recommender.pairs import PairIndex, last_per_user

if TYPE_CHECKING:
    from services.recommender.items import ItemSide
    from services.recommender.models.base import Recommender


def _index(exclude: Interactions | PairIndex, device: torch.device) -> PairIndex:
    return exclude if isinstance(exclude, PairIndex) else PairIndex(exclude, device)


def leave_one_out_ranks(
    scores: Tensor, test_items: Tensor, exclude: Interactions | PairIndex, users: Tensor | None = None
) -> Tensor:
    """0-based rank (U,) of each test item among the user's non-training items.

    scores: (U,I) for ``users`` (default 0..U-1); test_items: (U,) item indices.
    """
    if scores.ndim != 2 or test_items.shape != (scores.shape[0],):
        raise InvalidInput(f"scores must be (U,I) and test_items (U,), got {tuple(scores.shape)}, {tuple(test_items.shape)}")
    dev = scores.device
    test = test_items.to(dev).long()
    if test.numel() and (int(test.min()) < 0 or int(test.max()) >= scores.shape[1]):
        raise InvalidInput("test item index out of range")
    users = torch.arange(scores.shape[0], device=dev) if users is None else users.to(dev).long()
    rows = torch.arange(scores.shape[0], device=dev)
    test_score = scores[rows, test]
    candidate = torch.ones_like(scores, dtype=torch.bool)
    r, c = _index(exclude, dev).rows_cols(users)
    candidate[r.to(dev), c.to(dev)] = False
    candidate[rows, test] = False
    return ((scores >= test_score[:, None]) & candidate).sum(1)


def n_candidates(exclude: Interactions | PairIndex, users: Tensor, test_items: Tensor, n_items: int) -> Tensor:
    """#(non-training, non-test items) per user (U,) -- the AUC denominator."""
    idx = _index(exclude, users.device)
    in_train = idx.contains(users, test_items).long()
    return n_items - 1 - (idx.counts(users) - in_train)


def hit_ratio(ranks: Tensor, k: int) -> Tensor:
    """Per-user HR@k (U,) float: 1 when the test item ranks in the top k."""
    _check_k(k)
    return (ranks < k).float()


def ndcg(ranks: Tensor, k: int) -> Tensor:
    """Per-user nDCG@k (U,) with one relevant item: log 2 / log(r + 2) = 1 / log2(r + 2) if r < k."""
    _check_k(k)
    r = ranks.float()
    return torch.where(ranks < k, 1.0 / torch.log2(r + 2.0), torch.zeros_like(r))


def auc(ranks: Tensor, n_cand: Tensor | int) -> Tensor:
    """Per-user AUC (U,) = 1 - r / #candidates (the study's definition)."""
    n = torch.as_tensor(n_cand, device=ranks.device).float().clamp(min=1.0)
    return 1.0 - ranks.float() / n


def precision_recall(
    top_items: Tensor, test: Interactions, k: int, users: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Per-user precision@k and recall@k (U,) of top lists (U,K') against all test items.

    Rows of ``top_items`` belong to ``users`` (default 0..U-1); entries -1 are empty slots.
    Users without test items get NaN (excluded by nanmean).
    """
    _check_k(k)
    if k > top_items.shape[1]:
        raise InvalidInput(f"k={k} exceeds the list length {top_items.shape[1]}")
    dev = top_items.device
    users = torch.arange(top_items.shape[0], device=dev) if users is None else users.to(dev).long()
    idx = PairIndex(test, dev)
    top = top_items[:, :k]
    valid = top >= 0
    hits = (idx.contains(users[:, None].expand_as(top), top.clamp(min=0)) & valid).sum(1).float()
    n_test = idx.counts(users).float()
    nan = torch.full_like(hits, float("nan"))
    precision = torch.where(n_test > 0, hits / k, nan)
    recall = torch.where(n_test > 0, hits / n_test.clamp(min=1), nan)
    return precision, recall


def _check_k(k: int) -> None:
    if int(k) < 1:
        raise InvalidInput(f"k must be >= 1, got {k}")


def evaluate_accuracy(
    model: Recommender,
    train: Interactions,
    test: Interactions,
    ks: Sequence[int] = (10, 20),
    items: ItemSide | None = None,
    batch_size: int = 1024,
) -> dict[str, Any]:
    """HR@k, nDCG@k, precision@k, recall@k and AUC of every user with a test item.

    The leave-one-out rank uses each user's last test interaction; precision/recall use all.
    Returns the means at the top level ({"auc": float, "hr@10": float, ..., "n_users": int}) and
    the per-user vectors under "per_user" ({"users": (U,), "rank": (U,), "auc": (U,), ...}, CPU).
    """
    from services.recommender.scoring import topk

    for k in ks:
        _check_k(k)
        if k > train.n_items:
            raise InvalidInput(f"k={k} exceeds the number of items {train.n_items}")
    if not ks:
        raise InvalidInput("ks must name at least one cut-off")
    users_np, items_np = last_per_user(test)
    dev = model.device
    users, test_items = torch.from_numpy(users_np).to(dev), torch.from_numpy(items_np).to(dev)
    exclude = PairIndex(train, dev)
    state = model.item_state(items)
    ranks = []
    for s in range(0, users.numel(), batch_size):
        scores = model.score_with_state(users[s : s + batch_size], state)
        ranks.append(leave_one_out_ranks(scores, test_items[s : s + batch_size], exclude, users[s : s + batch_size]))
    rank = torch.cat(ranks) if ranks else torch.empty(0, dtype=torch.long, device=dev)
    per_user: dict[str, Tensor] = {"users": users.cpu(), "rank": rank.cpu()}
    per_user["auc"] = auc(rank, n_candidates(exclude, users, test_items, train.n_items)).cpu()
    _, top = topk(model, users, max(ks), exclude=exclude, items=items, batch_size=batch_size)
    for k in ks:
        per_user[f"hr@{k}"] = hit_ratio(rank, k).cpu()
        per_user[f"ndcg@{k}"] = ndcg(rank, k).cpu()
        per_user[f"precision@{k}"], per_user[f"recall@{k}"] = precision_recall(top, test, k, users.cpu())
    out: dict[str, Any] = {
        name: float(np.nanmean(v.numpy())) if v.numel() else float("nan")
        for name, v in per_user.items()
        if name not in ("users", "rank")
    }
    out["n_users"] = int(users.numel())
    out["per_user"] = per_user
    return out
