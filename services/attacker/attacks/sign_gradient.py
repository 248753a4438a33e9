"""Shared base of the signed-gradient family (FGSM, BIM, PGD, MI-FGSM).

Pixel budgets run torchattacks (the reference implementation); the study's normalised budget
runs our :func:`projected_gradient` on the normalised tensor, which torchattacks cannot do, and so
does a model whose outputs carry a penalty (a detector-aware composition), which torchattacks
cannot read.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from services.attacker.attacks.base import TorchattacksAttack
from services.attacker.attacks.projected_gradient import projected_gradient, targeted_ce, untargeted_ce


class SignGradientAttack(TorchattacksAttack):
    """A torchattacks attack in pixel space, our engine in normalised space."""

    random_start: ClassVar[bool | None] = None  # None: from the spec; False: never (FGSM, BIM, MI-FGSM)
    momentum: ClassVar[bool] = False

    def use_random_start(self) -> bool:
        return self.spec.random_start if self.random_start is None else self.random_start

    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.spec.budget_space == "pixel" and not self.model.penalised:
            return super().perturb(images, labels)
        # torchattacks reads logits only: a penalised model's penalty needs our engine (same arithmetic)
        return self.perturb_own(images, labels, space=self.spec.budget_space)

    def perturb_own(self, images: torch.Tensor, labels: torch.Tensor, space: str) -> torch.Tensor:
        """Our engine with this attack's parameters in ``space`` ('pixel' is used to cross-check torchattacks)."""
        return projected_gradient(
            self.model,
            images,
            labels,
            targeted_ce if self.targeted else untargeted_ce,
            radius=self.spec.radius,
            step=self.spec.resolved_step,
            steps=self.spec.resolved_steps,
            norm=self.spec.norm,
            space=space,
            random_start=self.use_random_start(),
            decay=self.spec.decay if self.momentum else 0.0,
        )
