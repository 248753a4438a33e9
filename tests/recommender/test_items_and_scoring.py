"""ItemSide validation, clean-max feature scaling, top-K exclusion and input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from advrec_common.datasets.types import Interactions
from advrec_common.errors import InvalidInput, NotFound
from services.recommender.items import ItemSide
from services.recommender.scoring import topk


def test_itemside_validates_shapes_and_values():
    with pytest.raises(InvalidInput):
        ItemSide()
    with pytest.raises(InvalidInput):
        ItemSide(features=torch.zeros(3, 2), categories=torch.zeros(4, dtype=torch.long))
    with pytest.raises(InvalidInput, match="NaN"):
        ItemSide(features=torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(InvalidInput):
        ItemSide(images=torch.zeros(2, 3, 4, 4))  # float images
    with pytest.raises(InvalidInput):
        ItemSide(categories=torch.tensor([-1]))


def test_from_arrays_flattens_maps_and_images():
    spatial = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)  # (I,D',h,w)
    images = np.zeros((2, 5, 5, 3), dtype=np.uint8)
    side = ItemSide.from_arrays(spatial_map=spatial, images_nhwc=images)
    assert side.spatial.shape == (2, 4, 3) and side.images.shape == (2, 3, 5, 5)
    assert side.spatial[1, 3].tolist() == spatial[1, :, 1, 1].tolist()  # region (1,1) of item 1


def test_attacked_features_are_scaled_by_the_clean_max(fitted, synth):
    model = fitted["vbpr"]
    f = synth.items.features
    assert model.feature_scale.item() == pytest.approx(float(f.abs().max()))
    users = torch.arange(5)
    s0 = model.score(users, synth.items.replace(features=torch.zeros_like(f)))
    s1 = model.score(users, synth.items)
    s2 = model.score(users, synth.items.replace(features=2 * f))
    # the score is linear in f: a refitted scale would make s2 == s1
    assert torch.allclose(s2 - s1, s1 - s0, atol=1e-5)
    assert not torch.allclose(s2, s1)


def test_topk_excludes_training_items_and_is_sorted(fitted, synth):
    model = fitted["vbpr"]
    scores, items = topk(model, None, 10, exclude=synth.train, batch_size=37)
    assert scores.shape == items.shape == (synth.train.n_users, 10)
    assert bool((scores[:, :-1] >= scores[:, 1:]).all())
    keys = set((synth.train.user * synth.train.n_items + synth.train.item).tolist())
    listed = (torch.arange(items.shape[0])[:, None] * synth.train.n_items + items).reshape(-1).tolist()
    assert not keys.intersection(listed)
    full = model.score(torch.arange(3))
    assert torch.allclose(scores[:3, 0], full.gather(1, items[:3, :1]).squeeze(1))


def test_topk_marks_unfillable_slots(fitted):
    model = fitted["bprmf"]
    n = model.n_items
    everything = Interactions(np.zeros(n - 2, dtype=np.int64), np.arange(n - 2), model.n_users, n)
    scores, items = topk(model, torch.tensor([0]), 4, exclude=everything)
    assert sorted(items[0, :2].tolist()) == [n - 2, n - 1]
    assert items[0, 2:].tolist() == [-1, -1] and torch.isneginf(scores[0, 2:]).all()


def test_topk_and_score_errors(fitted, synth):
    model = fitted["vbpr"]
    with pytest.raises(InvalidInput):
        topk(model, None, 0, exclude=synth.train)
    with pytest.raises(InvalidInput):
        topk(model, None, model.n_items + 1, exclude=synth.train)
    with pytest.raises(NotFound):
        topk(model, torch.tensor([model.n_users]), 5, exclude=synth.train)
    with pytest.raises(NotFound):
        model.score(torch.tensor([-1]))
    with pytest.raises(InvalidInput):
        model.score(torch.tensor([0.5]))
    with pytest.raises(InvalidInput, match="dimension"):
        model.score(torch.tensor([0]), ItemSide(features=torch.zeros(model.n_items, 3)))
    with pytest.raises(InvalidInput, match="rows"):
        model.score(torch.tensor([0]), ItemSide(features=torch.zeros(4, synth.items.features.shape[1])))
    with pytest.raises(InvalidInput, match="needs"):
        model.score(torch.tensor([0]), ItemSide(categories=synth.items.categories))
    with pytest.raises(InvalidInput):
        Interactions(np.array([0]), np.array([model.n_items]), model.n_users, model.n_items)
