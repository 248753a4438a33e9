"""Screening uploads through a shop's defense: the purified features, and a detector's score and flag.

The same composition as everywhere else (:class:`~advrec_common.vision.defenses.defended.DefendedModel`,
deployed): the extractor service answers with it (``POST /v1/screen``) and the pipeline can call it
on attacked images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from advrec_common.errors import InvalidInput
from advrec_common.settings import resolve_device
from advrec_common.vision.defenses.base import Defense
from advrec_common.vision.defenses.defended import defend
from advrec_common.vision.model import ImageModel
from services.extractor.fitting_data import to_tensor


@dataclass
class ScreenResult:
    """features (N,D) float32 of the defended images; classes (N,) int64 and probs (N,) float32 (the
    predicted class and its softmax probability); for a detector scores (N,) float32 and flagged (N,)
    bool (None for a transform)."""

    features: np.ndarray
    classes: np.ndarray
    probs: np.ndarray
    scores: np.ndarray | None = None
    flagged: np.ndarray | None = None


def screen_images(model: ImageModel, defense: Defense, images: np.ndarray | torch.Tensor, *, batch_size: int = 64,
                  device: str = "cpu") -> ScreenResult:
    """Screen images (N,H,W,3) uint8, or (N,3,H,W) float in [0,1], of one size through ``defense`` in
    front of ``model`` (both are left on their own device and in their own mode)."""
    if batch_size < 1:
        raise InvalidInput(f"batch_size must be >= 1, got {batch_size}")
    x = to_tensor(images) if isinstance(images, np.ndarray) else images.detach().float()
    if x.shape[0] == 0:
        raise InvalidInput("no images to screen")
    device = resolve_device(device)
    was_training, home = model.training, model.mean.device
    screened = defend(model, defense).to(device).eval()
    parts: dict[str, list[torch.Tensor]] = {"features": [], "logits": [], "scores": [], "flagged": []}
    try:
        for start in range(0, x.shape[0], batch_size):
            s = screened.screen(x[start : start + batch_size].to(device))
            parts["features"].append(s.output.features.float().cpu())
            parts["logits"].append(s.output.logits.float().cpu())
            if s.scores is not None and s.flagged is not None:
                parts["scores"].append(s.scores.float().cpu())
                parts["flagged"].append(s.flagged.cpu())
    finally:
        screened.to(home)
        model.train(was_training)
    probs = torch.cat(parts["logits"]).softmax(dim=1).max(dim=1)
    return ScreenResult(
        features=torch.cat(parts["features"]).numpy(), classes=probs.indices.numpy().astype(np.int64),
        probs=probs.values.numpy(),
        scores=torch.cat(parts["scores"]).numpy() if parts["scores"] else None,
        flagged=torch.cat(parts["flagged"]).numpy() if parts["flagged"] else None,
    )
