"""SPSA (Uesato et al. 2018): black-box gradient estimate by simultaneous perturbation, via torchattacks.

As in the study's CleverHans call: L-inf eps/255, ``steps`` iterations (100), ``queries`` random
directions per estimate (128), delta 0.01, Adam lr 0.01 on the perturbation.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torchattacks

from services.attacker.attacks.base import TorchattacksAttack


class SPSA(TorchattacksAttack):
    name: ClassVar[str] = "spsa"

    def build(self) -> Any:
        s = self.spec
        n = s.resolved_queries
        return torchattacks.SPSA(
            self.model, eps=s.radius, delta=0.01, lr=0.01, nb_iter=s.resolved_steps, nb_sample=n, max_batch_size=min(n, 64)
        )
