"""The defense registry: kind -> module class. Adding a defense is one file plus one line here
(and its entry in :data:`~advrec_common.vision.defenses.spec.DEFENSE_KINDS`)."""

from __future__ import annotations

from advrec_common.errors import NotFound
from advrec_common.vision.defenses.base import Defense
from advrec_common.vision.defenses.bit_depth import BitDepth
from advrec_common.vision.defenses.denoiser import Denoiser
from advrec_common.vision.defenses.detector import Detector
from advrec_common.vision.defenses.jpeg import Jpeg
from advrec_common.vision.defenses.median import Median
from advrec_common.vision.defenses.resize_pad import ResizePad
from advrec_common.vision.defenses.spec import DefenseSpec

DEFENSES: dict[str, type[Defense]] = {cls.kind: cls for cls in (Jpeg, BitDepth, Median, ResizePad, Denoiser, Detector)}


def defense_class(kind: str) -> type[Defense]:
    """The module class of ``kind`` (NotFound naming the known kinds)."""
    if kind not in DEFENSES:
        raise NotFound(f"unknown defense kind {kind!r}; known: {sorted(DEFENSES)}")
    return DEFENSES[kind]


def build_defense(spec: DefenseSpec) -> Defense:
    """The module of a spec entry, in eval mode (a denoiser untrained, a detector without threshold:
    fitting them is the extractor domain's job)."""
    return defense_class(spec.kind)(**spec.module_params()).eval()
