"""Conventions shared by the pipeline and the report (torch-free).

:func:`headline_k` is the K a run speaks about: its summary, its findings and the scenario's oracle
measurement all use it, so the scenario is chosen on the number the findings then report.
"""

from __future__ import annotations

from collections.abc import Iterable

from advrec_common.errors import InvalidInput


def headline_k(ks: Iterable[int]) -> int:
    """The K the summary and findings speak about: the second-smallest K, or the only one."""
    distinct = sorted(set(int(k) for k in ks))
    if not distinct:
        raise InvalidInput("the spec lists no K")
    return distinct[1] if len(distinct) > 1 else distinct[0]
