"""Placebo and oracle controls, and the delivery/budget rules that keep an attack from vanishing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from advrec_common.errors import InvalidInput
from services.attacker.budget import Budget
from services.attacker.controls import centroid_rows, oracle_rows, perturbation_size, placebo_images
from services.attacker.delivery import deliver


def _pair(seed=0, n=3, size=8, levels=4):
    rng = np.random.default_rng(seed)
    clean = rng.integers(20, 236, size=(n, size, size, 3), dtype=np.uint8)
    delta = rng.integers(-levels, levels + 1, size=clean.shape)
    delta[:, :2] = 0  # a part of the image untouched, as attacks often leave it
    return clean, (clean.astype(int) + delta).astype(np.uint8)


def test_placebo_has_the_attacks_values_in_random_places():
    clean, adv = _pair()
    plc = placebo_images(clean, adv, draws=4, seed=7)
    assert plc.shape == (4, *adv.shape) and plc.dtype == np.uint8
    d_adv = adv.astype(int) - clean.astype(int)
    for r in range(4):
        d = plc[r].astype(int) - clean.astype(int)
        for m in range(len(clean)):  # the same multiset of per-pixel changes per image: same L-inf, L2, L1
            assert sorted(d[m].ravel()) == sorted(d_adv[m].ravel())
        assert not np.array_equal(d, d_adv)  # a different direction
    assert not np.array_equal(plc[0], plc[1])  # independent draws
    np.testing.assert_array_equal(plc, placebo_images(clean, adv, draws=4, seed=7))  # seeded
    size_adv, size_plc = perturbation_size(clean, adv), perturbation_size(clean, plc[0])
    assert size_plc == pytest.approx(size_adv)


def test_placebo_clips_to_the_image_range_and_keeps_float_deliveries_float():
    clean = np.full((1, 4, 4, 3), 254, np.uint8)
    adv = clean.copy()
    adv[0, 0, 0, 0] = 250
    plc = placebo_images(clean, adv, 2, 0)
    assert plc.max() <= 255 and (plc.astype(int) - 254).min() == -4
    fadv = adv.astype(np.float32) / 255
    fplc = placebo_images(clean, fadv, 1, 0)
    assert fplc.dtype == np.float32 and 0 <= fplc.min() and fplc.max() <= 1
    with pytest.raises(InvalidInput):
        placebo_images(clean, adv[:, :2], 1, 0)


def test_centroid_oracle_sets_origin_rows_to_the_target_mean():
    feats = np.arange(12, dtype=np.float32).reshape(6, 2)
    cats = np.array([0, 1, 0, 2, 1, 0])
    items, rows = centroid_rows(feats, cats, origin=0, target=1)
    assert items.tolist() == [0, 2, 5]
    np.testing.assert_allclose(rows, np.tile((feats[1] + feats[4]) / 2, (3, 1)))
    with pytest.raises(InvalidInput, match="no items"):
        centroid_rows(feats, cats, origin=0, target=3)


def test_oracle_gives_each_origin_item_a_real_target_items_features():
    """Hand-made catalog: origin 0 has 5 items, target 1 has 2. Every origin row equals the clean row of
    a target item, each target item is used 2 or 3 times (the spread is kept), and the draw is seeded."""
    feats = np.arange(20, dtype=np.float32).reshape(10, 2)
    cats = np.array([0, 1, 0, 2, 0, 1, 0, 2, 0, 2])
    items, rows, sources = oracle_rows(feats, cats, origin=0, target=1, seed=7)
    assert items.tolist() == [0, 2, 4, 6, 8]
    assert set(sources.tolist()) == {1, 5} and sorted(np.bincount(sources)[[1, 5]].tolist()) == [2, 3]
    np.testing.assert_array_equal(rows, feats[sources])
    again = oracle_rows(feats, cats, origin=0, target=1, seed=7)
    np.testing.assert_array_equal(again[2], sources)
    assert any(not np.array_equal(oracle_rows(feats, cats, 0, 1, seed=s)[2], sources) for s in range(8))
    # with more target items than origin items, no target item is used twice
    _, _, once = oracle_rows(feats, cats, origin=2, target=0, seed=1)
    assert set(once.tolist()) <= {0, 2, 4, 6, 8} and len(set(once.tolist())) == len(once) == 3
    with pytest.raises(InvalidInput, match="no items"):
        oracle_rows(feats, cats, origin=0, target=3, seed=0)


def test_study_truncation_reproduces_the_minus_one_levels():
    """The study's normalised budget at eps 4 is ~0.9 grey level: rounding inside the budget erases it,
    the study's truncation ((x*255).astype(uint8)) gives -1 level where the perturbation was negative."""
    clean = torch.full((1, 3, 2, 2), 100 / 255)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    budget = Budget("linf", 4 / 255, std)
    step = (budget.per_channel_linf() * 0.99).expand_as(clean).clone()
    step[..., 0, 0] *= -1  # one pixel pushed down, the rest up
    adv = clean + step
    rounded = deliver(adv, "png8", clean=clean, budget=budget)
    assert torch.equal(rounded, clean)  # the silent zero the spec now refuses
    truncated = deliver(adv, "png8_truncate", clean=clean, budget=budget)
    levels = torch.round((truncated - clean) * 255)
    assert set(levels.unique().tolist()) == {-1.0, 0.0}
    assert (levels[..., 0, 0] == -1).all()


def test_spec_refuses_silent_zero_budgets_and_sub_level_eps():
    from advrec.pipeline.spec import AttackGridSpec

    with pytest.raises(ValueError, match="png8_truncate"):
        AttackGridSpec(method="fgsm", eps=[4], budget_space="normalized")
    AttackGridSpec(method="fgsm", eps=[4], budget_space="normalized", delivery="png8_truncate")
    with pytest.raises(ValueError, match="did you mean 7.65"):
        AttackGridSpec(method="pgd", eps=[0.03])
    AttackGridSpec(method="cw", eps=[0], norm="l2")  # 0 = unbounded stays allowed where the method allows it
