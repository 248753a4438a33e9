"""``/v1/jobs``: submit an evaluation, follow it, cancel it, fetch its results and report.

Admission (every check before anything is queued) is :mod:`gateway.admission`. Jobs belong to the
key that submitted them: another key's job answers 404 (an admin key sees all).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Body, Depends, Header, Query, Request
from fastapi.responses import FileResponse, JSONResponse

from advrec.pipeline import jobs as executor
from advrec.pipeline.preflight import Preflight, preflight
from advrec.pipeline.record import RunRecord, list_page, new_run_id, progress_of
from advrec.pipeline.spec import EvaluationSpec, parse_spec
from advrec.pipeline.work import JobWork
from advrec_common.errors import Conflict, InvalidInput, NotFound
from advrec_common.http import error_responses, redact
from advrec_common.settings import Settings
from advrec_common.store import atomic_write
from gateway.admission import admission_slot, booleans_as_numbers, check_depth, check_quotas
from gateway.auth import Caller, require_api_key
from gateway.datasets import dataset_owners
from gateway.deps import get_app_settings
from gateway.schemas import JobStatus, JobSummary, SpecCheck

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(require_api_key)],
                   responses=error_responses(400, 401, 403, 404, 422, 429, 503))

SPEC_EXAMPLE = {
    "preset": "demo",
    "extractors": [{"name": "standard"}],
    "attacks": [{"method": "fgsm", "eps": [8]}],
    "recommenders": [{"name": "vbpr"}],
}


def known_query(*names: str):
    """A dependency: 422 for a query parameter the route does not have (a misspelt `limt=5` is not ignored)."""
    def check(request: Request) -> None:
        unknown = sorted(k for k in request.query_params if k not in names)
        if unknown:
            raise InvalidInput(f"unknown query parameter(s) {unknown}; this route takes {list(names) or 'none'}",
                               problems=[{"loc": f"query.{k}", "msg": "unknown parameter"} for k in unknown])
    return Depends(check)


def spec_from_body(body: dict[str, Any]) -> EvaluationSpec:
    """A spec document, or ``{"preset": NAME, ...top-level overrides}``, validated (and no ``true``/``false``
    where the published schema has a number: Python would read them as 1/0)."""
    check_depth(body)
    if problems := booleans_as_numbers(body):
        raise InvalidInput("invalid evaluation spec: " + "; ".join(f"{p['loc']}: {p['msg']}" for p in problems),
                           problems=problems)
    return parse_spec(copy.deepcopy(body))


def _confine(value: str, base: Path, roots: list[Path], field: str, settings: Settings, caller: Caller | None) -> str:
    """Resolve ``value`` (relative to ``base``), require it inside one of ``roots`` and, inside an
    uploaded dataset (``<home>/datasets/ds-...``), require that dataset to be the caller's."""
    if "\0" in value:
        raise InvalidInput(f"{field}: a path cannot contain a NUL character")
    path = (base / value).resolve()
    if not any(path.is_relative_to(r.resolve()) for r in roots):
        raise InvalidInput(f"{field}: path escapes the server's datasets/weights folders: {value!r}")
    datasets = (settings.home / "datasets").resolve()
    if caller is not None and path.is_relative_to(datasets) and path != datasets:
        ds_id = path.relative_to(datasets).parts[0]
        owners = dataset_owners(settings, ds_id)
        if owners is not None and not caller.may_see(owners):
            raise NotFound(f"{field}: unknown dataset {ds_id!r}")
    return str(path)


def confine_paths(spec: EvaluationSpec, settings: Settings, caller: Caller | None = None) -> EvaluationSpec:
    """Every file path of the spec made absolute and checked to lie in <home>/datasets or the weights dir
    (and in the caller's own uploaded datasets).

    Dataset paths are relative to ``<home>/datasets``, checkpoints to the weights folder.
    """
    datasets, weights = settings.home / "datasets", settings.resolved_weights_dir
    data = spec.model_dump(mode="json")
    for field in ("root", "images_dir", "interactions", "categories"):
        if data["dataset"].get(field) is not None:
            data["dataset"][field] = _confine(data["dataset"][field], datasets, [datasets, weights],
                                              f"dataset.{field}", settings, caller)
    for i, ext in enumerate(data["extractors"]):
        if ext.get("checkpoint") is not None:
            ext["checkpoint"] = _confine(ext["checkpoint"], weights, [datasets, weights],
                                         f"extractors.{i}.checkpoint", settings, caller)
    return parse_spec(data)


def _open(settings: Settings, job_id: str, caller: Caller | None = None) -> RunRecord:
    """The record of job ``job_id``; 404 when unknown, or when it belongs to another key."""
    try:
        rec = RunRecord.open(settings.runs_dir, job_id)
    except (InvalidInput, NotFound):  # a malformed id is an unknown one
        raise NotFound(f"unknown job {job_id!r}") from None
    if caller is not None and not caller.may_see(rec.read().get("owner")):
        raise NotFound(f"unknown job {job_id!r}")
    return rec


def _summary(rec: dict[str, Any]) -> dict[str, Any]:
    return {"id": rec["run_id"], "name": rec["spec"].get("name"), "state": rec["state"], "created": rec["created"],
            "updated": rec["updated"], "progress": progress_of(rec)}


@router.post("", status_code=202, response_model=JobStatus, summary="Submit an evaluation",
             dependencies=[known_query("dry_run")],
             responses={**error_responses(413, 429), 200: {"model": SpecCheck, "description": "dry_run=true: the "
                                                            "checks passed, nothing was queued"}},
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
                 "anyOf": [{"$ref": "#/components/schemas/EvaluationSpec"},
                           {"$ref": "#/components/schemas/PresetRequest"}]}}}}})
def submit_job(
    body: dict[str, Any] = Body(..., description="An evaluation spec (see `advrec.pipeline.spec.EvaluationSpec`), "
                                "or `{\"preset\": \"demo\", ...top-level overrides}`.", examples=[SPEC_EXAMPLE]),
    settings: Settings = Depends(get_app_settings),
    caller: Caller = Depends(require_api_key),
    idempotency_key: str | None = Header(None, alias="Idempotency-Key", max_length=128,
                                         description="Repeat a submit safely: the same key (per API key) "
                                         "answers the job the first request made."),
    dry_run: bool = Query(False, description="Run every admission check and answer what `POST /v1/jobs:validate` "
                          "answers (200: counts, the plan's size, the estimated work); nothing is queued."),
) -> Any:
    """Admit the job (every check of :mod:`gateway.admission`: 422 lists every problem, 413 above a size
    quota, 422 above the key's work quota, 429 above the key's unfinished jobs), record it and queue it.
    Returns the job (with its estimated work)."""
    check_depth(body)  # before anything walks the body
    if dry_run:  # the validate answer (its own model), not a job
        return JSONResponse(SpecCheck.model_validate(validate_job(body, settings, caller)).model_dump(mode="json"))
    marker = _idempotency_marker(settings, caller, idempotency_key)
    fingerprint = _body_fingerprint(body) if marker is not None else ""
    earlier = _earlier_job(settings, marker, fingerprint)
    if earlier is not None:
        return earlier
    report, work = _admit(body, settings, caller)
    spec = report.spec
    assert spec is not None
    with admission_slot(settings, caller):
        earlier = _earlier_job(settings, marker, fingerprint)  # a concurrent repeat may have made it meanwhile
        if earlier is not None:
            return earlier
        run_id = new_run_id(spec.name)
        if marker is not None:  # first: a gateway that dies after the record leaves a repeat its job
            marker.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(marker, json.dumps({"run_id": run_id, "body": fingerprint}))
        executor.submit(spec, settings, owner=caller.owner, warnings=_warnings(report, settings), run_id=run_id,
                        work=work.to_json() if work is not None else None)
    log.info("job %s submitted (%s steps, %.3g CPU-hours estimated)", run_id, report.facts.get("plan_steps"),
             work.cpu_hours if work is not None else float("nan"), extra={"job_id": run_id})
    return _status(RunRecord.open(settings.runs_dir, run_id).read(), settings)


@router.post(":validate", response_model=SpecCheck, summary="Check an evaluation without queueing it",
             responses=error_responses(413),
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
                 "anyOf": [{"$ref": "#/components/schemas/EvaluationSpec"},
                           {"$ref": "#/components/schemas/PresetRequest"}]}}}}})
def validate_job(
    body: dict[str, Any] = Body(..., description="The body a submit would send.", examples=[SPEC_EXAMPLE]),
    settings: Settings = Depends(get_app_settings),
    caller: Caller = Depends(require_api_key),
) -> dict[str, Any]:
    """Every admission check of a submit (422 lists every problem, 413 above a size quota) except the
    key's unfinished jobs; nothing is recorded or queued. 200: the warnings, what the checks counted
    and the plan's size."""
    report, work = _admit(body, settings, caller)
    spec = report.spec
    assert spec is not None
    facts = {k: v for k, v in report.facts.items() if isinstance(v, int) and not isinstance(v, bool)}
    if isinstance(report.facts.get("categories"), list):
        facts["n_categories"] = len(report.facts["categories"])
    return {"valid": True, "name": spec.name, "warnings": _warnings(report, settings), "facts": facts,
            "steps": facts.pop("plan_steps", None), "spec": redact_tree(spec.model_dump(mode="json"), settings),
            "work": _work_answer(work, settings, caller)}


def _work_answer(work: JobWork | None, settings: Settings, caller: Caller) -> dict[str, Any] | None:
    if work is None:
        return None
    limit = min(settings.quotas(caller.owner).job_work_hours or settings.quota_job_work_hours,
                settings.max_job_work_hours)
    return {**work.to_json(), "limit_cpu_hours": limit}


def _admit(body: dict[str, Any], settings: Settings, caller: Caller) -> tuple[Preflight, JobWork | None]:
    """The admission checks of a submit before the concurrency slot: the preflight report of a spec
    that passed them (its ``facts["plan_steps"]`` set when known) and its estimated work, or the 4xx error."""
    spec = confine_paths(spec_from_body(body), settings, caller)
    report = preflight(spec.model_dump(mode="json"), device=settings.device, max_pixels=settings.max_image_pixels)
    report.problems = _with_upload_hint(report.problems, spec)
    report.raise_for_problems("the job cannot run")
    checked = check_quotas(report, settings, caller.owner)
    if checked is None:
        return report, None
    report.facts["plan_steps"] = checked[0]
    return report, checked[1]


UPLOAD_HINT = ("; the server reads dataset paths in its datasets folder: a catalog on your machine is uploaded "
               "first (`advrec upload DIR`, or `client.upload_dataset(...)` in Python), which answers the `dataset:` "
               "block to put in the spec")


def _with_upload_hint(problems: list[tuple[str, str]], spec: EvaluationSpec) -> list[tuple[str, str]]:
    """``problems`` with :data:`UPLOAD_HINT` added to each about a dataset path the server does not have
    (most often a local spec sent as is: its paths name files on the user's machine)."""
    missing = {f"dataset.{f}" for f in ("root", "images_dir", "interactions", "categories")
               if getattr(spec.dataset, f) is not None and not Path(getattr(spec.dataset, f)).exists()}
    return [(loc, msg + UPLOAD_HINT if loc in missing and "does not exist" in msg else msg) for loc, msg in problems]


def _warnings(report: Preflight, settings: Settings) -> list[dict[str, str]]:
    return [{"loc": loc, "msg": redact(msg, [settings.home])} for loc, msg in report.warnings]


def _idempotency_marker(settings: Settings, caller: Caller, key: str | None) -> Path | None:
    if not key:
        return None
    digest = hashlib.sha256(f"{caller.owner}\0{key}".encode()).hexdigest()[:32]
    return settings.runs_dir / ".idempotency" / digest


def _body_fingerprint(body: Any) -> str:
    """A digest of a request body, independent of key order and spacing."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _earlier_job(settings: Settings, marker: Path | None, fingerprint: str) -> dict[str, Any] | None:
    """The job an earlier request with the same Idempotency-Key made, if any; 422 when that request
    had another body (a key names one request: reusing it for another would answer the wrong job)."""
    if marker is None or not marker.is_file():
        return None
    try:
        made = json.loads(marker.read_text())
    except ValueError:
        return None
    if made.get("body") != fingerprint:
        raise InvalidInput("this Idempotency-Key was used for another request body; send a new key per submit",
                           problems=[{"loc": "Idempotency-Key", "msg": "already used with another body"}])
    try:
        return _status(RunRecord.open(settings.runs_dir, made["run_id"]).read(), settings)
    except (InvalidInput, NotFound):
        return None


def _status(rec: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The public view of a record: server paths and tracebacks never leave the gateway."""
    steps = {name: {**st, "error": _public_error(st.get("error"), settings)} for name, st in rec.get("steps", {}).items()}
    return {**_summary(rec), "error": _public_error(rec.get("error"), settings),
            "cancel_requested": bool(rec.get("cancel_requested")), "steps": steps,
            "spec": redact_tree(rec["spec"], settings), "warnings": rec.get("warnings") or [],
            "work_estimate": rec.get("work_estimate"), "stalled": _stalled(rec, settings)}


def _stalled(rec: dict[str, Any], settings: Settings) -> list[dict[str, str]]:
    """The job's next steps that no live worker can take: each with its queue and why."""
    if rec.get("state") in ("done", "failed", "cancelled") or rec.get("executor") != "celery":
        return []
    queues = {row["name"]: row["queue"] for row in rec.get("plan") or []}
    waiting = {name: queues[name] for name, st in rec.get("steps", {}).items()
               if st.get("state") in ("ready", "queued") and name in queues}
    if not waiting:
        return []
    try:
        from advrec.pipeline.workers import live_workers, slots

        free = slots(live_workers(settings))
    except Exception:  # noqa: BLE001 -- Redis down: /readyz says so; a status read still answers
        return []
    dead = {q for q in set(waiting.values()) if free.get(q, 0) == 0}
    return [{"step": name, "queue": q, "why": f"no live worker consumes queue {q!r}: the step waits until one "
             f"starts (see /readyz)"} for name, q in sorted(waiting.items()) if q in dead]


def _public_error(error: str | None, settings: Settings) -> str | None:
    if not error:
        return error
    head = error.split("\nTraceback", 1)[0].strip()  # the traceback stays in the record, for operators
    return redact(head, [settings.home])


def redact_tree(value: Any, settings: Settings) -> Any:
    """``value`` with the server's home folder replaced by ``<home>`` in every string."""
    if isinstance(value, dict):
        return {k: redact_tree(v, settings) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_tree(v, settings) for v in value]
    return redact(value, [settings.home]) if isinstance(value, str) else value


@router.get("", response_model=list[JobSummary], dependencies=[known_query("limit", "before")],
            summary="List jobs, newest first, one page at a time (this key's; all for an admin)")
def list_jobs(settings: Settings = Depends(get_app_settings),
              caller: Caller = Depends(require_api_key),
              limit: int = Query(50, ge=1, le=500, description="jobs per page"),
              before: str | None = Query(None, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$",
                                         description="the id of the last job of the previous page")) -> Any:
    """From the job index (by key, newest first): a page costs its rows, not every record ever written.
    The next page's ``before`` comes in the ``X-Next-Before`` header (absent on the last page)."""
    rows, nxt = list_page(settings.runs_dir, caller.owner, limit, before, all_owners=caller.admin)
    headers = {"X-Next-Before": nxt} if nxt is not None else None
    # the rows are the index's, already in the documented shape: answered as they are (no re-validation)
    return JSONResponse([{"id": r["run_id"], **{k: r[k] for k in ("name", "state", "created", "updated", "progress")}}
                         for r in rows], headers=headers)


@router.get("/{job_id}", response_model=JobStatus, summary="State and per-step progress of a job")
def get_job(job_id: str, settings: Settings = Depends(get_app_settings),
            caller: Caller = Depends(require_api_key)) -> dict[str, Any]:
    return _status(_open(settings, job_id, caller).read(), settings)


@router.delete("/{job_id}", response_model=JobStatus, summary="Cancel a job")
def cancel_job(job_id: str, settings: Settings = Depends(get_app_settings),
               caller: Caller = Depends(require_api_key)) -> dict[str, Any]:
    """Stops the job: nothing new is queued, queued steps are revoked, a running step stops at its next
    batch (within seconds). A finished job is left as is."""
    _open(settings, job_id, caller)
    return _status(executor.cancel(job_id, settings), settings)


def _report_file(settings: Settings, job_id: str, relpath: str, caller: Caller) -> Path:
    rec = _open(settings, job_id, caller)
    state = rec.read()["state"]
    if state != "done":
        raise Conflict(f"job {job_id} is {state}; results exist once it is done")
    if "\0" in relpath:
        raise NotFound(f"job {job_id} has no artifact {relpath!r}")
    root = (rec.dir / "report").resolve()
    path = (root / relpath).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise NotFound(f"job {job_id} has no artifact {relpath!r}")
    return path


@router.get("/{job_id}/results", summary="results.json of a finished job (409 before)",
            responses={**error_responses(409), 200: {"content": {"application/json": {}}, "description": "results.json"}})
def get_results(job_id: str, settings: Settings = Depends(get_app_settings),
                caller: Caller = Depends(require_api_key)) -> FileResponse:
    return FileResponse(_report_file(settings, job_id, "results.json", caller), media_type="application/json")


@router.get("/{job_id}/report", summary="report.html of a finished job (409 before)",
            responses={**error_responses(409), 200: {"content": {"text/html": {}}, "description": "report.html"}})
def get_report(job_id: str, settings: Settings = Depends(get_app_settings),
               caller: Caller = Depends(require_api_key)) -> FileResponse:
    return FileResponse(_report_file(settings, job_id, "report.html", caller), media_type="text/html")


@router.get("/{job_id}/artifacts/{path:path}", summary="Any file of a finished job's report folder",
            responses={**error_responses(409), 200: {"content": {"application/octet-stream": {}},
                                                     "description": "the file"}})
def get_artifact(job_id: str, path: str, settings: Settings = Depends(get_app_settings),
                 caller: Caller = Depends(require_api_key)) -> FileResponse:
    return FileResponse(_report_file(settings, job_id, path, caller))
