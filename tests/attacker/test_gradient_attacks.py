"""FGSM/BIM/PGD/MI-FGSM: closed form, agreement with torchattacks, normalised budget, seeding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchattacks

from services.attacker.attacks import ATTACKS, run_attack
from services.attacker.spec import AttackSpec


def _grad(model, x, label):
    x = x.clone().requires_grad_(True)
    F.cross_entropy(model(x), label).backward()
    return x.grad


@pytest.mark.parametrize("targeted", [True, False])
def test_fgsm_is_the_closed_form(random_model, images, targeted):
    target = torch.full((images.shape[0],), 3)
    with torch.no_grad():
        clean_cls = random_model(images).argmax(1)
    label = target if targeted else clean_cls
    g = _grad(random_model, images, label)
    sign = -1.0 if targeted else 1.0  # targeted descends CE(target), untargeted ascends CE(clean class)
    expected = (images + sign * 8 / 255 * g.sign()).clamp(0, 1)
    adv = run_attack(random_model, images, AttackSpec(method="fgsm", eps=8, targeted=targeted), target if targeted else None)
    assert torch.equal(adv, expected)


def _ours(model, images, spec, labels, space="pixel"):
    attack = ATTACKS[spec.method](model, spec, "cpu")
    torch.manual_seed(spec.seed)
    return attack.perturb_own(images, labels, space=space).clamp(0, 1)


def test_own_fgsm_equals_torchattacks_exactly(random_model, images):
    spec = AttackSpec(method="fgsm", eps=4)
    labels = torch.full((images.shape[0],), 2)
    ref = torchattacks.FGSM(random_model, eps=4 / 255)
    ref.set_mode_targeted_by_label(quiet=True)
    assert torch.equal(_ours(random_model, images, spec, labels), ref(images, labels))


@pytest.mark.parametrize(
    ("method", "ref"),
    [
        ("pgd", lambda m: torchattacks.PGD(m, eps=8 / 255, alpha=2 / 255, steps=5, random_start=False)),
        ("bim", lambda m: torchattacks.BIM(m, eps=8 / 255, alpha=2 / 255, steps=5)),
        ("mifgsm", lambda m: torchattacks.MIFGSM(m, eps=8 / 255, alpha=2 / 255, steps=5, decay=1.0)),
    ],
)
def test_own_iterative_attacks_match_torchattacks(random_model, images, method, ref):
    spec = AttackSpec(method=method, eps=8, steps=5, step_size=2, random_start=False)
    labels = torch.full((images.shape[0],), 1)
    atk = ref(random_model)
    atk.set_mode_targeted_by_label(quiet=True)
    expected = atk(images, labels)
    assert torch.allclose(_ours(random_model, images, spec, labels), expected, atol=1e-6)


def test_own_pgd_random_start_matches_torchattacks_with_the_same_seed(random_model, images):
    spec = AttackSpec(method="pgd", eps=8, steps=3, step_size=2, random_start=True, seed=7)
    labels = torch.full((images.shape[0],), 4)
    atk = torchattacks.PGD(random_model, eps=8 / 255, alpha=2 / 255, steps=3, random_start=True)
    atk.set_mode_targeted_by_label(quiet=True)
    torch.manual_seed(7)
    expected = atk(images, labels)
    assert torch.allclose(_ours(random_model, images, spec, labels), expected, atol=1e-6)


@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_normalized_budget_is_eps_times_std_per_channel(random_model, images, method):
    spec = AttackSpec(method=method, eps=8, budget_space="normalized", steps=4 if method == "pgd" else None)
    adv = run_attack(random_model, images, spec, 2)
    per_channel = (adv - images).abs().amax(dim=(0, 2, 3))
    limit = 8 / 255 * random_model.std.view(3)
    assert torch.all(per_channel <= limit + 1e-6)
    # FGSM moves every pixel by the full budget unless clipped at 0/1: the bound is attained
    assert torch.allclose(per_channel, limit, atol=1e-5)
    pixel = run_attack(random_model, images, AttackSpec(method=method, eps=8, steps=spec.steps), 2)
    assert (pixel - images).abs().max() > per_channel.max() * 3  # ImageNet std ~0.23: a ~4x smaller budget


def test_normalized_space_skips_the_clip_inside_iterations(random_model):
    """The study's engine may leave [0,1] during the iterations; the returned images are clamped."""
    x = torch.ones(2, 3, 32, 32)  # white images: any positive step leaves [0,1]
    spec = AttackSpec(method="pgd", eps=16, steps=2, budget_space="normalized", random_start=False)
    attack = ATTACKS["pgd"](random_model, spec, "cpu")
    raw = attack.perturb_own(x, torch.tensor([0, 1]), space="normalized")
    assert raw.max() > 1.0
    out = run_attack(random_model, x, spec, torch.tensor([0, 1]))
    assert out.max() <= 1.0 and out.min() >= 0.0


def test_seeded_and_reproducible(random_model, images):
    spec = AttackSpec(method="pgd", eps=8, steps=2, seed=3)
    a = run_attack(random_model, images, spec, 1)
    b = run_attack(random_model, images, spec, 1)
    c = run_attack(random_model, images, spec.model_copy(update={"seed": 4}), 1)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_batching_does_not_change_deterministic_attacks(random_model, images):
    spec = AttackSpec(method="bim", eps=8, steps=3)
    assert torch.allclose(run_attack(random_model, images, spec, 1, batch_size=4),
                          run_attack(random_model, images, spec, 1, batch_size=64), atol=1e-6)


def test_model_mode_is_restored(random_model, images):
    random_model.train()
    run_attack(random_model, images, AttackSpec(method="fgsm", eps=2), 0)
    assert random_model.training


def test_targeted_pgd_succeeds_on_undefended_and_less_on_adversarially_trained(products, standard_model, robust_model):
    _, _, _, xt, yt = products
    x = torch.from_numpy(xt).permute(0, 3, 1, 2).float() / 255
    target = torch.from_numpy((yt + 1) % 10)
    spec = AttackSpec(method="pgd", eps=16, steps=10, step_size=4)
    rates = {}
    for name, model in (("standard", standard_model), ("robust", robust_model)):
        adv = run_attack(model, x, spec, target)
        with torch.no_grad():
            rates[name] = (model(adv).argmax(1) == target).float().mean().item()
    assert rates["standard"] >= 0.7, rates
    assert rates["robust"] <= rates["standard"] - 0.2, rates
