"""k-core: the iterative filter reaches a true k-core; the single pass reproduces the study."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from advrec_common.datasets.kcore import kcore_filter
from advrec_common.errors import InvalidInput

# A 2-core hand case where one pass is not enough: dropping user 2 (one row) leaves item 2 with a
# single row (user 1's), which must then go, which leaves user 1 with a single row, and so on.
USERS = np.array([0, 0, 1, 1, 2, 3, 3, 4, 4])
ITEMS = np.array([0, 1, 1, 2, 2, 0, 1, 3, 3])


def test_iterative_reaches_the_core_where_one_pass_does_not() -> None:
    keep = kcore_filter(USERS, ITEMS, 2)
    # user 4 rates item 3 twice: both have 2 rows and survive; user 1 / item 2 collapse.
    np.testing.assert_array_equal(keep, [True, True, False, False, False, True, True, True, True])
    single = kcore_filter(USERS, ITEMS, 2, iterative=False)
    # study's single pass: user 2 goes, then items counted on what is left: item 2 has 1 row -> gone,
    # but user 1 is left with one row (below k): the study's quirk.
    np.testing.assert_array_equal(single, [True, True, True, False, False, True, True, True, True])
    assert np.bincount(USERS[single])[1] == 1


def test_k_zero_and_one_keep_everything() -> None:
    assert kcore_filter(USERS, ITEMS, 0).all() and kcore_filter(USERS, ITEMS, 1).all()


def test_bad_arguments() -> None:
    with pytest.raises(InvalidInput):
        kcore_filter(USERS, ITEMS[:-1], 2)
    with pytest.raises(InvalidInput):
        kcore_filter(USERS, ITEMS, -1)
    with pytest.raises(InvalidInput):
        kcore_filter(USERS - 1, ITEMS, 2)


def _peel(rows: list[tuple[int, int]], k: int) -> list[bool]:
    """Reference: remove one under-k user or item at a time until none is left (the k-core is unique)."""
    alive = [True] * len(rows)
    while True:
        users: dict[int, int] = {}
        items: dict[int, int] = {}
        for (u, i), a in zip(rows, alive, strict=True):
            if a:
                users[u] = users.get(u, 0) + 1
                items[i] = items.get(i, 0) + 1
        weak = next(((0, u) for u, c in users.items() if c < k), None) or next(
            ((1, i) for i, c in items.items() if c < k), None
        )
        if weak is None:
            return alive
        alive = [a and r[weak[0]] != weak[1] for r, a in zip(rows, alive, strict=True)]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 7)), max_size=60), st.integers(2, 4))
def test_matches_one_at_a_time_peeling(rows: list[tuple[int, int]], k: int) -> None:
    u = np.array([r[0] for r in rows], dtype=np.int64)
    i = np.array([r[1] for r in rows], dtype=np.int64)
    keep = kcore_filter(u, i, k)
    assert keep.tolist() == _peel(rows, k)
    if keep.any():
        assert (np.bincount(u[keep])[np.unique(u[keep])] >= k).all()
        assert (np.bincount(i[keep])[np.unique(i[keep])] >= k).all()
