"""k-core filtering of implicit feedback: keep rows whose user and item both have >= k interactions."""

from __future__ import annotations

import numpy as np

from advrec_common.errors import InvalidInput


def kcore_filter(users: np.ndarray, items: np.ndarray, k: int, iterative: bool = True) -> np.ndarray:
    """Boolean mask (R,) of the rows kept by the k-core of the bipartite user-item graph.

    users, items: (R,) non-negative integer codes, one row per interaction. With ``iterative``
    (default) users and items are pruned alternately until every kept user **and** every kept item
    has >= k kept rows -- the true k-core. ``iterative=False`` reproduces the study's
    ``dataset_preprocessing/leave_one_out.py``: one pass, users with >= k rows first, then items
    with >= k of the remaining rows (users may fall below k afterwards).
    """
    u = np.asarray(users)
    i = np.asarray(items)
    if u.shape != i.shape or u.ndim != 1:
        raise InvalidInput("users and items must be 1-d arrays of equal length")
    if int(k) != k or k < 0:
        raise InvalidInput(f"k must be a non-negative integer, got {k!r}")
    keep = np.ones(u.shape[0], dtype=bool)
    if k <= 1 or u.size == 0:
        return keep
    if (
        (u.min() < 0)
        or (i.min() < 0)
        or not np.issubdtype(u.dtype, np.integer)
        or not np.issubdtype(i.dtype, np.integer)
    ):
        raise InvalidInput("users and items must be non-negative integer codes")
    n_u, n_i = int(u.max()) + 1, int(i.max()) + 1
    if not iterative:
        keep &= np.bincount(u, minlength=n_u)[u] >= k
        keep &= np.bincount(i, weights=keep, minlength=n_i)[i] >= k
        return keep
    while True:
        user_ok = np.bincount(u, weights=keep, minlength=n_u)[u] >= k
        item_ok = np.bincount(i, weights=keep, minlength=n_i)[i] >= k
        new_keep = keep & user_ok & item_ok
        if np.array_equal(new_keep, keep):
            return keep
        keep = new_keep
