"""The CUDA path: extraction, attacks and recommenders on a GPU agree with the CPU (skipped without one).

benchmarks/gpu.sh runs this file on a lent device; on a CPU-only machine every test is skipped.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def model():
    from advrec_common.vision.backbones import build_model

    torch.manual_seed(0)
    return build_model("small_cnn", [f"c{i}" for i in range(5)]).eval()


def test_extraction_on_cuda_matches_cpu(model):
    from services.extractor.extraction import extract_features

    images = np.random.default_rng(0).integers(0, 256, size=(16, 64, 64, 3), dtype=np.uint8)
    cpu = extract_features(model, images, device="cpu")
    gpu = extract_features(model, images, device="cuda")  # bf16 autocast: agreement to bf16 precision
    np.testing.assert_allclose(gpu.features, cpu.features, rtol=5e-2, atol=5e-2)
    assert (gpu.classes == cpu.classes).mean() >= 0.9
    model.to("cpu")


def test_attack_on_cuda_stays_in_budget_and_moves_the_logits(model):
    from services.attacker.attacks import run_attack
    from services.attacker.spec import AttackSpec

    x = torch.rand(8, 3, 64, 64)
    adv = run_attack(model, x, AttackSpec(method="pgd", eps=8, steps=5, seed=0), 1, device="cuda")
    assert adv.device.type == "cpu" and (adv - x).abs().max() <= 8 / 255 + 1e-6
    with torch.no_grad():
        assert model(adv)[:, 1].mean() > model(x)[:, 1].mean()


@pytest.mark.parametrize("name", ["bprmf", "vbpr", "amr"])  # AMR: epoch 2 adversarial
def test_recommender_fit_and_scores_on_cuda_match_cpu(name):
    from services.recommender.items import ItemSide
    from services.recommender.models import build_recommender
    from services.recommender.synthetic import make_interactions

    inter, items = make_interactions(200, 120, 2000, 16, seed=0)
    side = None if name == "bprmf" else ItemSide(features=items.features)
    scores = {}
    for dev in ("cpu", "cuda"):
        m = build_recommender(name, inter.n_users, inter.n_items, {"epochs": 2, "seed": 0, "device": dev, "patience": 0})
        m.fit(inter, side)
        scores[dev] = m.score(torch.arange(10)).cpu()
    torch.testing.assert_close(scores["cuda"], scores["cpu"], rtol=1e-3, atol=1e-3)
