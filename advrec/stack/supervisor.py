"""The stack's supervisor: one small process that starts the stack's processes and keeps them running.

``advrec stack up`` writes ``<home>/stack/supervisor.json`` (what to run) and starts
``python -m advrec.stack.supervisor <home>/stack`` detached. The supervisor

* starts Redis first when the launcher found none (a non-persistent one it owns), then the
  services, the gateway and the workers, each in its own session with its log in ``<name>.log``;
* restarts a process that exits, after a backoff (0.5 s, doubling, at most 30 s); a process that
  exits more than ``max_restarts`` times within ``window_s`` is left stopped (state ``failed``)
  until ``advrec stack restart NAME``;
* performs restart requests (``<home>/stack/requests/restart-<name>``, written by
  ``advrec stack restart NAME``) at once, without backoff;
* refreshes this stack's claim on its Redis database, ``advrec:stack:<namespace>``
  (:mod:`advrec.pipeline.claim`: the home's instance id, home, host, pid; 30 s expiry; a
  compare-and-set, so a claim another deployment took meanwhile is never overwritten), so another
  ``stack up`` with the same namespace is refused and told which;
* writes ``state.json`` (pid, state, restarts, last exit of every process) and a pid file each;
* on SIGTERM stops everything it started: SIGTERM to every process group (warm shutdown), SIGKILL
  after ``stop_timeout_s``, Redis last, and removes its claim.

It imports the standard library, the Redis client and the claim module: it stays small and starts fast.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("advrec.stack.supervisor")

PLAN_FILE = "supervisor.json"
STATE_FILE = "state.json"
REQUESTS_DIR = "requests"
CLAIM_TTL_S = 30
CLAIM_EVERY_S = 5.0
POLL_S = 0.2
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0


def claim_key(namespace: str) -> str:
    """The Redis key a live stack holds: ``advrec:stack:<namespace>``."""
    from advrec.pipeline.claim import claim_key as key

    return key(namespace)


@dataclass
class Child:
    """One supervised process."""

    name: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    state: str = "starting"  # running | backoff | failed | stopped
    exits: list[float] = field(default_factory=list)  # times of unrequested exits
    restarts: int = 0
    next_start: float = 0.0
    last_exit: int | None = None

    def info(self) -> dict[str, Any]:
        return {"pid": self.proc.pid if self.proc else None, "state": self.state, "restarts": self.restarts,
                "last_exit": self.last_exit, "argv": self.argv}


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Supervisor:
    def __init__(self, stack_dir: Path):
        self.dir = stack_dir
        plan = json.loads((stack_dir / PLAN_FILE).read_text())
        self.plan = plan
        self.max_restarts = int(plan.get("max_restarts", 5))
        self.window_s = float(plan.get("window_s", 300))
        self.stop_timeout_s = float(plan.get("stop_timeout_s", 20))
        self.redis = Child("redis", plan["redis"]["argv"]) if plan.get("redis") else None
        self.children = [Child(p["name"], p["argv"]) for p in plan["processes"]]
        self.stopping = False
        self._last_claim = 0.0
        self._last_state = ""
        self.claim_lost: Exception | None = None

    # -- processes -------------------------------------------------------------------------------
    def _all(self) -> list[Child]:
        return ([self.redis] if self.redis else []) + self.children

    def start(self, child: Child) -> None:
        with open(self.dir / f"{child.name}.log", "ab") as out:
            child.proc = subprocess.Popen(child.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          cwd=self.plan.get("cwd"), start_new_session=True)
        child.state = "running"
        (self.dir / f"{child.name}.pid").write_text(str(child.proc.pid))
        log.info("started %s (pid %d)", child.name, child.proc.pid)

    def stop(self, child: Child, timeout: float) -> None:
        if child.proc is None or child.proc.poll() is not None:
            return
        _killpg(child.proc.pid, signal.SIGTERM)
        try:
            child.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _killpg(child.proc.pid, signal.SIGKILL)
            child.proc.wait(timeout=10)

    def _redis_answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.plan["redis_url"], socket_timeout=1, socket_connect_timeout=1).ping())
        except redis.RedisError:
            return False

    def _wait_redis(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not self._redis_answers() and time.monotonic() < deadline and not self.stopping:
            time.sleep(0.1)

    def _reap(self, child: Child, now: float) -> None:
        """A child exited on its own: schedule its restart (backoff) or give up."""
        child.last_exit = child.proc.returncode if child.proc else None
        child.exits = [t for t in child.exits if now - t < self.window_s] + [now]
        if len(child.exits) > self.max_restarts:
            child.state = "failed"
            log.error("%s exited %d times within %.0f s (last exit %s): not restarting it; fix it, then "
                      "`advrec stack restart %s`", child.name, len(child.exits), self.window_s, child.last_exit,
                      child.name)
            return
        delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (len(child.exits) - 1))
        child.state, child.next_start = "backoff", now + delay
        log.warning("%s exited (code %s); restarting in %.1f s", child.name, child.last_exit, delay)

    def _requests(self) -> None:
        folder = self.dir / REQUESTS_DIR
        if not folder.is_dir():
            return
        for req in folder.glob("restart-*"):
            name = req.name.removeprefix("restart-")
            req.unlink(missing_ok=True)
            child = next((c for c in self._all() if c.name == name), None)
            if child is None:
                log.warning("restart request for unknown process %r", name)
                continue
            log.info("restarting %s on request", name)
            self.stop(child, self.stop_timeout_s)
            child.exits.clear()
            child.restarts += 1
            self.start(child)
            if child is self.redis:
                self._wait_redis()

    # -- the stack's claim on its Redis database ---------------------------------------------------
    def _claim(self, now: float) -> None:
        if now - self._last_claim < CLAIM_EVERY_S:
            return
        self._last_claim = now
        from advrec.pipeline.claim import take

        try:
            take(self.plan["redis_url"], self.plan["namespace"], self.plan["home"], "supervisor",
                 since=self.plan.get("since"), ttl_s=CLAIM_TTL_S)
            self.claim_lost = None
        except Exception as exc:  # Redis down: the claim expires; another deployment's claim is never taken over
            if str(exc) != str(self.claim_lost):
                log.error("cannot refresh the stack's claim on Redis: %s", exc)
            self.claim_lost = exc

    def _unclaim(self) -> None:
        from advrec.pipeline.claim import release

        try:
            release(self.plan["redis_url"], self.plan["namespace"], self.plan["home"])
        except Exception:  # Redis gone: the claim expires by itself
            pass

    def _write_state(self) -> None:
        state = {"supervisor": {"pid": os.getpid(), "state": "stopping" if self.stopping else "running"},
                 **{c.name: c.info() for c in self._all()}}
        text = json.dumps(state, indent=1)
        if text != self._last_state:
            _atomic_write(self.dir / STATE_FILE, text)
            self._last_state = text

    # -- main loop -----------------------------------------------------------------------------------
    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        if self.redis:
            self.start(self.redis)
            self._wait_redis()
        for child in self.children:
            self.start(child)
        while not self.stopping:
            now = time.monotonic()
            for child in self._all():
                if child.state == "running" and child.proc is not None and child.proc.poll() is not None:
                    self._reap(child, now)
                if child.state == "backoff" and now >= child.next_start:
                    child.restarts += 1
                    self.start(child)
                    if child is self.redis:
                        self._wait_redis()
            self._requests()
            self._claim(time.time())
            self._write_state()
            time.sleep(POLL_S)
        self.shutdown()
        return 0

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.stopping = True

    def shutdown(self) -> None:
        """Stop every child (warm first, then SIGKILL), Redis last; remove the claim and pid files."""
        self._write_state()
        running = [c for c in self.children if c.proc is not None and c.proc.poll() is None]
        for c in running:
            _killpg(c.proc.pid, signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + self.stop_timeout_s
        for c in running:
            try:
                c.proc.wait(timeout=max(0.1, deadline - time.monotonic()))  # type: ignore[union-attr]
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s: SIGKILL", c.name, self.stop_timeout_s)
                _killpg(c.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
                c.proc.wait(timeout=10)  # type: ignore[union-attr]
        self._unclaim()
        if self.redis:
            self.stop(self.redis, 10)
        for c in self._all():
            c.state = "stopped"
            (self.dir / f"{c.name}.pid").unlink(missing_ok=True)
        (self.dir / "supervisor.pid").unlink(missing_ok=True)
        (self.dir / STATE_FILE).unlink(missing_ok=True)
        log.info("stack stopped")


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m advrec.stack.supervisor <home>/stack", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s supervisor %(levelname)s %(message)s")
    return Supervisor(Path(args[0])).run()


if __name__ == "__main__":
    raise SystemExit(main())
