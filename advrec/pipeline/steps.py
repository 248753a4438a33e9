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
from advrec.pipeline.dag import cell_name, promo_cell_name, train_name
from advrec.pipeline.spec import AttackGridSpec
from advrec.report.collect import RunArtifacts, check_spec
from advrec_common.datasets.artifact import load_dataset_artifact, write_dataset_artifact
from advrec_common.datasets.images import load_catalog_images, to_tensor, to_uint8
from advrec_common.datasets.types import RecDataset
from advrec_common.errors import InvalidInput, NotFound
from advrec_common.store import ArtifactStore
from advrec_common.vision.artifact import load_extractor_artifact, write_extractor_artifact
from services.attacker.artifacts import (
    Perturbation,
    load_adversarial,
    load_perturbation,
    load_promotion_attack,
    merge_shards,
    read_shard,
    write_oracle,
    write_placebo,
    write_promotion_attack,
    write_shard,
)
from services.extractor.artifacts import FeatureSet, category_model, load_features, write_catalog_features
from services.recommender.artifacts import (
    load_model,
    load_promoted_items,
    load_scenario,
    load_topk,
    write_evaluation,
    write_promoted_items,
    write_promotion_evaluation,
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
    Before any attack, the oracle (every origin item given a real target item's features) is measured
    in deployment for the candidate pairs (:func:`services.recommender.scenario.candidate_pairs`: the
    named categories, or the few least x most exposed); an automatic choice keeps the pair where it
    raises the origin's CHR@K most, and ``feasibility`` records whether even that rise is real.
    """
    from services.recommender.scenario import (
        candidate_pairs,
        choose_pair,
        propose_scenario,
        scenario_warnings,
    )

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
    if origin is None:
        rows = [r for r in proposal["table"] if r["n_items"] >= p["min_items"] and r["name"] != target]
        if not rows:
            raise InvalidInput(f"no category other than {target!r} has scenario.min_items = {p['min_items']} items "
                               f"to push; lower scenario.min_items or name scenario.origin")
    if target is None and not any(r["n_items"] > 0 and r["name"] != origin for r in proposal["table"]):
        raise InvalidInput(f"no category other than {origin!r} has items to serve as target; "
                           f"categories ({source}): {_few(names)}")
    k = int(p.get("k") or p["select_k"])
    n_candidates = int(p.get("candidates", 3))
    pairs = candidate_pairs(proposal["table"], origin=origin, target=target, min_items=p["min_items"], n=n_candidates)
    feasibility: dict[str, Any] = {"measured": False, "k": k, "mode": "deployment", "recommender": p["recommender"],
                                   "extractor": ctx.step.inputs.get("features", "").split("/", 1)[-1] or None}
    if "features" in RECOMMENDER_NEEDS[p["recommender"]] or "spatial" in RECOMMENDER_NEEDS[p["recommender"]]:
        measured = _oracle_in_deployment(ctx, load_features(ctx.store, ctx.input("features")), pairs, k,
                                         int(p.get("seed", 0)))
        chosen = choose_pair(measured)
        feasibility.update(measured=True, candidates=measured, chosen={x: chosen[x] for x in (
            "origin", "target", "effect", "ci_low", "ci_high", "p_value", "p_adjusted", "n_pairs", "before", "after")},
            feasible=bool(chosen["feasible"]))
        origin, target = chosen["origin"], chosen["target"]
    else:  # a pixel recommender: nothing to measure the feature oracle with
        feasibility["reason"] = f"{p['recommender']} does not read the extractor's features"
        origin, target = pairs[0]
    both = (p.get("origin") is not None, p.get("target") is not None)
    how = (f"the pair of {len(pairs)} candidates where the oracle raised the origin's CHR@{k} most in deployment"
           if feasibility["measured"] else "clean CHR@K ranking, as the study")
    chosen_by = {(True, True): "spec", (False, False): f"automatic ({how})"}.get(both, f"spec and automatic ({how})")
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
        "feasibility": feasibility,
    })


def _oracle_in_deployment(ctx: StepContext, feats: FeatureSet, pairs: list[tuple[str, str]], k: int,
                          seed: int) -> list[dict[str, Any]]:
    """Per (origin, target): the oracle's effect on the origin's CHR@k when every replicate of the clean
    model re-scores the catalog with the origin items disguised as real target items (a draw of its own,
    ``stream=1``, apart from the evaluation's). Rows carry the per-replicate values and the replicate test."""
    from services.attacker.controls import oracle_rows
    from services.recommender.metrics.category import chr_at_k
    from services.recommender.metrics.effects import replicate_effect

    ds = _dataset(ctx)
    rec = ctx.params["recommender"]
    needs = RECOMMENDER_NEEDS[rec]
    train_key = ctx.input("train")
    tops = torch.as_tensor(load_topk(ctx.store, train_key))
    clean = _item_side(feats, ds, needs)
    cats = np.asarray(feats.categories)
    item_cat = torch.as_tensor(cats, dtype=torch.int64)
    names = feats.category_names
    models = [load_model(ctx.store, train_key, r) for r in range(tops.shape[0])]
    rows = []
    for done, (o, t) in enumerate(pairs):
        origin, target = names.index(o), names.index(t)
        items, rep, sources = oracle_rows(feats.features, cats, origin, target, seed, stream=1)
        pert = Perturbation("oracle", items, rep[None],
                            None if feats.spatial is None else np.asarray(feats.spatial[sources])[None], None, {})
        side = _perturbed(clean, pert, 0, needs)
        before = [chr_at_k(tops[r], item_cat, origin, k, form="normalized")[0] for r in range(len(models))]
        after = [chr_at_k(_ranked(m, ds, [k], k, items=side)[0], item_cat, origin, k, form="normalized")[0]
                 for m in models]
        eff = replicate_effect(before, after)
        rows.append({"origin": o, "target": t, "before_per_replicate": before, "after_per_replicate": after,
                     **{x: eff[x] for x in ("before", "after", "effect", "ci_low", "ci_high", "p_value")}})
        ctx.report_progress(done + 1, len(pairs), "pairs")
    return rows


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
    """R placebo draws of an attack cell (input ``adversarial``) or of an item-promotion attack (input
    ``perturbation``, one delivered perturbation per draw): its delivered perturbations shuffled per image,
    re-extracted."""
    from services.attacker.controls import placebo_images

    p = ctx.params
    ds = _dataset(ctx)
    feats = load_features(ctx.store, ctx.input("features"))
    draws = int(p["draws"])
    if ctx.has_input("adversarial"):
        adv = load_adversarial(ctx.store, ctx.input("adversarial"))
        items, sources, summary = adv.items, None if adv.images is None else adv.images[None], adv.summary
    else:
        items, sources, summary = load_promotion_attack(ctx.store, ctx.input("perturbation"))
    if len(items) == 0 or sources is None:
        empty = np.zeros((draws, 0, feats.features.shape[1]), np.float32)
        write_placebo(ctx.out, items, empty, None, np.zeros((draws, 0, 1, 1, 3), np.uint8), {"n": 0})
        return
    size, fit = _feature_image_size(feats, p)
    clean = load_catalog_images(ds.catalog, [int(i) for i in items], size=size, fit=fit)
    if sources.shape[0] == 1:  # one perturbation: every draw shuffles it (the category attacks)
        images = placebo_images(clean, _at_size(sources[0], size) if size else sources[0], draws, int(p["seed"]),
                                p["delivery"], int(p["jpeg_quality"]))
    else:  # one per replicate (white-box against replicate r's model): draw r shuffles perturbation r
        images = np.concatenate([
            placebo_images(clean, _at_size(sources[min(r, len(sources) - 1)], size) if size else
                           sources[min(r, len(sources) - 1)], 1, int(p["seed"]), p["delivery"],
                           int(p["jpeg_quality"]), start=r) for r in range(draws)])
    features, maps, sizes = _extract_draws(ctx, clean, images, bool(p["spatial"]))
    clean_rows = np.asarray(feats.features)[items]
    out = {"n": int(len(items)), "draws": draws, **_average(sizes),
           "feat_mse": float(np.mean((features - clean_rows[None]) ** 2)),
           "attack_linf_255": summary.get("linf_255"), "attack_l2_255": summary.get("l2_255"),
           "attack_feat_mse": summary.get("feat_mse")}
    write_placebo(ctx.out, items, features, maps, images, out)


def _extract_draws(ctx: StepContext, clean: np.ndarray, images: np.ndarray,
                   spatial: bool) -> tuple[np.ndarray, np.ndarray | None, list[dict[str, float]]]:
    """Features (R',N,D), maps (R',N,D',h,w) or None, and the perturbation sizes of (R',N,H,W,3) images of
    the same items as ``clean``, extracted by the step's ``extractor``."""
    from services.attacker.controls import perturbation_size
    from services.extractor.extraction import extract_features

    model = load_extractor_artifact(ctx.store, ctx.input("extractor"))
    rows, maps, sizes = [], [], []
    for r in range(images.shape[0]):
        x = images[r] if images.dtype == np.uint8 else np.ascontiguousarray(images[r].transpose(0, 3, 1, 2))
        res = extract_features(model, x, device=ctx.device, spatial=spatial)
        rows.append(res.features)
        if res.spatial is not None:
            maps.append(res.spatial)
        sizes.append(perturbation_size(clean, images[r]))
        ctx.report_progress(r + 1, images.shape[0], "draws")
    return np.stack(rows), np.stack(maps) if maps else None, sizes


def step_oracle(ctx: StepContext) -> None:
    """The positive control: every origin item takes the clean features of a real target item (``form``
    "draw", the control ``oracle``) or the target category's mean feature ("centroid", ``oracle_centroid``)."""
    from services.attacker.controls import centroid_rows, oracle_rows

    feats = load_features(ctx.store, ctx.input("features"))
    scen = load_scenario(ctx.store, ctx.input("scenario"))
    names = feats.category_names
    if scen["origin"] not in names or scen["target"] not in names:
        missing = [n for n in (scen["origin"], scen["target"]) if n not in names]
        raise InvalidInput(f"oracle: {missing} is not a category of the catalog's items under this extractor")
    origin, target = names.index(scen["origin"]), names.index(scen["target"])
    cats = np.asarray(feats.categories)
    form = ctx.params.get("form", "draw")
    want_spatial = bool(ctx.params.get("spatial")) and feats.spatial is not None
    spatial, sources = None, None
    if form == "centroid":
        items, rows = centroid_rows(feats.features, cats, origin, target)
        if want_spatial:
            spatial = centroid_rows(feats.spatial, cats, origin, target)[1]
    else:
        items, rows, sources = oracle_rows(feats.features, cats, origin, target, int(ctx.params["seed"]))
        if want_spatial:
            spatial = np.asarray(feats.spatial[sources], dtype=np.float32)
    summary = {"n": int(len(items)), "n_target_items": int((cats == target).sum()), "form": form,
               "feat_mse": float(np.mean((rows - np.asarray(feats.features)[items]) ** 2)) if len(items) else 0.0}
    if sources is not None:
        summary["n_distinct_sources"] = int(len(np.unique(sources)))
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


# ----------------------------------------------------------------------------------------------
# item promotion: a seller's own items


def step_promo_items(ctx: StepContext) -> None:
    """The items a seller promotes: the spec's ids, or the N least exposed items of a category (the scenario's
    origin by default) in every replicate's clean top-K lists of the scenario's model."""
    from services.recommender.promotion import least_exposed

    p = ctx.params
    ds = _dataset(ctx)
    ids = p["items"].get("ids")
    if ids:
        where = {item: i for i, item in enumerate(ds.catalog.item_ids)}
        unknown = [i for i in ids if i not in where]
        if unknown:
            raise InvalidInput(f"promotion.items.ids: {len(unknown)} id(s) not in the catalog: "
                               f"{', '.join(map(repr, unknown[:10]))}; ids look like {ds.catalog.item_ids[0]!r}")
        rows = np.asarray([where[i] for i in ids], dtype=np.int64)
        how = "the spec's ids"
        category = None
    else:
        feats = load_features(ctx.store, ctx.input("features"), arrays=False)
        category = p["items"].get("category") or load_scenario(ctx.store, ctx.input("scenario"))["origin"]
        if category not in feats.category_names:
            raise InvalidInput(f"promotion.items.category {category!r} is not a category; categories: "
                               f"{_few(feats.category_names)}")
        members = np.flatnonzero(np.asarray(feats.categories) == feats.category_names.index(category))
        if members.size == 0:
            raise InvalidInput(f"promotion.items.category {category!r} has no items")
        n = int(p["items"].get("least_exposed") or 20)
        rows = least_exposed(load_topk(ctx.store, ctx.input("train")), members, n)
        how = (f"the {len(rows)} least exposed '{category}' items (fewest slots in the clean top-{p['k']} lists of "
               f"every replicate; ties in catalog order)")
    tops = load_topk(ctx.store, ctx.input("train"))
    flat = tops.reshape(-1)
    counts = np.bincount(flat[flat >= 0], minlength=ds.n_items)[rows]
    write_promoted_items(ctx.out, rows, {"ids": [ds.catalog.item_ids[int(r)] for r in rows], "category": category,
                                         "chosen_by": how, "clean_slots": counts.tolist(),
                                         "lists": {"replicates": int(tops.shape[0]), "k": int(tops.shape[-1])}})
    ctx.meta.update(n=int(len(rows)))


def _segment_users(ctx: StepContext, ds: RecDataset, feats: FeatureSet) -> torch.Tensor:
    """The users whose scores the insider raises: all, or those with a training item of a category."""
    category = (ctx.params.get("users") or {}).get("category")
    if category is None:
        return torch.arange(ds.n_users)
    if category not in feats.category_names:
        raise InvalidInput(f"promotion.users.category {category!r} is not a category; categories: "
                           f"{_few(feats.category_names)}")
    members = np.asarray(feats.categories)[ds.train.item] == feats.category_names.index(category)
    users = np.unique(ds.train.user[members])
    if users.size == 0:
        raise InvalidInput(f"promotion.users.category {category!r}: no user bought in it")
    return torch.as_tensor(users, dtype=torch.long)


def step_promo_attack(ctx: StepContext) -> None:
    """Attack the promoted items' images under one extractor: ``insa``/``insa_topk`` white-box against each
    replicate's clean recommender (one delivered image per item and replicate), ``expa`` toward the features of
    the most exposed items (one image per item)."""
    from advrec.pipeline.spec import PromotionAttackSpec
    from services.attacker.core import attack_and_measure
    from services.recommender.promotion import entry_bar, mean_score_objective, most_exposed, topk_objective

    p = ctx.params
    ds = _dataset(ctx)
    feats = load_features(ctx.store, ctx.input("features"))
    model = load_extractor_artifact(ctx.store, ctx.input("extractor"))
    rows, _ = load_promoted_items(ctx.store, ctx.input("items"))
    train_key = ctx.input("train")
    size, fit = _feature_image_size(feats, p)
    clean = to_tensor(load_catalog_images(ds.catalog, [int(i) for i in rows], size=size, fit=fit))
    grid = PromotionAttackSpec.from_params(p)
    needs = RECOMMENDER_NEEDS[p["recommender"]]
    spatial = "spatial" in needs
    common = {"device": ctx.device, "clean_features": torch.as_tensor(np.asarray(feats.features)[rows]),
              "spatial": spatial}
    outcomes = []
    if grid.method == "noise":  # the baseline: a random point of the budget's ball, one image per item
        outcomes.append(attack_and_measure(model, clean, grid.attack_spec(p["eps"], p["seed"]), None, p["delivery"],
                                           p["jpeg_quality"], **common))
    elif grid.method == "expa":
        targets = most_exposed(load_topk(ctx.store, train_key), int(p["expa_targets"]))
        spec = grid.attack_spec(p["eps"], p["seed"])
        outcomes.append(attack_and_measure(model, clean, spec, None, p["delivery"], p["jpeg_quality"], **common,
                                           target_features=torch.as_tensor(np.asarray(feats.features)[targets])))
        ctx.meta.update(expa_targets=[ds.catalog.item_ids[int(t)] for t in targets])
    else:
        users = _segment_users(ctx, ds, feats)
        clean_side = _item_side(feats, ds, needs)
        n_rep = len(load_topk(ctx.store, train_key))
        for r in range(n_rep):
            rec = load_model(ctx.store, train_key, r)
            if grid.method == "insa":
                objective = mean_score_objective(rec, clean_side, users)
            else:
                bar = entry_bar(rec, clean_side, ds.train, users, torch.as_tensor(rows), int(p["k"]),
                                float(p["topk_temperature"]))
                objective = topk_objective(rec, clean_side, users, bar)
            spec = grid.attack_spec(p["eps"], int(p["seed"]) + r)
            outcomes.append(attack_and_measure(model, clean, spec, None, p["delivery"], p["jpeg_quality"], **common,
                                               objective=objective, rows=torch.as_tensor(rows, dtype=torch.long),
                                               objective_spatial=spatial))
            ctx.report_progress(r + 1, n_rep, "replicates")
    delivered = [o.delivered for o in outcomes]
    images = np.stack([to_uint8(d) if p["delivery"] != "float" else d.permute(0, 2, 3, 1).numpy() for d in delivered])
    features = np.stack([o.features.numpy() for o in outcomes])
    maps = np.stack([o.spatial.numpy() for o in outcomes]) if spatial else None
    table = []
    for r, o in enumerate(outcomes):
        for row, item in zip(o.measurement.to_table(), rows, strict=True):
            table.append({**row, "item": ds.catalog.item_ids[int(item)], "draw": r})
    summaries = [o.measurement.summary() for o in outcomes]
    summary = {k: float(np.mean([sm[k] for sm in summaries])) for k in summaries[0]
               if all(isinstance(sm.get(k), int | float) and not isinstance(sm.get(k), bool) for sm in summaries)}
    summary.update(n=int(len(rows)), draws=len(outcomes), attack_seconds=float(sum(o.seconds for o in outcomes)))
    write_promotion_attack(ctx.out, rows, features, maps, images, table, summary)


def step_promo_transfer(ctx: StepContext) -> None:
    """A transfer attack: another extractor's attacked images of the promoted items, delivered to this one
    (re-extracted at this extractor's size, like any upload)."""
    p = ctx.params
    ds = _dataset(ctx)
    feats = load_features(ctx.store, ctx.input("features"))
    items, source, summary = load_promotion_attack(ctx.store, ctx.input("source"))
    size, fit = _feature_image_size(feats, p)
    clean = load_catalog_images(ds.catalog, [int(i) for i in items], size=size, fit=fit)
    if source.dtype != np.uint8 and size and source.shape[2] != size:  # float delivery at another size: 8 bits
        source = np.round(np.clip(source, 0, 1) * 255).astype(np.uint8)
    images = np.stack([_at_size(d, size) if size else d for d in source]) if source.dtype == np.uint8 else source
    features, maps, sizes = _extract_draws(ctx, clean, images, bool(p["spatial"]))
    clean_rows = np.asarray(feats.features)[items]
    out = {**_average(sizes), "n": int(len(items)), "draws": int(len(images)),
           "feat_mse": float(np.mean((features - clean_rows[None]) ** 2)), "source_feat_mse": summary.get("feat_mse")}
    write_promotion_attack(ctx.out, items, features, maps, images, [], out)


def step_promo_evaluate(ctx: StepContext) -> None:
    """Per replicate and promoted item: its standing for every user before (the clean model) and after the
    perturbation (re-scored in deployment, or from the model retrained on it)."""
    from services.recommender.promotion import item_standing, promotion_metrics

    p = ctx.params
    ds = _dataset(ctx)
    feats = load_features(ctx.store, ctx.input("features"))
    train_key = ctx.input("train")
    needs = RECOMMENDER_NEEDS[p["recommender"]]
    rows, _ = load_promoted_items(ctx.store, ctx.input("items"))
    pert = load_perturbation(ctx.store, ctx.input("perturbation"))
    if not np.array_equal(pert.items, rows):
        raise InvalidInput("the perturbation does not cover the promoted items")
    clean = _item_side(feats, ds, needs)
    seeds = _seeds(p)
    by_draw = {d: _perturbed(clean, pert, d, needs) for d in sorted({pert.draw(r) for r in range(len(seeds))})}
    sides = [by_draw[pert.draw(r)] for r in range(len(seeds))]
    k = int(p["k"])
    if p["mode"] == "retrain":
        models = [m for m, _ in _fit_replicates(p["recommender"], p["config"], seeds, ds, sides, ctx.device,
                                                ctx.progress)]
        afters = [item_standing(m, ds.train, rows, k) for m in models]
    else:
        afters = []
        for r, side in enumerate(sides):
            afters.append(item_standing(load_model(ctx.store, train_key, r), ds.train, rows, k, items=side))
            ctx.report_progress(r + 1, len(sides), "models")
    befores = [item_standing(load_model(ctx.store, train_key, r), ds.train, rows, k) for r in range(len(seeds))]
    ks = [x for x in p["ks"] if x <= ds.n_items]
    write_promotion_evaluation(ctx.out, {
        "mode": p["mode"], "control": p["control"], "recommender": p["recommender"], "seeds": seeds,
        "items": [ds.catalog.item_ids[int(r)] for r in rows], "n_items": int(len(rows)), "k": k,
        "per_replicate": [promotion_metrics(b, a, ks) for b, a in zip(befores, afters, strict=True)],
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
    oracles = [c for c in ("oracle", "oracle_centroid") if c in controls]
    for control in oracles:
        for e in exts:
            for r in recs:
                if uses_extractor(r):
                    for m in modes:
                        evaluate[control, (e, control, 0.0), r, m] = key(f"evaluate/{e}/{control}/{r}/{m}")
    promo = spec.get("promotion")
    promo_attacks: dict[Any, str] = {}
    promotion: dict[Any, str] = {}
    if promo:
        visual = [r for r in recs if uses_extractor(r)]
        promo_modes = promo.get("modes") or modes
        source = promo.get("transfer_from")
        for e in exts:
            for a in promo["attacks"]:
                for eps in a["eps"]:
                    for r in visual:
                        for src in [None] + ([source] if source and e != source else []):
                            cell = promo_cell_name(e, a["method"], float(eps), r, src)
                            pc = (e, a["method"], float(eps), r, src)
                            promo_attacks[pc] = key(f"promote/{cell}")
                            for m in promo_modes:
                                promotion[pc, m, "attack"] = key(f"promote_eval/{cell}/{m}")
                                promotion[pc, m, "placebo"] = key(f"promote_eval/{cell}/placebo/{m}")
    return RunArtifacts(
        store=store, scenario=key("scenario"), dataset=keys.get("dataset"),
        promoted_items=key("promotion/items") if promo else None, promotion_attacks=promo_attacks,
        promotion=promotion,
        extractors={e: key(f"extractor/{e}") for e in exts}, features={e: key(f"features/{e}") for e in exts},
        train={(e, r): key(train_name(e, r)) for e in exts for r in recs},
        adversarial={c: key(f"adversarial/{cell_name(*c)}") for c in cells},
        placebo={c: key(f"placebo/{cell_name(*c)}") for c in cells} if "placebo" in controls else {},
        oracle={(c, e): key(f"{c}/{e}") for c in oracles for e in exts},
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
    "promo_items": step_promo_items,
    "promo_attack": step_promo_attack,
    "promo_transfer": step_promo_transfer,
    "promo_evaluate": step_promo_evaluate,
}
