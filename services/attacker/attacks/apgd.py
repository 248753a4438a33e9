"""APGD (Croce & Hein 2020) with a targeted cross-entropy loss, on torchattacks' APGD.

torchattacks' APGD is untargeted only and its APGDT cycles through the top-k classes instead of
a given target, so we keep APGD's step-size schedule (``attack_single_run``) and swap its loss for
``-CE(logits, y_target)``; each image returns its best-loss iterate over ``n_restarts``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
import torchattacks

from services.attacker.attacks.base import TorchattacksAttack


class _TargetedAPGD(torchattacks.APGD):
    """APGD maximising -CE(logits, target); 'dlr' is the slot APGD calls for a custom loss."""

    def __init__(self, *args: Any, targeted: bool = True, **kwargs: Any):
        super().__init__(*args, loss="dlr", **kwargs)
        self._targeted_loss = targeted

    def dlr_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(x, y, reduction="none")
        return -ce if self._targeted_loss else ce

    def perturb(self, x_in: torch.Tensor, y_in: torch.Tensor, best_loss: bool = False, cheap: bool = True):  # noqa: ANN201
        best = x_in.clone()
        best_val = torch.full((x_in.shape[0],), -float("inf"), device=x_in.device)
        for _ in range(self.n_restarts):
            x_best, _, loss_best, _ = self.attack_single_run(x_in, y_in)
            better = loss_best > best_val
            best[better] = x_best[better]
            best_val = torch.where(better, loss_best, best_val)
        return None, best


class APGD(TorchattacksAttack):
    name: ClassVar[str] = "apgd"

    def build(self) -> Any:
        s = self.spec
        return _TargetedAPGD(
            self.model, norm="Linf" if s.norm == "linf" else "L2", eps=s.radius, steps=s.resolved_steps,
            n_restarts=1, seed=s.seed, targeted=self.targeted,
        )

    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        atk = self.build()  # targeted through its loss: torchattacks' targeted mode does not apply
        atk.set_device(self.device)
        return atk(images, labels)
