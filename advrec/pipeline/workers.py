"""Which workers are alive, where, and what they consume: a registry on the stack's Redis.

Every worker's recovery loop (:mod:`advrec.pipeline.recovery`, a thread that ticks even while a
solo worker computes a long step) writes ``advrec:<namespace>:worker:<node>`` (JSON: node, host,
queues, concurrency, pid, started, last tick) with an expiry of :func:`ttl_s`; a frozen, killed or
partitioned worker therefore drops out by itself. The registry answers the questions a shared
stack needs: which queues have a consumer (readiness, a job's status), how many steps a queue can
run at once (the fair dispatcher, :func:`advrec.pipeline.jobs.dispatch`), and which hosts serve
the stack. It also counts every worker start (``advrec:<namespace>:worker-starts``), the metric of
restarts. Torch-free: the gateway reads it.
"""

from __future__ import annotations

import json
import re
import socket
import time
from typing import Any

from advrec.pipeline.queue import QUEUES, key_prefix
from advrec_common.settings import Settings

STARTS = "worker-starts"


def ttl_s(settings: Settings) -> int:
    """How long a registration outlives its last tick: 3 recovery periods + 10 s (the healthcheck's bound)."""
    return int(3 * settings.reconcile_every_s + 10)


def _client(settings: Settings):
    import redis

    return redis.Redis.from_url(settings.redis_url, socket_timeout=3, socket_connect_timeout=3)


def worker_key(settings: Settings, node: str) -> str:
    return f"{key_prefix(settings.namespace)}worker:{node}"


def base_name(node: str) -> str:
    """A worker's name without the per-start suffix the launcher adds (``worker-extract-1a2b3c@host`` ->
    ``worker-extract@host``): the same worker across restarts, for metrics."""
    name, _, host = node.partition("@")
    return re.sub(r"-[0-9a-f]{6}$", "", name) + (f"@{host}" if host else "")


def register(settings: Settings, node: str, queues: list[str], concurrency: int = 1, pid: int = 0,
             started: float | None = None, first: bool = False) -> None:
    """Write (or refresh) this worker's registration; ``first``: count a start."""
    entry = {"node": node, "host": node.partition("@")[2] or socket.gethostname(), "queues": sorted(queues),
             "concurrency": max(1, int(concurrency)), "pid": pid, "started": started or time.time(),
             "tick": time.time()}
    client = _client(settings)
    try:
        client.set(worker_key(settings, node), json.dumps(entry), ex=ttl_s(settings))
        if first:
            client.hincrby(key_prefix(settings.namespace) + STARTS, base_name(node), 1)
    finally:
        client.close()


def unregister(settings: Settings, node: str) -> None:
    client = _client(settings)
    try:
        client.delete(worker_key(settings, node))
    finally:
        client.close()


def live_workers(settings: Settings) -> list[dict[str, Any]]:
    """Every registered (live) worker of this stack."""
    client = _client(settings)
    try:
        keys = list(client.scan_iter(match=worker_key(settings, "*"), count=500))
        values = client.mget(keys) if keys else []
    finally:
        client.close()
    out = []
    for raw in values:
        if raw:
            try:
                out.append(json.loads(raw))
            except ValueError:
                continue
    return sorted(out, key=lambda w: w.get("node", ""))


def slots(workers: list[dict[str, Any]]) -> dict[str, int]:
    """Steps each queue can run at once: the summed concurrency of its live consumers (0: none)."""
    out = dict.fromkeys(QUEUES, 0)
    for w in workers:
        for q in w.get("queues", []):
            out[q] = out.get(q, 0) + int(w.get("concurrency", 1))
    return out


def starts(settings: Settings) -> dict[str, int]:
    """Worker starts since the stack's Redis began, by worker name (:func:`base_name`)."""
    client = _client(settings)
    try:
        raw = client.hgetall(key_prefix(settings.namespace) + STARTS)
    finally:
        client.close()
    return {k.decode(): int(v) for k, v in raw.items()}
