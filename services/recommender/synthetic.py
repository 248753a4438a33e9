"""Synthetic interactions whose preferences follow the items' visual inputs (tests, benchmarks).

Items have a category c_i and a style z_i; features, region maps and images are noisy functions
of (c_i, z_i). Each user likes one or two categories and a style direction; their positives are
the top items of utility 3 * a_u[c_i] + b_u . z_i + Gumbel noise. Visual inputs therefore carry
the preference signal, while item popularity is nearly flat (popularity ranking is weak).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from advrec_common.datasets.types import Interactions
from services.recommender.items import ItemSide
from services.recommender.pairs import split_last


@dataclass
class SyntheticRec:
    """train/test split (test = each user's last positive) and the full ItemSide."""

    train: Interactions
    test: Interactions
    items: ItemSide
    n_categories: int


def make_synthetic(
    n_users: int = 200,
    n_items: int = 160,
    n_categories: int = 4,
    per_user: int = 8,
    feature_dim: int = 16,
    regions: int = 4,
    region_dim: int = 8,
    image_size: int = 16,
    seed: int = 0,
) -> SyntheticRec:
    """A small dataset with visual signal; every user has ``per_user`` positives (one goes to test)."""
    rng = np.random.default_rng(seed)
    cats = np.arange(n_items) % n_categories
    rng.shuffle(cats)
    style = rng.normal(size=(n_items, 3))
    latent = np.concatenate([np.eye(n_categories)[cats] * 2.0, style], 1)  # (I, C+3)
    mix = rng.normal(size=(latent.shape[1], feature_dim)) / np.sqrt(latent.shape[1])
    features = np.maximum(latent @ mix + 0.1 * rng.normal(size=(n_items, feature_dim)), 0) * 5.0
    region_mix = rng.normal(size=(regions, latent.shape[1], region_dim)) / np.sqrt(latent.shape[1])
    spatial = np.einsum("il,rld->ird", latent, region_mix) + 0.1 * rng.normal(size=(n_items, regions, region_dim))
    palette = rng.uniform(30, 225, size=(n_categories, 3))
    yy, xx = np.meshgrid(np.linspace(-1, 1, image_size), np.linspace(-1, 1, image_size), indexing="ij")
    pattern = 40 * (style[:, 0, None, None] * xx + style[:, 1, None, None] * yy)  # (I,H,W)
    img = palette[cats][:, :, None, None] + pattern[:, None] + rng.normal(0, 8, size=(n_items, 3, image_size, image_size))
    images = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    taste = rng.dirichlet(np.full(n_categories, 0.3), size=n_users)
    style_pref = rng.normal(size=(n_users, 3))
    utility = 3 * taste[:, cats] * n_categories / 2 + style_pref @ style.T + rng.gumbel(size=(n_users, n_items))
    top = np.argsort(-utility, axis=1)[:, :per_user]
    users = np.repeat(np.arange(n_users), per_user)
    items = top[:, rng.permutation(per_user)].reshape(-1)  # random order: the last row is a random positive
    everything = Interactions(users, items, n_users, n_items)
    train, test = split_last(everything)
    side = ItemSide(
        features=torch.from_numpy(features.astype(np.float32)),
        spatial=torch.from_numpy(spatial.astype(np.float32)),
        images=torch.from_numpy(images),
        categories=torch.from_numpy(cats.astype(np.int64)),
    )
    return SyntheticRec(train=train, test=test, items=side, n_categories=n_categories)


def make_interactions(
    n_users: int,
    n_items: int,
    n_interactions: int,
    feature_dim: int = 0,
    popularity_exponent: float = 0.8,
    seed: int = 0,
) -> tuple[Interactions, ItemSide | None]:
    """Interactions of a given shape with a realistic skew, and random visual features (benchmarks).

    Every user has at least 2 distinct items (so a leave-one-out split keeps a training item);
    activity is Pareto-distributed, item popularity Zipf-like (p_i ~ rank^-exponent). Features
    (I, feature_dim) are non-negative like pooled ReLU outputs, or None when ``feature_dim`` is 0.
    No preference signal: for timing, not for accuracy.
    """
    rng = np.random.default_rng(seed)
    if n_interactions < 2 * n_users or n_interactions > n_users * n_items // 2:
        raise ValueError("need 2 * n_users <= n_interactions <= n_users * n_items / 2")
    activity = rng.pareto(1.5, n_users) + 1.0
    extra = np.floor(activity / activity.sum() * (n_interactions - 2 * n_users)).astype(np.int64)
    extra[: n_interactions - 2 * n_users - int(extra.sum())] += 1
    per_user = np.minimum(2 + extra, n_items // 2)
    popularity = 1.0 / np.arange(1, n_items + 1) ** popularity_exponent
    popularity = popularity[rng.permutation(n_items)]
    users = np.repeat(np.arange(n_users), per_user)
    items = rng.choice(n_items, size=users.size, p=popularity / popularity.sum())
    keys = users * n_items + items
    _, first = np.unique(keys, return_index=True)  # drop repeated pairs, keep row order
    keep = np.sort(first)
    users, items = users[keep], items[keep]
    short = np.bincount(users, minlength=n_users) < 2
    if short.any():  # top up users whose duplicates fell away with their least popular unseen items
        fill_u = np.repeat(np.flatnonzero(short), 2)
        fill_i = (fill_u * 7919 + np.tile([1, 2], short.sum())) % n_items
        users, items = np.concatenate([users, fill_u]), np.concatenate([items, fill_i])
        keys = users * n_items + items
        _, first = np.unique(keys, return_index=True)
        keep = np.sort(first)
        users, items = users[keep], items[keep]
    order = rng.permutation(users.size)  # row order decides the leave-one-out item: make it random
    inter = Interactions(users[order], items[order], n_users, n_items)
    side = None
    if feature_dim:
        feats = np.maximum(rng.standard_normal((n_items, feature_dim), dtype=np.float32), 0)
        side = ItemSide(features=torch.from_numpy(feats))
    return inter, side
