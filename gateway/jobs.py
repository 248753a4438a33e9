"""``/v1/jobs``: submit an evaluation, follow it, cancel it, fetch its results and report."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Body, Depends
from fastapi.responses import FileResponse

from advrec.pipeline import jobs as executor
from advrec.pipeline.record import RunRecord, list_runs, progress_of
from advrec.pipeline.spec import EvaluationSpec, parse_spec
from advrec_common.errors import Conflict, InvalidInput, NotFound
from advrec_common.http import error_responses
from advrec_common.settings import Settings
from gateway.auth import require_api_key
from gateway.deps import get_app_settings
from gateway.schemas import JobStatus, JobSummary

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(require_api_key)],
                   responses=error_responses(400, 401, 403, 404, 422, 503))

SPEC_EXAMPLE = {
    "preset": "demo",
    "extractors": [{"name": "standard"}],
    "attacks": [{"method": "fgsm", "eps": [8]}],
    "recommenders": [{"name": "vbpr"}],
}


def spec_from_body(body: dict[str, Any]) -> EvaluationSpec:
    """A spec document, or ``{"preset": NAME, ...top-level overrides}``, validated."""
    return parse_spec(copy.deepcopy(body))


def _confine(value: str, base: Path, roots: list[Path], field: str) -> str:
    """Resolve ``value`` (relative to ``base``) and require it inside one of ``roots``."""
    path = (base / value).resolve()
    if not any(path.is_relative_to(r.resolve()) for r in roots):
        raise InvalidInput(f"{field}: path escapes the server's datasets/weights folders: {value!r}")
    return str(path)


def confine_paths(spec: EvaluationSpec, settings: Settings) -> EvaluationSpec:
    """Every file path of the spec made absolute and checked to lie in <home>/datasets or the weights dir.

    Dataset paths are relative to ``<home>/datasets``, checkpoints to the weights folder.
    """
    datasets, weights = settings.home / "datasets", settings.resolved_weights_dir
    data = spec.model_dump(mode="json")
    for field in ("root", "images_dir", "interactions", "categories"):
        if data["dataset"].get(field) is not None:
            data["dataset"][field] = _confine(data["dataset"][field], datasets, [datasets, weights], f"dataset.{field}")
    for i, ext in enumerate(data["extractors"]):
        if ext.get("checkpoint") is not None:
            ext["checkpoint"] = _confine(ext["checkpoint"], weights, [datasets, weights], f"extractors.{i}.checkpoint")
    return parse_spec(data)


def _open(settings: Settings, job_id: str) -> RunRecord:
    try:
        return RunRecord.open(settings.runs_dir, job_id)
    except InvalidInput:  # not even a well-formed id
        raise NotFound(f"unknown job {job_id!r}") from None
    except NotFound:
        raise NotFound(f"unknown job {job_id!r}") from None


def _summary(rec: dict[str, Any]) -> dict[str, Any]:
    return {"id": rec["run_id"], "name": rec["spec"].get("name"), "state": rec["state"], "created": rec["created"],
            "updated": rec["updated"], "progress": progress_of(rec)}


@router.post("", status_code=202, response_model=JobStatus, summary="Submit an evaluation")
def submit_job(
    body: dict[str, Any] = Body(..., description="An evaluation spec (see `advrec.pipeline.spec.EvaluationSpec`), "
                                "or `{\"preset\": \"demo\", ...top-level overrides}`.", examples=[SPEC_EXAMPLE]),
    settings: Settings = Depends(get_app_settings),
) -> dict[str, Any]:
    """Validate the spec (422 lists every problem), record the job and queue it. Returns the job."""
    spec = confine_paths(spec_from_body(body), settings)
    run_id = executor.submit(spec, settings)
    return _status(RunRecord.open(settings.runs_dir, run_id).read())


def _status(rec: dict[str, Any]) -> dict[str, Any]:
    return {**_summary(rec), "error": rec.get("error"), "cancel_requested": bool(rec.get("cancel_requested")),
            "steps": rec.get("steps", {}), "spec": rec["spec"]}


@router.get("", response_model=list[JobSummary], summary="List jobs, newest first")
def list_jobs(settings: Settings = Depends(get_app_settings)) -> list[dict[str, Any]]:
    return [{"id": r["run_id"], **{k: r[k] for k in ("name", "state", "created", "updated", "progress")}}
            for r in list_runs(settings.runs_dir)]


@router.get("/{job_id}", response_model=JobStatus, summary="State and per-step progress of a job")
def get_job(job_id: str, settings: Settings = Depends(get_app_settings)) -> dict[str, Any]:
    return _status(_open(settings, job_id).read())


@router.delete("/{job_id}", response_model=JobStatus, summary="Cancel a job")
def cancel_job(job_id: str, settings: Settings = Depends(get_app_settings)) -> dict[str, Any]:
    """Stops the job: nothing new is queued, queued steps are revoked. A finished job is left as is."""
    _open(settings, job_id)
    return _status(executor.cancel(job_id, settings))


def _report_file(settings: Settings, job_id: str, relpath: str) -> Path:
    rec = _open(settings, job_id)
    state = rec.read()["state"]
    if state != "done":
        raise Conflict(f"job {job_id} is {state}; results exist once it is done")
    root = (rec.dir / "report").resolve()
    path = (root / relpath).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise NotFound(f"job {job_id} has no artifact {relpath!r}")
    return path


@router.get("/{job_id}/results", summary="results.json of a finished job (409 before)",
            responses=error_responses(409))
def get_results(job_id: str, settings: Settings = Depends(get_app_settings)) -> FileResponse:
    return FileResponse(_report_file(settings, job_id, "results.json"), media_type="application/json")


@router.get("/{job_id}/report", summary="report.html of a finished job (409 before)",
            responses=error_responses(409))
def get_report(job_id: str, settings: Settings = Depends(get_app_settings)) -> FileResponse:
    return FileResponse(_report_file(settings, job_id, "report.html"), media_type="text/html")


@router.get("/{job_id}/artifacts/{path:path}", summary="Any file of a finished job's report folder",
            responses=error_responses(409))
def get_artifact(job_id: str, path: str, settings: Settings = Depends(get_app_settings)) -> FileResponse:
    return FileResponse(_report_file(settings, job_id, path))
