"""API keys and ownership: clients send ``X-API-Key``; the settings hold SHA-256 digests of the
accepted keys (:mod:`advrec_common.apikeys`). Missing key -> 401, unknown key -> 403.

Every job and dataset records the owner id of the key that created it (:func:`owner_id`); a key
sees, downloads and cancels only its own (another key's id answers 404, as an unknown one), except
an admin key (``ADVREC_ADMIN_KEY_HASHES``), which sees everything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Depends, Security
from fastapi.security import APIKeyHeader

from advrec_common.apikeys import key_accepted, owner_id
from advrec_common.errors import Forbidden, Unauthorized
from advrec_common.settings import Settings
from gateway.deps import get_app_settings

API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="A gateway API key.")


@dataclass(frozen=True)
class Caller:
    """Who sends the request: the owner id of its key, and whether the key is an admin key."""

    owner: str
    admin: bool = False

    def may_see(self, owners: Any) -> bool:
        """True for an admin, or when ``owners`` (one owner id or a list of them) includes this caller."""
        if self.admin:
            return True
        return self.owner in owners if isinstance(owners, list | tuple | set) else owners == self.owner


def require_api_key(
    key: str | None = Security(API_KEY_HEADER), settings: Settings = Depends(get_app_settings)
) -> Caller:
    """Dependency of every protected route: 401 without a key, 403 with a wrong one; else the caller."""
    if not key:
        raise Unauthorized("missing X-API-Key header")
    admin = bool(settings.admin_key_hashes) and key_accepted(key, settings.admin_key_hashes)
    if not admin and not key_accepted(key, settings.api_key_hashes):
        raise Forbidden("invalid API key")
    return Caller(owner=owner_id(key), admin=admin)
