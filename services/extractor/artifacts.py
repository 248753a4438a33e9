"""The extractor domain's artifact formats: the ``features`` of a catalog under one extractor.

A ``features`` artifact (:func:`write_catalog_features` / :func:`load_features`): ``features.npy``
(I,D) float32 clean features, ``classes.npy`` (I,) int64 and ``probs.npy`` (I,) float32 (the
extractor's predicted class and its probability), ``spatial.npy`` (I,D',h,w) when asked (ACF),
``class_names.json`` (the extractor's classes), ``categories.npy`` (I,) int64 and
``category_names.json`` (the items' categories for the study's metrics; see :func:`item_categories`),
``categories.json`` (which source the categories came from and why, and which head the attacks
aim at: :func:`category_choice`) and, when the categories are not classes of the extractor,
``category_head.npz`` (the head fitted on these features for them:
:mod:`services.extractor.category_head`). :func:`category_model` is the model a targeted attack
runs through. Images are brought to ``image_size`` (None: the extractor's own ``input_size``) by
``fit``; the size used is recorded in ``categories.json`` too (``image_size``).

Its key is :func:`features_key`; the pipeline's ``features`` step and the extractor service's
``/v1/extract/catalog`` compute the same key, so each reuses the other's work.
(The ``extractor`` artifact itself is shared by every service: :mod:`advrec_common.vision.artifact`.)

A ``defense`` artifact (:func:`write_fitted_defense`): one defense of the ladder fitted for an
extractor on a catalog (the denoiser trained, the detector's threshold set; a transform as its
spec), in the format of :mod:`advrec_common.vision.defenses.artifact`, which the attacker reads too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from advrec_common.datasets.types import RecDataset
from advrec_common.errors import InvalidInput
from advrec_common.store import ArtifactStore, artifact_key

if TYPE_CHECKING:  # the type only: importing this module (the pipeline's DAG, the gateway) stays torch-free
    from advrec_common.vision.defenses.spec import DefenseSpec
    from advrec_common.vision.model import ImageModel

# bump when the features or categories written here change. 2: catalog labels of any name (category
# head), ``auto`` uses them whenever every item has one, images at the extractor's own input size
FEATURES_VERSION = "3"  # 3: a random defense in front draws from a generator seeded by the step
CATEGORIES_FILE, HEAD_FILE = "categories.json", "category_head.npz"


def features_params(image_size: int | None, spatial: bool, category_source: str = "auto",
                    fit: str = "crop") -> dict[str, Any]:
    """Parameters of a ``features`` artifact (one definition for the pipeline and the extractor service).

    ``image_size`` None = the extractor's own ``input_size``; ``fit`` enters only when it is not the
    default ``crop`` (keys of default specs stay as they were).
    """
    params: dict[str, Any] = {"image_size": image_size, "spatial": spatial, "category_source": category_source}
    if fit != "crop":
        params["fit"] = fit
    return params


def resolved_image_size(image_size: int | None, model: ImageModel) -> int | None:
    """The square side catalog images are brought to: the spec's ``image_size``, else the model's own."""
    return image_size if image_size is not None else model.input_size


def features_key(dataset_key: str, extractor_key: str, params: dict[str, Any]) -> str:
    """The content key of the features of dataset ``dataset_key`` under extractor ``extractor_key``."""
    return artifact_key("features", params, [dataset_key, extractor_key], FEATURES_VERSION)


def category_choice(ds: RecDataset, requested: str) -> tuple[str, str]:
    """(the category source used, why) for ``requested`` in ``auto`` | ``catalog`` | ``extractor``.

    ``auto`` uses the catalog's labels whenever every item has one (whatever they are called: a
    head is fitted when they are not classes of the extractor), else the extractor's classes --
    never silently: the reason says which, and how many items lack a label.
    """
    labels = ds.catalog.categories
    n = len(ds.catalog)
    missing = n if labels is None else sum(1 for c in labels if c is None)
    if requested == "extractor":
        return "extractor", "scenario.category_source is 'extractor' (the study's protocol)"
    if requested == "catalog":
        if missing:
            raise InvalidInput(f"scenario.category_source 'catalog' needs a category label for every catalog item; "
                               f"{missing} of {n} items have none (list them in dataset.categories, or use "
                               f"category_source 'extractor')")
        return "catalog", "scenario.category_source is 'catalog'"
    if requested != "auto":
        raise InvalidInput(f"unknown category_source {requested!r}; use 'auto', 'catalog' or 'extractor'")
    if labels is None:
        return "extractor", "the catalog has no category labels, so items take the class the extractor assigns"
    if missing:
        return "extractor", (f"{missing} of {n} items have no category label, so items take the class the "
                             f"extractor assigns (label every item, or set category_source 'catalog' to be told which)")
    return "catalog", "every item has a category label in the catalog"


def item_categories(ds: RecDataset, classes: np.ndarray, class_names: list[str],
                    source: str) -> tuple[np.ndarray, list[str], str]:
    """Items' categories for the study's metrics: (ids (I,), names, the source actually used).

    ``extractor``: the class the extractor assigns to each clean image (the study's protocol);
    ``catalog``: the catalog's own labels; ``auto``: :func:`category_choice`.
    """
    used, _ = category_choice(ds, source)
    if used == "extractor":
        return np.asarray(classes, dtype=np.int64), list(class_names), used
    labels = ds.catalog.categories
    assert labels is not None
    names = list(ds.catalog.category_names) or sorted(set(labels))  # type: ignore[arg-type]
    index = {n: i for i, n in enumerate(names)}
    return np.array([index[c] for c in labels], dtype=np.int64), names, used


def write_catalog_features(out: Path, ds: RecDataset, model: ImageModel, params: dict[str, Any], device: str,
                           progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Extract every catalog image and fill a ``features`` directory; returns the run's summary.

    ``progress`` gets ``{"done", "total", "unit": "images"}`` after every batch.
    """
    from services.extractor.category_head import fit_category_head
    from services.extractor.extraction import extract_features

    t0 = time.perf_counter()
    size = resolved_image_size(params["image_size"], model)
    fit = params.get("fit", "crop")
    res = extract_features(model, ds.catalog, device=device, spatial=params["spatial"], image_size=size, fit=fit,
                           progress=progress)
    np.save(out / "features.npy", res.features)
    np.save(out / "classes.npy", res.classes)
    np.save(out / "probs.npy", res.probs)
    if res.spatial is not None:
        np.save(out / "spatial.npy", res.spatial)
    (out / "class_names.json").write_text(json.dumps(list(model.class_names), indent=1))
    cats, cat_names, source = item_categories(ds, res.classes, list(model.class_names), params["category_source"])
    np.save(out / "categories.npy", cats)
    (out / "category_names.json").write_text(json.dumps(cat_names, indent=1))
    info: dict[str, Any] = {"requested": params["category_source"], "used": source,
                            "reason": category_choice(ds, params["category_source"])[1],
                            "image_size": size, "fit": fit}
    if set(cat_names) <= set(model.class_names):
        info["head"] = {"kind": "extractor", "why": "every category is a class of the extractor: attacks aim at "
                                                    "its own classifier (the study's protocol)"}
    else:
        head = fit_category_head(res.features, cats, cat_names)
        np.savez(out / HEAD_FILE, weight=head.weight, bias=head.bias)
        info["head"] = {"kind": "fitted", "why": "the categories are not classes of the extractor: attacks aim at a "
                                                 "head fitted on its clean features for them",
                        "class_names": cat_names, **head.report}
    (out / CATEGORIES_FILE).write_text(json.dumps(info, indent=1))
    return {"seconds": time.perf_counter() - t0, "n": len(res.features), "dim": int(res.features.shape[1]),
            "category_source": source, "category_head": info["head"]["kind"], "image_size": size,
            "head_held_out_accuracy": info["head"].get("held_out_accuracy")}


def write_fitted_defense(out: Path, spec: DefenseSpec, ds: RecDataset, model: ImageModel, *, extractor_key: str,
                         image_size: int | None = None, fit: str = "crop", seed: int = 0, device: str = "cpu",
                         progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Fit the defense of ``spec`` for ``model`` (the extractor artifact ``extractor_key``) on the
    catalog's clean images at ``image_size`` (None: the model's own), fill a ``defense`` directory,
    and return the run's summary (label, kind, seconds, the fitting report)."""
    from advrec_common.datasets.images import load_catalog_images
    from advrec_common.vision.defenses.artifact import write_defense_artifact
    from services.extractor.defense_fitting import fit_defense

    t0 = time.perf_counter()
    images = None
    if spec.info.fitted:
        size = resolved_image_size(image_size, model)
        images = load_catalog_images(ds.catalog, size=size, fit=fit)  # type: ignore[arg-type]
    defense, report = fit_defense(spec, images, model, seed=seed, device=device, progress=progress)
    write_defense_artifact(out, defense, spec, report, extractor=extractor_key)
    return {"label": spec.label(), "kind": spec.kind, "seconds": time.perf_counter() - t0, "report": report}


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
    category_info: dict[str, Any] = field(default_factory=dict)  # categories.json
    head: tuple[np.ndarray, np.ndarray] | None = None  # (weight (C,D), bias (C,)) of a fitted category head

    @property
    def n_items(self) -> int:
        return int(self.features.shape[0])

    def head_categories(self, rows: np.ndarray) -> np.ndarray | None:
        """The category index the fitted head assigns to the clean features of ``rows`` (a boolean mask
        or indices), as :class:`~services.extractor.category_head.CategoryHead` scores them; None
        without a head (the categories are classes of the extractor)."""
        if self.head is None:
            return None
        weight, bias = self.head
        logits = np.asarray(self.features, dtype=np.float32)[rows] @ weight.T.astype(np.float32) + bias
        return logits.argmax(axis=1)


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
        category_info=json.loads((d / CATEGORIES_FILE).read_text()) if (d / CATEGORIES_FILE).is_file() else {},
        head=_head(d / HEAD_FILE),
    )


def _head(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        return np.asarray(z["weight"]), np.asarray(z["bias"])


def category_model(model: ImageModel, feats: FeatureSet) -> ImageModel:
    """The model whose classes are the items' categories, which a targeted attack runs through:
    ``model`` itself when every category is one of its classes, else its body and pool under the
    category head fitted on these features (``model`` is not changed)."""
    if feats.head is None:
        missing = [c for c in feats.category_names if c not in model.class_names]
        if missing:
            raise InvalidInput(f"categories {missing[:5]} are not classes of the extractor and the features "
                               f"artifact has no category head")
        return model
    from services.extractor.category_head import CategoryHead

    weight, bias = feats.head
    head = CategoryHead(weight, bias, list(feats.category_names)).module().to(model.mean.device)
    return model.with_head(head, feats.category_names)
