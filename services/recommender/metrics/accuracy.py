"""Leave-one-out full-ranking accuracy (the study's ``utils/Evaluator.py``), vectorised over users.

rank r (0-based) of a user's test item = #(items that are neither training items of the user nor
the test item, with score >= the test score) -- ties count against the test item.
HR@k = [r < k]; nDCG@k = log 2 / log(r + 2) if r < k else 0; AUC = 1 - r / #candidates.

:func:`rank_and_evaluate` scores every user once per item side and returns both the top-K lists and
these metrics; :func:`evaluate_accuracy` is its accuracy half.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from advrec_common.datasets.types import Interactions
from advrec_common.errors import InvalidInput
from services.recommender.items import ItemSide
from services.recommender.pairs import PairIndex, as_index, last_per_user
from services.recommender.scoring import Scorer, as_user_tensor, score_blocks, topk_of_block


def _index(exclude: Interactions | PairIndex, device: torch.device) -> PairIndex:
    return as_index(exclude, device)


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
    idx = as_index(test, dev)
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


def masked_ranks(scores: Tensor, users: Tensor, test_items: Tensor, exclude: PairIndex) -> Tensor:
    """Leave-one-out ranks (B,) of ``test_items`` (B,) that mask ``scores`` (B,I) in place as a side effect.

    Equal to :func:`leave_one_out_ranks` without building the candidate matrix: training items get
    -inf, so counting ``scores >= test score`` counts the candidates plus the test item itself
    (unless it is a training item of the user).
    """
    rows = torch.arange(scores.shape[0], device=scores.device)
    test_score = scores[rows, test_items]
    exclude.mask_(scores, users)
    at_least = (scores >= test_score[:, None]).sum(1)
    return at_least - (~exclude.contains(users, test_items)).long()


def _check_ks(ks: Sequence[int], n_items: int) -> None:
    if not ks:
        raise InvalidInput("ks must name at least one cut-off")
    for k in ks:
        _check_k(k)
        if k > n_items:
            raise InvalidInput(f"k={k} exceeds the number of items {n_items}")


def rank_and_evaluate(
    model: Scorer,
    train: Interactions | PairIndex,
    test: Interactions,
    ks: Sequence[int] = (10, 20),
    max_k: int | None = None,
    items: ItemSide | None = None,
    users: Tensor | None = None,
    user_batch: int | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """One scoring pass: top-``max_k`` lists of ``users`` and the leave-one-out accuracy of their test items.

    -> (top (U, max_k) int64 on the CPU, best first, training items excluded, -1 = empty slot;
    accuracy as :func:`evaluate_accuracy` returns it, over the users among ``users`` (default: all
    users) that have a test item). ``max_k`` defaults to max(ks); lists longer than max_k are
    computed internally when a k exceeds it (precision/recall need them). Each block of
    ``user_batch`` users (default the model's ``score_batch``) is scored once, its test scores read,
    its training items masked, its ranks counted and its top-K taken -- memory stays (user_batch, I).
    """
    n_items = model.n_items
    _check_ks(ks, n_items)
    max_k = int(max(ks)) if max_k is None else int(max_k)
    if max_k < 1 or max_k > n_items:
        raise InvalidInput(f"max_k must be in [1, {n_items}], got {max_k}")
    for label, inter in (("test", test), ("train", train)):
        if (inter.n_users, inter.n_items) != (model.n_users, model.n_items):
            raise InvalidInput(f"{label} interactions do not match the model's users/items")
    dev = model.device
    exclude = as_index(train, dev)
    u = torch.arange(model.n_users, device=dev) if users is None else as_user_tensor(users, model.n_users).to(dev)
    test_users_np, test_items_np = last_per_user(test)
    test_of = torch.full((model.n_users,), -1, dtype=torch.long, device=dev)
    test_of[torch.from_numpy(test_users_np).to(dev)] = torch.from_numpy(test_items_np).to(dev)
    list_k = max(max_k, int(max(ks)))
    top = torch.empty(u.numel(), list_k, dtype=torch.long)
    rank = torch.full((u.numel(),), -1, dtype=torch.long, device=dev)
    for s, e, scores in score_blocks(model, u, items, user_batch):
        block_users = u[s:e]
        t = test_of[block_users]
        r = masked_ranks(scores, block_users, t.clamp(min=0), exclude)
        rank[s:e] = torch.where(t >= 0, r, -1)
        top[s:e] = topk_of_block(scores, list_k)[1].cpu()
    sel = (rank >= 0).nonzero().squeeze(1)
    acc = _accuracy_from_ranks(exclude, test, u[sel], test_of[u[sel]], rank[sel], top[sel.cpu()], ks, n_items)
    return top[:, :max_k], acc


def _accuracy_from_ranks(exclude: PairIndex, test: Interactions, users: Tensor, test_items: Tensor, rank: Tensor,
                         top: Tensor, ks: Sequence[int], n_items: int) -> dict[str, Any]:
    """The accuracy dict of :func:`evaluate_accuracy` from ranks (U,) and top lists (U, >=max(ks))."""
    order = torch.argsort(users)  # per-user vectors are ordered by user index
    users, test_items, rank, top = users[order], test_items[order], rank[order], top[order.cpu()]
    per_user: dict[str, Tensor] = {"users": users.cpu(), "rank": rank.cpu()}
    per_user["auc"] = auc(rank, n_candidates(exclude, users, test_items, n_items)).cpu()
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


def evaluate_accuracy(
    model: Scorer,
    train: Interactions | PairIndex,
    test: Interactions,
    ks: Sequence[int] = (10, 20),
    items: ItemSide | None = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """HR@k, nDCG@k, precision@k, recall@k and AUC of every user with a test item.

    The leave-one-out rank uses each user's last test interaction; precision/recall use all.
    Returns the means at the top level ({"auc": float, "hr@10": float, ..., "n_users": int}) and
    the per-user vectors under "per_user" ({"users": (U,), "rank": (U,), "auc": (U,), ...}, CPU).
    One scoring pass over the test users (:func:`rank_and_evaluate`).
    """
    _check_ks(ks, model.n_items)
    test_users = torch.from_numpy(last_per_user(test)[0])
    _, acc = rank_and_evaluate(model, train, test, ks, items=items, users=test_users, user_batch=batch_size)
    return acc
