"""Batch feature extraction: images -> features, predicted class, its probability (and spatial maps).

In-memory arrays are cut into batches; a :class:`Catalog` is streamed through
:func:`~advrec_common.datasets.images.iter_catalog_batches` (one batch of decoded images at a
time, outputs preallocated), so peak memory does not grow with the catalog
(``benchmarks/catalog_memory.py`` measures it). Images are brought to the model's size with the
project's one convention (:data:`~advrec_common.datasets.images.Fit`: shorter side + center crop
by default). CPU runs exact fp32; on CUDA the forward runs channels_last under autocast (bf16 when
supported, else fp16) and features are returned as float32. The study's on-disk outputs
(``features.npy`` + ``classes.csv``) are written by :func:`write_study_outputs`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from advrec_common.datasets.images import FITS, Fit, iter_catalog_batches, resize_batch
from advrec_common.datasets.types import Catalog
from advrec_common.errors import InvalidInput, NotFound
from advrec_common.settings import resolve_device
from advrec_common.store import atomic_write
from advrec_common.vision.model import ImageModel

Progress = Callable[[dict[str, Any]], None]
CLASSES_HEADER = ("ImageID", "ClassNum", "ClassStr", "Prob")


@dataclass
class ExtractionResult:
    """features (N,D) float32; classes (N,) int64 argmax class; probs (N,) float32 its softmax prob;
    spatial (N,D',h,w) float32 last feature map, or None."""

    features: np.ndarray
    classes: np.ndarray
    probs: np.ndarray
    spatial: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.features.shape[0])


# -- input batching ----------------------------------------------------------------------------------
def _array_batches(images: np.ndarray | torch.Tensor, batch_size: int) -> tuple[int, Iterator[torch.Tensor]]:
    """(N, iterator of (B,3,H,W) float batches in [0,1]) for uint8 (N,H,W,3) or float (N,3,H,W) input."""
    if isinstance(images, np.ndarray):
        if images.dtype == np.uint8:
            if images.ndim != 4 or images.shape[-1] != 3:
                raise InvalidInput(f"uint8 images must be (N,H,W,3), got {images.shape}")
            tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        elif np.issubdtype(images.dtype, np.floating):
            tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        else:
            raise InvalidInput(f"images must be uint8 (N,H,W,3) or float (N,3,H,W), got dtype {images.dtype}")
    elif isinstance(images, torch.Tensor):
        tensor = images.detach()
        if tensor.dtype == torch.uint8:
            raise InvalidInput("uint8 tensors are ambiguous; pass a uint8 numpy array (N,H,W,3) or floats in [0,1]")
    else:
        raise InvalidInput(f"images must be an array, a tensor or a Catalog, got {type(images).__name__}")
    if tensor.ndim != 4 or tensor.shape[1] != 3:
        raise InvalidInput(f"float images must be (N,3,H,W), got {tuple(tensor.shape)}")
    if tensor.is_floating_point():
        if not bool(torch.isfinite(tensor).all()):
            raise InvalidInput("images contain NaN or infinite values")
        if tensor.numel() and (float(tensor.min()) < 0.0 or float(tensor.max()) > 1.0):
            raise InvalidInput(f"float images must lie in [0,1], got {float(tensor.min())}..{float(tensor.max())}")
    n = int(tensor.shape[0])

    def gen() -> Iterator[torch.Tensor]:
        for start in range(0, n, batch_size):
            chunk = tensor[start : start + batch_size]
            # contiguous NCHW like the catalog path, so both pick the same kernels (bit-equal features)
            x = chunk.float().div(255.0) if chunk.dtype == torch.uint8 else chunk.float()
            yield x.contiguous()

    return n, gen()


def _catalog_batches(
    catalog: Catalog, batch_size: int, image_size: int | None, fit: Fit, num_workers: int, pin: bool
) -> tuple[int, Iterator[torch.Tensor]]:
    """(N, iterator of (B,3,H,W) float batches in [0,1]); one batch of the catalog decoded at a time."""
    batches = iter_catalog_batches(catalog, None, image_size, batch_size, fit=fit, workers=num_workers)

    def gen() -> Iterator[torch.Tensor]:
        for _, images in batches:
            # the same conversion as the array path, so both give bit-equal features
            x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0).contiguous()
            yield x.pin_memory() if pin else x

    return len(catalog), gen()


def _autocast(device: str):
    if not device.startswith("cuda"):
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


# -- extraction --------------------------------------------------------------------------------------
def extract_features(
    model: ImageModel,
    images: np.ndarray | torch.Tensor | Catalog,
    *,
    batch_size: int = 256,
    device: str = "auto",
    spatial: bool = False,
    image_size: int | None = None,
    fit: Fit = "crop",
    num_workers: int = 0,
    progress: Progress | None = None,
) -> ExtractionResult:
    """Features, predicted class and its probability for every image, in input order.

    images: uint8 (N,H,W,3) array, float (N,3,H,W) array/tensor in [0,1], or a :class:`Catalog`
    (streamed, ``batch_size`` decoded images at a time, decoded by ``num_workers`` threads).
    ``image_size`` brings every image to image_size x image_size by ``fit`` (``crop``: shorter side +
    center crop; ``pad``; ``stretch``), with PIL bicubic for a catalog and torch bicubic + antialias
    for arrays; without it a catalog's images must share one size (InvalidInput naming
    ``extractors[].image_size`` otherwise). ``spatial`` also returns the last feature map (for ACF).
    """
    if batch_size < 1 or num_workers < 0:
        raise InvalidInput(f"need batch_size >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
    if image_size is not None and image_size < 1:
        raise InvalidInput(f"image_size must be positive, got {image_size}")
    if fit not in FITS:
        raise InvalidInput(f"fit must be one of {list(FITS)}, got {fit!r}")
    device = resolve_device(device)
    on_cuda = device.startswith("cuda")
    if isinstance(images, Catalog):
        n, batches = _catalog_batches(images, batch_size, image_size, fit, num_workers, pin=on_cuda)
    else:
        n, batches = _array_batches(images, batch_size)
    was_training = model.training
    model.to(device).eval()
    if on_cuda:
        model.to(memory_format=torch.channels_last)
    feats = classes = probs = smap = None
    done = 0
    try:
        with torch.inference_mode():
            for x in batches:
                x = x.to(device, non_blocking=True)
                if image_size is not None and not isinstance(images, Catalog):
                    x = resize_batch(x, image_size, fit)
                if on_cuda:
                    x = x.contiguous(memory_format=torch.channels_last)
                with _autocast(device):
                    out = model.forward_all(x, spatial=spatial)
                f = out.features.float()
                p = out.logits.float().softmax(dim=1).max(dim=1)
                if not bool(torch.isfinite(f).all()):
                    raise InvalidInput(f"the model produced non-finite features for items {done}..{done + len(x) - 1}")
                if feats is None:  # preallocate once the feature shapes are known
                    feats = np.empty((n, f.shape[1]), dtype=np.float32)
                    classes, probs = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.float32)
                    if spatial:
                        assert out.spatial is not None
                        smap = np.empty((n, *out.spatial.shape[1:]), dtype=np.float32)
                b = x.shape[0]
                feats[done : done + b] = f.cpu().numpy()
                classes[done : done + b] = p.indices.cpu().numpy()
                probs[done : done + b] = p.values.cpu().numpy()
                if smap is not None:
                    smap[done : done + b] = out.spatial.float().cpu().numpy()
                done += b
                if progress is not None:
                    progress({"done": done, "total": n, "unit": "images"})
    finally:
        model.train(was_training)
    if feats is None:
        raise InvalidInput("no images to extract")
    assert classes is not None and probs is not None
    return ExtractionResult(features=feats, classes=classes, probs=probs, spatial=smap)


# -- the study's files -------------------------------------------------------------------------------
@dataclass
class StudyOutputs:
    """What :func:`read_study_outputs` returns: per-item ids and class strings plus the arrays."""

    item_ids: list[str]
    class_str: list[str]
    result: ExtractionResult


def write_study_outputs(
    result: ExtractionResult, class_names: Sequence[str], item_ids: Sequence[str], out_dir: str | Path
) -> Path:
    """Write ``features.npy`` (N,D float32), ``classes.csv`` (ImageID,ClassNum,ClassStr,Prob) and,
    with spatial maps, ``spatial.npy`` (N,D',h,w float32) into ``out_dir``.

    Everything is validated before the first byte is written; each file appears atomically.
    """
    n = len(result)
    if len(item_ids) != n:
        raise InvalidInput(f"{len(item_ids)} item ids for {n} extracted items")
    if len(set(item_ids)) != n:
        raise InvalidInput("item ids are not unique")
    if result.classes.shape != (n,) or result.probs.shape != (n,) or result.features.ndim != 2:
        raise InvalidInput("features must be (N,D) with classes and probs of shape (N,)")
    if n and (result.classes.min() < 0 or result.classes.max() >= len(class_names)):
        raise InvalidInput(f"class indices exceed the {len(class_names)} class names")
    if not np.isfinite(result.features).all():
        raise InvalidInput("features contain NaN or infinite values")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "features.npy", _npy(result.features), fsync=True)
    if result.spatial is not None:
        atomic_write(out / "spatial.npy", _npy(result.spatial), fsync=True)
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(CLASSES_HEADER)
    names = np.asarray(list(class_names), dtype=object)[result.classes]
    w.writerows(zip(item_ids, result.classes.tolist(), names.tolist(), result.probs.tolist(), strict=True))
    atomic_write(out / "classes.csv", buf.getvalue(), fsync=True)
    return out


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def read_study_outputs(out_dir: str | Path) -> StudyOutputs:
    """Read what :func:`write_study_outputs` wrote (NotFound for missing files, InvalidInput if inconsistent)."""
    out = Path(out_dir)
    for name in ("features.npy", "classes.csv"):
        if not (out / name).is_file():
            raise NotFound(f"{out / name} does not exist")
    features = np.load(out / "features.npy", allow_pickle=False)
    with open(out / "classes.csv", newline="") as fh:
        reader = csv.reader(fh)
        header = tuple(next(reader, ()))
        if header[: len(CLASSES_HEADER)] != CLASSES_HEADER:
            raise InvalidInput(f"{out / 'classes.csv'}: header {header} is not {CLASSES_HEADER}")
        rows = list(reader)
    if len(rows) != features.shape[0]:
        raise InvalidInput(f"{out}: {len(rows)} rows in classes.csv but {features.shape[0]} feature rows")
    try:
        classes = np.array([int(r[1]) for r in rows], dtype=np.int64)
        probs = np.array([float(r[3]) for r in rows], dtype=np.float32)
    except (IndexError, ValueError) as exc:
        raise InvalidInput(f"{out / 'classes.csv'}: malformed row ({exc})") from None
    spatial = np.load(out / "spatial.npy", allow_pickle=False) if (out / "spatial.npy").is_file() else None
    return StudyOutputs(
        item_ids=[r[0] for r in rows],
        class_str=[r[2] for r in rows],
        result=ExtractionResult(features=features.astype(np.float32, copy=False), classes=classes, probs=probs,
                                spatial=spatial),
    )
