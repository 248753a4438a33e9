"""Recommender service: trained models, top-K lists, what-if scoring, seller image refresh.

Run: ``uvicorn services.recommender.app:app --port 8003``. A thin HTTP layer over
:mod:`services.recommender.serving`: models are ``train`` artifacts of the store; an *overlay*
holds per-model item rows replaced through the image endpoint, one per API key: the gateway names
the caller's key in ``X-Advrec-Owner`` (its overlay lives under ``overlays/<model>/owners/<owner>``), so
one key's image refresh never changes another key's scores. Training runs as a gateway job
(``POST /v1/models`` on the gateway), not here.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import numpy as np
import torch
from fastapi import APIRouter, Depends, FastAPI, File, Header, Query, UploadFile
from fastapi import Path as PathParam

from advrec_common.datasets.images import decode_image
from advrec_common.errors import InvalidInput
from advrec_common.http import ERROR_RESPONSES, get_store, read_upload, require_artifact, service_app
from advrec_common.observability import instrument
from advrec_common.schemas import (
    KEY_PATTERN,
    ImageRefreshResponse,
    ItemScoreChange,
    ModelInfo,
    RankedItem,
    ScoreRequest,
    ScoreResponse,
    TopResponse,
)
from advrec_common.settings import Settings, get_settings, resolve_device
from advrec_common.store import ArtifactStore
from services.recommender.serving import ModelContext, lineage, refresh_item_image, score_changes, top_items

ModelKey = Annotated[str, PathParam(pattern=KEY_PATTERN, description="Key of a `train` artifact.")]


OwnerHeader = Annotated[str | None, Header(alias="X-Advrec-Owner", pattern=r"^[0-9a-f]{16}$", include_in_schema=False)]


def overlay_dir(settings: Settings, key: str, owner: str | None):
    """Where the overlay of model ``key`` for the API key ``owner`` lives (no owner: the shared one)."""
    base = settings.home / "overlays" / key
    return base / "owners" / owner if owner else base


def get_context(key: ModelKey, settings: Settings = Depends(get_settings),
                store: ArtifactStore = Depends(get_store), owner: OwnerHeader = None) -> ModelContext:
    require_artifact(store, key, "train", "model")
    ctx = ModelContext(store, settings.home, key)
    ctx.overlay_dir = overlay_dir(settings, key, owner)
    return ctx


# -- routes --------------------------------------------------------------------------------------
router = APIRouter(prefix="/v1", responses=ERROR_RESPONSES, tags=["recommender"])


@router.get("/models", response_model=list[ModelInfo], summary="Trained recommenders (train artifacts)")
def models(settings: Settings = Depends(get_settings), store: ArtifactStore = Depends(get_store),
           owner: OwnerHeader = None) -> list[ModelInfo]:
    out = []
    for key in store.keys():
        meta = store.meta(key)
        if meta.get("kind") != "train":
            continue
        params = meta.get("params", {})
        overlay = overlay_dir(settings, key, owner) / "overlay.npz"
        n_overlay = 0
        if overlay.is_file():
            with np.load(overlay, allow_pickle=False) as z:
                n_overlay = int(len(z["items"]))
        lin = lineage(store, key)
        out.append(ModelInfo(key=key, recommender=params.get("recommender", "?"), config=params.get("config", {}),
                             step=meta.get("step"), overlay_items=n_overlay,
                             **{r: lin.get(r) for r in ("dataset", "features", "extractor")}))
    return out


@router.get("/models/{key}/users/{user_id}/top", response_model=TopResponse,
            summary="Top-K items of a user, training items excluded (with the model's overlay applied)")
async def top(
    user_id: str,
    k: Annotated[int, Query(ge=1, le=10_000, description="List length (1..catalog size).")] = 10,
    ctx: ModelContext = Depends(get_context),
) -> TopResponse:
    users = ctx.users([user_id])
    overlay = ctx.overlay()
    state = await asyncio.to_thread(ctx.item_state, overlay)
    scores, items = await asyncio.to_thread(top_items, ctx, users, k, state)
    ids = ctx.dataset.catalog.item_ids
    ranked = [RankedItem(rank=r + 1, item_id=ids[i], item_index=i, score=s)
              for r, (i, s) in enumerate(zip(items[0].tolist(), scores[0].tolist(), strict=True)) if i >= 0]
    return TopResponse(model=ctx.key, user_id=user_id, k=k, overlay_items=len(overlay.get("items", [])), items=ranked)


@router.post("/models/{key}/score", response_model=ScoreResponse,
             summary="What if these items' features were replaced? New scores and ranks, without retraining")
async def score(req: ScoreRequest, ctx: ModelContext = Depends(get_context)) -> ScoreResponse:
    if "features" not in ctx.model.needs:
        raise InvalidInput(f"{ctx.model.name} does not read pooled item features; nothing to replace")
    dim = ctx.model.dims.get("feature_dim")
    bad = [it.item_id for it in req.items if len(it.features) != dim]
    if bad:
        raise InvalidInput(f"feature vectors must have dimension {dim}; wrong for item(s) {bad[:5]}")
    idx = [ctx.item(it.item_id) for it in req.items]
    if len(set(idx)) != len(idx):
        raise InvalidInput("an item id appears more than once")
    users = ctx.users(req.users)
    replaced = {"items": np.asarray(idx, dtype=np.int64),
                "features": np.asarray([it.features for it in req.items], dtype=np.float32)}
    overlay = ctx.overlay()

    def run() -> list[ItemScoreChange]:
        return score_changes(ctx, users, torch.as_tensor(idx), ctx.item_state(overlay),
                             ctx.item_state(overlay, replaced), req.users)

    changes = await asyncio.to_thread(run)
    return ScoreResponse(model=ctx.key, n_candidates=ctx.model.n_items, changes=changes)


@router.post("/models/{key}/items/{item_id}/image", response_model=ImageRefreshResponse,
             summary="A seller uploads a new image: re-extract it, store it in the model's overlay, report ranks")
async def refresh_image(
    item_id: str,
    image: Annotated[UploadFile, File(description="The item's new image.")],
    users: Annotated[list[str] | None, Query(description="User ids to report ranks for (default: a few).")] = None,
    settings: Settings = Depends(get_settings),
    ctx: ModelContext = Depends(get_context),
) -> ImageRefreshResponse:
    ctx.item(item_id)
    if users:
        ctx.users(users)
    data = await read_upload(image, settings.max_upload_bytes)
    arr = await asyncio.to_thread(decode_image, data, settings.max_image_pixels)
    return await asyncio.to_thread(refresh_item_image, ctx, item_id, arr, users, resolve_device(settings.device))


def create_app() -> FastAPI:
    app = service_app(
        "recommender",
        "Visual recommenders trained by the pipeline: top-K lists, what-if scoring with "
        "replaced item features, seller image refresh (per-model overlay).",
        router,
    )
    instrument(app, "recommender", get_settings())
    return app


app = create_app()
