"""What each recommender reads about items, as plain data (torch-free, for validation and planning).

``needs`` names the :class:`~services.recommender.items.ItemSide` fields a model reads:
``features`` (pooled CNN features), ``spatial`` (region features), ``images`` (raw pixels: the
model learns its own CNN), ``categories``. The model classes declare the same sets (a test checks).
"""

from __future__ import annotations

RECOMMENDER_NEEDS: dict[str, frozenset[str]] = {
    "bprmf": frozenset(),
    "vbpr": frozenset({"features"}),
    "amr": frozenset({"features"}),
    "deepstyle": frozenset({"features", "categories"}),
    "acf": frozenset({"spatial"}),
    "dvbpr": frozenset({"images"}),
}


def uses_extractor(name: str) -> bool:
    """True when the recommender reads what an extractor computes (features or region features)."""
    return bool(RECOMMENDER_NEEDS[name] & {"features", "spatial"})


def reads_items(name: str) -> bool:
    """True when the recommender reads anything about items (features, regions, pixels, categories); BPR-MF
    does not: it learns from interactions only, so no image perturbation can move it."""
    return bool(RECOMMENDER_NEEDS[name])
