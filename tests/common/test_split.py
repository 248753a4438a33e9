"""Leave-one-out with and without timestamps, and id indexing."""

from __future__ import annotations

import numpy as np

from advrec_common.datasets.split import build_index, leave_one_out
from advrec_common.datasets.types import Interactions


def test_without_timestamps_last_row_in_file_order_goes_to_test() -> None:
    inter = Interactions(user=[1, 0, 1, 0, 2, 0], item=[5, 1, 6, 2, 3, 4], n_users=3, n_items=7)
    train, test = leave_one_out(inter)
    assert list(zip(test.user, test.item, strict=True)) == [(0, 4), (1, 6)]  # user 2 has one row: train only
    assert list(zip(train.user, train.item, strict=True)) == [
        (1, 5),
        (0, 1),
        (0, 2),
        (2, 3),
    ]  # file order kept
    assert train.n_users == 3 and test.n_items == 7 and train.timestamp is None


def test_with_timestamps_latest_wins_and_ties_go_to_the_later_row() -> None:
    inter = Interactions(
        user=[0, 0, 0, 1, 1, 1],
        item=[0, 1, 2, 3, 4, 5],
        n_users=2,
        n_items=6,
        rating=np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.5]),
        timestamp=np.array([30, 10, 20, 7, 7, 3]),
    )
    train, test = leave_one_out(inter)
    assert test.item.tolist() == [0, 4]  # user 0: t=30 (first row); user 1: tie at 7 -> later row
    assert test.rating.tolist() == [5.0, 1.0] and test.timestamp.tolist() == [30, 7]
    assert sorted(train.item.tolist()) == [1, 2, 3, 5]
    assert len(train) + len(test) == len(inter)


def test_empty_interactions() -> None:
    train, test = leave_one_out(Interactions(user=[], item=[], n_users=0, n_items=0))
    assert len(train) == 0 and len(test) == 0


def test_build_index_maps_ids_to_contiguous_codes() -> None:
    codes, unique = build_index(["b", "a", "b", "c10", "a"])
    assert unique == ["a", "b", "c10"]
    assert codes.tolist() == [1, 0, 1, 2, 0]
    assert [unique[c] for c in codes] == ["b", "a", "b", "c10", "a"]
    empty_codes, empty_unique = build_index([])
    assert empty_codes.shape == (0,) and empty_unique == []
