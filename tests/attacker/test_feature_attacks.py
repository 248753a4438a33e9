"""Recommender-aware attacks: feature matching and score maximisation."""

from __future__ import annotations

import pytest
import torch

from advrec_common.errors import InvalidInput
from services.attacker.attacks import run_attack
from services.attacker.spec import AttackSpec


def _features(model, x):
    with torch.no_grad():
        return model.features(x)


def test_feature_match_pulls_features_to_the_target_centroid(random_model, images):
    g = torch.Generator().manual_seed(5)
    target_imgs = torch.rand(5, 3, 32, 32, generator=g)
    centroid = _features(random_model, target_imgs).mean(0)
    spec = AttackSpec(method="feature_match", eps=8, steps=10)
    adv = run_attack(random_model, images, spec, None, target_features=_features(random_model, target_imgs))
    noise = (images + (torch.rand(images.shape, generator=g) * 2 - 1) * 8 / 255).clamp(0, 1)
    d_clean = (_features(random_model, images) - centroid).norm(dim=1)
    d_adv = (_features(random_model, adv) - centroid).norm(dim=1)
    d_noise = (_features(random_model, noise) - centroid).norm(dim=1)
    assert torch.all(d_adv < d_clean) and torch.all(d_adv < d_noise)
    assert (adv - images).abs().max() <= 8 / 255 + 1e-6


def test_feature_match_accepts_a_centroid_and_the_normalized_budget(random_model, images):
    centroid = torch.zeros(random_model.feature_dim)
    spec = AttackSpec(method="feature_match", eps=8, steps=3, budget_space="normalized", norm="l2")
    adv = run_attack(random_model, images, spec, None, target_features=centroid)
    assert (_features(random_model, adv).norm(dim=1) < _features(random_model, images).norm(dim=1)).all()


def test_score_attack_raises_a_recommender_score(random_model, images):
    g = torch.Generator().manual_seed(2)
    users = torch.randn(7, random_model.feature_dim, generator=g)  # a VBPR-like visual term: mean_u theta_u . f_i

    def score(f):
        return (f @ users.T).mean(1)

    adv = run_attack(random_model, images, AttackSpec(method="score", eps=4, steps=5), None, score_fn=score)
    assert torch.all(score(_features(random_model, adv)) > score(_features(random_model, images)))


@pytest.mark.parametrize(
    ("method", "kwargs", "message"),
    [
        ("feature_match", {}, "needs target_features"),
        ("feature_match", {"target_features": torch.zeros(3, 7)}, "dim 7"),
        ("feature_match", {"target_features": torch.full((128,), float("nan"))}, "NaN"),
        ("feature_match", {"target_features": torch.zeros(128), "score_fn": sum}, "only target_features"),
        ("score", {}, "needs score_fn"),
        ("score", {"score_fn": lambda f: f}, r"\(N,\) scores"),
    ],
)
def test_feature_attack_argument_errors(random_model, images, method, kwargs, message):
    with pytest.raises(InvalidInput, match=message):
        run_attack(random_model, images, AttackSpec(method=method, eps=4, steps=1), None, **kwargs)


def test_insa_ascends_each_items_own_objective_by_its_catalog_row(random_model, images):
    """INSA's labels are the images' positions: image i ascends the objective of catalog row rows[i] (here a
    different visual direction per row), within the budget, across batches."""
    g = torch.Generator().manual_seed(3)
    rows = torch.tensor([40, 7, 12, 3, 99, 51])
    directions = {int(r): torch.randn(random_model.feature_dim, generator=g) for r in rows}
    seen: list[list[int]] = []

    def objective(features, spatial, batch_rows):
        seen.append(batch_rows.tolist())
        return torch.stack([features[j] @ directions[int(r)] for j, r in enumerate(batch_rows)])

    spec = AttackSpec(method="insa", eps=4, steps=6)
    adv = run_attack(random_model, images, spec, None, batch_size=4, objective=objective, rows=rows)
    assert seen[0] == rows[:4].tolist() and seen[-1] == rows[4:].tolist()  # batches read their own rows
    before = torch.stack([_features(random_model, images)[j] @ directions[int(r)] for j, r in enumerate(rows)])
    after = torch.stack([_features(random_model, adv)[j] @ directions[int(r)] for j, r in enumerate(rows)])
    assert torch.all(after > before)
    assert (adv - images).abs().max() <= 4 / 255 + 1e-6
    # the objective of another row would have moved the image elsewhere: the mapping matters
    wrong = run_attack(random_model, images, spec, None, objective=objective, rows=rows.flip(0))
    assert not torch.equal(wrong, adv)


def test_insa_gives_the_feature_map_when_the_objective_needs_it(random_model, images):
    maps = []

    def objective(features, spatial, batch_rows):
        maps.append(spatial)
        return spatial.mean(dim=(1, 2, 3))

    run_attack(random_model, images, AttackSpec(method="insa_topk", eps=4, steps=1), None,
               objective=objective, rows=torch.arange(6), objective_spatial=True)
    assert maps[0] is not None and maps[0].ndim == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({}, "needs objective"), ({"objective": lambda f, s, r: f.sum(1)}, "needs rows"),
     ({"objective": lambda f, s, r: f, "rows": torch.arange(6)}, "one value per image")],
)
def test_insa_argument_errors(random_model, images, kwargs, message):
    with pytest.raises(InvalidInput, match=message):
        run_attack(random_model, images, AttackSpec(method="insa", eps=4, steps=1), None, **kwargs)


def test_promotion_methods_need_budgets_in_255_units():
    with pytest.raises(ValueError, match="did you mean 7.65"):
        AttackSpec(method="insa", eps=0.03)


def test_noise_is_a_seeded_uniform_point_of_the_ball(random_model, images):
    """L-inf: every value moved by a uniform amount in [-eps, eps] (mean |delta| ~ eps/2 away from the [0,1]
    clamp), reproducible for a seed, another draw for another seed; L2: inside the radius."""
    x = images.clamp(0.2, 0.8)  # away from the clamp: the delta is the drawn one
    a = run_attack(random_model, x, AttackSpec(method="noise", eps=8, seed=1), None)
    d = (a - x) * 255
    assert d.abs().max() <= 8 + 1e-4 and abs(float(d.abs().mean()) - 4.0) < 0.2
    assert torch.equal(a, run_attack(random_model, x, AttackSpec(method="noise", eps=8, seed=1), None))
    assert not torch.equal(a, run_attack(random_model, x, AttackSpec(method="noise", eps=8, seed=2), None))
    b = run_attack(random_model, x, AttackSpec(method="noise", eps=64, norm="l2"), None)
    assert float(((b - x) * 255).flatten(1).norm(dim=1).max()) <= 64 + 1e-3
