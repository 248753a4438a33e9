"""The embedded demo dataset: procedurally drawn products and simulated shoppers.

No dataset ships with advrec, so the default pipeline runs on this one. Product images come
from :mod:`.demo_images` (random stream ``[seed, 0]``), tastes and interactions from
:mod:`.demo_users` (stream ``[seed, 2]``); the extractor's training images use ``[seed, 1]``
(:func:`make_product_images`), so they never overlap the catalog.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from advrec_common.datasets.demo_images import DEMO_CATEGORIES, draw_products, make_product_images
from advrec_common.datasets.demo_users import TasteWeights, simulate_shoppers
from advrec_common.datasets.split import leave_one_out
from advrec_common.datasets.types import Catalog, Interactions, RecDataset
from advrec_common.errors import invalid

__all__ = ["DEMO_CATEGORIES", "DemoConfig", "demo_attrs", "make_demo_dataset", "make_product_images"]


@dataclass(frozen=True)
class DemoConfig:
    """Size of the demo: items (balanced over the 10 types), users, image side, interactions per user."""

    n_items: int = 600
    n_users: int = 800
    image_size: int = 64
    interactions_per_user: tuple[int, int] = (8, 20)
    seed: int = 0

    def validate(self) -> None:
        """InvalidInput listing every setting out of range."""
        lo, hi = self.interactions_per_user
        problems = []
        if self.n_items < len(DEMO_CATEGORIES):
            problems.append(("n_items", f"n_items must be at least {len(DEMO_CATEGORIES)}, got {self.n_items}"))
        if self.n_users < 1:
            problems.append(("n_users", f"n_users must be positive, got {self.n_users}"))
        if not 2 <= lo <= hi <= self.n_items:
            problems.append(("interactions_per_user", f"interactions_per_user must satisfy 2 <= lo <= hi <= "
                                                      f"n_items, got {(lo, hi)}"))
        if not 16 <= self.image_size <= 512:
            problems.append(("image_size", f"image_size must lie in [16, 512], got {self.image_size}"))
        if self.n_items > 200_000:
            problems.append(("n_items", f"the demo generates at most 200,000 items, got {self.n_items}"))
        if self.n_users > 2_000_000:
            problems.append(("n_users", f"the demo generates at most 2,000,000 users, got {self.n_users}"))
        if not 0 <= self.seed < 2**32:
            problems.append(("seed", f"seed must be in 0..2**32-1, got {self.seed}"))
        if problems:
            raise invalid(problems, "invalid demo settings")


def _catalog_categories(config: DemoConfig) -> list[str]:
    """Balanced product types in a seeded random order."""
    k = len(DEMO_CATEGORIES)
    labels = np.arange(config.n_items) % k
    np.random.default_rng([config.seed, 3]).shuffle(labels)
    return [DEMO_CATEGORIES[j] for j in labels]


def demo_catalog(config: DemoConfig = DemoConfig()) -> Catalog:
    """The demo's items: in-memory images, categories and generative attributes."""
    config.validate()
    images, attrs = draw_products(
        _catalog_categories(config), np.random.default_rng([config.seed, 0]), config.image_size
    )
    return Catalog(
        item_ids=[f"item-{i:05d}" for i in range(config.n_items)],
        images=images,
        categories=[a["category"] for a in attrs],
        category_names=list(DEMO_CATEGORIES),
        attributes=attrs,
    )


def demo_attrs(config: DemoConfig = DemoConfig()) -> list[dict]:
    """Per-item attributes {"category", "color", "pattern", "scale", "angle"} of the demo catalog."""
    catalog = demo_catalog(config)
    assert catalog.attributes is not None
    return catalog.attributes


def make_demo_dataset(
    config: DemoConfig = DemoConfig(), weights: TasteWeights = TasteWeights()
) -> RecDataset:
    """The demo dataset, deterministic for ``config`` (same arrays and image bytes every time).

    Catalog: ``n_items`` products, balanced over :data:`DEMO_CATEGORIES`, ids ``item-00000``...
    Users: ``n_users`` shoppers (``user-00000``...) whose choices depend on product type, colour,
    pattern and popularity (see :mod:`.demo_users`); split leave-one-out by timestamp.
    """
    catalog = demo_catalog(config)
    assert catalog.attributes is not None
    shoppers = simulate_shoppers(
        catalog.attributes,
        list(DEMO_CATEGORIES),
        config.n_users,
        config.interactions_per_user,
        np.random.default_rng([config.seed, 2]),
        weights,
    )
    inter = Interactions(
        shoppers.user,
        shoppers.item,
        config.n_users,
        config.n_items,
        rating=np.ones(shoppers.user.size, dtype=np.float32),
        timestamp=shoppers.timestamp,
    )
    train, test = leave_one_out(inter)
    return RecDataset("demo", catalog, train, test, [f"user-{u:05d}" for u in range(config.n_users)])
