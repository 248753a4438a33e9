"""HTTP plumbing shared by the three services and the gateway: one error body, one health shape.

Domain code raises the typed errors of :mod:`advrec_common.errors`; :func:`install_error_handlers`
turns each into an RFC 9457 problem (:class:`~advrec_common.schemas.Problem`, media type
``application/problem+json``) whose status is the error class's ``status``. Request-validation
errors become 422 problems listing every field, HTTP errors keep their status, and anything
unexpected is a 500 problem that never shows a traceback. No problem body shows a server path:
the home folder (store, datasets, runs) and the weights folder are replaced by ``<home>`` and
``<weights>`` (:func:`redact`).

The three services answer their ``/v1`` routes only to callers that present the stack's shared
secret in ``X-Internal-Token`` (:func:`require_internal_token`, constant-time comparison; the
gateway's proxy sends it); health and readiness stay open.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from starlette.exceptions import HTTPException as StarletteHTTPException

from advrec_common.errors import (
    PROBLEM_TYPE_PREFIX,
    AdvrecError,
    Forbidden,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
)
from advrec_common.schemas import Health, Problem
from advrec_common.settings import Settings, get_settings
from advrec_common.store import ArtifactStore
from advrec_common.validation import loc_path

log = logging.getLogger(__name__)
PROBLEM_MEDIA_TYPE = "application/problem+json"

# HTTP errors raised by the framework itself (routing, methods) as advrec problem types
_HTTP_TYPES: dict[int, type[AdvrecError]] = {400: AdvrecError, 401: Unauthorized, 403: Forbidden, 404: NotFound,
                                             413: PayloadTooLarge}


def problem_response(status: int, title: str, detail: str, type_: str, instance: str | None = None,
                     errors: list[dict[str, str]] | None = None,
                     headers: Mapping[str, str] | None = None) -> JSONResponse:
    """A problem-details response."""
    body = Problem(type=type_, title=title, status=status, detail=detail, instance=instance, errors=errors or [])
    return JSONResponse(status_code=status, content=body.model_dump(), media_type=PROBLEM_MEDIA_TYPE,
                        headers=dict(headers) if headers else None)


def redact(text: str, roots: Iterable[Path | str | None]) -> str:
    """``text`` with every server folder of ``roots`` (as given and resolved) replaced by a placeholder:
    the first root is ``<home>``, the others ``<weights>``; nothing else changes."""
    pairs: list[tuple[str, str]] = []
    for i, root in enumerate(r for r in roots if r):
        label = "<home>" if i == 0 else "<weights>"
        for form in {str(root), str(Path(root).expanduser().resolve())}:
            if form not in ("", ".", "/"):
                pairs.append((form.rstrip("/"), label))
    for form, label in sorted(pairs, key=lambda p: -len(p[0])):  # longest first: nested roots stay exact
        text = text.replace(form, label)
    return text


def _roots(request: Request | None) -> list[Path | None]:
    settings = getattr(getattr(request, "app", None), "state", None)
    settings = getattr(settings, "settings", None) if settings is not None else None
    if settings is None:
        app = getattr(request, "app", None)
        provider = getattr(app, "dependency_overrides", {}).get(get_settings, get_settings)
        try:
            settings = provider()
        except Exception:  # settings that cannot even be read: nothing to redact against
            return []
    return [settings.home, settings.weights_dir or settings.resolved_weights_dir]


def error_response(exc: AdvrecError, instance: str | None = None, request: Request | None = None) -> JSONResponse:
    """The problem-details response of an advrec error (``Retry-After`` for retryable ones; server
    paths redacted)."""
    retry = getattr(exc, "retry_after_s", None)
    headers = {"Retry-After": str(retry)} if retry else None
    roots = _roots(request)
    problems = [{"loc": p["loc"], "msg": redact(p["msg"], roots)} for p in exc.problems]
    return problem_response(exc.status, exc.title, redact(exc.detail, roots), exc.problem_type, instance, problems,
                            headers)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app accepts at this path (for a 405's ``Allow``)."""
    from starlette.routing import Match

    methods: set[str] = set()
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
        scope = {"type": "http", "path": request.scope["path"], "root_path": request.scope.get("root_path", ""),
                 "method": method}  # a fresh scope: the request's remembers the route it matched first
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.routes):
            methods.add(method)
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    """Every error of ``app`` answers with a problem-details body (see the module docstring)."""

    async def domain_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AdvrecError)
        return error_response(exc, request.url.path, request)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        rows = [{"loc": loc_path(e.get("loc", ())), "msg": str(e.get("msg", "invalid"))} for e in exc.errors()]
        detail = "; ".join(f"{r['loc']}: {r['msg']}" for r in rows) or "invalid request"
        return error_response(InvalidInput(detail, problems=rows), request.url.path, request)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        cls = _HTTP_TYPES.get(exc.status_code)
        title, type_ = (cls.title, PROBLEM_TYPE_PREFIX + cls.slug) if cls else ("HTTP error", "about:blank")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette names the methods of one route only; list every route's
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return problem_response(exc.status_code, title, str(exc.detail), type_, request.url.path,
                                headers=headers or None)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return problem_response(500, "Internal error", f"unexpected {type(exc).__name__}; see the server log",
                                "urn:advrec:problem:internal", request.url.path)

    app.add_exception_handler(AdvrecError, domain_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)


_STATUS_TEXT: dict[int, str] = {
    400: "Malformed request", 401: "Missing credentials", 403: "Credentials not allowed here",
    404: "Unknown id: artifact, user, item, job, dataset or weight name", 405: "Method not allowed here",
    409: "Not in a state that allows this",
    413: "Upload or catalog above the configured limits",
    422: "Invalid input (every problem listed in `errors`)", 429: "A quota is used up; retry later",
    502: "Bad answer from an internal service", 503: "Overloaded, or a backend is unreachable; retry later",
    504: "An internal service timed out",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries (problem-details body) for the given statuses."""
    return {c: {"model": Problem, "description": _STATUS_TEXT[c],
                "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
            for c in codes}


ERROR_RESPONSES = error_responses(404, 413, 422, 503)

ReadyCheck = Callable[[Settings], Awaitable[str | None] | str | None]


def store_ready(settings: Settings) -> str | None:
    """Readiness check: the artifact store directory exists (or can be created) and is writable."""
    root = settings.store_dir
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"store cannot be created: {exc.strerror}"
    return None if os.access(root, os.W_OK) else "store is not writable"


def health_router(service: str, checks: Mapping[str, ReadyCheck] | None = None,
                  settings_dep: Callable[..., Settings] = get_settings) -> APIRouter:
    """``GET /healthz`` (the process answers) and ``GET /readyz`` (each ``check(settings)`` returns None
    when OK, else why not; 503 unless all pass). The same :class:`Health` shape everywhere."""
    router = APIRouter(tags=["health"])

    @router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
    async def healthz() -> Health:
        return Health(service=service, status="ok")

    @router.get("/readyz", response_model=Health, summary="Readiness: the store and backends are usable",
                responses={503: {"model": Health, "description": "Not ready"}})
    async def readyz(settings: Settings = Depends(settings_dep)) -> JSONResponse:
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
        body = Health(service=service, status="ready" if ready else "not ready", checks=results)
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
    """meta.json of artifact ``key``; InvalidInput for an artifact of another kind, NotFound when absent
    (a key is 64 hex characters, so it can never escape the store)."""
    kinds = (kind,) if isinstance(kind, str) else kind
    try:
        meta = store.meta(key)
    except NotFound:
        raise NotFound(f"{label} {key} is not in the store") from None
    if meta.get("kind") not in kinds:
        raise InvalidInput(f"{label} {key} is a {meta.get('kind')!r} artifact, not {' or '.join(map(repr, kinds))}")
    return meta


INTERNAL_TOKEN_HEADER = APIKeyHeader(name="X-Internal-Token", auto_error=False,
                                     description="The stack's shared secret (ADVREC_INTERNAL_TOKEN); the gateway sends it.")


def require_internal_token(token: str | None = Security(INTERNAL_TOKEN_HEADER),
                           settings: Settings = Depends(get_settings)) -> None:
    """Dependency of every service ``/v1`` route: 401 without ``X-Internal-Token``, 403 with a wrong one,
    503 when this service has no token configured (it then refuses everyone)."""
    if not settings.internal_token:
        raise Unavailable("this service has no internal token configured (ADVREC_INTERNAL_TOKEN); it answers "
                          "no one")
    if not token:
        raise Unauthorized("missing X-Internal-Token header (call the service through the gateway)")
    if not hmac.compare_digest(token.encode(), settings.internal_token.encode()):
        raise Forbidden("invalid X-Internal-Token")


def service_app(service: str, description: str, router: APIRouter) -> FastAPI:
    """A service's FastAPI app: its ``/v1`` router (behind the internal token), open health/readiness
    (store check), the error model."""
    app = FastAPI(title=f"advrec {service}", version="1", description=description)
    install_error_handlers(app)
    app.include_router(health_router(service, {"store": store_ready}))
    app.include_router(router, dependencies=[Depends(require_internal_token)],
                       responses=error_responses(400, 401, 403, 503))
    return app
