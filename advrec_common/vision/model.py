"""The image-model contract shared by the extractor and the attacker: :class:`ImageModel`.

Every model takes (N,3,H,W) float images in [0,1]; normalisation happens inside. One forward
gives the penultimate features, the class logits and optionally the last spatial feature map
(for ACF). ``forward`` returns logits only, so attack libraries (torchattacks, foolbox) can use an
:class:`ImageModel` directly in pixel space.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from advrec_common.errors import InvalidInput

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelOutput:
    """features: (N,D); logits: (N,C); spatial: (N,D',h,w) or None.

    penalty: (N,) or None -- what an attack must subtract from the per-image objective it ascends
    (set by a detector-aware composition, :mod:`advrec_common.vision.defenses.defended`; None for
    every plain model).
    """

    features: torch.Tensor
    logits: torch.Tensor
    spatial: torch.Tensor | None = None
    penalty: torch.Tensor | None = None


class ImageModel(nn.Module):
    """A classifier split into ``body`` (image -> spatial map), ``pool`` (map -> features) and ``head``.

    images: (N,3,H,W) float in [0,1]; normalisation ``(x - mean) / std`` happens inside.
    ``input_size``: the square side the model expects (catalog images are brought to it; None =
    any size, e.g. a fully convolutional model used at native resolution).
    """

    def __init__(
        self,
        body: nn.Module,
        pool: nn.Module,
        head: nn.Module,
        feature_dim: int,
        class_names: Sequence[str],
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        backbone: str = "custom",
        input_size: int | None = None,
    ):
        super().__init__()
        self.body, self.pool, self.head = body, pool, head
        self.feature_dim = int(feature_dim)
        self.class_names = list(class_names)
        self.backbone = backbone
        self.input_size = int(input_size) if input_size else None
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def penalised(self) -> bool:
        """True when :meth:`forward_all` returns a ``penalty`` the attack's objective must subtract
        (a detector-aware composition); ``forward`` (logits only) cannot carry it."""
        return False

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std + self.mean

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3:
            raise InvalidInput(f"images must be (N,3,H,W), got {tuple(x.shape)}")

    def forward_all(self, x: torch.Tensor, spatial: bool = False, normalized: bool = False) -> ModelOutput:
        """Features, logits and (optionally) the spatial map of images in [0,1].

        ``normalized=True`` means ``x`` is already normalised (the study's attack convention).
        """
        self._check(x)
        fmap = self.body(x if normalized else self.normalize(x))
        feats = self.pool(fmap)
        return ModelOutput(features=feats, logits=self.head(feats), spatial=fmap if spatial else None)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N,D) of images in [0,1]."""
        return self.forward_all(x).features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (N,C) of images in [0,1]."""
        return self.forward_all(x).logits

    def with_head(self, head: nn.Module, class_names: Sequence[str]) -> ImageModel:
        """The same body and pool (shared modules, not copies) under another classifier ``head``
        ((N,feature_dim) -> (N,len(class_names))), e.g. a head fitted on a catalog's own labels.

        Normalisation, backbone name and input size are kept; ``self`` is not changed.
        """
        model = ImageModel(self.body, self.pool, head, self.feature_dim, class_names,
                           mean=tuple(float(v) for v in self.mean.flatten()),
                           std=tuple(float(v) for v in self.std.flatten()),
                           backbone=self.backbone, input_size=self.input_size)
        return model.to(self.mean.device).train(self.training)


class GlobalAvgPool(nn.Module):
    """(N,C,h,w) -> (N,C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
