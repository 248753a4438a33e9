"""The data types every service shares: a catalog of product images and users' interactions."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from advrec_common.errors import InvalidInput


@dataclass
class Catalog:
    """Products: item index ``i`` (0..N-1) has external id ``item_ids[i]`` and one image.

    Images are either files (``image_paths``) or an in-memory uint8 array ``images``
    (N, H, W, 3) (the demo catalog). ``categories[i]`` is an optional metadata label; the study
    itself uses the extractor's predicted class as the category.
    """

    item_ids: list[str]
    image_paths: list[Path] | None = None
    images: np.ndarray | None = None
    categories: list[str | None] | None = None
    category_names: list[str] = field(default_factory=list)
    attributes: list[dict] | None = None  # optional per-item metadata (the demo's colour, pattern, ...)

    def __post_init__(self) -> None:
        n = len(self.item_ids)
        if self.image_paths is None and self.images is None:
            raise InvalidInput("a catalog needs image_paths or images")
        if self.image_paths is not None and len(self.image_paths) != n:
            raise InvalidInput("image_paths and item_ids differ in length")
        if self.images is not None and (self.images.ndim != 4 or self.images.shape[0] != n or self.images.shape[-1] != 3):
            raise InvalidInput(f"images must be (N,H,W,3) uint8 with N={n}, got {self.images.shape}")
        if self.categories is not None and len(self.categories) != n:
            raise InvalidInput("categories and item_ids differ in length")
        if self.attributes is not None and len(self.attributes) != n:
            raise InvalidInput("attributes and item_ids differ in length")
        if len(set(self.item_ids)) != n:
            raise InvalidInput("item ids are not unique")

    def __len__(self) -> int:
        return len(self.item_ids)

    def index_of(self, item_id: str) -> int:
        """Internal index of an external item id (NotFound if unknown)."""
        from advrec_common.errors import NotFound

        try:
            return self._index[item_id]
        except AttributeError:
            self._index = {iid: i for i, iid in enumerate(self.item_ids)}
            return self.index_of(item_id)
        except KeyError:
            raise NotFound(f"unknown item id {item_id!r}") from None


@dataclass
class Interactions:
    """Implicit feedback as parallel arrays of internal indices (user, item), optional rating/time."""

    user: np.ndarray
    item: np.ndarray
    n_users: int
    n_items: int
    rating: np.ndarray | None = None
    timestamp: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.user = np.asarray(self.user, dtype=np.int64)
        self.item = np.asarray(self.item, dtype=np.int64)
        if self.user.shape != self.item.shape or self.user.ndim != 1:
            raise InvalidInput("user and item must be 1-d arrays of equal length")
        if len(self.user) and (self.user.min() < 0 or self.user.max() >= self.n_users):
            raise InvalidInput("user index out of range")
        if len(self.item) and (self.item.min() < 0 or self.item.max() >= self.n_items):
            raise InvalidInput("item index out of range")

    def __len__(self) -> int:
        return int(self.user.shape[0])


@dataclass
class RecDataset:
    """A catalog with a train/test split of interactions over the same user and item indices."""

    name: str
    catalog: Catalog
    train: Interactions
    test: Interactions
    user_ids: list[str]
    notes: list[str] = field(default_factory=list)  # what a reader of the results must know (e.g. how it was split)

    @property
    def n_users(self) -> int:
        return self.train.n_users

    @property
    def n_items(self) -> int:
        return self.train.n_items

    def summary(self) -> dict:
        """Counts for people: users, items, train/test rows, density, items per category."""
        per_category: dict[str, int] = {}
        if self.catalog.categories is not None:
            names = list(self.catalog.category_names) or sorted({str(c) for c in self.catalog.categories if c is not None})
            per_category = {name: 0 for name in names}
            for c in self.catalog.categories:
                key = "(none)" if c is None else str(c)
                per_category[key] = per_category.get(key, 0) + 1
        n_rows = len(self.train) + len(self.test)
        return {
            "name": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "train": len(self.train),
            "test": len(self.test),
            "density": n_rows / max(1, self.n_users * self.n_items),
            "items_per_category": per_category,
        }
