"""The gateway: the stack's only public entry (jobs, datasets, and a proxy to the services).

Run it with ``uvicorn --factory gateway.app:create_app`` (``advrec stack up`` does). Settings
come from the environment (``ADVREC_*``) unless passed to :func:`create_app`, and reach every
route through a dependency. Domain errors (``advrec_common.errors``) map to HTTP statuses in
:func:`_domain_error`; broker outages map to 503.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError

from advrec import __version__
from advrec_common.errors import AdvrecError
from advrec_common.settings import Settings, get_settings
from gateway import datasets, jobs, proxy
from gateway.deps import get_app_settings
from gateway.schemas import Health

log = logging.getLogger(__name__)

DESCRIPTION = """\
Measure whether adversarially robust image feature extractors protect visual recommenders.

* **jobs**: submit an evaluation spec (or a preset), follow its per-step progress, cancel it,
  download `results.json`, `report.html` and the other report files.
* **datasets**: upload your catalog (images + interactions) and reference it in a spec.
* **extractor / attacker / recommender**: the internal services, proxied.

Every `/v1` route needs an `X-API-Key` header (401 without, 403 with an unknown key).
"""


def _domain_error(_request: Request, exc: Exception) -> JSONResponse:
    code = getattr(exc, "status_code", 400)
    return JSONResponse({"detail": str(exc)}, status_code=code)


def _broker_down(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": f"the job queue is unavailable: {type(exc).__name__}"}, status_code=503)


def _reconcile(settings: Settings) -> None:
    from advrec.pipeline.celery_executor import reconcile

    try:
        summary = reconcile(settings)
        log.info("startup reconcile: %s", summary)
    except Exception as exc:  # Redis down: the workers' reconcile will do it later
        log.warning("startup reconcile skipped: %s", exc)


def create_app(settings: Settings | None = None, *, reconcile_on_start: bool = True) -> FastAPI:
    """The gateway app for ``settings`` (default: from the environment)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.proxy = proxy.ProxyClients()
        if reconcile_on_start:
            app.state.reconcile = asyncio.get_running_loop().run_in_executor(None, _reconcile, settings)
        try:
            yield
        finally:
            await app.state.proxy.aclose()

    # FastAPI's own body limit answers 413 from Content-Length, or as soon as a streamed body passes it
    app = FastAPI(title="advrec gateway", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  max_body_size=settings.max_upload_bytes)
    app.state.settings = settings
    app.add_exception_handler(AdvrecError, _domain_error)
    app.add_exception_handler(OperationalError, _broker_down)
    app.add_exception_handler(redis.RedisError, _broker_down)

    @app.get("/healthz", response_model=Health, tags=["health"], summary="Liveness (no auth)")
    def healthz() -> dict:
        return {"status": "ok", "checks": {}}

    @app.get("/readyz", response_model=Health, tags=["health"], summary="Readiness: Redis and the store folder",
             responses={503: {"model": Health, "description": "a dependency is not ready"}})
    def readyz(s: Settings = Depends(get_app_settings)) -> JSONResponse:
        checks: dict[str, str] = {}
        try:
            client = redis.Redis.from_url(s.redis_url, socket_timeout=2, socket_connect_timeout=2)
            client.ping()
            client.close()
            checks["redis"] = "ok"
        except redis.RedisError as exc:
            checks["redis"] = f"unreachable: {exc}"
        try:
            s.store_dir.mkdir(parents=True, exist_ok=True)
            probe = s.store_dir / f".readyz-{uuid.uuid4().hex}"
            probe.write_text("ok")
            probe.unlink()
            checks["store"] = "ok"
        except OSError as exc:
            checks["store"] = f"not writable: {exc}"
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)

    app.include_router(jobs.router)
    app.include_router(datasets.router)
    app.include_router(proxy.router)
    return app
