"""``/v1/{extractor,attacker,recommender}/...``: the gateway forwards to the internal services.

Each request is forwarded with httpx to ``<service url>/v1/<path>`` (service URLs from the
settings), without the client's API key and with the stack's ``X-Internal-Token`` (the services
answer no one else; a client-sent token is dropped). Connection failures are retried by the transport, and
only for idempotent methods (a POST that reached a service must not run twice). A service that
is down answers 503, a timeout 504, any other transport failure 502 -- never 500.

Ownership (:mod:`advrec.pipeline.owners`): a request that names a stored artifact -- a model in the
path (``recommender/models/<key>/...``), or a ``dataset``, ``extractor``, ``features`` or ``model``
field of its JSON or form body -- is answered 404 unless the caller's key owns it (an admin key
owns all); the model and extractor lists are filtered to the caller's; features a caller computes
through ``extractor/extract/catalog`` become its own. The caller's owner id travels to the service
in ``X-Advrec-Owner`` (a client cannot send it: dropped), so that each key's overlay of a model is
its own. JSON answers pass through :func:`advrec_common.http.redact`: no server path leaves.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qs, quote

import httpx
from fastapi import APIRouter, Depends, Request, Response

from advrec.pipeline import owners
from advrec_common.errors import AdvrecError, NotFound, Unavailable
from advrec_common.http import error_response, error_responses, problem_response, redact
from advrec_common.settings import Settings
from gateway.auth import Caller, require_api_key
from gateway.deps import get_app_settings

SERVICES: dict[str, str] = {"extractor": "extractor_url", "attacker": "attacker_url", "recommender": "recommender_url"}
IDEMPOTENT = {"GET", "HEAD", "OPTIONS", "PUT", "DELETE"}
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "host", "content-length", "x-api-key", "x-internal-token",
              "x-advrec-owner"}
OWNER_HEADER = "X-Advrec-Owner"
REF_FIELDS = ("dataset", "extractor", "features", "model")  # body fields that name a stored artifact
ARTIFACT_KEY = re.compile(r"^[0-9a-f]{64}$")
MODEL_PATH = re.compile(r"^models/([0-9a-f]{64})(/|$)")
LISTS = {("recommender", "models"), ("extractor", "extractors")}  # GET answers: lists of {"key": ...}
TIMEOUT = httpx.Timeout(connect=3.0, read=300.0, write=60.0, pool=10.0)
RETRIES = 2


class ProxyClients:
    """Two pooled clients: with transport retries (idempotent methods) and without."""

    def __init__(self) -> None:
        self.retrying = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(retries=RETRIES), timeout=TIMEOUT)
        self.single = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(retries=0), timeout=TIMEOUT)

    def for_method(self, method: str) -> httpx.AsyncClient:
        return self.retrying if method.upper() in IDEMPOTENT else self.single

    async def aclose(self) -> None:
        await self.retrying.aclose()
        await self.single.aclose()


def referenced_keys(path: str, body: bytes, content_type: str) -> list[str]:
    """Artifact keys a service request names: a model in the path, ``REF_FIELDS`` of a JSON or form body."""
    keys = [m.group(1)] if (m := MODEL_PATH.match(path)) else []
    values: list[Any] = []
    if body and "json" in content_type:
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            values = [doc.get(f) for f in REF_FIELDS]
    elif body and "multipart/form-data" in content_type:
        for f in REF_FIELDS:  # a form field's value: the part after its Content-Disposition name
            values += re.findall(rb'name="' + f.encode() + rb'"\r\n(?:[^\r\n]*\r\n)*?\r\n([0-9a-f]{64})\r\n', body)
        values = [v.decode() for v in values]
    elif body and "x-www-form-urlencoded" in content_type:
        form = parse_qs(body.decode("latin-1"))
        values = [v for f in REF_FIELDS for v in form.get(f, [])]
    return keys + [v for v in values if isinstance(v, str) and ARTIFACT_KEY.match(v)]


def _owned_json(content: bytes, caller: Caller, settings: Settings) -> bytes:
    """A list answer of ``{"key": ...}`` rows with only the caller's artifacts."""
    try:
        rows = json.loads(content)
    except ValueError:
        return content
    if not isinstance(rows, list):
        return content
    keep = [r for r in rows if not isinstance(r, dict) or caller.admin
            or owners.owns(settings.home, str(r.get("key", "")), caller.owner)]
    return json.dumps(keep).encode()


async def forward(request: Request, base_url: str, path: str, token: str = "", caller: Caller | None = None,
                  settings: Settings | None = None, service: str = "") -> Response:
    """Send ``request`` to ``base_url/v1/path`` and relay the answer (errors -> 502/503/504); with a
    ``caller``, only artifacts it owns may be named, and lists show only those."""
    clients: ProxyClients = request.app.state.proxy
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    if token:
        headers["X-Internal-Token"] = token
    if caller is not None and not caller.admin:
        headers[OWNER_HEADER] = caller.owner
    # the path arrives decoded (`..%2F` is `../` here): a `.` or `..` segment would climb out of the
    # service's /v1 once the URL is normalised, so such a path names nothing
    if any(part in (".", "..") for part in path.replace("\\", "/").split("/")):
        return error_response(NotFound(f"no such path: {path!r} ('.' and '..' segments are not forwarded)"),
                              request.url.path)
    body = await request.body()
    if caller is not None and settings is not None and not caller.admin:
        for key in referenced_keys(path, body, request.headers.get("content-type", "")):
            if not owners.owns(settings.home, key, caller.owner):
                return error_response(NotFound(f"{key} is not in the store"), request.url.path)
    # encode it again (control characters, spaces, '?', '#' stay in the path)
    url = f"{base_url.rstrip('/')}/v1/{quote(path, safe='/')}"
    try:
        upstream = await clients.for_method(request.method).request(
            request.method, url, params=request.query_params, headers=headers, content=body)
    except (httpx.InvalidURL, httpx.UnsupportedProtocol, ValueError) as exc:
        return error_response(AdvrecError(f"cannot forward this request: {exc}"), request.url.path)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        return error_response(Unavailable(f"the service is unavailable ({type(exc).__name__}); retry later"),
                              request.url.path)
    except httpx.TimeoutException:
        return problem_response(504, "Gateway timeout", "the service timed out", "urn:advrec:problem:gateway-timeout",
                                request.url.path)
    except httpx.HTTPError as exc:
        return problem_response(502, "Bad gateway", f"bad answer from the service ({type(exc).__name__})",
                                "urn:advrec:problem:bad-gateway", request.url.path)
    keep = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP | {"content-encoding"}}
    content = upstream.content
    if "json" in upstream.headers.get("content-type", "") and settings is not None:
        if caller is not None and upstream.status_code == 200:
            if request.method == "GET" and (service, path.strip("/")) in LISTS:
                content = _owned_json(content, caller, settings)
            elif (service, path.strip("/")) == ("extractor", "extract/catalog"):
                try:
                    made = str(json.loads(content).get("features", ""))
                except (ValueError, AttributeError):
                    made = ""
                if ARTIFACT_KEY.match(made):
                    owners.add(settings.home, made, caller.owner)
        content = redact(content.decode("utf-8", "replace"),
                         [settings.home, settings.weights_dir or settings.resolved_weights_dir]).encode()
    return Response(content, upstream.status_code, headers=keep)


def _route(service: str, url_field: str):
    async def proxy(path: str, request: Request, settings: Settings = Depends(get_app_settings),
                    caller: Caller = Depends(require_api_key)) -> Response:
        return await forward(request, getattr(settings, url_field), path, settings.internal_token, caller, settings,
                             service)

    proxy.__name__ = f"proxy_{service}"
    proxy.__doc__ = f"Forwarded to the {service} service's `/v1/{{path}}` (see its own OpenAPI docs)."
    return proxy


# the service's own answers pass through (see its OpenAPI); 502/503/504 are the proxy's
router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)],
                   responses=error_responses(400, 401, 403, 404, 405, 409, 413, 422, 429, 502, 503, 504))
for _service, _field in SERVICES.items():
    for _method in ("GET", "POST", "PUT", "PATCH", "DELETE"):  # one route per method: unique operation ids
        router.add_api_route(f"/{_service}/{{path:path}}", _route(_service, _field), methods=[_method],
                             name=f"proxy_{_service}_{_method.lower()}", tags=[f"{_service} (proxy)"],
                             summary=f"{_method} to the {_service} service")
