"""Random resize-and-pad (``resize_pad``): the randomisation of Xie, Wang, Zhang, Ren & Yuille 2018,
at the model's own input size."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch.nn import functional as F

from advrec_common.errors import InvalidInput
from advrec_common.vision.defenses.base import Defense


class ResizePad(Defense):
    """Per image, draw a side ``s`` uniformly among the integers of [ceil(min_scale * H), H], resize the
    image to s x s (bilinear) and place it at a uniformly drawn offset on an H x W canvas of zeros.

    Xie et al. resize up (299 to [299, 331)) and pad to 331; resizing down and padding back keeps the
    size every model here expects. Draws come from torch's global RNG: the attack seeds it, and a deployed
    :class:`~advrec_common.vision.defenses.defended.DefendedModel` with a seed sets it to its own generator's state.
    Gradient: exact through each draw; the adaptive attacker averages ``eot_draws`` draws per step (EOT).
    """

    kind: ClassVar[str] = "resize_pad"
    gradient: ClassVar[str] = "exact"
    random: ClassVar[bool] = True

    def __init__(self, min_scale: float = 0.875, eot_draws: int = 10):
        super().__init__()
        if not 0.1 <= float(min_scale) < 1.0:
            raise InvalidInput(f"resize_pad min_scale must lie in [0.1, 1), got {min_scale}")
        if int(eot_draws) < 1:
            raise InvalidInput(f"resize_pad eot_draws must be >= 1, got {eot_draws}")
        self.min_scale = float(min_scale)
        self.draws = int(eot_draws)

    @property
    def eot_draws(self) -> int:
        return self.draws

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        smallest = min(h, w)
        low = max(1, math.ceil(self.min_scale * smallest))
        sides = torch.randint(low, smallest + 1, (n,)).tolist()
        offsets = torch.rand(n, 2).tolist()  # fractions of the free room above and left of the image
        out = []
        # split, not x[i:i+1]: one backward node for all images (a slice's backward writes a gradient
        # the size of the whole batch, per image: quadratic in the batch, minutes under EOT)
        for image, side, (u, v) in zip(x.split(1), sides, offsets, strict=True):  # one draw per image
            sh, sw = round(side * h / smallest), round(side * w / smallest)
            top, left = min(int(u * (h - sh + 1)), h - sh), min(int(v * (w - sw + 1)), w - sw)
            small = F.interpolate(image, size=(sh, sw), mode="bilinear", align_corners=False)
            out.append(F.pad(small, (left, w - sw - left, top, h - sh - top)))
        return torch.cat(out)

    def config(self) -> dict[str, Any]:
        return {"min_scale": self.min_scale, "eot_draws": self.draws}
