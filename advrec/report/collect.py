"""Gather every number of a run from its artifacts into one JSON-ready dict (``results.json``).

Nothing here computes a metric: each figure is copied from the artifact that produced it (read
through the producing domain's artifact module), together with the configuration it belongs to
(extractor, attack method, budget, control, recommender, mode, K). The tests across a run
(multiplicity correction, paired success-rate comparisons, correlations) are :mod:`.stats`;
findings, tables, plots and the HTML page are derived from this one dict.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from advrec import __version__
from advrec_common.conventions import extractor_views, headline_k
from advrec_common.datasets.artifact import dataset_name
from advrec_common.errors import InvalidInput
from advrec_common.store import ArtifactStore
from advrec_common.vision.artifact import extractor_info
from advrec_common.vision.defenses.artifact import defense_info
from services.attacker.artifacts import load_adversarial, load_perturbation
from services.extractor.artifacts import load_features
from services.extractor.named_weights import NAMED_WEIGHTS
from services.recommender.artifacts import load_metrics, load_promoted_items, load_scenario, train_info

SCHEMA_VERSION = 2
ALPHA = 0.05  # false discovery rate of the verdicts (Benjamini-Hochberg over every test of the run)

# the extractor's training report fields worth keeping in results.json
_EXTRACTOR_REPORT_FIELDS = ("method", "clean_accuracy", "robust_accuracy", "eval_eps", "eval_steps", "epochs",
                            "train_seconds", "n_train", "n_val")
CONTROLS = ("attack", "placebo", "oracle", "oracle_centroid")
ORACLES = ("oracle", "oracle_centroid")  # controls of one extractor, not of an attack cell


def is_oracle(control: str) -> bool:
    """Whether ``control`` is an oracle (its evaluations belong to an extractor, not to an attack cell)."""
    return control in ORACLES
# metrics whose tests enter the family (chr_count is chr times K: the same hypothesis)
TESTED_METRICS = ("chr", "ncdcg")


# -- small shared helpers --------------------------------------------------------------------------


NOISE = 1e-12  # an effect this small is float rounding of a zero difference (CHR steps are >= 1e-8)


def signed(x: float, digits: int = 3) -> str:
    """'+0.0123': an effect or bound with its sign; float noise of a zero difference prints as +0."""
    return f"{0.0 if abs(x) < NOISE else x:+.{digits}g}"


def interval_text(m: dict[str, Any], digits: int) -> str:
    """' [-0.003, +0.027]', ' (all 3 equal)' for replicates that tied (no interval exists), or ''."""
    lo, hi = finite(m.get("ci_low")), finite(m.get("ci_high"))
    if lo is not None and hi is not None:
        return f" [{signed(lo, digits)}, {signed(hi, digits)}]"
    n = m.get("n_replicates")
    if isinstance(n, int) and n > 1 and str(m.get("test", "")).startswith("exact sign-flip"):
        return f" (all {n} equal)"
    return ""


def effect_value(x: Any) -> float | None:
    """An effect or interval bound for the tables: :func:`finite`, with float noise of a zero difference as 0."""
    v = finite(x)
    return None if v is None else (0.0 if abs(v) < NOISE else v)


def finite(x: Any) -> float | None:
    """``x`` as a float, or None when missing / NaN / infinite."""
    if x is None or isinstance(x, bool) or not isinstance(x, int | float | np.number):
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def is_significant(p: Any, alpha: float = ALPHA) -> bool:
    """p <= alpha (missing/NaN never is)."""
    v = finite(p)
    return v is not None and v <= alpha


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
    """(extractor view, attack grid entry, eps) of every attack cell, in the spec's order (the views:
    :func:`~advrec_common.conventions.extractor_views`)."""
    for view in extractor_views(spec):
        for atk in spec["attacks"]:
            for eps in atk["eps"]:
                yield view.name, atk, float(eps)


def view_names(results: dict[str, Any]) -> list[str]:
    """The run's columns: its extractors, then each defense rung against the adaptive and the non-adaptive
    attacker."""
    return [v.name for v in extractor_views(results["spec"])]


Cell = tuple[str, str, float]  # (extractor, method, eps)
PromoCell = tuple[str, str, float, str, "str | None"]  # (extractor, method, eps, recommender, source extractor)


@dataclass
class RunArtifacts:
    """The report's inputs by role: the artifact keys of one run's steps.

    ``train`` is keyed by (extractor, recommender) (a pixel recommender's one model is listed under
    every extractor, with ``uses_extractor`` False), ``adversarial``/``placebo`` by cell,
    ``oracle`` by (control, extractor) with control ``oracle`` or ``oracle_centroid``, ``evaluate`` by
    (control, cell, recommender, mode) where the cell of an oracle evaluation is ``(extractor, control, 0.0)``.
    """

    store: ArtifactStore
    scenario: str
    extractors: dict[str, str]
    features: dict[str, str]
    train: dict[tuple[str, str], str]
    adversarial: dict[Cell, str]
    evaluate: dict[tuple[str, Cell, str, str], str]
    placebo: dict[Cell, str] = field(default_factory=dict)
    oracle: dict[tuple[str, str], str] = field(default_factory=dict)
    dataset: str | None = None
    uses_extractor: dict[str, bool] = field(default_factory=dict)
    defenses: dict[str, str] = field(default_factory=dict)  # a rung's views -> its defense artifact
    # item promotion: the promoted items, and per cell (extractor, method, eps, recommender, source) its attack
    # artifact and its evaluations by (cell, mode, control)
    promoted_items: str | None = None
    promotion_attacks: dict[PromoCell, str] = field(default_factory=dict)
    promotion: dict[tuple[PromoCell, str, str], str] = field(default_factory=dict)


# -- collection -------------------------------------------------------------------------------------


def check_spec(spec: Any) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise InvalidInput("report: params['spec'] must be the evaluation spec as a JSON object")
    missing = [k for k in ("extractors", "attacks", "recommenders", "ks", "modes") if not spec.get(k)]
    if missing:
        raise InvalidInput(f"report: the spec lacks {missing}")
    return spec


def _origin_recognition(feats: Any, origin: str | None) -> float | None:
    """Share of the origin category's items that the attacked classifier assigns to the origin on their
    clean images: the extractor's own classifier, or the category head fitted on its features.

    None where it is not informative: the categories are the extractor's predicted classes (1 by
    construction), or the origin has no item or is a class of neither classifier.
    """
    names, cats = list(feats.category_names), np.asarray(feats.categories)
    if feats.category_info.get("used") == "extractor" or origin not in names:
        return None
    members = cats == names.index(origin)
    if not members.any():
        return None
    read = feats.head_categories(members)  # the attacks aim at the head when there is one
    if read is not None:
        return float((read == names.index(origin)).mean())
    if origin not in feats.class_names:
        return None
    return float((np.asarray(feats.classes)[members] == feats.class_names.index(origin)).mean())


def _extractors(art: RunArtifacts, spec: dict[str, Any], origin: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    by_name = {e["name"]: e for e in spec["extractors"]}
    for view in extractor_views(spec):
        name, ext = view.name, by_name[view.extractor]
        info = extractor_info(art.store, art.extractors[name])
        rep = info.get("report") or None
        feats = load_features(art.store, art.features[name])
        class_names, classes = feats.category_names, feats.categories
        n_origin = int((classes == class_names.index(origin)).sum()) if origin in class_names else None
        recognition = _origin_recognition(feats, origin)
        features_meta = art.store.meta(art.features[name]).get("result", {})
        out[name] = {
            "defense": extractor_defense(ext), "source": info.get("source", ext.get("source")),
            "backbone": info.get("backbone", ext.get("backbone")),
            "report": {f: rep.get(f) for f in _EXTRACTOR_REPORT_FIELDS if f in rep} if rep else None,
            "n_classes": len(info.get("class_names") or class_names), "feature_dim": info.get("feature_dim"),
            "n_items": int(classes.shape[0]), "n_origin_items": n_origin,
            "category_source": features_meta.get("category_source"),
            "origin_recognition": recognition,
            # an extractor that does not see most origin items as the origin class is a weak comparison
            "weak": recognition is not None and recognition < 0.5,
            "categories": {k: v for k, v in feats.category_info.items() if k != "head"},
            "category_head": {k: v for k, v in (feats.category_info.get("head") or {}).items() if k != "class_names"},
            "seconds_per_image": features_meta.get("seconds_per_image"),  # wall time: a measurement, not a result
        }
        if view.rung:  # a defense rung: what defends, in front of which extractor, against which attacker
            rung = defense_info(art.store, art.defenses[name])
            out[name].update(defense=rung["kind"], base=view.extractor, rung=view.rung,
                             attacker="non-adaptive" if view.source else "adaptive",
                             rung_defense={k: rung.get(k) for k in ("kind", "label", "params", "report")})
    return out


def _clean(art: RunArtifacts, spec: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for view in extractor_views(spec):
        if view.source is not None:
            continue  # a rung's non-adaptive view has the rung's clean models
        for rec in spec["recommenders"]:
            train = train_info(art.store, art.train[view.name, rec["name"]])
            rows.append({"extractor": view.name, "recommender": rec["name"],
                         "uses_extractor": art.uses_extractor.get(rec["name"], True),
                         "accuracy": flat_accuracy(train.get("accuracy")), "fit_seconds": train.get("fit_seconds"),
                         "accuracy_per_replicate": [flat_accuracy(a) for a in train.get("accuracy_per_replicate") or []],
                         "n_replicates": len(train.get("seeds") or [0])})
    return rows


def _attack_entry(ext: str, atk: dict[str, Any], eps: float) -> dict[str, Any]:
    return {"extractor": ext, "method": atk["method"], "eps": eps, "norm": atk.get("norm"),
            "steps": atk.get("steps"), "budget_space": atk.get("budget_space"), "delivery": atk.get("delivery")}


def _success_by_item(art: RunArtifacts, cell: Cell) -> dict[str, tuple[bool, bool]]:
    """item id -> (eligible, success) of an attack cell's images."""
    table = load_adversarial(art.store, art.adversarial[cell], arrays=False).table
    return {str(r["item"]): (r.get("clean_is_target") is not True, bool(r.get("success")))
            for r in table if r.get("success") is not None}


def extractor_defense(ext: dict[str, Any]) -> str | None:
    """How an extractor of the spec was trained: its ``defense``, or a named weight's (None: not declared)."""
    if ext.get("defense"):
        return ext["defense"]
    named = NAMED_WEIGHTS.get(ext.get("weight_name") or "")
    return named.defense if ext.get("source") == "named" and named else None


def defense_baselines(extractors: dict[str, dict[str, Any]], names: list[str]) -> dict[str, str]:
    """Each extractor compared as a defense -> the undefended extractor it is compared with.

    Standard extractors are references, never "defenses" (an ImageNet model beside a small CNN is
    another baseline, not a defense of it). A defended or undeclared extractor is compared with the
    first standard one of the same backbone, else the first standard one. With no standard extractor,
    the first one is the reference for all others (the layout before defenses were declared)."""
    standard = [n for n in names if extractors[n].get("defense") == "standard"]
    if not standard:
        return {n: names[0] for n in names[1:]}
    out = {}
    for n in names:
        if n in standard:
            continue
        same = [s for s in standard if extractors[s].get("backbone") == extractors[n].get("backbone")]
        out[n] = (same or standard)[0]
    return out


def sr_pairs(art: RunArtifacts, spec: dict[str, Any], baselines: dict[str, str]) -> list[dict[str, Any]]:
    """Per defended extractor and attack setting, the paired success counts against its baseline over the
    items attacked and eligible under both: b = succeeded under base only, c = under the defense only."""
    out = []
    for ext, base in baselines.items():
        for atk in spec["attacks"]:
            for eps in atk["eps"]:
                c0, c1 = (base, atk["method"], float(eps)), (ext, atk["method"], float(eps))
                s0, s1 = _success_by_item(art, c0), _success_by_item(art, c1)
                both = [i for i in s0 if i in s1 and s0[i][0] and s1[i][0]]
                b = sum(1 for i in both if s0[i][1] and not s1[i][1])
                c = sum(1 for i in both if s1[i][1] and not s0[i][1])
                out.append({"baseline": base, "extractor": ext, "method": atk["method"], "eps": float(eps),
                            "n_paired": len(both), "base_only": b, "defense_only": c,
                            "both": sum(1 for i in both if s0[i][1] and s1[i][1])})
    return out


def collect_results(art: RunArtifacts, spec: dict[str, Any]) -> dict[str, Any]:
    """The run's numbers with their configurations (the ``results.json`` document, minus the run-wide
    tests and findings)."""
    spec = check_spec(spec)
    store = art.store
    scenario = load_scenario(store, art.scenario)
    dataset = None
    if art.dataset is not None:
        dataset = {"name": dataset_name(store, art.dataset), **store.meta(art.dataset).get("result", {})}
    attacks, evaluations = [], []
    for ext, atk, eps in cells(spec):
        cell = (ext, atk["method"], eps)
        entry = {**_attack_entry(ext, atk, eps), "summary": load_adversarial(store, art.adversarial[cell],
                                                                             arrays=False).summary}
        if cell in art.placebo:
            entry["placebo"] = load_perturbation(store, art.placebo[cell]).summary
        attacks.append(entry)
    oracles = [{"extractor": e, "control": c, "summary": load_perturbation(store, k).summary}
               for (c, e), k in art.oracle.items()]
    for (control, cell, rec, mode), key in art.evaluate.items():
        m = load_metrics(store, key)
        evaluations.append({
            "extractor": cell[0], "method": cell[1], "eps": cell[2], "control": control, "recommender": rec,
            "mode": mode, "n_perturbed": m.get("n_perturbed", m.get("n_attacked")),
            "n_replicates": m.get("n_replicates", 1), "per_k": m.get("per_k", []),
            "accuracy_after": flat_accuracy(m.get("accuracy_after")), "rank_shift": m.get("rank_shift"),
        })
    extractors = _extractors(art, spec, scenario.get("origin"))
    names = [v.name for v in extractor_views(spec)]
    base = next((n for n in names if extractors[n].get("defense") == "standard"), names[0])
    baselines = defense_baselines(extractors, names)
    return json_clean({
        "promotion": collect_promotion(art, spec),
        "schema_version": SCHEMA_VERSION, "advrec_version": __version__, "alpha": ALPHA,
        "headline_k": headline_k(spec["ks"]), "spec": spec, "dataset": dataset, "baseline": base,
        "baselines": baselines,
        "scenario": scenario, "extractors": extractors, "clean": _clean(art, spec), "attacks": attacks,
        "oracles": oracles, "evaluations": evaluations, "sr_pairs": sr_pairs(art, spec, baselines),
        "environment": environment(art),
    })


def collect_promotion(art: RunArtifacts, spec: dict[str, Any]) -> dict[str, Any] | None:
    """The item-promotion numbers: the promoted items, each attack cell's summary, and every evaluation's
    per-replicate, per-item standing before and after (None without promotion)."""
    if art.promoted_items is None or not spec.get("promotion"):
        return None
    store = art.store
    rows, info = load_promoted_items(store, art.promoted_items)
    attacks = []
    for (ext, method, eps, rec, source), key in art.promotion_attacks.items():
        attacks.append({"extractor": ext, "method": method, "eps": eps, "recommender": rec, "source": source,
                        "summary": load_perturbation(store, key).summary,
                        "expa_targets": store.meta(key).get("result", {}).get("expa_targets")})
    evaluations = []
    for ((ext, method, eps, rec, source), mode, control), key in art.promotion.items():
        m = load_metrics(store, key)
        evaluations.append({"extractor": ext, "method": method, "eps": eps, "recommender": rec, "source": source,
                            "mode": mode, "control": control, "seeds": m.get("seeds"),
                            "per_replicate": m["per_replicate"]})
    modes = list(dict.fromkeys(e["mode"] for e in evaluations))
    return {"k": headline_k(spec["ks"]), "modes": modes, "items": {**info, "rows": rows.tolist()},
            "attacks": attacks, "evaluations": evaluations, "spec": spec["promotion"]}


def environment(art: RunArtifacts) -> dict[str, Any]:
    """How the run's steps were computed: per step kind, the CPU thread counts and devices used (from each
    artifact's meta, so reused steps report the run that computed them), and the torch builds and CPU
    vector ISAs (``AVX2``, ``AVX512``) that computed them. Training numbers are the same only for the
    same torch build, CPU ISA and thread counts: this is what to compare when two runs differ."""
    keys = [art.scenario, *art.extractors.values(), *art.features.values(), *art.train.values(),
            *art.adversarial.values(), *art.evaluate.values(), *art.placebo.values(), *art.oracle.values()]
    for key in art.adversarial.values():  # the attacks themselves ran in the shards the merge step lists
        shards = (art.store.meta(key).get("deps") or {}).get("shards") or []
        keys.extend(k for k in shards if isinstance(k, str) and art.store.has(k))
    threads: dict[str, set[int]] = {}
    devices: dict[str, set[str]] = {}
    builds: set[str] = set()
    cpus: set[str] = set()
    for key in dict.fromkeys(keys):
        meta = art.store.meta(key)
        compute, kind = meta.get("compute") or {}, meta.get("kind")
        if not kind or not compute:
            continue  # computed before advrec recorded it
        if isinstance(compute.get("threads"), int):
            threads.setdefault(kind, set()).add(compute["threads"])
        if isinstance(compute.get("device"), str):
            devices.setdefault(kind, set()).add(compute["device"])
        if isinstance(compute.get("torch"), str):
            builds.add(compute["torch"])
        if isinstance(compute.get("cpu_isa"), str):
            cpus.add(compute["cpu_isa"])
    return {"threads": {k: sorted(v) for k, v in sorted(threads.items())},
            "devices": {k: sorted(v) for k, v in sorted(devices.items())},
            "torch": sorted(builds), "cpu_isa": sorted(cpus)}


# -- lookups used by stats, findings, tables and plots ---------------------------------------------


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


def baselines_of(results: dict[str, Any]) -> dict[str, str]:
    """Each extractor compared as a defense -> its baseline (:func:`defense_baselines`; older results:
    every extractor but the single baseline)."""
    if "baselines" in results:
        return results["baselines"]
    names = view_names(results)
    return {n: results["baseline"] for n in names if n != results["baseline"]}


def attack_keys(results: dict[str, Any]) -> list[tuple[str, float]]:
    """(method, eps) of every attack setting, in the spec's order."""
    return [(a["method"], float(e)) for a in results["spec"]["attacks"] for e in a["eps"]]


def attack_entry(results: dict[str, Any], extractor: str, method: str, eps: float) -> dict[str, Any]:
    for a in results["attacks"]:
        if a["extractor"] == extractor and a["method"] == method and a["eps"] == eps:
            return a
    return {}


def attack_summary(results: dict[str, Any], extractor: str, method: str, eps: float) -> dict[str, Any]:
    return attack_entry(results, extractor, method, eps).get("summary", {})


def evaluations_of(results: dict[str, Any], control: str, extractor: str, method: str | None = None,
                   eps: float | None = None) -> list[dict[str, Any]]:
    """The evaluations of one control in one cell (oracle: of one extractor), in plan order."""
    return [e for e in results["evaluations"] if e["control"] == control and e["extractor"] == extractor
            and (is_oracle(control) or (e["method"], e["eps"]) == (method, eps))]


def matching(results: dict[str, Any], ev: dict[str, Any], control: str) -> dict[str, Any] | None:
    """The evaluation of ``control`` with the same extractor, recommender and mode as ``ev`` (and the
    same attack cell for a placebo)."""
    for e in results["evaluations"]:
        if (e["control"], e["extractor"], e["recommender"], e["mode"]) != (control, ev["extractor"],
                                                                            ev["recommender"], ev["mode"]):
            continue
        if is_oracle(control) or (e["method"], e["eps"]) == (ev["method"], ev["eps"]):
            return e
    return None


# names the attacker's measurement table may use for one quantity (first present wins)
SUMMARY_ALIASES: dict[str, tuple[str, ...]] = {
    "SR %": ("success",),
    "float SR %": ("float_success",),
    "already target %": ("clean_target_rate",),
    "n eligible": ("n_eligible",),
    "flip %": ("flipped",),
    "feature MSE": ("feat_mse",),
    "feature RMSE": ("feat_rmse",),
    "feature L2": ("feat_l2",),
    "feature cosine dist": ("feat_cos",),
    "PSNR": ("psnr",),
    "SSIM": ("ssim",),
    "LPIPS": ("lpips",),
    "Linf /255": ("linf_255",),
    "L2 /255": ("l2_255",),
    "images/s": ("images_per_s",),
    "n attacked": ("n_attacked",),
    "n changed": ("n_changed",),
    "clean class probability": ("clean_prob",),  # of the class the extractor gives the clean image
    "adversarial class probability": ("adv_prob",),  # of the class it gives the delivered adversarial image
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
    known = {n for names in SUMMARY_ALIASES.values() for n in names} | {
        "n_catalog", "attack_seconds", "success_all", "all_zero", "linf", "l2"}
    return sorted(k for k, v in summary.items() if k not in known and finite(v) is not None)
