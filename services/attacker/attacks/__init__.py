"""Attack registry and the one entry point :func:`run_attack`.

Adding an attack is one file with an :class:`~services.attacker.attacks.base.Attack` subclass
plus one line in ``ATTACKS``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch

from advrec_common.errors import InvalidInput
from advrec_common.vision.model import ImageModel
from services.attacker.attacks.apgd import APGD
from services.attacker.attacks.base import Attack
from services.attacker.attacks.bim import BIM
from services.attacker.attacks.cw import CarliniWagnerL2
from services.attacker.attacks.feature import FeatureMatch, ScoreAttack
from services.attacker.attacks.fgsm import FGSM
from services.attacker.attacks.mifgsm import MIFGSM
from services.attacker.attacks.noise import Noise
from services.attacker.attacks.pgd import PGD
from services.attacker.attacks.promotion import Expa, Insa, InsaTopK
from services.attacker.attacks.spsa import SPSA
from services.attacker.attacks.square import Square
from services.attacker.spec import AttackSpec

ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls for cls in (FGSM, BIM, PGD, MIFGSM, CarliniWagnerL2, APGD, Square, SPSA, FeatureMatch, ScoreAttack,
                              Insa, InsaTopK, Expa, Noise)
}


def check_images(images: torch.Tensor) -> None:
    """InvalidInput unless images is a non-empty (N,3,H,W) float tensor of finite values in [0,1]."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise InvalidInput("images must be a float tensor (N,3,H,W) in [0,1]")
    if images.ndim != 4 or images.shape[1] != 3:
        raise InvalidInput(f"images must be (N,3,H,W), got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise InvalidInput("empty batch: no images to attack")
    if not torch.isfinite(images).all():
        raise InvalidInput("images contain NaN or inf")
    if images.min() < 0 or images.max() > 1:
        raise InvalidInput(f"images must be in [0,1], got [{images.min().item():.3g}, {images.max().item():.3g}]")


def resolve_labels(
    model: ImageModel, images: torch.Tensor, target: int | torch.Tensor | None, targeted: bool, needs_labels: bool,
    positional: bool = False,
) -> torch.Tensor:
    """(N,) long labels for the attack: the target class(es) if targeted, else the clean class (given or predicted);
    a positional attack's labels are the images' positions 0..N-1 (it reads per-image inputs by them)."""
    n = images.shape[0]
    if positional:
        return torch.arange(n)
    if target is None:
        if targeted and needs_labels:
            raise InvalidInput("a targeted attack needs a target class")
        if not needs_labels:
            return torch.zeros(n, dtype=torch.long)
        with torch.no_grad():
            return model(images).argmax(1).cpu()
    t = torch.as_tensor(target)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise InvalidInput(f"target must be an integer class index, got dtype {t.dtype}")
    t = t.long().cpu()
    if t.ndim == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise InvalidInput(f"target must be an int or ({n},) tensor, got shape {tuple(t.shape)}")
    if t.min() < 0 or t.max() >= model.num_classes:
        raise InvalidInput(f"target class out of range: model has {model.num_classes} classes {model.class_names}")
    return t.clone()


@contextmanager
def _attack_mode(model: ImageModel, device: torch.device, seed: int):
    """Eval mode on ``device`` with a seeded, forked RNG; restores the model's mode and device after."""
    was_training = model.training
    home = model.mean.device
    model.eval().to(device)
    forked = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=forked):
            torch.manual_seed(seed)
            yield
    finally:
        model.to(home).train(was_training)


def run_attack(
    model: ImageModel,
    images: torch.Tensor,
    spec: AttackSpec,
    target: int | torch.Tensor | None,
    device: str = "cpu",
    batch_size: int = 128,
    progress: Callable[[dict], None] | None = None,
    **extra: Any,
) -> torch.Tensor:
    """images (N,3,H,W) float in [0,1] -> adversarial images (N,3,H,W) float in [0,1] on images' device.

    ``target``: class index or (N,) indices (targeted), else the clean labels (None: predicted).
    Batched over ``batch_size``; seeded by ``spec.seed`` (results depend on seed and batch size).
    ``progress`` is called after every batch with ``{"done": n_done, "total": n, "unit": "images"}``,
    and within a batch whenever the network's forward passes so far stand for one more image (an
    exception it raises, e.g. a cancellation, stops the attack there).
    ``extra``: ``target_features`` (feature_match, expa), ``score_fn`` (score), or ``objective``, ``rows`` and
    ``objective_spatial`` (insa, insa_topk: :mod:`~services.attacker.attacks.promotion`).
    """
    if not isinstance(spec, AttackSpec):
        raise InvalidInput(f"spec must be an AttackSpec, got {type(spec).__name__}")
    if batch_size <= 0:
        raise InvalidInput(f"batch_size must be > 0, got {batch_size}")
    check_images(images)
    cls = ATTACKS[spec.method]
    dev = torch.device(device)
    with _attack_mode(model, dev, spec.seed):
        attack = cls(model, spec, dev, **extra)
        labels = resolve_labels(model, images.to(dev), target, spec.targeted, cls.info().needs_labels,
                                cls.info().positional)
        n = images.shape[0]
        out = []
        for i in range(0, n, batch_size):
            hook = _within_batch(model, spec, progress, i, min(batch_size, n - i), n) if progress else None
            try:
                out.append(attack(images[i : i + batch_size].to(dev).float(), labels[i : i + batch_size].to(dev))
                           .to(images.device))
            finally:
                if hook is not None:
                    hook.remove()
            if progress is not None:
                progress({"done": min(i + batch_size, n), "total": n, "unit": "images"})
    return torch.cat(out)


def _within_batch(model: ImageModel, spec: AttackSpec, progress: Callable[[dict], None], start: int, size: int,
                  total: int) -> torch.utils.hooks.RemovableHandle:
    """Progress inside one long batch (a PGD batch at 224 px takes minutes on a CPU): count the
    network's forward passes against the passes the attack is expected to make, and report, at
    every pass, the images that fraction stands for (never the whole batch before it is done)."""
    if spec.method == "cw":
        expected = spec.cw_steps * spec.cw_binary_steps
    elif spec.method == "square":
        expected = spec.resolved_queries
    else:
        expected = 1 if spec.method == "fgsm" else spec.resolved_steps
    state = {"passes": 0, "done": start}

    def counted(*_: Any) -> None:
        # called on every pass, not only when the count moves: a C&W batch makes thousands of passes per
        # image, and the callback is where a cancellation is noticed (the pipeline's check is throttled)
        state["passes"] += 1
        state["done"] = max(state["done"], start + min(size - 1, size * state["passes"] // max(expected, 1)))
        progress({"done": state["done"], "total": total, "unit": "images"})

    return model.body.register_forward_hook(counted)


__all__ = ["ATTACKS", "Attack", "AttackSpec", "check_images", "resolve_labels", "run_attack"]
