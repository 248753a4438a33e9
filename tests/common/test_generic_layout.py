"""The generic layout: images by item id, interaction files as they come, categories, k-core, split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from advrec_common.datasets.generic_layout import (
    CategoryColumns,
    DroppedRowsWarning,
    InteractionColumns,
    load_generic_dataset,
)
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
    with pytest.raises(InvalidInput, match=r"ratings.csv:1: no 'customer' column"):
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


def _same_split(a, b) -> None:
    assert a.user_ids == b.user_ids and a.catalog.item_ids == b.catalog.item_ids
    for x, y in ((a.train, b.train), (a.test, b.test)):
        assert x.user.tolist() == y.user.tolist() and x.item.tolist() == y.item.tolist()


def test_excel_export_with_bom_semicolons_named_columns_and_epoch_ms(shop: Path) -> None:
    """The reported file: user_id;product_id;ts in milliseconds, UTF-8 BOM, ';' in a .csv."""
    with pytest.warns(DroppedRowsWarning):
        reference = load_generic_dataset(shop / "images", shop / "ratings.csv", shop / "categories.csv")
    rows = (shop / "ratings.csv").read_text().splitlines()[1:]
    lines = ["user_id;product_id;stars;ts"] + [
        ";".join([u, i, r, str(int(t) * 1000 + 1_700_000_000_000)]) for u, i, r, t in (x.split(",") for x in rows)
    ]
    (shop / "export.csv").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode())
    (shop / "cats.csv").write_bytes(b"\xef\xbb\xbfSKU\tDept\nA1\tshoe\nB2\tbag\nC3\tshoe\n")
    columns = InteractionColumns(user="user_id", item="product_id", rating="stars", timestamp="ts")
    with pytest.warns(DroppedRowsWarning):
        ds = load_generic_dataset(shop / "images", shop / "export.csv", shop / "cats.csv", columns=columns,
                                  category_columns=CategoryColumns(item="sku", category="dept"))
    _same_split(ds, reference)
    assert ds.catalog.categories == reference.catalog.categories
    assert ds.test.timestamp.tolist() == [1_700_000_000 + 300, 1_700_000_000 + 50]  # ms -> s


def test_iso_timestamps_with_and_without_time_zone(shop: Path) -> None:
    (shop / "iso.csv").write_text(
        "user,item,timestamp\n"
        "u1,A1,2024-03-05T10:00:00+02:00\n"  # 08:00 UTC
        "u1,B2,2024-03-05T09:00:00Z\n"  # the latest: test
        "u1,C3,2024-03-05 08:30\n"  # naive: UTC
        "u2,A1,2024-03-04\n"
        "u2,C3,2024-03-01\n"
    )
    ds = load_generic_dataset(shop / "images", shop / "iso.csv")
    test = {ds.user_ids[u]: ds.catalog.item_ids[i] for u, i in zip(ds.test.user, ds.test.item, strict=True)}
    assert test == {"u1": "B2", "u2": "A1"}
    assert ds.test.timestamp.dtype == np.int64


def test_rating_threshold_on_a_named_column(shop: Path) -> None:
    (shop / "stars.csv").write_text("who,what,stars\nx,A1,5\nx,B2,2\nx,C3,4\ny,B2,4\n")
    ds = load_generic_dataset(shop / "images", shop / "stars.csv",
                              columns=InteractionColumns(user="who", item="what", rating="stars", min_rating=4))
    assert ds.catalog.item_ids == ["A1", "B2", "C3"] and len(ds.train) + len(ds.test) == 3  # x-B2 (2) dropped
    with pytest.raises(InvalidInput, match=r"stars.csv:1: min_rating needs a rating column"):
        load_generic_dataset(shop / "images", shop / "stars.csv",
                             columns=InteractionColumns(user="who", item="what", min_rating=4))
    with pytest.raises(InvalidInput, match="not both"):
        load_generic_dataset(shop / "images", shop / "stars.csv", columns=InteractionColumns(), user_col="who")


def test_header_names_match_after_stripping_and_case_folding(shop: Path) -> None:
    (shop / "caps.csv").write_text(" User |ITEM\nx|A1\nx|B2\n")
    assert load_generic_dataset(shop / "images", shop / "caps.csv").catalog.item_ids == ["A1", "B2"]
    (shop / "twice.csv").write_text("User,USER,item\nx,y,A1\n")
    with pytest.raises(InvalidInput, match=r"twice.csv:1: the user column 'user' is ambiguous"):
        load_generic_dataset(shop / "images", shop / "twice.csv")


@pytest.mark.parametrize(
    ("content", "line", "message"),
    [
        ("user,item\nu1,A1\nu2\n", 3, "2 fields|1 fields"),
        ("user,item\nu1,A1\n,B2\n", 3, "empty user"),
        ("user,item,timestamp\nu1,A1,1\nu1,B2,yesterday\n", 3, "timestamp 'yesterday'"),
        ("user,item,rating\nu1,A1,5\nu1,B2,great\n", 3, "rating 'great'"),
        ("user;item,x\nu1;A1,1\n", 1, "cannot tell the delimiter"),
        ("customer,item\nu1,A1\n", 1, "no 'user' column"),
        (b"user,item\nu1,A1\nu\xe9,B2\n", 3, "not UTF-8"),
        ("user,item\n\n\nu1,A1,,,x\n", 4, "5 fields"),
    ],
)
def test_every_error_names_the_file_and_line(shop: Path, content: str | bytes, line: int, message: str) -> None:
    path = shop / "bad.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(InvalidInput, match=rf"^{path}:{line}: .*({message})"):
        load_generic_dataset(shop / "images", path)


def test_several_images_for_one_used_item_is_an_error(shop: Path) -> None:
    Image.new("RGB", (6, 6)).save(shop / "images" / "A1.png")
    with pytest.raises(InvalidInput, match=r"item 'A1' has several images \(A1.jpg, A1.png\)"):
        load_generic_dataset(shop / "images", shop / "ratings.csv")


def test_a_tab_delimiter_is_not_a_blank_column_name(tmp_path):
    """``delimiter: "\\t"`` is blank to strip(); it was refused as 'a column name cannot be blank'."""
    from advrec_common.datasets.generic_layout import InteractionColumns

    assert InteractionColumns(user="customer", delimiter="\t").delimiter == "\t"
    with pytest.raises(ValueError, match="blank"):
        InteractionColumns(user="  ")
