"""Simulated shoppers for the demo: tastes that mix product type, colour, pattern and popularity.

Generative model (all vectorised over users x items)::

    theta_u ~ Dirichlet(alpha_cat * C * z)             preference over product types; z = Zipf(skew)
                                                       shares in a seeded order: some types are much
                                                       more popular than others
    C_u     = 2 colours drawn without replacement      favourite colours
    P_u     = 1 pattern drawn uniformly                favourite pattern
    pop_i   ~ Normal(0, 1)                             item popularity
    utility(u, i) = w_cat * log(theta_u[c_i] + 1e-3) + w_color * [color_i in C_u]
                    + w_pattern * [pattern_i == P_u] + w_pop * pop_i

Each user draws n_u ~ Uniform{lo..hi} distinct items with probabilities softmax(utility /
temperature), sequentially without replacement (Plackett-Luce, sampled exactly with the
Gumbel-top-k trick). The chosen items are then put in a random order and given increasing
timestamps: tastes are stationary, so the held-out last item is a fair draw from the same tastes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from advrec_common.datasets.demo_images import COLORS, PATTERNS

T0 = 1_600_000_000  # first timestamp (unix seconds, Sep 2020)


@dataclass(frozen=True)
class TasteWeights:
    """Weights of the utility terms (see the module docstring)."""

    category: float = 1.0
    color: float = 2.0
    pattern: float = 1.2
    popularity: float = 0.6
    alpha_category: float = 0.5
    temperature: float = 1.0
    category_skew: float = 1.0


@dataclass
class Shoppers:
    """The simulated users: their latent tastes and their interactions (rows in time order per user)."""

    category_pref: np.ndarray  # (U,C) float, rows sum to 1
    favourite_colors: np.ndarray  # (U,2) int, indices into COLORS
    favourite_pattern: np.ndarray  # (U,) int, index into PATTERNS
    popularity: np.ndarray  # (I,) float
    user: np.ndarray  # (R,) int64
    item: np.ndarray  # (R,) int64
    timestamp: np.ndarray  # (R,) int64, strictly increasing within a user


def item_codes(attrs: list[dict], category_names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-item (category, colour, pattern) integer codes from the catalog attributes."""
    cat = np.asarray([category_names.index(a["category"]) for a in attrs], dtype=np.int64)
    col = np.asarray([COLORS.index(a["color"]) for a in attrs], dtype=np.int64)
    pat = np.asarray([PATTERNS.index(a["pattern"]) for a in attrs], dtype=np.int64)
    return cat, col, pat


def utility(
    category_pref: np.ndarray,
    favourite_colors: np.ndarray,
    favourite_pattern: np.ndarray,
    popularity: np.ndarray,
    item_cat: np.ndarray,
    item_color: np.ndarray,
    item_pattern: np.ndarray,
    weights: TasteWeights = TasteWeights(),
) -> np.ndarray:
    """(U,I) noiseless utilities of every user for every item (the simulation's ground truth)."""
    likes_color = (favourite_colors[:, :, None] == item_color[None, None, :]).any(axis=1)
    likes_pattern = favourite_pattern[:, None] == item_pattern[None, :]
    return (
        weights.category * np.log(category_pref[:, item_cat] + 1e-3)
        + weights.color * likes_color
        + weights.pattern * likes_pattern
        + weights.popularity * popularity[None, :]
    )


def category_concentration(n_categories: int, weights: TasteWeights, rng: np.random.Generator) -> np.ndarray:
    """(C,) Dirichlet concentration of the users' category preferences: ``alpha_category`` per category
    on average, spread over the categories as a Zipf law of exponent ``category_skew`` in a seeded random
    order (0: every category equally popular; 1.2: the most popular ~15x the least)."""
    if weights.category_skew == 0:
        return np.full(n_categories, weights.alpha_category)
    share = (1.0 + np.arange(n_categories)) ** -weights.category_skew
    share = share[rng.permutation(n_categories)]
    return weights.alpha_category * n_categories * share / share.sum()


def simulate_shoppers(
    attrs: list[dict],
    category_names: list[str],
    n_users: int,
    per_user: tuple[int, int],
    rng: np.random.Generator,
    weights: TasteWeights = TasteWeights(),
) -> Shoppers:
    """Draw ``n_users`` tastes and their interactions with the items described by ``attrs``."""
    n_items = len(attrs)
    item_cat, item_color, item_pattern = item_codes(attrs, category_names)
    category_pref = rng.dirichlet(category_concentration(len(category_names), weights, rng), size=n_users)
    favourite_colors = np.argsort(rng.random((n_users, len(COLORS))), axis=1)[:, :2]
    favourite_pattern = rng.integers(0, len(PATTERNS), size=n_users)
    popularity = rng.normal(0.0, 1.0, size=n_items)
    u = utility(
        category_pref,
        favourite_colors,
        favourite_pattern,
        popularity,
        item_cat,
        item_color,
        item_pattern,
        weights,
    )

    lo, hi = per_user
    counts = rng.integers(lo, hi + 1, size=n_users)
    # Gumbel-top-k: the order of u/T + Gumbel noise is an exact sequential softmax draw without replacement.
    keys = u / weights.temperature + rng.gumbel(size=u.shape)
    ranked = np.argsort(-keys, axis=1)
    chosen = np.arange(n_items)[None, :] < counts[:, None]  # first n_u ranks of each user
    # Shuffle each user's chosen items into a random time order (stationary tastes).
    time_key = np.where(chosen, rng.random(u.shape), np.inf)
    time_order = np.argsort(time_key, axis=1)
    users = np.repeat(np.arange(n_users, dtype=np.int64), counts)
    ranks = time_order[chosen]  # row-major: user by user, in time order
    items = ranked[users, ranks].astype(np.int64)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    gaps = rng.integers(3600, 30 * 86400, size=users.size)  # 1 hour .. 30 days between a user's events
    user_start = T0 + rng.integers(0, 365 * 86400, size=n_users)
    timestamp = user_start[users] + np.cumsum(gaps) - np.cumsum(gaps)[start][users]
    return Shoppers(
        category_pref,
        favourite_colors,
        favourite_pattern,
        popularity,
        users,
        items,
        timestamp.astype(np.int64),
    )
