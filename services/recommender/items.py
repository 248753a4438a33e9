"""What a recommender knows about items: features, region features, images, categories.

The study divides features by the global max |value| of the matrix a model is trained on
(``F / max|F|``, per experiment file). A model holds that factor (``feature_scale``): it is fitted
once at ``fit`` on the items the model is trained with and reused unchanged when features are
replaced. So in deployment, where the clean model re-scores attacked features, they are divided by
the *clean* max and a perturbation keeps its true size instead of being rescaled away; in retrain,
where a model is fitted on the perturbed matrix, the factor is that matrix's max, as the study's
retrain divided each attacked feature file by its own max (:func:`max_abs_scale`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from advrec_common.errors import InvalidInput

ITEM_FIELDS = ("features", "spatial", "images", "categories")


def _as_tensor(x: torch.Tensor | np.ndarray | None) -> torch.Tensor | None:
    if x is None or isinstance(x, torch.Tensor):
        return x
    return torch.from_numpy(np.ascontiguousarray(x))


@dataclass
class ItemSide:
    """Per-item inputs, all with the same leading item dimension I.

    features: (I,D) float32 -- pooled CNN features (VBPR, AMR, DeepStyle).
    spatial: (I,R,D') float32 -- R = h*w regions of the last feature map (ACF).
    images: (I,3,H,W) uint8 in [0,255] -- raw product images (DVBPR).
    categories: (I,) int64 >= 0 -- category index of each item (DeepStyle).
    """

    features: torch.Tensor | None = None
    spatial: torch.Tensor | None = None
    images: torch.Tensor | None = None
    categories: torch.Tensor | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            setattr(self, f.name, _as_tensor(getattr(self, f.name)))
        sizes = {name: getattr(self, name).shape[0] for name in ITEM_FIELDS if getattr(self, name) is not None}
        if not sizes:
            raise InvalidInput("an ItemSide needs at least one of features, spatial, images, categories")
        if len(set(sizes.values())) != 1:
            raise InvalidInput(f"ItemSide fields disagree on the number of items: {sizes}")
        if self.features is not None:
            self.features = self._float(self.features, "features", 2, "(I,D)")
        if self.spatial is not None:
            self.spatial = self._float(self.spatial, "spatial", 3, "(I,R,D')")
        if self.images is not None:
            im = self.images
            if im.dtype != torch.uint8 or im.ndim != 4 or im.shape[1] != 3:
                raise InvalidInput(f"images must be (I,3,H,W) uint8, got {tuple(im.shape)} {im.dtype}")
        if self.categories is not None:
            c = self.categories
            if c.ndim != 1 or c.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
                raise InvalidInput(f"categories must be (I,) integers, got {tuple(c.shape)} {c.dtype}")
            self.categories = c.long()
            if c.numel() and int(self.categories.min()) < 0:
                raise InvalidInput("categories must be >= 0")

    @staticmethod
    def _float(x: torch.Tensor, name: str, ndim: int, shape: str) -> torch.Tensor:
        if x.ndim != ndim or not x.is_floating_point():
            raise InvalidInput(f"{name} must be a float tensor {shape}, got {tuple(x.shape)} {x.dtype}")
        if not bool(torch.isfinite(x).all()):
            raise InvalidInput(f"{name} contain NaN or infinite values")
        return x.float()

    @classmethod
    def from_arrays(
        cls,
        features: np.ndarray | torch.Tensor | None = None,
        spatial_map: np.ndarray | torch.Tensor | None = None,
        images_nhwc: np.ndarray | torch.Tensor | None = None,
        categories: np.ndarray | torch.Tensor | None = None,
    ) -> ItemSide:
        """Build from extractor outputs: spatial_map (I,D',h,w) -> (I,h*w,D'); images (I,H,W,3) -> (I,3,H,W)."""
        spatial = _as_tensor(spatial_map)
        if spatial is not None:
            if spatial.ndim != 4:
                raise InvalidInput(f"spatial_map must be (I,D',h,w), got {tuple(spatial.shape)}")
            spatial = spatial.flatten(2).transpose(1, 2).contiguous()
        images = _as_tensor(images_nhwc)
        if images is not None:
            if images.ndim != 4 or images.shape[-1] != 3:
                raise InvalidInput(f"images_nhwc must be (I,H,W,3), got {tuple(images.shape)}")
            images = images.permute(0, 3, 1, 2).contiguous()
        return cls(features=_as_tensor(features), spatial=spatial, images=images, categories=_as_tensor(categories))

    @property
    def n_items(self) -> int:
        for name in ITEM_FIELDS:
            value = getattr(self, name)
            if value is not None:
                return int(value.shape[0])
        raise AssertionError("unreachable: validated in __post_init__")

    def replace(self, **changes: torch.Tensor | None) -> ItemSide:
        """A copy with some fields replaced (validated again)."""
        current = {name: getattr(self, name) for name in ITEM_FIELDS}
        current.update(changes)
        return ItemSide(**current)


def max_abs_scale(x: torch.Tensor) -> float:
    """The study's scale factor max|x| (1.0 for an all-zero matrix, so division is a no-op)."""
    m = float(x.abs().max()) if x.numel() else 0.0
    return m if m > 0 else 1.0
