"""AMR (Tang et al. 2019): VBPR trained adversarially on the item features.

Epochs 1..floor(adv_start*E) train plain VBPR; afterwards the loss is
L = L_BPR(F) + lambda * L_BPR(F + Delta) + reg, with Delta_i = eps * g_i / ||g_i||_2,
g = dL_BPR/dF per item row (stop-gradient; "rand": a random normal direction instead, drawn from
the fit's sampler generator). Prediction uses the clean features. Early stopping only selects
epochs of the adversarial phase. ``batch_loss`` is the autograd reference; training uses the
written-out gradients of :class:`VisualBPRGrads`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from services.recommender.defaults import MODEL_DEFAULTS
from services.recommender.models.base import Batch
from services.recommender.models.vbpr import VBPR


class AMR(VBPR):
    """Adversarial Multimedia Recommendation (same scorer as the study's VBPR)."""

    name = "amr"
    DEFAULTS = MODEL_DEFAULTS["amr"]

    @property
    def adv_start_epoch(self) -> int:
        return int(math.floor(self.config.adv_start * self.config.epochs))

    @property
    def first_selectable_epoch(self) -> int:  # type: ignore[override]
        return min(self.adv_start_epoch + 1, self.config.epochs)

    def _adversarial(self, batch: Batch) -> bool:
        return self.current_epoch > self.adv_start_epoch

    def batch_loss(self, users: Tensor, pos: Tensor, neg: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if self.current_epoch <= self.adv_start_epoch:
            return super().batch_loss(users, pos, neg)
        f_b, i_pos, i_neg = self._batch_features(pos, neg)
        f_b = f_b.detach().requires_grad_(True)
        loss, reg = self.pair_terms(users, pos, neg, f_b[i_pos], f_b[i_neg])
        if self.config.adv_type == "grad":
            (direction,) = torch.autograd.grad(loss, f_b, retain_graph=True)
        else:
            direction = torch.randn(f_b.shape, generator=generator).to(f_b.device) * 0.01
        delta = self.config.adv_eps * F.normalize(direction.detach(), dim=1)
        f_adv = f_b.detach() + delta
        adv_loss, _ = self.pair_terms(users, pos, neg, f_adv[i_pos], f_adv[i_neg])
        return loss + self.config.adv_lambda * adv_loss + reg
