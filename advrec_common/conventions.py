"""Conventions shared by the pipeline and the report (torch-free).

:func:`headline_k` is the K a run speaks about: its summary, its findings and the scenario's oracle
measurement all use it, so the scenario is chosen on the number the findings then report.
:func:`extractor_views` lists a run's columns: its extractors and, per defense rung, the rung against the
adaptive attacker and against the non-adaptive one; the DAG plans them, the report reads them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from advrec_common.errors import InvalidInput


def headline_k(ks: Iterable[int]) -> int:
    """The K the summary and findings speak about: the second-smallest K, or the only one."""
    distinct = sorted(set(int(k) for k in ks))
    if not distinct:
        raise InvalidInput("the spec lists no K")
    return distinct[1] if len(distinct) > 1 else distinct[0]


NONADAPTIVE = ".nonadaptive"  # the suffix of a defense rung's second view: the non-adaptive attacker's


@dataclass(frozen=True)
class ExtractorView:
    """One column of a run's results: a spec extractor, or a defense rung in front of one.

    ``name``: as results and tables show it; ``extractor``: the spec extractor whose model runs; ``rung``: the
    defense in front of it (None: none); ``source``: for a rung's non-adaptive view, the extractor whose
    attacked images it receives (the attacker saw only the bare extractor), else None (attacked here: through
    the defense, adaptively, for a rung)."""

    name: str
    extractor: str
    rung: str | None = None
    source: str | None = None

    @property
    def model(self) -> str:
        """The name whose features and trained recommenders this view reads (the rung's, or the extractor's)."""
        return self.rung or self.extractor


def extractor_views(spec: dict[str, Any]) -> list[ExtractorView]:
    """The spec's extractors, then per defense rung (``spec["defenses"]``, names and extractors resolved) its
    adaptive view (``name``) and its non-adaptive view (``name`` + :data:`NONADAPTIVE`), in spec order."""
    views = [ExtractorView(e["name"], e["name"]) for e in spec["extractors"]]
    for d in spec.get("defenses") or []:
        views.append(ExtractorView(d["name"], d["extractor"], d["name"]))
        views.append(ExtractorView(d["name"] + NONADAPTIVE, d["extractor"], d["name"], d["extractor"]))
    return views
