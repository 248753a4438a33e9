"""What each recommender reads about items, as plain data (torch-free, for validation and planning).

``needs`` names the :class:`~services.recommender.items.ItemSide` fields a model reads:
``features`` (pooled CNN features), ``spatial`` (region features), ``images`` (raw pixels: the
model learns its own CNN), ``categories``. The model classes declare the same sets (a test checks).
``CONFIG_BLOCKS`` names the parameter blocks that take one value each of ``config.lr`` and
``config.regs`` (the models read their values through it, and the spec checks lengths with it).
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

_USER_ITEM_VISUAL = ("users", "items", "visual projection E")

CONFIG_BLOCKS: dict[str, dict[str, tuple[str, ...]]] = {
    "bprmf": {"lr": ("users", "items"), "regs": ("users", "items")},
    "vbpr": {"lr": _USER_ITEM_VISUAL, "regs": _USER_ITEM_VISUAL},
    "amr": {"lr": _USER_ITEM_VISUAL, "regs": _USER_ITEM_VISUAL},
    "deepstyle": {"lr": ("users", "items and categories", "visual projection E"), "regs": _USER_ITEM_VISUAL},
    "acf": {"lr": ("all parameters",), "regs": ("all parameters",)},
    "dvbpr": {"lr": ("all parameters",), "regs": ("user vectors theta", "CNN weights")},
}


def uses_extractor(name: str) -> bool:
    """True when the recommender reads what an extractor computes (features or region features)."""
    return bool(RECOMMENDER_NEEDS[name] & {"features", "spatial"})


def reads_items(name: str) -> bool:
    """True when the recommender reads anything about items (features, regions, pixels, categories); BPR-MF
    does not: it learns from interactions only, so no image perturbation can move it."""
    return bool(RECOMMENDER_NEEDS[name])
