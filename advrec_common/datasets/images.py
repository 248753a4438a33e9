"""Decoding product images safely, bringing them to the model's size, and moving them between uint8
arrays and float tensors.

Pillow decodes (JPEG, PNG, WebP, ...); we add the guards a service needs: a pixel budget checked
from the header *before* pixels are decoded, typed :class:`BadImage` errors for anything that is
not a complete image, EXIF orientation, every mode brought to 8-bit RGB (alpha flattened onto
white, so product photos with a transparent background do not turn black; 16-bit grey scaled, not
clipped), and one resizing convention for the whole project (:data:`Fit`).

A catalog is read in batches (:func:`iter_catalog_batches`): only one batch of decoded images is
in memory at a time, so memory does not grow with the catalog. This module does not import torch
at module level (the gateway's admission check and ``advrec run --validate`` use it without torch);
:func:`to_tensor` / :func:`to_uint8` import it when called.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from advrec_common.datasets.types import Catalog
from advrec_common.errors import BadImage, InvalidInput

if TYPE_CHECKING:
    import torch

DEFAULT_MAX_PIXELS = 4096 * 4096  # ours, checked from the header; Pillow's MAX_IMAGE_PIXELS guard stays on too

Fit = Literal["crop", "pad", "stretch"]
"""How an image of any aspect ratio becomes size x size (all with PIL bicubic, antialiased when shrinking):

- ``crop`` (default; the torchvision/ImageNet ``Resize(S)`` + ``CenterCrop(S)`` convention): the
  central square of side min(H, W) is cut out (offsets ``(W - s) // 2``, ``(H - s) // 2`` in source
  pixels) and resized to S x S, which is resizing the shorter side to S and center-cropping;
- ``pad``: the longer side is resized to S and the image centred on a white S x S canvas (white,
  like the background alpha is composited onto);
- ``stretch``: resized to S x S, ignoring the aspect ratio.
"""
FITS: tuple[str, ...] = get_args(Fit)
PAD_COLOR = (255, 255, 255)
IMAGE_SIZE_SPEC_PATH = "extractors[].image_size"  # the spec field that sets `size` for the pipeline
_RESAMPLE = Image.Resampling.BICUBIC  # the study's filter; PIL widens it by the scale factor when shrinking


@dataclass(frozen=True)
class ImageHeader:
    """What an image file says about itself without decoding its pixels."""

    width: int
    height: int
    mode: str  # Pillow mode: RGB, RGBA, L, P, CMYK, I;16, ...
    format: str | None  # PNG, JPEG, WEBP, ...


def _label(data: bytes | bytearray | str | Path) -> str:
    return "image bytes" if isinstance(data, bytes | bytearray) else f"image file {str(data)!r}"


def _open(data: bytes | bytearray | str | Path) -> tuple[str, io.BytesIO | Path]:
    label = _label(data)
    if isinstance(data, bytes | bytearray):
        return label, io.BytesIO(bytes(data))
    source = Path(data)
    if not source.is_file():
        raise BadImage(f"{label} does not exist")
    return label, source


def _check_pixels(label: str, img: Image.Image, max_pixels: int) -> None:
    w, h = img.size
    if w * h > max_pixels:
        raise BadImage(f"{label} is {w}x{h} = {w * h} pixels, more than the limit of {max_pixels}")


def _pillow_errors(label: str, exc: Exception) -> BadImage:
    """Pillow's many failure types -> one :class:`BadImage` that names the file."""
    if isinstance(exc, UnidentifiedImageError):
        return BadImage(f"{label}: not a recognised image format")
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return BadImage(f"{label} is too large: {exc}")
    return BadImage(f"{label} is corrupt or truncated: {exc}")


_PILLOW_FAILURES = (
    UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning,
    OSError, SyntaxError, ValueError, EOFError,
)


def read_image_header(data: bytes | str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageHeader:
    """Size, mode and format of an image, from its header; pixels are never decoded.

    Also runs Pillow's ``verify()`` (chunk CRCs for PNG, structure for other formats: it reads the
    file, it does not decompress it), so a truncated PNG is caught here too. Raises
    :class:`BadImage` like :func:`decode_image` (missing, not an image, corrupt, over budget).
    """
    label, source = _open(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                _check_pixels(label, img, max_pixels)
                header = ImageHeader(img.size[0], img.size[1], img.mode, img.format)
                img.verify()
                return header
    except BadImage:
        raise
    except _PILLOW_FAILURES as exc:
        raise _pillow_errors(label, exc) from None


def decode_image(
    data: bytes | str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, size: int | None = None, fit: Fit = "crop"
) -> np.ndarray:
    """Decode image bytes or a file into (H,W,3) uint8 RGB, or (size,size,3) with ``size`` (see :data:`Fit`).

    Any Pillow mode is accepted (RGB, RGBA, LA, L, 1, P, CMYK, YCbCr, 16-bit grey ``I;16``/``I``).
    Raises :class:`BadImage` for a missing file, bytes that are not an image, a truncated or
    corrupt image, or an image of more than ``max_pixels`` pixels (checked before decoding).
    """
    _check_size(size, fit)
    label, source = _open(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                _check_pixels(label, img, max_pixels)
                img.load()
                rgb = to_rgb(img)
    except BadImage:
        raise
    except _PILLOW_FAILURES as exc:
        raise _pillow_errors(label, exc) from None
    if size is not None:
        rgb = fit_image(rgb, size, fit)
    return np.asarray(rgb, dtype=np.uint8).copy()


def _grey16_to_l(img: Image.Image) -> Image.Image:
    """16-bit (``I;16*``) or 32-bit integer (``I``) grey -> 8-bit ``L``, scaled (65535 -> 255), not clipped.

    ``I`` images whose values all fit in 0..255 are taken as 8-bit data and kept as they are.
    """
    arr = np.asarray(img)
    if img.mode == "I" and arr.size and int(arr.max()) <= 255 and int(arr.min()) >= 0:
        return Image.fromarray(arr.astype(np.uint8), mode="L")
    scaled = np.clip(np.rint(arr.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """A decoded PIL image of any mode -> 8-bit ``RGB``, upright (EXIF), alpha composited on white."""
    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I;16") or img.mode == "I":
        img = _grey16_to_l(img)
    elif img.mode == "F":  # float grey: taken as 0..255
        img = Image.fromarray(np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*PAD_COLOR, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def fit_image(img: Image.Image, size: int, fit: Fit = "crop") -> Image.Image:
    """An ``RGB`` PIL image -> size x size ``RGB``, by :data:`Fit` ``fit`` (bicubic)."""
    _check_size(size, fit)
    w, h = img.size
    if (w, h) == (size, size):
        return img
    if fit == "stretch":
        return img.resize((size, size), _RESAMPLE)
    if fit == "crop":
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        box = (left, top, left + side, top + side)
        return img.crop(box) if side == size else img.resize((size, size), _RESAMPLE, box=box)
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = Image.new("RGB", (size, size), PAD_COLOR)
    canvas.paste(img.resize((nw, nh), _RESAMPLE), ((size - nw) // 2, (size - nh) // 2))
    return canvas


def _check_size(size: int | None, fit: str) -> None:
    if size is not None and (isinstance(size, bool) or not isinstance(size, int | np.integer) or size <= 0):
        raise InvalidInput(f"size must be a positive integer, got {size!r}")
    if fit not in FITS:
        raise InvalidInput(f"fit must be one of {list(FITS)}, got {fit!r}")


def resize_image(image: np.ndarray, size: int, fit: Fit = "crop") -> np.ndarray:
    """(H,W,3) uint8 -> (size,size,3) uint8, bicubic, by :data:`Fit` ``fit`` (default: shorter side + center crop).

    Square images are resized whole, whatever ``fit``.
    """
    _check_size(size, fit)
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(fit_image(Image.fromarray(np.asarray(image, dtype=np.uint8)), size, fit), dtype=np.uint8)


def mixed_sizes_message(first: tuple[str, int, int], other: tuple[str, int, int]) -> str:
    """The error for images of different sizes loaded at native size: (item id, width, height) of two items."""
    return (
        f"catalog images differ in size ({other[0]!r} is {other[1]}x{other[2]}, {first[0]!r} is "
        f"{first[1]}x{first[2]}); load every image at one square size: {IMAGE_SIZE_SPEC_PATH} in a spec, "
        f"--image-size N (or no --image-size: the model's own size) on the command line, or size= in Python"
    )


def _catalog_image(
    catalog: Catalog, index: int, size: int | None, max_pixels: int = DEFAULT_MAX_PIXELS, fit: Fit = "crop"
) -> np.ndarray:
    """Item ``index`` of the catalog as (H,W,3) uint8, or (size,size,3) when ``size`` is given.

    (``study_layout`` calls this with ``(catalog, i, None, max_pixels=...)``: keep that signature.)
    """
    if catalog.images is not None:
        image = np.asarray(catalog.images[index], dtype=np.uint8)
        return image if size is None else resize_image(image, size, fit)
    assert catalog.image_paths is not None
    return decode_image(catalog.image_paths[index], max_pixels=max_pixels, size=size, fit=fit)


def _check_indices(catalog: Catalog, indices: Sequence[int] | np.ndarray | None) -> np.ndarray:
    idx = np.arange(len(catalog)) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= len(catalog)):
        raise InvalidInput(f"item indices must lie in [0, {len(catalog)}), got {idx.min()}..{idx.max()}")
    return idx


def iter_catalog_batches(
    catalog: Catalog,
    indices: Sequence[int] | np.ndarray | None = None,
    size: int | None = None,
    batch_size: int = 64,
    *,
    fit: Fit = "crop",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Catalog images in order, one batch at a time: ``(indices (B,) int64, images (B,S,S,3) uint8)``.

    ``indices`` default to every item. With ``size`` each image is brought to size x size (see
    :data:`Fit`); with ``size=None`` images keep their native size and must all share it, else
    :class:`InvalidInput` naming ``extractors[].image_size`` (raised when the first odd image is
    reached). Only the current batch is decoded, so memory is bounded by ``batch_size`` images
    (plus one image at native size per worker), whatever the catalog size. ``workers`` > 0 decodes
    a batch in that many threads (Pillow releases the GIL while decoding and resizing). Arguments
    are checked at the call, not at the first ``next``.
    """
    _check_size(size, fit)
    if batch_size < 1 or workers < 0:
        raise InvalidInput(f"need batch_size >= 1 and workers >= 0, got {batch_size}, {workers}")
    idx = _check_indices(catalog, indices)
    return _batches(catalog, idx, size, batch_size, fit, max_pixels, workers)


def _batches(
    catalog: Catalog, idx: np.ndarray, size: int | None, batch_size: int, fit: Fit, max_pixels: int, workers: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    first: tuple[str, int, int] | None = None  # (item id, W, H) of the first image, at native size

    def load(i: int) -> np.ndarray:
        return _catalog_image(catalog, i, size, max_pixels, fit)

    pool = ThreadPoolExecutor(workers) if workers > 0 else None
    try:
        for start in range(0, idx.size, batch_size):
            chunk = idx[start : start + batch_size]
            if catalog.images is not None and size is None:
                yield chunk, np.ascontiguousarray(catalog.images[chunk], dtype=np.uint8)
                continue
            images = list(pool.map(load, chunk.tolist())) if pool is not None else [load(i) for i in chunk.tolist()]
            if size is None:  # native size: every image must match the first
                for i, image in zip(chunk.tolist(), images, strict=True):
                    here = (catalog.item_ids[i], image.shape[1], image.shape[0])
                    if first is None:
                        first = here
                    elif here[1:] != first[1:]:
                        raise InvalidInput(mixed_sizes_message(first, here))
            yield chunk, np.stack(images)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def load_catalog_images(
    catalog: Catalog,
    indices: Sequence[int] | np.ndarray | None = None,
    size: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    fit: Fit = "crop",
) -> np.ndarray:
    """Images of ``indices`` (default: all items) as (N,H,W,3) uint8, all in memory.

    With ``size`` every image is brought to size x size (see :data:`Fit`); without it all images
    must share one shape (else :class:`InvalidInput`). For large catalogs use
    :func:`iter_catalog_batches`, which holds one batch at a time.
    """
    idx = _check_indices(catalog, indices)
    if catalog.images is not None and size is None:
        return np.ascontiguousarray(catalog.images[idx], dtype=np.uint8)
    out: np.ndarray | None = None
    done = 0
    for chunk, batch in iter_catalog_batches(catalog, idx, size, batch_size=64, fit=fit, max_pixels=max_pixels):
        if out is None:
            out = np.empty((idx.size, *batch.shape[1:]), dtype=np.uint8)
        out[done : done + len(chunk)] = batch
        done += len(chunk)
    if out is None:
        h = w = size if size is not None else 0
        return np.empty((0, h, w, 3), dtype=np.uint8)
    return out


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N,H,W,3) uint8 -> (N,3,H,W) float32 in [0,1]."""
    import torch

    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise InvalidInput(f"expected (N,H,W,3) uint8 images, got {arr.shape} {arr.dtype}")
    return torch.from_numpy(arr.astype(np.float32)).permute(0, 3, 1, 2).div_(255.0)  # astype: a writable copy


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N,3,H,W) float in [0,1] -> (N,H,W,3) uint8, clamped and **rounded** (the inverse of :func:`to_tensor`)."""
    import torch

    if x.ndim != 4 or x.shape[1] != 3:
        raise InvalidInput(f"expected (N,3,H,W) images, got {tuple(x.shape)}")
    scaled = (x.detach().float().clamp(0.0, 1.0) * 255.0).round_()
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy().copy()


class CatalogImageDataset:
    """Map-style dataset for a ``torch.utils.data.DataLoader``: item -> ``(image (3,H,W) float in [0,1], index)``.

    One decoded image per ``__getitem__``. Without ``size`` files of different sizes yield tensors
    of different shapes (use ``batch_size=1`` or pass ``size``). Without a DataLoader, prefer
    :func:`iter_catalog_batches`. (A plain class: ``DataLoader`` only needs ``__getitem__`` and
    ``__len__``, and subclassing ``torch.utils.data.Dataset`` would import torch with this module.)
    """

    def __init__(
        self,
        catalog: Catalog,
        indices: Sequence[int] | None = None,
        size: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        fit: Fit = "crop",
    ):
        _check_size(size, fit)
        self.catalog = catalog
        self.indices = _check_indices(catalog, indices)
        self.size = size
        self.fit: Fit = fit
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int]:
        index = int(self.indices[position])
        image = _catalog_image(self.catalog, index, self.size, self.max_pixels, self.fit)
        return to_tensor(image[None])[0], index


def resize_batch(x: torch.Tensor, size: int, fit: Fit = "crop") -> torch.Tensor:
    """(B,3,H,W) in [0,1] -> (B,3,size,size), bicubic with antialiasing, clamped to [0,1].

    The geometry of :func:`fit_image` (same crop box, same white padding), with torch's kernel
    instead of PIL's, so float (e.g. attacked) images are not quantised.
    """
    import torch

    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x

    def interp(t: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        if tuple(t.shape[-2:]) == hw:
            return t
        return torch.nn.functional.interpolate(t, size=hw, mode="bicubic", antialias=True,
                                               align_corners=False).clamp_(0, 1)

    if fit == "stretch":
        return interp(x, (size, size))
    if fit == "crop":
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        return interp(x[..., top : top + side, left : left + side], (size, size))
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    top, left = (size - nh) // 2, (size - nw) // 2
    pad = (left, size - nw - left, top, size - nh - top)
    return torch.nn.functional.pad(interp(x, (nh, nw)), pad, value=1.0)  # white
