"""Who owns which stored artifact: models, extractors, features and datasets belong to the keys that made them.

The store is content-addressed and shared (two keys that run the same spec compute each artifact
once), so ownership is kept beside it: ``<home>/owners/<artifact key>/<owner id>``, an empty file per
owner (adding one is an atomic create; no lock). A job's owner is added to every artifact of its plan
once that step is finished (:func:`advrec.pipeline.jobs.advance`); the gateway answers another key's
artifact as unknown (404), lists only the caller's, and lets an admin key see all. Artifacts made
before owners existed belong to no key: admin keys only.
"""

from __future__ import annotations

import re
from pathlib import Path

KEY_RE = re.compile(r"^[0-9a-f]{64}$")
OWNER_RE = re.compile(r"^[0-9a-f]{16}$")


def _dir(home: str | Path, key: str) -> Path:
    if not KEY_RE.match(key):
        raise ValueError(f"not an artifact key: {key!r}")
    return Path(home) / "owners" / key


def add(home: str | Path, key: str, owner: str | None) -> None:
    """Record ``owner`` (an owner id) as an owner of artifact ``key`` (idempotent)."""
    if not owner or not OWNER_RE.match(owner):
        return
    folder = _dir(home, key)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / owner).touch(exist_ok=True)


def owns(home: str | Path, key: str, owner: str) -> bool:
    """True when ``owner`` owns artifact ``key``."""
    return bool(OWNER_RE.match(owner)) and KEY_RE.match(key) is not None and (_dir(home, key) / owner).is_file()


def owners(home: str | Path, key: str) -> list[str]:
    """Every owner of artifact ``key``."""
    try:
        return sorted(p.name for p in _dir(home, key).iterdir())
    except (FileNotFoundError, ValueError):
        return []
