"""Perturbation budgets in pixel space, and projections onto them.

A :class:`Budget` says ``|| delta / scale ||_p <= radius`` for ``delta = adv - clean`` in [0,1]
pixel units, where ``scale`` (1,3,1,1) is 1 for the pixel budget and the model's ``std`` for the
study's normalised budget (eps applied to ``(x-mean)/std`` is ``eps*std_c`` per channel in pixels).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from services.attacker.spec import AttackSpec, Norm


@dataclass(frozen=True)
class Budget:
    """norm: 'linf'|'l2'; radius: in [0,1] units of the attack space; scale: (1,3,1,1) pixel units per unit."""

    norm: Norm
    radius: float
    scale: torch.Tensor

    def per_channel_linf(self) -> torch.Tensor:
        """(1,3,1,1) largest allowed |delta| per channel in [0,1] pixel units (L-inf budgets)."""
        return self.radius * self.scale

    def size(self, delta: torch.Tensor) -> torch.Tensor:
        """(N,) budget norm ``||delta/scale||_p`` of pixel perturbations delta (N,3,H,W)."""
        z = (delta / self.scale.to(delta)).flatten(1)
        return z.abs().amax(1) if self.norm == "linf" else z.norm(dim=1)

    def within(self, adv: torch.Tensor, clean: torch.Tensor, atol: float = 1e-6) -> torch.Tensor:
        """(N,) bool: adv (N,3,H,W) in [0,1] is within the budget of clean, up to ``atol`` (pixel units)."""
        delta = adv - clean
        if self.norm == "linf":
            lim = self.per_channel_linf().to(delta) + atol
            return (delta.abs() <= lim).flatten(1).all(1)
        return self.size(delta) <= self.radius + atol

    def project(self, adv: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        """Closest-in-budget images to adv (L-inf: per-pixel clamp; L2: radial shrink), clamped to [0,1]."""
        delta = adv - clean
        if self.norm == "linf":
            lim = self.per_channel_linf().to(delta)
            delta = torch.maximum(torch.minimum(delta, lim), -lim)
        else:
            size = self.size(delta).clamp_min(1e-12)
            delta = delta * (self.radius / size).clamp(max=1.0).view(-1, 1, 1, 1)
        return (clean + delta).clamp(0.0, 1.0)


def budget_for(spec: AttackSpec, std: torch.Tensor) -> Budget | None:
    """The pixel-space budget of ``spec`` for a model with normalisation ``std`` (1,3,1,1); None if unbounded."""
    if spec.eps == 0:
        return None
    scale = std.detach().float().cpu().view(1, 3, 1, 1) if spec.budget_space == "normalized" else torch.ones(1, 3, 1, 1)
    return Budget(norm=spec.norm, radius=spec.radius, scale=scale)
