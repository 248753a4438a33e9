"""The before/after gallery (the study's example figure): users' top-5 before and after an attack,
and attacked items with their perturbation magnified.

Cell: the first attack evaluation (spec order) whose CHR@K rose significantly (at the run's FDR);
if none did, the one with the largest rise (the page says so). Lists: replicate 0's. Users: the ``n_users`` whose top-5 gained the most
origin-category items, ties broken by the lower user index (deterministic).
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image

from advrec.report.collect import RunArtifacts, finite, per_k, summary_k
from advrec.report.plots import Figure, figure_png
from advrec_common.datasets.artifact import load_dataset_artifact
from advrec_common.datasets.images import load_catalog_images
from services.attacker.artifacts import load_adversarial
from services.extractor.artifacts import load_features
from services.recommender.artifacts import load_topk

TOP_N = 5
N_EXAMPLES = 3


def png_b64(image: np.ndarray) -> str:
    """(H,W,3) uint8 -> base64 PNG."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def choose_cell(results: dict[str, Any]) -> tuple[dict[str, Any], bool] | None:
    """(evaluation, significant?) shown in the gallery, or None when there are no evaluations."""
    k = summary_k(results)
    best, best_rise = None, -np.inf
    for e in results["evaluations"]:
        if e["control"] != "attack":
            continue
        c = (per_k(e, k) or {}).get("chr") or {}
        b, a = finite(c.get("before")), finite(c.get("after"))
        if a is None or b is None:
            continue
        if a > b and c.get("significant"):
            return e, True
        if a - b > best_rise:
            best, best_rise = e, a - b
    return (best, False) if best is not None else None


def gainers(before: np.ndarray, after: np.ndarray, is_origin: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Users (and their gains) whose top lists gained the most origin items; (U,N) lists, (I,) bool mask."""
    gain = is_origin[after].sum(1) - is_origin[before].sum(1)
    order = np.lexsort((np.arange(len(gain)), -gain))[:n]  # gain desc, then user index asc
    return order, gain[order]


def _perturbation_figure(clean: np.ndarray, adv: np.ndarray, ids: list[str]) -> tuple[str, list[dict[str, Any]]]:
    """Rows: clean | adversarial | |delta| x m (scaled so the largest |delta| is 1); m labels the x-axis."""
    delta = np.abs(adv.astype(np.float32) - clean.astype(np.float32)) / 255.0
    fig = Figure(figsize=(6.0, 2.3 * len(ids)))
    axes = fig.subplots(len(ids), 3, squeeze=False)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.35 / (2.3 * len(ids)), top=1 - 0.3 / (2.3 * len(ids)),
                        wspace=0.1, hspace=0.45)
    info = []
    for r, item in enumerate(ids):
        peak = float(delta[r].max())
        m = 1.0 / peak if peak > 0 else 1.0
        for c, (img, title) in enumerate(((clean[r], "clean"), (adv[r], "adversarial"),
                                          (np.clip(delta[r] * m, 0.0, 1.0), "|perturbation|"))):
            ax = axes[r][c]
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{title}" if c else f"{item}: {title}", fontsize=8)
        axes[r][2].set_xlabel(f"|δ| × {m:.0f}  (L∞ {peak * 255:.0f}/255)", fontsize=8)
        info.append({"item": item, "magnification": m, "linf_255": peak * 255.0})
    return figure_png(fig), info


def build_gallery(art: RunArtifacts, results: dict[str, Any], n_users: int) -> dict[str, Any] | None:
    """Gallery data with inline images (``None`` without a dataset input, evaluations or users)."""
    chosen = choose_cell(results)
    if n_users <= 0 or chosen is None or art.dataset is None:
        return None
    ev, significant = chosen
    ext, rec = ev["extractor"], ev["recommender"]
    cell = (ext, ev["method"], float(ev["eps"]))
    ds = load_dataset_artifact(art.store, art.dataset)
    feats = load_features(art.store, art.features[ext], arrays=False)
    origin = results["scenario"].get("origin")
    names = feats.category_names
    is_origin = feats.categories == (names.index(origin) if origin in names else -1)
    # replicate 0 (the model the recommender service serves) before and after
    before = load_topk(art.store, art.train[ext, rec])[0, :, :TOP_N]
    after = load_topk(art.store, art.evaluate["attack", cell, rec, ev["mode"]])[0, :, :TOP_N]
    users, gains = gainers(before, after, is_origin, n_users)
    adv = load_adversarial(art.store, art.adversarial[cell])
    attacked = adv.items
    adv_images = adv.images_u8() if len(attacked) else None
    adv_row = {int(i): r for r, i in enumerate(attacked)}

    shown = np.unique(np.concatenate([before[users].ravel(), after[users].ravel()]))
    # at the size (and fit) the extractor saw and the attack delivered; one at a time: file catalogs
    # may hold images of different sizes when no size applies (the page shows them all alike)
    size, fit = feats.category_info.get("image_size"), feats.category_info.get("fit", "crop")
    clean = {i: load_catalog_images(ds.catalog, [i], size=size, fit=fit)[0] for i in shown.tolist()}
    ids = ds.catalog.item_ids

    def tile(i: int, adversarial: bool) -> dict[str, Any]:
        use_adv = adversarial and i in adv_row and adv_images is not None
        img = adv_images[adv_row[i]] if use_adv else clean[i]
        return {"item": ids[i], "index": i, "origin": bool(is_origin[i]), "attacked": i in adv_row,
                "adversarial_image": use_adv, "png": png_b64(img)}

    user_rows = [{"user": ds.user_ids[u], "index": int(u), "gain": int(g),
                  "before": [tile(int(i), False) for i in before[u]],
                  "after": [tile(int(i), True) for i in after[u]]} for u, g in zip(users, gains, strict=True)]
    # attacked items the chosen users now see first, then the catalog's first attacked items
    seen = [int(i) for i in after[users].ravel() if int(i) in adv_row]
    examples = list(dict.fromkeys(seen + [int(i) for i in attacked]))[:N_EXAMPLES]
    perturbations, pert_info = None, []
    if examples and adv_images is not None:
        ex_clean = load_catalog_images(ds.catalog, examples, size=size, fit=fit)
        if ex_clean.shape[1:] != adv_images.shape[1:]:  # the extractor attacked resized images
            ex_clean = load_catalog_images(ds.catalog, examples, size=adv_images.shape[1], fit=fit)
        ex_adv = adv_images[[adv_row[i] for i in examples]]
        perturbations, pert_info = _perturbation_figure(ex_clean, ex_adv, [ids[i] for i in examples])
    return {"extractor": ext, "method": ev["method"], "eps": ev["eps"], "recommender": rec, "mode": ev["mode"],
            "significant": significant, "k": summary_k(results), "top_n": TOP_N, "users": user_rows,
            "perturbations": perturbations, "examples": pert_info}


def gallery_meta(gallery: dict[str, Any] | None) -> dict[str, Any] | None:
    """The gallery's selection without images (for results.json)."""
    if gallery is None:
        return None

    def strip(tiles: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in t.items() if k != "png"} for t in tiles]

    return {**{k: v for k, v in gallery.items() if k not in ("users", "perturbations")},
            "users": [{**u, "before": strip(u["before"]), "after": strip(u["after"])} for u in gallery["users"]]}
