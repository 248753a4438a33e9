"""Fitting the ``detector`` defense: its threshold at a chosen false-positive rate on clean images.

Feature squeezing (Xu, Evans & Qi 2018) scores an image by how far the extractor's softmax moves
under squeezing; the threshold is set on a seeded calibration part of the catalog's clean images
as the split-conformal quantile of their scores: the ``k``-th smallest of ``n`` with
``k = ceil((1 - fpr) (n + 1))``, so that a new clean image from the same catalog is flagged with
probability at most ``fpr`` (and more than ``fpr - 1/(n+1)``). The ``held_out`` part measures it:
its clean images give the false-positive rate, their untargeted PGD examples at ``tpr_eps`` against
the bare extractor (the non-adaptive attacker) the true-positive rate, each with its Wilson 95 %
interval.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from advrec_common.cpu_threads import cpu_threads
from advrec_common.errors import InvalidInput
from advrec_common.vision.defenses.defended import defend
from advrec_common.vision.defenses.detector import Detector
from advrec_common.vision.defenses.spec import DefenseSpec
from advrec_common.vision.model import ImageModel
from services.extractor.fitting_data import held_out_split, pgd_examples, to_tensor

Progress = Callable[[dict[str, Any]], None]


def detector_scores(model: ImageModel, detector: Detector, x: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """(N,) feature-squeezing scores of images (N,3,H,W) in [0,1] under ``model``."""
    screened = defend(model, detector)
    scores = [screened.screen(x[i : i + batch_size], flags=False).scores for i in range(0, x.shape[0], batch_size)]
    return torch.cat(scores)  # type: ignore[arg-type]


def conformal_threshold(scores: np.ndarray, fpr: float) -> float:
    """The ``ceil((1 - fpr)(n + 1))``-th smallest score (see the module doc)."""
    n = scores.shape[0]
    k = math.ceil((1.0 - fpr) * (n + 1))
    if k > n:
        raise InvalidInput(f"a threshold at {fpr:g} false positives needs at least {math.ceil(1 / fpr) - 1} "
                           f"calibration images; this catalog leaves {n} (lower held_out, or raise fpr)")
    return float(np.sort(scores)[k - 1])


def wilson_interval(successes: int, n: int, z: float = 1.96) -> list[float]:
    """95 % Wilson score interval of a proportion."""
    if n == 0:
        return [0.0, 1.0]
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def _rate(flags: torch.Tensor) -> dict[str, Any]:
    k, n = int(flags.sum()), int(flags.numel())
    return {"rate": k / n if n else 0.0, "flagged": k, "n": n, "interval": wilson_interval(k, n)}


def calibrate_detector(spec: DefenseSpec, images_u8: np.ndarray, model: ImageModel, *, seed: int = 0,
                       device: str = "cpu", progress: Progress | None = None) -> tuple[Detector, dict[str, Any]]:
    """The ``detector`` of ``spec`` for ``model``, its threshold set on (N,H,W,3) uint8 clean catalog
    images; returns it (eval mode, CPU) and its report (threshold, held-out FPR and TPR)."""
    if spec.kind != "detector":
        raise InvalidInput(f"calibrate_detector fits a 'detector', not {spec.kind!r}")
    p = spec.fit_params()
    x_all = to_tensor(images_u8)
    fit_idx, held_idx = held_out_split(x_all.shape[0], p["held_out"], seed)
    started = time.perf_counter()
    was_training, home = model.training, model.mean.device
    detector = Detector(**spec.module_params())
    with cpu_threads(1) if device == "cpu" else nullcontext(), \
            torch.random.fork_rng(devices=[] if device == "cpu" else None):
        torch.manual_seed(seed)
        model.to(device).eval()
        detector.to(device)
        try:
            x_all = x_all.to(device)
            calibration = detector_scores(model, detector, x_all[fit_idx]).cpu().numpy()
            detector.threshold = conformal_threshold(calibration, p["fpr"])
            if progress is not None:
                progress({"done": 1, "total": 2, "unit": "phases"})
            held = x_all[held_idx]
            clean_scores = detector_scores(model, detector, held)
            adversarial = pgd_examples(model, held, p["tpr_eps"], p["pgd_steps"])
            adv_scores = detector_scores(model, detector, adversarial)
            if progress is not None:
                progress({"done": 2, "total": 2, "unit": "phases"})
        finally:
            model.to(home).train(was_training)
    report = {
        "threshold": detector.threshold, "target_fpr": p["fpr"], "seed": seed,
        "n_calibration": int(fit_idx.shape[0]), "n_held_out": int(held_idx.shape[0]),
        "false_positive": _rate(detector.flagged(clean_scores.cpu())),
        "true_positive": {**_rate(detector.flagged(adv_scores.cpu())),
                          "attack": {"method": "pgd", "norm": "linf", "targeted": False, "eps": p["tpr_eps"],
                                     "steps": p["pgd_steps"], "against": "the bare extractor (non-adaptive)"}},
        "clean_score_quantiles": {q: float(np.quantile(calibration, float(q))) for q in ("0.5", "0.9", "0.95", "0.99")},
        "seconds": time.perf_counter() - started,
    }
    return detector.cpu().eval(), report
