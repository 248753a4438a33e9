"""What fitting a defense reads: a seeded held-out split, catalog images as tensors, the extractor's
predictions and its untargeted PGD examples (:func:`~services.extractor.training.pgd_attack`, the
``torchattacks.PGD`` that PGD-AT uses)."""

from __future__ import annotations

import numpy as np
import torch

from advrec_common.errors import InvalidInput
from advrec_common.vision.model import ImageModel
from services.extractor.training import pgd_attack


def held_out_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit indices, held-out indices) of ``n`` images: a seeded random ``fraction`` held out (>= 1 each)."""
    if n < 2:
        raise InvalidInput(f"fitting a defense needs at least 2 images, got {n}")
    order = np.random.default_rng([seed, 21]).permutation(n)
    n_held = min(n - 1, max(1, round(fraction * n)))
    return np.sort(order[n_held:]), np.sort(order[:n_held])


def to_tensor(images_u8: np.ndarray) -> torch.Tensor:
    """(N,H,W,3) uint8 -> (N,3,H,W) float in [0,1]."""
    images_u8 = np.asarray(images_u8)
    if images_u8.ndim != 4 or images_u8.shape[-1] != 3 or images_u8.dtype != np.uint8:
        raise InvalidInput(f"images must be (N,H,W,3) uint8, got {images_u8.shape} {images_u8.dtype}")
    return torch.from_numpy(np.ascontiguousarray(images_u8)).permute(0, 3, 1, 2).float().div(255.0).contiguous()


@torch.no_grad()
def predict(model: ImageModel, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N,) the model's predicted classes."""
    return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, x.shape[0], batch_size)])


def pgd_examples(model: ImageModel, x: torch.Tensor, eps: float, steps: int, batch_size: int = 128) -> torch.Tensor:
    """Untargeted L-inf PGD (eps in /255, random start) of ``x`` against the model's own predictions."""
    labels = predict(model, x)
    attack = pgd_attack(model, eps, steps)
    return torch.cat([attack(x[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])
