"""Leave-one-out ranks, HR, nDCG, AUC, precision/recall on hand-made cases (and torchmetrics as oracle)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.retrieval import RetrievalHitRate, RetrievalNormalizedDCG

from advrec_common.datasets.types import Interactions
from advrec_common.errors import InvalidInput
from services.recommender.metrics.accuracy import (
    auc,
    hit_ratio,
    leave_one_out_ranks,
    n_candidates,
    ndcg,
    precision_recall,
)

SCORES = torch.tensor([
    [0.9, 0.8, 0.7, 0.6, 0.5],
    [0.1, 0.5, 0.3, 0.5, 0.2],
    [0.4, 0.3, 0.3, 0.1, 0.0],
])
TRAIN = Interactions(np.array([0, 1, 2]), np.array([0, 1, 4]), 3, 5)
TEST_ITEMS = torch.tensor([2, 3, 1])


def test_ranks_exclude_training_items_and_count_ties_against_the_test_item():
    # u0: candidates {1,3,4}, only item 1 (0.8) >= 0.7 -> 1
    # u1: item 1 ties at 0.5 but is a training item -> 0
    # u2: candidates {0,2,3}: 0.4 and the tie 0.3 -> 2
    ranks = leave_one_out_ranks(SCORES, TEST_ITEMS, TRAIN)
    assert ranks.tolist() == [1, 0, 2]


def test_hr_ndcg_auc_by_hand():
    ranks = torch.tensor([1, 0, 2])
    assert hit_ratio(ranks, 1).tolist() == [0.0, 1.0, 0.0]
    assert hit_ratio(ranks, 2).tolist() == [1.0, 1.0, 0.0]
    assert torch.allclose(ndcg(ranks, 2), torch.tensor([1 / math.log2(3), 1.0, 0.0]))
    assert torch.allclose(ndcg(ranks, 3), torch.tensor([1 / math.log2(3), 1.0, 0.5]))
    n = n_candidates(TRAIN, torch.arange(3), TEST_ITEMS, 5)
    assert n.tolist() == [3, 3, 3]
    assert torch.allclose(auc(ranks, n), torch.tensor([2 / 3, 1.0, 1 / 3]))


def test_precision_recall_by_hand():
    top = torch.tensor([[1, 2], [3, 2], [0, 1]])
    test = Interactions(np.array([0, 1, 1]), np.array([2, 3, 4]), 3, 5)
    p, r = precision_recall(top, test, 2)
    assert p[:2].tolist() == [0.5, 0.5] and r[:2].tolist() == [1.0, 0.5]
    assert torch.isnan(p[2]) and torch.isnan(r[2])  # user 2 has no test item
    p1, _ = precision_recall(top, test, 1)
    assert p1[:2].tolist() == [0.0, 1.0]


def test_bad_inputs():
    with pytest.raises(InvalidInput):
        hit_ratio(torch.tensor([0]), 0)
    with pytest.raises(InvalidInput):
        leave_one_out_ranks(SCORES, torch.tensor([0, 1]), TRAIN)
    with pytest.raises(InvalidInput):
        leave_one_out_ranks(SCORES, torch.tensor([0, 1, 9]), TRAIN)


def test_hr_and_ndcg_match_torchmetrics():
    gen = torch.Generator().manual_seed(3)
    n_users, n_items, k = 20, 30, 5
    scores = torch.rand(n_users, n_items, generator=gen)  # continuous: no ties
    train_items = torch.stack([torch.randperm(n_items, generator=gen)[:4] for _ in range(n_users)])
    test_items = torch.stack([torch.randperm(n_items, generator=gen)[0] for _ in range(n_users)])
    keep = ~(train_items == test_items[:, None]).any(1)
    scores, train_items, test_items = scores[keep], train_items[keep], test_items[keep]
    u = scores.shape[0]
    train = Interactions(np.repeat(np.arange(u), 4), train_items.reshape(-1).numpy(), u, n_items)
    ranks = leave_one_out_ranks(scores, test_items, train)
    candidate = torch.ones(u, n_items, dtype=torch.bool)
    candidate[torch.arange(u)[:, None], train_items] = False
    rows, cols = torch.nonzero(candidate, as_tuple=True)
    target = cols == test_items[rows]
    hr, nd = RetrievalHitRate(top_k=k), RetrievalNormalizedDCG(top_k=k)
    expected_hr = hr(scores[rows, cols], target, indexes=rows)
    expected_nd = nd(scores[rows, cols], target, indexes=rows)
    assert torch.isclose(hit_ratio(ranks, k).mean(), expected_hr, atol=1e-6)
    assert torch.isclose(ndcg(ranks, k).mean(), expected_nd, atol=1e-6)
