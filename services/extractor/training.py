"""Training feature extractors: standard, PGD adversarial training (Madry) and Free-AT (Shafahi).

All budgets are L-inf in **pixel units / 255** on images in [0,1] (normalisation is inside the
:class:`ImageModel`), i.e. ``eps=8`` means every pixel moves by at most 8/255. The inner
maximisation of PGD-AT and the robustness evaluation use ``torchattacks.PGD`` (one tested
implementation shared with the attacker service); Free-AT has no library implementation and is
written here (a few lines: replay each minibatch ``m`` times, one persistent perturbation).
Training is seeded and deterministic on CPU; the global RNG state of the caller is left untouched.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field
from torch import nn
from torch.nn import functional as F

from advrec_common.cpu_threads import cpu_threads
from advrec_common.errors import InvalidInput
from advrec_common.settings import resolve_device
from advrec_common.vision.backbones import build_model
from advrec_common.vision.model import ImageModel
from services.extractor.train_config import TrainConfig

Progress = Callable[[dict[str, Any]], None]


class EpochStats(BaseModel):
    epoch: int
    loss: float
    train_accuracy: float
    seconds: float


class TrainReport(BaseModel):
    """What a training run achieved; accuracies are fractions in [0,1] on the held-out images."""

    method: str
    backbone: str
    epochs: int
    passes: int = Field(description="passes over the training data (epochs / replays for Free-AT)")
    optimizer_steps: int
    clean_accuracy: float
    robust_accuracy: float = Field(description="accuracy under PGD-<eval_steps> at eval_eps/255 (L-inf)")
    eval_eps: float
    eval_steps: int
    train_seconds: float
    n_train: int
    n_val: int
    history: list[EpochStats] = Field(default_factory=list)
    config: TrainConfig


# -- data --------------------------------------------------------------------------------------------
def _check_data(images: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise InvalidInput(f"images must be (N,H,W,3) uint8, got {images.shape} {images.dtype}")
    if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise InvalidInput(f"labels must be ({images.shape[0]},) integers, got {labels.shape} {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise InvalidInput(f"labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}")
    return images, labels.astype(np.int64)


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices): round(val_fraction * n_c) items of every class c (>= 1 when n_c >= 2)."""
    if not 0 < val_fraction < 1:
        raise InvalidInput(f"val_fraction must lie in (0, 1), got {val_fraction}")
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(labels.shape[0])
    order = order[np.argsort(labels[order], kind="stable")]  # grouped by class, shuffled within
    counts = np.bincount(labels, minlength=int(labels.max()) + 1 if labels.size else 0)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(order.shape[0]) - starts[labels[order]]
    n_val = np.where(counts >= 2, np.maximum(np.rint(counts * val_fraction), 1), 0).astype(np.int64)
    is_val = rank < n_val[labels[order]]
    train, val = np.sort(order[~is_val]), np.sort(order[is_val])
    if train.size == 0 or val.size == 0:
        raise InvalidInput("too few images for a train/validation split (need >= 2 images of some class)")
    return train, val


def _batch(images_u8: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """uint8 (N,3,H,W) rows -> float (B,3,H,W) in [0,1]."""
    return images_u8[idx].float().div_(255.0)


def _to_nchw_u8(images: np.ndarray, device: str) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous().to(device)


# -- evaluation --------------------------------------------------------------------------------------
def pgd_attack(model: nn.Module, eps: float, steps: int, step_size: float | None = None, random_start: bool = True) -> Any:
    """An untargeted L-inf ``torchattacks.PGD`` on images in [0,1]; eps/step_size in pixels/255."""
    import torchattacks

    alpha = (step_size if step_size is not None else 2.5 * eps / steps) / 255.0
    return torchattacks.PGD(model, eps=eps / 255.0, alpha=alpha, steps=steps, random_start=random_start)


def evaluate_robustness(
    model: ImageModel,
    images_u8: np.ndarray,
    labels: np.ndarray,
    eps: float,
    steps: int,
    device: str = "cpu",
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, float]:
    """Clean and PGD-``steps`` (L-inf, eps pixels/255, random start) accuracy of ``model``.

    images_u8: (N,H,W,3) uint8; labels: (N,) class indices. Returns fractions in [0,1].
    """
    images_u8, labels = _check_data(images_u8, labels, model.num_classes)
    if eps < 0 or steps < 1:
        raise InvalidInput(f"need eps >= 0 and steps >= 1, got eps={eps}, steps={steps}")
    device = resolve_device(device)
    n = images_u8.shape[0]
    if n == 0:
        raise InvalidInput("no images to evaluate")
    was_training = model.training
    model.to(device).eval()
    x_all, y_all = _to_nchw_u8(images_u8, device), torch.from_numpy(labels).to(device)
    attack = pgd_attack(model, eps, steps) if eps > 0 else None
    clean = robust = 0
    with torch.random.fork_rng(devices=[] if device == "cpu" else None):
        torch.manual_seed(seed)
        for start in range(0, n, batch_size):
            idx = torch.arange(start, min(start + batch_size, n), device=device)
            x, y = _batch(x_all, idx), y_all[idx]
            with torch.no_grad():
                ok = model(x).argmax(1) == y
            clean += int(ok.sum())
            if attack is None:
                robust += int(ok.sum())
                continue
            x_adv = attack(x, y)
            with torch.no_grad():
                robust += int((model(x_adv).argmax(1) == y).sum())
    model.train(was_training)
    return {"clean_accuracy": clean / n, "robust_accuracy": robust / n, "eps": float(eps), "steps": int(steps)}


# -- training methods (registry: method -> one optimisation pass over the training data) ------------
class _Trainer:
    """Holds the model, optimiser and schedule; each method's ``epoch`` runs one pass over the data."""

    def __init__(self, model: ImageModel, config: TrainConfig, n_train: int, passes: int, device: str):
        self.model, self.config, self.device = model, config, device
        params = [p for p in model.parameters() if p.requires_grad]
        if config.optimizer == "sgd":
            self.opt: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=False
            )
        else:
            self.opt = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
        batches = math.ceil(n_train / config.batch_size)
        replays = config.replays if config.method == "free_at" else 1
        self.total_steps = passes * batches * replays
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=max(self.total_steps, 1))
        self.steps_done = 0
        self.attack = (
            pgd_attack(model, config.eps, config.pgd_steps, config.step_size, config.random_start)
            if config.method == "pgd_at"
            else None
        )
        self.delta: torch.Tensor | None = None  # Free-AT's persistent perturbation

    def _update(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        self.steps_done += 1
        return float(loss.detach()), logits.detach()

    def standard(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
        return self._update(x, y)

    def pgd_at(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
        assert self.attack is not None
        x_adv = self.attack(x, y)  # torchattacks runs the inner max in eval mode and restores train mode
        return self._update(x_adv, y)

    def free_at(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
        eps = self.config.eps / 255.0
        if self.delta is None or self.delta.shape[1:] != x.shape[1:]:
            self.delta = torch.zeros((self.config.batch_size, *x.shape[1:]), device=x.device)
        total, logits = 0.0, None
        for _ in range(self.config.replays):
            delta = self.delta[: x.shape[0]].clone().requires_grad_(True)
            out = self.model((x + delta).clamp(0.0, 1.0))
            loss = F.cross_entropy(out, y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()  # one backward gives both the weight and the input gradient ("free")
            self.opt.step()
            self.sched.step()
            self.steps_done += 1
            assert delta.grad is not None
            self.delta[: x.shape[0]] = (delta.detach() + eps * delta.grad.sign()).clamp(-eps, eps)
            total, logits = total + float(loss.detach()), out.detach()
        assert logits is not None
        return total / self.config.replays, logits


METHODS: dict[str, Callable[[_Trainer, torch.Tensor, torch.Tensor], tuple[float, torch.Tensor]]] = {
    "standard": _Trainer.standard,
    "pgd_at": _Trainer.pgd_at,
    "free_at": _Trainer.free_at,
}


def train_extractor(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    backbone: str,
    config: TrainConfig,
    device: str = "cpu",
    val_fraction: float = 0.2,
    progress: Progress | None = None,
    init: ImageModel | None = None,
) -> tuple[ImageModel, TrainReport]:
    """Train ``backbone`` on (N,H,W,3) uint8 images with integer ``labels`` by ``config.method``.

    ``init``: a pretrained model of that backbone to fine-tune (its body and pool are trained in
    place under a new, seeded head for ``class_names``); None trains from scratch.

    A seeded stratified ``val_fraction`` of the images is held out; the report gives clean and
    PGD-``eval_steps`` accuracy at ``eval_eps`` on it. ``progress`` gets one dict per pass
    (epoch, loss, train_accuracy, seconds, and ``done``/``total``/``unit`` = passes). Returns the
    model in eval mode on ``device``.
    """
    if not class_names:
        raise InvalidInput("class_names must not be empty")
    images, labels = _check_data(images, labels, len(class_names))
    device = resolve_device(device)
    train_idx, val_idx = stratified_split(labels, val_fraction, config.seed)
    passes = math.ceil(config.epochs / config.replays) if config.method == "free_at" else config.epochs
    started = time.perf_counter()
    history: list[EpochStats] = []
    # on the CPU, one thread: weight gradients summed across threads would make the model depend on the
    # caller's thread count (the same seed must give the same model in every process and home)
    with cpu_threads(1) if device == "cpu" else nullcontext(), \
            torch.random.fork_rng(devices=[] if device == "cpu" else None):
        torch.manual_seed(config.seed)
        if init is None:
            model = build_model(backbone, class_names).to(device)
        else:
            if init.backbone != backbone:
                raise InvalidInput(f"cannot fine-tune a {init.backbone!r} model as backbone {backbone!r}")
            model = init.with_head(nn.Linear(init.feature_dim, len(class_names)), class_names).to(device)
        trainer = _Trainer(model, config, train_idx.shape[0], passes, device)
        step = METHODS[config.method]
        x_all = _to_nchw_u8(images[train_idx], device)
        y_all = torch.from_numpy(labels[train_idx]).to(device)
        gen = torch.Generator().manual_seed(config.seed)
        for epoch in range(passes):
            model.train()
            t0 = time.perf_counter()
            order = torch.randperm(x_all.shape[0], generator=gen).to(device)
            loss_sum, correct = 0.0, 0
            for start in range(0, order.shape[0], config.batch_size):
                idx = order[start : start + config.batch_size]
                y = y_all[idx]
                loss, logits = step(trainer, _batch(x_all, idx), y)
                if not math.isfinite(loss):
                    raise InvalidInput(f"training diverged (loss {loss}) at pass {epoch + 1}; lower the lr")
                loss_sum += loss * idx.shape[0]
                correct += int((logits.argmax(1) == y).sum())
            stats = EpochStats(
                epoch=epoch + 1,
                loss=loss_sum / x_all.shape[0],
                train_accuracy=correct / x_all.shape[0],
                seconds=time.perf_counter() - t0,
            )
            history.append(stats)
            if progress is not None:
                progress({**stats.model_dump(), "done": epoch + 1, "total": passes, "unit": "passes"})
        train_seconds = time.perf_counter() - started
        model.eval()
        assert config.eval_eps is not None
        metrics = evaluate_robustness(
            model, images[val_idx], labels[val_idx], config.eval_eps, config.eval_steps, device, seed=config.seed
        )
    report = TrainReport(
        method=config.method,
        backbone=backbone,
        epochs=config.epochs,
        passes=passes,
        optimizer_steps=trainer.steps_done,
        clean_accuracy=metrics["clean_accuracy"],
        robust_accuracy=metrics["robust_accuracy"],
        eval_eps=config.eval_eps,
        eval_steps=config.eval_steps,
        train_seconds=train_seconds,
        n_train=int(train_idx.shape[0]),
        n_val=int(val_idx.shape[0]),
        history=history,
        config=config,
    )
    return model, report
