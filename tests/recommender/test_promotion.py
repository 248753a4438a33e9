"""Item promotion on fitted models: the insider's objectives and the per-item measurements, against brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from advrec_common.errors import InvalidInput
from services.recommender.items import ItemSide
from services.recommender.promotion import (
    entry_bar,
    item_standing,
    least_exposed,
    mean_score_objective,
    most_exposed,
    promotion_metrics,
    topk_objective,
)

ROWS = torch.tensor([3, 17, 40])


def _replaced(synth, rows: torch.Tensor, feats: torch.Tensor) -> ItemSide:
    f = synth.items.features.clone()
    f[rows] = feats
    return ItemSide(features=f, spatial=synth.items.spatial, images=synth.items.images,
                    categories=synth.items.categories)


@pytest.mark.parametrize("name", ["vbpr", "amr", "deepstyle"])
def test_mean_score_objective_is_the_mean_score_and_its_gradient_is_exact(synth, fitted, name):
    """The objective of the attacked features equals the model's own mean score of the item over the users
    (re-scored with those features), and autograd's gradient matches central finite differences."""
    model = fitted[name]
    users = torch.arange(model.n_users)
    objective = mean_score_objective(model, synth.items, users)
    feats = synth.items.features[ROWS].clone() + 0.1 * torch.randn(len(ROWS), synth.items.features.shape[1],
                                                                     generator=torch.Generator().manual_seed(0))
    expected = model.score(users, _replaced(synth, ROWS, feats))[:, ROWS].mean(0)
    torch.testing.assert_close(objective(feats, None, ROWS), expected, rtol=1e-5, atol=1e-6)
    x = feats.clone().requires_grad_(True)
    grad = torch.autograd.grad(objective(x, None, ROWS).sum(), x)[0]
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    h = 0.05  # these models are linear in the features: central differences are exact up to rounding
    with torch.no_grad():
        for j in (0, 5, 11):
            bump = torch.zeros_like(x)
            bump[1, j] = h
            fd = (objective(x + bump, None, ROWS) - objective(x - bump, None, ROWS)).sum() / (2 * h)
            assert float(fd) == pytest.approx(float(grad[1, j]), rel=2e-3, abs=1e-5)


def test_the_objective_reads_only_the_attacked_items_rows(synth, fitted):
    """Replacing one item's features leaves every other item's objective unchanged (VBPR scores an item from
    its own features), and the other items' scores for the users are the clean ones."""
    model = fitted["vbpr"]
    users = torch.arange(model.n_users)
    objective = mean_score_objective(model, synth.items, users)
    feats = synth.items.features[ROWS].clone()
    base = objective(feats, None, ROWS)
    feats[0] += 1.0
    moved = objective(feats, None, ROWS)
    assert moved[0] != base[0] and torch.equal(moved[1:], base[1:])


def test_entry_bar_is_the_kth_best_candidate_other_than_the_item(synth, fitted):
    """Brute force per user: the K-th best score among the user's candidates (training items excluded) other than
    the item; users who bought the item are not eligible."""
    model, k = fitted["vbpr"], 5
    users = torch.arange(model.n_users)
    bar = entry_bar(model, synth.items, synth.train, users, ROWS, k, temperature=0.5)
    scores = model.score(users, synth.items).numpy().astype(np.float64)
    bought = np.zeros_like(scores, dtype=bool)
    bought[synth.train.user, synth.train.item] = True
    for u in (0, 7, 33):
        for j, item in enumerate(ROWS.tolist()):
            candidates = np.flatnonzero(~bought[u])
            others = np.sort(scores[u, [c for c in candidates if c != item]])[::-1]
            assert bool(bar.eligible[u, j]) == (not bought[u, item])
            if not bought[u, item]:
                assert float(bar.tau[u, j]) == pytest.approx(others[k - 1], rel=1e-5)
    assert bar.temperature > 0


def test_topk_objective_counts_the_users_who_would_hold_the_item_at_low_temperature(synth, fitted):
    """At a tiny temperature the smooth objective is the share of eligible users whose top-K the item enters
    with the attacked features: the same count a full re-ranking gives."""
    model, k = fitted["vbpr"], 10
    users = torch.arange(model.n_users)
    bar = entry_bar(model, synth.items, synth.train, users, ROWS, k, temperature=1e-6)
    objective = topk_objective(model, synth.items, users, bar)
    feats = synth.items.features[ROWS] * 3.0  # a large move: some users now hold some of these items
    soft = objective(feats, None, ROWS).detach().numpy()
    # brute force: replace one item at a time and count the eligible users holding it in their top-K
    for j, item in enumerate(ROWS.tolist()):
        side = _replaced(synth, ROWS[j : j + 1], feats[j : j + 1])
        standing = item_standing(model, synth.train, [item], k, items=side)
        eligible = standing.ranks[:, 0] > 0
        assert soft[j] == pytest.approx(float((standing.ranks[eligible, 0] <= k).mean()), abs=1e-3)


def test_standing_and_metrics_match_a_brute_force_ranking(synth, fitted):
    model = fitted["amr"]
    rows = ROWS.numpy()
    clean = item_standing(model, synth.train, rows, 10)
    feats = synth.items.features[ROWS] + 0.5
    after = item_standing(model, synth.train, rows, 10, items=_replaced(synth, ROWS, feats))
    scores = model.score(torch.arange(model.n_users), synth.items).numpy()
    bought = np.zeros_like(scores, dtype=bool)
    bought[synth.train.user, synth.train.item] = True
    masked = np.where(bought, -np.inf, scores)
    for u in (1, 50):
        for j, item in enumerate(rows):
            expected = 0 if bought[u, item] else int((masked[u] > masked[u, item]).sum()) + 1
            assert clean.ranks[u, j] == expected
        assert clean.kth[u] == pytest.approx(np.sort(masked[u])[::-1][9], rel=1e-6)
    m = promotion_metrics(clean, after, [5, 10])
    np.testing.assert_allclose(m["prediction_shift"], (after.scores - clean.scores).mean(0))
    np.testing.assert_allclose(m["share_rose"], (after.scores > clean.scores).mean(0))
    eligible = clean.ranks > 0
    at10 = next(x for x in m["per_k"] if x["k"] == 10)
    np.testing.assert_allclose(at10["hr_after"], (eligible & (after.ranks <= 10)).sum(0) / eligible.sum(0))
    np.testing.assert_allclose(at10["slots_before"], (eligible & (clean.ranks <= 10)).sum(0) / (model.n_users * 10))
    outside = eligible & (clean.ranks > 10)
    gap = [(clean.kth[outside[:, j]] - clean.scores[outside[:, j], j]).mean() for j in range(len(rows))]
    np.testing.assert_allclose(m["gap_before"], gap)
    assert all(g >= 0 for g in m["gap_before"])


def test_least_and_most_exposed_on_hand_made_lists():
    top = np.array([[[0, 1, 2], [0, 2, 5]], [[0, 1, -1], [2, 1, 0]]])  # (R=2, U=2, K=3); -1 = empty slot
    # slot counts: item 0: 4, 1: 3, 2: 3, 5: 1, items 3, 4, 6: 0
    assert least_exposed(top, np.array([6, 5, 4, 3, 1]), 3).tolist() == [3, 4, 6]  # ties in catalog order
    assert least_exposed(top, np.array([5, 1, 2]), 2).tolist() == [1, 5]
    assert most_exposed(top, 2).tolist() == [0, 1]  # item 1 and 2 tie at 3: catalog order
    assert most_exposed(top, 10).tolist() == [0, 1, 2, 5]  # only items that hold a slot
    with pytest.raises(InvalidInput):
        least_exposed(top, np.array([], dtype=np.int64), 2)


def test_pixel_recommenders_are_refused(synth, fitted):
    with pytest.raises(InvalidInput, match="does not read the extractor's features"):
        mean_score_objective(fitted["dvbpr"], synth.items, torch.arange(3))
