"""Delivery: what the recommender's extractor actually receives after an adversary uploads an image.

* ``png8``  -- 8-bit quantisation, as a lossless PNG upload would store it: rounded onto the 8-bit
  grid *inside* the budget (below).
* ``png8_truncate`` -- the study's quantisation (quirk Q2): ``(x*255).astype(uint8)`` of the float
  adversarial image, i.e. truncation toward zero with no projection back into the budget, so a
  sub-level perturbation becomes -1 level where it was negative (a 1e-4-level tolerance keeps
  exact clean pixels from being shifted by float error). With the study's normalised budget
  (~0.9 grey level per channel at eps 4) this is what gives its attacks any effect at all.
* ``float`` -- lossless float (TAaMR's setting).
* ``jpeg``  -- PIL JPEG encode/decode at ``jpeg_quality`` (a channel an adversary does not control).

Budget guarantee: given ``clean`` and a :class:`Budget`, ``png8`` rounds onto the 8-bit grid
*inside* the budget: L-inf picks, per pixel, the grey level nearest to the adversarial value among
those within ``radius*scale_c`` of the clean value; L2 shrinks the float perturbation (per-image
bisection on a factor in [0,1]) until the rounded image satisfies the budget. When the clean image
is itself 8-bit (``clean*255`` integral, as for every uploaded image) the delivered image is
**exactly** within the budget (no 0.5/255 overshoot). ``float`` projects with float tolerance.
``jpeg`` projects and rounds the same way before encoding; JPEG's own loss is then outside the
adversary's control, so no budget is guaranteed after it (measure it instead).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch

from advrec_common.errors import InvalidInput
from advrec_common.vision.defenses.jpeg import jpeg_roundtrip  # the JPEG defense's codec: one JPEG in advrec
from services.attacker.budget import Budget

DeliveryMode = Literal["png8", "png8_truncate", "float", "jpeg"]
Rounding = Literal["round", "truncate"]
_SLACK = 1e-4  # grey levels of float error tolerated when deciding which grid points are in budget


def _quantize(x: torch.Tensor, rounding: Rounding) -> torch.Tensor:
    """x in [0,1] -> grey levels 0..255 (float tensor of integers)."""
    v = x.clamp(0.0, 1.0) * 255.0
    return torch.floor(v + _SLACK) if rounding == "truncate" else torch.round(v)


def _linf_grid(adv: torch.Tensor, clean: torch.Tensor, budget: Budget, rounding: Rounding) -> torch.Tensor:
    """Grey levels (N,3,H,W) nearest to adv among those within the L-inf budget of clean."""
    lim = budget.per_channel_linf().to(adv) * 255.0
    c = clean * 255.0
    lo = torch.ceil(c - lim - _SLACK).clamp(0, 255)
    hi = torch.floor(c + lim + _SLACK).clamp(0, 255)
    empty = lo > hi  # only possible for an off-grid clean image and radius < 0.5 grey level
    nearest_clean = torch.round(c)
    lo, hi = torch.where(empty, nearest_clean, lo), torch.where(empty, nearest_clean, hi)
    return torch.minimum(torch.maximum(_quantize(adv, rounding), lo), hi)


def _l2_grid(adv: torch.Tensor, clean: torch.Tensor, budget: Budget, rounding: Rounding, iters: int = 20) -> torch.Tensor:
    """Grey levels of clean + s*delta rounded, with the largest s in [0,1] (bisection) that fits the budget."""
    delta = adv - clean

    def levels(s: torch.Tensor) -> torch.Tensor:
        return _quantize(clean + s.view(-1, 1, 1, 1) * delta, rounding)

    def fits(q: torch.Tensor) -> torch.Tensor:
        return budget.size(q / 255.0 - clean) <= budget.radius + _SLACK / 255.0

    n = adv.shape[0]
    ok_full = fits(levels(torch.ones(n, device=adv.device)))
    lo, hi = torch.zeros(n, device=adv.device), torch.ones(n, device=adv.device)
    for _ in range(iters):  # vectorised over images; a fixed number of halvings
        mid = (lo + hi) / 2
        good = fits(levels(mid))
        lo, hi = torch.where(good, mid, lo), torch.where(good, hi, mid)
    s = torch.where(ok_full, torch.ones_like(lo), lo)
    return levels(s)


def _png8(adv: torch.Tensor, clean: torch.Tensor | None, budget: Budget | None, rounding: Rounding) -> torch.Tensor:
    if clean is None or budget is None:
        return _quantize(adv, rounding) / 255.0
    grid = _linf_grid if budget.norm == "linf" else _l2_grid
    return grid(adv, clean, budget, rounding) / 255.0


def _float(adv: torch.Tensor, clean: torch.Tensor | None, budget: Budget | None, rounding: Rounding) -> torch.Tensor:
    out = adv.clamp(0.0, 1.0)
    return budget.project(out, clean) if (clean is not None and budget is not None) else out


def _make_jpeg(quality: int) -> Callable[..., torch.Tensor]:
    def run(adv: torch.Tensor, clean: torch.Tensor | None, budget: Budget | None, rounding: Rounding) -> torch.Tensor:
        levels = (_png8(adv, clean, budget, rounding) * 255.0).round()
        u8 = levels.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        back = torch.from_numpy(jpeg_roundtrip(u8, quality)).permute(0, 3, 1, 2)
        return back.to(adv.device, torch.float32) / 255.0

    return run


def _png8_truncate(adv: torch.Tensor, clean: torch.Tensor | None, budget: Budget | None,
                   rounding: Rounding) -> torch.Tensor:
    return _quantize(adv, "truncate") / 255.0


DELIVERIES: dict[str, Callable[[int], Callable[..., torch.Tensor]]] = {
    "png8": lambda q: _png8,
    "png8_truncate": lambda q: _png8_truncate,
    "float": lambda q: _float,
    "jpeg": _make_jpeg,
}


def deliver(
    adv: torch.Tensor,
    mode: DeliveryMode = "png8",
    jpeg_quality: int = 90,
    *,
    clean: torch.Tensor | None = None,
    budget: Budget | None = None,
    rounding: Rounding = "round",
) -> torch.Tensor:
    """adv (N,3,H,W) float in [0,1] -> the delivered images (N,3,H,W) float in [0,1] (see module doc)."""
    if mode not in DELIVERIES:
        raise InvalidInput(f"unknown delivery {mode!r}; known: {sorted(DELIVERIES)}")
    if rounding not in ("round", "truncate"):
        raise InvalidInput(f"rounding must be 'round' or 'truncate', got {rounding!r}")
    if not 1 <= int(jpeg_quality) <= 95:
        raise InvalidInput(f"jpeg_quality must be in 1..95, got {jpeg_quality}")
    if adv.ndim != 4 or adv.shape[1] != 3:
        raise InvalidInput(f"images must be (N,3,H,W), got {tuple(adv.shape)}")
    if clean is not None and clean.shape != adv.shape:
        raise InvalidInput(f"clean {tuple(clean.shape)} and adv {tuple(adv.shape)} differ in shape")
    adv = adv.detach().float()
    clean = None if clean is None else clean.detach().float().to(adv.device)
    return DELIVERIES[mode](int(jpeg_quality))(adv, clean, budget, rounding)


def to_u8(images: torch.Tensor) -> np.ndarray:
    """(N,3,H,W) float in [0,1] on the 8-bit grid -> (N,H,W,3) uint8 (rounded)."""
    return (images.detach().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
