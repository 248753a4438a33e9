"""One namespace, one stack: the claim a stack holds on its Redis namespace, taken atomically.

A stack's processes write and read ``advrec:<namespace>:*``. Two deployments that share a Redis
database and a namespace would take and drop each other's messages, so the namespace is claimed:
``advrec:stack:<namespace>`` holds the claimant's *instance* (a random id kept in its home,
:func:`instance_id`, the same for every process and host of one deployment: they share the home),
its home, host and pid, with a 30 s expiry. Taking and refreshing the claim is one Lua script (get,
compare, set with expiry), so of two stacks started at the same moment exactly one gets it, and the
other is refused with the holder's identity (:class:`~advrec_common.errors.Conflict`).

Who claims: ``advrec stack up`` before it starts anything (then its supervisor refreshes it), every
worker at start and on every recovery tick, and the gateway at start (docker-compose has no
supervisor: its processes claim for themselves). A worker or gateway refused at start exits.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from advrec_common.errors import Conflict
from advrec_common.settings import Settings, instance_id

CLAIM_TTL_S = 30

# KEYS[1] the claim; ARGV[1] our instance, ARGV[2] the value to write, ARGV[3] ttl (s).
# Returns "" when the claim is (now) ours, else the holder's value.
_CLAIM = """
local held = redis.call('GET', KEYS[1])
if held then
  local ok, decoded = pcall(cjson.decode, held)
  if not ok or decoded['instance'] ~= ARGV[1] then return held end
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
return ''
"""
# KEYS[1] the claim; ARGV[1] our instance: delete it only if it is ours.
_RELEASE = """
local held = redis.call('GET', KEYS[1])
if held then
  local ok, decoded = pcall(cjson.decode, held)
  if ok and decoded['instance'] == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
end
return 0
"""


def claim_key(namespace: str) -> str:
    """The Redis key a live stack holds: ``advrec:stack:<namespace>``."""
    return f"advrec:stack:{namespace}"


def describe(held: dict[str, Any]) -> str:
    """A holder, for a person: home, host, pid, since when."""
    since = held.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, int | float) else "?"
    return (f"home {held.get('home')} on host {held.get('host')} ({held.get('role', 'process')} pid "
            f"{held.get('pid')}, since {when}; instance {held.get('instance')})")


def _client(redis_url: str):
    import redis

    return redis.Redis.from_url(redis_url, socket_timeout=3, socket_connect_timeout=3)


def take(redis_url: str, namespace: str, home: str | Path, role: str, since: float | None = None,
         ttl_s: int = CLAIM_TTL_S) -> None:
    """Claim (or refresh this deployment's claim on) ``namespace``; Conflict naming the holder when another
    deployment holds it."""
    home = str(Path(home).expanduser().resolve())
    mine = instance_id(home)
    value = json.dumps({"instance": mine, "home": home, "host": socket.gethostname(), "pid": os.getpid(),
                        "role": role, "since": since or time.time()})
    client = _client(redis_url)
    try:
        held = client.eval(_CLAIM, 1, claim_key(namespace), mine, value, ttl_s)
    finally:
        client.close()
    if held:
        try:
            holder = json.loads(held)
        except ValueError:
            holder = {"home": "?", "host": "?"}
        raise Conflict(f"Redis {redis_url} namespace {namespace!r} is held by another live stack: {describe(holder)}. "
                       f"Use another database or another ADVREC_STACK_ID (docker-compose: ADVREC_STACK_ID=auto, a "
                       f"distinct one per deployment), or stop that stack.")


def take_for(settings: Settings, role: str) -> None:
    """:func:`take` for the stack of ``settings``."""
    take(settings.redis_url, settings.namespace, settings.home, role)


def release(redis_url: str, namespace: str, home: str | Path) -> bool:
    """Drop the claim if this deployment holds it; True if it did."""
    client = _client(redis_url)
    try:
        return bool(client.eval(_RELEASE, 1, claim_key(namespace), instance_id(home)))
    finally:
        client.close()


def holder(redis_url: str, namespace: str) -> dict[str, Any] | None:
    """Who holds ``namespace`` now (None: nobody)."""
    client = _client(redis_url)
    try:
        raw = client.get(claim_key(namespace))
    finally:
        client.close()
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None
