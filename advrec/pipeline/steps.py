"""The step functions of the study DAG: glue from artifacts to the services' domain code.

Each function reads its inputs by role (``ctx.input("features")``) through the producing domain's
artifact module, calls the domain (extractor, attacker, recommender) and writes its outputs into
``ctx.out`` with that domain's writer; the executor turns that folder into the step's artifact
atomically. Artifact loaders are cached per key, so a process that runs many steps (a worker, the
in-process executor) loads each model once. What the steps share is :mod:`.step_support`; the item
promotion steps are :mod:`.promotion_steps`; :data:`STEP_FUNCTIONS` maps every step kind to its function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from advrec.pipeline.context import StepContext
from advrec.pipeline.dag import cell_name, promo_cell_name, promotion_cells, train_name
from advrec.pipeline.promotion_steps import (
    step_promo_attack,
    step_promo_evaluate,
    step_promo_items,
    step_promo_transfer,
)
from advrec.pipeline.spec import AttackGridSpec
from advrec.pipeline.step_support import (
    as_json,
    at_size,
    average,
    behind,
    dataset_of,
    defense_of,
    deployed_extractor,
    draw_seed,
    extract_draws,
    feature_image_size,
    few,
    fit_replicates_of,
    item_side,
    keep_flagged_clean,
    ks_up_to,
    perturbed,
    ranked,
    seeds_of,
)
from advrec.report.collect import RunArtifacts, check_spec
from advrec_common.conventions import extractor_views
from advrec_common.datasets.artifact import write_dataset_artifact
from advrec_common.datasets.images import load_catalog_images, to_tensor
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
from services.recommender.kinds import RECOMMENDER_NEEDS, reads_items, uses_extractor

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
        model, report = train_on_catalog(dataset_of(ctx).catalog, p["backbone"], config, size,
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
    """Clean features, predicted classes and probabilities of every catalog image (behind the rung's defense,
    as the shop ingests them, when the step has one; with the time per image it took)."""
    import time

    ds = dataset_of(ctx)
    t0 = time.perf_counter()
    ctx.meta.update(write_catalog_features(ctx.out, ds, deployed_extractor(ctx), ctx.params, ctx.device,
                                           ctx.progress))
    ctx.meta.update(seconds_per_image=(time.perf_counter() - t0) / max(len(ds.catalog), 1))


def step_defense(ctx: StepContext) -> None:
    """A defense rung: built (a transform) or fitted for its extractor (the denoiser on the catalog's clean images
    and the extractor's own PGD examples; the detector's threshold at its false-positive rate), through the head
    whose classes are the categories (the classifier the attacks aim at and the detector screens with)."""
    from advrec.pipeline.spec import DefenseEntry
    from services.extractor.artifacts import write_fitted_defense

    p = ctx.params
    entry = DefenseEntry.model_validate(p["defense"])
    feats = load_features(ctx.store, ctx.input("features"), arrays=True)
    model = category_model(load_extractor_artifact(ctx.store, ctx.input("extractor")), feats)
    ctx.meta.update(write_fitted_defense(ctx.out, entry, dataset_of(ctx), model, extractor_key=ctx.input("extractor"),
                                         image_size=p.get("image_size"), fit=p.get("fit", "crop"),
                                         seed=int(p.get("seed", 0)), device=ctx.device, progress=ctx.progress))


def step_train(ctx: StepContext) -> None:
    """Train a recommender R times (its seeds) on clean features; store the models, lists and accuracy."""
    import time

    p = ctx.params
    ds = dataset_of(ctx)
    needs = RECOMMENDER_NEEDS[p["recommender"]]
    # DVBPR learns from pixels: its clean model has no features input
    feats_key = ctx.input("features") if ctx.has_input("features") else None
    feats = load_features(ctx.store, feats_key) if feats_key else None
    items = item_side(feats, ds, needs)
    seeds = seeds_of(p)
    t0 = time.perf_counter()
    fitted = fit_replicates_of(p["recommender"], p["config"], seeds, ds, [items] * len(seeds), ctx.device, ctx.progress)
    fit_seconds = time.perf_counter() - t0
    k = min(p["max_k"], ds.n_items)
    lists = [ranked(model, ds, ks_up_to(p["max_k"]), k) for model, _ in fitted]
    tops = np.stack([top.numpy() for top, _ in lists])
    accs = [acc for _, acc in lists]
    lineage = {"dataset": ctx.input("dataset"), "features": feats_key, "extractor": None, "image_size": None}
    if feats_key:
        fmeta = ctx.store.meta(feats_key)
        lineage.update(extractor=fmeta.get("deps", {}).get("extractor"), image_size=fmeta["params"].get("image_size"))
    info = {"fit_seconds": fit_seconds, "seeds": seeds, "reports": [as_json(r) for _, r in fitted],
            "accuracy": average(accs), "accuracy_per_replicate": accs}
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
                               f"{few(names)}")
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
                           f"categories ({source}): {few(names)}")
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
    if feasibility["measured"]:
        how = (f"of {len(pairs)} candidate pairs, the one where the oracle raised the origin's CHR@{k} in deployment "
               + ("most among the significant rises" if feasibility["feasible"] else "most (no rise was significant)"))
    else:
        how = "clean CHR@K ranking, as the study"
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
    ``stream=1``, apart from the evaluation's). Rows carry the per-replicate values and the test over the
    disguised items (the deployed models are fixed), the replicate test beside it."""
    from services.attacker.controls import oracle_rows
    from services.recommender.metrics.category import chr_at_k, item_exposure
    from services.recommender.metrics.effects import item_effect, replicate_effect

    ds = dataset_of(ctx)
    rec = ctx.params["recommender"]
    needs = RECOMMENDER_NEEDS[rec]
    train_key = ctx.input("train")
    tops = torch.as_tensor(load_topk(ctx.store, train_key))
    clean = item_side(feats, ds, needs)
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
        side = perturbed(clean, pert, 0, needs)
        origin_items = torch.as_tensor(items, dtype=torch.long)
        lists = [ranked(m, ds, [k], k, items=side)[0] for m in models]
        before = [chr_at_k(tops[r], item_cat, origin, k, form="normalized")[0] for r in range(len(models))]
        after = [chr_at_k(lists[r], item_cat, origin, k, form="normalized")[0] for r in range(len(models))]
        # the deployed models are fixed: the disguised items are the units (as the evaluation's deployment test)
        deltas = np.mean([(item_exposure(lists[r], origin_items, k, "chr")
                           - item_exposure(tops[r], origin_items, k, "chr")).numpy() for r in range(len(models))], 0)
        eff = replicate_effect(before, after)
        by_items = item_effect(deltas) if deltas.size >= 2 else eff
        rows.append({"origin": o, "target": t, "before_per_replicate": before, "after_per_replicate": after,
                     "before": eff["before"], "after": eff["after"], "effect": eff["effect"],
                     **{x: by_items[x] for x in ("ci_low", "ci_high", "p_value")},
                     "test": by_items.get("test"), "replicate_p_value": eff["p_value"]})
        ctx.report_progress(done + 1, len(pairs), "pairs")
    return rows


def step_attack_shard(ctx: StepContext) -> None:
    """Attack the origin-category items of one catalog index range toward the target category, through
    the head whose classes are the categories (:func:`category_model`), at the size the clean features
    were extracted at."""
    from services.attacker.core import attack_and_measure

    p = ctx.params
    ds = dataset_of(ctx)
    feats = load_features(ctx.store, ctx.input("features"))
    defense = defense_of(ctx)
    bare = category_model(load_extractor_artifact(ctx.store, ctx.input("extractor")), feats)
    model = behind(bare, defense, seed=draw_seed(ctx))  # what the shop runs: judges and re-extracts the delivered images
    scen = load_scenario(ctx.store, ctx.input("scenario"))
    for role in ("origin", "target"):
        if scen[role] not in feats.category_names:
            raise InvalidInput(f"scenario {role} {scen[role]!r} is not a category of extractor "
                               f"{ctx.step.name.split('/')[1]!r}; categories: {few(feats.category_names)}")
    origin, target = feats.category_names.index(scen["origin"]), model.class_names.index(scen["target"])
    lo, hi = p["items"]
    idx = lo + np.flatnonzero(np.asarray(feats.categories)[lo:hi] == origin)
    ctx.report_progress(0, len(idx), "images")
    if len(idx) == 0:
        write_shard(ctx.out, idx)
        ctx.meta.update(n=0, seconds=0.0)
        return
    spec = AttackGridSpec.from_params(p).attack_spec(p["eps"], p["seed"])
    size, fit = feature_image_size(feats, p)
    clean = to_tensor(load_catalog_images(ds.catalog, [int(i) for i in idx], size=size, fit=fit))
    extra = {}
    if spec.method == "feature_match":  # pulled toward the target category's clean features (their centroid)
        members = np.asarray(feats.categories) == feats.category_names.index(scen["target"])
        extra["target_features"] = torch.as_tensor(np.asarray(feats.features)[members])
    # a rung's attacker adapts: BPDA, EOT, end to end through a denoiser, or detector-aware
    out = attack_and_measure(model, clean, spec, target, p["delivery"], p["jpeg_quality"], device=ctx.device,
                             clean_features=torch.as_tensor(np.asarray(feats.features)[idx]),
                             spatial=feats.spatial is not None, progress=ctx.progress,
                             attack_model=behind(bare, defense, adaptive=True), **extra)
    rows = out.measurement.to_table()
    _apply_detector(model, out, idx, feats, ctx.device, rows)
    for row, item in zip(rows, idx, strict=True):
        row["item"] = ds.catalog.item_ids[int(item)]
    write_shard(ctx.out, idx, out, rows, p["delivery"])
    ctx.meta.update(n=int(len(idx)), seconds=out.seconds, images_per_s=len(idx) / max(out.seconds, 1e-9),
                    image_size=size, head=feats.category_info.get("head", {}).get("kind"))


def _apply_detector(model: Any, out: Any, items: np.ndarray, feats: FeatureSet, device: str,
                    rows: list[dict[str, Any]]) -> None:
    """A detector rung's verdict on delivered uploads (in place): a flagged upload is refused, so its item keeps
    its clean features and the attack did not succeed on it; every row gets ``flagged``."""
    from advrec_common.datasets.images import to_uint8

    images = to_uint8(out.delivered)
    f, sp, flagged = keep_flagged_clean(model, images, items, out.features.numpy(),
                                        None if out.spatial is None else out.spatial.numpy(), feats, device)
    if flagged is None:
        return
    out.features = torch.as_tensor(f)
    out.spatial = None if sp is None else torch.as_tensor(sp)
    for row, flag in zip(rows, flagged, strict=True):
        row["flagged"] = bool(flag)
        if flag and row.get("success") is not None:
            row["success"] = False


def step_transfer(ctx: StepContext) -> None:
    """The non-adaptive attacker against a defense rung: the bare extractor's attacked images of one cell
    (input ``source``), uploaded through the rung's defense (a detector's flagged uploads keep their clean
    features), judged by the deployed composition's category classifier."""
    from services.attacker.artifacts import Shard
    from services.attacker.measurements import measure_attack

    p = ctx.params
    ds = dataset_of(ctx)
    feats = load_features(ctx.store, ctx.input("features"))
    scen = load_scenario(ctx.store, ctx.input("scenario"))
    src = load_adversarial(ctx.store, ctx.input("source"))
    items = src.items
    if len(items) == 0 or src.images is None:
        merge_shards(ctx.out, feats.features, feats.spatial, [Shard(items, [])], 0.0, len(ds.catalog))
        return
    model = behind(category_model(load_extractor_artifact(ctx.store, ctx.input("extractor")), feats),
                   defense_of(ctx), seed=draw_seed(ctx))
    size, fit = feature_image_size(feats, p)
    clean = to_tensor(load_catalog_images(ds.catalog, [int(i) for i in items], size=size, fit=fit))
    uploads = src.images_u8()
    delivered = to_tensor(at_size(uploads, size) if size else uploads)
    target = model.class_names.index(scen["target"]) if scen["target"] in model.class_names else None
    m = measure_attack(model, clean, delivered, target, clean_features=torch.as_tensor(np.asarray(feats.features)[items]))
    rows = m.to_table()
    for row, item in zip(rows, items, strict=True):
        row["item"] = ds.catalog.item_ids[int(item)]
    out = _outputs(model, delivered, bool(p["spatial"]), ctx.device)
    _apply_detector(model, out, items, feats, ctx.device, rows)
    probs = out.logits.softmax(-1)
    shard = Shard(items, rows, out.features.numpy(), None if out.spatial is None else out.spatial.numpy(),
                  probs.argmax(-1).numpy().astype(np.int64), probs.max(-1).values.numpy().astype(np.float32),
                  at_size(uploads, size) if size else uploads)
    merge_shards(ctx.out, feats.features, feats.spatial, [shard], 0.0, len(ds.catalog))


def _outputs(model: Any, images: torch.Tensor, spatial: bool, device: str) -> Any:
    """The model's features, spatial maps and logits of images (N,3,H,W) [0,1], batched (an attack outcome's
    shape: ``delivered``, ``features``, ``spatial``, ``logits``)."""
    from services.attacker.core import AttackOutcome

    feats, maps, logits = [], [], []
    model = model.to(device).eval()
    try:
        with torch.inference_mode():
            for i in range(0, images.shape[0], 64):
                o = model.forward_all(images[i : i + 64].to(device), spatial=spatial)
                feats.append(o.features.float().cpu())
                logits.append(o.logits.float().cpu())
                if o.spatial is not None:
                    maps.append(o.spatial.float().cpu())
    finally:
        model.cpu()
    return AttackOutcome(images, None, torch.cat(feats), torch.cat(maps) if maps else None, torch.cat(logits), 0.0)


def step_adversarial(ctx: StepContext) -> None:
    """Merge the shards: the attacked feature matrix (clean rows elsewhere) and the attack's summary."""
    ds = dataset_of(ctx)
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
    ds = dataset_of(ctx)
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
    size, fit = feature_image_size(feats, p)
    clean = load_catalog_images(ds.catalog, [int(i) for i in items], size=size, fit=fit)
    if sources.shape[0] == 1:  # one perturbation: every draw shuffles it (the category attacks)
        images = placebo_images(clean, at_size(sources[0], size) if size else sources[0], draws, int(p["seed"]),
                                p["delivery"], int(p["jpeg_quality"]))
    else:  # one per replicate (white-box against replicate r's model): draw r shuffles perturbation r
        images = np.concatenate([
            placebo_images(clean, at_size(sources[min(r, len(sources) - 1)], size) if size else
                           sources[min(r, len(sources) - 1)], 1, int(p["seed"]), p["delivery"],
                           int(p["jpeg_quality"]), start=r) for r in range(draws)])
    features, maps, sizes = extract_draws(ctx, clean, images, bool(p["spatial"]), items, feats)
    clean_rows = np.asarray(feats.features)[items]
    out = {"n": int(len(items)), "draws": draws, **average(sizes),
           "feat_mse": float(np.mean((features - clean_rows[None]) ** 2)),
           "attack_linf_255": summary.get("linf_255"), "attack_l2_255": summary.get("l2_255"),
           "attack_feat_mse": summary.get("feat_mse")}
    write_placebo(ctx.out, items, features, maps, images, out)


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
    from services.recommender.metrics.category import item_exposure, rank_shift
    from services.recommender.metrics.effects import item_effect, replicate_effect, user_effect_interval
    from services.recommender.metrics.significance import paired_tests

    p = ctx.params
    ds = dataset_of(ctx)
    feats = load_features(ctx.store, ctx.input("features"))
    scen = load_scenario(ctx.store, ctx.input("scenario"))
    train_key = ctx.input("train")
    needs = RECOMMENDER_NEEDS[p["recommender"]]
    pert = load_perturbation(ctx.store, ctx.input("perturbation"))
    clean = item_side(feats, ds, needs)
    seeds = seeds_of(p)
    by_draw = {d: perturbed(clean, pert, d, needs) for d in sorted({pert.draw(r) for r in range(len(seeds))})}
    sides = [by_draw[pert.draw(r)] for r in range(len(seeds))]  # one object per draw: one batched fit
    max_k = min(p["max_k"], ds.n_items)
    tops_before = torch.as_tensor(load_topk(ctx.store, train_key))
    if tops_before.shape[0] != len(seeds):
        raise InvalidInput(f"the clean model has {tops_before.shape[0]} replicates, the evaluation {len(seeds)}")
    tops_after, accs = [], []
    if p["mode"] == "retrain":
        for model, _ in fit_replicates_of(p["recommender"], p["config"], seeds, ds, sides, ctx.device, ctx.progress):
            top, acc = ranked(model, ds, p["ks"], max_k)
            tops_after.append(top)
            accs.append(acc)
    else:
        for r, side in enumerate(sides):
            top, acc = ranked(load_model(ctx.store, train_key, r), ds, p["ks"], max_k, items=side)
            tops_after.append(top)
            accs.append(acc)
            ctx.report_progress(r + 1, len(sides), "models")
    origin = feats.category_names.index(scen["origin"])
    item_cat = torch.tensor(np.array(feats.categories), dtype=torch.int64)
    origin_items = torch.nonzero(item_cat == origin).squeeze(1)
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
            # each origin item's change (its share of the metric), averaged over the replicates
            deltas = np.mean([(item_exposure(tops_after[r], origin_items, k, metric, item_cat, origin)
                               - item_exposure(tops_before[r], origin_items, k, metric, item_cat, origin)).numpy()
                              for r in range(len(seeds))], axis=0)
            effect = replicate_effect(before, after)
            if p["mode"] == "deployment" and deltas.size >= 2:  # the deployed models are fixed: items are the units
                effect = {**effect, **{x: v for x, v in item_effect(deltas).items() if x != "effect"},
                          "replicate_p_value": effect["p_value"]}
            row[metric] = {**effect, "before_per_replicate": before,
                           "after_per_replicate": after, "user_t_pvalue": users["t_pvalue"],
                           "user_wilcoxon_pvalue": users["wilcoxon_pvalue"], "user_ci_low": lo, "user_ci_high": hi,
                           "n_users": users["n"], "item_deltas": deltas.tolist()}
        per_k.append(row)
    shift = None
    if len(pert.items):
        shifts = [rank_shift(tops_before[r], tops_after[r], torch.as_tensor(pert.items)) for r in range(len(seeds))]
        shift = average(shifts)
    write_evaluation(ctx.out, torch.stack(tops_after).numpy(), {
        "mode": p["mode"], "control": p.get("control", "attack"), "recommender": p["recommender"],
        "origin": scen["origin"], "target": scen["target"], "n_perturbed": int(len(pert.items)),
        "n_replicates": len(seeds), "seeds": seeds, "per_k": per_k, "accuracy_after": average(accs),
        "rank_shift": shift,
    })




def report_inputs(store: ArtifactStore, keys: dict[str, str], spec: dict[str, Any]) -> RunArtifacts:
    """The report's inputs by role, from the keys of a run's steps by name (the DAG's naming), per extractor
    view (:func:`~advrec_common.conventions.extractor_views`: the extractors and each defense rung's two views)."""
    spec = check_spec(spec)

    def key(name: str) -> str:
        if name not in keys:
            raise NotFound(f"report: the artifact of step {name!r} is not among the report's inputs")
        return keys[name]

    views = extractor_views(spec)
    recs = [r["name"] for r in spec["recommenders"]]
    modes = spec["modes"]
    cells = [(v.name, a["method"], float(eps)) for v in views for a in spec["attacks"] for eps in a["eps"]]
    controls = spec.get("controls") or []
    evaluate: dict[tuple[str, Any, str, str], str] = {}
    for c in cells:
        for r in [r for r in recs if reads_items(r)]:  # BPR-MF: the clean accuracy table only
            for m in modes:
                evaluate["attack", c, r, m] = key(f"evaluate/{cell_name(*c)}/{r}/{m}")
                if "placebo" in controls:
                    evaluate["placebo", c, r, m] = key(f"evaluate/{cell_name(*c)}/placebo/{r}/{m}")
    oracles = [c for c in ("oracle", "oracle_centroid") if c in controls]
    attacked_here = [v.name for v in views if v.source is None]  # a non-adaptive view shares its rung's oracle
    for control in oracles:
        for e in attacked_here:
            for r in recs:
                if uses_extractor(r):
                    for m in modes:
                        evaluate[control, (e, control, 0.0), r, m] = key(f"evaluate/{e}/{control}/{r}/{m}")
    promo = spec.get("promotion")
    promo_attacks: dict[Any, str] = {}
    promotion: dict[Any, str] = {}
    if promo:
        promo_modes = promo.get("modes") or modes
        for view, method, eps, r, src in promotion_cells(spec):
            cell = promo_cell_name(view.name, method, eps, r, src)
            pc = (view.name, method, eps, r, src)
            promo_attacks[pc] = key(f"promote/{cell}")
            for m in promo_modes:
                promotion[pc, m, "attack"] = key(f"promote_eval/{cell}/{m}")
                promotion[pc, m, "placebo"] = key(f"promote_eval/{cell}/placebo/{m}")
    return RunArtifacts(
        store=store, scenario=key("scenario"), dataset=keys.get("dataset"),
        promoted_items=key("promotion/items") if promo else None, promotion_attacks=promo_attacks,
        promotion=promotion,
        extractors={v.name: key(f"extractor/{v.extractor}") for v in views},
        features={v.name: key(f"features/{v.model}") for v in views},
        defenses={v.name: key(f"defense/{v.rung}") for v in views if v.rung},
        train={(v.name, r): key(train_name(v.model, r)) for v in views for r in recs},
        adversarial={c: key(f"adversarial/{cell_name(*c)}") for c in cells},
        placebo={c: key(f"placebo/{cell_name(*c)}") for c in cells} if "placebo" in controls else {},
        oracle={(c, e): key(f"{c}/{e}") for c in oracles for e in attacked_here},
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
    "defense": step_defense,
    "transfer": step_transfer,
    "promo_items": step_promo_items,
    "promo_attack": step_promo_attack,
    "promo_transfer": step_promo_transfer,
    "promo_evaluate": step_promo_evaluate,
}
