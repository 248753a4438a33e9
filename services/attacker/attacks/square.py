"""Square attack (Andriushchenko et al. 2020): score-based black-box random search, via torchattacks.

Only the model's logits are queried (no gradients); ``queries`` is the per-image query budget.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torchattacks

from services.attacker.attacks.base import TorchattacksAttack


class Square(TorchattacksAttack):
    name: ClassVar[str] = "square"

    def build(self) -> Any:
        s = self.spec
        return torchattacks.Square(
            self.model, norm="Linf" if s.norm == "linf" else "L2", eps=s.radius, n_queries=s.resolved_queries,
            n_restarts=1, seed=s.seed, loss="margin",
        )
