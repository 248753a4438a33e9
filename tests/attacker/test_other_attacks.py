"""C&W (foolbox), APGD, Square, SPSA; bad inputs."""

from __future__ import annotations

import pytest
import torch

from advrec_common.errors import InvalidInput
from services.attacker.attacks import run_attack
from services.attacker.spec import AttackSpec


@pytest.fixture(scope="module")
def test_batch(products):
    _, _, _, xt, yt = products
    x = torch.from_numpy(xt[:8]).permute(0, 3, 1, 2).float() / 255
    return x, torch.from_numpy((yt[:8] + 1) % 10)


def test_cw_finds_small_l2_adversarials(standard_model, test_batch):
    x, target = test_batch
    spec = AttackSpec(method="cw", eps=0, norm="l2", cw_binary_steps=4, cw_steps=50, cw_lr=0.05, cw_c=1.0)
    adv = run_attack(standard_model, x, spec, target)
    with torch.no_grad():
        hit = standard_model(adv).argmax(1) == target
        half = standard_model(x + 0.5 * (adv - x)).argmax(1) == target
    l2 = (adv - x).flatten(1).norm(dim=1)
    assert hit.float().mean() >= 0.75
    assert torch.equal(adv[~hit], x[~hit])  # nothing found: the clean image comes back
    # near-minimal: the L-inf PGD perturbations that reach the target are several times larger in L2,
    # and half of the C&W perturbation no longer reaches it
    pgd = run_attack(standard_model, x, AttackSpec(method="pgd", eps=16, steps=10, step_size=4), target)
    assert l2[hit].median() < 0.5 * (pgd - x).flatten(1).norm(dim=1).median()
    assert (~half[hit]).float().mean() >= 0.75


def test_apgd_targeted_beats_its_start(standard_model, test_batch):
    x, target = test_batch
    adv = run_attack(standard_model, x, AttackSpec(method="apgd", eps=8, steps=10), target)
    with torch.no_grad():
        p_clean = standard_model(x).softmax(1)[torch.arange(8), target]
        p_adv = standard_model(adv).softmax(1)[torch.arange(8), target]
    assert (adv - x).abs().max() <= 8 / 255 + 1e-6
    assert (p_adv > p_clean).float().mean() >= 0.75


def test_square_is_black_box_and_returns_only_successes(standard_model, test_batch):
    x, target = test_batch
    adv = run_attack(standard_model, x, AttackSpec(method="square", eps=16, queries=200), target)
    changed = (adv != x).flatten(1).any(1)
    with torch.no_grad():
        pred = standard_model(adv).argmax(1)
    assert changed.any()
    assert torch.all(pred[changed] == target[changed])
    assert (adv - x).abs().max() <= 16 / 255 + 1e-6


def test_spsa_raises_the_target_margin(standard_model, test_batch):
    x, target = test_batch
    adv = run_attack(standard_model, x[:4], AttackSpec(method="spsa", eps=8, steps=5, queries=32), target[:4])

    def margin(z):
        with torch.no_grad():
            logits = standard_model(z)
        t = logits[torch.arange(4), target[:4]]
        others = logits.scatter(1, target[:4, None], -float("inf")).amax(1)
        return t - others

    assert (margin(adv) - margin(x[:4])).mean() > 0
    assert (adv - x[:4]).abs().max() <= 8 / 255 + 1e-6


@pytest.mark.parametrize(
    ("images", "target", "message"),
    [
        (torch.zeros(0, 3, 32, 32), 1, "empty batch"),
        (torch.zeros(2, 32, 32), 1, r"must be \(N,3,H,W\)"),
        (torch.zeros(2, 1, 32, 32), 1, r"must be \(N,3,H,W\)"),
        (torch.full((2, 3, 32, 32), float("nan")), 1, "NaN"),
        (torch.full((2, 3, 32, 32), 2.0), 1, r"in \[0,1\]"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), 1, "float tensor"),
        (torch.zeros(2, 3, 32, 32), 5, "out of range"),
        (torch.zeros(2, 3, 32, 32), -1, "out of range"),
        (torch.zeros(2, 3, 32, 32), torch.tensor([1, 2, 3]), "shape"),
        (torch.zeros(2, 3, 32, 32), None, "needs a target"),
    ],
)
def test_bad_inputs_raise_invalid_input(random_model, images, target, message):
    with pytest.raises(InvalidInput, match=message):
        run_attack(random_model, images, AttackSpec(method="fgsm", eps=4), target)


def test_bad_batch_size_and_extra_arguments(random_model, images):
    with pytest.raises(InvalidInput, match="batch_size"):
        run_attack(random_model, images, AttackSpec(method="fgsm", eps=4), 1, batch_size=0)
    with pytest.raises(InvalidInput, match="no extra arguments"):
        run_attack(random_model, images, AttackSpec(method="fgsm", eps=4), 1, score_fn=lambda f: f.sum(1))


def test_progress_after_every_batch_and_it_can_stop_the_attack(random_model, images):
    """``progress`` gets {"done", "total", "unit": "images"} after each batch and, within a batch, as the
    network's forward passes cover more images; an exception it raises (a cancellation, Ctrl-C) stops
    the attack there, and reporting progress does not change the result."""
    from services.attacker.core import attack_and_measure

    calls: list[dict] = []
    spec = AttackSpec(method="pgd", eps=4, steps=4)
    adv = run_attack(random_model, images, spec, 1, batch_size=4, progress=calls.append)
    assert {c["unit"] for c in calls} == {"images"} and {c["total"] for c in calls} == {6}
    done = [c["done"] for c in calls]
    assert done == sorted(done) and done[-1] == 6 and 4 in done  # after each batch
    assert any(0 < d < 4 for d in done)  # and inside the first batch, never its end before it is done
    assert torch.equal(adv, run_attack(random_model, images, spec, 1, batch_size=4))

    class Stop(Exception):
        pass

    def stop(info: dict) -> None:
        raise Stop(info["done"])

    with pytest.raises(Stop):
        attack_and_measure(random_model, images, spec, 1, batch_size=2, progress=stop)
    assert not random_model.body._forward_hooks  # the progress hook is removed, even on an exception

    # a long C&W batch: the callback (where a cancellation is noticed) runs at every forward pass
    passes: list[int] = []

    def stop_after_ten(info: dict) -> None:
        passes.append(info["done"])
        if len(passes) == 10:
            raise Stop(info["done"])

    cw = AttackSpec(method="cw", eps=0, norm="l2", cw_binary_steps=5, cw_steps=1000)
    with pytest.raises(Stop):
        run_attack(random_model, images, cw, 1, batch_size=6, progress=stop_after_ten)
    assert passes == [0] * 10  # 10 passes of the expected 5,000 per batch: no image counted yet, stopped anyway


@pytest.mark.parametrize(("method", "norm"), [("pgd", "l2"), ("apgd", "l2"), ("square", "l2"), ("pgd", "linf")])
def test_catalog_images_as_a_permuted_view_attack_like_contiguous_ones(random_model, images, method, norm):
    """Catalog images reach the attacks as a permuted (N,H,W,3) -> (N,3,H,W) view; torchattacks' L2 attacks
    flatten with .view() and failed on it ('view size is not compatible') -- PGD L2 in any spec."""
    import torch

    from services.attacker.attacks import run_attack
    from services.attacker.spec import AttackSpec

    permuted = images.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    assert not permuted.is_contiguous() and torch.equal(permuted, images)
    spec = AttackSpec(method=method, eps=8, norm=norm, steps=2, seed=0)
    torch.manual_seed(0)
    from_view = run_attack(random_model, permuted, spec, 1)
    torch.manual_seed(0)
    assert torch.equal(from_view, run_attack(random_model, images.contiguous(), spec, 1))
