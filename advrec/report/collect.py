"""Gather every number of a run from its artifacts into one JSON-ready dict (``results.json``).

Nothing here computes a metric: each figure is copied from the artifact that produced it (read
through the producing domain's artifact module), together with the configuration it belongs to
(extractor, attack method, budget, recommender, mode, K). Findings, tables, plots and the HTML
page are all derived from this one dict.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from advrec import __version__
from advrec_common.datasets.artifact import dataset_name
from advrec_common.errors import InvalidInput
from advrec_common.store import ArtifactStore
from advrec_common.vision.artifact import extractor_info
from services.attacker.artifacts import load_adversarial
from services.extractor.artifacts import load_features
from services.recommender.artifacts import load_metrics, load_scenario, train_info

SCHEMA_VERSION = 1
ALPHA = 0.05  # significance level of the study's `*` mark (paired t-test p <= 0.05)

# the extractor's training report fields worth keeping in results.json
_EXTRACTOR_REPORT_FIELDS = ("method", "clean_accuracy", "robust_accuracy", "eval_eps", "eval_steps", "epochs",
                            "train_seconds", "n_train", "n_val")


# -- small shared helpers --------------------------------------------------------------------------


def finite(x: Any) -> float | None:
    """``x`` as a float, or None when missing / NaN / infinite."""
    if x is None or isinstance(x, bool) or not isinstance(x, int | float | np.number):
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def is_significant(p: Any, alpha: float = ALPHA) -> bool:
    """The study's rule: a p-value marks a change when p <= alpha (missing/NaN never does)."""
    v = finite(p)
    return v is not None and v <= alpha


def mark(p: Any, alpha: float = ALPHA) -> str:
    return "*" if is_significant(p, alpha) else ""


def headline_k(ks: list[int]) -> int:
    """The K the summary and findings speak about: the second-smallest K, or the only one."""
    ks = sorted(set(int(k) for k in ks))
    if not ks:
        raise InvalidInput("the spec lists no K")
    return ks[1] if len(ks) > 1 else ks[0]


def attack_label(method: str, eps: float) -> str:
    """'PGD eps 8', or 'CW' for an unbounded (eps 0) attack."""
    return method.upper() if eps == 0 else f"{method.upper()} eps {eps:g}"


def json_clean(obj: Any) -> Any:
    """Plain JSON: NaN/inf -> None, numpy scalars/arrays -> Python (strict JSON for browsers)."""
    if isinstance(obj, dict):
        return {str(k): json_clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_clean(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def flat_accuracy(acc: Any) -> dict[str, float]:
    """Scalar accuracy means, whether stored flat (``{"hr@10": ..}``) or under a ``"means"`` key."""
    if not isinstance(acc, dict):
        return {}
    src = acc["means"] if isinstance(acc.get("means"), dict) else acc
    return {str(k): float(v) for k, v in src.items() if finite(v) is not None}


def cells(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], float]]:
    """(extractor name, attack grid entry, eps) of every attack cell, in the spec's order."""
    for ext in spec["extractors"]:
        for atk in spec["attacks"]:
            for eps in atk["eps"]:
                yield ext["name"], atk, float(eps)


Cell = tuple[str, str, float]  # (extractor, method, eps)


@dataclass
class RunArtifacts:
    """The report's inputs by role: the artifact keys of one run's steps.

    ``train`` is keyed by (extractor, recommender) (a pixel recommender's one model is listed under
    every extractor, with ``uses_extractor`` False), ``adversarial`` by cell, ``evaluate`` by
    (cell, recommender, mode).
    """

    store: ArtifactStore
    scenario: str
    extractors: dict[str, str]
    features: dict[str, str]
    train: dict[tuple[str, str], str]
    adversarial: dict[Cell, str]
    evaluate: dict[tuple[Cell, str, str], str]
    dataset: str | None = None
    uses_extractor: dict[str, bool] = field(default_factory=dict)


# -- collection -------------------------------------------------------------------------------------


def check_spec(spec: Any) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise InvalidInput("report: params['spec'] must be the evaluation spec as a JSON object")
    missing = [k for k in ("extractors", "attacks", "recommenders", "ks", "modes") if not spec.get(k)]
    if missing:
        raise InvalidInput(f"report: the spec lacks {missing}")
    return spec


def _extractors(art: RunArtifacts, spec: dict[str, Any], origin: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for ext in spec["extractors"]:
        name = ext["name"]
        info = extractor_info(art.store, art.extractors[name])
        rep = info.get("report") or None
        feats = load_features(art.store, art.features[name], arrays=False)
        class_names, classes = feats.category_names, feats.categories
        n_origin = int((classes == class_names.index(origin)).sum()) if origin in class_names else None
        out[name] = {
            "defense": ext.get("defense"), "source": info.get("source", ext.get("source")),
            "backbone": info.get("backbone", ext.get("backbone")),
            "report": {f: rep.get(f) for f in _EXTRACTOR_REPORT_FIELDS if f in rep} if rep else None,
            "n_classes": len(info.get("class_names") or class_names), "feature_dim": info.get("feature_dim"),
            "n_items": int(classes.shape[0]), "n_origin_items": n_origin,
            "categories": {k: v for k, v in feats.category_info.items() if k != "head"},
            "category_head": {k: v for k, v in (feats.category_info.get("head") or {}).items() if k != "class_names"},
        }
    return out


def _clean(art: RunArtifacts, spec: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for ext in spec["extractors"]:
        for rec in spec["recommenders"]:
            train = train_info(art.store, art.train[ext["name"], rec["name"]])
            rows.append({"extractor": ext["name"], "recommender": rec["name"],
                         "uses_extractor": art.uses_extractor.get(rec["name"], True),
                         "accuracy": flat_accuracy(train.get("accuracy")), "fit_seconds": train.get("fit_seconds")})
    return rows


def _attack_entry(ext: str, atk: dict[str, Any], eps: float) -> dict[str, Any]:
    return {"extractor": ext, "method": atk["method"], "eps": eps, "norm": atk.get("norm"),
            "steps": atk.get("steps"), "budget_space": atk.get("budget_space"), "delivery": atk.get("delivery")}


def collect_results(art: RunArtifacts, spec: dict[str, Any]) -> dict[str, Any]:
    """The run's numbers with their configurations (the ``results.json`` document, minus findings)."""
    spec = check_spec(spec)
    store = art.store
    scenario = load_scenario(store, art.scenario)
    dataset = None
    if art.dataset is not None:
        dataset = {"name": dataset_name(store, art.dataset), **store.meta(art.dataset).get("result", {})}
    attacks, evaluations = [], []
    for ext, atk, eps in cells(spec):
        cell = (ext, atk["method"], eps)
        summary = load_adversarial(store, art.adversarial[cell], arrays=False).summary
        attacks.append({**_attack_entry(ext, atk, eps), "summary": summary})
        for rec in spec["recommenders"]:
            for mode in spec["modes"]:
                m = load_metrics(store, art.evaluate[cell, rec["name"], mode])
                evaluations.append({
                    "extractor": ext, "method": atk["method"], "eps": eps, "recommender": rec["name"], "mode": mode,
                    "n_attacked": m.get("n_attacked"), "per_k": m.get("per_k", []),
                    "accuracy_after": flat_accuracy(m.get("accuracy_after")), "rank_shift": m.get("rank_shift"),
                })
    return json_clean({
        "schema_version": SCHEMA_VERSION, "advrec_version": __version__, "alpha": ALPHA,
        "headline_k": headline_k(spec["ks"]), "spec": spec, "dataset": dataset,
        "scenario": scenario, "extractors": _extractors(art, spec, scenario.get("origin")),
        "clean": _clean(art, spec), "attacks": attacks, "evaluations": evaluations,
    })


# -- lookups used by findings, tables and plots ----------------------------------------------------


def per_k(evaluation: dict[str, Any], k: int) -> dict[str, Any] | None:
    """The per-K row of an evaluation (None when K exceeded the catalog and was skipped)."""
    return next((r for r in evaluation.get("per_k", []) if r.get("k") == k), None)


def available_ks(results: dict[str, Any]) -> list[int]:
    """Ks present in every evaluation (some may be skipped for tiny catalogs)."""
    sets = [{r["k"] for r in e.get("per_k", [])} for e in results["evaluations"]]
    return sorted(set.intersection(*sets)) if sets else []


def summary_k(results: dict[str, Any]) -> int:
    """The headline K if every evaluation has it, else the second-smallest available K."""
    ks = available_ks(results)
    k = results["headline_k"]
    return k if k in ks or not ks else headline_k(ks)


def baseline_extractor(results: dict[str, Any]) -> str:
    """The undefended reference: the first extractor with defense 'standard', else the first one."""
    names = [e["name"] for e in results["spec"]["extractors"]]
    return next((n for n in names if results["extractors"][n].get("defense") == "standard"), names[0])


def attack_keys(results: dict[str, Any]) -> list[tuple[str, float]]:
    """(method, eps) of every attack setting, in the spec's order."""
    return [(a["method"], float(e)) for a in results["spec"]["attacks"] for e in a["eps"]]


def attack_summary(results: dict[str, Any], extractor: str, method: str, eps: float) -> dict[str, Any]:
    for a in results["attacks"]:
        if a["extractor"] == extractor and a["method"] == method and a["eps"] == eps:
            return a["summary"]
    return {}


# names the attacker's measurement table may use for one quantity (first present wins)
SUMMARY_ALIASES: dict[str, tuple[str, ...]] = {
    "SR %": ("success", "success_rate"),
    "flip %": ("flipped", "flip", "flip_rate"),
    "feature MSE": ("feat_mse", "feature_mse"),
    "feature L2": ("feat_l2", "feature_l2"),
    "feature cosine dist": ("feat_cos", "feat_cosine", "feature_cosine"),
    "PSNR": ("psnr",),
    "SSIM": ("ssim",),
    "LPIPS": ("lpips",),
    "Linf /255": ("linf_255", "linf255"),
    "L2 /255": ("l2_255", "l2255"),
    "Linf": ("linf",),
    "L2": ("l2",),
    "images/s": ("images_per_s",),
    "n attacked": ("n_attacked",),
}


def summary_value(summary: dict[str, Any], label: str) -> float | None:
    """The value of table column ``label`` (see :data:`SUMMARY_ALIASES`) in an attack summary."""
    for name in SUMMARY_ALIASES[label]:
        v = finite(summary.get(name))
        if v is not None:
            return v
    return None


def summary_extra_keys(summary: dict[str, Any]) -> list[str]:
    """Numeric summary fields that no alias covers (kept in attacks.csv under their own name)."""
    known = {n for names in SUMMARY_ALIASES.values() for n in names} | {"n_catalog", "attack_seconds"}
    return sorted(k for k, v in summary.items() if k not in known and finite(v) is not None)
