"""Fitting defenses in the extractor domain: the detector's threshold and its false-positive rate on
held-out clean images, the denoiser's training, seeding, and the defense artifact a run stores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from advrec_common.errors import InvalidInput
from advrec_common.vision.defenses.artifact import defense_info, load_defense_artifact
from advrec_common.vision.defenses.detector import Detector
from advrec_common.vision.defenses.jpeg import Jpeg
from advrec_common.vision.defenses.spec import DefenseSpec
from services.extractor.defense_fitting import fit_defense
from services.extractor.denoiser_training import train_denoiser
from services.extractor.detector_calibration import calibrate_detector, conformal_threshold, detector_scores
from services.extractor.fitting_data import held_out_split, to_tensor


@pytest.fixture(scope="module")
def classifier():
    """A small CNN trained on 32 px demo products (95 % held-out accuracy: its softmax means something)."""
    from advrec_common.datasets.demo_images import make_product_images
    from services.extractor.training import TrainConfig, train_extractor

    x, y, names, _ = make_product_images(20, size=32, seed=0)
    cfg = TrainConfig(method="standard", epochs=10, batch_size=32, optimizer="adam", lr=3e-3, weight_decay=0,
                      eps=4, eval_steps=1, seed=0)
    model, _ = train_extractor(x, y, names, "tiny_cnn", cfg)
    return model.cpu().eval()


@pytest.fixture(scope="module")
def catalog():
    """400 clean 32 px images (N,H,W,3) uint8 the classifier never saw, and 400 more for a fresh check."""
    from advrec_common.datasets.demo_images import make_product_images

    return make_product_images(40, size=32, seed=7)[0], make_product_images(40, size=32, seed=8)[0]


@pytest.fixture(scope="module")
def products_32():
    """The classifier's own 200 training images (what a shop's denoiser is trained on: its catalog)."""
    from advrec_common.datasets.demo_images import make_product_images

    return make_product_images(20, size=32, seed=0)[0]


def _fpr_sigma(p: float, n_held: int, n_cal: int) -> float:
    """Binomial standard error of a held-out rate whose threshold was itself estimated on n_cal images."""
    return math.sqrt(p * (1 - p) * (1 / n_held + 1 / n_cal))


def test_detector_threshold_gives_its_false_positive_rate_on_held_out_clean_images(classifier, catalog):
    images, fresh = catalog
    spec = DefenseSpec(kind="detector", fpr=0.1, held_out=0.5, pgd_steps=5)
    detector, report = calibrate_detector(spec, images, classifier, seed=0)
    n_cal, n_held = report["n_calibration"], report["n_held_out"]
    assert (n_cal, n_held) == (200, 200)
    # the report's rate is what the threshold does on the held-out images
    fit_idx, held_idx = held_out_split(len(images), 0.5, 0)
    scores = detector_scores(classifier, detector, to_tensor(images)).numpy()
    assert report["false_positive"]["flagged"] == int((scores[held_idx] > detector.threshold).sum())
    assert (scores[fit_idx] > detector.threshold).mean() <= 0.1  # at most fpr on the calibration images
    sigma = _fpr_sigma(0.1, n_held, n_cal)
    assert abs(report["false_positive"]["rate"] - 0.1) <= 3 * sigma, report["false_positive"]
    lo, hi = report["false_positive"]["interval"]
    assert lo <= report["false_positive"]["rate"] <= hi
    # on clean images drawn afresh from the same catalog generator, within binomial error too
    fresh_scores = detector_scores(classifier, detector, to_tensor(fresh)).numpy()
    assert abs((fresh_scores > detector.threshold).mean() - 0.1) <= 3 * _fpr_sigma(0.1, len(fresh), n_cal)
    # PGD examples move the softmax under squeezing more than clean images do
    assert report["true_positive"]["rate"] > report["false_positive"]["rate"]


def test_the_conformal_threshold_holds_its_rate_on_average_over_splits(classifier, catalog):
    """Over many random calibration/held-out splits the held-out false-positive rate averages to fpr
    (the split-conformal guarantee: between fpr - 1/(n+1) and fpr)."""
    scores = detector_scores(classifier, Detector(), to_tensor(catalog[0])).numpy()
    rates = []
    for seed in range(200):
        fit_idx, held_idx = held_out_split(len(scores), 0.5, seed)
        rates.append((scores[held_idx] > conformal_threshold(scores[fit_idx], 0.05)).mean())
    mean, spread = float(np.mean(rates)), float(np.std(rates)) / math.sqrt(len(rates))
    assert 0.05 - 1 / 201 - 3 * spread <= mean <= 0.05 + 3 * spread, (mean, spread)


def test_too_few_calibration_images_is_a_clear_error(classifier, catalog):
    with pytest.raises(InvalidInput, match="needs at least 19 calibration images"):
        calibrate_detector(DefenseSpec(kind="detector", fpr=0.05, held_out=0.5), catalog[0][:30], classifier)


def test_fitting_is_seeded(classifier, catalog):
    images = catalog[0][:60]
    spec = DefenseSpec(kind="detector", fpr=0.2, pgd_steps=2)
    first, second = (calibrate_detector(spec, images, classifier, seed=3)[1] for _ in range(2))
    assert first["threshold"] == second["threshold"] and first["true_positive"] == second["true_positive"]
    den = DefenseSpec(kind="denoiser", width=4, depth=2, epochs=1, batch_size=16, pgd_steps=2)
    a, report = train_denoiser(den, images, classifier, seed=1)
    b, _ = train_denoiser(den, images, classifier, seed=1)
    c, _ = train_denoiser(den, images, classifier, seed=2)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert any(not torch.equal(a.state_dict()[k], c.state_dict()[k]) for k in a.state_dict())
    assert report["n_fit"] + report["n_held_out"] == 60 and len(report["history"]) == 1
    assert all(p.requires_grad for p in classifier.parameters())  # the guide is frozen only while training


def test_the_denoiser_gives_adversarial_images_their_class_back(products_32, classifier):
    """Trained on the classifier's PGD examples, the denoiser restores the clean class of held-out PGD
    examples more often than no denoiser does, and keeps most clean images' class."""
    spec = DefenseSpec(kind="denoiser", epochs=6, batch_size=8, held_out=0.2)
    _, report = train_denoiser(spec, products_32, classifier, seed=0)
    (adv,) = report["held_out"]["adversarial"]
    assert adv["eps"] == 8.0 and adv["recovered"] > adv["recovered_without"] + 0.3, report["held_out"]
    assert report["held_out"]["clean_agreement"] >= 0.8


def test_fit_defense_builds_transforms_and_needs_images_for_the_fitted_kinds(classifier):
    module, report = fit_defense(DefenseSpec(kind="jpeg", quality=40), None, classifier)
    assert isinstance(module, Jpeg) and module.quality == 40 and report == {}
    for kind in ("denoiser", "detector"):
        with pytest.raises(InvalidInput, match="fitted on the catalog's clean images"):
            fit_defense(DefenseSpec(kind=kind), None, classifier)


def test_write_fitted_defense_stores_what_the_attacker_loads(store, classifier):
    """The extractor domain's artifact writer: fitted on the catalog at the model's size, read back by
    the shared loader (the attacker's way in)."""
    from advrec_common.datasets.demo import DemoConfig, make_demo_dataset
    from services.extractor.artifacts import write_fitted_defense

    ds = make_demo_dataset(DemoConfig(n_items=60, n_users=20, image_size=48, seed=0))
    spec = DefenseSpec(kind="detector", fpr=0.2, pgd_steps=2)
    with store.writing("d" * 64, {"kind": "defense"}) as out:  # catalog images brought to 32 px
        summary = write_fitted_defense(out, spec, ds, classifier, extractor_key="e" * 64, image_size=32, seed=0)
    info = defense_info(store, "d" * 64)
    assert info["kind"] == "detector" and info["extractor"] == "e" * 64 and info["params"] == spec.params()
    detector = load_defense_artifact(store, "d" * 64, extractor="e" * 64)
    assert detector.threshold == summary["report"]["threshold"] == info["report"]["threshold"]
    with store.writing("f" * 64, {"kind": "defense"}) as out:  # a transform reads no image
        write_fitted_defense(out, DefenseSpec(kind="median"), ds, classifier, extractor_key="e" * 64)
    assert defense_info(store, "f" * 64)["config"] == {"window": 3}
