"""Recovery without a special worker: every worker runs :class:`RecoveryLoop` in a thread.

Each loop wakes every ``Settings.reconcile_every_s`` seconds (with jitter), marks itself alive (a
file per process, :func:`alive_file`, and the worker's entry in the stack's registry on Redis,
:mod:`advrec.pipeline.workers`: which queues it consumes, on which host), refreshes the stack's
claim on its namespace (:mod:`advrec.pipeline.claim`) and, if it wins this stack's Redis lock
(``advrec:<namespace>:reconcile-lock``, ``SET NX`` with an expiry, kept for most of a period
after the reconcile), runs :func:`advrec.pipeline.jobs.reconcile`. So one reconcile runs at a time,
about once per period for the whole stack, and recovery goes on as long as any worker of the stack
lives; no beat schedule file is needed.

Container healthchecks call ``python -m advrec.pipeline.recovery check --pid 1 --restart-after 3``:
healthy only when that process is a Celery worker, Redis answers, and its recovery loop marked itself
alive recently. Docker marks a container unhealthy but never restarts it for that (only Swarm
does), so after that many failed checks in a row the check itself stops PID 1 (SIGTERM): the
container exits and its restart policy starts it again (:func:`restart_if_failing`).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from advrec.pipeline.queue import key_prefix
from advrec_common.settings import Settings, get_settings

log = logging.getLogger(__name__)

LOCK_TTL_S = 120  # a reconcile that outlives this lets a second one start (harmless: reconcile is idempotent)


def alive_file(settings: Settings, pid: int | None = None) -> Path:
    """The file the recovery loop of process ``pid`` (default: this one) touches on every tick.

    Under the machine's temp folder, per stack namespace: one container or one machine's processes.
    """
    return Path(tempfile.gettempdir()) / f"advrec-{settings.namespace}-loops" / f"{pid or os.getpid()}.alive"


class RecoveryLoop:
    """A daemon thread that reconciles this stack periodically, one loop of the stack at a time."""

    def __init__(self, settings: Settings, every_s: float | None = None, node: str | None = None,
                 queues: list[str] | None = None, concurrency: int = 1):
        self.settings = settings
        self.every_s = every_s or settings.reconcile_every_s
        self.node, self.queues, self.concurrency = node, list(queues or []), concurrency
        self.started = time.time()
        self._registered = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="advrec-recovery", daemon=True)
        self.token = uuid.uuid4().hex
        self.runs = 0
        self.last: dict[str, Any] | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        alive_file(self.settings).unlink(missing_ok=True)
        if self.node:
            try:
                from advrec.pipeline.workers import unregister

                unregister(self.settings, self.node)
            except Exception as exc:  # Redis gone: the entry expires by itself
                log.warning("could not unregister worker %s: %s", self.node, exc)

    def register(self) -> None:
        """This worker's entry in the stack's registry (queues, host; expires unless refreshed) and the
        stack's claim on its namespace."""
        from advrec.pipeline.claim import take_for
        from advrec.pipeline.workers import register

        if self.node:
            register(self.settings, self.node, self.queues, self.concurrency, os.getpid(), self.started,
                     first=not self._registered)
            self._registered = True
        take_for(self.settings, "worker")

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        self._stop.wait(random.uniform(0, min(1.0, self.every_s)))  # workers started together do not collide
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(self.every_s * random.uniform(0.8, 1.2))

    def _touch(self) -> None:
        path = alive_file(self.settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(time.time()))

    def tick(self) -> dict[str, Any] | None:
        """Mark alive; reconcile if this loop gets the lock. Never raises (a loop must not die)."""
        try:
            self._touch()
        except OSError as exc:
            log.warning("recovery loop cannot write its alive file: %s", exc)
        try:
            self.register()
        except Exception as exc:  # Redis down, or the namespace claimed by another deployment (logged)
            log.error("recovery loop: %s: %s", type(exc).__name__, exc)
        try:
            import redis

            from advrec.pipeline.jobs import reconcile

            client = redis.Redis.from_url(self.settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
            lock = key_prefix(self.settings.namespace) + "reconcile-lock"
            try:
                if not client.set(lock, self.token, nx=True, ex=LOCK_TTL_S):
                    return None
                try:
                    self.last = reconcile(self.settings)
                    self.runs += 1
                    if self.last.get("requeued"):
                        log.warning("recovery: %s", self.last)
                    return self.last
                finally:  # keep the lock for most of a period: one reconcile per period for the whole stack
                    if client.get(lock) == self.token.encode():
                        client.pexpire(lock, max(1, int(self.every_s * 800)))
            finally:
                client.close()
        except Exception as exc:  # Redis down, a broken record...: try again next tick
            log.warning("recovery loop: %s: %s", type(exc).__name__, exc)
            return None


def check_worker(settings: Settings, pid: int, max_age_s: float) -> list[str]:
    """Why process ``pid`` is not a healthy worker of this stack (empty list: healthy)."""
    problems = []
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"celery" not in cmdline:
            problems.append(f"process {pid} is not a celery worker")
    except OSError:
        problems.append(f"no process {pid}")
    try:
        import redis

        redis.Redis.from_url(settings.redis_url, socket_timeout=3, socket_connect_timeout=3).ping()
    except Exception as exc:
        problems.append(f"redis does not answer: {type(exc).__name__}")
    path = alive_file(settings, pid)
    try:
        age = time.time() - path.stat().st_mtime
        if age > max_age_s:
            problems.append(f"the recovery loop last ran {age:.0f} s ago (limit {max_age_s:.0f} s)")
    except OSError:
        problems.append("the recovery loop has not run yet")
    return problems


def restart_if_failing(pid: int, healthy: bool, after: int, key: str = "worker") -> bool:
    """Count consecutive failed checks of process ``pid`` (a file in the temp folder); at ``after`` of
    them send it SIGTERM (its container exits and is restarted by its restart policy). True if it did."""
    import signal

    path = Path(tempfile.gettempdir()) / f"advrec-health-{key}-{pid}.failures"
    if healthy:
        path.unlink(missing_ok=True)
        return False
    try:
        failures = int(path.read_text()) + 1
    except (OSError, ValueError):
        failures = 1
    path.write_text(str(failures))
    if after <= 0 or failures < after:
        return False
    path.unlink(missing_ok=True)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m advrec.pipeline.recovery",
                                description="healthcheck of a worker: celery, Redis, and its recovery loop")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="exit 0 if process PID is a healthy worker of this stack")
    c.add_argument("--pid", type=int, default=1)
    c.add_argument("--max-age", type=float, default=None,
                   help="seconds since the loop's last tick (default: 3 x ADVREC_RECONCILE_EVERY_S + 10)")
    c.add_argument("--restart-after", type=int, default=0,
                   help="after this many failed checks in a row, stop PID (SIGTERM) so that its container's restart "
                        "policy starts it again (0: never)")
    args = p.parse_args(argv)
    settings = get_settings()
    max_age = args.max_age if args.max_age is not None else 3 * settings.reconcile_every_s + 10
    problems = check_worker(settings, args.pid, max_age)
    if restart_if_failing(args.pid, not problems, args.restart_after):
        problems.append(f"stopped process {args.pid} after {args.restart_after} failed checks in a row (restarted "
                        "by its restart policy)")
    print("; ".join(problems) or "healthy")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
