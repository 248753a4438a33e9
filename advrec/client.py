"""Python clients of the advrec gateway: :class:`AdvrecClient` (sync) and :class:`AsyncAdvrecClient`.

Both share one request-building core (:class:`_Requests`): each API call is described once as a
:class:`Call` (method, path, body, whether repeating it is safe) and its response decoded once
(:func:`_decode`); the two classes only differ in how they send.

Retries (one policy, :func:`_retry_delay`, for both clients): while the gateway restarts or
Redis is down, a call is repeated with backoff (0.5 s doubling to 5 s, ``Retry-After``
honoured) until ``retry_for`` seconds have passed (default None: for as long as the outage lasts,
as ``wait`` polls; ``on_retry`` is told of each retry, the CLI prints the first): after a connection
failure (the request never reached the server) always; after a 502/503/504 or a lost answer only
for calls that are safe to repeat. Reads and cancels are; a submit is, because it carries an ``Idempotency-Key`` (the
gateway answers a repeated key with the job it already made); an upload is (datasets are
content-addressed); a training request is not, and is only repeated when it never arrived.
``wait`` also keeps polling through outages until its own timeout.

Errors: 404 -> :class:`NotFound`, 422 -> :class:`InvalidInput`, anything else >= 400 ->
:class:`ApiError` (with ``status_code``); no answer at all -> :class:`GatewayUnreachable`.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from advrec_common.errors import (
    AdvrecError,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    QuotaExceeded,
    Unauthorized,
    Unavailable,
)

TERMINAL = {"done", "failed", "cancelled"}
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRY_FOR: float | None = None  # seconds a call keeps being retried through outages (None: no limit)
RETRY_STATUSES = {502, 503, 504}
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.5, 5.0

ProgressCallback = Callable[[dict[str, Any]], None]
RetryCallback = Callable[[str, float], None]  # (why, seconds until the next attempt)


class ApiError(AdvrecError):
    """The gateway answered with an error status that has no more specific type (``status_code``)."""

    def __init__(self, status_code: int, detail: str, problems: list[dict[str, Any]] | None = None):
        super().__init__(f"HTTP {status_code}: {detail}", problems=problems)
        self.status_code = status_code


class GatewayUnreachable(Unavailable):
    """No HTTP answer at all (connection refused, DNS, timeout), after retrying for ``retry_for`` seconds."""


# problem-details statuses -> the typed error the client raises (the server's hierarchy)
_ERRORS: dict[int, type[AdvrecError]] = {c.status: c for c in (
    InvalidInput, NotFound, Unauthorized, Forbidden, Conflict, PayloadTooLarge, QuotaExceeded, Unavailable)}


class JobFailed(AdvrecError):
    """``wait`` saw the job end in ``failed`` or ``cancelled``."""


@dataclass(frozen=True)
class Call:
    """One HTTP request to the gateway, independent of sync/async sending."""

    method: str
    path: str
    json: Any = None
    files: Any = None
    data: dict[str, str] | None = None  # multipart form fields (with ``files``)
    expect: str = "json"  # "json" | "bytes"
    params: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    safe_to_repeat: bool = True  # False: repeat only when the request never reached the server


def _retry_delay(call: Call, attempt: int, started: float, retry_for: float | None,
                 resp: httpx.Response | None = None, exc: Exception | None = None) -> float | None:
    """Seconds to wait before repeating ``call`` (attempt ``attempt``, 1-based), or None to stop."""
    if exc is not None:
        never_arrived = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
        if not (never_arrived or (call.safe_to_repeat and isinstance(exc, httpx.TransportError))):
            return None
    elif resp is None or resp.status_code not in RETRY_STATUSES or not call.safe_to_repeat:
        return None
    delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (attempt - 1)) * random.uniform(0.8, 1.2)
    if resp is not None and resp.headers.get("retry-after", "").isdigit():
        delay = min(BACKOFF_MAX_S, max(delay, float(resp.headers["retry-after"])))
    return delay if retry_for is None or time.monotonic() - started + delay <= retry_for else None


def _why(resp: httpx.Response | None, exc: Exception | None) -> str:
    """What went wrong with an attempt, for ``on_retry``."""
    return f"{type(exc).__name__}: {exc}" if exc is not None else f"HTTP {resp.status_code if resp else '?'}"


def _problem(resp: httpx.Response) -> tuple[str, list[dict[str, Any]]]:
    """(detail, problems) of an error answer (RFC 9457 body; plain text tolerated)."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:500] or resp.reason_phrase, []
    if not isinstance(body, dict):
        return str(body), []
    problems = body.get("errors") if isinstance(body.get("errors"), list) else []
    return str(body.get("detail", body)), [p for p in problems if isinstance(p, dict)]


def _decode(call: Call, resp: httpx.Response) -> Any:
    """The typed error of an error answer (with every listed problem), else the decoded body."""
    if resp.status_code >= 400:
        detail, problems = _problem(resp)
        cls = _ERRORS.get(resp.status_code)
        if cls is None:
            raise ApiError(resp.status_code, detail, problems)
        raise cls(detail, problems=problems)
    return resp.content if call.expect == "bytes" else resp.json()


def _dataset_files(path: str | Path | None, images: list[str | Path] | None,
                   interactions: str | Path | None, categories: str | Path | None) -> list[tuple[str, tuple]]:
    files: list[tuple[str, tuple]] = []
    named = [path, *(images or []), interactions, categories]
    if missing := [str(f) for f in named if f is not None and not Path(f).is_file()]:
        raise NotFound(f"no such file: {', '.join(missing[:5])}" + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""))
    if path is not None:
        p = Path(path)
        files.append(("archive", (p.name, p.read_bytes(), "application/zip")))
    for img in images or []:
        files.append(("images", (Path(img).name, Path(img).read_bytes(), "application/octet-stream")))
    for name, f in (("interactions", interactions), ("categories", categories)):
        if f is not None:
            files.append((name, (Path(f).name, Path(f).read_bytes(), "text/csv")))
    if not files:
        raise InvalidInput("give a zip archive, or images and an interactions file")
    return files


class _Requests:
    """The request-building core shared by both clients."""

    @staticmethod
    def _job_body(spec: dict[str, Any] | None, preset: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
        if (spec is None) == (preset is None):
            raise InvalidInput("give exactly one of spec or preset")
        return {**(dict(spec) if spec is not None else {"preset": preset}), **overrides}

    @staticmethod
    def submit(spec: dict[str, Any] | None = None, preset: str | None = None, **overrides: Any) -> Call:
        # one key per submit: a repeat after a lost answer returns the job made the first time
        return Call("POST", "/v1/jobs", json=_Requests._job_body(spec, preset, overrides),
                    headers={"Idempotency-Key": uuid.uuid4().hex})

    @staticmethod
    def validate(spec: dict[str, Any] | None = None, preset: str | None = None, **overrides: Any) -> Call:
        return Call("POST", "/v1/jobs:validate", json=_Requests._job_body(spec, preset, overrides))

    @staticmethod
    def status(job_id: str) -> Call:
        return Call("GET", f"/v1/jobs/{job_id}")

    @staticmethod
    def list_jobs(limit: int = 50, before: str | None = None) -> Call:
        return Call("GET", "/v1/jobs", params={"limit": limit, **({"before": before} if before else {})})

    @staticmethod
    def results(job_id: str) -> Call:
        return Call("GET", f"/v1/jobs/{job_id}/results")

    @staticmethod
    def report(job_id: str) -> Call:
        return Call("GET", f"/v1/jobs/{job_id}/report", expect="bytes")

    @staticmethod
    def artifact(job_id: str, path: str) -> Call:
        return Call("GET", f"/v1/jobs/{job_id}/artifacts/{path}", expect="bytes")

    @staticmethod
    def cancel(job_id: str) -> Call:
        return Call("DELETE", f"/v1/jobs/{job_id}")

    @staticmethod
    def upload_dataset(path: str | Path | None = None, images: list[str | Path] | None = None,
                       interactions: str | Path | None = None, categories: str | Path | None = None,
                       columns: dict[str, Any] | None = None,
                       category_columns: dict[str, Any] | None = None) -> Call:
        data = {k: json.dumps(v) for k, v in (("columns", columns), ("category_columns", category_columns)) if v}
        return Call("POST", "/v1/datasets", files=_dataset_files(path, images, interactions, categories),
                    data=data or None)

    @staticmethod
    def list_datasets() -> Call:
        return Call("GET", "/v1/datasets")

    @staticmethod
    def dataset(dataset_id: str) -> Call:
        return Call("GET", f"/v1/datasets/{dataset_id}")


def _unreachable(http: httpx.Client | httpx.AsyncClient, exc: Exception) -> GatewayUnreachable:
    return GatewayUnreachable(f"cannot reach the gateway at {http.base_url}: {type(exc).__name__}: {exc}")


def _is_outage(exc: Exception) -> bool:
    """An error that means "the gateway is not there right now" (wait keeps polling through it)."""
    return isinstance(exc, GatewayUnreachable | Unavailable) or (
        isinstance(exc, ApiError) and exc.status_code in RETRY_STATUSES)


def gateway_url(base_url: str) -> httpx.URL:
    """``base_url`` as an http(s) URL with a host; InvalidInput saying what is wrong otherwise (a malformed
    ``--server`` / ``ADVREC_SERVER`` is the user's to fix, not a connection failure)."""
    try:
        url = httpx.URL(base_url.strip().rstrip("/"))
    except httpx.InvalidURL as exc:
        raise InvalidInput(f"gateway URL {base_url!r} is not a valid URL ({exc}); give e.g. http://127.0.0.1:8000 "
                           "(--server or ADVREC_SERVER)") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise InvalidInput(f"gateway URL {base_url!r} needs http:// or https:// and a host, e.g. "
                           "http://127.0.0.1:8000 (--server or ADVREC_SERVER)")
    return url


def _client_kwargs(base_url: str, api_key: str | None, timeout: float) -> dict[str, Any]:
    headers = {"X-API-Key": api_key} if api_key else {}
    return {"base_url": gateway_url(base_url), "headers": headers, "timeout": httpx.Timeout(timeout, connect=5.0)}


def _check_wait(status: dict[str, Any], raise_on_failure: bool) -> bool:
    if status["state"] in TERMINAL:
        if raise_on_failure and status["state"] != "done":
            raise JobFailed(f"job {status['id']} {status['state']}: {status.get('error') or ''}".strip())
        return True
    return False


class AdvrecClient:
    """Synchronous client: ``AdvrecClient("http://127.0.0.1:8000", api_key="...")``."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 transport: httpx.BaseTransport | None = None, retry_for: float | None = DEFAULT_RETRY_FOR,
                 on_retry: RetryCallback | None = None):
        self._http = httpx.Client(transport=transport or httpx.HTTPTransport(),
                                  **_client_kwargs(base_url, api_key, timeout))
        self.retry_for = retry_for
        self.on_retry = on_retry

    def _do(self, call: Call) -> Any:
        started, attempt = time.monotonic(), 0
        while True:
            attempt += 1
            resp = exc = None
            try:
                resp = self._http.request(call.method, call.path, json=call.json, files=call.files,
                                          data=call.data, params=call.params, headers=call.headers)
            except httpx.TransportError as e:
                exc = e
            delay = _retry_delay(call, attempt, started, self.retry_for, resp, exc)
            if delay is None:
                if exc is not None:
                    raise _unreachable(self._http, exc) from None
                return _decode(call, resp)  # type: ignore[arg-type]
            if self.on_retry is not None:
                self.on_retry(_why(resp, exc), delay)
            time.sleep(delay)

    def __enter__(self) -> AdvrecClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def submit(self, spec: dict[str, Any] | None = None, preset: str | None = None, **overrides: Any) -> str:
        """Submit a spec dict (or a preset with top-level overrides); returns the job id."""
        return self.submit_job(spec, preset, **overrides)["id"]

    def submit_job(self, spec: dict[str, Any] | None = None, preset: str | None = None,
                   **overrides: Any) -> dict[str, Any]:
        """:meth:`submit`, returning the new job's status (with admission ``warnings``)."""
        return self._do(_Requests.submit(spec, preset, **overrides))

    def validate(self, spec: dict[str, Any] | None = None, preset: str | None = None,
                 **overrides: Any) -> dict[str, Any]:
        """Every admission check of :meth:`submit` without queueing: the warnings, counts and plan size
        (ApiError 422 lists every problem)."""
        return self._do(_Requests.validate(spec, preset, **overrides))

    def status(self, job_id: str) -> dict[str, Any]:
        return self._do(_Requests.status(job_id))

    def list_jobs(self, limit: int = 50, before: str | None = None) -> list[dict[str, Any]]:
        """This key's jobs, newest first: ``limit`` of them, older than job ``before`` when given."""
        return self._do(_Requests.list_jobs(limit, before))

    def wait(self, job_id: str, progress: ProgressCallback | None = None, poll_interval: float = 1.0,
             timeout: float | None = None, raise_on_failure: bool = True) -> dict[str, Any]:
        """Poll until the job is terminal (calling ``progress(status)`` each poll); returns the status.

        Raises TimeoutError after ``timeout`` seconds, JobFailed if it failed/was cancelled.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        st: dict[str, Any] = {"state": "unknown"}
        while True:
            try:
                st = self.status(job_id)
            except AdvrecError as exc:  # the gateway restarts: keep waiting (until our own timeout)
                if not _is_outage(exc):
                    raise
            else:
                if progress:
                    progress(st)
                if _check_wait(st, raise_on_failure):
                    return st
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {st['state']} after {timeout} s")
            time.sleep(poll_interval)

    def results(self, job_id: str) -> dict[str, Any]:
        return self._do(_Requests.results(job_id))

    def report(self, job_id: str, path: str | Path) -> Path:
        """Save the job's report.html to ``path``; returns it."""
        out = Path(path)
        out.write_bytes(self._do(_Requests.report(job_id)))
        return out

    def artifact(self, job_id: str, name: str) -> bytes:
        return self._do(_Requests.artifact(job_id, name))

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._do(_Requests.cancel(job_id))

    def upload_dataset(self, path: str | Path | None = None, *, images: list[str | Path] | None = None,
                       interactions: str | Path | None = None, categories: str | Path | None = None,
                       columns: dict[str, Any] | None = None,
                       category_columns: dict[str, Any] | None = None) -> dict[str, Any]:
        """Upload a zip (``path``) or separate files; returns the dataset info (with its spec block).
        ``columns`` / ``category_columns`` name the files' columns (``{"user": "customer", "item": "sku"}``)."""
        return self._do(_Requests.upload_dataset(path, images, interactions, categories, columns, category_columns))

    def list_datasets(self) -> list[dict[str, Any]]:
        return self._do(_Requests.list_datasets())

    def dataset(self, dataset_id: str) -> dict[str, Any]:
        return self._do(_Requests.dataset(dataset_id))


class AsyncAdvrecClient:
    """Asynchronous twin of :class:`AdvrecClient` (same methods, awaitable)."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 transport: httpx.AsyncBaseTransport | None = None, retry_for: float | None = DEFAULT_RETRY_FOR,
                 on_retry: RetryCallback | None = None):
        self._http = httpx.AsyncClient(transport=transport or httpx.AsyncHTTPTransport(),
                                       **_client_kwargs(base_url, api_key, timeout))
        self.retry_for = retry_for
        self.on_retry = on_retry

    async def _do(self, call: Call) -> Any:
        started, attempt = time.monotonic(), 0
        while True:
            attempt += 1
            resp = exc = None
            try:
                resp = await self._http.request(call.method, call.path, json=call.json, files=call.files, data=call.data,
                                                params=call.params, headers=call.headers)
            except httpx.TransportError as e:
                exc = e
            delay = _retry_delay(call, attempt, started, self.retry_for, resp, exc)
            if delay is None:
                if exc is not None:
                    raise _unreachable(self._http, exc) from None
                return _decode(call, resp)  # type: ignore[arg-type]
            if self.on_retry is not None:
                self.on_retry(_why(resp, exc), delay)
            await asyncio.sleep(delay)

    async def __aenter__(self) -> AsyncAdvrecClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def submit(self, spec: dict[str, Any] | None = None, preset: str | None = None, **overrides: Any) -> str:
        return (await self.submit_job(spec, preset, **overrides))["id"]

    async def submit_job(self, spec: dict[str, Any] | None = None, preset: str | None = None,
                         **overrides: Any) -> dict[str, Any]:
        """See :meth:`AdvrecClient.submit_job`."""
        return await self._do(_Requests.submit(spec, preset, **overrides))

    async def validate(self, spec: dict[str, Any] | None = None, preset: str | None = None,
                       **overrides: Any) -> dict[str, Any]:
        """See :meth:`AdvrecClient.validate`."""
        return await self._do(_Requests.validate(spec, preset, **overrides))

    async def status(self, job_id: str) -> dict[str, Any]:
        return await self._do(_Requests.status(job_id))

    async def list_jobs(self, limit: int = 50, before: str | None = None) -> list[dict[str, Any]]:
        return await self._do(_Requests.list_jobs(limit, before))

    async def wait(self, job_id: str, progress: ProgressCallback | None = None, poll_interval: float = 1.0,
                   timeout: float | None = None, raise_on_failure: bool = True) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        st: dict[str, Any] = {"state": "unknown"}
        while True:
            try:
                st = await self.status(job_id)
            except AdvrecError as exc:  # the gateway restarts: keep waiting (until our own timeout)
                if not _is_outage(exc):
                    raise
            else:
                if progress:
                    progress(st)
                if _check_wait(st, raise_on_failure):
                    return st
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {st['state']} after {timeout} s")
            await asyncio.sleep(poll_interval)

    async def results(self, job_id: str) -> dict[str, Any]:
        return await self._do(_Requests.results(job_id))

    async def report(self, job_id: str, path: str | Path) -> Path:
        out = Path(path)
        out.write_bytes(await self._do(_Requests.report(job_id)))
        return out

    async def artifact(self, job_id: str, name: str) -> bytes:
        return await self._do(_Requests.artifact(job_id, name))

    async def cancel(self, job_id: str) -> dict[str, Any]:
        return await self._do(_Requests.cancel(job_id))

    async def upload_dataset(self, path: str | Path | None = None, *, images: list[str | Path] | None = None,
                             interactions: str | Path | None = None, categories: str | Path | None = None,
                             columns: dict[str, Any] | None = None,
                             category_columns: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self._do(_Requests.upload_dataset(path, images, interactions, categories, columns,
                                                       category_columns))

    async def list_datasets(self) -> list[dict[str, Any]]:
        return await self._do(_Requests.list_datasets())

    async def dataset(self, dataset_id: str) -> dict[str, Any]:
        return await self._do(_Requests.dataset(dataset_id))
