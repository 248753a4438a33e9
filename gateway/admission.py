"""Admission: what the gateway checks before it queues anything (``POST /v1/jobs``).

1. the body's shape (:func:`check_depth`: nesting and size of any JSON body, 422);
2. the spec (every field problem with its path, 422) and its file paths (inside ``<home>/datasets``
   or the weights folder, and uploaded datasets of this key only; 422 / 404);
3. :func:`advrec.pipeline.preflight.preflight` on the confined spec: catalog files (rows, image
   headers), K against the catalog, scenario labels, checkpoints, the device (422, every problem);
4. this key's quotas (:func:`admit`): catalog items, pixels per image and in all (413), steps in
   the plan (422), unfinished jobs (429).

Nothing is recorded or queued unless all pass. The concurrency check and the record's creation
happen under one file lock, so two requests cannot both take a key's last slot.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from advrec.pipeline.dag import plan
from advrec.pipeline.jobs import active_jobs
from advrec.pipeline.preflight import Preflight
from advrec.pipeline.spec import EvaluationSpec
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


def check_quotas(report: Preflight, settings: Settings, owner: str | None = None) -> int | None:
    """413 for a catalog or images above the quotas of ``owner``'s key, 422 for a plan with too many steps;
    returns the plan's step count (None when the catalog size is unknown before the run)."""
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
        steps = len(plan(spec, int(n_items)))
        if steps > quota.plan_steps:
            raise InvalidInput(f"the plan has {steps} steps, above this key's quota of {quota.plan_steps} "
                               f"({name('plan_steps')}); use fewer extractors, attacks, budgets or recommenders, "
                               f"or a larger shard_size")
        return steps
    return None


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
