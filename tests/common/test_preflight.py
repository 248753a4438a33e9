"""The preflight check lists every problem at once, agrees with the loader and never imports torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from advrec_common.datasets.generic_layout import DroppedRowsWarning, InteractionColumns, load_generic_dataset
from advrec_common.datasets.preflight import check_generic_dataset
from advrec_common.errors import InvalidInput

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    images = tmp_path / "shop" / "images"
    images.mkdir(parents=True)
    for item in ("A1", "B2", "C3", "D4"):
        Image.new("RGBA", (6, 6), (10, 20, 30, 128)).save(images / f"{item}.png")
    (tmp_path / "shop" / "log.csv").write_text(
        "user_id;product_id;ts\n" + "".join(f"u{u};{i};{t}\n" for t, (u, i) in enumerate(
            [(1, "A1"), (1, "B2"), (2, "A1"), (2, "C3"), (3, "D4"), (3, "B2")]))
    )
    (tmp_path / "shop" / "categories.csv").write_text("item,category\nA1,shoe\nB2,bag\nC3,shoe\nD4,hat\n")
    return tmp_path / "shop"


COLUMNS = InteractionColumns(user="user_id", item="product_id", timestamp="ts")


def test_a_clean_catalog_has_no_problems_and_the_loaders_counts(shop: Path) -> None:
    report = check_generic_dataset(shop / "images", shop / "log.csv", shop / "categories.csv", COLUMNS)
    assert report.ok and report.problems == []
    ds = load_generic_dataset(shop / "images", shop / "log.csv", shop / "categories.csv", columns=COLUMNS)
    assert (report.users, report.items, report.interactions) == (ds.n_users, ds.n_items, len(ds.train) + len(ds.test))
    assert report.rows == 6 and report.images == 4 and report.categories == 3
    assert report.image_sizes == {"6x6": 4} and report.image_modes == {"RGBA": 4}
    report.raise_for_errors()  # nothing to raise


def test_several_problems_are_listed_at_once_with_file_and_line(shop: Path) -> None:
    images = shop / "images"
    (images / "B2.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # does not decode
    Image.new("RGB", (20, 20)).save(images / "C3.png")  # over the pixel budget below
    Image.new("RGB", (6, 6)).save(images / "D4.jpg")  # a second image for D4
    Image.new("RGB", (8, 6)).save(images / "A1.png")  # another size than the others
    log = shop / "log.csv"
    log.write_text(log.read_text() + "u4;A1;soon\nu4;E5;7\nu5\nu5;A1;9\n")  # bad ts; no image; 1 field
    (shop / "categories.csv").write_text("item,category\nA1,shoe\nB2,bag\nA1,hat\nsku-9,bag\n")

    report = check_generic_dataset(images, log, shop / "categories.csv", COLUMNS, max_pixels=100,
                                   require_uniform_size=True)
    found = [(Path(p.file).name, p.line, p.severity, p.message) for p in report.problems]

    def has(name: str, line: int | None, severity: str, text: str) -> bool:
        return any(f[:3] == (name, line, severity) and text in f[3] for f in found)

    assert has("log.csv", 8, "error", "timestamp 'soon'")
    assert has("log.csv", 10, "error", "1 fields, but the header has 3")
    assert has("log.csv", 9, "warning", "1 item(s) of 1 interaction(s) have no image") and has("log.csv", 9, "warning", "'E5'")
    assert has("images", None, "error", "item 'D4' has several images (D4.jpg, D4.png)")
    assert has("B2.png", None, "error", "not a recognised image format")
    assert has("C3.png", None, "error", "20x20 = 400 pixels, more than the limit of 100")
    assert has("images", None, "error", "images differ in size (6x6: 1, 8x6: 1); set extractors[].image_size")
    assert has("categories.csv", 4, "warning", "'A1' already has category 'shoe' (line 2)")
    assert has("categories.csv", None, "warning", "2 item(s) have no category: 'C3', 'D4'")
    assert has("categories.csv", None, "warning", "1 labelled item(s) are not in the catalog (no image, or no kept "
                                                 "interaction), their labels are unused: 'sku-9'")
    assert not report.ok and len(report.errors) == 6
    assert report.rows == 8 and report.rows_without_image == 1 and report.items_without_image == 1
    assert report.image_sizes == {"6x6": 1, "8x6": 1}  # B2 and C3 failed; D4 counted once (first file)
    with pytest.raises(InvalidInput, match=r"6 problem\(s\)(.|\n)*log.csv:8: "):
        report.raise_for_errors()
    # the loader fails on the first of them, and says that there are more
    with pytest.raises(InvalidInput, match=r"log.csv:8: .*and 1 more problem"):
        load_generic_dataset(images, log, columns=COLUMNS)


def test_unusable_files_are_problems_not_exceptions(shop: Path, tmp_path: Path) -> None:
    report = check_generic_dataset(tmp_path / "none", tmp_path / "none.csv", tmp_path / "none2.csv")
    assert [p.message for p in report.problems] == ["image folder does not exist", "file does not exist",
                                                    "file does not exist"]
    (shop / "plain.csv").write_text("user,item\nu1,A1\n")
    report = check_generic_dataset(shop / "images", shop / "plain.csv", columns=COLUMNS)
    assert [(p.line, p.message.split(" for ")[0]) for p in report.problems] == [
        (1, "no 'user_id' column"), (1, "no 'product_id' column"), (1, "no 'ts' column")]
    assert report.image_sizes == {"6x6": 4}  # the folder is still checked


def test_no_item_matching_an_image_name_says_so(shop: Path) -> None:
    for p in (shop / "images").iterdir():
        p.rename(p.with_name("IMG_" + p.name))
    report = check_generic_dataset(shop / "images", shop / "log.csv", columns=COLUMNS)
    assert "no interactions left" in report.errors[0].message
    assert "images like 'IMG_A1'" in report.errors[0].message
    with pytest.raises(InvalidInput, match="no interactions left"), pytest.warns(DroppedRowsWarning):
        load_generic_dataset(shop / "images", shop / "log.csv", columns=COLUMNS)


def test_preflight_does_not_import_torch(shop: Path) -> None:
    code = (
        "import sys\n"
        "from advrec_common.datasets.generic_layout import InteractionColumns\n"
        "from advrec_common.datasets.preflight import check_generic_dataset\n"
        f"r = check_generic_dataset({str(shop / 'images')!r}, {str(shop / 'log.csv')!r}, "
        f"columns=InteractionColumns(user='user_id', item='product_id'))\n"
        "import advrec_common.datasets.images, advrec_common.datasets as d; d.load_catalog_images\n"
        "assert r.ok, r\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr


def test_many_problems_are_capped(shop: Path) -> None:
    (shop / "many.csv").write_text("user,item,rating\n" + "u,A1,x\n" * 30)
    report = check_generic_dataset(shop / "images", shop / "many.csv", max_problems=10)
    assert len(report.problems) == 11 and "21 more problem(s)" in report.problems[-1].message
    assert np.all([p.line == n + 2 for n, p in enumerate(report.problems[:10])])
