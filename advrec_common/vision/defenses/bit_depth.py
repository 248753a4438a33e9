"""Colour bit-depth reduction (``bit_depth``), a feature-squeezing transform (Xu, Evans & Qi 2018)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from advrec_common.errors import InvalidInput
from advrec_common.vision.defenses.base import Defense


class BitDepth(Defense):
    """Keep ``bits`` bits per channel: ``round(x * (2^bits - 1)) / (2^bits - 1)`` (Xu et al. 2018,
    section 4.1). Gradient: BPDA (the rounding's own gradient is zero almost everywhere)."""

    kind: ClassVar[str] = "bit_depth"
    gradient: ClassVar[str] = "bpda"

    def __init__(self, bits: int = 4):
        super().__init__()
        if not 1 <= int(bits) <= 8:
            raise InvalidInput(f"bit_depth bits must lie in 1..8, got {bits}")
        self.bits = int(bits)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        levels = 2**self.bits - 1
        return torch.round(x.clamp(0, 1) * levels) / levels

    def config(self) -> dict[str, Any]:
        return {"bits": self.bits}
