"""Item promotion attacks (Liu & Larson, "Adversarial Item Promotion", 2021): a seller perturbs the image
of *their own* item so that a visual recommender ranks it higher.

* ``insa`` -- the insider: PGD ascending a recommender's objective of the item computed from the
  features of its image (its mean predicted score over a set of users), back-propagated through the
  recommender and the extractor.
* ``insa_topk`` -- the same insider ascending a smooth count of the users whose top-K the item enters
  (a mean-score gain need not reach anyone's list).
* ``expa`` -- the expert, with the extractor alone: PGD pulling the image's features toward the
  features of the most exposed items (their centroid).

The attacker domain knows no recommender: ``insa``/``insa_topk`` receive the objective as a callable
``objective(features (n,D), spatial (n,D',h,w) | None, rows (n,)) -> (n,)``, ``rows`` (N,), the catalog
row of each image given to :func:`~services.attacker.attacks.run_attack` (the labels it passes are the
images' positions), and ``objective_spatial`` (the objective reads the feature map); ``expa`` receives
``target_features`` like ``feature_match``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch

from advrec_common.errors import InvalidInput
from advrec_common.vision.model import ModelOutput
from services.attacker.attacks.feature import FeatureMatch, _FeatureAttack
from services.attacker.attacks.projected_gradient import LossFn, projected_gradient

Objective = Callable[[torch.Tensor | None, torch.Tensor | None, torch.Tensor], torch.Tensor]


class Insa(_FeatureAttack):
    """Raise a recommender's objective of each item through the features of its image."""

    name: ClassVar[str] = "insa"

    def check_extra(self) -> None:
        extra = dict(self.extra)
        objective, rows = extra.pop("objective", None), extra.pop("rows", None)
        self.spatial = bool(extra.pop("objective_spatial", False))
        if extra:
            raise InvalidInput(f"{self.name} takes only objective, rows and objective_spatial, got {sorted(extra)}")
        if not callable(objective):
            raise InvalidInput(f"{self.name} needs objective: a differentiable callable (features, spatial, rows) -> (n,)")
        if not isinstance(rows, torch.Tensor) or rows.ndim != 1 or rows.dtype != torch.long:
            raise InvalidInput(f"{self.name} needs rows: the (N,) int64 catalog row of every image")
        self.objective: Objective = objective
        self.rows = rows

    def loss(self) -> LossFn:
        objective, rows = self.objective, self.rows

        def ascend(out: ModelOutput, positions: torch.Tensor) -> torch.Tensor:
            value = objective(out.features, out.spatial, rows[positions.cpu()])
            if value.shape != (out.features.shape[0],):
                raise InvalidInput(f"the objective must return one value per image, got {tuple(value.shape)}")
            return value

        return ascend

    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        s = self.spec
        return projected_gradient(
            self.model, images, labels, self.loss(), radius=s.radius, step=s.resolved_step, steps=s.resolved_steps,
            norm=s.norm, space=s.budget_space, random_start=s.random_start, spatial=self.spatial,
        )


class InsaTopK(Insa):
    """INSA with an exposure objective (a smooth count of top-K entries); the objective is the caller's."""

    name: ClassVar[str] = "insa_topk"


class Expa(FeatureMatch):
    """Pull the item's features toward the most exposed items' (their centroid, given as target_features)."""

    name: ClassVar[str] = "expa"
