"""Extractor service: backbones, named weights, stored extractors, micro-batched feature extraction,
screening uploads through a shop's defense.

Run: ``uvicorn services.extractor.app:app --port 8001``. A thin HTTP layer over the extractor
domain: images are decoded by :func:`advrec_common.datasets.images.decode_image`, features come
from :func:`services.extractor.extraction.extract_features`, catalog features are written by
:func:`services.extractor.artifacts.write_catalog_features` under the same key the pipeline uses,
screening runs :func:`services.extractor.screening.screen_images`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Hashable, Sequence
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, File, Form, Request, UploadFile

from advrec_common.datasets.artifact import load_dataset_artifact
from advrec_common.datasets.images import decode_image, resize_image
from advrec_common.errors import InvalidInput, PayloadTooLarge
from advrec_common.http import ERROR_RESPONSES, get_store, read_upload, require_artifact, service_app
from advrec_common.observability import instrument
from advrec_common.schemas import (
    BackboneInfo,
    CatalogFeaturesRequest,
    CatalogFeaturesResponse,
    ExtractorInfo,
    ExtractResponse,
    ImageFeatures,
    ScreenedImage,
    ScreenResponse,
    WeightInfo,
)
from advrec_common.settings import Settings, get_settings, resolve_device
from advrec_common.store import ArtifactStore
from advrec_common.validation import validate_model
from advrec_common.vision.artifact import extractor_info, load_extractor_artifact
from advrec_common.vision.backbones import BACKBONES
from advrec_common.vision.defenses.spec import DefenseSpec
from services.extractor.artifacts import (
    features_key,
    features_params,
    resolved_image_size,
    write_catalog_features,
)
from services.extractor.batcher import MicroBatcher

MAX_IMAGES_PER_REQUEST = 256
REFERENCE_PIXELS = 224 * 224  # the unit of max_sync_extract_images: a forward of one 224x224 image
def load_extractor(store: ArtifactStore, key: str):
    """The :class:`ImageModel` of extractor artifact ``key`` (loaded once per key, LRU)."""
    require_artifact(store, key, "extractor", "extractor")
    return load_extractor_artifact(store, key)


def _run_batch(group: Hashable, images: Sequence[np.ndarray]) -> list[dict[str, Any]]:
    """One forward for images of one group: (root, key, device, H, W) -> per-image feature dicts."""
    from services.extractor.extraction import extract_features

    root, key, device = group[0], group[1], group[2]  # type: ignore[index]
    model = load_extractor(ArtifactStore(root), key)
    batch = np.stack(images)
    res = extract_features(model, batch, batch_size=len(batch), device=device, spatial=False, image_size=None)
    feats = np.asarray(res.features, dtype=np.float32)
    classes, probs = np.asarray(res.classes), np.asarray(res.probs)
    return [{"features": feats[i], "class_index": int(classes[i]), "probability": float(probs[i])}
            for i in range(len(batch))]


def get_batcher(request: Request, settings: Settings = Depends(get_settings)) -> MicroBatcher:
    """The app's one micro-batcher (created on first use with the settings' knobs)."""
    state = request.app.state
    if getattr(state, "batcher", None) is None:
        state.batcher = MicroBatcher(_run_batch, max_batch=settings.extract_max_batch,
                                     max_wait_ms=settings.extract_max_wait_ms, max_queue=settings.extract_max_queue)
    return state.batcher


def check_sync_extract(n_items: int, side: int | None, first_image_shape: tuple[int, ...] | None,
                       settings: Settings) -> None:
    """PayloadTooLarge when computing a catalog's features in one request would cost more than
    ``settings.max_sync_extract_images`` forwards of a 224x224 image (the request cannot be cancelled).
    ``side``: the size images are brought to (None: their own, read from the first image)."""
    pixels = side * side if side else (first_image_shape[0] * first_image_shape[1] if first_image_shape
                                       else REFERENCE_PIXELS)
    forwards = n_items * pixels / REFERENCE_PIXELS
    if forwards > settings.max_sync_extract_images:
        size = f"{side}x{side}" if side else "their own size"
        raise PayloadTooLarge(
            f"{n_items:,} catalog images at {size} = {forwards:,.0f} forwards at 224x224, above this service's "
            f"limit for one request ({settings.max_sync_extract_images:,}, ADVREC_MAX_SYNC_EXTRACT_IMAGES); submit an "
            "evaluation job (POST /v1/jobs: its features step computes the same artifact, with progress, resumable "
            "and cancellable), or ask for a smaller image_size")


def catalog_features(store: ArtifactStore, req: CatalogFeaturesRequest, device: str,
                     settings: Settings) -> CatalogFeaturesResponse:
    """Compute (or reuse) the features of a dataset under an extractor: the same key as a pipeline run.
    A computation above ``settings.max_sync_extract_images`` is refused (413) before any forward."""
    require_artifact(store, req.dataset, "dataset", "dataset")
    require_artifact(store, req.extractor, "extractor", "extractor")
    params = features_params(req.image_size, req.spatial, req.category_source)
    key = features_key(req.dataset, req.extractor, params)
    computed = not store.has(key)
    if computed:
        dataset, model = load_dataset_artifact(store, req.dataset), load_extractor(store, req.extractor)
        side = resolved_image_size(params["image_size"], model)
        first = None
        if side is None and len(dataset.catalog):
            from advrec_common.datasets.images import load_catalog_images
            first = load_catalog_images(dataset.catalog, [0])[0].shape
        check_sync_extract(len(dataset.catalog), side, first, settings)
        meta = {"step": "features/service", "kind": "features", "params": params,
                "deps": {"dataset": req.dataset, "extractor": req.extractor}}
        with store.writing(key, meta) as out:
            meta["result"] = write_catalog_features(out, dataset, model, params, device)
    result = store.meta(key).get("result", {})
    return CatalogFeaturesResponse(features=key, computed=computed, n_items=int(result.get("n", 0)),
                                   dim=int(result.get("dim", 0)))


def _encode(vec: np.ndarray, encoding: str) -> dict[str, Any]:
    if encoding == "base64":
        return {"features_b64": base64.b64encode(vec.astype("<f4").tobytes()).decode()}
    return {"features": vec.astype(np.float32).tolist()}


router = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)


@router.get("/backbones", response_model=list[BackboneInfo], tags=["extractor"], summary="Registered backbones")
def backbones() -> list[BackboneInfo]:
    return [BackboneInfo(name=n) for n in sorted(BACKBONES)]


@router.get("/weights", response_model=list[WeightInfo], tags=["extractor"],
            summary="Named pretrained weights: present on disk or missing, and where the file must go")
def weights(settings: Settings = Depends(get_settings)) -> list[WeightInfo]:
    from services.extractor.weights import NAMED_WEIGHTS, named_weight_status

    out = []
    for name, w in sorted(NAMED_WEIGHTS.items()):
        present, path = named_weight_status(name, settings.resolved_weights_dir)
        out.append(WeightInfo(name=name, backbone=w.backbone, layout=w.layout, present=present, path=str(path),
                              source=w.source, note=w.note))
    return out


@router.get("/extractors", response_model=list[ExtractorInfo], tags=["extractor"],
            summary="Extractor artifacts in the store")
def extractors(store: ArtifactStore = Depends(get_store)) -> list[ExtractorInfo]:
    out = []
    for key in store.keys():
        meta = store.meta(key)
        if meta.get("kind") != "extractor":
            continue
        info = extractor_info(store, key)
        out.append(ExtractorInfo(key=key, backbone=info["backbone"], source=info.get("source"),
                                 n_classes=len(info.get("class_names", [])), feature_dim=info.get("feature_dim"),
                                 step=meta.get("step")))
    return out


@router.post("/extract", response_model=ExtractResponse, tags=["extractor"],
             summary="Features, class and probability of uploaded images (micro-batched across requests)")
async def extract(
    images: Annotated[list[UploadFile], File(description="One or more image files (JPEG, PNG, WebP, ...).")],
    extractor: Annotated[str, Form(description="Key of an `extractor` artifact.")],
    encoding: Annotated[Literal["list", "base64"], Form()] = "list",
    image_size: Annotated[int | None, Form(ge=16, le=1024, description="Resize to size x size (None: native).")] = None,
    settings: Settings = Depends(get_settings),
    store: ArtifactStore = Depends(get_store),
    batcher: MicroBatcher = Depends(get_batcher),
) -> ExtractResponse:
    if len(images) > MAX_IMAGES_PER_REQUEST:
        raise InvalidInput(f"at most {MAX_IMAGES_PER_REQUEST} images per request, got {len(images)}")
    model = await asyncio.to_thread(load_extractor, store, extractor)
    decoded = await _decoded_uploads(images, image_size, settings)
    device = resolve_device(settings.device)
    root = str(store.root)
    results = await batcher.submit_many([((root, extractor, device, *img.shape[:2]), img) for img in decoded])
    items = [
        ImageFeatures(index=i, filename=up.filename, dim=int(r["features"].shape[0]), class_index=r["class_index"],
                      class_name=model.class_names[r["class_index"]], probability=r["probability"],
                      **_encode(r["features"], encoding))
        for i, (up, r) in enumerate(zip(images, results, strict=True))
    ]
    return ExtractResponse(extractor=extractor, encoding=encoding, items=items)


async def _decoded_uploads(images: list[UploadFile], size: int | None, settings: Settings) -> list[np.ndarray]:
    """Every upload decoded (and resized to ``size`` x ``size`` when given) before any work, so a bad image fails
    the request first with its problem (too many bytes or pixels, not an image, corrupt)."""
    decoded = []
    for upload in images:
        data = await read_upload(upload, settings.max_upload_bytes)
        arr = await asyncio.to_thread(decode_image, data, settings.max_image_pixels)
        decoded.append(resize_image(arr, size) if size else arr)
    return decoded


def chosen_defense(store: ArtifactStore, extractor: str, defense: str | None, spec: str | None) -> tuple[Any, dict]:
    """(the Defense module, its description) from a ``defense`` artifact key or a transform's JSON ``spec``;
    InvalidInput unless exactly one is given and it can sit in front of ``extractor``."""
    from advrec_common.vision.defenses.artifact import defense_info, load_defense_artifact
    from advrec_common.vision.defenses.registry import build_defense

    if (defense is None) == (spec is None):
        raise InvalidInput("give exactly one of `defense` (the key of a fitted defense artifact) and `spec` (a "
                           "transform's spec entry as JSON, e.g. {\"kind\": \"jpeg\", \"quality\": 75})")
    if defense is not None:
        require_artifact(store, defense, "defense", "defense")
        info = defense_info(store, defense)
        module = load_defense_artifact(store, defense, extractor=extractor)
        return module, {"defense": defense, "kind": info["kind"], "label": info["label"]}
    try:
        data = json.loads(spec)  # type: ignore[arg-type]
    except ValueError as exc:
        raise InvalidInput(f"spec is not JSON: {exc}") from None
    parsed = validate_model(DefenseSpec, data, root="spec", what="invalid defense spec")
    if parsed.info.fitted:
        raise InvalidInput(f"a {parsed.kind} is fitted on a catalog (a run's defense step stores it): pass the key of "
                           f"its artifact as `defense`")
    return build_defense(parsed), {"defense": None, "kind": parsed.kind, "label": parsed.label()}


def _screen(model: Any, module: Any, images: list[np.ndarray], device: str, batch_size: int) -> tuple[Any, float]:
    from services.extractor.screening import screen_images

    t0 = time.perf_counter()
    result = screen_images(model, module, np.stack(images), batch_size=batch_size, device=device)
    return result, time.perf_counter() - t0


@router.post("/screen", response_model=ScreenResponse, tags=["extractor"],
             summary="Screen uploads through a shop's defense: the purified features, and a detector's score and flag")
async def screen(
    images: Annotated[list[UploadFile], File(description="One or more image files (JPEG, PNG, WebP, ...).")],
    extractor: Annotated[str, Form(description="Key of an `extractor` artifact.")],
    defense: Annotated[str | None, Form(description="Key of a `defense` artifact (a run's fitted defense).")] = None,
    spec: Annotated[str | None, Form(description="Or a transform's spec entry as JSON, e.g. "
                                                 "{\"kind\": \"bit_depth\", \"bits\": 4}.")] = None,
    encoding: Annotated[Literal["list", "base64"], Form()] = "list",
    image_size: Annotated[int | None, Form(ge=16, le=1024, description="Resize to size x size (None: the "
                                                                       "extractor's input size).")] = None,
    settings: Settings = Depends(get_settings),
    store: ArtifactStore = Depends(get_store),
) -> ScreenResponse:
    if len(images) > MAX_IMAGES_PER_REQUEST:
        raise InvalidInput(f"at most {MAX_IMAGES_PER_REQUEST} images per request, got {len(images)}")
    model = await asyncio.to_thread(load_extractor, store, extractor)
    module, described = await asyncio.to_thread(chosen_defense, store, extractor, defense, spec)
    size = image_size or model.input_size
    decoded = await _decoded_uploads(images, size, settings)
    if len({img.shape for img in decoded}) > 1:
        raise InvalidInput("the images differ in size and this extractor takes any size: pass image_size")
    result, seconds = await asyncio.to_thread(_screen, model, module, decoded, resolve_device(settings.device),
                                              settings.extract_max_batch)
    items = [
        ScreenedImage(index=i, filename=up.filename, dim=int(result.features.shape[1]),
                      class_index=int(result.classes[i]), class_name=model.class_names[int(result.classes[i])],
                      probability=float(result.probs[i]),
                      score=None if result.scores is None else float(result.scores[i]),
                      flagged=None if result.flagged is None else bool(result.flagged[i]),
                      **_encode(result.features[i], encoding))
        for i, up in enumerate(images)
    ]
    return ScreenResponse(extractor=extractor, threshold=module.config().get("threshold"),
                          image_size=int(decoded[0].shape[0]), encoding=encoding, seconds=seconds, items=items,
                          **described)


@router.post("/extract/catalog", response_model=CatalogFeaturesResponse, tags=["extractor"],
             summary="Features of a whole dataset's catalog (the pipeline's `features` step; reused when stored)")
async def extract_catalog(
    req: CatalogFeaturesRequest,
    settings: Settings = Depends(get_settings),
    store: ArtifactStore = Depends(get_store),
) -> CatalogFeaturesResponse:
    return await asyncio.to_thread(catalog_features, store, req, resolve_device(settings.device), settings)


def create_app() -> FastAPI:
    """The extractor FastAPI app (dependencies resolved per request; override ``get_settings`` in tests)."""
    app = service_app(
        "extractor",
        "Image feature extractors: list backbones, named weights and stored extractors; "
        "extract features of uploaded images (micro-batched) or of a whole catalog; "
        "screen uploads through a shop's defense.",
        router,
    )
    app.state.batcher = None
    instrument(app, "extractor", get_settings())
    return app


app = create_app()
