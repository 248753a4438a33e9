"""Serving trained recommenders: lineage, overlays, what-if scores and seller image refreshes.

A :class:`ModelContext` is a ``train`` artifact loaded with what serving needs: the dataset it was
trained on, the training-pair index, the user index and its *overlay*: per-model item rows
(features, region features, images, classes) replaced through the image endpoint, kept in
``<home>/overlays/<model_key>/overlay.npz`` (replaced atomically). Scores with an overlay use the
model's stored (scaled) item side with the overlay rows scaled by the model's clean scale, exactly
as if the model had been given the full replaced item side.
"""

from __future__ import annotations

import hashlib
import io
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from advrec_common.datasets.artifact import load_dataset_artifact
from advrec_common.datasets.images import load_catalog_images, resize_batch, resize_image, to_tensor
from advrec_common.errors import InvalidInput, NotFound
from advrec_common.schemas import ImageRefreshResponse, ItemScoreChange
from advrec_common.store import ArtifactStore, atomic_write
from advrec_common.vision.artifact import load_extractor_artifact
from services.recommender.artifacts import load_model, train_lineage
from services.recommender.models.base import Recommender
from services.recommender.pairs import PairIndex

DEFAULT_RANK_USERS = 5
OVERLAY_LOCK = threading.Lock()


# -- lineage: which dataset / features / extractor a model came from ------------------------------
def _dep(deps: dict[str, Any], role: str) -> str | None:
    """The key of input ``role`` in a meta ``deps`` map (by role, or by a step name ``role/...``)."""
    if isinstance(deps.get(role), str):
        return deps[role]
    hits = [k for n, k in deps.items() if n.startswith(role + "/") and isinstance(k, str)]
    return hits[0] if hits else None


def lineage(store: ArtifactStore, key: str) -> dict[str, Any]:
    """{'dataset', 'features', 'extractor', 'image_size'} of train artifact ``key`` (None where unknown)."""
    own = train_lineage(store, key)
    if own is not None:
        return own
    deps = store.meta(key).get("deps") or {}  # artifacts written before lineage.json existed
    features = _dep(deps, "features")
    fmeta = store.meta(features) if features and store.has(features) else {}
    return {"dataset": _dep(deps, "dataset"), "features": features,
            "extractor": _dep(fmeta.get("deps") or {}, "extractor"),
            "image_size": (fmeta.get("params") or {}).get("image_size")}


@lru_cache(maxsize=8)
def _pairs_cached(root: str, dataset_key: str) -> tuple[PairIndex, dict[str, int]]:
    ds = load_dataset_artifact(ArtifactStore(root), dataset_key)
    return PairIndex(ds.train, "cpu"), {u: i for i, u in enumerate(ds.user_ids)}


class ModelContext:
    """A loaded model with its dataset, training-pair index, user index and overlay directory."""

    def __init__(self, store: ArtifactStore, home: Path, key: str):
        self.store, self.key = store, key
        self.lineage = lineage(store, key)
        if self.lineage["dataset"] is None:
            raise NotFound(f"model {key}: its dataset is unknown")
        self.model: Recommender = load_model(store, key)
        self.dataset = load_dataset_artifact(store, self.lineage["dataset"])
        self.pairs, self.user_index = _pairs_cached(str(store.root), self.lineage["dataset"])
        self.overlay_dir = Path(home) / "overlays" / key

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
        buf = io.BytesIO()
        np.savez(buf, **data)
        atomic_write(self.overlay_dir / "overlay.npz", buf.getvalue())

    def item_state(self, *layers: dict[str, np.ndarray]) -> Any:
        """The model's item state with every layer's rows replaced (None: the stored items as they are)."""
        layers = tuple(layer for layer in layers if layer)
        if not layers:
            return None
        m = self.model
        prepared = {f: t.clone() for f, t in m._stored().items()}
        if "images" in m.needs:
            prepared["images"] = torch.from_numpy(np.array(load_catalog_images(self.dataset.catalog))).permute(0, 3, 1, 2)
        for layer in layers:
            idx = torch.as_tensor(layer["items"], dtype=torch.long)
            if "features" in prepared and "features" in layer:
                prepared["features"][idx] = torch.as_tensor(layer["features"]).to(m.device) / m.feature_scale
            if "spatial" in prepared and "spatial" in layer:
                rows = torch.as_tensor(layer["spatial"]).flatten(2).transpose(1, 2)
                prepared["spatial"][idx] = rows.to(m.device) / m.spatial_scale
            if "images" in prepared and "images" in layer:
                prepared["images"][idx] = torch.as_tensor(layer["images"]).permute(0, 3, 1, 2)
            if "categories" in prepared and "classes" in layer:
                prepared["categories"][idx] = torch.as_tensor(layer["classes"]).to(m.device)
        was_training = m.training
        m.eval()
        try:
            with torch.no_grad():
                return m._item_state({k: v.to(m.device) for k, v in prepared.items()})
        finally:
            m.train(was_training)

    def scores(self, users: torch.Tensor, state: Any) -> torch.Tensor:
        """(U,I) scores of ``users`` against an item state (None: the stored items)."""
        m = self.model
        if state is None:
            state = m.item_state(None)
        return m.score_with_state(users.to(m.device), state)


def top_items(ctx: ModelContext, users: torch.Tensor, k: int, state: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores (U,k), items (U,k)) best first, training items excluded; unfillable slots hold -1."""
    if not 1 <= int(k) <= ctx.model.n_items:
        raise InvalidInput(f"k must be in [1, {ctx.model.n_items}], got {k}")
    scores = ctx.pairs.mask_(ctx.scores(users, state).float().cpu(), users)
    top_s, top_i = torch.topk(scores, int(k), dim=1)
    return top_s, top_i.masked_fill(torch.isneginf(top_s), -1)


def ranks_of(masked: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """masked (U,I) scores with training items at -inf, values (U,M) -> 1 + #items scored higher (U,M)."""
    ordered = masked.sort(dim=1).values
    higher = masked.shape[1] - torch.searchsorted(ordered, values.contiguous(), right=True)
    return higher + 1


def score_changes(ctx: ModelContext, users: torch.Tensor, items: torch.Tensor, before_state: Any, after_state: Any,
                  user_ids: list[str], user_batch: int = 512) -> list[ItemScoreChange]:
    """Score and rank of ``items`` (M,) for ``users`` (U,) under two item states (users scored
    ``user_batch`` at a time against the whole catalog: memory bounded whatever U).

    InvalidInput when the new state's scores are not finite (features that overflow the model)."""
    rows = []
    for state in (before_state, after_state):
        parts = []
        for block in users.split(user_batch):
            scores = ctx.scores(block, state).float().cpu()
            masked = ctx.pairs.mask_(scores.clone(), block)
            vals = scores[:, items]
            parts.append((vals, ranks_of(masked, vals), torch.isneginf(masked[:, items])))
        rows.append(tuple(torch.cat(col) for col in zip(*parts, strict=True)))
    (s0, r0, t0), (s1, r1, t1) = rows
    if not torch.isfinite(s1).all():
        raise InvalidInput(f"the new features make {ctx.model.name}'s scores overflow (not finite); "
                           "give features of the extractor's scale")
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
    """Re-extract an item's new image (H,W,3) uint8 with the model's extractor and store it in the overlay."""
    needs = ctx.model.needs
    if not needs & {"features", "spatial", "images"}:
        raise InvalidInput(f"{ctx.model.name} does not read item images or features; an image changes nothing")
    item = ctx.item(item_id)
    if ctx.lineage["extractor"] is None or ctx.lineage["features"] is None:
        raise NotFound(f"model {ctx.key}: its extractor / features artifacts are unknown")
    extractor = load_extractor_artifact(ctx.store, ctx.lineage["extractor"])
    x = to_tensor(image[None]).contiguous()
    if ctx.lineage.get("image_size"):
        x = resize_batch(x, int(ctx.lineage["image_size"]))
    was_training = extractor.training
    extractor.to(device).eval()
    try:
        with torch.inference_mode():
            out = extractor.forward_all(x.to(device), spatial="spatial" in needs)
    finally:
        extractor.to("cpu").train(was_training)
    probs = out.logits.float().softmax(dim=1).max(dim=1)
    row: dict[str, np.ndarray] = {
        "items": np.asarray([item], dtype=np.int64),
        "features": out.features.float().cpu().numpy(),
        "classes": probs.indices.cpu().numpy().astype(np.int64),
        "probs": probs.values.cpu().numpy().astype(np.float32),
        "sha256": np.asarray([hashlib.sha256(image.tobytes()).hexdigest()]),
    }
    if out.spatial is not None:
        row["spatial"] = out.spatial.float().cpu().numpy()
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
    with OVERLAY_LOCK:
        old = ctx.overlay()
        merged = merge_overlay(old, row)
        changes = score_changes(ctx, users, torch.as_tensor([item]), ctx.item_state(old), ctx.item_state(merged),
                                user_ids)
        ctx.write_overlay(merged)  # only after everything above succeeded
    cls = int(row["classes"][0])
    return ImageRefreshResponse(model=ctx.key, item_id=item_id, class_name=extractor.class_names[cls],
                                probability=float(row["probs"][0]), overlay_items=len(merged["items"]), ranks=changes)


def merge_overlay(old: dict[str, np.ndarray], row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Overlay with ``row``'s item replaced (or appended)."""
    if not old:
        return row
    keep = old["items"] != row["items"][0]
    if set(old) != set(row):
        raise InvalidInput("overlay fields differ from the new row; delete the model's overlay and retry")
    return {k: np.concatenate([old[k][keep], row[k]]) for k in row}
