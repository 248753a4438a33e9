"""FGSM (Goodfellow et al. 2015), targeted: x' = x - eps * sign(grad_x CE(f(x), y_target))."""

from __future__ import annotations

from typing import Any, ClassVar

import torchattacks

from services.attacker.attacks.sign_gradient import SignGradientAttack


class FGSM(SignGradientAttack):
    name: ClassVar[str] = "fgsm"
    random_start: ClassVar[bool | None] = False

    def build(self) -> Any:
        return torchattacks.FGSM(self.model, eps=self.spec.resolved_step)
