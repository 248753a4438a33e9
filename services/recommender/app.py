"""Recommender service: trained models, top-K lists, what-if scoring, seller image refresh, training jobs.

Run: ``uvicorn services.recommender.app:app --port 8003``. Models are ``train`` artifacts of the
store; their inputs (dataset, features, extractor) are found from the step's ``deps`` in
meta.json when present, else from the run records that planned them. An *overlay* holds
per-model item-feature overrides written by the image endpoint, in
``<home>/overlays/<model_key>/overlay.npz`` (replaced atomically); ``top`` and ``score`` read it.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import tempfile
import threading
from functools import lru_cache
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from fastapi import APIRouter, Depends, FastAPI, File, Query, UploadFile
from fastapi import Path as PathParam

from advrec.pipeline.dag import STEP_QUEUES, Plan, Step
from advrec_common.datasets.images import decode_image, resize_image
from advrec_common.errors import InvalidInput, NotFound
from advrec_common.http import ERROR_RESPONSES, get_store, read_upload, require_artifact, service_app
from advrec_common.schemas import (
    KEY_PATTERN,
    ImageRefreshResponse,
    ItemScoreChange,
    ModelInfo,
    RankedItem,
    ScoreRequest,
    ScoreResponse,
    TopResponse,
    TrainJob,
    TrainRequest,
)
from advrec_common.settings import Settings, get_settings, resolve_device
from advrec_common.store import ArtifactStore

ModelKey = Annotated[str, PathParam(pattern=KEY_PATTERN, description="Key of a `train` artifact.")]
DEFAULT_RANK_USERS = 5
_OVERLAY_LOCK = threading.Lock()
log = logging.getLogger(__name__)


# -- lineage: which dataset / features / extractor a model came from ------------------------------
def _deps_from_records(runs_dir: Path, key: str) -> dict[str, str] | None:
    if not runs_dir.is_dir():
        return None
    for rec in runs_dir.glob("*/record.json"):
        try:
            plan = json.loads(rec.read_text()).get("plan") or []
        except (json.JSONDecodeError, OSError):
            continue
        by_name = {row["name"]: row["key"] for row in plan}
        for row in plan:
            if row["key"] == key:
                return {d: by_name[d] for d in row["deps"] if d in by_name}
    return None


def step_deps(store: ArtifactStore, runs_dir: Path, key: str) -> dict[str, str]:
    """Dependency name -> key of a stored step (meta ``deps``, else a run record's plan); {} if unknown."""
    meta = store.meta(key)
    if isinstance(meta.get("deps"), dict):
        return dict(meta["deps"])
    return _deps_from_records(runs_dir, key) or {}


def _first(deps: dict[str, str], prefix: str) -> str | None:
    hits = [k for n, k in deps.items() if n == prefix or n.startswith(prefix + "/")]
    return hits[0] if hits else None


def lineage(store: ArtifactStore, runs_dir: Path, key: str) -> dict[str, str | None]:
    """{'dataset', 'features', 'extractor'} keys of train artifact ``key`` (None where unknown)."""
    deps = step_deps(store, runs_dir, key)
    features = _first(deps, "features")
    extractor = _first(step_deps(store, runs_dir, features), "extractor") if features else None
    return {"dataset": _first(deps, "dataset"), "features": features, "extractor": extractor}


# -- loaders (cached by artifact key; artifacts are immutable) ----------------------------------
@lru_cache(maxsize=8)
def _model_cached(root: str, key: str):
    from services.recommender.models.base import Recommender

    return Recommender.load(ArtifactStore(root).open(key) / "model.pt", device="cpu")


@lru_cache(maxsize=8)
def _pairs_cached(root: str, dataset_key: str):
    from advrec.pipeline.steps import load_dataset
    from services.recommender.pairs import PairIndex

    ds = load_dataset(ArtifactStore(root), dataset_key)
    return PairIndex(ds.train, "cpu"), {u: i for i, u in enumerate(ds.user_ids)}


class ModelContext:
    """A loaded model with its dataset, training-pair index, user index and overlay directory."""

    def __init__(self, store: ArtifactStore, settings: Settings, key: str):
        from advrec.pipeline.steps import load_dataset

        self.meta = require_artifact(store, key, "train", "model")
        self.store, self.key = store, key
        self.lineage = lineage(store, settings.runs_dir, key)
        if self.lineage["dataset"] is None:
            raise NotFound(f"model {key}: its dataset is unknown (no run record or meta deps names it)")
        self.model = _model_cached(str(store.root), key)
        self.dataset = load_dataset(store, self.lineage["dataset"])
        self.pairs, self.user_index = _pairs_cached(str(store.root), self.lineage["dataset"])
        self.overlay_dir = settings.home / "overlays" / key

    def users(self, user_ids: list[str]) -> torch.Tensor:
        missing = [u for u in user_ids if u not in self.user_index]
        if missing:
            raise NotFound(f"unknown user id(s) {missing[:5]} for model {self.key}")
        return torch.as_tensor([self.user_index[u] for u in user_ids], dtype=torch.long)

    def item(self, item_id: str) -> int:
        return self.dataset.catalog.index_of(item_id)

    # -- overlay -------------------------------------------------------------------------------
    def overlay(self) -> dict[str, np.ndarray]:
        path = self.overlay_dir / "overlay.npz"
        if not path.is_file():
            return {}
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def write_overlay(self, data: dict[str, np.ndarray]) -> None:
        """Replace the overlay file atomically (temp file + rename in the same directory)."""
        self.overlay_dir.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, **data)
        fd, tmp = tempfile.mkstemp(prefix=".overlay-", suffix=".npz", dir=self.overlay_dir)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(buf.getvalue())
            os.replace(tmp, self.overlay_dir / "overlay.npz")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def item_side(self, overlay: dict[str, np.ndarray], extra: dict[str, np.ndarray] | None = None):
        """ItemSide of the catalog with overlay rows (then ``extra`` rows) applied; None = stored items."""
        from advrec.pipeline.steps import catalog_images, load_features
        from services.recommender.items import ItemSide

        layers = [layer for layer in (overlay, extra) if layer]
        if not layers:
            return None
        needs = self.model.needs
        feats = load_features(self.store, self.lineage["features"]) if self.lineage["features"] else None
        arrays: dict[str, np.ndarray | None] = {"features": None, "spatial": None, "images": None, "classes": None}
        sources = {"features": "features", "spatial": "spatial", "classes": "classes"}
        for name, src in sources.items():
            wanted = name in needs or (name == "classes" and "categories" in needs)
            if wanted:
                if feats is None or src not in feats:
                    raise InvalidInput(f"model {self.key}: its features artifact (with {src}) is unknown")
                arrays[name] = np.array(feats[src])
        if "images" in needs:
            arrays["images"] = np.array(catalog_images(self.dataset))
        for layer in layers:
            idx = layer["items"]
            for name, arr in arrays.items():
                if arr is not None and name in layer:
                    arr[idx] = layer[name]
        return ItemSide.from_arrays(features=arrays["features"], spatial_map=arrays["spatial"],
                                    images_nhwc=arrays["images"], categories=arrays["classes"])


def get_context(key: ModelKey, settings: Settings = Depends(get_settings),
                store: ArtifactStore = Depends(get_store)) -> ModelContext:
    return ModelContext(store, settings, key)


# -- scoring helpers -----------------------------------------------------------------------------
def _ranks(masked: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """masked (U,I) scores with training items at -inf, values (U,M) -> 1 + #items scored higher (U,M)."""
    ordered = masked.sort(dim=1).values
    higher = masked.shape[1] - torch.searchsorted(ordered, values.contiguous(), right=True)
    return higher + 1


def score_changes(ctx: ModelContext, users: torch.Tensor, items: torch.Tensor, before_side, after_side,
                  user_ids: list[str]) -> list[ItemScoreChange]:
    """Score and rank of ``items`` (M,) for ``users`` (U,) before/after replacing the item side."""
    rows = []
    for side in (before_side, after_side):
        scores = ctx.model.score(users, side).float().cpu()
        masked = ctx.pairs.mask_(scores.clone(), users)
        vals = scores[:, items]
        ranks = _ranks(masked, vals)
        train = torch.isneginf(masked[:, items])
        rows.append((vals, ranks, train))
    (s0, r0, t0), (s1, r1, t1) = rows
    out = []
    for ui, uid in enumerate(user_ids):
        for mi, item in enumerate(items.tolist()):
            out.append(ItemScoreChange(
                user_id=uid, item_id=ctx.dataset.catalog.item_ids[item], score_before=float(s0[ui, mi]),
                score_after=float(s1[ui, mi]), rank_before=None if t0[ui, mi] else int(r0[ui, mi]),
                rank_after=None if t1[ui, mi] else int(r1[ui, mi])))
    return out


def refresh_item_image(ctx: ModelContext, item_id: str, image: np.ndarray, user_ids: list[str] | None,
                       device: str) -> ImageRefreshResponse:
    """Re-extract an item's new image with the model's extractor and store it in the overlay."""
    from advrec.pipeline.steps import load_extractor_artifact
    from services.extractor.extraction import extract_features

    needs = ctx.model.needs
    if not needs & {"features", "spatial", "images"}:
        raise InvalidInput(f"{ctx.model.name} does not read item images or features; an image changes nothing")
    item = ctx.item(item_id)
    if ctx.lineage["extractor"] is None or ctx.lineage["features"] is None:
        raise NotFound(f"model {ctx.key}: its extractor / features artifacts are unknown")
    fparams = ctx.store.meta(ctx.lineage["features"]).get("params", {})
    extractor = load_extractor_artifact(ctx.store, ctx.lineage["extractor"])
    res = extract_features(extractor, image[None], batch_size=1, device=device, spatial="spatial" in needs,
                           image_size=fparams.get("image_size"))
    row: dict[str, np.ndarray] = {
        "items": np.asarray([item], dtype=np.int64),
        "features": np.asarray(res.features, dtype=np.float32),
        "classes": np.asarray(res.classes, dtype=np.int64),
        "probs": np.asarray(res.probs, dtype=np.float32),
        "sha256": np.asarray([hashlib.sha256(image.tobytes()).hexdigest()]),
    }
    if res.spatial is not None:
        row["spatial"] = np.asarray(res.spatial, dtype=np.float32)
    if "images" in needs:
        h, w = ctx.dataset.catalog.images.shape[1:3] if ctx.dataset.catalog.images is not None else image.shape[:2]
        if h != w:
            raise InvalidInput(f"catalog images are {h}x{w}; only square catalogs can take new images")
        row["images"] = resize_image(image, int(h))[None]
    if user_ids:
        users = ctx.users(user_ids)
    else:
        users = torch.arange(min(DEFAULT_RANK_USERS, ctx.model.n_users))
        user_ids = [ctx.dataset.user_ids[int(u)] for u in users]
    with _OVERLAY_LOCK:
        old = ctx.overlay()
        merged = _merge_overlay(old, row)
        changes = score_changes(ctx, users, torch.as_tensor([item]), ctx.item_side(old), ctx.item_side(merged),
                                user_ids)
        ctx.write_overlay(merged)  # only after everything above succeeded
    cls = int(row["classes"][0])
    return ImageRefreshResponse(model=ctx.key, item_id=item_id, class_name=extractor.class_names[cls],
                                probability=float(row["probs"][0]), overlay_items=len(merged["items"]), ranks=changes)


def _merge_overlay(old: dict[str, np.ndarray], row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Overlay with ``row``'s item replaced (or appended)."""
    if not old:
        return row
    keep = old["items"] != row["items"][0]
    if set(old) != set(row):
        raise InvalidInput("overlay fields differ from the new row; delete the model's overlay and retry")
    return {k: np.concatenate([old[k][keep], row[k]]) for k in row}


# -- training jobs -------------------------------------------------------------------------------
def _stored_step(store: ArtifactStore, name: str, kind: str, key: str) -> Step:
    meta = require_artifact(store, key, kind, kind)
    return Step(name, kind, meta.get("params", {}), (), key, STEP_QUEUES[kind])


def plan_training(store: ArtifactStore, req: TrainRequest) -> Plan:
    """A plan of (stored dataset, stored features, train): the train key equals the pipeline's."""
    from services.recommender.models import RECOMMENDERS

    if req.recommender not in RECOMMENDERS:
        raise NotFound(f"unknown recommender {req.recommender!r}; known: {sorted(RECOMMENDERS)}")
    plan = Plan()
    plan.steps["dataset"] = _stored_step(store, "dataset", "dataset", req.dataset)
    deps = ["dataset"]
    if RECOMMENDERS[req.recommender].needs & {"features", "spatial"}:
        if req.features is None:
            raise InvalidInput(f"{req.recommender} needs a features artifact (field 'features')")
        f = _stored_step(store, "features/service", "features", req.features)
        n_items = store.meta(req.dataset).get("result", {}).get("n_items")
        n_feat = store.meta(req.features).get("result", {}).get("n")
        if n_items is not None and n_feat is not None and n_items != n_feat:
            raise InvalidInput(f"features has {n_feat} items, the dataset {n_items}: not the same catalog")
        plan.steps[f.name] = f
        deps.append(f.name)
    params = {"recommender": req.recommender, "config": req.config, "seed": req.seed, "max_k": req.max_k}
    plan.add("train/service/" + req.recommender, "train", params, deps)
    return plan


def start_training(store: ArtifactStore, settings: Settings, req: TrainRequest) -> TrainJob:
    """Record a training run and hand it to the Celery executor (queue ``recommend``).

    The run record is the acceptance: if the broker is down the job stays ``queued`` and the
    reconciler enqueues it once Redis answers again. Steps already stored are not recomputed.
    """
    from advrec.pipeline.celery_executor import advance
    from advrec.pipeline.record import RunRecord

    plan = plan_training(store, req)
    step = next(s for s in plan if s.kind == "train")
    record = RunRecord.create(settings.runs_dir, {"name": f"train-{req.recommender}",
                                                  "train": req.model_dump(mode="json")}, executor="celery")
    record.set_plan(plan.to_json())
    try:
        state = advance(record.run_id, settings)
    except Exception as exc:  # broker unreachable: the reconciler will enqueue it
        log.warning("training run %s recorded but not enqueued (%s)", record.run_id, exc)
        state = "queued"
    return TrainJob(job_id=record.run_id, state=state, model=step.key)


def job_status(settings: Settings, job_id: str) -> TrainJob:
    from advrec.pipeline.record import RunRecord

    rec = RunRecord.open(settings.runs_dir, job_id).read()
    train = [s for s in rec.get("plan") or [] if s["kind"] == "train"]
    if not train:
        raise NotFound(f"run {job_id} is not a training job")
    return TrainJob(job_id=job_id, state=rec["state"], model=train[0]["key"], error=rec.get("error"))


# -- routes --------------------------------------------------------------------------------------
router = APIRouter(prefix="/v1", responses=ERROR_RESPONSES, tags=["recommender"])


@router.get("/models", response_model=list[ModelInfo], summary="Trained recommenders (train artifacts)")
def models(settings: Settings = Depends(get_settings), store: ArtifactStore = Depends(get_store)) -> list[ModelInfo]:
    out = []
    for key in store.keys():
        meta = store.meta(key)
        if meta.get("kind") != "train":
            continue
        params = meta.get("params", {})
        overlay = settings.home / "overlays" / key / "overlay.npz"
        n_overlay = 0
        if overlay.is_file():
            with np.load(overlay, allow_pickle=False) as z:
                n_overlay = int(len(z["items"]))
        out.append(ModelInfo(key=key, recommender=params.get("recommender", "?"), config=params.get("config", {}),
                             step=meta.get("step"), overlay_items=n_overlay,
                             **lineage(store, settings.runs_dir, key)))
    return out


@router.get("/models/{key}/users/{user_id}/top", response_model=TopResponse,
            summary="Top-K items of a user, training items excluded (with the model's overlay applied)")
async def top(
    user_id: str,
    k: Annotated[int, Query(ge=1, le=10_000, description="List length (1..catalog size).")] = 10,
    ctx: ModelContext = Depends(get_context),
) -> TopResponse:
    from services.recommender.scoring import topk

    users = ctx.users([user_id])
    overlay = ctx.overlay()
    side = await asyncio.to_thread(ctx.item_side, overlay)
    scores, items = await asyncio.to_thread(topk, ctx.model, users, k, ctx.pairs, side)
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
        before = ctx.item_side(overlay)
        after = ctx.item_side(overlay, replaced)
        return score_changes(ctx, users, torch.as_tensor(idx), before, after, req.users)

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


@router.post("/models", response_model=TrainJob, status_code=202,
             summary="Train a recommender as a Celery job on the recommend queue (the pipeline's train step; poll GET /v1/jobs/{job_id})")
def train(req: TrainRequest, settings: Settings = Depends(get_settings),
          store: ArtifactStore = Depends(get_store)) -> TrainJob:
    return start_training(store, settings, req)


@router.get("/jobs/{job_id}", response_model=TrainJob, summary="State of a training job")
def job(job_id: str, settings: Settings = Depends(get_settings)) -> TrainJob:
    return job_status(settings, job_id)


def create_app() -> FastAPI:
    app = service_app(
        "recommender",
        "Visual recommenders trained by the pipeline: top-K lists, what-if scoring with "
        "replaced item features, seller image refresh (per-model overlay), training jobs.",
        router,
    )
    return app


app = create_app()
