"""A category head: a linear classifier of a catalog's own labels on an extractor's clean features.

A shop's labels ("monitor", "document") are not the classes an extractor was trained on (ImageNet,
the demo's clothing types), yet a targeted attack must aim at a class the model predicts. So each
defense gets a head fitted on its own penultimate features for the catalog's labels, and the attack
runs through backbone + head (``ImageModel.with_head``): success then means "classified as the
target category by the head the attack targeted".

The head is multinomial logistic regression: features standardised with the training rows' mean
and standard deviation, weights from zero, full-batch L-BFGS (float64) on mean cross-entropy +
``l2``/2 ||W||^2 -- a convex problem, so the result does not depend on a random initialisation,
and on CPU it is the same bit for bit from run to run. The standardisation is folded into the
returned weights, so the head is one ``nn.Linear`` on raw features. ``held_out_accuracy`` is the
accuracy on a seeded stratified ``val_fraction`` of the items of a head fitted to the rest; the
head that is returned is then refitted on every item (the attack needs the best head, the report
an honest estimate of how good such a head is).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from advrec_common.cpu_threads import cpu_threads
from advrec_common.errors import InvalidInput
from services.extractor.training import stratified_split

HEAD_L2 = 1e-2
HEAD_MAX_ITER = 200


@dataclass
class CategoryHead:
    """weight (C,D) float32 and bias (C,) float32 of logits = features @ weight.T + bias."""

    weight: np.ndarray
    bias: np.ndarray
    class_names: list[str]
    report: dict[str, Any] = field(default_factory=dict)

    def module(self) -> nn.Linear:
        """The head as an ``nn.Linear(D, C)`` (float32, eval mode)."""
        lin = nn.Linear(self.weight.shape[1], self.weight.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(self.weight, dtype=np.float32)))
            lin.bias.copy_(torch.from_numpy(np.ascontiguousarray(self.bias, dtype=np.float32)))
        return lin.eval()

    def logits(self, features: np.ndarray) -> np.ndarray:
        """(N,D) features -> (N,C) logits."""
        return np.asarray(features, dtype=np.float32) @ self.weight.T.astype(np.float32) + self.bias


def _fit(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float, max_iter: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(weight (C,D), bias (C,)) on raw features, and L-BFGS iterations used."""
    xt = torch.from_numpy(np.asarray(x, dtype=np.float64))
    mu = xt.mean(0)
    sd = xt.std(0, unbiased=False).clamp_min(1e-6)
    z = (xt - mu) / sd
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    w = torch.zeros(n_classes, z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(z @ w.T + b, yt) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    iterations = int(opt.state[opt._params[0]].get("n_iter", 0))
    with torch.no_grad():
        weight = w / sd  # fold the standardisation into the weights
        bias = b - (w * (mu / sd)).sum(1)
    return weight.numpy().astype(np.float32), bias.numpy().astype(np.float32), iterations


def fit_category_head(features: np.ndarray, labels: np.ndarray, class_names: Sequence[str], *, seed: int = 0,
                      l2: float = HEAD_L2, val_fraction: float = 0.2, max_iter: int = HEAD_MAX_ITER) -> CategoryHead:
    """Fit a head predicting ``labels`` (N,) int in [0, C) from ``features`` (N,D); see the module docstring.

    ``held_out_accuracy`` is None (with the reason in ``report["note"]``) when no category has the
    two items a stratified split needs.
    """
    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(labels, dtype=np.int64)
    names = list(class_names)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise InvalidInput(f"need features (N,D) and labels (N,), got {x.shape} and {y.shape}")
    if len(names) < 2:
        raise InvalidInput(f"a category head needs at least two categories, got {names}")
    if y.size == 0 or y.min() < 0 or y.max() >= len(names):
        raise InvalidInput(f"labels must lie in [0, {len(names)})")
    if not np.isfinite(x).all():
        raise InvalidInput("features contain NaN or infinite values")
    t0 = time.perf_counter()
    report: dict[str, Any] = {"method": "multinomial logistic regression (L-BFGS, standardised features)",
                              "l2": l2, "n_items": int(y.size), "n_classes": len(names), "seed": seed,
                              "val_fraction": val_fraction, "held_out_accuracy": None}
    with cpu_threads(1):  # matmul sums split across threads would change the head with the thread count
        weight, bias, iterations = _fit_with_estimate(x, y, names, l2, max_iter, val_fraction, seed, report)
    report.update(train_accuracy=float(((x @ weight.T + bias).argmax(1) == y).mean()), iterations=iterations,
                  seconds=time.perf_counter() - t0)
    return CategoryHead(weight=weight, bias=bias, class_names=names, report=report)


def _fit_with_estimate(x: np.ndarray, y: np.ndarray, names: list[str], l2: float, max_iter: int,
                       val_fraction: float, seed: int, report: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, int]:
    """The held-out estimate (into ``report``) from a stratified split, then the fit on every item."""
    with torch.random.fork_rng(devices=[]):
        try:
            train, val = stratified_split(y, val_fraction, seed)
        except InvalidInput as exc:
            report["note"] = f"no held-out estimate: {exc}"
        else:
            w, b, _ = _fit(x[train], y[train], len(names), l2, max_iter)
            report.update(held_out_accuracy=float(((x[val] @ w.T + b).argmax(1) == y[val]).mean()),
                          n_held_out=int(val.size))
        return _fit(x, y, len(names), l2, max_iter)
