"""What an operator watches: Prometheus metrics and JSON log lines that carry request, job and step ids.

* :func:`instrument` gives a FastAPI app (the gateway and each service's face) a request id (the
  client's ``X-Request-ID`` or a new one, echoed in the answer and put on every log line of the
  request), the request metrics of prometheus-fastapi-instrumentator (requests by route, method
  and status; latency histograms; sizes) in the app's own registry, and ``GET /metrics`` (open, or
  behind ``Authorization: Bearer <ADVREC_METRICS_TOKEN>``). The gateway adds its stack collector.
* :func:`configure_logging` makes every log record one JSON object per line (``ts``, ``level``,
  ``logger``, ``msg``, and ``request_id`` / ``job_id`` / ``step`` when set: :func:`log_context`), or
  plain text (``ADVREC_LOG_FORMAT=text``).
"""

from __future__ import annotations

import contextvars
import hmac
import json
import logging
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import Request
from fastapi.responses import Response

REQUEST_ID = contextvars.ContextVar("advrec_request_id", default=None)
JOB_ID = contextvars.ContextVar("advrec_job_id", default=None)
STEP = contextvars.ContextVar("advrec_step", default=None)
_IDS = {"request_id": REQUEST_ID, "job_id": JOB_ID, "step": STEP}
REQUEST_ID_HEADER = "X-Request-ID"


@contextmanager
def log_context(**ids: str | None) -> Iterator[None]:
    """Every log line inside the block carries ``ids`` (``request_id``, ``job_id``, ``step``)."""
    tokens = [(_IDS[k], _IDS[k].set(v)) for k, v in ids.items() if k in _IDS]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with the context's ids."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname, "logger": record.name,
                               "msg": record.getMessage()}
        for key, var in _IDS.items():
            value = getattr(record, key, None) or var.get()
            if value:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class _ContextFilter(logging.Filter):
    """Text logs: the context's ids appended to the message."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = " ".join(f"{k}={v.get()}" for k, v in _IDS.items() if v.get())
        record.ids = f" [{ids}]" if ids else ""
        return True


def configure_logging(fmt: str = "json", level: int = logging.INFO) -> None:
    """The root logger writes to stderr, as JSON lines (``fmt="json"``) or text; uvicorn's and celery's
    loggers go through it. Idempotent."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "_advrec", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler._advrec = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s%(ids)s"))
        handler.addFilter(_ContextFilter())
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True


def instrument(app: Any, service: str, settings: Any, collectors: list[Any] | None = None) -> Any:
    """Request ids, request metrics and ``GET /metrics`` (behind ``settings.metrics_token`` when set) for
    ``app``, and JSON logs when ``ADVREC_LOG_FORMAT`` is given; returns the app's metric registry."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_fastapi_instrumentator import Instrumentator

    metrics_token = settings.metrics_token
    if "log_format" in settings.model_fields_set:  # the stack's processes set it; tests and embedding callers do not
        configure_logging(settings.log_format)
    registry = CollectorRegistry()
    Instrumentator(should_group_status_codes=False, excluded_handlers=["/metrics"], registry=registry) \
        .instrument(app, latency_lowr_buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
    for collector in collectors or []:
        registry.register(collector)
    log = logging.getLogger(f"advrec.{service}.requests")

    @app.middleware("http")
    async def request_ids(request: Request, call_next: Any) -> Any:
        rid = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex[:16]
        rid = "".join(c for c in rid if c.isalnum() or c in "-_.")[:64] or uuid.uuid4().hex[:16]
        token = REQUEST_ID.set(rid)
        t0 = time.perf_counter()
        try:
            response = await call_next(request)
        finally:
            REQUEST_ID.reset(token)
        response.headers[REQUEST_ID_HEADER] = rid
        if response.status_code >= 500 or request.url.path.startswith("/v1/jobs") and request.method != "GET":
            log.info("%s %s -> %d in %.0f ms", request.method, request.url.path, response.status_code,
                     1000 * (time.perf_counter() - t0), extra={"request_id": rid})
        return response

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        if metrics_token:
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), metrics_token.encode()):
                return Response("metrics need Authorization: Bearer <ADVREC_METRICS_TOKEN>\n", status_code=401,
                                media_type="text/plain", headers={"WWW-Authenticate": "Bearer"})
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return registry
