"""Response models of the gateway (they document the API in /docs and /openapi.json)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from advrec_common.schemas import ProblemItem


class WorkProgress(BaseModel):
    done: float = Field(description="estimated work finished, in work units (about a millisecond of a 2-core CPU)")
    total: float = Field(description="estimated work of the whole plan")
    fraction: float = Field(description="done / total in [0, 1]: what an ETA should extrapolate, not steps")
    eta_seconds: float | None = Field(None, description="remaining wall seconds: the remaining work priced per "
                                      "step kind by the finished steps' seconds, over the parallelism seen so far; "
                                      "null until a computed step has finished")


class Progress(BaseModel):
    done: int = Field(description="steps finished (computed or reused)")
    total: int = Field(description="steps in the plan (0 until planned)")
    fraction: float = Field(description="done / total in [0, 1]")
    running: list[str] = Field(description="names of the steps running now")
    failed: list[str] = Field(description="names of failed steps")
    work: WorkProgress | None = Field(None, description="progress in estimated work units (steps differ a "
                                      "thousandfold); null until the plan is made or when it could not be estimated")


class JobSummary(BaseModel):
    id: str = Field(description="run id")
    name: str | None = Field(None, description="the spec's name")
    state: str = Field(description="queued | running | done | failed | cancelled")
    created: float = Field(description="unix time")
    updated: float = Field(description="unix time")
    progress: Progress


class StepStatus(BaseModel):
    state: str = Field(description="pending | ready (waiting for a free worker of its queue) | queued | running | "
                       "done | cached | failed | cancelled")
    kind: str | None = None
    attempts: int = 0
    seconds: float | None = Field(None, description="compute time of the step in seconds")
    progress: dict[str, Any] | None = Field(None, description="how far a running step is, e.g. "
                                            "`{\"done\": 64, \"total\": 256, \"unit\": \"images\"}` or `{\"epoch\": 12}`")
    error: str | None = None


class WorkPart(BaseModel):
    part: str = Field(description="the part of the spec, as the path to shrink, e.g. `attacks[0] (pgd): ...`")
    units: float
    share: float = Field(description="its share of the job's work")


class WorkEstimate(BaseModel):
    """A job's estimated work before it runs (advrec.pipeline.work: the progress bar's estimator)."""

    units: float = Field(description="work units (about a millisecond of a 2-core CPU)")
    cpu_hours: float = Field(description="units as CPU-hours of a 2-core machine (a GPU worker takes less)")
    steps: int = Field(description="steps in the plan")
    largest: list[WorkPart] = Field(default_factory=list, description="the parts of the spec that cost most")
    limit_cpu_hours: float | None = Field(None, description="this key's limit on one job's work")


class Stalled(BaseModel):
    step: str
    queue: str
    why: str


class JobStatus(JobSummary):
    error: str | None = Field(None, description="why the job failed")
    cancel_requested: bool = False
    steps: dict[str, StepStatus] = Field(default_factory=dict, description="state of every planned step")
    spec: dict[str, Any] = Field(description="the validated evaluation spec")
    warnings: list[ProblemItem] = Field(default_factory=list, description="what admission noticed that does not "
                                        "stop the job (e.g. catalog labels of items without an image, fields the "
                                        "dataset kind ignores), each with its spec path")
    work_estimate: WorkEstimate | None = Field(None, description="admission's estimate of the job's work")
    stalled: list[Stalled] = Field(default_factory=list, description="steps ready to run that no live worker "
                                   "can take (their queue has no consumer): the job waits until one starts")


class SpecCheck(BaseModel):
    """What `POST /v1/jobs:validate` found: the spec passed every admission check of a submit."""

    valid: bool = Field(True, description="always true: a spec with problems is answered 422 as a submit would be")
    name: str = Field(description="the spec's name")
    warnings: list[ProblemItem] = Field(default_factory=list, description="what does not stop the job")
    facts: dict[str, int] = Field(default_factory=dict, description="what the checks counted, e.g. n_items, "
                                  "max_image_pixels, n_categories")
    steps: int | None = Field(None, description="steps the job would plan (null when the catalog size is unknown "
                              "before the run)")
    spec: dict[str, Any] = Field(description="the spec as it would run (presets expanded, paths as given)")
    work: WorkEstimate | None = Field(None, description="the estimated work (null when the catalog size is "
                                      "unknown before the run) and this key's limit")


class DatasetInfo(BaseModel):
    id: str = Field(description="content-derived dataset id")
    n_images: int
    n_interactions: int = Field(description="rows of interactions.csv")
    has_categories: bool
    bytes: int = Field(description="total size of the stored files")
    created: float
    spec: dict[str, Any] = Field(description="the `dataset` block to put in an evaluation spec")
    warnings: list[ProblemItem] = Field(default_factory=list, description="what the check found that does not "
                                        "stop the dataset (`loc` = file:line): items without a category, labels of "
                                        "items not in the catalog, rows without an image")
