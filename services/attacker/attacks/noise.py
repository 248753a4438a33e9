"""``noise``: a random perturbation within the budget, the attack that knows nothing.

Uniform over the L-inf ball (every value moved by a uniform amount in [-eps, eps]) or uniform in
direction with a uniform radius in the L2 ball, seeded by the spec. It is the baseline a real attack
must beat and, against its placebo (the same values shuffled), a null cell by construction: the
calibration benchmark (``benchmarks/calibration.py``) runs it through the pipeline to measure how
often advrec's verdicts call noise significant.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from services.attacker.attacks.base import Attack
from services.attacker.attacks.projected_gradient import _random_start


class Noise(Attack):
    """A seeded random point of the budget's ball around each image."""

    name: ClassVar[str] = "noise"

    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        s = self.spec
        if s.budget_space == "normalized":
            z = self.model.normalize(images)
            return self.model.denormalize(z + _random_start(z, s.radius, s.norm))
        return images + _random_start(images, s.radius, s.norm)
