"""The demo: recognisable products, determinism, and tastes that carry visual signal."""

from __future__ import annotations

import numpy as np
import pytest

from advrec_common.datasets.demo import DemoConfig, demo_attrs, make_demo_dataset
from advrec_common.datasets.demo_images import (
    COLORS,
    DEMO_CATEGORIES,
    PATTERNS,
    draw_product,
    make_product_images,
)
from advrec_common.datasets.demo_users import item_codes
from advrec_common.datasets.types import RecDataset
from advrec_common.errors import InvalidInput

from .conftest import TINY


def test_draw_product_returns_image_and_attributes() -> None:
    rng = np.random.default_rng(0)
    image, attrs = draw_product("watch", rng, size=32)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert attrs["category"] == "watch" and attrs["color"] in COLORS and attrs["pattern"] in PATTERNS
    assert 0.6 <= attrs["scale"] <= 0.9 and -25 <= attrs["angle"] <= 25
    assert image.std() > 20  # a product on a background, not a blank frame
    with pytest.raises(InvalidInput, match="unknown product type"):
        draw_product("spaceship", rng)


def test_silhouettes_tell_the_types_apart() -> None:
    """Nearest mean silhouette classifies fresh draws (new poses) far above chance (10%)."""

    def masks(category: str, seed: int, n: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        drawn = [draw_product(category, rng, 32, color="black", pattern="plain")[0] for _ in range(n)]
        return (np.stack(drawn).mean(-1) < 120).reshape(n, -1).astype(np.float64)

    centroids = np.stack([masks(c, 1, 12).mean(0) for c in DEMO_CATEGORIES])
    probes = np.concatenate([masks(c, 2, 6) for c in DEMO_CATEGORIES])
    truth = np.repeat(np.arange(len(DEMO_CATEGORIES)), 6)
    predicted = ((probes[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (predicted == truth).mean() > 0.7


def test_training_images_are_balanced_and_apart_from_the_catalog(tiny_demo: RecDataset) -> None:
    images, labels, names, attrs = make_product_images(3, size=TINY.image_size, seed=TINY.seed)
    assert names == DEMO_CATEGORIES and images.shape == (30, 24, 24, 3)
    assert np.bincount(labels).tolist() == [3] * 10
    assert [a["category"] for a in attrs] == [names[k] for k in labels]
    catalog = tiny_demo.catalog.images.reshape(len(tiny_demo.catalog), -1)
    flat = images.reshape(len(images), -1)
    assert not (flat[:, None, :] == catalog[None, :, :]).all(-1).any()  # no training image is a catalog image


def test_demo_is_deterministic_and_well_formed(tiny_demo: RecDataset) -> None:
    again = make_demo_dataset(TINY)
    assert again.catalog.images.tobytes() == tiny_demo.catalog.images.tobytes()
    for a, b in ((again.train, tiny_demo.train), (again.test, tiny_demo.test)):
        assert a.user.tobytes() == b.user.tobytes() and a.item.tobytes() == b.item.tobytes()
        assert a.timestamp.tobytes() == b.timestamp.tobytes()
    other = make_demo_dataset(DemoConfig(**{**TINY.__dict__, "seed": TINY.seed + 1}))
    assert other.catalog.images.tobytes() != tiny_demo.catalog.images.tobytes()

    cat = tiny_demo.catalog
    assert cat.item_ids[0] == "item-00000" and cat.category_names == DEMO_CATEGORIES
    assert np.bincount([DEMO_CATEGORIES.index(c) for c in cat.categories]).tolist() == [3] * 10
    assert demo_attrs(TINY) == cat.attributes
    # one test item per user, strictly later than all of that user's training rows, never repeated
    assert sorted(tiny_demo.test.user.tolist()) == list(range(TINY.n_users))
    last_train = np.full(TINY.n_users, -1)
    np.maximum.at(last_train, tiny_demo.train.user, tiny_demo.train.timestamp)
    assert (tiny_demo.test.timestamp > last_train[tiny_demo.test.user]).all()
    pairs = tiny_demo.train.user * TINY.n_items + tiny_demo.train.item
    test_pairs = tiny_demo.test.user * TINY.n_items + tiny_demo.test.item
    assert len(np.unique(pairs)) == len(pairs) and not np.isin(test_pairs, pairs).any()
    counts = np.bincount(tiny_demo.train.user) + 1
    assert counts.min() >= 3 and counts.max() <= 6
    with pytest.raises(InvalidInput):
        make_demo_dataset(DemoConfig(n_items=5))
    # every out-of-range setting at once, before anything is generated (a 100,000 px demo would not fit)
    with pytest.raises(InvalidInput) as err:
        DemoConfig(n_items=10_000_000, image_size=100_000, seed=-1).validate()
    assert [p["loc"] for p in err.value.problems] == ["image_size", "n_items", "seed"]


@pytest.fixture(scope="module")
def medium() -> RecDataset:
    return make_demo_dataset(DemoConfig(n_items=200, n_users=300, image_size=16, seed=3))


def test_users_favour_colours(medium: RecDataset) -> None:
    """Each user's two most frequent colours cover far more of their items than under shuffled colours."""
    _, color, _ = item_codes(medium.catalog.attributes, DEMO_CATEGORIES)

    def top2_share(item_color: np.ndarray) -> float:
        hist = np.zeros((medium.n_users, len(COLORS)))
        np.add.at(hist, (medium.train.user, item_color[medium.train.item]), 1)
        return float((np.sort(hist, 1)[:, -2:].sum(1) / hist.sum(1)).mean())

    shuffled = np.random.default_rng(0).permutation(color)
    assert top2_share(color) > top2_share(shuffled) + 0.1


def test_visual_attributes_beat_popularity(medium: RecDataset) -> None:
    """HR@10 on the held-out items: popularity + the user's profile of what the images show (product type,
    colour, pattern) beats popularity alone, over users (exact one-sided sign test on the users one scorer
    hits and the other misses). Since the demo's product types differ in popularity, popularity alone is a
    strong scorer too: the margin is tested, not assumed."""
    from scipy import stats

    cat, color, pattern = item_codes(medium.catalog.attributes, DEMO_CATEGORIES)
    train, test = medium.train, medium.test
    pop = np.log1p(np.bincount(train.item, minlength=medium.n_items))
    n = np.bincount(train.user, minlength=medium.n_users)[:, None]
    cat_h = np.zeros((medium.n_users, len(DEMO_CATEGORIES)))
    col_h = np.zeros((medium.n_users, len(COLORS)))
    pat_h = np.zeros((medium.n_users, len(PATTERNS)))
    np.add.at(cat_h, (train.user, cat[train.item]), 1)
    np.add.at(col_h, (train.user, color[train.item]), 1)
    np.add.at(pat_h, (train.user, pattern[train.item]), 1)

    def hits(scores: np.ndarray, k: int = 10) -> np.ndarray:
        scores = scores.copy()
        scores[train.user, train.item] = -np.inf
        rank = (scores[test.user] > scores[test.user, test.item][:, None]).sum(1)
        return rank < k

    popularity_only = hits(np.tile(pop, (medium.n_users, 1)))
    visual = hits(pop[None, :] + (2 * cat_h[:, cat] + 3 * col_h[:, color] + 2 * pat_h[:, pattern]) / n)
    only_visual, only_popularity = int((visual & ~popularity_only).sum()), int((popularity_only & ~visual).sum())
    p = stats.binomtest(only_visual, only_visual + only_popularity, 0.5, alternative="greater").pvalue
    assert visual.mean() > popularity_only.mean() and p < 0.01, (visual.mean(), popularity_only.mean(), p)


def test_product_types_differ_in_popularity(medium: RecDataset) -> None:
    """The demo world's product types follow a Zipf law of popularity (``category_skew``): the most bought
    type has several times the interactions of the least bought one, so a category can be pushed toward a
    far more exposed one (the scenario the study's attack needs)."""
    cat, _, _ = item_codes(medium.catalog.attributes, DEMO_CATEGORIES)
    per_type = np.bincount(cat[medium.train.item], minlength=len(DEMO_CATEGORIES)) / np.bincount(
        cat, minlength=len(DEMO_CATEGORIES))
    assert per_type.max() > 5 * per_type.min(), per_type
