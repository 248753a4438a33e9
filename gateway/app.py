"""The gateway: the stack's only public entry (jobs, datasets, and a proxy to the services).

Run it with ``uvicorn --factory gateway.app:create_app`` (``advrec stack up`` does). Settings
come from the environment (``ADVREC_*``) unless passed to :func:`create_app`, and reach every
route through a dependency. Errors answer with the problem-details body every advrec service uses
(:mod:`advrec_common.http`); broker outages are 503 problems.

Operators: ``/readyz`` is 503, naming what is wrong, while Redis or the store is unusable, a worker
the supervisor gave up on is ``failed``, a queue has no live consumer, or another deployment holds
the stack's namespace; ``/metrics`` is Prometheus' (requests by route and status with latencies,
and the stack: queues, consumers, jobs by state, step durations, worker restarts:
:mod:`advrec.pipeline.metrics`); log lines are JSON with request ids (:mod:`advrec_common.observability`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError

from advrec import __version__
from advrec_common.errors import Unavailable
from advrec_common.http import error_response, health_router, install_error_handlers, store_ready
from advrec_common.observability import instrument
from advrec_common.settings import Settings, get_settings
from gateway import datasets, jobs, models, proxy
from gateway.deps import get_app_settings

log = logging.getLogger(__name__)

DESCRIPTION = """\
Measure whether adversarially robust image feature extractors protect visual recommenders.

* **jobs**: submit an evaluation spec (or a preset), follow its per-step progress, cancel it,
  download `results.json`, `report.html` and the other report files.
* **datasets**: upload your catalog (images + interactions) and reference it in a spec.
* **models**: train a recommender on stored artifacts as a job (`POST /v1/models`).
* **extractor / attacker / recommender**: the internal services, proxied.

Every `/v1` route needs an `X-API-Key` header (401 without, 403 with an unknown key).
"""


def _broker_down(request: Request, exc: Exception) -> JSONResponse:
    return error_response(Unavailable(f"the job queue is unavailable ({type(exc).__name__}); retry later"),
                          request.url.path)


def redis_ready(settings: Settings) -> str | None:
    """Readiness check: the broker answers a PING."""
    try:
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
    except redis.RedisError as exc:
        return f"unreachable: {type(exc).__name__}"
    return None


def workers_ready(settings: Settings) -> str | None:
    """Readiness check: no stack process the supervisor gave up on (``failed``), and every queue has a live
    consumer (the worker registry); None when so, else every problem, naming the worker or queue."""
    import json

    from advrec.pipeline.workers import live_workers, slots

    problems = []
    state = settings.home / "stack" / "state.json"  # a local stack's supervisor (docker-compose has none)
    try:
        processes = json.loads(state.read_text()) if state.is_file() else {}
    except (OSError, ValueError):
        processes = {}
    for name, info in sorted(processes.items()):
        if isinstance(info, dict) and info.get("state") == "failed":
            problems.append(f"{name} failed (exited too often; last exit {info.get('last_exit')}; "
                            f"`advrec stack restart {name}` after fixing it)")
    for queue, n in slots(live_workers(settings)).items():
        if n == 0:
            problems.append(f"queue {queue!r} has no live consumer")
    return "; ".join(problems) or None


def claim_ready(settings: Settings) -> str | None:
    """Readiness check: this deployment holds its namespace (another one would take its messages)."""
    from advrec.pipeline.claim import describe, holder
    from advrec_common.settings import instance_id

    held = holder(settings.redis_url, settings.namespace)
    if held is not None and held.get("instance") != instance_id(settings.home):
        return f"namespace {settings.namespace!r} is held by another deployment: {describe(held)}"
    return None


def _claim(settings: Settings) -> None:
    """Claim the namespace at start: another deployment's claim stops the gateway (Conflict); Redis down
    does not (the workers claim once it answers)."""
    from advrec.pipeline.claim import take_for
    from advrec_common.errors import Conflict

    try:
        take_for(settings, "gateway")
    except Conflict:
        raise
    except Exception as exc:  # noqa: BLE001
        log.warning("namespace not claimed at start (%s); the workers claim it once Redis answers", exc)


def _reconcile(settings: Settings) -> None:
    from advrec.pipeline.jobs import reconcile

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
        if reconcile_on_start:
            await asyncio.get_running_loop().run_in_executor(None, _claim, settings)
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
    install_error_handlers(app)
    app.add_exception_handler(OperationalError, _broker_down)
    app.add_exception_handler(redis.RedisError, _broker_down)
    app.include_router(health_router("gateway", {"redis": redis_ready, "store": store_ready,
                                                 "workers": workers_ready, "namespace": claim_ready},
                                     settings_dep=get_app_settings))
    app.include_router(jobs.router)
    app.include_router(datasets.router)
    app.include_router(models.router)
    app.include_router(proxy.router)
    from advrec.pipeline.metrics import StackCollector

    app.state.metrics = instrument(app, "gateway", settings, [StackCollector(settings)])
    _describe_spec(app)
    return app


def _describe_spec(app: FastAPI) -> None:
    """Put the evaluation spec's JSON schema (and the preset form) into the OpenAPI components, so
    ``POST /v1/jobs`` documents its body (the route validates it itself, to list every problem at once)."""
    from advrec.pipeline.spec import PRESETS, EvaluationSpec

    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            spec = EvaluationSpec.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(spec.pop("$defs", {}))
            components["EvaluationSpec"] = spec
            components["PresetRequest"] = {
                "type": "object", "title": "PresetRequest", "required": ["preset"],
                "properties": {"preset": {"type": "string", "enum": sorted(PRESETS)}},
                "additionalProperties": True,
                "description": "A preset spec with top-level fields of EvaluationSpec overridden."}
            _state_the_rules(components)
        return app.openapi_schema or schema

    def cached() -> dict:
        app.openapi_schema = openapi()
        return app.openapi_schema

    app.openapi = cached  # type: ignore[method-assign]


def _state_the_rules(components: dict) -> None:
    """Rules the models check in code, stated in the published schema, so that an input the schema accepts
    is one the API accepts: attack methods and recommenders by name (the registries), and an upload's
    files (an archive, or images and interactions)."""
    from services.attacker.spec import METHODS
    from services.recommender.kinds import RECOMMENDER_NEEDS

    attack = components.get("AttackGridSpec", {})
    if "method" in attack.get("properties", {}):
        attack["properties"]["method"]["enum"] = sorted(METHODS)
        # a method that has no linf variant needs its norm stated (linf is the default)
        attack["allOf"] = [{"if": {"properties": {"method": {"const": m}}, "required": ["method"]},
                            "then": {"required": ["norm"], "properties": {"norm": {"enum": list(info.norms)}}}}
                           for m, info in sorted(METHODS.items()) if "linf" not in info.norms]
    extractor = components.get("ExtractorSpec", {})
    if "defense" in extractor.get("properties", {}):
        from advrec.pipeline.spec import DEMO_DEFENSES

        # a demo extractor (the default source) trains one of the demo defenses: named, or its own name
        extractor["allOf"] = [{"if": {"properties": {"source": {"const": "demo"}}},
                               "then": {"anyOf": [{"required": ["defense"], "properties": {
                                   "defense": {"enum": list(DEMO_DEFENSES)}}},
                                   {"required": ["name"], "properties": {"name": {"enum": list(DEMO_DEFENSES)}}}]}}]
    name = components.get("RecommenderSpec", {}).get("properties", {}).get("name")
    if name is not None:
        name["enum"] = sorted(RECOMMENDER_NEEDS)
    for field in ("lr", "regs"):  # per block, or one value for all (the model takes a number too)
        prop = components.get("RecConfig", {}).get("properties", {}).get(field)
        arrays = [b for b in (prop or {}).get("anyOf", []) if b.get("type") == "array"]
        if arrays and not any(b.get("type") == "number" for b in prop["anyOf"]):
            prop["anyOf"].insert(0, dict(arrays[0]["items"]))
    upload = components.get("Body_upload_dataset_v1_datasets_post")
    if upload is not None:
        upload["anyOf"] = [{"required": ["archive"]}, {"required": ["images", "interactions"]}]
