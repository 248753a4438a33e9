"""Decoding product images safely, and moving them between uint8 arrays and float tensors.

Pillow decodes (JPEG, PNG, WebP, ...); we add the guards a service needs: a pixel budget checked
from the header *before* pixels are decoded, typed :class:`BadImage` errors for anything that is
not a complete image, EXIF orientation, and alpha flattened onto white (product photos with a
transparent background would otherwise turn black).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from advrec_common.datasets.types import Catalog
from advrec_common.errors import BadImage, InvalidInput

DEFAULT_MAX_PIXELS = 4096 * 4096  # ours, checked from the header; Pillow's MAX_IMAGE_PIXELS guard stays on too


def decode_image(data: bytes | str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode image bytes or a file into (H,W,3) uint8 RGB.

    Raises :class:`BadImage` for a missing file, bytes that are not an image, a truncated or
    corrupt image, or an image of more than ``max_pixels`` pixels (checked before decoding).
    """
    label = "image bytes" if isinstance(data, bytes | bytearray) else f"image file {str(data)!r}"
    if isinstance(data, bytes | bytearray):
        source: io.BytesIO | Path = io.BytesIO(bytes(data))
    else:
        source = Path(data)
        if not source.is_file():
            raise BadImage(f"{label} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise BadImage(
                        f"{label} is {w}x{h} = {w * h} pixels, more than the limit of {max_pixels}"
                    )
                img.load()
                return _to_rgb_array(img)
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage(f"{label}: not a recognised image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"{label} is too large: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImage(f"{label} is corrupt or truncated: {exc}") from None


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """A decoded PIL image -> (H,W,3) uint8, upright, alpha composited on white."""
    img = ImageOps.exif_transpose(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8).copy()


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """(H,W,3) uint8 -> (size,size,3) uint8, bicubic (as the study's preprocessing)."""
    if size <= 0:
        raise InvalidInput(f"size must be positive, got {size}")
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


def _catalog_image(catalog: Catalog, index: int, size: int | None, max_pixels: int) -> np.ndarray:
    """Item ``index`` of the catalog as (H,W,3) uint8, resized when ``size`` is given."""
    if catalog.images is not None:
        image = np.asarray(catalog.images[index], dtype=np.uint8)
    else:
        assert catalog.image_paths is not None
        image = decode_image(catalog.image_paths[index], max_pixels=max_pixels)
    return image if size is None else resize_image(image, size)


def _check_indices(catalog: Catalog, indices: Sequence[int] | None) -> np.ndarray:
    idx = np.arange(len(catalog)) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= len(catalog)):
        raise InvalidInput(f"item indices must lie in [0, {len(catalog)}), got {idx.min()}..{idx.max()}")
    return idx


def load_catalog_images(
    catalog: Catalog,
    indices: Sequence[int] | None = None,
    size: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Images of ``indices`` (default: all items) as (N,H,W,3) uint8.

    With ``size`` every image is resized (bicubic) to size x size; without it all images must
    share one shape (else :class:`InvalidInput`). For large catalogs stream with
    :class:`CatalogImageDataset` instead.
    """
    idx = _check_indices(catalog, indices)
    if catalog.images is not None and size is None:
        return np.ascontiguousarray(catalog.images[idx], dtype=np.uint8)
    out: np.ndarray | None = None
    for row, i in enumerate(idx.tolist()):
        image = _catalog_image(catalog, i, size, max_pixels)
        if out is None:
            out = np.empty((len(idx), *image.shape), dtype=np.uint8)
        elif image.shape != out.shape[1:]:
            raise InvalidInput(
                f"images differ in size ({catalog.item_ids[i]!r} is {image.shape[1]}x{image.shape[0]}, "
                f"the first is {out.shape[2]}x{out.shape[1]}); pass size= to resize them"
            )
        out[row] = image
    if out is None:
        h = w = size if size is not None else 0
        return np.empty((0, h, w, 3), dtype=np.uint8)
    return out


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N,H,W,3) uint8 -> (N,3,H,W) float32 in [0,1]."""
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise InvalidInput(f"expected (N,H,W,3) uint8 images, got {arr.shape} {arr.dtype}")
    return torch.from_numpy(arr.astype(np.float32)).permute(0, 3, 1, 2).div_(255.0)  # astype: a writable copy


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N,3,H,W) float in [0,1] -> (N,H,W,3) uint8, clamped and **rounded** (the inverse of :func:`to_tensor`)."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise InvalidInput(f"expected (N,3,H,W) images, got {tuple(x.shape)}")
    scaled = (x.detach().float().clamp(0.0, 1.0) * 255.0).round_()
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy().copy()


class CatalogImageDataset(torch.utils.data.Dataset):
    """Streams catalog images one at a time: item -> ``(image (3,H,W) float in [0,1], index)``.

    Memory stays bounded (one decoded image per ``__getitem__``), so it suits 100k+ item catalogs
    behind a ``DataLoader``. Without ``size`` files of different sizes yield tensors of different
    shapes (use ``batch_size=1`` or pass ``size``).
    """

    def __init__(
        self,
        catalog: Catalog,
        indices: Sequence[int] | None = None,
        size: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        if size is not None and size <= 0:
            raise InvalidInput(f"size must be positive, got {size}")
        self.catalog = catalog
        self.indices = _check_indices(catalog, indices)
        self.size = size
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int]:
        index = int(self.indices[position])
        image = _catalog_image(self.catalog, index, self.size, self.max_pixels)
        return to_tensor(image[None])[0], index


def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B,3,H,W) float in [0,1] -> (B,3,size,size): bicubic with antialiasing, clamped to [0,1]."""
    if x.shape[-2:] == (size, size):
        return x
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", antialias=True,
                                           align_corners=False).clamp_(0, 1)
