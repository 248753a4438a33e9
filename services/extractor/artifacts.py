"""The extractor domain's artifact formats: the ``features`` of a catalog under one extractor.

A ``features`` artifact (:func:`write_catalog_features` / :func:`load_features`): ``features.npy``
(I,D) float32 clean features, ``classes.npy`` (I,) int64 and ``probs.npy`` (I,) float32 (the
extractor's predicted class and its probability), ``spatial.npy`` (I,D',h,w) when asked (ACF),
``class_names.json`` (the extractor's classes), ``categories.npy`` (I,) int64 and
``category_names.json`` (the items' categories for the study's metrics; see :func:`item_categories`).

Its key is :func:`features_key`; the pipeline's ``features`` step and the extractor service's
``/v1/extract/catalog`` compute the same key, so each reuses the other's work.
(The ``extractor`` artifact itself is shared by every service: :mod:`advrec_common.vision.artifact`.)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from advrec_common.datasets.types import RecDataset
from advrec_common.errors import InvalidInput
from advrec_common.store import ArtifactStore, artifact_key

if TYPE_CHECKING:  # the type only: importing this module (the pipeline's DAG, the gateway) stays torch-free
    from advrec_common.vision.model import ImageModel

FEATURES_VERSION = "1"  # bump when the features or categories written here change


def features_params(image_size: int | None, spatial: bool, category_source: str = "auto") -> dict[str, Any]:
    """Parameters of a ``features`` artifact (one definition for the pipeline and the extractor service)."""
    return {"image_size": image_size, "spatial": spatial, "category_source": category_source}


def features_key(dataset_key: str, extractor_key: str, params: dict[str, Any]) -> str:
    """The content key of the features of dataset ``dataset_key`` under extractor ``extractor_key``."""
    return artifact_key("features", params, [dataset_key, extractor_key], FEATURES_VERSION)


def item_categories(ds: RecDataset, classes: np.ndarray, class_names: list[str],
                    source: str) -> tuple[np.ndarray, list[str], str]:
    """Items' categories for the study's metrics: (ids (I,), names, the source actually used).

    ``extractor``: the class the extractor assigns to each clean image (the study's protocol);
    ``catalog``: the catalog's own labels; ``auto``: the catalog's labels when every item has one
    and they are class names of the extractor, else the extractor's classes.
    """
    labels = ds.catalog.categories
    labelled = labels is not None and all(c is not None for c in labels)
    if source == "auto":
        source = "catalog" if labelled and set(labels) <= set(class_names) else "extractor"  # type: ignore[arg-type]
    if source == "extractor":
        return np.asarray(classes, dtype=np.int64), list(class_names), source
    if not labelled:
        raise InvalidInput("scenario.category_source 'catalog' needs a category label for every catalog item")
    names = list(ds.catalog.category_names) or sorted(set(labels))  # type: ignore[arg-type]
    index = {n: i for i, n in enumerate(names)}
    return np.array([index[c] for c in labels], dtype=np.int64), names, source  # type: ignore[union-attr]


def write_catalog_features(out: Path, ds: RecDataset, model: ImageModel, params: dict[str, Any], device: str,
                           progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Extract every catalog image and fill a ``features`` directory; returns the run's summary."""
    from services.extractor.extraction import extract_features

    t0 = time.perf_counter()
    res = extract_features(model, ds.catalog, device=device, spatial=params["spatial"],
                           image_size=params["image_size"])
    np.save(out / "features.npy", res.features)
    np.save(out / "classes.npy", res.classes)
    np.save(out / "probs.npy", res.probs)
    if res.spatial is not None:
        np.save(out / "spatial.npy", res.spatial)
    (out / "class_names.json").write_text(json.dumps(list(model.class_names), indent=1))
    cats, cat_names, source = item_categories(ds, res.classes, list(model.class_names), params["category_source"])
    np.save(out / "categories.npy", cats)
    (out / "category_names.json").write_text(json.dumps(cat_names, indent=1))
    return {"seconds": time.perf_counter() - t0, "n": len(res.features), "dim": int(res.features.shape[1]),
            "category_source": source}


@dataclass
class FeatureSet:
    """A loaded ``features`` artifact (arrays memory-mapped; see the module docstring)."""

    features: np.ndarray
    classes: np.ndarray
    probs: np.ndarray
    spatial: np.ndarray | None
    class_names: list[str]
    categories: np.ndarray
    category_names: list[str]

    @property
    def n_items(self) -> int:
        return int(self.features.shape[0])


def load_features(store: ArtifactStore, key: str, *, arrays: bool = True) -> FeatureSet:
    """A ``features`` artifact (``arrays=False``: only categories and names, no feature matrices)."""
    d = store.open(key)

    def arr(name: str) -> np.ndarray:
        return np.load(d / f"{name}.npy", mmap_mode="r", allow_pickle=False)

    empty = np.zeros(0, dtype=np.float32)
    return FeatureSet(
        features=arr("features") if arrays else empty, classes=arr("classes") if arrays else empty,
        probs=arr("probs") if arrays else empty,
        spatial=arr("spatial") if arrays and (d / "spatial.npy").is_file() else None,
        class_names=json.loads((d / "class_names.json").read_text()),
        categories=np.load(d / "categories.npy"), category_names=json.loads((d / "category_names.json").read_text()),
    )
