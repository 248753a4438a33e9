"""Recommender registry: a name -> class lookup; adding a model is one file plus one line here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from advrec_common.errors import NotFound
from services.recommender.config import RecConfig
from services.recommender.models.acf import ACF
from services.recommender.models.amr import AMR
from services.recommender.models.base import FitReport, Recommender
from services.recommender.models.bprmf import BPRMF
from services.recommender.models.deepstyle import DeepStyle
from services.recommender.models.dvbpr import DVBPR
from services.recommender.models.vbpr import VBPR

RECOMMENDERS: dict[str, type[Recommender]] = {
    cls.name: cls for cls in (BPRMF, VBPR, AMR, DeepStyle, ACF, DVBPR)
}


def build_recommender(
    name: str, n_users: int, n_items: int, config: RecConfig | dict[str, Any] | None = None
) -> Recommender:
    """An unfitted recommender by registry name (NotFound for an unknown name)."""
    try:
        cls = RECOMMENDERS[name.lower()]
    except KeyError:
        raise NotFound(f"unknown recommender {name!r}; known: {', '.join(sorted(RECOMMENDERS))}") from None
    return cls(n_users, n_items, config)


def load_recommender(path: str | Path, device: str | None = None) -> Recommender:
    """A saved recommender of any registered kind (see :meth:`Recommender.load`)."""
    return Recommender.load(path, device=device)


__all__ = ["RECOMMENDERS", "FitReport", "Recommender", "build_recommender", "load_recommender"]
