"""The base of every defense: a transform of images (N,3,H,W) float in [0,1] with its gradient rule.

* :meth:`Defense.transform` is the defense a shop runs (no promise about gradients: JPEG goes
  through PIL).
* :meth:`Defense.forward` is what the adaptive attacker differentiates, one random draw:
  the transform itself where it is differentiable (``gradient = "exact"``), or its value with the
  identity's gradient where it is not (``"bpda"``: Backward Pass Differentiable Approximation,
  Athalye, Carlini & Wagner 2018, section 4.1). Random defenses (``random = True``) are averaged
  over ``eot_draws`` draws per step by the composition (Expectation over Transformation, ibid. 4.3):
  :class:`~advrec_common.vision.defenses.defended.DefendedModel`.
* A detector does not change the image; it adds ``views`` (squeezed versions of the image) that the
  model sees in the same forward, a ``score`` from the model's logits on the image and its views,
  and the ``penalty`` a detector-aware attacker subtracts from its objective.

A defense is rebuilt from ``config()`` (``type(d)(**d.config())``) plus its state dict.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from advrec_common.errors import InvalidInput

Transform = Callable[[torch.Tensor], torch.Tensor]


class _StraightThrough(torch.autograd.Function):
    """Forward: ``fn(x)`` exactly; backward: the incoming gradient unchanged (d fn / dx := I)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fn: Transform) -> torch.Tensor:  # noqa: ARG004 - ctx unused
        return fn(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ARG004
        return grad, None


def straight_through(x: torch.Tensor, fn: Transform) -> torch.Tensor:
    """``fn(x)`` whose gradient with respect to ``x`` is the identity's (BPDA with g(x) = x)."""
    return _StraightThrough.apply(x, fn)


def check_images(x: torch.Tensor) -> None:
    """InvalidInput unless ``x`` is a float (N,3,H,W) tensor."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InvalidInput(f"a defense takes float images (N,3,H,W) in [0,1], got {shape}")


class Defense(nn.Module):
    """Subclasses set ``kind`` (a key of :data:`~advrec_common.vision.defenses.spec.DEFENSE_KINDS`),
    ``gradient`` and ``random``, and implement :meth:`transform` and :meth:`config`."""

    kind: ClassVar[str] = "defense"
    gradient: ClassVar[str] = "exact"  # "exact" | "bpda"
    random: ClassVar[bool] = False

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """images (N,3,H,W) float in [0,1] -> the defended images, same shape, in [0,1]."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The transform with this defense's gradient rule (one random draw)."""
        check_images(x)
        return straight_through(x, self.transform) if self.gradient == "bpda" else self.transform(x)

    def config(self) -> dict[str, Any]:
        """JSON-able keyword arguments that rebuild this defense (weights aside)."""
        raise NotImplementedError

    @property
    def eot_draws(self) -> int:
        """Draws the adaptive attacker averages per step: 1 for a deterministic defense."""
        return 1

    # -- detectors (a transform has none of these) -------------------------------------------------
    @property
    def detects(self) -> bool:
        return False

    def views(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Extra images the model must see to judge ``x`` (a detector's squeezed versions); [] for a transform."""
        return []

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        """(1+V, N, C) logits of the images and their V views -> (N,) detection scores."""
        raise InvalidInput(f"defense {self.kind!r} is not a detector: it has no score")

    def flagged(self, scores: torch.Tensor) -> torch.Tensor:
        """(N,) scores -> (N,) bool: the uploads the detector flags."""
        raise InvalidInput(f"defense {self.kind!r} is not a detector: it flags nothing")

    def penalty(self, scores: torch.Tensor) -> torch.Tensor:
        """(N,) scores -> (N,) what a detector-aware attacker subtracts from its objective."""
        raise InvalidInput(f"defense {self.kind!r} is not a detector: it has no penalty")

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items() if not isinstance(v, (list, dict)))
