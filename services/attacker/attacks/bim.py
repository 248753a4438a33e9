"""BIM / I-FGSM (Kurakin et al. 2017): PGD-L-inf without the random start."""

from __future__ import annotations

from typing import Any, ClassVar

import torchattacks

from services.attacker.attacks.sign_gradient import SignGradientAttack


class BIM(SignGradientAttack):
    name: ClassVar[str] = "bim"
    random_start: ClassVar[bool | None] = False

    def build(self) -> Any:
        return torchattacks.BIM(self.model, eps=self.spec.radius, alpha=self.spec.resolved_step, steps=self.spec.resolved_steps)
