"""Feature squeezing as a detector (``detector``; Xu, Evans & Qi 2018).

The score of an image is the largest L1 distance between the model's softmax on the image and on
its squeezed versions (bit-depth reduction to ``bits``, median smoothing over ``window``); an image
scoring above ``threshold`` is flagged (the threshold is fitted in the extractor domain to give a
chosen false-positive rate on clean images: :mod:`services.extractor.detector_calibration`).

The image itself passes unchanged. A detector-aware attacker (Carlini & Wagner 2017's recipe of
attacking classifier and detector together) ascends its objective minus ``penalty`` times the
score's excess over half the threshold, through the squeezers with BPDA.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from advrec_common.errors import InvalidInput
from advrec_common.vision.defenses.base import Defense
from advrec_common.vision.defenses.bit_depth import BitDepth
from advrec_common.vision.defenses.median import Median

# the penalty stops at half the threshold: a hinge at the threshold itself leaves the attack sitting on
# it (its objective pushes the score back over every step); below the margin the whole step serves the
# attack's objective
MARGIN = 0.5


class Detector(Defense):
    """Feature-squeezing detector; ``threshold`` None until fitted (scores work, flags do not)."""

    kind: ClassVar[str] = "detector"
    gradient: ClassVar[str] = "bpda"

    def __init__(self, bits: int = 5, window: int = 2, penalty: float = 1.0, threshold: float | None = None):
        super().__init__()
        if float(penalty) < 0:
            raise InvalidInput(f"detector penalty must be >= 0, got {penalty}")
        if threshold is not None and not 0 <= float(threshold) <= 2:
            raise InvalidInput(f"a detector threshold is an L1 distance of probabilities, in [0, 2]; got {threshold}")
        self.squeezers = torch.nn.ModuleList([BitDepth(bits), Median(window)])
        self.penalty_weight = float(penalty)
        self.threshold = None if threshold is None else float(threshold)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @property
    def detects(self) -> bool:
        return True

    def views(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [squeeze(x) for squeeze in self.squeezers]  # each with its BPDA gradient

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 3 or logits.shape[0] != 1 + len(self.squeezers):
            raise InvalidInput(f"detector scores need (1+{len(self.squeezers)}, N, C) logits, got {tuple(logits.shape)}")
        probs = logits.float().softmax(dim=-1)
        return (probs[1:] - probs[:1]).abs().sum(dim=-1).amax(dim=0)

    def flagged(self, scores: torch.Tensor) -> torch.Tensor:
        """(N,) scores -> (N,) bool: above the fitted threshold."""
        if self.threshold is None:
            raise InvalidInput("this detector has no threshold yet: fit it on clean images first")
        return scores > self.threshold

    def penalty(self, scores: torch.Tensor) -> torch.Tensor:
        floor = 0.0 if self.threshold is None else MARGIN * self.threshold
        return self.penalty_weight * (scores - floor).clamp_min(0.0)

    def config(self) -> dict[str, Any]:
        return {"bits": self.squeezers[0].bits, "window": self.squeezers[1].window, "penalty": self.penalty_weight,
                "threshold": self.threshold}
