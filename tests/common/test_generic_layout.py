"""The generic layout: images by item id, a headed CSV/TSV, categories, k-core, split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from advrec_common.datasets.generic_layout import DroppedRowsWarning, load_generic_dataset
from advrec_common.errors import InvalidInput, NotFound


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    images = tmp_path / "shop" / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for item, ext in [("A1", "jpg"), ("B2", "png"), ("C3", "webp"), ("D4", "jpeg")]:  # E5 has no image
        Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(images / f"{item}.{ext}")
    (tmp_path / "shop" / "ratings.csv").write_text(
        "user,item,rating,timestamp\n"
        "u1,A1,5,100\n"
        "u1,B2,4,300\n"
        "u1,E5,5,400\n"
        "u1,C3,2,200\n"
        "u2,A1,3,50\n"
        "u2,C3,5,10\n"
        "u3,D4,5,1\n"
        "u2,A1,4,60\n"  # repeat of (u2, A1): the earliest (t=50) is kept
    )
    (tmp_path / "shop" / "categories.csv").write_text("item,category\nA1,shoe\nB2,bag\nC3,shoe\n")
    return tmp_path / "shop"


def test_loads_with_categories_and_drops_items_without_image(shop: Path) -> None:
    with pytest.warns(DroppedRowsWarning, match="dropped 1 interaction"):
        ds = load_generic_dataset(shop / "images", shop / "ratings.csv", shop / "categories.csv")
    assert ds.catalog.item_ids == ["A1", "B2", "C3", "D4"]
    assert ds.catalog.categories == ["shoe", "bag", "shoe", None]
    assert ds.catalog.category_names == ["bag", "shoe"]
    assert ds.user_ids == ["u1", "u2", "u3"]
    assert ds.catalog.image_paths[2].name == "C3.webp"
    test = {(ds.user_ids[u], ds.catalog.item_ids[i]) for u, i in zip(ds.test.user, ds.test.item, strict=True)}
    assert test == {("u1", "B2"), ("u2", "A1")}  # latest by timestamp; u3 has a single row
    assert len(ds.train) == 4  # u1: A1, C3; u2: C3; u3: D4
    assert ds.test.timestamp.tolist() == [300, 50]  # u2's repeat of A1 (t=60) was dropped, t=50 kept
    assert ds.test.rating.tolist() == [4.0, 3.0]


def test_kcore_and_min_rating(shop: Path) -> None:
    with pytest.warns(DroppedRowsWarning):
        ds = load_generic_dataset(shop / "images", shop / "ratings.csv", kcore=2)
    # 2-core: u3 (1 row) goes, then B2 and D4 (1 row each) go, then u1 has A1, C3 and u2 has A1, C3
    assert ds.user_ids == ["u1", "u2"] and ds.catalog.item_ids == ["A1", "C3"]
    with pytest.warns(DroppedRowsWarning):
        hi = load_generic_dataset(shop / "images", shop / "ratings.csv", min_rating=4)
    assert "C3" in hi.catalog.item_ids and len(hi.train) + len(hi.test) == 5


def test_tsv_with_custom_columns_and_no_timestamp(shop: Path) -> None:
    (shop / "log.tsv").write_text("who\twhat\nx\tA1\nx\tB2\ny\tB2\n")
    ds = load_generic_dataset(shop / "images", shop / "log.tsv", user_col="who", item_col="what")
    assert ds.test.item.tolist() == [ds.catalog.item_ids.index("B2")]  # x's last row in file order
    assert ds.train.timestamp is None and ds.train.rating is None


def test_errors(shop: Path) -> None:
    with pytest.raises(InvalidInput, match="no 'customer' column"):
        load_generic_dataset(shop / "images", shop / "ratings.csv", user_col="customer")
    with pytest.raises(NotFound):
        load_generic_dataset(shop / "images", shop / "missing.csv")
    with pytest.raises(NotFound):
        load_generic_dataset(shop / "nothing", shop / "ratings.csv")
    (shop / "bad.csv").write_text("user,item,rating\nu1,A1,5\nu1,B2,great\n")
    with pytest.raises(InvalidInput, match=r"bad.csv:3: rating 'great'"):
        load_generic_dataset(shop / "images", shop / "bad.csv")
    with pytest.raises(InvalidInput, match="no interactions left"), pytest.warns(DroppedRowsWarning):
        load_generic_dataset(shop / "images", shop / "ratings.csv", kcore=5)
