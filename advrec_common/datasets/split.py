"""Leave-one-out splitting and id indexing, vectorised (no per-user Python loops)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from advrec_common.datasets.types import Interactions


def build_index(ids: Sequence[str] | np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Map external ids to contiguous codes: ``(codes (R,) int64 in [0,U), unique_ids (U,) sorted)``.

    ``unique_ids[codes[r]] == ids[r]``; ids are compared as strings and sorted, so the mapping
    does not depend on row order.
    """
    if len(ids) == 0:
        return np.zeros(0, dtype=np.int64), []
    unique, codes = np.unique(np.asarray([str(x) for x in ids], dtype=str), return_inverse=True)
    return codes.astype(np.int64).reshape(-1), [str(x) for x in unique]


def _take(inter: Interactions, rows: np.ndarray) -> Interactions:
    return Interactions(
        user=inter.user[rows],
        item=inter.item[rows],
        n_users=inter.n_users,
        n_items=inter.n_items,
        rating=None if inter.rating is None else np.asarray(inter.rating)[rows],
        timestamp=None if inter.timestamp is None else np.asarray(inter.timestamp)[rows],
    )


def leave_one_out(interactions: Interactions) -> tuple[Interactions, Interactions]:
    """Split into ``(train, test)``: each user with > 1 interactions gives its last one to test.

    "Last" is the greatest timestamp, ties broken by file (row) order; without timestamps it is
    the last row in file order (the study's rule). Train keeps the input row order; test has one
    row per such user, sorted by user. Users with a single interaction stay wholly in train.
    """
    n = len(interactions)
    if n == 0:
        return _take(interactions, np.zeros(0, dtype=np.int64)), _take(
            interactions, np.zeros(0, dtype=np.int64)
        )
    row = np.arange(n)
    time = np.zeros(n) if interactions.timestamp is None else np.asarray(interactions.timestamp)
    order = np.lexsort((row, time, interactions.user))  # by user, then time, then file order
    sorted_users = interactions.user[order]
    is_last = np.ones(n, dtype=bool)
    is_last[:-1] = sorted_users[:-1] != sorted_users[1:]
    counts = np.bincount(interactions.user, minlength=interactions.n_users)
    test_rows = order[is_last & (counts[sorted_users] > 1)]
    in_test = np.zeros(n, dtype=bool)
    in_test[test_rows] = True
    return _take(interactions, row[~in_test]), _take(interactions, test_rows)
