"""The study as a DAG of steps: the one definition both executors run.

Every step is a pure function of its parameters and its dependencies' outputs, and its output is
an artifact whose key is ``artifact_key(kind, params, [dependency keys], STEP_VERSIONS[kind])``.
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
from advrec_common.store import artifact_key, file_digest

# Bump a kind's version when its code changes the numbers it produces: its artifacts (and
# everything downstream, through the keys) are then recomputed instead of reused.
STEP_VERSIONS: dict[str, str] = {
    "dataset": "1",
    "extractor": "1",
    "features": "1",
    "train": "1",
    "scenario": "1",
    "attack_shard": "2",
    "adversarial": "1",
    "evaluate": "1",
    "report": "1",
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
    "evaluate": "recommend",
    "report": "orchestrate",
}


@dataclass(frozen=True)
class Step:
    """One node: ``kind`` names the function, ``deps`` name other steps of the same plan."""

    name: str
    kind: str
    params: dict[str, Any]
    deps: tuple[str, ...]
    key: str
    queue: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "params": self.params, "deps": list(self.deps), "key": self.key,
                "queue": self.queue}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Step:
        return cls(d["name"], d["kind"], d["params"], tuple(d["deps"]), d["key"], d["queue"])


@dataclass
class Plan:
    """Steps in a topological order (every step after its dependencies)."""

    steps: dict[str, Step] = field(default_factory=dict)

    def add(self, name: str, kind: str, params: dict[str, Any], deps: list[str] | tuple[str, ...] = ()) -> str:
        missing = [d for d in deps if d not in self.steps]
        if missing:
            raise ValueError(f"step {name} depends on unplanned {missing}")
        if name in self.steps:
            return name
        key = artifact_key(kind, params, [self.steps[d].key for d in deps], STEP_VERSIONS[kind])
        self.steps[name] = Step(name, kind, params, tuple(deps), key, STEP_QUEUES[kind])
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
    params: dict[str, Any] = ds.model_dump(mode="json")
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
    if ext.source == "demo":
        params["image_size"] = ext.image_size or spec.dataset.image_size
        params["seed"] = spec.seed
    if ext.source == "checkpoint":
        params["checkpoint_sha256"] = file_digest(ext.checkpoint) if Path(ext.checkpoint).is_file() else None  # type: ignore[arg-type]
    return params


def features_params(image_size: int | None, spatial: bool, category_source: str = "auto") -> dict[str, Any]:
    """Parameters of a ``features`` step (one definition for the pipeline and the extractor service)."""
    return {"image_size": image_size, "spatial": spatial, "category_source": category_source}


def eps_label(eps: float) -> str:
    return f"eps{eps:g}"


def plan(spec: EvaluationSpec, n_items: int) -> Plan:
    """Every step of the evaluation, in dependency order; ``n_items`` = catalog size."""
    from services.recommender.models import RECOMMENDERS

    p = Plan()
    p.add("dataset", "dataset", dataset_params(spec))
    max_k = max(*spec.ks, spec.scenario.select_k)  # the clean lists also serve the scenario choice
    first_ext = spec.extractors[0].name
    first_rec = spec.recommenders[0].name

    spatial = any("spatial" in RECOMMENDERS[r.name].needs for r in spec.recommenders)
    for i, ext in enumerate(spec.extractors):
        p.add(f"extractor/{ext.name}", "extractor", _extractor_params(spec, i))
        p.add(f"features/{ext.name}", "features",
              features_params(ext.image_size, spatial, spec.scenario.category_source), ["dataset", f"extractor/{ext.name}"])

    def rec_params(rec) -> dict[str, Any]:
        return {"recommender": rec.name, "config": rec.config, "seed": spec.seed, "max_k": max_k}

    def uses_features(rec_name: str) -> bool:
        return bool(RECOMMENDERS[rec_name].needs & {"features", "spatial"})

    for ext in spec.extractors:
        for rec in spec.recommenders:
            # a recommender that learns from pixels (DVBPR) does not see the extractor: one clean model for all
            deps = ["dataset", f"features/{ext.name}"] if uses_features(rec.name) else ["dataset"]
            p.add(f"train/{ext.name}/{rec.name}" if uses_features(rec.name) else f"train/-/{rec.name}", "train",
                  rec_params(rec), deps)

    def train_name(ext_name: str, rec_name: str) -> str:
        return f"train/{ext_name}/{rec_name}" if uses_features(rec_name) else f"train/-/{rec_name}"

    scen_rec = next((r.name for r in spec.recommenders if uses_features(r.name)), first_rec)
    p.add("scenario", "scenario", {**spec.scenario.model_dump(mode="json"), "recommender": scen_rec},
          ["dataset", f"features/{first_ext}", train_name(first_ext, scen_rec)])

    n_shards = max(1, -(-n_items // spec.shard_size))
    for ext in spec.extractors:
        for atk in spec.attacks:
            for eps in atk.eps:
                cell = f"{ext.name}/{atk.method}/{eps_label(eps)}"
                attack_params = {
                    **atk.model_dump(mode="json", exclude={"eps"}),
                    "eps": eps,
                    "seed": spec.seed,
                    "image_size": ext.image_size,
                }
                shards = []
                for s in range(n_shards):
                    lo, hi = s * spec.shard_size, min(n_items, (s + 1) * spec.shard_size)
                    shards.append(p.add(f"attack/{cell}/shard{s}", "attack_shard", {**attack_params, "items": [lo, hi]},
                                        ["dataset", f"extractor/{ext.name}", f"features/{ext.name}", "scenario"]))
                p.add(f"adversarial/{cell}", "adversarial", {"n_shards": n_shards},
                      ["dataset", f"features/{ext.name}", "scenario", *shards])
                for rec in spec.recommenders:
                    for mode in spec.modes:
                        p.add(f"evaluate/{cell}/{rec.name}/{mode}", "evaluate",
                              {**rec_params(rec), "mode": mode, "ks": spec.ks},
                              ["dataset", f"features/{ext.name}", "scenario", train_name(ext.name, rec.name),
                               f"adversarial/{cell}"])
    evals = [s.name for s in p if s.kind == "evaluate"]
    p.add("report", "report", {"spec": json.loads(spec.model_dump_json()), "gallery_users": spec.gallery_users},
          [s.name for s in p if s.kind in ("dataset", "extractor", "features", "train", "scenario", "adversarial")]
          + evals)
    return p
