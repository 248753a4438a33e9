"""The step functions of the study DAG: glue from artifacts to the services' domain code.

Each function reads its inputs by role (``ctx.input("features")``) through the producing domain's
artifact module, calls the domain (extractor, attacker, recommender) and writes its outputs into
``ctx.out`` with that domain's writer; the executor turns that folder into the step's artifact
atomically. Artifact loaders are cached per key, so a process that runs many steps (a worker, the
in-process executor) loads each model once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from advrec.pipeline.context import StepContext
from advrec.pipeline.dag import cell_name, train_name
from advrec.pipeline.spec import AttackGridSpec
from advrec.report.collect import RunArtifacts, check_spec
from advrec_common.datasets.artifact import load_dataset_artifact, write_dataset_artifact
from advrec_common.datasets.images import load_catalog_images, to_tensor
from advrec_common.datasets.types import RecDataset
from advrec_common.errors import InvalidInput, NotFound
from advrec_common.store import ArtifactStore
from advrec_common.vision.artifact import load_extractor_artifact, write_extractor_artifact
from services.attacker.artifacts import (
    Perturbation,
    load_adversarial,
    load_perturbation,
    merge_shards,
    read_shard,
    write_oracle,
    write_placebo,
    write_shard,
)
from services.extractor.artifacts import FeatureSet, category_model, load_features, write_catalog_features
from services.recommender.artifacts import (
    load_model,
    load_scenario,
    load_topk,
    write_evaluation,
    write_scenario,
    write_train_artifact,
)
from services.recommender.items import ItemSide
from services.recommender.kinds import RECOMMENDER_NEEDS, reads_items, uses_extractor


def _item_side(feats: FeatureSet | None, ds: RecDataset, needs: frozenset[str], features: np.ndarray | None = None,
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
        imgs = images if images is not None else _pixel_images(ds)
        img_t = torch.as_tensor(np.ascontiguousarray(imgs)).permute(0, 3, 1, 2).contiguous()
    if "categories" in needs:
        cat_t = torch.tensor(np.array(feats.categories), dtype=torch.int64)
    return ItemSide(features=f, spatial=spatial_t, images=img_t, categories=cat_t)


# A pixel recommender's CNN (DVBPR: CNN-F scaled down for 64 px) sees images of file catalogs at this
# size (in-memory catalogs, like the demo's, at their own); attacked images, delivered at the
# extractor's size, are resized to it like any upload.
PIXEL_RECOMMENDER_SIZE = 64


def _pixel_images(ds: RecDataset) -> np.ndarray:
    """(I,S,S,3) uint8 images for a recommender that learns from pixels."""
    return load_catalog_images(ds.catalog, size=None if ds.catalog.images is not None else PIXEL_RECOMMENDER_SIZE)


def _at_size(images: np.ndarray, size: int) -> np.ndarray:
    """(N,H,W,3) uint8 square images -> (N,size,size,3) (unchanged when already that size)."""
    from advrec_common.datasets.images import resize_image

    if images.shape[1] == size:
        return images
    return np.stack([resize_image(im, size) for im in images]) if len(images) else images


def _dataset(ctx: StepContext) -> RecDataset:
    return load_dataset_artifact(ctx.store, ctx.input("dataset"))


# ----------------------------------------------------------------------------------------------
# steps


def step_dataset(ctx: StepContext) -> None:
    """Load or generate the catalog + interactions; store indices, ids and (in-memory) images."""
    p = ctx.params
    if p["kind"] == "demo":
        from advrec_common.datasets.demo import DemoConfig, make_demo_dataset

        ds = make_demo_dataset(DemoConfig(n_items=p["n_items"], n_users=p["n_users"], image_size=p["image_size"],
                                          seed=p["seed"]))
    elif p["kind"] == "study":
        from advrec_common.datasets.study_layout import load_study_dataset

        ds = load_study_dataset(p["root"])
    else:
        from advrec_common.datasets.generic_layout import (
            CategoryColumns,
            InteractionColumns,
            load_generic_dataset,
        )

        ds = load_generic_dataset(p["images_dir"], p["interactions"], p.get("categories"), kcore=p.get("kcore", 0),
                                  columns=InteractionColumns.model_validate(p.get("columns", {})),
                                  category_columns=CategoryColumns.model_validate(p.get("category_columns", {})))
    # the executor reads n_items from the artifact's meta.json to plan the attack shards
    ctx.meta.update(write_dataset_artifact(ctx.out, ds))


def step_extractor(ctx: StepContext) -> None:
    """Train (demo; train: on the catalog's images and labels) or load (checkpoint, named weight) an
    extractor; store it as an extractor artifact."""
    from services.extractor.weights import load_extractor, resolve_named_weights

    p = ctx.params
    if p["source"] == "demo":
        from services.extractor.demo_extractors import DEMO_N_PER_CLASS, train_demo_extractor

        model, report, model_key = train_demo_extractor(
            ctx.store, p["defense"], n_per_class=p["demo_images_per_class"] or DEMO_N_PER_CLASS, seed=p["seed"],
            device=ctx.device, image_size=p["image_size"], epochs=p["epochs"], progress=ctx.progress,
        )
        write_extractor_artifact(ctx.out, model, p["source"], report.model_dump(mode="json"), model_key=model_key)
        return
    if p["source"] == "train":
        from advrec_common.settings import get_settings
        from advrec_common.vision.backbones import backbone
        from services.extractor.catalog_training import train_on_catalog
        from services.extractor.train_config import TrainOverrides

        init = resolve_named_weights(p["init_weights"], get_settings().resolved_weights_dir) \
            if p.get("init_weights") else None
        config = TrainOverrides.model_validate(p.get("training") or {}).config(p["defense"], p["epochs"], p["seed"])
        size = p["image_size"] or backbone(p["backbone"]).input_size
        model, report = train_on_catalog(_dataset(ctx).catalog, p["backbone"], config, size,
                                         fit=p.get("image_fit", "crop"), init=init, device=ctx.device,
                                         progress=ctx.progress)
        write_extractor_artifact(ctx.out, model.cpu(), p["source"], report.model_dump(mode="json"))
        return
    if p["source"] == "checkpoint":
        model = load_extractor(p["checkpoint"], backbone=p["backbone"], layout=p["layout"])
    else:
        from advrec_common.settings import get_settings

        model = resolve_named_weights(p["weight_name"], get_settings().resolved_weights_dir)
    write_extractor_artifact(ctx.out, model, p["source"])


def step_features(ctx: StepContext) -> None:
    """Clean features, predicted classes and probabilities of every catalog image."""
    model = load_extractor_artifact(ctx.store, ctx.input("extractor"))
    ctx.meta.update(write_catalog_features(ctx.out, _dataset(ctx), model, ctx.params, ctx.device, ctx.progress))


def _fit_replicates(rec_name: str, config: dict[str, Any], seeds: list[int], ds: RecDataset,
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


def _ranked(model: Any, ds: RecDataset, ks: list[int], max_k: int, items: ItemSide | None = None):
    """(top-max_k lists (U,max_k), accuracy means) in one scoring pass."""
    from services.recommender.metrics.accuracy import rank_and_evaluate

    top, acc = rank_and_evaluate(model, ds.train, ds.test, [k for k in ks if k <= ds.n_items], max_k=max_k,
                                 items=items)
    return top, _means(acc)


def _seeds(p: dict[str, Any]) -> list[int]:
    """The replicates' seeds: seed, seed+1, ..., seed+R-1."""
    return [int(p["seed"]) + r for r in range(int(p.get("replicates", 1)))]


def _means(acc: dict[str, Any]) -> dict[str, float]:
    """Scalar means of an accuracy result (drops the per-user vectors)."""
    return {k: float(v) for k, v in acc.get("means", acc).items() if isinstance(v, int | float | np.floating)}


def _average(dicts: list[dict[str, float]]) -> dict[str, float]:
    """Key-wise mean of numeric dicts (keys present in every one)."""
    keys = set(dicts[0]).intersection(*dicts[1:]) if dicts else set()
    return {k: float(np.mean([d[k] for d in dicts])) for k in sorted(keys)}


def _ks_for(max_k: int) -> list[int]:
    return sorted({k for k in (5, 10, 20, 50, 100) if k <= max_k} | {max_k})


def _dump(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    return obj.to_dict() if hasattr(obj, "to_dict") else obj


def step_train(ctx: StepContext) -> None:
    """Train a recommender R times (its seeds) on clean features; store the models, lists and accuracy."""
    import time

    p = ctx.params
    ds = _dataset(ctx)
    needs = RECOMMENDER_NEEDS[p["recommender"]]
    # DVBPR learns from pixels: its clean model has no features input
    feats_key = ctx.input("features") if ctx.has_input("features") else None
    feats = load_features(ctx.store, feats_key) if feats_key else None
    items = _item_side(feats, ds, needs)
    seeds = _seeds(p)
    t0 = time.perf_counter()
    fitted = _fit_replicates(p["recommender"], p["config"], seeds, ds, [items] * len(seeds), ctx.device, ctx.progress)
    fit_seconds = time.perf_counter() - t0
    k = min(p["max_k"], ds.n_items)
    ranked = [_ranked(model, ds, _ks_for(p["max_k"]), k) for model, _ in fitted]
    tops = np.stack([top.numpy() for top, _ in ranked])
    accs = [acc for _, acc in ranked]
    lineage = {"dataset": ctx.input("dataset"), "features": feats_key, "extractor": None, "image_size": None}
    if feats_key:
        fmeta = ctx.store.meta(feats_key)
        lineage.update(extractor=fmeta.get("deps", {}).get("extractor"), image_size=fmeta["params"].get("image_size"))
    info = {"fit_seconds": fit_seconds, "seeds": seeds, "reports": [_dump(r) for _, r in fitted],
            "accuracy": _average(accs), "accuracy_per_replicate": accs}
    write_train_artifact(ctx.out, [m for m, _ in fitted], tops, info, lineage)


def step_scenario(ctx: StepContext) -> None:
    """Origin (category to push) and target (category to imitate), from the spec or the clean run.

    Categories are the features' (catalog labels or extractor classes: ``scenario.category_source``);
    every category is a valid target, since attacks aim at a head whose classes are the categories.
    """
    from services.recommender.scenario import propose_scenario, scenario_warnings

    p = ctx.params
    feats = load_features(ctx.store, ctx.input("features"), arrays=False)
    names = feats.category_names
    info = feats.category_info
    origin, target = p.get("origin"), p.get("target")
    source = "the catalog's labels" if info.get("used") == "catalog" else "the extractor's classes"
    for label, value in (("origin", origin), ("target", target)):
        if value is not None and value not in names:
            raise InvalidInput(f"scenario.{label} {value!r} is not a category; categories ({source}): "
                               f"{_few(names)}")
    if origin is not None and origin == target:
        raise InvalidInput(f"scenario.origin and scenario.target are both {origin!r}; they must differ")
    tops = load_topk(ctx.store, ctx.input("train"))
    top = tops.reshape(-1, tops.shape[-1])  # every replicate's lists: the ranking averages over seeds
    try:  # min_items only constrains an origin chosen here
        proposal = propose_scenario(torch.as_tensor(top), torch.tensor(np.array(feats.categories)), names,
                                    k=p["select_k"], min_items=p["min_items"] if origin is None else 1)
    except InvalidInput as exc:
        counts = np.bincount(np.asarray(feats.categories), minlength=len(names))
        raise InvalidInput(f"{exc} (scenario.min_items = {p['min_items']}; items per category, from {source}: "
                           + ", ".join(f"{n} {int(c)}" for n, c in zip(names, counts, strict=True) if c)[:400]
                           + ")") from None
    by_name = {r["name"]: r for r in proposal["table"]}
    if origin is not None and by_name[origin]["n_items"] == 0:
        raise InvalidInput(f"scenario.origin {origin!r} has no items (categories from {source}), so there is "
                           f"nothing to attack; items per category: "
                           + ", ".join(f"{r['name']} {r['n_items']}" for r in proposal["table"] if r["n_items"])[:400])
    if origin is None:  # the least exposed category with items, other than a given target
        rows = [r for r in proposal["table"] if r["n_items"] >= p["min_items"] and r["name"] != target]
        if not rows:
            raise InvalidInput(f"no category other than {target!r} has scenario.min_items = {p['min_items']} items "
                               f"to push; lower scenario.min_items or name scenario.origin")
        origin = proposal["origin"]["name"] if proposal["origin"]["name"] != target else \
            min(rows, key=lambda r: (r["chr"], -r["n_items"], r["id"]))["name"]
    if target is None:  # the most exposed category other than the origin
        target = next((r["name"] for r in proposal["table"] if r["name"] != origin and r["n_items"] > 0), None)
        if target is None:
            raise InvalidInput(f"no category other than {origin!r} has items to serve as target; "
                               f"categories ({source}): {_few(names)}")
    chosen_by = {(True, True): "spec", (False, False): "automatic (clean CHR@K ranking, as the study)"}.get(
        (p.get("origin") is not None, p.get("target") is not None), "spec and automatic (clean CHR@K ranking)")
    warnings = scenario_warnings(proposal["table"], origin, target, p["select_k"],
                                 automatic_origin=p.get("origin") is None, min_items=p["min_items"],
                                 automatic_target=p.get("target") is None)
    write_scenario(ctx.out, {
        "origin": origin, "target": target, "chosen_by": chosen_by, "select_k": p["select_k"],
        # categories with items (and the two named): 1,000 ImageNet classes would be mostly empty rows
        "ranking": [r for r in proposal["table"] if r["n_items"] or r["name"] in (origin, target)],
        "warnings": warnings, "n_origin_items": by_name[origin]["n_items"],
        "category_source": {k: info.get(k) for k in ("requested", "used", "reason")},
        "head": {k: v for k, v in (info.get("head") or {}).items() if k != "class_names"},
    })


def _few(names: list[str], n: int = 20) -> str:
    return ", ".join(repr(x) for x in names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def step_attack_shard(ctx: StepContext) -> None:
    """Attack the origin-category items of one catalog index range toward the target category, through
    the head whose classes are the categories (:func:`category_model`), at the size the clean features
    were extracted at."""
    from services.attacker.core import attack_and_measure

    p = ctx.params
    ds = _dataset(ctx)
    feats = load_features(ctx.store, ctx.input("features"))
    model = category_model(load_extractor_artifact(ctx.store, ctx.input("extractor")), feats)
    scen = load_scenario(ctx.store, ctx.input("scenario"))
    for role in ("origin", "target"):
        if scen[role] not in feats.category_names:
            raise InvalidInput(f"scenario {role} {scen[role]!r} is not a category of extractor "
                               f"{ctx.step.name.split('/')[1]!r}; categories: {_few(feats.category_names)}")
    origin, target = feats.category_names.index(scen["origin"]), model.class_names.index(scen["target"])
    lo, hi = p["items"]
    idx = lo + np.flatnonzero(np.asarray(feats.categories)[lo:hi] == origin)
    ctx.report_progress(0, len(idx), "images")
    if len(idx) == 0:
        write_shard(ctx.out, idx)
        ctx.meta.update(n=0, seconds=0.0)
        return
    spec = AttackGridSpec.from_params(p).attack_spec(p["eps"], p["seed"])
    size, fit = _feature_image_size(feats, p)
    clean = to_tensor(load_catalog_images(ds.catalog, [int(i) for i in idx], size=size, fit=fit))
    extra = {}
    if spec.method == "feature_match":  # pulled toward the target category's clean features (their centroid)
        members = np.asarray(feats.categories) == feats.category_names.index(scen["target"])
        extra["target_features"] = torch.as_tensor(np.asarray(feats.features)[members])
    out = attack_and_measure(model, clean, spec, target, p["delivery"], p["jpeg_quality"], device=ctx.device,
                             clean_features=torch.as_tensor(np.asarray(feats.features)[idx]),
                             spatial=feats.spatial is not None, progress=ctx.progress, **extra)
    rows = out.measurement.to_table()
    for row, item in zip(rows, idx, strict=True):
        row["item"] = ds.catalog.item_ids[int(item)]
    write_shard(ctx.out, idx, out, rows, p["delivery"])
    ctx.meta.update(n=int(len(idx)), seconds=out.seconds, images_per_s=len(idx) / max(out.seconds, 1e-9),
                    image_size=size, head=feats.category_info.get("head", {}).get("kind"))


def _feature_image_size(feats: Any, params: dict[str, Any]) -> tuple[int | None, str]:
    """The size and fit the clean features were extracted at (older artifacts: the spec's image_size, crop):
    attacks and controls must load the catalog images exactly so."""
    return feats.category_info.get("image_size", params.get("image_size")), feats.category_info.get("fit", "crop")


def step_adversarial(ctx: StepContext) -> None:
    """Merge the shards: the attacked feature matrix (clean rows elsewhere) and the attack's summary."""
    ds = _dataset(ctx)
    feats = load_features(ctx.store, ctx.input("features"))
    keys = ctx.inputs("shards")  # in catalog order
    shards = [read_shard(ctx.store.open(k)) for k in keys]
    seconds = sum(ctx.store.meta(k)["result"].get("seconds", 0.0) for k in keys)
    merge_shards(ctx.out, feats.features, feats.spatial, shards, seconds, len(ds.catalog))


def step_placebo(ctx: StepContext) -> None:
    """R placebo draws of an attack cell: its delivered perturbations shuffled per image, re-extracted."""
    from services.attacker.controls import perturbation_size, placebo_images
    from services.extractor.extraction import extract_features

    p = ctx.params
    ds = _dataset(ctx)
    model = load_extractor_artifact(ctx.store, ctx.input("extractor"))
    feats = load_features(ctx.store, ctx.input("features"))
    adv = load_adversarial(ctx.store, ctx.input("adversarial"))
    items, draws = adv.items, int(p["draws"])
    dim = feats.features.shape[1]
    if len(items) == 0 or adv.images is None:
        empty = np.zeros((draws, 0, dim), np.float32)
        write_placebo(ctx.out, items, empty, None, np.zeros((draws, 0, 1, 1, 3), np.uint8), {"n": 0})
        return
    size, fit = _feature_image_size(feats, p)
    clean = load_catalog_images(ds.catalog, [int(i) for i in items], size=size, fit=fit)
    images = placebo_images(clean, adv.images, draws, int(p["seed"]), p["delivery"], int(p["jpeg_quality"]))
    rows, maps, sizes = [], [], []
    for r in range(draws):
        x = images[r] if images.dtype == np.uint8 else np.ascontiguousarray(images[r].transpose(0, 3, 1, 2))
        res = extract_features(model, x, device=ctx.device, spatial=bool(p["spatial"]))
        rows.append(res.features)
        if res.spatial is not None:
            maps.append(res.spatial)
        sizes.append(perturbation_size(clean, images[r]))
        ctx.report_progress(r + 1, draws, "draws")
    features = np.stack(rows)
    clean_rows = np.asarray(feats.features)[items]
    summary = {"n": int(len(items)), "draws": draws, **_average(sizes),
               "feat_mse": float(np.mean((features - clean_rows[None]) ** 2)),
               "attack_linf_255": adv.summary.get("linf_255"), "attack_l2_255": adv.summary.get("l2_255"),
               "attack_feat_mse": adv.summary.get("feat_mse")}
    write_placebo(ctx.out, items, features, np.stack(maps) if maps else None, images, summary)


def step_oracle(ctx: StepContext) -> None:
    """The positive control: origin items' features set to the target category's mean feature."""
    from services.attacker.controls import oracle_rows

    feats = load_features(ctx.store, ctx.input("features"))
    scen = load_scenario(ctx.store, ctx.input("scenario"))
    names = feats.category_names
    if scen["origin"] not in names or scen["target"] not in names:
        missing = [n for n in (scen["origin"], scen["target"]) if n not in names]
        raise InvalidInput(f"oracle: {missing} is not a category of the catalog's items under this extractor")
    origin, target = names.index(scen["origin"]), names.index(scen["target"])
    cats = np.asarray(feats.categories)
    items, rows = oracle_rows(feats.features, cats, origin, target)
    spatial = None
    if ctx.params.get("spatial") and feats.spatial is not None:
        spatial = oracle_rows(feats.spatial, cats, origin, target)[1]
    summary = {"n": int(len(items)), "n_target_items": int((cats == target).sum()),
               "feat_mse": float(np.mean((rows - np.asarray(feats.features)[items]) ** 2)) if len(items) else 0.0}
    write_oracle(ctx.out, items, rows, spatial, summary)


def _perturbed(clean: ItemSide, pert: Perturbation, draw: int, needs: frozenset[str]) -> ItemSide:
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
        rows = _at_size(pert.images[draw], int(im.shape[-1]))
        im[idx] = torch.as_tensor(np.ascontiguousarray(rows)).permute(0, 3, 1, 2)
        changes["images"] = im
    return clean.replace(**changes) if changes else clean


def _exposure(top_before: torch.Tensor, top_after: torch.Tensor, item_cat: torch.Tensor, origin: int,
              k: int) -> dict[str, tuple[float, float, np.ndarray, np.ndarray]]:
    """metric -> (value before, value after, per-user before, per-user after) of the origin category."""
    from services.recommender.metrics.category import chr_at_k, ncdcg_at_k

    fns = {"chr": lambda t: chr_at_k(t, item_cat, origin, k, form="normalized"),
           "chr_count": lambda t: chr_at_k(t, item_cat, origin, k, form="count"),
           "ncdcg": lambda t: ncdcg_at_k(t, item_cat, origin, k)}
    out = {}
    for metric, fn in fns.items():
        v0, u0 = fn(top_before)  # float64 throughout: equal count changes give equal differences
        v1, u1 = fn(top_after)
        out[metric] = (float(v0), float(v1), np.asarray(u0, dtype=np.float64), np.asarray(u1, dtype=np.float64))
    return out


def step_evaluate(ctx: StepContext) -> None:
    """Re-rank every replicate with the perturbed item side (retrain or deployment); measure the origin
    category's exposure per replicate, the effect across replicates and the study's test over users."""
    from services.recommender.metrics.category import rank_shift
    from services.recommender.metrics.effects import replicate_effect, user_effect_interval
    from services.recommender.metrics.significance import paired_tests

    p = ctx.params
    ds = _dataset(ctx)
    feats = load_features(ctx.store, ctx.input("features"))
    scen = load_scenario(ctx.store, ctx.input("scenario"))
    train_key = ctx.input("train")
    needs = RECOMMENDER_NEEDS[p["recommender"]]
    pert = load_perturbation(ctx.store, ctx.input("perturbation"))
    clean = _item_side(feats, ds, needs)
    seeds = _seeds(p)
    by_draw = {d: _perturbed(clean, pert, d, needs) for d in sorted({pert.draw(r) for r in range(len(seeds))})}
    sides = [by_draw[pert.draw(r)] for r in range(len(seeds))]  # one object per draw: one batched fit
    max_k = min(p["max_k"], ds.n_items)
    tops_before = torch.as_tensor(load_topk(ctx.store, train_key))
    if tops_before.shape[0] != len(seeds):
        raise InvalidInput(f"the clean model has {tops_before.shape[0]} replicates, the evaluation {len(seeds)}")
    tops_after, accs = [], []
    if p["mode"] == "retrain":
        for model, _ in _fit_replicates(p["recommender"], p["config"], seeds, ds, sides, ctx.device, ctx.progress):
            top, acc = _ranked(model, ds, p["ks"], max_k)
            tops_after.append(top)
            accs.append(acc)
    else:
        for r, side in enumerate(sides):
            top, acc = _ranked(load_model(ctx.store, train_key, r), ds, p["ks"], max_k, items=side)
            tops_after.append(top)
            accs.append(acc)
            ctx.report_progress(r + 1, len(sides), "models")
    origin = feats.category_names.index(scen["origin"])
    item_cat = torch.tensor(np.array(feats.categories), dtype=torch.int64)
    per_k = []
    for k in p["ks"]:
        if k > max_k:
            continue
        reps = [_exposure(tops_before[r], tops_after[r], item_cat, origin, k) for r in range(len(seeds))]
        row: dict[str, Any] = {"k": k}
        for metric in reps[0]:
            before = [rep[metric][0] for rep in reps]
            after = [rep[metric][1] for rep in reps]
            u0 = np.mean([rep[metric][2] for rep in reps], axis=0)  # per user, averaged over replicates
            u1 = np.mean([rep[metric][3] for rep in reps], axis=0)
            users = paired_tests(u0, u1)
            lo, hi = user_effect_interval(u1 - u0)
            row[metric] = {**replicate_effect(before, after), "before_per_replicate": before,
                           "after_per_replicate": after, "user_t_pvalue": users["t_pvalue"],
                           "user_wilcoxon_pvalue": users["wilcoxon_pvalue"], "user_ci_low": lo, "user_ci_high": hi,
                           "n_users": users["n"]}
        per_k.append(row)
    shift = None
    if len(pert.items):
        shifts = [rank_shift(tops_before[r], tops_after[r], torch.as_tensor(pert.items)) for r in range(len(seeds))]
        shift = _average(shifts)
    write_evaluation(ctx.out, torch.stack(tops_after).numpy(), {
        "mode": p["mode"], "control": p.get("control", "attack"), "recommender": p["recommender"],
        "origin": scen["origin"], "target": scen["target"], "n_perturbed": int(len(pert.items)),
        "n_replicates": len(seeds), "seeds": seeds, "per_k": per_k, "accuracy_after": _average(accs),
        "rank_shift": shift,
    })


def report_inputs(store: ArtifactStore, keys: dict[str, str], spec: dict[str, Any]) -> RunArtifacts:
    """The report's inputs by role, from the keys of a run's steps by name (the DAG's naming)."""
    spec = check_spec(spec)

    def key(name: str) -> str:
        if name not in keys:
            raise NotFound(f"report: the artifact of step {name!r} is not among the report's inputs")
        return keys[name]

    exts, recs = [e["name"] for e in spec["extractors"]], [r["name"] for r in spec["recommenders"]]
    modes = spec["modes"]
    cells = [(e, a["method"], float(eps)) for e in exts for a in spec["attacks"] for eps in a["eps"]]
    controls = spec.get("controls") or []
    evaluate: dict[tuple[str, Any, str, str], str] = {}
    for c in cells:
        for r in [r for r in recs if reads_items(r)]:  # BPR-MF: the clean accuracy table only
            for m in modes:
                evaluate["attack", c, r, m] = key(f"evaluate/{cell_name(*c)}/{r}/{m}")
                if "placebo" in controls:
                    evaluate["placebo", c, r, m] = key(f"evaluate/{cell_name(*c)}/placebo/{r}/{m}")
    if "oracle" in controls:
        for e in exts:
            for r in recs:
                if uses_extractor(r):
                    for m in modes:
                        evaluate["oracle", (e, "oracle", 0.0), r, m] = key(f"evaluate/{e}/oracle/{r}/{m}")
    return RunArtifacts(
        store=store, scenario=key("scenario"), dataset=keys.get("dataset"),
        extractors={e: key(f"extractor/{e}") for e in exts}, features={e: key(f"features/{e}") for e in exts},
        train={(e, r): key(train_name(e, r)) for e in exts for r in recs},
        adversarial={c: key(f"adversarial/{cell_name(*c)}") for c in cells},
        placebo={c: key(f"placebo/{cell_name(*c)}") for c in cells} if "placebo" in controls else {},
        oracle={e: key(f"oracle/{e}") for e in exts} if "oracle" in controls else {},
        evaluate=evaluate, uses_extractor={r: uses_extractor(r) for r in recs},
    )


def step_report(ctx: StepContext) -> None:
    """results.json, tables, findings and the HTML report of the whole run."""
    from advrec.report import build_report

    spec = ctx.params.get("spec")
    art = report_inputs(ctx.store, ctx.named_inputs(), spec)
    ctx.meta.update(build_report(art, spec, int(ctx.params.get("gallery_users", 1)), ctx.out))


STEP_FUNCTIONS: dict[str, Callable[[StepContext], None]] = {
    "dataset": step_dataset,
    "extractor": step_extractor,
    "features": step_features,
    "train": step_train,
    "scenario": step_scenario,
    "attack_shard": step_attack_shard,
    "adversarial": step_adversarial,
    "placebo": step_placebo,
    "oracle": step_oracle,
    "evaluate": step_evaluate,
    "report": step_report,
}
