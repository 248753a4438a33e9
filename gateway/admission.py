"""Admission: what the gateway checks before it queues anything (``POST /v1/jobs``).

1. the body's shape (:func:`check_depth`: nesting and size of any JSON body, 422);
2. the spec (every field problem with its path, 422) and its file paths (inside ``<home>/datasets``
   or the weights folder, and uploaded datasets of this key only; 422 / 404);
3. :func:`advrec.pipeline.preflight.preflight` on the confined spec: catalog files (rows, image
   headers), K against the catalog, scenario labels, checkpoints, the device (422, every problem);
4. this key's quotas (:func:`check_quotas`): catalog items, pixels per image and in all (413), steps in
   the plan (422), the job's estimated work (:func:`advrec.pipeline.work.job_work`, the progress bar's
   estimator: 422 naming the parts of the spec that cost most; a key's quota never above the server's
   ``max_job_work_hours``), unfinished jobs (429).

Nothing is recorded or queued unless all pass. The concurrency check and the record's creation
happen under one file lock, so two requests cannot both take a key's last slot.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from advrec.pipeline.dag import plan
from advrec.pipeline.jobs import active_jobs
from advrec.pipeline.preflight import Preflight
from advrec.pipeline.spec import EvaluationSpec
from advrec.pipeline.work import JobWork, admission_facts, job_work
from advrec_common.errors import InvalidInput, PayloadTooLarge, QuotaExceeded
from advrec_common.settings import Settings
from advrec_common.vision.backbone_names import BACKBONE_INPUT_SIZES
from gateway.auth import Caller
from services.extractor.named_weights import NAMED_WEIGHTS

MAX_DEPTH = 32  # nesting of a JSON body (a spec needs 6)
MAX_NODES = 100_000  # values in a JSON body


def check_depth(body: Any, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> None:
    """InvalidInput when ``body`` nests deeper than ``max_depth`` or holds more than ``max_nodes`` values
    (iterative: a hostile body cannot exhaust the stack here)."""
    stack: list[tuple[Any, int]] = [(body, 1)]
    nodes = 0
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if depth > max_depth:
            raise InvalidInput(f"the body nests deeper than {max_depth} levels",
                               problems=[{"loc": "", "msg": f"nesting deeper than {max_depth} levels"}])
        if nodes > max_nodes:
            raise InvalidInput(f"the body holds more than {max_nodes} values")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def model_side(spec: EvaluationSpec, index: int) -> int:
    """The square side (px) extractor ``index`` brings every catalog image to before features and attacks:
    its ``image_size``, else the size a demo extractor is trained at, else its backbone's input size
    (224 for ImageNet backbones and timm models, 64 for the small CNNs) -- whatever the photos' own size."""
    ext = spec.extractors[index]
    if ext.image_size is not None:
        return ext.image_size
    if ext.source == "demo":
        return spec.dataset.image_size
    backbone = NAMED_WEIGHTS[ext.weight_name].backbone if ext.source == "named" and ext.weight_name else ext.backbone
    return BACKBONE_INPUT_SIZES.get(backbone or "", 224)


def work_pixels(spec: EvaluationSpec) -> int:
    """Pixels per image the job's extractors work at (the largest): what the quota counts, since images
    are resized to each model's size as they are read (a 2000 x 1500 product photo costs 224 x 224)."""
    return max(model_side(spec, i) ** 2 for i in range(len(spec.extractors)))


@lru_cache(maxsize=1)
def _spec_schema() -> dict[str, Any]:
    return EvaluationSpec.model_json_schema()


def _json_types(schema: dict[str, Any], defs: dict[str, Any]) -> set[str]:
    """The JSON types a (sub)schema allows (``$ref`` and ``anyOf``/``oneOf`` followed)."""
    if "$ref" in schema:
        return _json_types(defs.get(schema["$ref"].rsplit("/", 1)[-1], {}), defs)
    types = set(schema["type"]) if isinstance(schema.get("type"), list) else {schema.get("type")} - {None}
    for branch in schema.get("anyOf", []) + schema.get("oneOf", []):
        types |= _json_types(branch, defs)
    return types or {"any"}


def _branches(schema: dict[str, Any], defs: dict[str, Any]) -> list[dict[str, Any]]:
    if "$ref" in schema:
        return _branches(defs.get(schema["$ref"].rsplit("/", 1)[-1], {}), defs)
    out = [schema]
    for branch in schema.get("anyOf", []) + schema.get("oneOf", []):
        out += _branches(branch, defs)
    return out


def booleans_as_numbers(value: Any, schema: dict[str, Any] | None = None, path: str = "") -> list[dict[str, str]]:
    """Every place where the body has ``true``/``false`` and the spec's published schema a number, or a number
    where it has a boolean: Python reads one as the other (1/0), the schema (and a user) would not, so they
    are refused with their path."""
    root = _spec_schema()
    defs = root.get("$defs", {})
    schema = root if schema is None else schema
    if isinstance(value, bool | int | float):
        types = _json_types(schema, defs)
        if "any" in types:
            return []
        if isinstance(value, bool) and types & {"integer", "number"} and "boolean" not in types:
            return [{"loc": path or "(body)", "msg": f"a number is needed, not {str(value).lower()}"}]
        if not isinstance(value, bool) and "boolean" in types and not types & {"integer", "number"}:
            return [{"loc": path or "(body)", "msg": f"true or false is needed, not {value!r}"}]
        return []
    out: list[dict[str, str]] = []
    if isinstance(value, dict):
        for key, sub in value.items():
            for branch in _branches(schema, defs):
                prop = (branch.get("properties") or {}).get(key)
                if prop is None and isinstance(branch.get("additionalProperties"), dict):
                    prop = branch["additionalProperties"]
                if prop is not None:
                    out += booleans_as_numbers(sub, prop, f"{path}.{key}" if path else str(key))
                    break
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            for branch in _branches(schema, defs):
                if isinstance(branch.get("items"), dict):
                    out += booleans_as_numbers(sub, branch["items"], f"{path}[{i}]")
                    break
    return out


def check_quotas(report: Preflight, settings: Settings, owner: str | None = None) -> tuple[int, JobWork] | None:
    """413 for a catalog or images above the quotas of ``owner``'s key, 422 for a plan with too many steps
    or too much work; returns the plan's step count and estimated work (None when the catalog size is
    unknown before the run)."""
    spec = report.spec
    assert spec is not None
    quota = settings.quotas(owner)

    def name(field: str) -> str:
        return settings.quota_source(owner, field)

    n_items = report.facts.get("n_items")
    if n_items and n_items > quota.catalog_items:
        raise PayloadTooLarge(f"the catalog has {n_items} items, above this key's quota of "
                              f"{quota.catalog_items} ({name('catalog_items')})")
    pixels = work_pixels(spec)
    if pixels > quota.image_pixels:
        raise PayloadTooLarge(f"images would be processed at {pixels} pixels each, above this key's quota of "
                              f"{quota.image_pixels} ({name('image_pixels')}); set extractors[].image_size")
    if n_items and n_items * pixels > quota.catalog_pixels:
        raise PayloadTooLarge(f"{n_items} items x {pixels} pixels = {n_items * pixels} pixels, above this key's "
                              f"quota of {quota.catalog_pixels} ({name('catalog_pixels')})")
    if n_items:
        p = plan(spec, int(n_items))
        steps = len(p)
        if steps > quota.plan_steps:
            raise InvalidInput(f"the plan has {steps} steps, above this key's quota of {quota.plan_steps} "
                               f"({name('plan_steps')}); use fewer extractors, attacks, budgets or recommenders, "
                               f"or a larger shard_size")
        work = job_work(spec, p, admission_facts(spec, report.facts))
        check_work(work, settings, owner)
        return steps, work
    return None


def check_work(work: JobWork, settings: Settings, owner: str | None) -> None:
    """422 when the job's estimated work is above this key's quota or the server's ceiling, naming the
    parts of the spec that cost most (what to shrink)."""
    quota = settings.quotas(owner).job_work_hours or settings.quota_job_work_hours
    limit, source = min(quota, settings.max_job_work_hours), settings.quota_source(owner, "job_work_hours")
    if settings.max_job_work_hours < quota:
        source = "max_job_work_hours"
    if work.cpu_hours <= limit:
        return
    rows = [{"loc": part.split(" ", 1)[0], "msg": f"{part}: {u / work.units:.0%} of the work "
             f"({u / 3.6e6:.3g} CPU-hours)"} for part, u in work.largest(3)]
    biggest = "; ".join(f"{r['msg']}" for r in rows)
    raise InvalidInput(f"the job's estimated work is {work.cpu_hours:.3g} CPU-hours (on a 2-core machine), above "
                       f"this key's limit of {limit:g} ({source}); shrink what costs most: {biggest}", problems=rows)


@contextmanager
def admission_slot(settings: Settings, caller: Caller) -> Iterator[None]:
    """Hold the admission lock while checking this key's unfinished jobs (429 above the quota)."""
    settings.runs_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.runs_dir / ".admission.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            running = active_jobs(settings, caller.owner)
            limit = settings.quotas(caller.owner).concurrent_jobs
            if running >= limit:
                raise QuotaExceeded(f"this key has {running} unfinished jobs, its quota is {limit} "
                                    f"({settings.quota_source(caller.owner, 'concurrent_jobs')}); wait for one to "
                                    f"finish or cancel one")
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
