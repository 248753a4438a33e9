"""API keys: clients send ``X-API-Key``; the settings hold SHA-256 digests of the accepted keys.

Keys are never stored in clear: ``advrec stack hash-key KEY`` prints the digest to put in
``ADVREC_API_KEY_HASHES`` (a JSON list). Missing key -> 401, unknown key -> 403. The digest of
the presented key is compared with every accepted digest in constant time
(:func:`hmac.compare_digest`), so timing reveals neither which digest nor how much matched.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Depends, Security
from fastapi.security import APIKeyHeader

from advrec_common.errors import Forbidden, Unauthorized
from advrec_common.settings import Settings
from gateway.deps import get_app_settings

API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="A gateway API key.")


def hash_key(key: str) -> str:
    """SHA-256 hex digest of an API key (what the settings store)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_accepted(key: str, accepted_hashes: list[str]) -> bool:
    """True when ``key`` hashes to one of ``accepted_hashes`` (constant-time, checks them all)."""
    digest = hash_key(key).encode()
    ok = False
    for h in accepted_hashes:
        ok |= hmac.compare_digest(digest, h.strip().lower().encode())
    return ok


def require_api_key(
    key: str | None = Security(API_KEY_HEADER), settings: Settings = Depends(get_app_settings)
) -> None:
    """Dependency of every protected route: 401 without a key, 403 with a wrong one."""
    if not key:
        raise Unauthorized("missing X-API-Key header")
    if not key_accepted(key, settings.api_key_hashes):
        raise Forbidden("invalid API key")
