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
from advrec_common.conventions import headline_k
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
    "scenario": "6",  # 2: ranks over every replicate's clean lists; 3: warnings, ranking of populated categories; 4: advice when named; 5: the oracle's feasibility decides; 6: tested over the disguised items
    "attack_shard": "3",  # per-image eligibility, float-domain success, changed flags
    "adversarial": "2",  # SR over eligible images, float SR, all-zero flag
    "placebo": "1",
    "oracle": "2",  # 2: real target items' features (form draw), the centroid as its own control
    "evaluate": "3",  # 2: per-replicate metrics, replicate-level tests; 3: per-item changes, deployment tested over items
    "report": "2-" + _report_code_version(),
    "promo_items": "1",
    "promo_attack": "1",
    "promo_transfer": "1",
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


def plan(spec: EvaluationSpec, n_items: int) -> Plan:
    """Every step of the evaluation, in dependency order; ``n_items`` = catalog size."""
    p = Plan()
    p.add("dataset", "dataset", dataset_params(spec))
    max_k = max(*spec.ks, spec.scenario.select_k)  # the clean lists also serve the scenario choice
    first_ext = spec.extractors[0].name
    first_rec = spec.recommenders[0].name

    spatial = any("spatial" in RECOMMENDER_NEEDS[r.name] for r in spec.recommenders)
    for i, ext in enumerate(spec.extractors):
        p.add(f"extractor/{ext.name}", "extractor", _extractor_params(spec, i),
              {"dataset": "dataset"} if ext.source == "train" else None)  # trained on the catalog
        p.add(f"features/{ext.name}", "features",
              features_params(ext.image_size, spatial, spec.scenario.category_source, ext.image_fit),
              {"dataset": "dataset", "extractor": f"extractor/{ext.name}"})

    def rec_params(rec) -> dict[str, Any]:
        return {"recommender": rec.name, "config": rec.config_params(), "seed": spec.seed,
                "replicates": spec.replicates, "max_k": max_k}

    for ext in spec.extractors:
        for rec in spec.recommenders:
            inputs = {"dataset": "dataset", "features": f"features/{ext.name}"} if uses_extractor(rec.name) \
                else {"dataset": "dataset"}
            p.add(train_name(ext.name, rec.name), "train", rec_params(rec), inputs)

    scen_rec = next((r.name for r in spec.recommenders if uses_extractor(r.name)), first_rec)
    p.add("scenario", "scenario", {**spec.scenario.model_dump(mode="json"), "recommender": scen_rec,
                                   "k": headline_k(spec.ks), "seed": spec.seed},
          {"dataset": "dataset", "features": f"features/{first_ext}", "train": train_name(first_ext, scen_rec)})

    def evaluations(prefix: str, ext_name: str, perturbation: str, control: str,
                    recommenders: list[Any]) -> None:
        for rec in recommenders:
            for mode in spec.modes:
                p.add(f"{prefix}/{rec.name}/{mode}", "evaluate",
                      {**rec_params(rec), "mode": mode, "ks": spec.ks, "control": control},
                      {"dataset": "dataset", "features": f"features/{ext_name}", "scenario": "scenario",
                       "train": train_name(ext_name, rec.name), "perturbation": perturbation})

    # BPR-MF reads nothing about items: trained for the clean accuracy table only, never evaluated
    movable = [r for r in spec.recommenders if reads_items(r.name)]
    n_shards = max(1, -(-n_items // spec.shard_size))
    for ext in spec.extractors:
        for control, form in (("oracle", {"form": "draw", "seed": spec.seed}), ("oracle_centroid", {"form": "centroid"})):
            if control not in spec.controls:
                continue
            oracle = p.add(f"{control}/{ext.name}", "oracle", {"spatial": spatial, **form},
                           {"features": f"features/{ext.name}", "scenario": "scenario"})
            # the oracle moves features: a recommender that learns from pixels has nothing it could move
            evaluations(f"evaluate/{ext.name}/{control}", ext.name, oracle, control,
                        [r for r in spec.recommenders if uses_extractor(r.name)])
        for atk in spec.attacks:
            for eps in atk.eps:
                cell = cell_name(ext.name, atk.method, eps)
                attack_params = {**atk.attack_params(), "eps": eps, "seed": spec.seed, "image_size": ext.image_size}
                shards = []
                for s in range(n_shards):
                    lo, hi = s * spec.shard_size, min(n_items, (s + 1) * spec.shard_size)
                    shards.append(p.add(f"attack/{cell}/shard{s}", "attack_shard", {**attack_params, "items": [lo, hi]},
                                        {"dataset": "dataset", "extractor": f"extractor/{ext.name}",
                                         "features": f"features/{ext.name}", "scenario": "scenario"}))
                adversarial = p.add(f"adversarial/{cell}", "adversarial", {"n_shards": n_shards},
                                    {"dataset": "dataset", "features": f"features/{ext.name}",
                                     "scenario": "scenario", "shards": shards})
                evaluations(f"evaluate/{cell}", ext.name, adversarial, "attack", movable)
                if "placebo" in spec.controls:
                    placebo = p.add(f"placebo/{cell}", "placebo",
                                    {"draws": spec.replicates, "seed": spec.seed, "image_size": ext.image_size,
                                     "delivery": atk.delivery, "jpeg_quality": atk.jpeg_quality, "spatial": spatial},
                                    {"dataset": "dataset", "extractor": f"extractor/{ext.name}",
                                     "features": f"features/{ext.name}", "adversarial": adversarial})
                    evaluations(f"evaluate/{cell}/placebo", ext.name, placebo, "placebo", movable)
    if spec.promotion is not None:
        _plan_promotion(p, spec, rec_params, first_ext, scen_rec, spatial)
    evals = [s.name for s in p if s.kind in ("evaluate", "promo_evaluate")]
    p.add("report", "report", {"spec": json.loads(spec.model_dump_json()),
                               "gallery_users": spec.gallery_users},
          {"steps": [s.name for s in p if s.kind in ("dataset", "extractor", "features", "train", "scenario",
                                                      "adversarial", "placebo", "oracle", "promo_items", "promo_attack",
                                                      "promo_transfer")] + evals})
    return p


def promo_cell_name(extractor: str, method: str, eps: float, recommender: str, source: str | None = None) -> str:
    """An item-promotion cell: ``<extractor>/<method>/eps<eps>/<recommender>`` (``/from-<source>`` for the
    transfer of another extractor's images)."""
    return f"{extractor}/{method}/{eps_label(eps)}/{recommender}" + (f"/from-{source}" if source else "")


def _plan_promotion(p: Plan, spec: EvaluationSpec, rec_params: Any, first_ext: str, scen_rec: str,
                    spatial: bool) -> None:
    """Item promotion: the promoted items, then per extractor x attack x budget x visual recommender the
    attack (white-box against that recommender), its placebo and their evaluations in each mode; with
    ``transfer_from``, the source extractor's images delivered to every other extractor too."""
    promo = spec.promotion
    assert promo is not None
    k = headline_k(spec.ks)
    items = p.add("promotion/items", "promo_items", {"items": promo.items.model_dump(mode="json"), "k": k},
                  {"dataset": "dataset", "features": f"features/{first_ext}", "train": train_name(first_ext, scen_rec),
                   "scenario": "scenario"})
    recs = [r for r in spec.recommenders if uses_extractor(r.name)]
    modes = spec.promotion_modes()

    def evaluations(cell: str, ext: str, rec: Any, perturbation: str, control: str) -> None:
        for mode in modes:
            suffix = f"/{control}" if control == "placebo" else ""
            p.add(f"promote_eval/{cell}{suffix}/{mode}", "promo_evaluate",
                  {**rec_params(rec), "mode": mode, "ks": spec.ks, "k": k, "control": control},
                  {"dataset": "dataset", "features": f"features/{ext}", "train": train_name(ext, rec.name),
                   "items": items, "perturbation": perturbation})

    def placebo(cell: str, ext: Any, atk: Any, perturbation: str) -> str:
        return p.add(f"promote/{cell}/placebo", "placebo",
                     {"draws": spec.replicates, "seed": spec.seed, "image_size": ext.image_size,
                      "delivery": atk.delivery, "jpeg_quality": atk.jpeg_quality, "spatial": spatial},
                     {"dataset": "dataset", "extractor": f"extractor/{ext.name}", "features": f"features/{ext.name}",
                      "perturbation": perturbation})

    sources: dict[tuple[str, str, float, str], str] = {}
    for ext in spec.extractors:
        for atk in promo.attacks:
            for eps in atk.eps:
                for rec in recs:
                    cell = promo_cell_name(ext.name, atk.method, eps, rec.name)
                    attack = p.add(f"promote/{cell}", "promo_attack", {
                        **atk.attack_params(), "eps": eps, "seed": spec.seed, "image_size": ext.image_size,
                        "recommender": rec.name, "k": k, "users": promo.users.model_dump(mode="json"),
                        "topk_temperature": promo.topk_temperature, "expa_targets": promo.expa_targets},
                        {"dataset": "dataset", "extractor": f"extractor/{ext.name}",
                         "features": f"features/{ext.name}", "items": items, "train": train_name(ext.name, rec.name)})
                    sources[ext.name, atk.method, eps, rec.name] = attack
                    evaluations(cell, ext.name, rec, attack, "attack")
                    evaluations(cell, ext.name, rec, placebo(cell, ext, atk, attack), "placebo")
    if promo.transfer_from is None:
        return
    for ext in spec.extractors:
        if ext.name == promo.transfer_from:
            continue
        for atk in promo.attacks:
            for eps in atk.eps:
                for rec in recs:
                    cell = promo_cell_name(ext.name, atk.method, eps, rec.name, promo.transfer_from)
                    moved = p.add(f"promote/{cell}", "promo_transfer",
                                  {"image_size": ext.image_size, "spatial": spatial},
                                  {"dataset": "dataset", "extractor": f"extractor/{ext.name}",
                                   "features": f"features/{ext.name}",
                                   "source": sources[promo.transfer_from, atk.method, eps, rec.name]})
                    evaluations(cell, ext.name, rec, moved, "attack")
                    evaluations(cell, ext.name, rec, placebo(cell, ext, atk, moved), "placebo")

