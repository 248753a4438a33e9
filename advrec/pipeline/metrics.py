"""The stack's own metrics, for Prometheus through the gateway's ``/metrics`` (one scrape target).

Workers run on several hosts and restart; what they measure is kept on the stack's Redis
(:func:`observe_step`: per step kind, a cumulative histogram of step seconds), beside what Redis
already knows (queue lengths, the worker registry of :mod:`advrec.pipeline.workers`). The gateway's
:class:`StackCollector` reads it all at scrape time, with the job index for jobs by state:

* ``advrec_queue_messages{queue}`` messages waiting in Redis; ``advrec_queue_ready_steps{queue}``
  steps waiting for a free slot of that queue (the fair dispatcher's backlog);
* ``advrec_queue_consumers{queue}`` live consumer slots; ``advrec_workers_live{host}``;
* ``advrec_jobs{state}`` jobs by state;
* ``advrec_step_seconds{kind,outcome}`` step durations (histogram);
* ``advrec_worker_restarts_total{worker}`` starts of a worker beyond its first.

Torch-free (the gateway imports it).
"""

from __future__ import annotations

import json
import time
from typing import Any

from advrec.pipeline.queue import QUEUES, key_prefix
from advrec_common.settings import Settings

STEP_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600)


def _client(settings: Settings):
    import redis

    return redis.Redis.from_url(settings.redis_url, socket_timeout=3, socket_connect_timeout=3)


def _steps_key(settings: Settings) -> str:
    return key_prefix(settings.namespace) + "metrics:step-seconds"


def observe_step(settings: Settings, kind: str, outcome: str, seconds: float) -> None:
    """Count one finished step (``outcome``: done, failed, cancelled) of ``kind`` that took ``seconds``."""
    client = _client(settings)
    try:
        pipe = client.pipeline(transaction=False)
        label = f"{kind}|{outcome}"
        pipe.hincrby(_steps_key(settings), f"{label}|count", 1)
        pipe.hincrbyfloat(_steps_key(settings), f"{label}|sum", float(seconds))
        for b in STEP_BUCKETS:
            if seconds <= b:
                pipe.hincrby(_steps_key(settings), f"{label}|le={b}", 1)
        pipe.execute()
    finally:
        client.close()


def step_histograms(settings: Settings) -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, outcome) -> {"count", "sum", "buckets": [(le, cumulative count)]}."""
    client = _client(settings)
    try:
        raw = client.hgetall(_steps_key(settings))
    finally:
        client.close()
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for field, value in raw.items():
        kind, outcome, what = field.decode().split("|", 2)
        row = out.setdefault((kind, outcome), {"count": 0, "sum": 0.0, "le": {}})
        if what == "count":
            row["count"] = int(value)
        elif what == "sum":
            row["sum"] = float(value)
        else:
            row["le"][float(what.removeprefix("le="))] = int(value)
    for row in out.values():
        row["buckets"] = [(b, row["le"].get(float(b), 0)) for b in STEP_BUCKETS] + [(float("inf"), row["count"])]
    return out


def queue_lengths(settings: Settings) -> dict[str, int]:
    """Messages waiting in each queue of this stack (priority sub-lists included)."""
    prefix = key_prefix(settings.namespace)
    client = _client(settings)
    out = dict.fromkeys(QUEUES, 0)
    try:
        for q in QUEUES:
            for key in client.scan_iter(match=f"{prefix}{q}*", count=100):
                name = key.decode()[len(prefix):]
                if (name == q or name.startswith(q + "\x06")) and client.type(key) == b"list":
                    out[q] += int(client.llen(key))
    finally:
        client.close()
    return out


class StackCollector:
    """A prometheus-client collector of the stack (queues, workers, jobs, steps); read at scrape time,
    each source on its own (one that fails leaves the others). Jobs by state are cached ``jobs_every_s``."""

    def __init__(self, settings: Settings, jobs_every_s: float = 15.0):
        self.settings = settings
        self.jobs_every_s = jobs_every_s
        self._jobs: tuple[float, dict[str, int], dict[str, int]] = (0.0, {}, {})

    def describe(self) -> list[Any]:
        return []  # collected at scrape time only (prometheus_client then skips the registration check)

    def _job_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """(jobs by state, ready steps by queue), cached."""
        from advrec.pipeline.record import RunRecord, active_runs, list_page

        at, states, ready = self._jobs
        if time.monotonic() - at < self.jobs_every_s:
            return states, ready
        states = dict.fromkeys(("queued", "running", "done", "failed", "cancelled"), 0)
        rows, _ = list_page(self.settings.runs_dir, None, 10**9, all_owners=True)
        for r in rows:
            states[r["state"]] = states.get(r["state"], 0) + 1
        ready = dict.fromkeys(QUEUES, 0)
        for run_id in active_runs(self.settings.runs_dir):
            try:
                d = RunRecord.open(self.settings.runs_dir, run_id).read()
            except Exception:  # noqa: BLE001 -- a record being rewritten is counted at the next scrape
                continue
            queues = {row["name"]: row["queue"] for row in d.get("plan") or []}
            for name, st in d.get("steps", {}).items():
                if st.get("state") == "ready" and name in queues:
                    ready[queues[name]] = ready.get(queues[name], 0) + 1
        self._jobs = (time.monotonic(), states, ready)
        return states, ready

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        from advrec.pipeline.workers import live_workers, slots, starts

        s = self.settings
        try:
            lengths = queue_lengths(s)
            g = GaugeMetricFamily("advrec_queue_messages", "Messages waiting in Redis, per queue", labels=["queue"])
            for q, n in lengths.items():
                g.add_metric([q], n)
            yield g
            workers = live_workers(s)
            g = GaugeMetricFamily("advrec_queue_consumers", "Live consumer slots (summed worker concurrency) per "
                                  "queue; 0: no live worker consumes it", labels=["queue"])
            for q, n in slots(workers).items():
                g.add_metric([q], n)
            yield g
            hosts: dict[str, int] = {}
            for w in workers:
                hosts[w.get("host", "?")] = hosts.get(w.get("host", "?"), 0) + 1
            g = GaugeMetricFamily("advrec_workers_live", "Live workers per host", labels=["host"])
            for h, n in sorted(hosts.items()):
                g.add_metric([h], n)
            yield g
            c = CounterMetricFamily("advrec_worker_restarts", "Starts of a worker beyond its first (since the "
                                    "stack's Redis started)", labels=["worker"])
            for w, n in sorted(starts(s).items()):
                c.add_metric([w], max(0, n - 1))
            yield c
            h = HistogramMetricFamily("advrec_step_seconds", "Compute time of finished steps",
                                      labels=["kind", "outcome"])
            for (kind, outcome), row in sorted(step_histograms(s).items()):
                h.add_metric([kind, outcome], [(_le(b), n) for b, n in row["buckets"]], row["sum"])
            yield h
        except Exception:  # noqa: BLE001 -- Redis down: /readyz says so; the job counts below still come
            pass
        states, ready = self._job_counts()
        g = GaugeMetricFamily("advrec_jobs", "Jobs by state", labels=["state"])
        for state, n in sorted(states.items()):
            g.add_metric([state], n)
        yield g
        g = GaugeMetricFamily("advrec_queue_ready_steps", "Steps ready to run, waiting for a free slot of "
                              "their queue (the fair dispatcher's backlog)", labels=["queue"])
        for q, n in sorted(ready.items()):
            g.add_metric([q], n)
        yield g


def _le(b: float) -> str:
    return "+Inf" if b == float("inf") else json.dumps(float(b))
