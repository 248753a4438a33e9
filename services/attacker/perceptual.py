"""LPIPS from torchmetrics, with its backbone loaded from a local file (never downloaded).

torchmetrics ships LPIPS' linear heads but builds the AlexNet/VGG/SqueezeNet backbone with
torchvision's ``weights=DEFAULT`` (a download). We build it random (``pnet_rand=True``) and load
the backbone's torchvision state dict (``features.<i>.*`` keys, e.g. the file torchvision would
have downloaded, ``alexnet-owt-7be5be79.pth``) from ``weights``. Without a file LPIPS is
*unavailable* -- reported as such, never replaced by a made-up number.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Literal

import torch

LpipsNet = Literal["alex", "vgg", "squeeze"]


def _load_backbone(lp: torch.nn.Module, weights: Path) -> None:
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    # the slices (slice1.0, slice2.2, ...) hold torchvision's features[i] under their original index i
    targets = {}
    for slice_name, module in lp.net.named_children():
        for idx, _ in module.named_children():
            targets[idx] = slice_name
    mapped = {}
    for key, value in state.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "features" and parts[1] in targets:
            mapped[f"{targets[parts[1]]}.{parts[1]}.{parts[2]}"] = value
    own = lp.net.state_dict()
    if set(mapped) != set(own):
        missing = sorted(set(own) - set(mapped))[:5]
        raise ValueError(f"not a backbone state dict for this LPIPS net (missing e.g. {missing})")
    lp.net.load_state_dict(mapped, strict=True)


def lpips_distance(
    clean: torch.Tensor, adv: torch.Tensor, weights: Path | None, net: LpipsNet = "alex", batch_size: int = 64
) -> tuple[torch.Tensor | None, str]:
    """clean, adv (N,3,H,W) in [0,1] -> ((N,) LPIPS or None, status: 'ok (...)' or 'unavailable: why')."""
    if weights is None:
        return None, "unavailable: no LPIPS backbone weights configured (lpips_weights=None)"
    weights = Path(weights)
    if not weights.is_file():
        return None, f"unavailable: LPIPS backbone weights not found at {weights}"
    from torchmetrics.functional.image.lpips import _NoTrainLpips

    lp = _NoTrainLpips(net=net, pretrained=True, pnet_rand=True)  # heads from torchmetrics, random backbone...
    try:
        _load_backbone(lp, weights)  # ...replaced by the local file
    except (ValueError, RuntimeError, OSError, pickle.UnpicklingError) as exc:
        return None, f"unavailable: cannot load LPIPS backbone from {weights}: {exc}"
    lp = lp.to(clean.device)
    with torch.no_grad():
        out = [
            lp(clean[i : i + batch_size], adv[i : i + batch_size], normalize=True).flatten()
            for i in range(0, clean.shape[0], batch_size)
        ]
    return torch.cat(out).cpu(), f"ok ({net}, backbone {weights.name})"
