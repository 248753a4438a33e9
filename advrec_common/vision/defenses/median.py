"""Median smoothing (``median``), a feature-squeezing transform (Xu, Evans & Qi 2018)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch.nn import functional as F

from advrec_common.errors import InvalidInput
from advrec_common.vision.defenses.base import Defense


def median_filter(x: torch.Tensor, window: int) -> torch.Tensor:
    """(N,C,H,W) -> the median of every ``window`` x ``window`` neighbourhood, per channel.

    The conventions of ``scipy.ndimage.median_filter(..., mode="nearest")``, which Xu et al.'s code
    used: edges repeat the border pixel; an even window covers ``window // 2`` pixels before the
    centre and ``(window - 1) // 2`` after, and takes the upper of the two middle values.
    """
    before, after = window // 2, (window - 1) // 2
    padded = F.pad(x, (before, after, before, after), mode="replicate")
    n, c, h, w = x.shape
    patches = F.unfold(padded.reshape(n * c, 1, *padded.shape[-2:]), window)  # (N*C, window^2, H*W)
    middle = patches.sort(dim=1).values[:, (window * window) // 2]
    return middle.reshape(n, c, h, w)


class Median(Defense):
    """Median of each ``window`` x ``window`` neighbourhood (:func:`median_filter`). Gradient: BPDA
    with the identity (the median's own gradient reaches one pixel per window; the smoothed image
    stays close to the input, the case Athalye et al. 2018 approximate by the identity)."""

    kind: ClassVar[str] = "median"
    gradient: ClassVar[str] = "bpda"

    def __init__(self, window: int = 3):
        super().__init__()
        if not 2 <= int(window) <= 15:
            raise InvalidInput(f"median window must lie in 2..15, got {window}")
        self.window = int(window)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return median_filter(x, self.window)

    def config(self) -> dict[str, Any]:
        return {"window": self.window}
