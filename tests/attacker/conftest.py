"""Attacker test fixtures: tiny models on 32x32 demo products (trained once per session)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from advrec_common.vision.backbones import build_model

torch.set_num_threads(1)  # the CI box is small and shared; one thread is much faster there


def to_images(u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(u8.astype(np.float32)).permute(0, 3, 1, 2) / 255.0


@pytest.fixture(scope="session")
def products():
    """(train images u8, labels, class names, test images u8, test labels) at 32x32."""
    from advrec_common.datasets.demo_images import make_product_images

    x, y, names, _ = make_product_images(20, size=32, seed=0)
    xt, yt, _, _ = make_product_images(3, size=32, seed=5)
    return x, y, names, xt, yt


def _train(products, method: str, epochs: int):
    from services.extractor.training import TrainConfig, train_extractor

    x, y, names, _, _ = products
    cfg = TrainConfig(method=method, epochs=epochs, batch_size=32, optimizer="adam", lr=3e-3, weight_decay=0,
                      eps=8, pgd_steps=2, eval_steps=2, seed=0)
    model, report = train_extractor(x, y, names, "small_cnn", cfg)
    return model.cpu().eval()


@pytest.fixture(scope="session")
def standard_model(products):
    """An undefended small CNN (Adam, 6 epochs)."""
    return _train(products, "standard", 6)


@pytest.fixture(scope="session")
def robust_model(products):
    """A PGD-adversarially-trained small CNN (eps 8/255, 2 PGD steps, 5 epochs)."""
    return _train(products, "pgd_at", 5)


@pytest.fixture
def random_model():
    """An untrained small CNN with fixed weights (fast; for exact-arithmetic tests)."""
    torch.manual_seed(0)
    return build_model("small_cnn", [f"c{i}" for i in range(5)]).eval()


@pytest.fixture
def images():
    """6 random 8-bit images (N,3,32,32) in [0,1]."""
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (6, 3, 32, 32), generator=g).float() / 255.0
