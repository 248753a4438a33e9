"""PGD (Madry et al. 2018), L-inf or L2, random start; the study: eps/255, step eps/6, 10 steps."""

from __future__ import annotations

from typing import Any, ClassVar

import torchattacks

from services.attacker.attacks.sign_gradient import SignGradientAttack


class PGD(SignGradientAttack):
    name: ClassVar[str] = "pgd"

    def build(self) -> Any:
        s = self.spec
        cls = torchattacks.PGD if s.norm == "linf" else torchattacks.PGDL2
        return cls(self.model, eps=s.radius, alpha=s.resolved_step, steps=s.resolved_steps, random_start=s.random_start)
