"""What the step functions share: the dataset and item sides they read, perturbed item sides, fitting and
ranking R replicates, the image size features were extracted at, and re-extracting drawn images.

Glue like the steps themselves (:mod:`advrec.pipeline.steps`, :mod:`advrec.pipeline.promotion_steps`):
each helper reads artifacts through the producing domain's artifact module and calls the domains.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from advrec.pipeline.context import StepContext
from advrec_common.datasets.artifact import load_dataset_artifact
from advrec_common.datasets.images import load_catalog_images, to_tensor
from advrec_common.datasets.types import RecDataset
from advrec_common.vision.artifact import load_extractor_artifact
from advrec_common.vision.defenses.base import Defense
from advrec_common.vision.model import ImageModel
from services.attacker.artifacts import Perturbation
from services.extractor.artifacts import FeatureSet
from services.recommender.items import ItemSide


def item_side(feats: FeatureSet | None, ds: RecDataset, needs: frozenset[str], features: np.ndarray | None = None,
               spatial: np.ndarray | None = None, images: np.ndarray | None = None) -> ItemSide | None:
    """ItemSide for a recommender from (possibly attacked) features / images (None: it reads no item side)."""
    if not needs:
        return None
    f = spatial_t = img_t = cat_t = None
    if "features" in needs:
        f = torch.tensor(np.array(features if features is not None else feats.features), dtype=torch.float32)
    if "spatial" in needs:
        sp = np.array(spatial if spatial is not None else feats.spatial)
        spatial_t = torch.as_tensor(sp, dtype=torch.float32).flatten(2).transpose(1, 2).contiguous()  # (I,R,D')
    if "images" in needs:
        imgs = images if images is not None else pixel_images(ds)
        img_t = torch.as_tensor(np.ascontiguousarray(imgs)).permute(0, 3, 1, 2).contiguous()
    if "categories" in needs:
        cat_t = torch.tensor(np.array(feats.categories), dtype=torch.int64)
    return ItemSide(features=f, spatial=spatial_t, images=img_t, categories=cat_t)


# A pixel recommender's CNN (DVBPR: CNN-F scaled down for 64 px) sees images of file catalogs at this
# size (in-memory catalogs, like the demo's, at their own); attacked images, delivered at the
# extractor's size, are resized to it like any upload.
PIXEL_RECOMMENDER_SIZE = 64


def pixel_images(ds: RecDataset) -> np.ndarray:
    """(I,S,S,3) uint8 images for a recommender that learns from pixels."""
    return load_catalog_images(ds.catalog, size=None if ds.catalog.images is not None else PIXEL_RECOMMENDER_SIZE)


def at_size(images: np.ndarray, size: int) -> np.ndarray:
    """(N,H,W,3) uint8 square images -> (N,size,size,3) (unchanged when already that size)."""
    from advrec_common.datasets.images import resize_image

    if images.shape[1] == size:
        return images
    return np.stack([resize_image(im, size) for im in images]) if len(images) else images


def dataset_of(ctx: StepContext) -> RecDataset:
    return load_dataset_artifact(ctx.store, ctx.input("dataset"))


def fit_replicates_of(rec_name: str, config: dict[str, Any], seeds: list[int], ds: RecDataset,
                    items: list[ItemSide], device: str, progress: Any = None) -> list[tuple[Any, Any]]:
    """One fitted model per seed; replicate r trains on ``items[r]`` with seed ``seeds[r]``.

    When every replicate sees the same item side (the clean models, an attack, the oracle), the seeds
    train as one batched model (:func:`services.recommender.replicates.fit_replicates`, results equal
    to separate fits); a placebo gives each replicate its own draw, so its seeds are fitted one by one.
    """
    from services.recommender.config import parse_config
    from services.recommender.models import RECOMMENDERS
    from services.recommender.replicates import fit_replicates

    cfg = {**config, "device": device}
    epochs = int(parse_config(cfg).resolved(RECOMMENDERS[rec_name].DEFAULTS).epochs or 0)
    done = [0]

    def epoch_done(_record: dict[str, Any]) -> None:  # the step's progress in epochs of all replicates
        done[0] += 1
        if progress is not None:
            progress({"done": done[0], "total": epochs * len(seeds), "unit": "epochs"})

    if all(side is items[0] for side in items):
        return fit_replicates(rec_name, ds.n_users, ds.n_items, cfg, seeds, ds.train, items[0], progress=epoch_done)
    out = []
    for seed, side in zip(seeds, items, strict=True):
        out += fit_replicates(rec_name, ds.n_users, ds.n_items, cfg, [seed], ds.train, side, progress=epoch_done)
    return out


def ranked(model: Any, ds: RecDataset, ks: list[int], max_k: int, items: ItemSide | None = None):
    """(top-max_k lists (U,max_k), accuracy means) in one scoring pass."""
    from services.recommender.metrics.accuracy import rank_and_evaluate

    top, acc = rank_and_evaluate(model, ds.train, ds.test, [k for k in ks if k <= ds.n_items], max_k=max_k,
                                 items=items)
    return top, means(acc)


def seeds_of(p: dict[str, Any]) -> list[int]:
    """The replicates' seeds: seed, seed+1, ..., seed+R-1."""
    return [int(p["seed"]) + r for r in range(int(p.get("replicates", 1)))]


def means(acc: dict[str, Any]) -> dict[str, float]:
    """Scalar means of an accuracy result (drops the per-user vectors)."""
    return {k: float(v) for k, v in acc.get("means", acc).items() if isinstance(v, int | float | np.floating)}


def average(dicts: list[dict[str, float]]) -> dict[str, float]:
    """Key-wise mean of numeric dicts (keys present in every one)."""
    keys = set(dicts[0]).intersection(*dicts[1:]) if dicts else set()
    return {k: float(np.mean([d[k] for d in dicts])) for k in sorted(keys)}


def ks_up_to(max_k: int) -> list[int]:
    return sorted({k for k in (5, 10, 20, 50, 100) if k <= max_k} | {max_k})


def as_json(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    return obj.to_dict() if hasattr(obj, "to_dict") else obj


def few(names: list[str], n: int = 20) -> str:
    return ", ".join(repr(x) for x in names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def feature_image_size(feats: Any, params: dict[str, Any]) -> tuple[int | None, str]:
    """The size and fit the clean features were extracted at (older artifacts: the spec's image_size, crop):
    attacks and controls must load the catalog images exactly so."""
    return feats.category_info.get("image_size", params.get("image_size")), feats.category_info.get("fit", "crop")


def defense_of(ctx: StepContext) -> Defense | None:
    """The defense rung in front of the step's extractor (its ``defense`` input), or None."""
    if not ctx.has_input("defense"):
        return None
    from advrec_common.vision.defenses.artifact import load_defense_artifact

    return load_defense_artifact(ctx.store, ctx.input("defense"), extractor=ctx.input("extractor"))


def behind(model: ImageModel, defense: Defense | None, adaptive: bool = False, seed: int | None = None) -> ImageModel:
    """``model`` behind ``defense`` as the shop deploys it (a random defense drawing from a generator seeded
    with ``seed``: :func:`draw_seed`), or as the adaptive attacker differentiates it (``adaptive``); ``model``
    itself without a defense."""
    if defense is None:
        return model
    from advrec_common.vision.defenses.defended import defend

    return defend(model, defense, adaptive=adaptive, seed=None if adaptive else seed)


def step_seed(name: str) -> int:
    """A seed from a step's name (stable across processes, runs and ``--jobs``)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") & (2**63 - 1)


def draw_seed(ctx: StepContext) -> int:
    """The seed of a step's deployed random defense: its name's, so its draws are the same in every process,
    whatever that process loaded or computed before."""
    return step_seed(ctx.step.name)


def deployed_extractor(ctx: StepContext) -> ImageModel:
    """The step's extractor as the shop runs it: behind its rung's defense when it has one."""
    return behind(load_extractor_artifact(ctx.store, ctx.input("extractor")), defense_of(ctx), seed=draw_seed(ctx))


def keep_flagged_clean(model: ImageModel, images: np.ndarray, items: np.ndarray, features: np.ndarray,
                       spatial: np.ndarray | None, clean: FeatureSet,
                       device: str = "cpu") -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """A detector rung's rule for uploads: an image it flags keeps its item's previous (clean) features.

    images (N,H,W,3) uint8 (or float [0,1]) uploads of catalog rows ``items``, ``features`` (N,D) and ``spatial``
    as extracted -> (features, spatial, flagged (N,) bool); no detector in front of ``model``: unchanged, None."""
    from advrec_common.vision.defenses.defended import DefendedModel

    if not isinstance(model, DefendedModel) or not model.defense.detects or len(items) == 0:
        return features, spatial, None
    x = to_tensor(images) if images.dtype == np.uint8 else torch.as_tensor(np.ascontiguousarray(
        images.transpose(0, 3, 1, 2)), dtype=torch.float32)
    flags = []
    model = model.to(device)
    try:
        for i in range(0, x.shape[0], 64):
            flags.append(model.screen(x[i : i + 64].to(device)).flagged.cpu())
    finally:
        model.cpu()
    flagged = torch.cat(flags).numpy().astype(bool)
    features = np.array(features, copy=True)
    features[flagged] = np.asarray(clean.features)[np.asarray(items)[flagged]]
    if spatial is not None and clean.spatial is not None:
        spatial = np.array(spatial, copy=True)
        spatial[flagged] = np.asarray(clean.spatial)[np.asarray(items)[flagged]]
    return features, spatial, flagged


def extract_draws(ctx: StepContext, clean: np.ndarray, images: np.ndarray, spatial: bool, items: np.ndarray,
                  feats: FeatureSet) -> tuple[np.ndarray, np.ndarray | None, list[dict[str, float]]]:
    """Features (R',N,D), maps (R',N,D',h,w) or None, and the perturbation sizes of (R',N,H,W,3) uploaded
    images of catalog rows ``items`` (their clean images ``clean``), through the step's extractor as deployed
    (behind its rung's defense; a detector's flagged uploads keep their clean features ``feats``); behind a
    detector every size dict also holds the share of uploads it flagged (``flagged``)."""
    from services.attacker.controls import perturbation_size
    from services.extractor.extraction import extract_features

    model = deployed_extractor(ctx)
    rows, maps, sizes = [], [], []
    for r in range(images.shape[0]):
        x = images[r] if images.dtype == np.uint8 else np.ascontiguousarray(images[r].transpose(0, 3, 1, 2))
        res = extract_features(model, x, device=ctx.device, spatial=spatial)
        f, sp, flagged = keep_flagged_clean(model, images[r], items, res.features, res.spatial, feats, ctx.device)
        rows.append(f)
        if sp is not None:
            maps.append(sp)
        sizes.append({**perturbation_size(clean, images[r]),
                      **({"flagged": float(flagged.mean())} if flagged is not None else {})})
        ctx.report_progress(r + 1, images.shape[0], "draws")
    return np.stack(rows), np.stack(maps) if maps else None, sizes


def perturbed(clean: ItemSide, pert: Perturbation, draw: int, needs: frozenset[str]) -> ItemSide:
    """The clean item side with the perturbation's rows of one draw replaced (only the fields ``needs``)."""
    if len(pert.items) == 0:
        return clean
    idx = torch.as_tensor(pert.items, dtype=torch.long)
    changes: dict[str, torch.Tensor] = {}
    if "features" in needs and pert.features is not None:
        f = clean.features.clone()
        f[idx] = torch.as_tensor(pert.features[draw], dtype=torch.float32)
        changes["features"] = f
    if "spatial" in needs and pert.spatial is not None:
        sp = clean.spatial.clone()
        sp[idx] = torch.as_tensor(pert.spatial[draw], dtype=torch.float32).flatten(2).transpose(1, 2)
        changes["spatial"] = sp
    if "images" in needs and pert.images is not None:  # delivered at the extractor's size: resized like an upload
        im = clean.images.clone()
        rows = at_size(pert.images[draw], int(im.shape[-1]))
        im[idx] = torch.as_tensor(np.ascontiguousarray(rows)).permute(0, 3, 1, 2)
        changes["images"] = im
    return clean.replace(**changes) if changes else clean
