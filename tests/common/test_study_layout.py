"""The study layout: round trip of the demo, and clear errors for broken folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from advrec_common.datasets.images import load_catalog_images
from advrec_common.datasets.study_layout import load_study_dataset, write_study_dataset
from advrec_common.datasets.types import RecDataset
from advrec_common.errors import InvalidInput, NotFound


def _same_interactions(a, b) -> None:
    np.testing.assert_array_equal(a.user, b.user)
    np.testing.assert_array_equal(a.item, b.item)
    np.testing.assert_array_equal(a.timestamp, b.timestamp)
    assert (a.n_users, a.n_items) == (b.n_users, b.n_items)


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_round_trip_of_the_demo(tiny_demo: RecDataset, tmp_path: Path, fmt: str) -> None:
    root = write_study_dataset(tiny_demo, tmp_path / "demo", image_format=fmt)
    assert (root / "original" / "images" / f"0.{fmt}").is_file()
    back = load_study_dataset(root)
    _same_interactions(back.train, tiny_demo.train)
    _same_interactions(back.test, tiny_demo.test)
    assert back.name == "demo" and back.user_ids == tiny_demo.user_ids
    assert back.catalog.item_ids == tiny_demo.catalog.item_ids
    assert back.catalog.categories == tiny_demo.catalog.categories
    assert back.catalog.category_names == tiny_demo.catalog.category_names
    assert back.catalog.attributes == tiny_demo.catalog.attributes
    images = load_catalog_images(back.catalog)
    diff = np.abs(images.astype(np.int16) - tiny_demo.catalog.images.astype(np.int16))
    if fmt == "png":
        assert diff.max() == 0  # lossless
    else:  # JPEG is lossy: close on average, never wildly off
        assert diff.mean() < 4.0 and np.percentile(diff, 99) < 40


def test_plain_study_folder_without_side_files(tiny_demo: RecDataset, tmp_path: Path) -> None:
    root = write_study_dataset(tiny_demo, tmp_path / "plain")
    for name in ("items.tsv", "users.tsv", "dataset.json"):
        (root / name).unlink()
    (root / "trainingset.tsv").write_text("0\t1\n0\t2\n1\t0\n")  # the study's 2-column form
    (root / "testset.tsv").write_text("0\t0\n")
    ds = load_study_dataset(root, name="plain")
    assert ds.name == "plain" and ds.n_users == 2 and ds.n_items == len(tiny_demo.catalog)
    assert ds.catalog.item_ids[:3] == ["0", "1", "2"] and ds.catalog.categories is None
    assert ds.train.rating is None and ds.train.timestamp is None
    assert ds.train.item.tolist() == [1, 2, 0]


@pytest.fixture
def study_root(tiny_demo: RecDataset, tmp_path: Path) -> Path:
    return write_study_dataset(tiny_demo, tmp_path / "s")


def test_missing_testset_is_not_found(study_root: Path) -> None:
    (study_root / "testset.tsv").unlink()
    with pytest.raises(NotFound, match="testset.tsv"):
        load_study_dataset(study_root)


def test_missing_image_names_the_path(study_root: Path) -> None:
    (study_root / "original" / "images" / "7.jpg").unlink()
    with pytest.raises(NotFound, match=r"7\.jpg"):
        load_study_dataset(study_root)


def test_malformed_rows_give_the_line_number(study_root: Path) -> None:
    lines = (study_root / "trainingset.tsv").read_text().splitlines()
    lines[2] = "0\tseven\t1.0\t5"
    (study_root / "trainingset.tsv").write_text("\n".join(lines) + "\n")
    with pytest.raises(InvalidInput, match=r"trainingset.tsv:3: not numeric"):
        load_study_dataset(study_root)
    lines[2] = "0\t7"
    (study_root / "trainingset.tsv").write_text("\n".join(lines) + "\n")
    with pytest.raises(InvalidInput, match=r"trainingset.tsv:3: 2 columns, earlier rows have 4"):
        load_study_dataset(study_root)


def test_missing_folder_and_images_dir(study_root: Path, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        load_study_dataset(tmp_path / "nope")
    shutil.rmtree(study_root / "original")
    with pytest.raises(NotFound, match="image folder"):
        load_study_dataset(study_root)
