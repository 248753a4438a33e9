"""(g) Property-based fuzzing of the gateway's OpenAPI with schemathesis: no 5xx, anywhere, every
status documented and every body matching its documented schema.

The proxy routes are excluded: with no service running behind them, 503 is their correct answer.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from advrec_common.apikeys import hash_key
from advrec_common.settings import Settings
from gateway.app import create_app
from tests.redis_server import redis_url as private_redis_url

from .conftest import API_KEY

pytestmark = pytest.mark.stack

# its own Redis DB: jobs it submits must never reach the workers of the end-to-end tests
REDIS_URL = private_redis_url(6)
_HOME = Path(tempfile.mkdtemp(prefix="advrec-schemathesis-"))
atexit.register(shutil.rmtree, _HOME, True)
APP = create_app(Settings(home=_HOME, redis_url=REDIS_URL, api_key_hashes=[hash_key(API_KEY)], device="cpu",
                          max_upload_bytes=100_000), reconcile_on_start=False)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP).exclude(
    path_regex=r"^/v1/(extractor|attacker|recommender)/")


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_gateway_never_answers_5xx(case):
    case.call_and_validate(headers={"X-API-Key": API_KEY},
                           checks=[not_a_server_error, status_code_conformance, response_schema_conformance])
