"""Recommender-aware attacks beyond the study: they move the *features* a recommender consumes.

* ``feature_match``: PGD minimising ``||features(x') - c||_2`` where ``c`` (D,) is the centroid of
  the target category's clean features (pass ``target_features`` (M,D) or (D,) to ``run_attack``).
* ``score``: PGD maximising a differentiable ``score_fn(features (N,D)) -> (N,)``, e.g. a
  recommender's mean predicted score of the item over a set of users (pass ``score_fn``).

Both use :func:`projected_gradient` (pixel or normalised budget, L-inf or L2, same delivery), and
ignore class labels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch

from advrec_common.errors import InvalidInput
from advrec_common.vision.model import ModelOutput
from services.attacker.attacks.base import Attack
from services.attacker.attacks.projected_gradient import LossFn, projected_gradient

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


class _FeatureAttack(Attack):

    def loss(self) -> LossFn:
        raise NotImplementedError

    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        s = self.spec
        return projected_gradient(
            self.model, images, labels, self.loss(), radius=s.radius, step=s.resolved_step, steps=s.resolved_steps,
            norm=s.norm, space=s.budget_space, random_start=s.random_start,
        )


class FeatureMatch(_FeatureAttack):
    """Pull the image's features toward the target category's centroid."""

    name: ClassVar[str] = "feature_match"

    def check_extra(self) -> None:
        extra = dict(self.extra)
        tf = extra.pop("target_features", None)
        if extra:
            raise InvalidInput(f"feature_match takes only target_features, got {sorted(extra)}")
        if not isinstance(tf, torch.Tensor) or tf.ndim not in (1, 2) or tf.numel() == 0:
            raise InvalidInput("feature_match needs target_features: a (D,) centroid or (M,D) tensor of features")
        centroid = tf.float() if tf.ndim == 1 else tf.float().mean(0)
        if centroid.shape[0] != self.model.feature_dim:
            raise InvalidInput(f"target_features have dim {centroid.shape[0]}, the model's features {self.model.feature_dim}")
        if not torch.isfinite(centroid).all():
            raise InvalidInput("target_features contain NaN/inf")
        self.centroid = centroid.to(self.device)

    def loss(self) -> LossFn:
        c = self.centroid

        def ascend(out: ModelOutput, _labels: torch.Tensor) -> torch.Tensor:
            return -(out.features - c).norm(dim=1)

        return ascend


class ScoreAttack(_FeatureAttack):
    """Raise a recommender's score of the item computed from its features."""

    name: ClassVar[str] = "score"

    def check_extra(self) -> None:
        extra = dict(self.extra)
        fn = extra.pop("score_fn", None)
        if extra:
            raise InvalidInput(f"score takes only score_fn, got {sorted(extra)}")
        if not callable(fn):
            raise InvalidInput("score needs score_fn: a differentiable callable features (N,D) -> scores (N,)")
        self.score_fn: ScoreFn = fn

    def loss(self) -> LossFn:
        fn = self.score_fn

        def ascend(out: ModelOutput, _labels: torch.Tensor) -> torch.Tensor:
            scores = fn(out.features)
            if scores.shape != (out.features.shape[0],):
                raise InvalidInput(f"score_fn must return (N,) scores, got {tuple(scores.shape)}")
            return scores

        return ascend
