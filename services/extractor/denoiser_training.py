"""Training the ``denoiser`` defense on a catalog: its clean images and the extractor's PGD examples.

The AiD / HGD recipe, at the size of a CPU: adversarial examples of the extractor the denoiser
will protect are made once, here, by untargeted PGD (``torchattacks.PGD``, the implementation
PGD-AT uses: :func:`~services.extractor.training.pgd_attack`) at each budget of ``train_eps``,
labelled by the extractor's own predictions (a catalog needs no labels). The denoiser then learns
to map every image -- clean or adversarial -- to its clean version, under a pixel loss (mean squared
error) plus ``feature_weight`` times the L1 distance of the extractor's features of the denoised
image to those of the clean one (the high-level guidance of HGD, Liao et al. 2018). The pixel loss
is squared, not L1: the signs of a PGD perturbation look random from the image, so L1 (whose best
guess of a random sign is 0) holds the denoiser at the identity, which it then never leaves. A seeded fraction
``held_out`` of the images is never trained on; the report measures the denoiser there.

Making the examples here keeps the defense one function of (images, extractor, spec, seed): no
attack artifact, shard or category scenario has to exist before it, and the domains stay apart.
Seeded and single-threaded on the CPU, like extractor training: the same inputs give the same weights.
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
from advrec_common.vision.defenses.denoiser import Denoiser
from advrec_common.vision.defenses.spec import DefenseSpec
from advrec_common.vision.model import ImageModel
from services.extractor.fitting_data import held_out_split, pgd_examples, predict, to_tensor

Progress = Callable[[dict[str, Any]], None]


def _measure(model: ImageModel, denoiser: Denoiser, clean: torch.Tensor, adversarial: dict[float, torch.Tensor]
             ) -> dict[str, Any]:
    """On held-out images: how often the denoiser keeps a clean image's class, and how often it gives an
    adversarial image its clean class back (beside the same without the denoiser)."""
    with torch.no_grad():
        reference = predict(model, clean)
        denoised = denoiser.transform(clean)
        out: dict[str, Any] = {
            "clean_agreement": float((predict(model, denoised) == reference).float().mean()),
            "clean_pixel_l1": float((denoised - clean).abs().mean()),
            "adversarial": [],
        }
        for eps, adv in adversarial.items():
            out["adversarial"].append({
                "eps": eps,
                "recovered": float((predict(model, denoiser.transform(adv)) == reference).float().mean()),
                "recovered_without": float((predict(model, adv) == reference).float().mean()),
            })
    return out


def train_denoiser(spec: DefenseSpec, images_u8: np.ndarray, model: ImageModel, *, seed: int = 0,
                   device: str = "cpu", progress: Progress | None = None) -> tuple[Denoiser, dict[str, Any]]:
    """Train the ``denoiser`` of ``spec`` for ``model`` on (N,H,W,3) uint8 catalog images; returns the
    denoiser (eval mode, CPU) and its report (held-out measurements, per-epoch losses, seconds)."""
    if spec.kind != "denoiser":
        raise InvalidInput(f"train_denoiser fits a 'denoiser', not {spec.kind!r}")
    p = spec.fit_params()
    x_all = to_tensor(images_u8)
    fit_idx, held_idx = held_out_split(x_all.shape[0], p["held_out"], seed)
    started = time.perf_counter()
    was_training, home = model.training, model.mean.device
    frozen = [q for q in model.parameters() if q.requires_grad]
    with cpu_threads(1) if device == "cpu" else nullcontext(), \
            torch.random.fork_rng(devices=[] if device == "cpu" else None):
        torch.manual_seed(seed)
        model.to(device).eval()
        for q in frozen:  # the extractor guides the denoiser; it is not trained
            q.requires_grad_(False)
        try:
            x_all = x_all.to(device)
            fit, held = x_all[fit_idx], x_all[held_idx]
            adv_fit = {eps: pgd_examples(model, fit, eps, p["pgd_steps"]) for eps in p["train_eps"]}
            adv_held = {eps: pgd_examples(model, held, eps, p["pgd_steps"]) for eps in p["train_eps"]}
            attack_seconds = time.perf_counter() - started
            denoiser = Denoiser(**spec.module_params()).to(device)
            inputs = torch.cat([fit, *adv_fit.values()])
            targets = fit.repeat(1 + len(adv_fit), 1, 1, 1)
            with torch.no_grad():
                target_features = torch.cat([model.features(targets[i : i + 256]) for i in range(0, len(targets), 256)])
            opt = torch.optim.Adam(denoiser.parameters(), lr=p["lr"])
            steps = p["epochs"] * math.ceil(inputs.shape[0] / p["batch_size"])
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
            gen = torch.Generator().manual_seed(seed)
            history = []
            for epoch in range(p["epochs"]):
                denoiser.train()
                t0, total = time.perf_counter(), 0.0
                order = torch.randperm(inputs.shape[0], generator=gen).to(device)
                for start in range(0, order.shape[0], p["batch_size"]):
                    idx = order[start : start + p["batch_size"]]
                    out = denoiser.transform(inputs[idx])
                    loss = (out - targets[idx]).square().mean()
                    if p["feature_weight"] > 0:
                        loss = loss + p["feature_weight"] * (model.features(out) - target_features[idx]).square().mean()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    total += float(loss.detach()) * idx.shape[0]
                if not math.isfinite(total):
                    raise InvalidInput(f"denoiser training diverged at epoch {epoch + 1}; lower its lr")
                history.append({"epoch": epoch + 1, "loss": total / inputs.shape[0],
                                "seconds": time.perf_counter() - t0})
                if progress is not None:
                    progress({**history[-1], "done": epoch + 1, "total": p["epochs"], "unit": "epochs"})
            denoiser.eval()
            measured = _measure(model, denoiser, held, adv_held)
        finally:
            for q in frozen:
                q.requires_grad_(True)
            model.to(home).train(was_training)
    report = {"n_fit": int(fit_idx.shape[0]), "n_held_out": int(held_idx.shape[0]), "seed": seed,
              "attack": {"method": "pgd", "norm": "linf", "targeted": False, "eps": p["train_eps"],
                         "steps": p["pgd_steps"], "labels": "the extractor's predictions"},
              "held_out": measured, "history": history, "attack_seconds": attack_seconds,
              "seconds": time.perf_counter() - started}
    return denoiser.cpu().eval(), report
