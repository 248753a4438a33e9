"""Delivery: rounding, truncation, JPEG, and the post-delivery budget guarantee."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from advrec_common.errors import InvalidInput
from services.attacker.attacks import run_attack
from services.attacker.budget import Budget, budget_for
from services.attacker.delivery import deliver, to_u8
from services.attacker.spec import AttackSpec

IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _u8_images(seed: int, n: int = 3, size: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g).float() / 255


def test_png8_rounds_and_truncate_reproduces_the_study():
    x = torch.tensor([0.2 / 255, 0.6 / 255, 254.5 / 255 + 1e-4, 1.0]).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    rounded = deliver(x, "png8") * 255
    truncated = deliver(x, "png8", rounding="truncate") * 255
    assert rounded[0, 0].flatten().tolist() == [0, 1, 255, 255]
    assert truncated[0, 0].flatten().tolist() == [0, 0, 254, 255]


def test_float_is_lossless_and_jpeg_is_lossy():
    x = _u8_images(0, size=16) + 0.3 / 255
    x = x.clamp(0, 1)
    assert torch.equal(deliver(x, "float"), x)
    j = deliver(x, "jpeg", jpeg_quality=50)
    assert j.shape == x.shape and not torch.equal(j, deliver(x, "png8"))
    assert torch.equal((j * 255).round(), j * 255)  # 8-bit after decoding
    assert (deliver(x, "jpeg", jpeg_quality=95) - x).abs().mean() < (j - x).abs().mean()


@settings(max_examples=40, deadline=None)
@given(
    eps=st.floats(min_value=0.3, max_value=16),
    normalized=st.booleans(),
    seed=st.integers(0, 1000),
    rounding=st.sampled_from(["round", "truncate"]),
)
def test_png8_linf_budget_is_exact_after_delivery(eps, normalized, seed, rounding):
    clean = _u8_images(seed)
    scale = IMAGENET_STD if normalized else torch.ones(1, 3, 1, 1)
    budget = Budget("linf", eps / 255, scale)
    g = torch.Generator().manual_seed(seed + 1)
    adv = budget.project(clean + (torch.rand(clean.shape, generator=g) - 0.5) * 4 * eps / 255, clean)
    out = deliver(adv, "png8", clean=clean, budget=budget, rounding=rounding)
    levels = (out * 255).round()
    assert torch.equal(levels, out * 255)  # on the 8-bit grid
    # integer grey-level check: no 0.5/255 overshoot, per channel eps*scale_c
    allowed = torch.floor(eps * scale * 255 / 255 + 1e-4)
    assert torch.all((levels - clean * 255).round().abs() <= allowed)
    # and the nearest in-budget grid point was chosen: never further from adv than 1 grey level
    assert (levels - adv * 255).abs().max() <= 1.0 + 1e-4


@settings(max_examples=25, deadline=None)
@given(eps=st.floats(min_value=1, max_value=400), seed=st.integers(0, 1000))
def test_png8_l2_budget_holds_after_delivery(eps, seed):
    clean = _u8_images(seed)
    budget = Budget("l2", eps / 255, torch.ones(1, 3, 1, 1))
    g = torch.Generator().manual_seed(seed + 7)
    adv = budget.project(clean + torch.randn(clean.shape, generator=g) * 0.1, clean)
    plain = deliver(adv, "png8")
    out = deliver(adv, "png8", clean=clean, budget=budget)
    assert torch.all(budget.size(out - clean) <= eps / 255 + 1e-6)
    assert torch.equal((out * 255).round(), out * 255)
    # the shrink is only as large as needed: the delivered image stays close to plain rounding
    assert torch.all(budget.size(out - clean) >= 0.8 * torch.minimum(budget.size(plain - clean), torch.tensor(eps / 255)))


@pytest.mark.parametrize(
    "spec",
    [
        AttackSpec(method="fgsm", eps=3),
        AttackSpec(method="bim", eps=5, steps=3),
        AttackSpec(method="pgd", eps=4, steps=3),
        AttackSpec(method="pgd", eps=4, steps=3, budget_space="normalized"),
        AttackSpec(method="pgd", eps=300, steps=3, norm="l2"),
        AttackSpec(method="mifgsm", eps=6, steps=3),
        AttackSpec(method="apgd", eps=4, steps=4),
        AttackSpec(method="square", eps=8, queries=30),
        AttackSpec(method="spsa", eps=4, steps=2, queries=8),
        AttackSpec(method="cw", eps=60, norm="l2", cw_steps=10, cw_binary_steps=2),
    ],
    ids=lambda s: s.label(),
)
@pytest.mark.parametrize("mode", ["png8", "float"])
def test_every_attack_stays_within_budget_after_delivery(random_model, spec, mode):
    clean = _u8_images(3, n=4, size=32)
    adv = run_attack(random_model, clean, spec, 2)
    budget = budget_for(spec, random_model.std)
    out = deliver(adv, mode, clean=clean, budget=budget)
    assert torch.all(budget.within(out, clean, atol=1e-6))
    if mode == "png8" and spec.norm == "linf":
        levels = torch.from_numpy(to_u8(out)).permute(0, 3, 1, 2).int() - torch.from_numpy(to_u8(clean)).permute(0, 3, 1, 2).int()
        assert torch.all(levels.abs() <= torch.floor(budget.per_channel_linf() * 255 + 1e-4))


def test_bad_delivery_arguments():
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(InvalidInput, match="unknown delivery"):
        deliver(x, "gif")
    with pytest.raises(InvalidInput, match="jpeg_quality"):
        deliver(x, "jpeg", jpeg_quality=0)
    with pytest.raises(InvalidInput, match="rounding"):
        deliver(x, "png8", rounding="ceil")
    with pytest.raises(InvalidInput, match="differ in shape"):
        deliver(x, "png8", clean=torch.zeros(1, 3, 5, 5), budget=Budget("linf", 1 / 255, torch.ones(1, 3, 1, 1)))
