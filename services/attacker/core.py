"""The one attack core: attack, deliver within the budget, measure, re-extract.

Every path that attacks images goes through :func:`attack_and_measure`: the stored-attack runner
(:mod:`services.attacker.runner`), the pipeline's attack shards and the attacker service.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from advrec_common.vision.model import ImageModel
from services.attacker.attacks import run_attack
from services.attacker.budget import budget_for
from services.attacker.delivery import deliver
from services.attacker.measurements import measure_attack
from services.attacker.spec import AttackSpec


@dataclass
class AttackOutcome:
    """delivered: (N,3,H,W) float [0,1]; features: (N,D) and spatial (N,D',h,w) | None of the delivered images."""

    delivered: torch.Tensor
    measurement: Any
    features: torch.Tensor
    spatial: torch.Tensor | None
    logits: torch.Tensor
    seconds: float


def attack_and_measure(
    model: ImageModel,
    clean: torch.Tensor,
    spec: AttackSpec,
    target: int | None,
    delivery: str = "png8",
    jpeg_quality: int = 90,
    *,
    device: str = "cpu",
    batch_size: int = 64,
    clean_features: torch.Tensor | None = None,
    item_ids: list[str] | None = None,
    lpips_weights: Path | None = None,
    spatial: bool = False,
    progress: Callable[[dict], None] | None = None,
    attack_model: ImageModel | None = None,
    **extra: Any,
) -> AttackOutcome:
    """Attack ``clean`` (N,3,H,W) [0,1] toward class ``target`` (None: untargeted), deliver within the
    budget, measure against the clean images, and re-extract the delivered images' features/logits.

    ``attack_model``: the model the attack differentiates when it is not the one that judges and re-extracts
    the delivered images (a defense: the adaptive attacker's composition, while ``model`` is the deployed one).

    ``progress`` is called after every attacked batch with ``{"done": n_done, "total": n, "unit": "images"}``
    (see :func:`~services.attacker.attacks.run_attack`)."""
    target = None if target is None else int(target)
    t0 = time.perf_counter()
    adv = run_attack(attack_model if attack_model is not None else model, clean, spec, target, device=device,
                     batch_size=batch_size, progress=progress, **extra)
    seconds = time.perf_counter() - t0
    # projecting before rounding keeps the delivered 8-bit image within the budget
    delivered = deliver(adv, delivery, jpeg_quality, clean=clean, budget=budget_for(spec, model.std))  # type: ignore[arg-type]
    m = measure_attack(model, clean, delivered, target, clean_features=clean_features,
                       lpips_weights=lpips_weights, wall_time_s=seconds, item_ids=item_ids, batch_size=batch_size,
                       float_adv=adv if target is not None else None)
    model.eval()
    feats, maps, logits = [], [], []
    with torch.inference_mode():
        for i in range(0, delivered.shape[0], batch_size):
            if progress is not None:  # the attack is done: a check for cancellation, the count stays complete
                progress({"done": delivered.shape[0], "total": delivered.shape[0], "unit": "images"})
            o = model.forward_all(delivered[i : i + batch_size].to(model.mean.device), spatial=spatial)
            feats.append(o.features.float().cpu())
            logits.append(o.logits.float().cpu())
            if o.spatial is not None:
                maps.append(o.spatial.float().cpu())
    return AttackOutcome(delivered, m, torch.cat(feats), torch.cat(maps) if maps else None, torch.cat(logits), seconds)
