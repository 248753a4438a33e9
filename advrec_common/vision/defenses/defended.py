"""A defense composed with an :class:`ImageModel` is another :class:`ImageModel`: :class:`DefendedModel`.

The same body, pool and head (shared modules, not copies) behind the defense, so everything that
takes an ``ImageModel`` takes it: extraction, the attacks, measurements.

* **deployed** (``adaptive=False``): what the shop runs. ``forward_all`` applies the defense's
  transform without gradient (JPEG through PIL has none) and one random draw, then the model. The
  non-adaptive attacker attacks the bare model (:meth:`DefendedModel.bare`) and its images are
  then judged through this.
* **adaptive** (``adaptive=True``): what the adaptive attacker differentiates (Athalye, Carlini &
  Wagner 2018). The defense's gradient rule (exact, or BPDA for a non-differentiable transform);
  for a random defense the outputs (features, logits, spatial map) are the mean over
  ``eot_draws`` draws, all in one batched forward (EOT: any loss of the outputs is then
  differentiated through this Monte-Carlo estimate of the expected output; for a loss linear in the
  outputs that is exactly the mean of the per-draw gradients); for a detector the output carries a
  ``penalty`` that every attack subtracts from its per-image objective (detector-aware loss).

Attacks need no code of their own for either: they call ``forward_all``/``forward`` as on any model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from advrec_common.vision.defenses.base import Defense, check_images
from advrec_common.vision.model import ImageModel, ModelOutput


@dataclass
class Screening:
    """What the deployed defense makes of images: the model's outputs on the defended images, and
    for a detector its scores (N,) and flags (N,) bool (None for a transform)."""

    output: ModelOutput
    scores: torch.Tensor | None = None
    flagged: torch.Tensor | None = None


def _split(t: torch.Tensor, parts: int) -> torch.Tensor:
    """(parts*M, ...) -> (parts, M, ...)."""
    return t.reshape(parts, t.shape[0] // parts, *t.shape[1:])


class DefendedModel(ImageModel):
    """``model`` behind ``defense`` (see the module doc); ``model`` is not changed."""

    def __init__(self, model: ImageModel, defense: Defense, adaptive: bool = False, seed: int | None = None):
        super().__init__(model.body, model.pool, model.head, model.feature_dim, model.class_names,
                         mean=tuple(float(v) for v in model.mean.flatten()),
                         std=tuple(float(v) for v in model.std.flatten()),
                         backbone=model.backbone, input_size=model.input_size)
        self.defense = defense
        self.adaptive = bool(adaptive)
        self.seed = seed
        # the deployed defense's own draws (a random defense's resize-and-pad per upload): seeded, they do not
        # depend on what else used torch's global RNG before (loading a model initialises its layers from it)
        self.generator = torch.Generator().manual_seed(seed) if seed is not None and not adaptive else None
        self.to(model.mean.device).train(model.training)

    @contextmanager
    def _draws(self) -> Iterator[None]:
        """The deployed transform's random draws come from this model's generator when it has one (torch's
        global RNG set to its state for the call, then restored; the generator advances), else from the global
        RNG."""
        if self.generator is None or not self.defense.random:
            yield
            return
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.generator.get_state())
            yield
            self.generator.set_state(torch.get_rng_state())

    @property
    def penalised(self) -> bool:
        return self.adaptive and self.defense.detects

    def bare(self) -> ImageModel:
        """The model without the defense (its modules, shared)."""
        return ImageModel(self.body, self.pool, self.head, self.feature_dim, self.class_names,
                          mean=tuple(float(v) for v in self.mean.flatten()),
                          std=tuple(float(v) for v in self.std.flatten()),
                          backbone=self.backbone, input_size=self.input_size).train(self.training)

    def with_head(self, head: nn.Module, class_names: Sequence[str]) -> DefendedModel:
        """The same defense in front of the same body and pool under another classifier head."""
        twin = DefendedModel(self.bare().with_head(head, class_names), self.defense, self.adaptive)
        twin.seed, twin.generator = self.seed, self.generator  # one stream of draws for both
        return twin

    def _model(self, x: torch.Tensor, spatial: bool) -> ModelOutput:
        return super().forward_all(x, spatial=spatial)

    def forward_all(self, x: torch.Tensor, spatial: bool = False, normalized: bool = False) -> ModelOutput:
        self._check(x)
        pixels = self.denormalize(x) if normalized else x
        if not self.adaptive:
            with torch.no_grad(), self._draws():
                defended = self.defense.transform(pixels)
            return self._model(defended, spatial)
        draws = self.defense.eot_draws
        batch = pixels.repeat(draws, 1, 1, 1) if draws > 1 else pixels
        views = self.defense.views(batch)
        # the defended images and a detector's views go through the model in one forward
        out = self._model(torch.cat([self.defense(batch), *views]) if views else self.defense(batch), spatial)
        parts = 1 + len(views)
        logits = _split(out.logits, parts)
        penalty = self.defense.penalty(self.defense.score(logits)) if views else None
        main = ModelOutput(features=_split(out.features, parts)[0], logits=logits[0],
                           spatial=_split(out.spatial, parts)[0] if out.spatial is not None else None,
                           penalty=penalty)
        if draws == 1:
            return main

        def mean(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else _split(t, draws).mean(dim=0)

        return ModelOutput(features=mean(main.features), logits=mean(main.logits), spatial=mean(main.spatial),
                           penalty=mean(main.penalty))

    @torch.no_grad()
    def screen(self, x: torch.Tensor, flags: bool = True) -> Screening:
        """images (N,3,H,W) float in [0,1] -> the deployed defense's :class:`Screening` of them, in one
        forward (a detector's views ride along). ``flags=False``: a detector's scores without its
        flags (what setting its threshold needs)."""
        check_images(x)
        with self._draws():
            defended = self.defense.transform(x)
        views = self.defense.views(x)
        if not views:
            return Screening(self._model(defended, False))
        parts = 1 + len(views)
        out = self._model(torch.cat([defended, *views]), False)
        logits = _split(out.logits, parts)
        scores = self.defense.score(logits)
        return Screening(ModelOutput(features=_split(out.features, parts)[0], logits=logits[0]), scores,
                         self.defense.flagged(scores) if flags else None)


def defend(model: ImageModel, defense: Defense, adaptive: bool = False, seed: int | None = None) -> DefendedModel:
    """``model`` behind ``defense``: deployed (``adaptive=False``) or as the adaptive attacker sees it. A deployed
    random defense with a ``seed`` draws from its own generator (reproducible whatever ran before); without one,
    from torch's global RNG (a live service's uploads)."""
    return DefendedModel(model, defense, adaptive, seed)
