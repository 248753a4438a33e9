"""The one exception hierarchy of advrec: every error raised on purpose, with its HTTP meaning.

Each class carries its HTTP ``status``, a short ``title`` and a ``slug`` that names its RFC 9457
problem type (``urn:advrec:problem:<slug>``); :mod:`advrec_common.http` turns any of them into
the one error body every service and the gateway answer with. Nothing else decides a status.

``problems`` lists every individual mistake (``loc`` = where, e.g. the spec path
``attacks[0].params.cw_steps``; ``msg`` = what is wrong), so a caller sees all of them at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

PROBLEM_TYPE_PREFIX = "urn:advrec:problem:"


class AdvrecError(Exception):
    """Base class of every error advrec raises on purpose (HTTP 400)."""

    status: ClassVar[int] = 400
    title: ClassVar[str] = "Bad request"
    slug: ClassVar[str] = "bad-request"

    def __init__(self, detail: str = "", *, problems: Iterable[Mapping[str, Any]] | None = None):
        super().__init__(detail)
        self.detail = detail or self.title
        self.problems: list[dict[str, str]] = [
            {"loc": str(p.get("loc", "")), "msg": str(p.get("msg", ""))} for p in (problems or [])
        ]

    def __str__(self) -> str:
        return self.detail

    @property
    def problem_type(self) -> str:
        return PROBLEM_TYPE_PREFIX + self.slug


class InvalidInput(AdvrecError, ValueError):
    """Bad parameters, shapes or values; an invalid spec (HTTP 422)."""

    status, title, slug = 422, "Invalid input", "invalid-input"


class BadImage(InvalidInput):
    """An image that cannot be decoded, or is too large to decode."""

    title, slug = "Bad image", "bad-image"


class BadCheckpoint(InvalidInput):
    """A checkpoint of the wrong layout, with missing/unexpected keys, or not a checkpoint."""

    title, slug = "Bad checkpoint", "bad-checkpoint"


class NotFound(AdvrecError, KeyError):
    """Unknown id: user, item, dataset, job, artifact, weight name (HTTP 404)."""

    status, title, slug = 404, "Not found", "not-found"


class MissingWeights(NotFound):
    """A named pretrained weight whose file is not on disk."""

    title, slug = "Missing weights", "missing-weights"


class Unauthorized(AdvrecError):
    """No credentials (HTTP 401)."""

    status, title, slug = 401, "Unauthorized", "unauthorized"


class Forbidden(AdvrecError):
    """Credentials that do not allow this (HTTP 403)."""

    status, title, slug = 403, "Forbidden", "forbidden"


class Conflict(AdvrecError):
    """The resource is not in a state that allows the request, e.g. results of a running job (HTTP 409)."""

    status, title, slug = 409, "Conflict", "conflict"


class PayloadTooLarge(AdvrecError):
    """An upload or catalog above the configured size limits (HTTP 413)."""

    status, title, slug = 413, "Payload too large", "payload-too-large"


class QuotaExceeded(AdvrecError):
    """A per-key quota (concurrent jobs, ...) is used up; retry later (HTTP 429)."""

    status, title, slug = 429, "Quota exceeded", "quota-exceeded"
    retry_after_s: ClassVar[int] = 5


class Overloaded(AdvrecError):
    """The service's queue is full; retry later (HTTP 503)."""

    status, title, slug = 503, "Overloaded", "overloaded"
    retry_after_s: ClassVar[int] = 1


class Unavailable(AdvrecError):
    """A backend the request needs (queue broker, a service) is not reachable (HTTP 503)."""

    status, title, slug = 503, "Unavailable", "unavailable"
    retry_after_s: ClassVar[int] = 2


class Cancelled(AdvrecError):
    """The run was cancelled while this work was in progress (not an HTTP answer)."""

    status, title, slug = 409, "Cancelled", "cancelled"


def status_for(exc: BaseException) -> int:
    """HTTP status of an exception: its class's ``status`` for an :class:`AdvrecError`, else 500."""
    return exc.status if isinstance(exc, AdvrecError) else 500


def invalid(problems: Iterable[tuple[str, str]], summary: str = "invalid input") -> InvalidInput:
    """An :class:`InvalidInput` listing every ``(loc, msg)`` problem (detail = summary + one line each)."""
    rows = [{"loc": loc, "msg": msg} for loc, msg in problems]
    lines = [f"  {r['loc'] or '<root>'}: {r['msg']}" for r in rows]
    return InvalidInput(summary + (":\n" + "\n".join(lines) if lines else ""), problems=rows)
