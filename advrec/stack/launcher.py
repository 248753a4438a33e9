"""Start and stop the whole stack locally: Redis (if none answers), the three services, the
gateway (uvicorn) and one Celery worker per queue, each a detached process with a pid file and
a log in ``<home>/stack/``.

The same processes as docker-compose.yml, without containers. Workers use ``--pool=solo`` (one
task at a time, no fork: CUDA-safe and right for a 2-core machine); the ``orchestrate`` worker
also runs the embedded beat (``-B``) that calls the reconciler periodically.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from advrec.pipeline.queue import QUEUES
from advrec_common.errors import InvalidInput

SERVICE_PORTS: dict[str, int] = {"extractor": 8001, "attacker": 8002, "recommender": 8003}


@dataclass
class StackConfig:
    """What to start. ``worker_queues``: one worker per tuple, consuming those queues."""

    home: Path
    port: int = 8000
    host: str = "127.0.0.1"
    redis_url: str = "redis://127.0.0.1:6379/0"
    services: bool = True
    service_ports: dict[str, int] = field(default_factory=lambda: dict(SERVICE_PORTS))
    worker_queues: tuple[tuple[str, ...], ...] = tuple((q,) for q in QUEUES)
    api_key_hashes: list[str] | None = None
    device: str = "auto"
    extra_env: dict[str, str] = field(default_factory=dict)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited child not yet reaped) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


class Stack:
    """Processes of one stack home. Usable from Python (tests) and the CLI."""

    def __init__(self, config: StackConfig):
        self.config = config
        self.home = Path(config.home).resolve()
        self.dir = self.home / "stack"
        self._procs: dict[str, subprocess.Popen] = {}

    # -- environment ---------------------------------------------------------------------------
    def api_key_hashes(self) -> list[str]:
        """Configured hashes, else the hash of ``<home>/stack/api-key`` (generated on first use)."""
        if self.config.api_key_hashes is not None:
            return list(self.config.api_key_hashes)
        if os.environ.get("ADVREC_API_KEY_HASHES"):
            return list(json.loads(os.environ["ADVREC_API_KEY_HASHES"]))
        from advrec_common.apikeys import hash_key

        return [hash_key(self.local_key())]

    def local_key(self) -> str:
        """The generated key of this stack home (``<home>/stack/api-key``, mode 0600)."""
        path = self.dir / "api-key"
        if not path.is_file():
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(24))
        return path.read_text().strip()

    def env(self) -> dict[str, str]:
        c = self.config
        env = {**os.environ, **c.extra_env}
        env.update({
            "ADVREC_HOME": str(self.home),
            "ADVREC_REDIS_URL": c.redis_url,
            "ADVREC_DEVICE": c.device,
            "ADVREC_API_KEY_HASHES": json.dumps(self.api_key_hashes()),
            "PYTHONUNBUFFERED": "1",
        })
        for svc, port in c.service_ports.items():
            env[f"ADVREC_{svc.upper()}_URL"] = f"http://{c.host}:{port}"
        return env

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.config.port}"

    # -- processes -----------------------------------------------------------------------------
    def _pidfile(self, name: str) -> Path:
        return self.dir / f"{name}.pid"

    def start_process(self, name: str, argv: list[str]) -> int:
        """Start ``argv`` detached (own session), logging to ``<name>.log``; returns its pid."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if self._pidfile(name).is_file() and _alive(int(self._pidfile(name).read_text())):
            raise InvalidInput(f"{name} is already running (pid {self._pidfile(name).read_text().strip()})")
        with open(self.dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self.env(), cwd=self.home, start_new_session=True)
        self._procs[name] = proc
        self._pidfile(name).write_text(str(proc.pid))
        return proc.pid

    def start_worker(self, queues: tuple[str, ...] | list[str], name: str | None = None) -> str:
        """One Celery worker consuming ``queues`` (solo pool); returns its process name."""
        unknown = set(queues) - set(QUEUES)
        if unknown:
            raise InvalidInput(f"unknown queues {sorted(unknown)}; known: {list(QUEUES)}")
        name = name or "worker-" + "-".join(queues)
        argv = [sys.executable, "-m", "celery", "-A", "advrec.pipeline.queue", "worker", "-Q", ",".join(queues),
                "--pool=solo", "-n", f"{name}-{uuid.uuid4().hex[:6]}@%h", "--loglevel=INFO", "-E"]
        self.start_process(name, argv)
        return name

    def ensure_redis(self, timeout: float = 10.0) -> bool:
        """Ping Redis; start a local non-persistent one if none answers. Returns True if started."""
        import redis

        def ping() -> bool:
            try:
                return bool(redis.Redis.from_url(self.config.redis_url, socket_timeout=1).ping())
            except redis.RedisError:
                return False

        if ping():
            return False
        u = urlparse(self.config.redis_url)
        if u.hostname not in ("127.0.0.1", "localhost") or not shutil.which("redis-server"):
            raise InvalidInput(f"Redis at {self.config.redis_url} does not answer and cannot be started here")
        subprocess.run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", str(u.port or 6379),
                        "--save", "", "--appendonly", "no"], check=True, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not ping():
            if time.monotonic() > deadline:
                raise InvalidInput(f"started redis-server but {self.config.redis_url} does not answer")
            time.sleep(0.2)
        return True

    def up(self, timeout: float = 120.0) -> dict[str, Any]:
        """Start everything and wait until the gateway's /readyz is green; returns :meth:`status`."""
        c = self.config
        self.ensure_redis()
        self.home.mkdir(parents=True, exist_ok=True)
        uvicorn = [sys.executable, "-m", "uvicorn", "--host", c.host, "--log-level", "warning"]
        if c.services:
            for svc, port in c.service_ports.items():
                if importlib.util.find_spec(f"services.{svc}.app") is None:
                    continue
                self.start_process(svc, [*uvicorn, "--port", str(port), f"services.{svc}.app:app"])
        self.start_process("gateway", [*uvicorn, "--port", str(c.port), "--factory", "gateway.app:create_app"])
        for queues in c.worker_queues:
            self.start_worker(queues)
        self.wait_ready(timeout)
        return self.status()

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Poll the gateway's /readyz (and each started service's /healthz) until all answer 200."""
        urls = [f"{self.url}/readyz"] + [
            f"http://{self.config.host}:{port}/healthz" for svc, port in self.config.service_ports.items()
            if self._pidfile(svc).is_file()]
        deadline = time.monotonic() + timeout
        for url in urls:
            while True:
                try:
                    if httpx.get(url, timeout=2.0).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                dead = [n for n, s in self.status().items() if not s["alive"]]
                if dead:
                    raise InvalidInput(f"stack process(es) exited: {dead}; see logs in {self.dir}")
                if time.monotonic() > deadline:
                    raise InvalidInput(f"{url} not ready after {timeout} s; see logs in {self.dir}")
                time.sleep(0.3)

    def status(self) -> dict[str, dict[str, Any]]:
        """``{name: {pid, alive, log}}`` for every process with a pid file."""
        out = {}
        for pidfile in sorted(self.dir.glob("*.pid")) if self.dir.is_dir() else []:
            name = pidfile.stem
            proc = self._procs.get(name)
            pid = int(pidfile.read_text())
            alive = proc.poll() is None if proc is not None and proc.pid == pid else _alive(pid)
            out[name] = {"pid": pid, "alive": alive, "log": str(self.dir / f"{name}.log")}
        return out

    @staticmethod
    def reconcile_now(settings: Any) -> dict[str, int]:
        """Re-drive every unfinished job of a stack home now (what the periodic reconciler does)."""
        from advrec.pipeline.jobs import reconcile

        return reconcile(settings)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to process ``name`` (tests kill workers with SIGKILL) and forget it."""
        pid = int(self._pidfile(name).read_text())
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        proc = self._procs.pop(name, None)
        if proc is not None:
            proc.wait(timeout=30)
        self._pidfile(name).unlink(missing_ok=True)

    def down(self, timeout: float = 20.0) -> list[str]:
        """SIGTERM every process (warm shutdown), SIGKILL what is left after ``timeout``; returns names."""
        st = self.status()
        for info in st.values():
            if info["alive"]:
                try:
                    os.killpg(info["pid"], signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for name, info in st.items():
            proc = self._procs.get(name)
            while (proc.poll() is None) if proc is not None else _alive(info["pid"]):
                if time.monotonic() > deadline:
                    try:
                        os.killpg(info["pid"], signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    if proc is not None:
                        proc.wait(timeout=10)
                    break
                time.sleep(0.1)
            self._pidfile(name).unlink(missing_ok=True)
        self._procs.clear()
        return list(st)
