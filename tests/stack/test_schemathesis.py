"""(g) Property-based fuzzing with schemathesis of every gateway route and of the three services' own
OpenAPI, with every built-in check: no 5xx anywhere (the proxy's 502/503/504 aside, which mean "the
service is not there"), every status documented, every body and header (``Allow`` of a 405, content
types) as the description says, invalid input rejected, auth not ignored.

One check is left out: ``positive_data_acceptance`` (a body the schema allows must not get a 422).
The spec's cross-field rules (a known attack method, eps = 0 only for C&W, K within the catalog, an
artifact of the right kind) are checked by the models and the preflight, and no JSON schema states them.

The gateway's proxy routes forward to the real service apps, in process (``httpx.ASGITransport``), with
the internal token; the services run on an empty store (unknown keys are 404s). ``ADVREC_ST_EXAMPLES``
raises the number of examples per operation (default 15; the numbers in docs/stack.md come from 200).
Under ``CI=true`` the examples are derandomized (one fixed sequence: a CI verdict is reproducible);
elsewhere each run draws new ones, to keep exploring.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import positive_data_acceptance

from advrec_common.apikeys import hash_key
from advrec_common.settings import Settings, get_settings
from gateway.app import create_app
from gateway.proxy import ProxyClients
from tests.redis_server import redis_url as private_redis_url

from .conftest import API_KEY

pytestmark = pytest.mark.stack

EXAMPLES = int(os.environ.get("ADVREC_ST_EXAMPLES", "15"))
DERANDOMIZE = os.environ.get("CI", "").lower() == "true"
TOKEN = "schemathesis-internal-token"
# its own Redis DB: jobs it submits must never reach the workers of the end-to-end tests
REDIS_URL = private_redis_url(6)
_HOME = Path(tempfile.mkdtemp(prefix="advrec-schemathesis-"))
atexit.register(shutil.rmtree, _HOME, True)
SETTINGS = Settings(home=_HOME, redis_url=REDIS_URL, api_key_hashes=[hash_key(API_KEY)], device="cpu",
                    max_upload_bytes=100_000, internal_token=TOKEN)


def _service(name: str):
    import importlib

    app = importlib.import_module(f"services.{name}.app").create_app()
    app.dependency_overrides[get_settings] = lambda: SETTINGS
    return app


SERVICES = {name: _service(name) for name in ("extractor", "attacker", "recommender")}


class InProcessServices(ProxyClients):
    """The gateway's proxy clients, sending to the service apps in this process."""

    def __init__(self) -> None:
        routes = {f"http://{name}": app for name, app in SERVICES.items()}

        class Mount(httpx.AsyncBaseTransport):
            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                app = routes[f"{request.url.scheme}://{request.url.host}"]
                return await httpx.ASGITransport(app=app).handle_async_request(request)

        self.retrying = self.single = httpx.AsyncClient(transport=Mount())

    def for_method(self, method: str) -> httpx.AsyncClient:
        return self.retrying


GATEWAY = create_app(SETTINGS.model_copy(update={f"{n}_url": f"http://{n}" for n in SERVICES}),
                     reconcile_on_start=False)


class _Ctx:
    """The gateway's lifespan with the in-process proxy clients (its own would open network clients)."""

    def __init__(self, app):
        self.app = app

    async def __aenter__(self):
        self.app.state.proxy = InProcessServices()

    async def __aexit__(self, *exc):
        return False


GATEWAY.router.lifespan_context = _Ctx
GATEWAY.state.proxy = InProcessServices()

def no_internal_error(ctx, response, case):
    """No 500 (a 502/503/504 of the proxy is documented and means the service is not there; so is the 503 of
    /readyz: no worker consumes the queues here)."""
    if case.path == "/readyz" and response.status_code == 503:
        return
    if response.status_code == 500 or (response.status_code >= 500 and "/v1/" not in case.path):
        raise AssertionError(f"{response.status_code} on {case.method} {case.path}: {response.text[:300]}")


gateway_schema = schemathesis.openapi.from_asgi("/openapi.json", GATEWAY)


@gateway_schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=DERANDOMIZE)
def test_gateway_never_answers_500_and_keeps_to_its_description(case):
    proxied = case.path.startswith(("/v1/extractor/", "/v1/attacker/", "/v1/recommender/"))
    # a proxied 502/503/504 and the 503 of /readyz (no worker consumes the queues here) are documented
    excluded = [positive_data_acceptance, not_a_server_error] if proxied or case.path == "/readyz" \
        else [positive_data_acceptance]
    case.call_and_validate(headers={"X-API-Key": API_KEY}, excluded_checks=excluded,
                           additional_checks=[no_internal_error])


service_schemas = {name: schemathesis.openapi.from_asgi("/openapi.json", app) for name, app in SERVICES.items()}


@service_schemas["extractor"].parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=DERANDOMIZE)
def test_extractor_never_answers_5xx(case):
    case.call_and_validate(headers={"X-Internal-Token": TOKEN}, excluded_checks=[positive_data_acceptance])


@service_schemas["attacker"].parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=DERANDOMIZE)
def test_attacker_never_answers_5xx(case):
    case.call_and_validate(headers={"X-Internal-Token": TOKEN}, excluded_checks=[positive_data_acceptance])


@service_schemas["recommender"].parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=DERANDOMIZE)
def test_recommender_never_answers_5xx(case):
    case.call_and_validate(headers={"X-Internal-Token": TOKEN}, excluded_checks=[positive_data_acceptance])
