"""The shared plumbing of every attack: model, spec, device, targeted mode, budget and input range.

A subclass is mostly its :meth:`Attack.perturb`; it receives images (N,3,H,W) float in [0,1] on
``self.device`` and labels (N,) -- the target classes when ``self.targeted`` else the clean
classes -- and returns adversarial images (N,3,H,W) in [0,1]. :meth:`Attack.__call__` then
projects onto the pixel budget (a no-op up to float error for attacks that already respect it).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from advrec_common.errors import InvalidInput
from advrec_common.vision.model import ImageModel
from services.attacker.budget import Budget, budget_for
from services.attacker.spec import METHODS, AttackSpec, MethodInfo


class Attack:
    """Base class; subclasses set ``name`` (a key of :data:`~services.attacker.spec.METHODS`, which
    holds what the method supports) and implement :meth:`perturb`."""

    name: ClassVar[str] = "attack"

    @classmethod
    def info(cls) -> MethodInfo:
        """The method's capabilities (norms, budget spaces, eps = 0, labels), from the spec data."""
        return METHODS[cls.name]

    def __init__(self, model: ImageModel, spec: AttackSpec, device: str | torch.device = "cpu", **extra: Any):
        self.model = model
        self.spec = spec
        self.device = torch.device(device)
        self.targeted = spec.targeted
        self.budget: Budget | None = budget_for(spec, model.std)
        self.extra = extra
        self.check_extra()
        if model.penalised and not self.info().reads_penalty:
            readers = sorted(name for name, info in METHODS.items() if info.reads_penalty)
            raise InvalidInput(f"attack {self.name!r} reads the model's logits only, so it would ignore the detector "
                               f"this model carries; a detector-aware attack is one of {readers}")

    def check_extra(self) -> None:
        """Validate keyword tensors (feature attacks); plain attacks accept none."""
        if self.extra:
            raise InvalidInput(f"attack {self.name!r} takes no extra arguments, got {sorted(self.extra)}")

    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """images (N,3,H,W) in [0,1], labels (N,) -> adversarial images (N,3,H,W) in [0,1]."""
        raise NotImplementedError

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # catalog images arrive as a permuted (N,H,W,3) view; torchattacks' L2 attacks .view() them flat
        images = images.contiguous()
        adv = self.perturb(images, labels).detach().clamp(0.0, 1.0)
        return adv if self.budget is None else self.budget.project(adv, images)


class TorchattacksAttack(Attack):
    """An attack run by a torchattacks class in pixel space (inputs in [0,1], normalisation in the model)."""

    def build(self) -> Any:
        """The configured torchattacks attack object."""
        raise NotImplementedError

    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        atk = self.build()
        atk.set_device(self.device)
        if self.targeted:
            atk.set_mode_targeted_by_label(quiet=True)
        return atk(images, labels)
