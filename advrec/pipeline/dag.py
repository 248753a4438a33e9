"""The study as a DAG of steps: the one definition both executors run.

Every step is a pure function of its parameters and its inputs' outputs, and its output is an
artifact whose key is ``artifact_key(kind, params, [input keys], STEP_VERSIONS[kind])``. A step
names its inputs by role (``{"dataset": "dataset", "features": "features/std", "shards": [...]}``):
the step function asks for ``ctx.input("features")``, never for a name prefix.
Keys are therefore known before anything runs: an executor skips every step whose artifact is
already stored, so a rerun, a larger grid or a resumed crash only computes what is missing.

Planning needs the catalog size (attacks are sharded by catalog index ranges), so executors
materialise the ``dataset`` step first (:func:`dataset_step`), then call :func:`plan`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from advrec.pipeline.spec import EvaluationSpec
from advrec_common.conventions import ExtractorView, extractor_views, headline_k
from advrec_common.store import artifact_key, file_digest
from services.extractor.artifacts import FEATURES_VERSION, features_params
from services.recommender.kinds import RECOMMENDER_NEEDS, reads_items, uses_extractor

Inputs = dict[str, "str | list[str]"]



def _report_code_version() -> str:
    """A digest of the report package's sources: a report (findings, wording, tables) is rebuilt whenever
    that code changes, never reused from an older advrec (it is the one step whose code changes often)."""
    digest = hashlib.sha256()
    for path in sorted((Path(__file__).resolve().parent.parent / "report").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


# Bump a kind's version when its code changes the numbers it produces: its artifacts (and
# everything downstream, through the keys) are then recomputed instead of reused.
STEP_VERSIONS: dict[str, str] = {
    "dataset": "2",  # 2: the demo world's categories differ in popularity (demo_users.category_concentration)
    "extractor": "1",
    "features": FEATURES_VERSION,  # the extractor service computes the same key
    "train": "2",  # R replicates per model
    "scenario": "8",  # 2: ranks over every replicate's clean lists; 3: warnings, ranking of populated categories; 4: advice when named; 5: the oracle's feasibility decides; 6: tested over the disguised items; 7: the largest significant rise; 8: the items test's own interval
    "attack_shard": "4",  # per-image eligibility, float-domain success, changed flags; 4: seeded draws of a random defense
    "adversarial": "2",  # SR over eligible images, float SR, all-zero flag
    "placebo": "2",  # 2: seeded draws of a random defense
    "oracle": "2",  # 2: real target items' features (form draw), the centroid as its own control
    "evaluate": "4",  # 2: per-replicate metrics, replicate-level tests; 3: per-item changes, deployment tested over items; 4: the items test's own interval
    "report": "2-" + _report_code_version(),
    "defense": "1",
    "transfer": "2",  # 2: seeded draws of a random defense
    "promo_items": "1",
    "promo_attack": "2",  # 2: seeded draws of a random defense
    "promo_transfer": "2",  # 2: seeded draws of a random defense
    "promo_evaluate": "1",
}

# Which Celery queue runs each kind (GPU workers serve extract/attack).
STEP_QUEUES: dict[str, str] = {
    "dataset": "extract",
    "extractor": "extract",
    "features": "extract",
    "train": "recommend",
    "scenario": "recommend",
    "attack_shard": "attack",
    "adversarial": "attack",
    "placebo": "attack",
    "oracle": "recommend",
    "evaluate": "recommend",
    "report": "orchestrate",
    "defense": "extract",
    "transfer": "extract",
    "promo_items": "recommend",
    "promo_attack": "attack",
    "promo_transfer": "extract",
    "promo_evaluate": "recommend",
}


def _flatten(inputs: Inputs) -> tuple[str, ...]:
    out: list[str] = []
    for v in inputs.values():
        out.extend([v] if isinstance(v, str) else v)
    return tuple(out)


@dataclass(frozen=True)
class Step:
    """One node: ``kind`` names the function; ``inputs`` maps roles to other steps of the plan."""

    name: str
    kind: str
    params: dict[str, Any]
    inputs: Inputs
    key: str
    queue: str

    @property
    def deps(self) -> tuple[str, ...]:
        """Every input step, in role order (the order their keys enter this step's key)."""
        return _flatten(self.inputs)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "params": self.params, "inputs": self.inputs,
                "deps": list(self.deps), "key": self.key, "queue": self.queue}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Step:
        return cls(d["name"], d["kind"], d["params"], d["inputs"], d["key"], d["queue"])


@dataclass
class Plan:
    """Steps in a topological order (every step after its dependencies)."""

    steps: dict[str, Step] = field(default_factory=dict)

    def add(self, name: str, kind: str, params: dict[str, Any], inputs: Inputs | None = None) -> str:
        """Plan step ``name`` (a no-op if planned already); returns the name."""
        inputs = dict(inputs or {})
        deps = _flatten(inputs)
        missing = [d for d in deps if d not in self.steps]
        if missing:
            raise ValueError(f"step {name} depends on unplanned {missing}")
        if name in self.steps:
            return name
        key = artifact_key(kind, params, [self.steps[d].key for d in deps], STEP_VERSIONS[kind])
        self.steps[name] = Step(name, kind, params, inputs, key, STEP_QUEUES[kind])
        return name

    def add_stored(self, name: str, kind: str, key: str, params: dict[str, Any] | None = None) -> str:
        """A step whose artifact is already stored under ``key`` (e.g. a dataset of an earlier run)."""
        self.steps[name] = Step(name, kind, dict(params or {}), {}, key, STEP_QUEUES[kind])
        return name

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps.values())

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, name: str) -> Step:
        return self.steps[name]

    def to_json(self) -> list[dict[str, Any]]:
        return [s.to_json() for s in self]

    @classmethod
    def from_json(cls, rows: list[dict[str, Any]]) -> Plan:
        plan = cls()
        for r in rows:
            plan.steps[r["name"]] = Step.from_json(r)
        return plan


def _dir_fingerprint(path: Path) -> str:
    """Cheap identity of a folder of images: names, sizes and mtimes of its files."""
    h = hashlib.sha256()
    for p in sorted(path.iterdir()) if path.is_dir() else []:
        if p.is_file():
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def dataset_params(spec: EvaluationSpec) -> dict[str, Any]:
    """Parameters of the dataset step, with content fingerprints of on-disk inputs."""
    ds = spec.dataset
    params: dict[str, Any] = ds.step_params()
    if ds.kind == "study":
        root = Path(ds.root)  # type: ignore[arg-type]
        params["fingerprint"] = {
            name: file_digest(root / name) if (root / name).is_file() else None
            for name in ("trainingset.tsv", "testset.tsv")
        }
        params["fingerprint"]["images"] = _dir_fingerprint(root / "original" / "images")
    elif ds.kind == "generic":
        params["fingerprint"] = {
            "interactions": file_digest(ds.interactions) if Path(ds.interactions).is_file() else None,  # type: ignore[arg-type]
            "categories": file_digest(ds.categories) if ds.categories and Path(ds.categories).is_file() else None,
            "images": _dir_fingerprint(Path(ds.images_dir)),  # type: ignore[arg-type]
        }
    return params


def dataset_step(spec: EvaluationSpec) -> Step:
    """The first step of every plan (run before planning the rest)."""
    plan = Plan()
    plan.add("dataset", "dataset", dataset_params(spec))
    return plan["dataset"]


def _extractor_params(spec: EvaluationSpec, index: int) -> dict[str, Any]:
    ext = spec.extractors[index]
    params = ext.model_dump(mode="json")
    params.pop("name")  # the label does not change the computation
    params.pop("image_fit")  # how catalog images are fitted concerns the features, not the model
    for name in ("init_weights", "training"):  # fields of source 'train': absent from other keys (stable)
        if not params[name]:
            params.pop(name)
    if ext.source == "train":
        params["seed"] = spec.seed
        params["image_fit"] = ext.image_fit  # the training images are fitted this way
    if ext.source == "demo":
        params["image_size"] = ext.image_size or spec.dataset.image_size
        params["seed"] = spec.seed
    if ext.source == "checkpoint":
        params["checkpoint_sha256"] = file_digest(ext.checkpoint) if Path(ext.checkpoint).is_file() else None  # type: ignore[arg-type]
    return params


def eps_label(eps: float) -> str:
    return f"eps{eps:g}"


def cell_name(extractor: str, method: str, eps: float) -> str:
    """An attack cell's name: ``<extractor>/<method>/eps<eps>``."""
    return f"{extractor}/{method}/{eps_label(eps)}"


def train_name(ext_name: str, rec_name: str) -> str:
    """``train/<ext>/<rec>``, or ``train/-/<rec>`` for a recommender that learns from pixels (DVBPR)
    and so does not see the extractor: one clean model serves every extractor."""
    return f"train/{ext_name}/{rec_name}" if uses_extractor(rec_name) else f"train/-/{rec_name}"


def _defense_params(spec: EvaluationSpec, i: int) -> dict[str, Any]:
    """A rung's ``defense`` step parameters: its resolved fields, and (fitted kinds) the seed and image size."""
    entry = spec.defenses[i]
    base = next(e for e in spec.extractors if e.name == entry.extractor)
    params: dict[str, Any] = {"defense": entry.params()}
    if entry.info.fitted:
        params.update(seed=spec.seed, image_size=base.image_size, fit=base.image_fit)
    return params


def plan(spec: EvaluationSpec, n_items: int) -> Plan:
    """Every step of the evaluation, in dependency order; ``n_items`` = catalog size.

    Columns are the :func:`~advrec_common.conventions.extractor_views`: the spec's extractors and, per defense
    rung, the rung in front of its extractor attacked adaptively (through the defense) and non-adaptively (the
    extractor's own attacked images, delivered through the defense)."""
    p = Plan()
    p.add("dataset", "dataset", dataset_params(spec))
    max_k = max(*spec.ks, spec.scenario.select_k)  # the clean lists also serve the scenario choice
    first_ext = spec.extractors[0].name
    first_rec = spec.recommenders[0].name
    views = extractor_views(json.loads(spec.model_dump_json()))
    sizes = {e.name: e.image_size for e in spec.extractors}

    spatial = any("spatial" in RECOMMENDER_NEEDS[r.name] for r in spec.recommenders)
    for i, ext in enumerate(spec.extractors):
        p.add(f"extractor/{ext.name}", "extractor", _extractor_params(spec, i),
              {"dataset": "dataset"} if ext.source == "train" else None)  # trained on the catalog
        p.add(f"features/{ext.name}", "features",
              features_params(ext.image_size, spatial, spec.scenario.category_source, ext.image_fit),
              {"dataset": "dataset", "extractor": f"extractor/{ext.name}"})
    for i, entry in enumerate(spec.defenses):  # a rung: fitted (or built) for its extractor, then its features
        base = next(e for e in spec.extractors if e.name == entry.extractor)
        p.add(f"defense/{entry.name}", "defense", _defense_params(spec, i),
              {"dataset": "dataset", "extractor": f"extractor/{base.name}", "features": f"features/{base.name}"})
        p.add(f"features/{entry.name}", "features",
              features_params(base.image_size, spatial, spec.scenario.category_source, base.image_fit),
              {"dataset": "dataset", "extractor": f"extractor/{base.name}", "defense": f"defense/{entry.name}"})

    def rec_params(rec) -> dict[str, Any]:
        return {"recommender": rec.name, "config": rec.config_params(), "seed": spec.seed,
                "replicates": spec.replicates, "max_k": max_k}

    for view in views:
        if view.source is not None:
            continue  # a non-adaptive view reads its rung's features and models
        for rec in spec.recommenders:
            inputs = {"dataset": "dataset", "features": f"features/{view.name}"} if uses_extractor(rec.name) \
                else {"dataset": "dataset"}
            p.add(train_name(view.name, rec.name), "train", rec_params(rec), inputs)

    scen_rec = next((r.name for r in spec.recommenders if uses_extractor(r.name)), first_rec)
    p.add("scenario", "scenario", {**spec.scenario.model_dump(mode="json"), "recommender": scen_rec,
                                   "k": headline_k(spec.ks), "seed": spec.seed},
          {"dataset": "dataset", "features": f"features/{first_ext}", "train": train_name(first_ext, scen_rec)})

    def evaluations(prefix: str, view: ExtractorView, perturbation: str, control: str,
                    recommenders: list[Any]) -> None:
        for rec in recommenders:
            for mode in spec.modes:
                p.add(f"{prefix}/{rec.name}/{mode}", "evaluate",
                      {**rec_params(rec), "mode": mode, "ks": spec.ks, "control": control},
                      {"dataset": "dataset", "features": f"features/{view.model}", "scenario": "scenario",
                       "train": train_name(view.model, rec.name), "perturbation": perturbation})

    def model_inputs(view: ExtractorView) -> dict[str, str]:
        """The extractor (and the rung's defense) whose composition a view's images pass through."""
        inputs = {"extractor": f"extractor/{view.extractor}", "features": f"features/{view.model}"}
        return {**inputs, "defense": f"defense/{view.rung}"} if view.rung else inputs

    # BPR-MF reads nothing about items: trained for the clean accuracy table only, never evaluated
    movable = [r for r in spec.recommenders if reads_items(r.name)]
    n_shards = max(1, -(-n_items // spec.shard_size))
    for view in views:
        size = sizes[view.extractor]
        if view.source is None:
            for control, form in (("oracle", {"form": "draw", "seed": spec.seed}),
                                  ("oracle_centroid", {"form": "centroid"})):
                if control not in spec.controls:
                    continue
                oracle = p.add(f"{control}/{view.name}", "oracle", {"spatial": spatial, **form},
                               {"features": f"features/{view.model}", "scenario": "scenario"})
                # the oracle moves features: a recommender that learns from pixels has nothing it could move
                evaluations(f"evaluate/{view.name}/{control}", view, oracle, control,
                            [r for r in spec.recommenders if uses_extractor(r.name)])
        for atk in spec.attacks:
            for eps in atk.eps:
                cell = cell_name(view.name, atk.method, eps)
                if view.source is None:  # attacked here (through the rung's defense: adaptively)
                    attack_params = {**atk.attack_params(), "eps": eps, "seed": spec.seed, "image_size": size}
                    shards = []
                    for s in range(n_shards):
                        lo, hi = s * spec.shard_size, min(n_items, (s + 1) * spec.shard_size)
                        shards.append(p.add(f"attack/{cell}/shard{s}", "attack_shard",
                                            {**attack_params, "items": [lo, hi]},
                                            {"dataset": "dataset", **model_inputs(view), "scenario": "scenario"}))
                    adversarial = p.add(f"adversarial/{cell}", "adversarial", {"n_shards": n_shards},
                                        {"dataset": "dataset", "features": f"features/{view.model}",
                                         "scenario": "scenario", "shards": shards})
                else:  # the non-adaptive attacker: the bare extractor's attacked images, through the defense
                    adversarial = p.add(f"adversarial/{cell}", "transfer", {"image_size": size, "spatial": spatial},
                                        {"dataset": "dataset", **model_inputs(view), "scenario": "scenario",
                                         "source": f"adversarial/{cell_name(view.source, atk.method, eps)}"})
                evaluations(f"evaluate/{cell}", view, adversarial, "attack", movable)
                if "placebo" in spec.controls:
                    placebo = p.add(f"placebo/{cell}", "placebo",
                                    {"draws": spec.replicates, "seed": spec.seed, "image_size": size,
                                     "delivery": atk.delivery, "jpeg_quality": atk.jpeg_quality, "spatial": spatial},
                                    {"dataset": "dataset", **model_inputs(view), "adversarial": adversarial})
                    evaluations(f"evaluate/{cell}/placebo", view, placebo, "placebo", movable)
    if spec.promotion is not None:
        _plan_promotion(p, spec, rec_params, first_ext, scen_rec, spatial, views, model_inputs)
    evals = [s.name for s in p if s.kind in ("evaluate", "promo_evaluate")]
    p.add("report", "report", {"spec": json.loads(spec.model_dump_json()),
                               "gallery_users": spec.gallery_users},
          {"steps": [s.name for s in p if s.kind in ("dataset", "extractor", "features", "train", "scenario",
                                                      "adversarial", "transfer", "placebo", "oracle", "defense",
                                                      "promo_items", "promo_attack", "promo_transfer")] + evals})
    return p


def promo_cell_name(extractor: str, method: str, eps: float, recommender: str, source: str | None = None) -> str:
    """An item-promotion cell: ``<extractor>/<method>/eps<eps>/<recommender>`` (``/from-<source>`` for the
    transfer of another extractor's images)."""
    return f"{extractor}/{method}/{eps_label(eps)}/{recommender}" + (f"/from-{source}" if source else "")


def promotion_cells(spec: dict[str, Any]) -> list[tuple[ExtractorView, str, float, str, str | None]]:
    """Every promotion cell of a spec (a JSON dump): (view, method, eps, recommender, source) -- white-box under
    every view attacked here (through a rung's defense: adaptively), ``transfer_from``'s images delivered to
    every other extractor, and a rung's non-adaptive view receiving its extractor's images."""
    promo = spec.get("promotion")
    if not promo:
        return []
    views = extractor_views(spec)
    recs = [r["name"] for r in spec["recommenders"] if uses_extractor(r["name"])]
    grid = [(a["method"], float(eps)) for a in promo["attacks"] for eps in a["eps"]]
    out: list[tuple[ExtractorView, str, float, str, str | None]] = []
    for view in views:
        if view.source is None and view.rung is None:  # a spec extractor: white-box, and the transfer onto it
            sources = [None] + ([promo["transfer_from"]] if promo.get("transfer_from") not in (None, view.name) else [])
        else:  # a rung: adaptively (its own view), or its extractor's images (the non-adaptive view)
            sources = [view.source]
        out += [(view, m, eps, r, src) for src in sources for m, eps in grid for r in recs]
    return out


def _plan_promotion(p: Plan, spec: EvaluationSpec, rec_params: Any, first_ext: str, scen_rec: str,
                    spatial: bool, views: list[ExtractorView], model_inputs: Any) -> None:
    """Item promotion: the promoted items, then every promotion cell (:func:`promotion_cells`): the attack
    (white-box against that recommender; through a rung's defense, adaptively) or the transfer of another
    extractor's images, its placebo and their evaluations in each mode."""
    promo = spec.promotion
    assert promo is not None
    k = headline_k(spec.ks)
    items = p.add("promotion/items", "promo_items", {"items": promo.items.model_dump(mode="json"), "k": k},
                  {"dataset": "dataset", "features": f"features/{first_ext}", "train": train_name(first_ext, scen_rec),
                   "scenario": "scenario"})
    recs = {r.name: r for r in spec.recommenders}
    attacks = {(a.method, float(eps)): a for a in promo.attacks for eps in a.eps}
    sizes = {e.name: e.image_size for e in spec.extractors}
    modes = spec.promotion_modes()

    def evaluations(cell: str, view: ExtractorView, rec: Any, perturbation: str, control: str) -> None:
        for mode in modes:
            suffix = f"/{control}" if control == "placebo" else ""
            p.add(f"promote_eval/{cell}{suffix}/{mode}", "promo_evaluate",
                  {**rec_params(rec), "mode": mode, "ks": spec.ks, "k": k, "control": control},
                  {"dataset": "dataset", "features": f"features/{view.model}", "train": train_name(view.model, rec.name),
                   "items": items, "perturbation": perturbation})

    def placebo(cell: str, view: ExtractorView, atk: Any, perturbation: str) -> str:
        return p.add(f"promote/{cell}/placebo", "placebo",
                     {"draws": spec.replicates, "seed": spec.seed, "image_size": sizes[view.extractor],
                      "delivery": atk.delivery, "jpeg_quality": atk.jpeg_quality, "spatial": spatial},
                     {"dataset": "dataset", **model_inputs(view), "perturbation": perturbation})

    cells = promotion_cells(json.loads(spec.model_dump_json()))
    for view, method, eps, rec_name, source in sorted(cells, key=lambda c: c[4] is not None):  # attacks first
        atk, rec = attacks[method, eps], recs[rec_name]
        cell = promo_cell_name(view.name, method, eps, rec_name, source)
        if source is None:
            made = p.add(f"promote/{cell}", "promo_attack", {
                **atk.attack_params(), "eps": eps, "seed": spec.seed, "image_size": sizes[view.extractor],
                "recommender": rec_name, "k": k, "users": promo.users.model_dump(mode="json"),
                "topk_temperature": promo.topk_temperature, "expa_targets": promo.expa_targets},
                {"dataset": "dataset", **model_inputs(view), "items": items, "train": train_name(view.model, rec_name)})
        else:
            made = p.add(f"promote/{cell}", "promo_transfer", {"image_size": sizes[view.extractor], "spatial": spatial},
                         {"dataset": "dataset", **model_inputs(view),
                          "source": f"promote/{promo_cell_name(source, method, eps, rec_name)}"})
        evaluations(cell, view, rec, made, "attack")
        evaluations(cell, view, rec, placebo(cell, view, atk, made), "placebo")
