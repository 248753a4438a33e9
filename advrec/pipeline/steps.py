"""The step functions of the study DAG: thin glue from artifacts to the services' domain code.

Each function reads its dependencies from the store (``ctx.dep(...)``), calls the domain
(extractor, attacker, recommender) and writes its outputs into ``ctx.out``; the executor turns
that folder into the step's artifact atomically. Loaders of artifacts are cached per key, so a
process that runs many steps (a worker, the in-process executor) loads each model once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from advrec.pipeline.executor import StepContext
from advrec_common.datasets.types import Catalog, Interactions, RecDataset
from advrec_common.errors import InvalidInput
from advrec_common.store import ArtifactStore

# ----------------------------------------------------------------------------------------------
# artifact loaders (cached by key: artifacts are immutable)


@lru_cache(maxsize=8)
def _dataset_cached(root: str, key: str) -> RecDataset:
    store = ArtifactStore(root)
    d = store.open(key)
    items = json.loads((d / "items.json").read_text())
    n_users, n_items = items["n_users"], len(items["item_ids"])
    images = np.load(d / "images.npy", mmap_mode="r") if (d / "images.npy").is_file() else None
    paths = [Path(p) for p in items["image_paths"]] if items.get("image_paths") else None
    catalog = Catalog(item_ids=items["item_ids"], image_paths=paths, images=images,
                      categories=items.get("categories"), category_names=items.get("category_names", []))
    arr = {n: np.load(d / f"{n}.npy") for n in ("train_user", "train_item", "test_user", "test_item")}
    return RecDataset(
        name=items["name"], catalog=catalog, user_ids=items["user_ids"],
        train=Interactions(arr["train_user"], arr["train_item"], n_users, n_items),
        test=Interactions(arr["test_user"], arr["test_item"], n_users, n_items),
    )


def load_dataset(store: ArtifactStore, key: str) -> RecDataset:
    return _dataset_cached(str(store.root), key)


@lru_cache(maxsize=8)
def _extractor_cached(root: str, key: str):
    from services.extractor.weights import load_extractor

    store = ArtifactStore(root)
    ref = json.loads((store.open(key) / "extractor.json").read_text())
    path = store.open(ref["model_key"]) / "model.pt" if ref.get("model_key") else store.open(key) / "model.pt"
    model = load_extractor(path, backbone=ref["backbone"], layout="advrec")
    return model.eval()


def load_extractor_artifact(store: ArtifactStore, key: str):
    """The :class:`ImageModel` of an ``extractor`` step (eval mode, CPU)."""
    return _extractor_cached(str(store.root), key)


def load_features(store: ArtifactStore, key: str) -> dict[str, np.ndarray]:
    d = store.open(key)
    out = {n: np.load(d / f"{n}.npy", mmap_mode="r") for n in ("features", "classes", "probs")}
    if (d / "spatial.npy").is_file():
        out["spatial"] = np.load(d / "spatial.npy", mmap_mode="r")
    out["class_names"] = json.loads((d / "class_names.json").read_text())
    out["categories"] = np.load(d / "categories.npy")
    out["category_names"] = json.loads((d / "category_names.json").read_text())
    return out


def item_categories(ds: RecDataset, classes: np.ndarray, class_names: list[str], source: str) -> tuple[np.ndarray, list[str], str]:
    """Items' categories for the study's metrics: (ids (I,), names, the source actually used)."""
    labels = ds.catalog.categories
    labelled = labels is not None and all(c is not None for c in labels)
    if source == "auto":
        source = "catalog" if labelled and set(labels) <= set(class_names) else "extractor"  # type: ignore[arg-type]
    if source == "extractor":
        return np.asarray(classes, dtype=np.int64), list(class_names), source
    if not labelled:
        raise InvalidInput("scenario.category_source 'catalog' needs a category label for every catalog item")
    names = list(ds.catalog.category_names) or sorted(set(labels))  # type: ignore[arg-type]
    index = {n: i for i, n in enumerate(names)}
    return np.array([index[c] for c in labels], dtype=np.int64), names, source  # type: ignore[union-attr]


def catalog_images(ds: RecDataset, indices: np.ndarray | None = None, size: int | None = None) -> np.ndarray:
    """(N,H,W,3) uint8 images of catalog items (all when ``indices`` is None)."""
    from advrec_common.datasets.images import load_catalog_images

    idx = None if indices is None else [int(i) for i in indices]
    return load_catalog_images(ds.catalog, idx, size=size)


def _item_side(feats: dict[str, Any] | None, ds: RecDataset, needs: set[str], features: np.ndarray | None = None,
               spatial: np.ndarray | None = None, images: np.ndarray | None = None):
    """ItemSide for a recommender from (possibly attacked) features / images."""
    from services.recommender.items import ItemSide

    f = spatial_t = img_t = cat_t = None
    if "features" in needs:
        f = torch.tensor(np.array(features if features is not None else feats["features"]), dtype=torch.float32)
    if "spatial" in needs:
        sp = np.array(spatial if spatial is not None else feats["spatial"])
        spatial_t = torch.as_tensor(sp, dtype=torch.float32).flatten(2).transpose(1, 2).contiguous()  # (I,R,D')
    if "images" in needs:
        imgs = images if images is not None else catalog_images(ds)
        img_t = torch.as_tensor(np.ascontiguousarray(imgs)).permute(0, 3, 1, 2).contiguous()
    if "categories" in needs:
        cat_t = torch.tensor(np.array(feats["categories"]), dtype=torch.int64)
    return ItemSide(features=f, spatial=spatial_t, images=img_t, categories=cat_t)


def _load_scenario(store: ArtifactStore, key: str) -> dict[str, Any]:
    return json.loads((store.open(key) / "scenario.json").read_text())


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray | torch.Tensor):
        return np.asarray(o).tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


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
        from advrec_common.datasets.generic_layout import load_generic_dataset

        ds = load_generic_dataset(p["images_dir"], p["interactions"], p.get("categories"), kcore=p.get("kcore", 0))
    cat = ds.catalog
    if cat.images is not None:
        np.save(ctx.out / "images.npy", np.ascontiguousarray(cat.images))
    for name, arr in (("train_user", ds.train.user), ("train_item", ds.train.item), ("test_user", ds.test.user),
                      ("test_item", ds.test.item)):
        np.save(ctx.out / f"{name}.npy", arr)
    _write_json(ctx.out / "items.json", {
        "name": ds.name, "item_ids": cat.item_ids, "user_ids": ds.user_ids, "n_users": ds.n_users,
        "image_paths": [str(x) for x in cat.image_paths] if cat.image_paths is not None else None,
        "categories": cat.categories, "category_names": cat.category_names,
    })
    # the executor reads n_items from the artifact's meta.json to plan the attack shards
    ctx.meta.update(n_items=len(cat), n_users=ds.n_users, n_train=len(ds.train), n_test=len(ds.test))


def step_extractor(ctx: StepContext) -> None:
    """Train (demo) or load (checkpoint, named weight) an extractor; store it in advrec layout."""
    from services.extractor.weights import load_extractor, resolve_named_weights, save_extractor

    p = ctx.params
    info: dict[str, Any] = {"source": p["source"]}
    if p["source"] == "demo":
        from services.extractor.demo_extractors import DEMO_N_PER_CLASS, train_demo_extractor

        model, report, model_key = train_demo_extractor(
            ctx.store, p["defense"], n_per_class=p["demo_images_per_class"] or DEMO_N_PER_CLASS, seed=p["seed"],
            device=ctx.device, image_size=p["image_size"], epochs=p["epochs"],
        )
        info.update(model_key=model_key, report=report.model_dump(mode="json"))
    else:
        if p["source"] == "checkpoint":
            model = load_extractor(p["checkpoint"], backbone=p["backbone"], layout=p["layout"])
        else:
            from advrec_common.settings import get_settings

            model = resolve_named_weights(p["weight_name"], get_settings().resolved_weights_dir)
        save_extractor(model, ctx.out / "model.pt")
        info["report"] = None
    info["backbone"] = model.backbone
    info["class_names"] = list(model.class_names)
    info["feature_dim"] = model.feature_dim
    _write_json(ctx.out / "extractor.json", info)


def step_features(ctx: StepContext) -> None:
    """Clean features, predicted classes and probabilities of every catalog image."""
    from services.extractor.extraction import extract_features

    ds = load_dataset(ctx.store, ctx.dep("dataset"))
    model = load_extractor_artifact(ctx.store, ctx.dep("extractor/"))
    t0 = time.perf_counter()
    res = extract_features(model, ds.catalog, device=ctx.device, spatial=ctx.params["spatial"],
                           image_size=ctx.params["image_size"])
    np.save(ctx.out / "features.npy", res.features)
    np.save(ctx.out / "classes.npy", res.classes)
    np.save(ctx.out / "probs.npy", res.probs)
    if res.spatial is not None:
        np.save(ctx.out / "spatial.npy", res.spatial)
    _write_json(ctx.out / "class_names.json", list(model.class_names))
    cats, cat_names, source = item_categories(ds, res.classes, list(model.class_names), ctx.params["category_source"])
    np.save(ctx.out / "categories.npy", cats)
    _write_json(ctx.out / "category_names.json", cat_names)
    ctx.meta.update(seconds=time.perf_counter() - t0, n=len(res.features), dim=int(res.features.shape[1]),
                    category_source=source)


def _fit(rec_name: str, config: dict[str, Any], seed: int, ds: RecDataset, items, device: str):
    from services.recommender.models import build_recommender

    model = build_recommender(rec_name, ds.n_users, ds.n_items, {**config, "seed": seed, "device": device})
    report = model.fit(ds.train, items)
    return model, report


def _accuracy(model, ds: RecDataset, ks: list[int], items=None) -> dict[str, Any]:
    from services.recommender.metrics.accuracy import evaluate_accuracy

    return evaluate_accuracy(model, ds.train, ds.test, ks, items=items)


def _means(acc: dict[str, Any]) -> dict[str, float]:
    """Scalar means of an accuracy result (drops the per-user vectors)."""
    return {k: float(v) for k, v in acc.get("means", acc).items() if isinstance(v, int | float | np.floating)}


def step_train(ctx: StepContext) -> None:
    """Train a recommender on clean features; store the model, top-K lists and accuracy."""
    from services.recommender.models import RECOMMENDERS
    from services.recommender.scoring import topk

    p = ctx.params
    ds = load_dataset(ctx.store, ctx.dep("dataset"))
    needs = RECOMMENDERS[p["recommender"]].needs
    # DVBPR learns from pixels: its clean model has no features dependency
    feats = load_features(ctx.store, ctx.dep("features/")) if ctx.deps_of_kind("features/") else None
    items = _item_side(feats, ds, needs)
    t0 = time.perf_counter()
    model, report = _fit(p["recommender"], p["config"], p["seed"], ds, items, ctx.device)
    fit_seconds = time.perf_counter() - t0
    model.save(ctx.out / "model.pt")
    _, top = topk(model, None, min(p["max_k"], ds.n_items), exclude=ds.train)
    np.save(ctx.out / "topk.npy", top.cpu().numpy().astype(np.int64))
    acc = _accuracy(model, ds, _ks_for(p["max_k"]))
    _write_json(ctx.out / "train.json", {"fit_seconds": fit_seconds, "report": _dump(report), "accuracy": _means(acc)})


def _ks_for(max_k: int) -> list[int]:
    return sorted({k for k in (5, 10, 20, 50, 100) if k <= max_k} | {max_k})


def _dump(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    return obj.to_dict() if hasattr(obj, "to_dict") else obj


def step_scenario(ctx: StepContext) -> None:
    """Origin (category to push) and target (category to imitate), from the spec or the clean run."""
    from services.recommender.scenario import propose_scenario

    p = ctx.params
    feats = load_features(ctx.store, ctx.dep("features/"))
    names = feats["category_names"]
    top = ctx.store.get_array(ctx.dep("train/"), "topk")
    # the target must be a class the extractor can be pushed toward
    targetable = [n in feats["class_names"] for n in names]
    proposal = propose_scenario(torch.as_tensor(top), torch.tensor(np.array(feats["categories"])), names,
                                k=p["select_k"], min_items=p["min_items"])
    if not p.get("target") and not targetable[proposal["target"]["id"]]:
        proposal["target"] = next(r for r in proposal["table"] if targetable[r["id"]] and r["id"] != proposal["origin"]["id"])
    origin, target = p.get("origin"), p.get("target")
    for label, value in (("origin", origin), ("target", target)):
        if value is not None and value not in names:
            raise InvalidInput(f"scenario {label} {value!r} is not a category; categories: {names[:20]}")
    if target is not None and target not in feats["class_names"]:
        raise InvalidInput(f"scenario target {target!r} is not a class of the extractor")
    chosen = {"origin": origin or proposal["origin"]["name"], "target": target or proposal["target"]["name"],
              "chosen_by": "spec" if origin and target else "automatic (clean CHR@K ranking, as the study)",
              "select_k": p["select_k"], "ranking": proposal["table"]}
    if chosen["origin"] == chosen["target"]:
        raise InvalidInput("origin and target categories must differ")
    _write_json(ctx.out / "scenario.json", chosen)


def step_attack_shard(ctx: StepContext) -> None:
    """Attack the origin-category items of one catalog index range toward the target category."""
    from advrec_common.datasets.images import to_tensor, to_uint8
    from services.attacker.runner import attack_and_measure
    from services.attacker.spec import AttackSpec

    p = ctx.params
    ds = load_dataset(ctx.store, ctx.dep("dataset"))
    model = load_extractor_artifact(ctx.store, ctx.dep("extractor/"))
    feats = load_features(ctx.store, ctx.dep("features/"))
    scen = _load_scenario(ctx.store, ctx.dep("scenario"))
    if scen["target"] not in model.class_names:
        raise InvalidInput(f"target {scen['target']!r} is not a class of this extractor")
    origin, target = feats["category_names"].index(scen["origin"]), list(model.class_names).index(scen["target"])
    lo, hi = p["items"]
    idx = lo + np.flatnonzero(np.asarray(feats["categories"])[lo:hi] == origin)
    np.save(ctx.out / "items.npy", idx.astype(np.int64))
    if len(idx) == 0:
        ctx.meta.update(n=0, seconds=0.0)
        _write_json(ctx.out / "table.json", [])
        return
    spec_fields = {k: p[k] for k in ("method", "eps", "norm", "steps", "step_size", "budget_space", "seed")
                   if p.get(k) is not None}
    spec = AttackSpec(**spec_fields, **p.get("params", {}))
    clean = to_tensor(catalog_images(ds, idx, size=p.get("image_size")))
    out = attack_and_measure(model, clean, spec, target, p["delivery"], p["jpeg_quality"], device=ctx.device,
                             clean_features=torch.as_tensor(np.asarray(feats["features"])[idx]),
                             spatial="spatial" in feats)
    np.save(ctx.out / "adv_features.npy", out.features.numpy())
    if out.spatial is not None:
        np.save(ctx.out / "adv_spatial.npy", out.spatial.numpy())
    probs = out.logits.softmax(-1)
    np.save(ctx.out / "adv_classes.npy", probs.argmax(-1).numpy().astype(np.int64))
    np.save(ctx.out / "adv_probs.npy", probs.max(-1).values.numpy().astype(np.float32))
    np.save(ctx.out / "adv_images.npy", to_uint8(out.delivered) if p["delivery"] != "float" else
            out.delivered.permute(0, 2, 3, 1).numpy())
    seconds, m = out.seconds, out.measurement
    rows = m.to_table()
    for row, item in zip(rows, idx, strict=True):
        row["item"] = ds.catalog.item_ids[int(item)]
    _write_json(ctx.out / "table.json", rows)
    ctx.meta.update(n=int(len(idx)), seconds=seconds, images_per_s=len(idx) / max(seconds, 1e-9))


def step_adversarial(ctx: StepContext) -> None:
    """Merge the shards: the attacked feature matrix (clean rows elsewhere) and the attack's summary."""
    ds = load_dataset(ctx.store, ctx.dep("dataset"))
    feats = load_features(ctx.store, ctx.dep("features/"))
    shards = sorted(ctx.deps_of_kind("attack/").items(), key=lambda kv: int(kv[0].rsplit("shard", 1)[1]))
    features = np.array(feats["features"], dtype=np.float32)
    spatial = np.array(feats["spatial"], dtype=np.float32) if "spatial" in feats else None
    items, adv_images, table, seconds = [], [], [], 0.0
    adv_classes, adv_probs = [], []
    for _, key in shards:
        d = ctx.store.open(key)
        idx = np.load(d / "items.npy")
        table += json.loads((d / "table.json").read_text())
        if len(idx) == 0:
            continue
        items.append(idx)
        features[idx] = np.load(d / "adv_features.npy")
        if spatial is not None and (d / "adv_spatial.npy").is_file():
            spatial[idx] = np.load(d / "adv_spatial.npy")
        adv_images.append(np.load(d / "adv_images.npy"))
        adv_classes.append(np.load(d / "adv_classes.npy"))
        adv_probs.append(np.load(d / "adv_probs.npy"))
        seconds += ctx.store.meta(key)["result"].get("seconds", 0.0)
    idx = np.concatenate(items) if items else np.zeros(0, dtype=np.int64)
    np.save(ctx.out / "items.npy", idx)
    np.save(ctx.out / "features.npy", features)
    if spatial is not None:
        np.save(ctx.out / "spatial.npy", spatial)
    if adv_images:
        np.save(ctx.out / "adv_images.npy", np.concatenate(adv_images))
        np.save(ctx.out / "adv_classes.npy", np.concatenate(adv_classes))
        np.save(ctx.out / "adv_probs.npy", np.concatenate(adv_probs))
    _write_json(ctx.out / "table.json", table)
    _write_json(ctx.out / "summary.json", summarize_attack_table(table, seconds, len(ds.catalog)))


def summarize_attack_table(rows: list[dict[str, Any]], seconds: float, n_catalog: int) -> dict[str, Any]:
    """Means of the per-image measurements (SR and flip rate in %, over the attacked images)."""
    n = len(rows)
    out: dict[str, Any] = {"n_attacked": n, "n_catalog": n_catalog, "attack_seconds": seconds,
                           "images_per_s": (n / seconds) if seconds > 0 else None}
    if n == 0:
        return out
    for col in rows[0]:
        vals = [r[col] for r in rows if isinstance(r.get(col), bool | int | float) and r.get(col) is not None]
        if col in ("item", "clean_class", "adv_class") or not vals:
            continue
        mean = float(np.mean([float(v) for v in vals]))
        out[col] = 100.0 * mean if col in ("success", "flipped") else mean
    return out


def step_evaluate(ctx: StepContext) -> None:
    """Re-rank with attacked features (retrain or deployment) and measure the origin category's exposure."""
    from services.recommender.metrics.category import chr_at_k, ncdcg_at_k, rank_shift
    from services.recommender.metrics.significance import paired_tests
    from services.recommender.models import RECOMMENDERS, load_recommender
    from services.recommender.scoring import topk

    p = ctx.params
    ds = load_dataset(ctx.store, ctx.dep("dataset"))
    feats = load_features(ctx.store, ctx.dep("features/"))
    scen = _load_scenario(ctx.store, ctx.dep("scenario"))
    train_key = ctx.dep("train/")
    adv_key = ctx.dep("adversarial/")
    adv_dir = ctx.store.open(adv_key)
    needs = RECOMMENDERS[p["recommender"]].needs
    attacked_idx = np.load(adv_dir / "items.npy")
    images = None
    if "images" in needs:
        images = np.array(catalog_images(ds))
        if len(attacked_idx):
            adv_imgs = np.load(adv_dir / "adv_images.npy")
            images[attacked_idx] = adv_imgs if adv_imgs.dtype == np.uint8 else np.round(adv_imgs * 255).astype(np.uint8)
    items_after = _item_side(
        feats, ds, needs,
        features=np.load(adv_dir / "features.npy") if "features" in needs else None,
        spatial=np.load(adv_dir / "spatial.npy") if "spatial" in needs else None,
        images=images,
    )
    max_k = min(p["max_k"], ds.n_items)
    top_before = torch.as_tensor(ctx.store.get_array(train_key, "topk"))
    if p["mode"] == "retrain":
        model, _ = _fit(p["recommender"], p["config"], p["seed"], ds, items_after, ctx.device)
        _, top_after = topk(model, None, max_k, exclude=ds.train)
        acc = _accuracy(model, ds, p["ks"])
    else:
        model = load_recommender(ctx.store.open(train_key) / "model.pt")
        _, top_after = topk(model, None, max_k, exclude=ds.train, items=items_after)
        acc = _accuracy(model, ds, p["ks"], items=items_after)
    np.save(ctx.out / "topk.npy", top_after.cpu().numpy().astype(np.int64))
    origin = feats["category_names"].index(scen["origin"])
    item_cat = torch.tensor(np.array(feats["categories"]), dtype=torch.int64)
    per_k = []
    for k in p["ks"]:
        if k > max_k:
            continue
        row: dict[str, Any] = {"k": k}
        for metric, fn in (("chr", lambda t, kk: chr_at_k(t, item_cat, origin, kk, form="normalized")),
                           ("chr_count", lambda t, kk: chr_at_k(t, item_cat, origin, kk, form="count")),
                           ("ncdcg", lambda t, kk: ncdcg_at_k(t, item_cat, origin, kk))):
            v0, u0 = fn(top_before, k)
            v1, u1 = fn(top_after.cpu(), k)
            test = paired_tests(np.asarray(u0, dtype=np.float64), np.asarray(u1, dtype=np.float64))
            row[metric] = {"before": float(v0), "after": float(v1), "t_pvalue": test["t_pvalue"],
                           "wilcoxon_pvalue": test["wilcoxon_pvalue"]}
        per_k.append(row)
    shift = rank_shift(top_before, top_after.cpu(), torch.as_tensor(attacked_idx)) if len(attacked_idx) else None
    _write_json(ctx.out / "metrics.json", {
        "mode": p["mode"], "recommender": p["recommender"], "origin": scen["origin"], "target": scen["target"],
        "n_attacked": int(len(attacked_idx)), "per_k": per_k, "accuracy_after": _means(acc),
        "rank_shift": shift,
    })


def step_report(ctx: StepContext) -> None:
    from advrec.pipeline.report import build_report

    build_report(ctx)


STEP_FUNCTIONS: dict[str, Callable[[StepContext], None]] = {
    "dataset": step_dataset,
    "extractor": step_extractor,
    "features": step_features,
    "train": step_train,
    "scenario": step_scenario,
    "attack_shard": step_attack_shard,
    "adversarial": step_adversarial,
    "evaluate": step_evaluate,
    "report": step_report,
}
