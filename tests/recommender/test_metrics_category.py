"""CHR@K (both forms), CHR of all categories, nCDCG@K (study and proper ideal) and rank shift, by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from advrec_common.datasets.types import Interactions
from advrec_common.errors import InvalidInput
from services.recommender.metrics.category import chr_all_categories, chr_at_k, ncdcg_at_k, rank_shift

TOP = torch.tensor([[0, 1, 2], [3, 0, 4], [5, -1, -1]])  # -1 = empty slot
CATS = torch.tensor([0, 1, 0, 2, 0, 1])  # category 0 = items {0, 2, 4}


def test_chr_count_and_normalized_forms():
    value, per_user = chr_at_k(TOP, CATS, 0, 3, form="count")
    assert per_user.tolist() == [2.0, 2.0, 0.0] and value == pytest.approx(4 / 3)
    value, per_user = chr_at_k(TOP, CATS, 0, 3, form="normalized")
    assert value == pytest.approx(4 / 9) and per_user[0].item() == pytest.approx(2 / 3)
    value, _ = chr_at_k(TOP, CATS, 0, 2, form="count")
    assert value == pytest.approx(2 / 3)


def test_chr_all_categories_matches_single_category_calls():
    all_ = chr_all_categories(TOP, CATS, 3, 3)
    assert torch.allclose(all_, torch.tensor([4 / 3, 2 / 3, 1 / 3]))
    norm = chr_all_categories(TOP, CATS, 3, 3, form="normalized")
    assert torch.allclose(norm, all_ / 3)
    for c in range(3):
        assert all_[c].item() == pytest.approx(chr_at_k(TOP, CATS, c, 3)[0])


def test_ncdcg_study_ideal_ignores_training_items():
    idcg = 3 * (1 + 1 / math.log2(3) + 0.5)  # |I_c| = 3 positions
    value, per_user = ncdcg_at_k(TOP, CATS, 0, 3)
    expected = [3 * 1.5 / idcg, 3 * (1 / math.log2(3) + 0.5) / idcg, 0.0]
    assert torch.allclose(per_user, torch.tensor(expected, dtype=torch.float64))
    assert value == pytest.approx(sum(expected) / 3)


def test_ncdcg_proper_ideal_removes_training_items():
    train = Interactions(np.array([0, 2, 2, 2]), np.array([4, 0, 2, 4]), 3, 6)
    _, per_user = ncdcg_at_k(TOP, CATS, 0, 3, exclude_train_from_ideal=train)
    assert per_user[0].item() == pytest.approx(4.5 / (3 * (1 + 1 / math.log2(3))))  # ideal of 2 items
    assert per_user[2].item() == 0.0  # owns every category item: empty ideal


def test_rank_shift_by_hand():
    before = torch.tensor([[0, 1, 3], [3, 0, 4]])
    after = torch.tensor([[2, 0, 1], [0, 3, 1]])
    out = rank_shift(before, after, torch.tensor([2, 4]))
    # u0 item 2: absent (4) -> 1 = +3; u1 item 4: 3 -> absent (4) = -1; others absent in both
    assert out == {"mean": 1.0, "median": 1.0, "n_pairs": 2, "entered": 1, "left": 1}


def test_bad_k_and_shapes():
    with pytest.raises(InvalidInput):
        chr_at_k(TOP, CATS, 0, 0)
    with pytest.raises(InvalidInput):
        chr_at_k(TOP, CATS, 0, 4)
    with pytest.raises(InvalidInput):
        chr_at_k(TOP, CATS, 0, 2, form="other")
    with pytest.raises(InvalidInput):
        rank_shift(TOP, TOP[:2], torch.tensor([0]))
    with pytest.raises(InvalidInput):
        chr_at_k(torch.tensor([[7]]), CATS, 0, 1)


def test_chr_per_user_values_are_exact_float64_multiples_of_one_over_k():
    """Equal count changes must give equal differences (replicate ties): per-user CHR is float64."""
    top = torch.tensor([[0, 1, 2], [1, 2, 3], [3, 3, 3]])
    cats = torch.tensor([0, 0, 1, 0])
    value, per_user = chr_at_k(top, cats, 0, 3, form="normalized")
    assert per_user.dtype == torch.float64 and per_user.tolist() == [2 / 3, 2 / 3, 1.0]
    assert value == (2 / 3 + 2 / 3 + 1.0) / 3


def test_item_exposure_decomposes_the_category_metrics_item_by_item():
    """Summed over the category's items, each item's share gives CHR@k (both forms) and nCDCG@k exactly; an item
    absent from every list has share 0, and one in every user's first slot has 1/k of CHR."""
    from services.recommender.metrics.category import chr_at_k, item_exposure, ncdcg_at_k

    g = torch.Generator().manual_seed(3)
    top = torch.randint(0, 40, (60, 12), generator=g)
    top[5, 4] = -1  # an empty slot
    cats = torch.randint(0, 4, (40,), generator=g)
    items = torch.nonzero(cats == 2).squeeze(1)
    for k in (1, 5, 12):
        assert float(item_exposure(top, items, k, "chr").sum()) == pytest.approx(chr_at_k(top, cats, 2, k, "normalized")[0])
        assert float(item_exposure(top, items, k, "chr_count").sum()) == pytest.approx(chr_at_k(top, cats, 2, k)[0])
        assert float(item_exposure(top, items, k, "ncdcg", cats, 2).sum()) == pytest.approx(ncdcg_at_k(top, cats, 2, k)[0])
    first = torch.arange(2, 14).repeat(60, 1)
    first[:, 0] = 0  # item 0 first in every list, item 1 in none
    shares = item_exposure(first, torch.tensor([0, 1]), 10, "chr")
    assert shares.tolist() == [pytest.approx(0.1), 0.0]
