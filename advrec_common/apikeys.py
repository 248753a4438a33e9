"""API keys as the settings store them: SHA-256 digests, compared in constant time.

Keys are never stored in clear: ``advrec stack hash-key KEY`` prints the digest to put in
``ADVREC_API_KEY_HASHES`` (a JSON list). The digest of a presented key is compared with every
accepted digest (:func:`hmac.compare_digest`), so timing reveals neither which digest nor how much
matched.
"""

from __future__ import annotations

import hashlib
import hmac


def hash_key(key: str) -> str:
    """SHA-256 hex digest of an API key (what the settings store)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def owner_id(key: str) -> str:
    """The owner id stored in the jobs and datasets a key creates: 16 hex of a digest of the key's hash
    (neither the key nor its accepted digest is written next to the data)."""
    return owner_of_digest(hash_key(key))


def owner_of_digest(digest: str) -> str:
    """The owner id of the key whose SHA-256 hex digest is ``digest`` (as the settings list it)."""
    return hashlib.sha256(b"advrec-owner:" + digest.strip().lower().encode()).hexdigest()[:16]


def key_accepted(key: str, accepted_hashes: list[str]) -> bool:
    """True when ``key`` hashes to one of ``accepted_hashes`` (constant-time, checks them all)."""
    digest = hash_key(key).encode()
    ok = False
    for h in accepted_hashes:
        ok |= hmac.compare_digest(digest, h.strip().lower().encode())
    return ok
