"""HTTP plumbing shared by the three service apps: one error -> status map, health routers, uploads.

Domain code raises the typed errors of :mod:`advrec_common.errors`; :func:`install_error_handlers`
turns each into a JSON :class:`~advrec_common.schemas.ErrorBody` with the status of
:data:`ERROR_STATUS` (looked up along the exception's MRO, so a subclass inherits its parent's
code). Nothing else in an app decides a status code.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from fastapi import APIRouter, Depends, FastAPI, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from advrec_common.errors import (
    AdvrecError,
    BadCheckpoint,
    BadImage,
    InvalidInput,
    MissingWeights,
    NotFound,
)
from advrec_common.schemas import ErrorBody, Health, Readiness
from advrec_common.settings import Settings, get_settings
from advrec_common.store import ArtifactStore


class PayloadTooLarge(InvalidInput):
    """An upload larger than ``Settings.max_upload_bytes`` (HTTP 413)."""


class Overloaded(AdvrecError):
    """The service's queue is full; retry later (HTTP 503)."""


class Unavailable(AdvrecError):
    """A backend the request needs (queue broker, worker) is not reachable (HTTP 503)."""


# The one place that maps domain errors to HTTP status codes (most specific class wins).
ERROR_STATUS: dict[type[BaseException], int] = {
    AdvrecError: 400,
    InvalidInput: 422,
    BadImage: 422,
    BadCheckpoint: 422,
    PayloadTooLarge: 413,
    NotFound: 404,
    MissingWeights: 404,
    Overloaded: 503,
    Unavailable: 503,
}


def status_for(exc: BaseException) -> int:
    """HTTP status of an exception: the entry of its nearest class in :data:`ERROR_STATUS` (else 500)."""
    for cls in type(exc).__mro__:
        if cls in ERROR_STATUS:
            return ERROR_STATUS[cls]
    return 500


def error_response(exc: BaseException) -> JSONResponse:
    """A JSON error body ``{"error": <type>, "detail": <message>}`` with the mapped status."""
    body = ErrorBody(error=type(exc).__name__, detail=str(exc))
    headers = {"Retry-After": "1"} if isinstance(exc, Overloaded) else None
    return JSONResponse(status_code=status_for(exc), content=body.model_dump(), headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Map every :class:`AdvrecError` (and request-validation errors) to its status code."""

    async def domain_error(_: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        lines = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        body = ErrorBody(error="InvalidInput", detail="; ".join(lines) or "invalid request")
        return JSONResponse(status_code=422, content=body.model_dump())

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        name = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
        body = ErrorBody(error=name, detail=str(exc.detail))
        return JSONResponse(status_code=exc.status_code, content=body.model_dump(), headers=exc.headers)

    app.add_exception_handler(AdvrecError, domain_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)


# Response documentation for routes (OpenAPI): the error body for every mapped status.
ERROR_RESPONSES: dict[int | str, dict] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (404, "Unknown artifact key, user, item or weight name"),
        (413, "Upload larger than the configured limit"),
        (422, "Invalid input: bad parameters, shapes, NaN, corrupt or too-large image"),
        (503, "Overloaded or a backend is unreachable; retry later"),
    )
}

ReadyCheck = Callable[["Settings"], Awaitable[str | None] | str | None]


def store_ready(settings: Settings) -> str | None:
    """Readiness check: the artifact store directory exists and is writable."""
    import os

    root = settings.store_dir
    if not root.is_dir():
        return f"store {root} does not exist"
    return None if os.access(root, os.W_OK) else f"store {root} is not writable"


def health_router(service: str, checks: Mapping[str, ReadyCheck] | None = None) -> APIRouter:
    """``GET /healthz`` (process is up) and ``GET /readyz`` (each ``check(settings)`` returns None when OK,
    else why not; 503 unless all pass)."""
    router = APIRouter(tags=["health"])

    @router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
    async def healthz() -> Health:
        return Health(service=service, status="ok")

    @router.get(
        "/readyz",
        response_model=Readiness,
        summary="Readiness: the store and backends are usable",
        responses={503: {"model": Readiness, "description": "Not ready"}},
    )
    async def readyz(settings: Settings = Depends(get_settings)) -> JSONResponse:
        results: dict[str, str] = {}
        for name, check in (checks or {}).items():
            try:
                out = check(settings)
                if isinstance(out, Awaitable):
                    out = await out
            except Exception as exc:  # a readiness probe reports, it never raises
                out = f"{type(exc).__name__}: {exc}"
            results[name] = "ok" if out is None else str(out)
        ready = all(v == "ok" for v in results.values())
        body = Readiness(service=service, status="ready" if ready else "not ready", checks=results)
        return JSONResponse(status_code=200 if ready else 503, content=body.model_dump())

    return router


async def read_upload(upload: UploadFile, max_bytes: int) -> bytes:
    """The bytes of an uploaded file; :class:`PayloadTooLarge` past ``max_bytes`` (read in chunks, never all)."""
    chunks, total = [], 0
    while block := await upload.read(1 << 20):
        total += len(block)
        if total > max_bytes:
            raise PayloadTooLarge(f"upload {upload.filename!r} is larger than the limit of {max_bytes} bytes")
        chunks.append(block)
    return b"".join(chunks)


# -- dependencies ----------------------------------------------------------------------------------
def get_store(settings: Settings = Depends(get_settings)) -> ArtifactStore:
    """The artifact store under ``settings.home`` (injected; tests override ``get_settings``)."""
    return ArtifactStore(settings.store_dir)


def require_artifact(store: ArtifactStore, key: str, kind: str | tuple[str, ...], label: str) -> dict:
    """meta.json of artifact ``key``; InvalidInput for a malformed key or an artifact of another kind,
    NotFound when absent (a key is 64 hex characters, so it can never escape the store)."""
    kinds = (kind,) if isinstance(kind, str) else kind
    try:
        meta = store.meta(key)
    except NotFound:
        raise NotFound(f"{label} {key} is not in the store") from None
    if meta.get("kind") not in kinds:
        raise InvalidInput(f"{label} {key} is a {meta.get('kind')!r} artifact, not {' or '.join(map(repr, kinds))}")
    return meta


def service_app(service: str, description: str, router: APIRouter) -> FastAPI:
    """A service's FastAPI app: its ``/v1`` router, health/readiness (store check), the error map."""
    app = FastAPI(title=f"advrec {service}", version="1", description=description)
    install_error_handlers(app)
    app.include_router(health_router(service, {"store": store_ready}))
    app.include_router(router)
    return app
