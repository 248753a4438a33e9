"""Fitting a defense of the ladder for an extractor: the one entry :func:`fit_defense`.

The transforms (``jpeg``, ``bit_depth``, ``median``, ``resize_pad``) need nothing but their spec;
the fitted kinds have one fitter each in :data:`FITTERS` (the ``denoiser`` is trained, the
``detector``'s threshold is calibrated), run on the catalog's clean images at the extractor's input size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from advrec_common.errors import InvalidInput
from advrec_common.vision.defenses.base import Defense
from advrec_common.vision.defenses.registry import build_defense
from advrec_common.vision.defenses.spec import DefenseSpec
from advrec_common.vision.model import ImageModel
from services.extractor.denoiser_training import train_denoiser
from services.extractor.detector_calibration import calibrate_detector

Progress = Callable[[dict[str, Any]], None]
Fitter = Callable[..., tuple[Defense, dict[str, Any]]]

FITTERS: dict[str, Fitter] = {"denoiser": train_denoiser, "detector": calibrate_detector}


def fit_defense(spec: DefenseSpec, images_u8: np.ndarray | None, model: ImageModel, *, seed: int = 0,
                device: str = "cpu", progress: Progress | None = None) -> tuple[Defense, dict[str, Any]]:
    """The defense of ``spec`` ready to sit in front of ``model`` (eval mode, CPU) and its fitting report.

    images_u8: (N,H,W,3) uint8 clean catalog images at the model's input size; only the fitted kinds
    read them (None is fine for a transform). Seeded: the same inputs give the same defense.
    """
    if not spec.info.fitted:
        return build_defense(spec), {}
    if images_u8 is None:
        raise InvalidInput(f"defense {spec.label()} is fitted on the catalog's clean images; none were given")
    return FITTERS[spec.kind](spec, images_u8, model, seed=seed, device=device, progress=progress)
