"""What an attack did, per image and on average: classifier outcome, feature loss, visual distance.

* success: adversarial image now classified as the target (targeted). The success rate (SR) is
  taken over the *eligible* images, those not already classified as the target before the attack
  (``clean_target_rate`` says how many were); ``float_success`` is the same for the attack's float
  output before delivery (8-bit rounding, JPEG) so a delivery that erases an attack shows;
* flipped: class differs from the clean class (untargeted flip rate);
* feature loss between clean and adversarial features: L2, MSE, RMSE (the study's FL), cosine distance;
* perturbation size of the *delivered* image: L-inf and L2 in [0,1] units and in 1/255 units;
* PSNR and SSIM from torchmetrics (per image, data_range=1, SSIM Gaussian 11x11, sigma 1.5);
* LPIPS only with a local backbone file (:mod:`services.attacker.perceptual`), else None + status;
* wall time and images/s of the attack (measured by the caller, e.g. the runner).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from advrec_common.errors import InvalidInput
from advrec_common.vision.model import ImageModel
from services.attacker.perceptual import LpipsNet, lpips_distance


@dataclass
class AttackMeasurement:
    """Per-image arrays (length N) plus run-level figures; see the module docstring for definitions."""

    class_names: list[str]
    clean_class: np.ndarray
    adv_class: np.ndarray
    clean_prob: np.ndarray  # probability of the clean class on the clean image
    adv_prob: np.ndarray  # probability of the adversarial class on the adversarial image
    target: np.ndarray | None  # (N,) target classes, None for untargeted
    success: np.ndarray | None  # adv_class == target
    flipped: np.ndarray
    feat_l2: np.ndarray
    feat_mse: np.ndarray
    feat_rmse: np.ndarray
    feat_cos: np.ndarray  # cosine distance 1 - cos
    linf: np.ndarray  # [0,1] units
    l2: np.ndarray  # [0,1] units
    psnr: np.ndarray  # dB; inf where the image is unchanged
    ssim: np.ndarray
    lpips: np.ndarray | None
    lpips_status: str
    float_adv_class: np.ndarray | None = None  # class of the float adversarial image, before delivery
    wall_time_s: float | None = None
    images_per_s: float | None = None
    item_ids: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.clean_class.shape[0])

    def to_table(self) -> list[dict[str, Any]]:
        """One dict per image (CSV-ready)."""
        rows = []
        for i in range(len(self)):
            row: dict[str, Any] = {
                "item": self.item_ids[i] if self.item_ids is not None else str(i),
                "clean_class": int(self.clean_class[i]),
                "clean_class_name": self.class_names[int(self.clean_class[i])],
                "clean_prob": float(self.clean_prob[i]),
                "adv_class": int(self.adv_class[i]),
                "adv_class_name": self.class_names[int(self.adv_class[i])],
                "adv_prob": float(self.adv_prob[i]),
                "target": None if self.target is None else int(self.target[i]),
                "clean_is_target": None if self.target is None else bool(self.clean_class[i] == self.target[i]),
                "success": None if self.success is None else bool(self.success[i]),
                "float_success": None if self.float_success is None else bool(self.float_success[i]),
                "changed": bool(self.linf[i] > 0),
                "flipped": bool(self.flipped[i]),
                "linf": float(self.linf[i]),
                "linf_255": float(self.linf[i] * 255),
                "l2": float(self.l2[i]),
                "l2_255": float(self.l2[i] * 255),
                "psnr": float(self.psnr[i]),
                "ssim": float(self.ssim[i]),
                "lpips": None if self.lpips is None else float(self.lpips[i]),
                "feat_l2": float(self.feat_l2[i]),
                "feat_mse": float(self.feat_mse[i]),
                "feat_rmse": float(self.feat_rmse[i]),
                "feat_cos": float(self.feat_cos[i]),
            }
            rows.append(row)
        return rows

    @property
    def eligible(self) -> np.ndarray | None:
        """(N,) bool: images not already classified as the target before the attack (None: untargeted)."""
        return None if self.target is None else self.clean_class != self.target

    @property
    def float_success(self) -> np.ndarray | None:
        """(N,) bool: the float adversarial image (before delivery) is classified as the target."""
        if self.target is None or self.float_adv_class is None:
            return None
        return self.float_adv_class == self.target

    def summary(self) -> dict[str, Any]:
        """Run-level means (JSON-safe: non-finite values become None)."""

        def mean(a: np.ndarray | None) -> float | None:
            if a is None or a.size == 0:
                return None
            finite = a[np.isfinite(a)]
            return float(finite.mean()) if finite.size else None

        eligible = self.eligible
        out = {
            "n": len(self),
            "n_eligible": None if eligible is None else int(eligible.sum()),
            # over the images not already classified as the target (None when every image already was)
            "success_rate": _rate(self.success, eligible),
            "float_success_rate": _rate(self.float_success, eligible),
            "success_rate_all": None if self.success is None else float(self.success.mean()),
            "clean_target_rate": None if self.target is None else float((self.clean_class == self.target).mean()),
            "flip_rate": float(self.flipped.mean()),
            "feat_l2": mean(self.feat_l2),
            "feat_mse": mean(self.feat_mse),
            "feat_rmse": mean(self.feat_rmse),
            "feat_cos": mean(self.feat_cos),
            "linf_max": float(self.linf.max()),
            "linf_max_255": float(self.linf.max() * 255),
            "linf_mean_255": float(self.linf.mean() * 255),
            "l2_mean": mean(self.l2),
            "l2_mean_255": float(self.l2.mean() * 255),
            "psnr_mean": mean(self.psnr),  # over changed images (PSNR of an unchanged image is inf)
            "n_unchanged": int((~np.isfinite(self.psnr)).sum()),
            "ssim_mean": mean(self.ssim),
            "lpips_mean": mean(self.lpips),
            "lpips_status": self.lpips_status,
            "wall_time_s": self.wall_time_s,
            "images_per_s": self.images_per_s,
            **self.extra,
        }
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


def _rate(hits: np.ndarray | None, eligible: np.ndarray | None) -> float | None:
    if hits is None or eligible is None or not eligible.any():
        return None
    return float(hits[eligible].mean())


def _batched_outputs(model: ImageModel, images: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N,D), probs (N,C)) of images in [0,1], eval mode, no grad."""
    was_training = model.training
    model.eval()
    dev = model.mean.device
    feats, probs = [], []
    with torch.no_grad():
        for i in range(0, images.shape[0], batch_size):
            out = model.forward_all(images[i : i + batch_size].to(dev).float())
            feats.append(out.features.float().cpu())
            probs.append(out.logits.float().softmax(1).cpu())
    model.train(was_training)
    return torch.cat(feats), torch.cat(probs)


def measure_attack(
    model: ImageModel,
    clean: torch.Tensor,
    delivered: torch.Tensor,
    target: int | torch.Tensor | None,
    clean_features: torch.Tensor | None = None,
    lpips_weights: Path | None = None,
    *,
    lpips_net: LpipsNet = "alex",
    wall_time_s: float | None = None,
    item_ids: list[str] | None = None,
    batch_size: int = 128,
    float_adv: torch.Tensor | None = None,
) -> AttackMeasurement:
    """clean, delivered: (N,3,H,W) in [0,1]; target: class or (N,) classes or None; clean_features (N,D)
    optional; ``float_adv`` (N,3,H,W): the attack's output before delivery (for the float-domain SR)."""
    if clean.shape != delivered.shape or clean.ndim != 4 or clean.shape[1] != 3 or clean.shape[0] == 0:
        raise InvalidInput(f"clean {tuple(clean.shape)} and delivered {tuple(delivered.shape)} must be equal (N,3,H,W), N>0")
    n = clean.shape[0]
    if item_ids is not None and len(item_ids) != n:
        raise InvalidInput(f"{len(item_ids)} item ids for {n} images")
    clean, delivered = clean.detach().float().cpu(), delivered.detach().float().cpu()
    feats_adv, probs_adv = _batched_outputs(model, delivered, batch_size)
    feats_clean_model, probs_clean = _batched_outputs(model, clean, batch_size)
    feats_clean = feats_clean_model if clean_features is None else clean_features.detach().float().cpu()
    if feats_clean.shape != feats_adv.shape:
        raise InvalidInput(f"clean_features {tuple(feats_clean.shape)} do not match the model's {tuple(feats_adv.shape)}")

    clean_cls, adv_cls = probs_clean.argmax(1), probs_adv.argmax(1)
    tgt = None
    if target is not None:
        tgt = torch.as_tensor(target).long().cpu()
        tgt = tgt.expand(n) if tgt.ndim == 0 else tgt
        if tgt.shape != (n,) or tgt.min() < 0 or tgt.max() >= model.num_classes:
            raise InvalidInput(f"target must be a class index in [0,{model.num_classes}) or ({n},) of them")

    float_cls = None
    if float_adv is not None:
        float_cls = _batched_outputs(model, float_adv.detach().float().cpu(), batch_size)[1].argmax(1).numpy()
    diff_f = feats_adv - feats_clean
    feat_mse = diff_f.pow(2).mean(1)
    delta = (delivered - clean).flatten(1)
    lp, status = lpips_distance(clean, delivered, lpips_weights, net=lpips_net)
    rows = torch.arange(n)
    return AttackMeasurement(
        class_names=list(model.class_names),
        clean_class=clean_cls.numpy(),
        adv_class=adv_cls.numpy(),
        clean_prob=probs_clean[rows, clean_cls].numpy(),
        adv_prob=probs_adv[rows, adv_cls].numpy(),
        target=None if tgt is None else tgt.numpy(),
        success=None if tgt is None else (adv_cls == tgt).numpy(),
        flipped=(adv_cls != clean_cls).numpy(),
        feat_l2=diff_f.norm(dim=1).numpy(),
        feat_mse=feat_mse.numpy(),
        feat_rmse=feat_mse.sqrt().numpy(),
        feat_cos=(1 - torch.nn.functional.cosine_similarity(feats_adv, feats_clean, dim=1, eps=1e-12)).clamp_min(0).numpy(),
        linf=delta.abs().amax(1).numpy(),
        l2=delta.norm(dim=1).numpy(),
        psnr=peak_signal_noise_ratio(delivered, clean, data_range=1.0, reduction="none", dim=(1, 2, 3)).numpy(),
        ssim=structural_similarity_index_measure(delivered, clean, data_range=1.0, reduction="none").numpy(),
        lpips=None if lp is None else lp.numpy(),
        lpips_status=status,
        float_adv_class=float_cls,
        wall_time_s=wall_time_s,
        images_per_s=None if not wall_time_s else n / wall_time_s,
        item_ids=item_ids,
    )
