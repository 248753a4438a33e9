"""Adaptive attacks: the existing attacks on a defended model (BPDA, EOT, end to end through the
denoiser, a detector-aware objective) against the non-adaptive attacker that ignores the defense."""

from __future__ import annotations

import pytest
import torch

from advrec_common.errors import InvalidInput
from advrec_common.vision.defenses.bit_depth import BitDepth
from advrec_common.vision.defenses.defended import defend
from advrec_common.vision.defenses.detector import Detector
from advrec_common.vision.defenses.resize_pad import ResizePad
from advrec_common.vision.defenses.spec import DefenseSpec
from services.attacker.attacks import run_attack
from services.attacker.spec import AttackSpec
from tests.attacker.conftest import to_images


@pytest.fixture(scope="module")
def held_out(products, standard_model):
    """120 images the models never saw (12 per class) and a target class for each (the next class)."""
    from advrec_common.datasets.demo_images import make_product_images

    x, _, _, _ = make_product_images(12, size=32, seed=5)
    images = to_images(x)
    with torch.no_grad():
        clean = standard_model(images).argmax(1)
    return images, (clean + 1) % standard_model.num_classes


def _after(model, defense, adv, target):
    """(success rate, mean target probability) of adversarial images through the deployed defense."""
    with torch.no_grad():
        probs = defend(model, defense)(adv).softmax(1)
    return float((probs.argmax(1) == target).float().mean()), float(probs[torch.arange(len(adv)), target].mean())


def test_adaptive_bpda_beats_the_non_adaptive_attack_on_bit_depth(standard_model, held_out):
    images, target = held_out
    defense, spec = BitDepth(3), AttackSpec(method="pgd", eps=8, steps=20)
    non_adaptive = run_attack(standard_model, images, spec, target)  # attacks the bare model
    adaptive = run_attack(defend(standard_model, defense, adaptive=True), images, spec, target)  # no new attack code
    sr_n, p_n = _after(standard_model, defense, non_adaptive, target)
    sr_a, p_a = _after(standard_model, defense, adaptive, target)
    assert sr_a > sr_n + 0.1 and p_a > p_n, (sr_a, sr_n, p_a, p_n)
    assert (adaptive - images).abs().max() <= 8 / 255 + 1e-6  # the same budget


def test_adaptive_attack_goes_end_to_end_through_the_denoiser(products, standard_model, held_out):
    """A denoiser trained on the model's PGD examples removes them (the defense built to stop the
    non-adaptive attacker); the attack through it (exact gradient) is not stopped."""
    from services.extractor.denoiser_training import train_denoiser

    x, _, _, _, _ = products
    spec = DefenseSpec(kind="denoiser", epochs=6, batch_size=8, held_out=0.1)
    denoiser, report = train_denoiser(spec, x, standard_model, seed=0)
    assert report["held_out"]["adversarial"][0]["recovered"] > report["held_out"]["adversarial"][0]["recovered_without"]
    images, target = held_out
    attack = AttackSpec(method="pgd", eps=8, steps=10, targeted=False)
    with torch.no_grad():
        clean = standard_model(images).argmax(1)

    def fooled(adv):
        with torch.no_grad():
            return float((defend(standard_model, denoiser)(adv).argmax(1) != clean).float().mean())

    plain = run_attack(standard_model, images, attack, None)
    non_adaptive = fooled(plain)
    adaptive = fooled(run_attack(defend(standard_model, denoiser, adaptive=True), images, attack, None))
    with torch.no_grad():
        bare = float((standard_model(plain).argmax(1) != clean).float().mean())
    assert non_adaptive < bare - 0.2, (non_adaptive, bare)  # the denoiser stops the attack that ignores it
    assert adaptive > non_adaptive + 0.05, (adaptive, non_adaptive)


def test_eot_attack_on_random_resize_pad_is_not_weaker(standard_model, held_out):
    images, target = held_out[0][:40], held_out[1][:40]
    defense, spec = ResizePad(min_scale=0.75, eot_draws=10), AttackSpec(method="pgd", eps=8, steps=10)
    non_adaptive = run_attack(standard_model, images, spec, target)
    adaptive = run_attack(defend(standard_model, defense, adaptive=True), images, spec, target)
    torch.manual_seed(0)  # the deployed defense draws again: judge over several draws
    p_n = sum(_after(standard_model, defense, non_adaptive, target)[1] for _ in range(5))
    torch.manual_seed(0)
    p_a = sum(_after(standard_model, defense, adaptive, target)[1] for _ in range(5))
    assert p_a > p_n, (p_a, p_n)  # a higher target probability through the random defense


def test_detector_aware_attack_evades_the_detector(standard_model, held_out):
    """Feature squeezing flags the non-adaptive attack's images; the detector-aware attack (same PGD, the
    objective minus the detection penalty) mostly evades it and succeeds unflagged more often."""
    images, target = held_out
    with torch.no_grad():
        scores = defend(standard_model, Detector()).screen(images, flags=False).scores
    detector = Detector(penalty=1.0, threshold=float(scores.quantile(0.95)))
    spec = AttackSpec(method="pgd", eps=16, steps=20)
    screened = defend(standard_model, detector)
    results = {}
    for name, model in [("non", standard_model), ("adaptive", defend(standard_model, detector, adaptive=True))]:
        s = screened.screen(run_attack(model, images, spec, target))
        success = s.output.logits.argmax(1) == target
        results[name] = (float(s.flagged.float().mean()), float((success & ~s.flagged).float().mean()))
    assert results["adaptive"][0] < results["non"][0] - 0.2, results  # flagged less
    assert results["adaptive"][1] > results["non"][1] + 0.1, results  # succeeds unflagged more


def test_a_penalised_model_runs_on_the_engine_that_reads_the_penalty(random_model, images):
    """With a zero penalty the detector-aware model is the bare model: pixel PGD through it (our engine)
    equals torchattacks' PGD on the bare model; an attack that reads logits only is refused."""
    aware = defend(random_model, Detector(penalty=0.0), adaptive=True)
    assert aware.penalised
    spec = AttackSpec(method="pgd", eps=8, steps=3, seed=4)
    assert torch.allclose(run_attack(aware, images, spec, 2), run_attack(random_model, images, spec, 2), atol=1e-6)
    for method in ("apgd", "cw"):
        kw = {"norm": "l2", "eps": 0, "cw_steps": 2, "cw_binary_steps": 1} if method == "cw" else {"eps": 8}
        with pytest.raises(InvalidInput, match="detector-aware attack is one of"):
            run_attack(aware, images, AttackSpec(method=method, **kw), 2)


def test_feature_attacks_subtract_the_penalty(random_model, images):
    """feature_match through a detector-aware model with a large penalty ends with lower detection
    scores than without the penalty (same attack, same seed)."""
    target_features = torch.randn(random_model.feature_dim)
    spec = AttackSpec(method="feature_match", eps=16, steps=10)
    scores = {}
    for penalty in (0.0, 100.0):
        adv = run_attack(defend(random_model, Detector(penalty=penalty), adaptive=True), images, spec, None,
                         target_features=target_features)
        scores[penalty] = float(defend(random_model, Detector()).screen(adv, flags=False).scores.mean())
    assert scores[100.0] < scores[0.0], scores
