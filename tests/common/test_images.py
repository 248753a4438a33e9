"""Decoding guards, uint8 <-> tensor round trip, catalog loading and streaming."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from advrec_common.datasets.images import (
    CatalogImageDataset,
    decode_image,
    load_catalog_images,
    to_tensor,
    to_uint8,
)
from advrec_common.datasets.types import Catalog
from advrec_common.errors import BadImage, InvalidInput


def _encode(array: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture
def picture() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(12, 20, 3), dtype=np.uint8)


def test_png_bytes_and_file_decode_exactly(picture: np.ndarray, tmp_path: Path) -> None:
    data = _encode(picture, "PNG")
    np.testing.assert_array_equal(decode_image(data), picture)
    (tmp_path / "x.png").write_bytes(data)
    np.testing.assert_array_equal(decode_image(tmp_path / "x.png"), picture)
    np.testing.assert_array_equal(decode_image(str(tmp_path / "x.png")), picture)


def test_grey_palette_and_alpha_become_rgb() -> None:
    grey = np.full((4, 5), 77, dtype=np.uint8)
    out = decode_image(_encode(np.stack([grey] * 3, -1), "PNG", mode="L"))
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8 and (out == 77).all()
    rgba = np.zeros((4, 5, 4), dtype=np.uint8)  # fully transparent black -> white background
    buf = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buf, format="PNG")
    assert (decode_image(buf.getvalue()) == 255).all()
    pal = decode_image(_encode(np.full((3, 3, 3), 200, np.uint8), "GIF"))
    assert pal.shape == (3, 3, 3)


def test_corrupt_truncated_and_non_image_raise_bad_image(picture: np.ndarray, tmp_path: Path) -> None:
    jpeg = _encode(picture, "JPEG")
    with pytest.raises(BadImage, match="corrupt or truncated"):
        decode_image(jpeg[: len(jpeg) // 2])
    corrupt = bytearray(_encode(picture, "PNG"))
    corrupt[40:60] = b"\x00" * 20  # break the IDAT chunk (CRC mismatch)
    with pytest.raises(BadImage):
        decode_image(bytes(corrupt))
    with pytest.raises(BadImage, match="not a recognised image"):
        decode_image(b"user\titem\n0\t1\n")
    (tmp_path / "notes.jpg").write_text("hello")
    with pytest.raises(BadImage, match="not a recognised image"):
        decode_image(tmp_path / "notes.jpg")
    with pytest.raises(BadImage, match="does not exist"):
        decode_image(tmp_path / "missing.jpg")


def test_pixel_budget_is_checked_before_decoding(picture: np.ndarray) -> None:
    data = _encode(picture, "PNG")
    with pytest.raises(BadImage, match="more than the limit of 100"):
        decode_image(data, max_pixels=100)
    assert decode_image(data, max_pixels=12 * 20).shape == (12, 20, 3)


@settings(max_examples=25, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6), st.just(3))))
def test_to_uint8_inverts_to_tensor(x: np.ndarray) -> None:
    t = to_tensor(x)
    assert t.shape == (x.shape[0], 3, x.shape[1], x.shape[2]) and t.dtype == torch.float32
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    np.testing.assert_array_equal(to_uint8(t), x)


def test_to_uint8_rounds_and_clamps() -> None:
    x = torch.tensor([100.6 / 255, 100.4 / 255, -0.5, 1.7]).view(1, 1, 2, 2).repeat(1, 3, 1, 1)
    out = to_uint8(x)
    assert out[0, 0, 0, 0] == 101 and out[0, 0, 1, 0] == 100  # rounded, not truncated
    assert out[0, 1, 0, 0] == 0 and out[0, 1, 1, 0] == 255
    with pytest.raises(InvalidInput):
        to_tensor(np.zeros((2, 2, 3), np.uint8))


def _file_catalog(tmp_path: Path, shapes: list[tuple[int, int]]) -> Catalog:
    rng = np.random.default_rng(1)
    paths = []
    for n, (h, w) in enumerate(shapes):
        p = tmp_path / f"{n}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return Catalog(item_ids=[str(n) for n in range(len(shapes))], image_paths=paths)


def test_load_catalog_images_needs_size_for_mixed_shapes(tmp_path: Path) -> None:
    catalog = _file_catalog(tmp_path, [(8, 8), (8, 8), (10, 6)])
    same = load_catalog_images(catalog, [1, 0])
    assert same.shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(same[1], decode_image(tmp_path / "0.png"))
    with pytest.raises(InvalidInput, match="pass size="):
        load_catalog_images(catalog)
    resized = load_catalog_images(catalog, size=5)
    assert resized.shape == (3, 5, 5, 3) and resized.dtype == np.uint8
    with pytest.raises(InvalidInput, match="indices"):
        load_catalog_images(catalog, [3])


def test_catalog_image_dataset_streams_files_and_arrays(tmp_path: Path) -> None:
    catalog = _file_catalog(tmp_path, [(8, 8), (10, 6), (7, 9)])
    ds = CatalogImageDataset(catalog, indices=[2, 0], size=6)
    assert len(ds) == 2
    image, index = ds[0]
    assert index == 2 and image.shape == (3, 6, 6) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    arrays_ = np.random.default_rng(2).integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    mem = CatalogImageDataset(Catalog(item_ids=["a", "b", "c"], images=arrays_))
    batch = torch.stack([mem[i][0] for i in range(3)])
    np.testing.assert_array_equal(to_uint8(batch), arrays_)
