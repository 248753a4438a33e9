"""MI-FGSM (Dong et al. 2018): signed steps of an accumulated, L1-normalised gradient (momentum ``decay``)."""

from __future__ import annotations

from typing import Any, ClassVar

import torchattacks

from services.attacker.attacks.sign_gradient import SignGradientAttack


class MIFGSM(SignGradientAttack):
    name: ClassVar[str] = "mifgsm"
    random_start: ClassVar[bool | None] = False
    momentum: ClassVar[bool] = True

    def build(self) -> Any:
        s = self.spec
        return torchattacks.MIFGSM(self.model, eps=s.radius, alpha=s.resolved_step, steps=s.resolved_steps, decay=s.decay)
