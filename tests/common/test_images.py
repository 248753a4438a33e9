"""Decoding guards, every mode to RGB, the crop/pad/stretch geometry, uint8 <-> tensor, catalog batches."""

from __future__ import annotations

import io
import struct
import zlib
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
    iter_catalog_batches,
    load_catalog_images,
    read_image_header,
    resize_image,
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
    with pytest.raises(InvalidInput, match="size= in Python"):
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


def _png16(px: np.ndarray) -> bytes:
    """A 16-bit RGB (H,W,3) or RGBA (H,W,4) PNG written by hand (Pillow writes 16-bit grey only)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w, c = px.shape
    raw = b"".join(b"\x00" + px[r].astype(">u2").tobytes() for r in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, {3: 2, 4: 6}[c], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _modes() -> dict[str, bytes]:
    rgb = np.zeros((12, 20, 3), np.uint8)
    rgb[..., 0] = 200
    out = {mode: _encode(rgb, "PNG", mode) for mode in ("RGB", "RGBA", "L", "LA", "P", "1")}
    out["CMYK"] = _encode(rgb, "JPEG", "CMYK")
    buf = io.BytesIO()
    Image.fromarray(np.full((12, 20), 51400, np.uint16)).save(buf, format="PNG")  # I;16
    out["I;16"] = buf.getvalue()
    out["RGB16"] = _png16(np.full((12, 20, 3), 51400, np.uint16))
    out["RGBA16"] = _png16(np.full((12, 20, 4), 51400, np.uint16))
    return out


@pytest.mark.parametrize("mode", list(_modes()))
def test_every_mode_loads_as_s_by_s_rgb(mode: str) -> None:
    data = _modes()[mode]
    for fit in ("crop", "pad", "stretch"):
        out = decode_image(data, size=8, fit=fit)
        assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert decode_image(data).shape == (12, 20, 3)


def test_16_bit_grey_is_scaled_not_clipped() -> None:
    buf = io.BytesIO()
    Image.fromarray(np.array([[0, 257 * 128, 65535, 1000]], np.uint16)).save(buf, format="PNG")
    assert decode_image(buf.getvalue())[0, :, 0].tolist() == [0, 128, 255, 4]
    assert (decode_image(_png16(np.full((2, 2, 3), 257 * 200, np.uint16))) == 200).all()


RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def _halves(w: int, h: int) -> np.ndarray:
    """A w x h image, red where x < w/2 and blue elsewhere."""
    image = np.empty((h, w, 3), np.uint8)
    image[:, : w // 2], image[:, w // 2 :] = RED, BLUE
    return image


def test_crop_is_shorter_side_then_center_crop() -> None:
    wide = resize_image(_halves(40, 20), 10)  # the central 20x20 (x 10..30) is half red, half blue
    assert (wide[:, :4] == RED).all() and (wide[:, 6:] == BLUE).all()
    portrait = np.zeros((40, 20, 3), np.uint8)
    portrait[:10], portrait[10:30], portrait[30:] = RED, BLUE, RED  # only the blue middle survives the crop
    # (the kernel reaches past the crop box, as when resizing first and cropping after: edge rows blend)
    assert (resize_image(portrait, 10)[1:-1] == BLUE).all()
    same = resize_image(_halves(40, 20), 20)  # shorter side already 20: a pure crop, no resampling
    np.testing.assert_array_equal(same, _halves(40, 20)[:, 10:30])


def test_pad_and_stretch_keep_the_whole_image() -> None:
    padded = resize_image(_halves(40, 20), 10, fit="pad")  # 10x5 in rows 2..6, white above and below
    assert (padded[:2] == WHITE).all() and (padded[7:] == WHITE).all()
    assert (padded[2:7, :4] == RED).all() and (padded[2:7, 6:] == BLUE).all()
    stretched = resize_image(_halves(40, 20), 10, fit="stretch")
    assert (stretched[:, :4] == RED).all() and (stretched[:, 6:] == BLUE).all()
    square = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert len({resize_image(square, 8, fit=f).tobytes() for f in ("crop", "pad", "stretch")}) == 1
    with pytest.raises(InvalidInput, match="fit must be one of"):
        resize_image(square, 8, fit="squash")  # type: ignore[arg-type]


def test_decode_with_size_equals_decode_then_resize(tmp_path: Path) -> None:
    picture = np.random.default_rng(3).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    (tmp_path / "p.png").write_bytes(_encode(picture, "PNG"))
    for fit in ("crop", "pad", "stretch"):
        np.testing.assert_array_equal(decode_image(tmp_path / "p.png", size=16, fit=fit),
                                      resize_image(picture, 16, fit=fit))


def test_header_is_read_without_decoding(tmp_path: Path, picture: np.ndarray) -> None:
    (tmp_path / "p.png").write_bytes(_encode(picture, "PNG", "RGBA"))
    header = read_image_header(tmp_path / "p.png")
    assert (header.width, header.height, header.mode, header.format) == (20, 12, "RGBA", "PNG")
    with pytest.raises(BadImage, match="more than the limit"):
        read_image_header(tmp_path / "p.png", max_pixels=100)
    data = _encode(picture, "PNG")
    with pytest.raises(BadImage):
        read_image_header(data[: len(data) - 20])  # truncated: caught by verify()


def test_mixed_sizes_without_size_name_the_spec_field(tmp_path: Path) -> None:
    catalog = _file_catalog(tmp_path, [(8, 8), (8, 8), (10, 6)])
    with pytest.raises(InvalidInput, match=r"'2' is 6x10, '0' is 8x8\); load every image at one square size: extractors\[\]\.image_size"):
        load_catalog_images(catalog)
    batches = iter_catalog_batches(catalog, batch_size=2)
    first_indices, first = next(batches)  # the first batch is fine: nothing beyond it was decoded
    assert first_indices.tolist() == [0, 1] and first.shape == (2, 8, 8, 3)
    with pytest.raises(InvalidInput, match=r"extractors\[\]\.image_size"):
        next(batches)


def test_batches_decode_lazily_in_order_and_threads_agree(tmp_path: Path) -> None:
    catalog = _file_catalog(tmp_path, [(8, 8), (10, 6), (7, 9), (5, 5), (9, 9)])
    catalog.image_paths[4].write_bytes(b"not an image")
    batches = iter_catalog_batches(catalog, [3, 0, 2, 1, 4], size=6, batch_size=2, workers=2)
    got = [next(batches), next(batches)]  # item 4 (corrupt) is in the third batch only
    assert [b[0].tolist() for b in got] == [[3, 0], [2, 1]] and got[0][1].shape == (2, 6, 6, 3)
    with pytest.raises(BadImage, match="4.png"):
        next(batches)
    serial = [b for _, b in iter_catalog_batches(catalog, [3, 0, 2, 1], size=6, batch_size=3)]
    np.testing.assert_array_equal(np.concatenate(serial), np.concatenate([b for _, b in got]))
    with pytest.raises(InvalidInput, match="batch_size"):
        iter_catalog_batches(catalog, batch_size=0)  # checked at the call, not at the first next()
