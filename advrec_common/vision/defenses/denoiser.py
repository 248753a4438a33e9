"""A learned denoiser in front of the extractor (``denoiser``): the idea of HGD (Liao et al. 2018) and
of Denoise-to-protect-VRS (AiD) for visual recommenders, as a small residual CNN (DnCNN-style,
Zhang et al. 2017). It is trained in the extractor domain
(:mod:`services.extractor.denoiser_training`); this module is its architecture and forward pass."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from advrec_common.errors import InvalidInput
from advrec_common.vision.defenses.base import Defense


class Denoiser(Defense):
    """``x - r(x)`` clipped to [0,1], where ``r`` (``depth`` 3x3 convolutions of ``width`` channels with
    ReLUs between) estimates the perturbation. Gradient: exact (the adaptive attacker goes end to end
    through it, as Athalye & Carlini 2018 did against HGD)."""

    kind: ClassVar[str] = "denoiser"
    gradient: ClassVar[str] = "exact"

    def __init__(self, width: int = 16, depth: int = 4):
        super().__init__()
        if not 1 <= int(width) <= 1024 or not 2 <= int(depth) <= 64:
            raise InvalidInput(f"denoiser needs width in 1..1024 and depth in 2..64, got {width}, {depth}")
        self.width, self.depth = int(width), int(depth)
        layers: list[nn.Module] = [nn.Conv2d(3, self.width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(self.depth - 2):
            layers += [nn.Conv2d(self.width, self.width, 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(self.width, 3, 3, padding=1))
        self.residual = nn.Sequential(*layers)
        nn.init.zeros_(layers[-1].weight)  # an untrained denoiser is the identity (Adam moves it from the first step)
        nn.init.zeros_(layers[-1].bias)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.residual(x)).clamp(0.0, 1.0)

    def config(self) -> dict[str, Any]:
        return {"width": self.width, "depth": self.depth}
