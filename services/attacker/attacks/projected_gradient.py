"""Our own projected-gradient engine, in pixel or normalised space (FGSM, PGD, MI-FGSM, feature attacks).

torchattacks only works on [0,1] inputs; the study (VAR, study-protocol.md section 3, quirk Q1)
applied ``eps/255`` to the *normalised* tensor ``z = (x - mean)/std`` with no [0,1] clipping
inside the iterations. This engine runs either way:

* ``space="pixel"``: z = x, clipped to [0,1] every step -- the same arithmetic as torchattacks'
  FGSM/PGD/MI-FGSM (tests check the two agree);
* ``space="normalized"``: z = normalize(x), the model is called with ``normalized=True``, no clip.

Each iteration ascends ``loss_fn(output, labels)`` (per-image (N,), averaged like torchattacks), minus
the output's ``penalty`` when the model puts one there (a detector-aware composition,
:mod:`advrec_common.vision.defenses.defended`):
``z <- z + step * sign(g)`` (L-inf) or ``z + step * g/||g||`` (L2), then projects onto the ball of
radius ``radius`` around the start and (pixel space) onto [0,1].
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from advrec_common.vision.model import ImageModel, ModelOutput

LossFn = Callable[[ModelOutput, torch.Tensor], torch.Tensor]


def targeted_ce(out: ModelOutput, target: torch.Tensor) -> torch.Tensor:
    """(N,) loss to ascend for a targeted attack: -CE(logits, target)."""
    return -F.cross_entropy(out.logits, target, reduction="none")


def untargeted_ce(out: ModelOutput, label: torch.Tensor) -> torch.Tensor:
    """(N,) loss to ascend for an untargeted attack: CE(logits, clean label)."""
    return F.cross_entropy(out.logits, label, reduction="none")


def _per_sample_l2(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)


def _random_start(z0: torch.Tensor, radius: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return torch.empty_like(z0).uniform_(-radius, radius)
    direction = torch.randn_like(z0)
    direction = direction / _per_sample_l2(direction)
    return direction * radius * torch.rand(z0.shape[0], 1, 1, 1, device=z0.device)


def projected_gradient(
    model: ImageModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    loss_fn: LossFn,
    *,
    radius: float,
    step: float,
    steps: int,
    norm: str = "linf",
    space: str = "pixel",
    random_start: bool = False,
    decay: float = 0.0,
    spatial: bool = False,
) -> torch.Tensor:
    """images (N,3,H,W) in [0,1] -> adversarial images (N,3,H,W) in pixel units (clamp/projection by caller).

    radius, step: in [0,1] units of ``space``; decay > 0 turns on MI-FGSM momentum (L-inf); ``spatial``: the
    loss also reads the feature map (``out.spatial``). Uses the global RNG for the random start (the caller
    seeds it).
    """
    normalized = space == "normalized"
    z0 = model.normalize(images) if normalized else images.clone()
    z0 = z0.detach()
    adv = z0.clone()
    if random_start:
        adv = adv + _random_start(z0, radius, norm)
        if not normalized:
            adv = adv.clamp(0.0, 1.0)
    momentum = torch.zeros_like(z0)
    # FGSM (one step from the clean image within the budget) is exactly x + step*sign(g): no projection
    single_step = steps == 1 and not random_start and step <= radius and norm == "linf"
    for _ in range(steps):
        adv.requires_grad_(True)
        out = model.forward_all(adv, spatial=spatial, normalized=normalized)
        objective = loss_fn(out, labels)
        if out.penalty is not None:  # a detector-aware composition: evade the detector too
            objective = objective - out.penalty
        loss = objective.mean()
        grad = torch.autograd.grad(loss, adv)[0]
        adv = adv.detach()
        if decay > 0:
            grad = grad / grad.abs().mean(dim=(1, 2, 3), keepdim=True) + decay * momentum
            momentum = grad
        if norm == "linf":
            adv = adv + step * grad.sign()
            if not single_step:
                adv = z0 + torch.clamp(adv - z0, min=-radius, max=radius)
        else:
            adv = adv + step * grad / _per_sample_l2(grad)
            delta = adv - z0
            adv = z0 + delta * (radius / _per_sample_l2(delta)).clamp(max=1.0)
        if not normalized:
            adv = adv.clamp(0.0, 1.0)
    return model.denormalize(adv) if normalized else adv
