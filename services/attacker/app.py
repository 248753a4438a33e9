"""Attacker service: the attack registry and adversarial images of uploads or catalog items.

Run: ``uvicorn services.attacker.app:app --port 8002``. A thin HTTP layer over the one attack core
:func:`services.attacker.core.attack_and_measure` (attack, deliver within the budget, measure).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import APIRouter, Depends, FastAPI, File, Form, UploadFile
from PIL import Image

from advrec_common.datasets.artifact import load_dataset_artifact
from advrec_common.datasets.images import decode_image, load_catalog_images, resize_image, to_tensor
from advrec_common.errors import InvalidInput, PayloadTooLarge
from advrec_common.http import ERROR_RESPONSES, get_store, read_upload, require_artifact, service_app
from advrec_common.observability import instrument
from advrec_common.schemas import AttackedImage, AttackInfo, AttackResponse, CatalogAttackRequest, Delivery
from advrec_common.settings import Settings, get_settings, resolve_device
from advrec_common.store import ArtifactStore
from advrec_common.validation import validate_model
from advrec_common.vision.artifact import load_extractor_artifact
from services.attacker.attacks import ATTACKS
from services.attacker.core import attack_and_measure
from services.attacker.delivery import to_u8
from services.attacker.spec import AttackSpec

MAX_IMAGES_PER_REQUEST = 64
REFERENCE_PIXELS = 224 * 224  # the unit of max_sync_attack_passes: a pass of one 224x224 image
# run_attack moves the (shared, cached) model to the device and back: one attack at a time per process
_ATTACK_LOCK = threading.Lock()


def parse_spec(spec: dict[str, Any]) -> AttackSpec:
    """An :class:`AttackSpec` from request fields; every validation problem (``spec.<field>``) in one InvalidInput."""
    return validate_model(AttackSpec, spec, root="spec", what="invalid attack spec")


def check_sync_work(spec: AttackSpec, n_images: int, height: int, width: int, settings: Settings) -> None:
    """PayloadTooLarge when one request would cost more than ``settings.max_sync_attack_passes``
    (images x passes per image x pixels / 224^2): the service runs one attack at a time, and a
    request cannot be cancelled."""
    passes = n_images * spec.passes_per_image() * (height * width) / REFERENCE_PIXELS
    if passes > settings.max_sync_attack_passes:
        raise PayloadTooLarge(
            f"{n_images} image(s) x {spec.passes_per_image()} passes of {spec.method} at {height}x{width} px = "
            f"{passes:,.0f} passes at 224x224, above this service's limit for one request "
            f"({settings.max_sync_attack_passes:,}, ADVREC_MAX_SYNC_ATTACK_PASSES); send fewer images or steps, a "
            f"smaller image_size, or run it as an evaluation job (POST /v1/jobs: sharded, resumable, cancellable)")


def load_extractor(store: ArtifactStore, key: str):
    require_artifact(store, key, "extractor", "extractor")
    return load_extractor_artifact(store, key)


def _target_index(model, target: str | None) -> int | None:
    if target is None:
        return None
    if target not in model.class_names:
        shown = ", ".join(model.class_names[:20])
        raise InvalidInput(f"target class {target!r} is not a class of the extractor; classes: {shown}")
    return model.class_names.index(target)


def _png_b64(image_u8: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image_u8).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _stack(images: list[np.ndarray], image_size: int | None) -> np.ndarray:
    if image_size:
        images = [resize_image(im, image_size) for im in images]
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise InvalidInput(f"images differ in size {sorted(shapes)}; pass image_size to resize them")
    return np.stack(images)


def attack_images(model, images_u8: np.ndarray, spec_fields: dict[str, Any], target: str | None, delivery: str,
                  jpeg_quality: int, device: str) -> tuple[Any, list[dict[str, Any]], dict[str, Any], float]:
    """images (N,H,W,3) uint8 -> (spec, per-image rows with the encoded delivered image, summary, seconds)."""
    spec = parse_spec(spec_fields)
    target_idx = _target_index(model, target)
    clean = to_tensor(images_u8)
    with _ATTACK_LOCK:
        with torch.inference_mode():
            clean_features = model.features(clean)
        out = attack_and_measure(model, clean, spec, target_idx, delivery, jpeg_quality, device=device,
                                 clean_features=clean_features)
    delivered, m = out.delivered, out.measurement
    rows = []
    delivered_u8 = to_u8(delivered) if delivery != "float" else None
    for i, meas in enumerate(m.to_table()):
        if delivered_u8 is not None:
            enc, b64 = "png", _png_b64(delivered_u8[i])
        else:
            arr = delivered[i].permute(1, 2, 0).contiguous().numpy().astype("<f4")
            enc, b64 = "float32", base64.b64encode(arr.tobytes()).decode()
        rows.append({"encoding": enc, "image_b64": b64, "height": int(clean.shape[2]), "width": int(clean.shape[3]),
                     "measurements": _plain(meas)})
    return spec, rows, _plain(m.summary()), out.seconds


def _plain(obj: Any) -> Any:
    """JSON-safe copy (numpy/tensor scalars -> Python numbers, NaN -> None)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, torch.Tensor | np.ndarray):
        return _plain(np.asarray(obj).tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and obj != obj:
        return None
    return obj


def _response(spec, rows, summary, seconds, target, delivery, names: list[dict[str, Any]]) -> AttackResponse:
    images = [AttackedImage(index=i, **names[i], **row) for i, row in enumerate(rows)]
    return AttackResponse(attack=spec.label(), spec=spec.model_dump(mode="json"), target=target, delivery=delivery,
                          images=images, summary=summary, seconds=seconds)


router = APIRouter(prefix="/v1", responses=ERROR_RESPONSES, tags=["attacker"])


@router.get("/attacks", response_model=list[AttackInfo], summary="Registered attacks and their parameters")
def attacks() -> list[AttackInfo]:
    params = AttackSpec.model_json_schema()["properties"]
    return [AttackInfo(name=name, norms=list(cls.info().norms), budget_spaces=list(cls.info().budget_spaces),
                       unbounded_ok=cls.info().unbounded_ok, needs_labels=cls.info().needs_labels, parameters=params)
            for name, cls in sorted(ATTACKS.items())]


@router.post("/attack", response_model=AttackResponse,
             summary="Attack uploaded images toward a target class; returns the delivered images and measurements")
async def attack_uploads(
    images: Annotated[list[UploadFile], File(description="Images to attack (same size, or pass image_size).")],
    extractor: Annotated[str, Form(description="Key of an `extractor` artifact.")],
    spec: Annotated[str, Form(description='AttackSpec as JSON, e.g. {"method": "pgd", "eps": 8, "steps": 10}.')],
    target: Annotated[str | None, Form(description="Target class name.")] = None,
    delivery: Annotated[Delivery, Form()] = "png8",
    jpeg_quality: Annotated[int, Form(ge=1, le=95)] = 90,
    image_size: Annotated[int | None, Form(ge=16, le=1024)] = None,
    settings: Settings = Depends(get_settings),
    store: ArtifactStore = Depends(get_store),
) -> AttackResponse:
    if len(images) > MAX_IMAGES_PER_REQUEST:
        raise InvalidInput(f"at most {MAX_IMAGES_PER_REQUEST} images per request, got {len(images)}")
    try:
        spec_fields = json.loads(spec)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"spec is not valid JSON: {exc}") from None
    if not isinstance(spec_fields, dict):
        raise InvalidInput("spec must be a JSON object")
    spec_model = parse_spec(spec_fields)  # fail fast, before decoding anything
    model = await asyncio.to_thread(load_extractor, store, extractor)
    decoded = []
    for up in images:
        data = await read_upload(up, settings.max_upload_bytes)
        decoded.append(await asyncio.to_thread(decode_image, data, settings.max_image_pixels))
    batch = _stack(decoded, image_size)
    check_sync_work(spec_model, *batch.shape[:3], settings)
    out = await asyncio.to_thread(attack_images, model, batch, spec_fields, target, delivery, jpeg_quality,
                                  resolve_device(settings.device))
    return _response(*out, target, delivery, [{"filename": up.filename} for up in images])


@router.post("/attack/catalog", response_model=AttackResponse,
             summary="Attack catalog items of a dataset artifact (by external item id) toward a target class")
async def attack_catalog(
    req: CatalogAttackRequest,
    settings: Settings = Depends(get_settings),
    store: ArtifactStore = Depends(get_store),
) -> AttackResponse:
    spec = parse_spec(req.spec)
    if req.image_size:  # the size is known: refuse before loading any image
        check_sync_work(spec, len(req.items), req.image_size, req.image_size, settings)
    require_artifact(store, req.dataset, "dataset", "dataset")
    model = await asyncio.to_thread(load_extractor, store, req.extractor)
    ds = await asyncio.to_thread(load_dataset_artifact, store, req.dataset)
    idx = [ds.catalog.index_of(i) for i in req.items]
    batch = await asyncio.to_thread(load_catalog_images, ds.catalog, idx, req.image_size)
    check_sync_work(spec, *batch.shape[:3], settings)
    out = await asyncio.to_thread(attack_images, model, batch, req.spec, req.target, req.delivery, req.jpeg_quality,
                                  resolve_device(settings.device))
    return _response(*out, req.target, req.delivery, [{"item_id": i} for i in req.items])


def create_app() -> FastAPI:
    app = service_app(
        "attacker",
        "Adversarial attacks on product images against a stored feature extractor: the "
        "registry, and attacked images with per-image measurements.",
        router,
    )
    instrument(app, "attacker", get_settings())
    return app


app = create_app()
