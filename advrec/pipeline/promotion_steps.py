"""The item-promotion steps: a seller's own items, their attacked images, and their standing before and after.

Glue like :mod:`advrec.pipeline.steps`: ``promo_items`` chooses the promoted items, ``promo_attack`` attacks
their images under one extractor (white-box against each replicate's recommender for ``insa``/``insa_topk``),
``promo_transfer`` delivers another extractor's images to this one, ``promo_evaluate`` measures every
promoted item for every user before and after. Their placebos are the study's ``placebo`` step.
"""

from __future__ import annotations

import numpy as np
import torch

from advrec.pipeline.context import StepContext
from advrec.pipeline.step_support import (
    at_size,
    average,
    behind,
    dataset_of,
    defense_of,
    draw_seed,
    extract_draws,
    feature_image_size,
    few,
    fit_replicates_of,
    item_side,
    keep_flagged_clean,
    perturbed,
    seeds_of,
)
from advrec_common.datasets.images import load_catalog_images, to_tensor, to_uint8
from advrec_common.datasets.types import RecDataset
from advrec_common.errors import InvalidInput
from advrec_common.vision.artifact import load_extractor_artifact
from services.attacker.artifacts import load_perturbation, load_promotion_attack, write_promotion_attack
from services.extractor.artifacts import FeatureSet, load_features
from services.recommender.artifacts import (
    load_model,
    load_promoted_items,
    load_scenario,
    load_topk,
    write_promoted_items,
    write_promotion_evaluation,
)
from services.recommender.kinds import RECOMMENDER_NEEDS


def step_promo_items(ctx: StepContext) -> None:
    """The items a seller promotes: the spec's ids, or the N least exposed items of a category (the scenario's
    origin by default) in every replicate's clean top-K lists of the scenario's model."""
    from services.recommender.promotion import least_exposed

    p = ctx.params
    ds = dataset_of(ctx)
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
                               f"{few(feats.category_names)}")
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
                           f"{few(feats.category_names)}")
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
    ds = dataset_of(ctx)
    feats = load_features(ctx.store, ctx.input("features"))
    bare, defense = load_extractor_artifact(ctx.store, ctx.input("extractor")), defense_of(ctx)
    model = behind(bare, defense, seed=draw_seed(ctx))  # judges and re-extracts the uploads; a rung's attacker adapts to it
    rows, _ = load_promoted_items(ctx.store, ctx.input("items"))
    train_key = ctx.input("train")
    size, fit = feature_image_size(feats, p)
    clean = to_tensor(load_catalog_images(ds.catalog, [int(i) for i in rows], size=size, fit=fit))
    grid = PromotionAttackSpec.from_params(p)
    needs = RECOMMENDER_NEEDS[p["recommender"]]
    spatial = "spatial" in needs
    common = {"device": ctx.device, "clean_features": torch.as_tensor(np.asarray(feats.features)[rows]),
              "spatial": spatial, "attack_model": behind(bare, defense, adaptive=True)}
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
        clean_side = item_side(feats, ds, needs)
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
    per_draw, per_map, table = [], [], []
    for r, o in enumerate(outcomes):  # a detector rung refuses the uploads it flags: those items keep their features
        f, sp, flagged = keep_flagged_clean(model, images[r], rows, o.features.numpy(),
                                            None if o.spatial is None else o.spatial.numpy(), feats, ctx.device)
        per_draw.append(f)
        per_map.append(sp)
        for j, (row, item) in enumerate(zip(o.measurement.to_table(), rows, strict=True)):
            table.append({**row, "item": ds.catalog.item_ids[int(item)], "draw": r,
                          **({"flagged": bool(flagged[j])} if flagged is not None else {})})
    features = np.stack(per_draw)
    maps = np.stack(per_map) if spatial else None
    summaries = [o.measurement.summary() for o in outcomes]
    summary = {k: float(np.mean([sm[k] for sm in summaries])) for k in summaries[0]
               if all(isinstance(sm.get(k), int | float) and not isinstance(sm.get(k), bool) for sm in summaries)}
    summary.update(n=int(len(rows)), draws=len(outcomes), attack_seconds=float(sum(o.seconds for o in outcomes)))
    if any("flagged" in t for t in table):
        summary["flagged"] = float(np.mean([t["flagged"] for t in table]))
    write_promotion_attack(ctx.out, rows, features, maps, images, table, summary)


def step_promo_transfer(ctx: StepContext) -> None:
    """A transfer attack: another extractor's attacked images of the promoted items, delivered to this one
    (re-extracted at this extractor's size, like any upload)."""
    p = ctx.params
    ds = dataset_of(ctx)
    feats = load_features(ctx.store, ctx.input("features"))
    items, source, summary = load_promotion_attack(ctx.store, ctx.input("source"))
    size, fit = feature_image_size(feats, p)
    clean = load_catalog_images(ds.catalog, [int(i) for i in items], size=size, fit=fit)
    if source.dtype != np.uint8 and size and source.shape[2] != size:  # float delivery at another size: 8 bits
        source = np.round(np.clip(source, 0, 1) * 255).astype(np.uint8)
    images = np.stack([at_size(d, size) if size else d for d in source]) if source.dtype == np.uint8 else source
    features, maps, sizes = extract_draws(ctx, clean, images, bool(p["spatial"]), items, feats)
    clean_rows = np.asarray(feats.features)[items]
    out = {**average(sizes), "n": int(len(items)), "draws": int(len(images)),
           "feat_mse": float(np.mean((features - clean_rows[None]) ** 2)), "source_feat_mse": summary.get("feat_mse")}
    write_promotion_attack(ctx.out, items, features, maps, images, [], out)


def step_promo_evaluate(ctx: StepContext) -> None:
    """Per replicate and promoted item: its standing for every user before (the clean model) and after the
    perturbation (re-scored in deployment, or from the model retrained on it)."""
    from services.recommender.promotion import item_standing, promotion_metrics

    p = ctx.params
    ds = dataset_of(ctx)
    feats = load_features(ctx.store, ctx.input("features"))
    train_key = ctx.input("train")
    needs = RECOMMENDER_NEEDS[p["recommender"]]
    rows, _ = load_promoted_items(ctx.store, ctx.input("items"))
    pert = load_perturbation(ctx.store, ctx.input("perturbation"))
    if not np.array_equal(pert.items, rows):
        raise InvalidInput("the perturbation does not cover the promoted items")
    clean = item_side(feats, ds, needs)
    seeds = seeds_of(p)
    by_draw = {d: perturbed(clean, pert, d, needs) for d in sorted({pert.draw(r) for r in range(len(seeds))})}
    sides = [by_draw[pert.draw(r)] for r in range(len(seeds))]
    k = int(p["k"])
    if p["mode"] == "retrain":
        models = [m for m, _ in fit_replicates_of(p["recommender"], p["config"], seeds, ds, sides, ctx.device,
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
