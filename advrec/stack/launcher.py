"""Start and stop the whole stack locally: Redis (if none answers), the three services, the gateway
(uvicorn) and one Celery worker per queue, kept running by a supervisor process
(:mod:`advrec.stack.supervisor`); pid files, ``state.json`` and logs live in ``<home>/stack/``.

The same processes as docker-compose.yml, without containers. Workers use ``--pool=solo`` (one
task at a time, no fork: CUDA-safe and right for a 2-core machine); every worker runs the recovery
loop, so none is special.

Isolation: the stack's namespace on Redis is :attr:`Settings.namespace` (a hash of the resolved
home, or ``ADVREC_STACK_ID``); every Celery key carries it. ``up`` claims the namespace atomically
(:mod:`advrec.pipeline.claim`) before it starts anything, and is refused, with the holder named,
when another deployment (another home's instance) holds it: of two stacks started at the same
moment with one namespace, one comes up.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import signal
import socket
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
from advrec.stack.supervisor import PLAN_FILE, REQUESTS_DIR, STATE_FILE, claim_key
from advrec_common.errors import Conflict, InvalidInput, NotFound
from advrec_common.settings import Settings

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
    stack_id: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    max_restarts: int = 5  # per process within restart_window_s; then it stays down until `stack restart`
    restart_window_s: float = 300.0
    stop_timeout_s: float = 20.0


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


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _secret_file(path: Path) -> str:
    """The content of ``path``, generated (24 random bytes, mode 0600) on first use."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_text().strip()
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(24))
    return path.read_text().strip()


class Stack:
    """Processes of one stack home. Usable from Python (tests) and the CLI."""

    def __init__(self, config: StackConfig):
        self.config = config
        self.home = Path(config.home).expanduser().resolve()
        self.dir = self.home / "stack"
        self._supervisor: subprocess.Popen | None = None

    # -- environment ---------------------------------------------------------------------------
    @property
    def settings(self) -> Settings:
        """The settings every process of this stack gets (home, Redis, namespace)."""
        return Settings(home=self.home, redis_url=self.config.redis_url, stack_id=self.config.stack_id,
                        device=self.config.device)

    @property
    def namespace(self) -> str:
        return self.settings.namespace

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
        return _secret_file(self.dir / "api-key")

    def internal_token(self) -> str:
        """The services' shared secret: ``ADVREC_INTERNAL_TOKEN``, else ``<home>/stack/internal-token``."""
        return os.environ.get("ADVREC_INTERNAL_TOKEN") or _secret_file(self.dir / "internal-token")

    def env(self) -> dict[str, str]:
        c = self.config
        env = {**os.environ, **c.extra_env}
        env.update({
            "ADVREC_HOME": str(self.home),
            "ADVREC_REDIS_URL": c.redis_url,
            "ADVREC_DEVICE": c.device,
            "ADVREC_API_KEY_HASHES": json.dumps(self.api_key_hashes()),
            "ADVREC_INTERNAL_TOKEN": self.internal_token(),
            "PYTHONUNBUFFERED": "1",
        })
        env.setdefault("ADVREC_LOG_FORMAT", "json")  # one JSON object per log line, with request/job/step ids
        if c.stack_id:
            env["ADVREC_STACK_ID"] = c.stack_id
        else:  # the namespace is the home's hash, as this launcher computes it
            env.pop("ADVREC_STACK_ID", None)
        if env.get("PYTHONPATH"):  # children run in the home: relative entries must stay what they meant
            env["PYTHONPATH"] = os.pathsep.join(str(Path(p).resolve()) for p in env["PYTHONPATH"].split(os.pathsep) if p)
        for svc, port in c.service_ports.items():
            env[f"ADVREC_{svc.upper()}_URL"] = f"http://{c.host}:{port}"
        return env

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.config.port}"

    # -- what runs -------------------------------------------------------------------------------
    @staticmethod
    def worker_argv(queues: tuple[str, ...] | list[str], name: str) -> list[str]:
        """The command of one Celery worker consuming ``queues`` (solo pool)."""
        unknown = set(queues) - set(QUEUES)
        if unknown:
            raise InvalidInput(f"unknown queues {sorted(unknown)}; known: {list(QUEUES)}")
        return [sys.executable, "-m", "celery", "-A", "advrec.pipeline.queue", "worker", "-Q", ",".join(queues),
                "--pool=solo", "-n", f"{name}-{uuid.uuid4().hex[:6]}@%h", "--loglevel=INFO", "-E"]

    def processes(self) -> list[dict[str, Any]]:
        """``[{name, argv}]`` of every process the supervisor runs (Redis apart), in start order."""
        c = self.config
        uvicorn = [sys.executable, "-m", "uvicorn", "--host", c.host, "--log-level", "warning"]
        out = []
        if c.services:
            for svc, port in c.service_ports.items():
                if importlib.util.find_spec(f"services.{svc}.app") is not None:
                    out.append({"name": svc, "argv": [*uvicorn, "--port", str(port), f"services.{svc}.app:app"]})
        out.append({"name": "gateway",
                    "argv": [*uvicorn, "--port", str(c.port), "--factory", "gateway.app:create_app"]})
        for queues in c.worker_queues:
            name = "worker-" + "-".join(queues)
            out.append({"name": name, "argv": self.worker_argv(queues, name)})
        return out

    # -- Redis -------------------------------------------------------------------------------------
    def _redis(self):
        import redis

        return redis.Redis.from_url(self.config.redis_url, socket_timeout=2, socket_connect_timeout=2)

    def redis_answers(self) -> bool:
        import redis

        try:
            return bool(self._redis().ping())
        except redis.RedisError:
            return False

    def redis_argv(self) -> list[str]:
        """A local, non-persistent redis-server for this stack (when none answers at ``redis_url``)."""
        import shutil

        u = urlparse(self.config.redis_url)
        exe = shutil.which("redis-server")
        if u.hostname not in ("127.0.0.1", "localhost") or exe is None:
            raise InvalidInput(f"Redis at {self.config.redis_url} does not answer and cannot be started here")
        return [exe, "--bind", "127.0.0.1", "--port", str(u.port or 6379), "--save", "", "--appendonly", "no",
                "--dir", str(self.dir)]

    def claims(self) -> dict[str, dict[str, Any]]:
        """Live stacks on this Redis database: ``{namespace: {home, host, pid, since}}``."""
        out = {}
        client = self._redis()
        for key in client.scan_iter(match=claim_key("*"), count=200):
            raw = client.get(key)
            if raw:
                try:
                    out[key.decode().rsplit(":", 1)[-1]] = json.loads(raw)
                except ValueError:
                    continue
        return out

    def check_claim(self) -> None:
        """Claim this stack's namespace on its Redis (atomic); Conflict naming the holder when another
        deployment (another home's instance) holds it."""
        from advrec.pipeline.claim import take

        take(self.config.redis_url, self.namespace, self.home, "launcher")

    # -- lifecycle ---------------------------------------------------------------------------------
    def _pidfile(self, name: str) -> Path:
        return self.dir / f"{name}.pid"

    def supervisor_pid(self) -> int | None:
        """The pid of this home's live supervisor, else None."""
        try:
            pid = int(self._pidfile("supervisor").read_text())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def up(self, timeout: float = 120.0, require_workers: bool = True) -> dict[str, Any]:
        """Start the supervisor (which starts everything) and wait until the gateway's /readyz is green
        (``require_workers=False``: but for its workers check, for a stack whose other workers run elsewhere).

        Refuses when this home's stack is already running, when processes of a previous run are
        still alive, or when another live stack holds this namespace on the Redis database.
        Returns :meth:`status`.
        """
        pid = self.supervisor_pid()
        if pid is not None:
            raise Conflict(f"the stack of {self.home} is already running (supervisor pid {pid}); "
                           f"`advrec stack restart NAME` restarts one process, `advrec stack down` stops it")
        leftovers = [n for n, info in self._pidfile_status().items() if info["alive"]]
        if leftovers:
            raise Conflict(f"processes of an earlier run of {self.home} are still alive: {leftovers}; "
                           f"run `advrec stack down` first")
        busy = self.busy_ports()
        if busy:
            raise Conflict(f"port(s) already in use on {self.config.host}: {', '.join(busy)}; another program (or "
                           "another stack) holds them: `advrec stack up --port N` moves the gateway to N and the "
                           "services to N+1..N+3")
        self.dir.mkdir(parents=True, exist_ok=True)
        redis_plan = None
        if self.redis_answers():
            self.check_claim()
        else:
            redis_plan = {"argv": self.redis_argv()}
        for stale in [*self.dir.glob("*.pid"), self.dir / STATE_FILE]:
            stale.unlink(missing_ok=True)
        c = self.config
        plan = {"home": str(self.home), "namespace": self.namespace, "redis_url": c.redis_url, "cwd": str(self.home),
                "since": time.time(), "redis": redis_plan, "processes": self.processes(),
                "max_restarts": c.max_restarts, "window_s": c.restart_window_s, "stop_timeout_s": c.stop_timeout_s}
        (self.dir / PLAN_FILE).write_text(json.dumps(plan, indent=1))
        with open(self.dir / "supervisor.log", "ab") as log:
            self._supervisor = subprocess.Popen(
                [sys.executable, "-m", "advrec.stack.supervisor", str(self.dir)], stdout=log, stderr=log,
                stdin=subprocess.DEVNULL, env=self.env(), cwd=self.home, start_new_session=True)
        self._pidfile("supervisor").write_text(str(self._supervisor.pid))
        try:
            self.wait_ready(timeout, require_workers)
        except Exception:
            self.down(timeout=10)
            raise
        return self.status()

    def busy_ports(self) -> list[str]:
        """``"8000 (gateway)"`` for every port this stack would listen on that something else holds now."""
        c = self.config
        names = {p["name"] for p in self.processes()}
        wanted = {"gateway": c.port, **{svc: port for svc, port in c.service_ports.items() if svc in names}}
        busy = []
        for name, port in wanted.items():
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
                try:
                    sock.bind((c.host, port))
                except OSError:
                    busy.append(f"{port} ({name})")
        return busy

    def wait_ready(self, timeout: float = 120.0, require_workers: bool = True) -> None:
        """Poll the gateway's /readyz (and each service's /healthz) until all answer 200 (with
        ``require_workers=False`` a /readyz whose only failing check is ``workers`` will do)."""
        names = {p["name"] for p in self.processes()}
        urls = [f"{self.url}/readyz"] + [
            f"http://{self.config.host}:{port}/healthz" for svc, port in self.config.service_ports.items()
            if svc in names]
        deadline = time.monotonic() + timeout
        for url in urls:
            while True:
                try:
                    r = httpx.get(url, timeout=2.0)
                    if r.status_code == 200:
                        break
                    if not require_workers and url.endswith("/readyz") and r.status_code == 503 and \
                            {k for k, v in r.json().get("checks", {}).items() if v != "ok"} <= {"workers"}:
                        break
                except (httpx.HTTPError, ValueError):
                    pass
                if self.supervisor_pid() is None:
                    raise InvalidInput(f"the stack's supervisor exited; see {self.dir / 'supervisor.log'}")
                failed = [n for n, s in self.status().items() if s.get("state") == "failed"]
                if failed:
                    raise InvalidInput(f"stack process(es) keep exiting: {failed}; see logs in {self.dir}")
                if time.monotonic() > deadline:
                    raise InvalidInput(f"{url} not ready after {timeout} s; see logs in {self.dir}")
                time.sleep(0.3)

    def _pidfile_status(self) -> dict[str, dict[str, Any]]:
        out = {}
        for pidfile in sorted(self.dir.glob("*.pid")) if self.dir.is_dir() else []:
            try:
                pid = int(pidfile.read_text())
            except ValueError:
                continue
            out[pidfile.stem] = {"pid": pid, "alive": _alive(pid), "log": str(self.dir / f"{pidfile.stem}.log")}
        return out

    def status(self) -> dict[str, dict[str, Any]]:
        """``{name: {pid, alive, state, restarts, log}}`` of the supervisor and every process it runs."""
        out = self._pidfile_status()
        try:
            state = json.loads((self.dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            state = {}
        for name, info in state.items():
            if name == "supervisor":
                continue
            row = out.setdefault(name, {"pid": info.get("pid"), "log": str(self.dir / f"{name}.log")})
            row.update(state=info.get("state"), restarts=info.get("restarts", 0), last_exit=info.get("last_exit"))
            if info.get("pid"):
                row["pid"] = info["pid"]
            row["alive"] = bool(row.get("pid")) and _alive(int(row["pid"]))
        if "supervisor" in out:
            out["supervisor"]["state"] = "running" if out["supervisor"]["alive"] else "dead"
        return out

    @staticmethod
    def reconcile_now(settings: Any) -> dict[str, int]:
        """Re-drive every unfinished job of a stack home now (what the recovery loops do)."""
        from advrec.pipeline.jobs import reconcile

        return reconcile(settings)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` to process ``name``'s group (tests and the fault script kill workers); returns its pid.

        The supervisor restarts it (with backoff)."""
        info = self.status().get(name)
        if info is None or not info.get("pid"):
            raise NotFound(f"no stack process {name!r}; known: {sorted(self.status())}")
        _killpg(int(info["pid"]), sig)
        return int(info["pid"])

    def restart(self, name: str, timeout: float = 60.0) -> int:
        """Ask the supervisor to restart ``name`` now (no backoff; also one it gave up on); returns the new pid."""
        if self.supervisor_pid() is None:
            raise Conflict(f"the stack of {self.home} is not running; `advrec stack up` starts it")
        known = [n for n in self.status() if n != "supervisor"]
        if name not in known:
            raise NotFound(f"no stack process {name!r}; known: {sorted(known)}")
        old = self.status()[name].get("pid")
        (self.dir / REQUESTS_DIR).mkdir(exist_ok=True)
        (self.dir / REQUESTS_DIR / f"restart-{name}").write_text(str(time.time()))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.status().get(name, {})
            if info.get("pid") and info["pid"] != old and info.get("alive"):
                return int(info["pid"])
            time.sleep(0.1)
        raise InvalidInput(f"{name} was not restarted within {timeout} s; see {self.dir / 'supervisor.log'}")

    def down(self, timeout: float | None = None) -> list[str]:
        """Stop everything ``up`` started (Redis included, when it started one); returns the names.

        SIGTERM to the supervisor, which stops its processes warm and then hard; if the
        supervisor is gone, every process with a pid file is stopped here instead.
        """
        timeout = self.config.stop_timeout_s if timeout is None else timeout
        names = sorted(n for n in self.status() if n != "supervisor")
        pid = self.supervisor_pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout + 20
            while _alive(pid) and time.monotonic() < deadline:
                if self._supervisor is not None:
                    self._supervisor.poll()
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if self._supervisor is not None:
            try:
                self._supervisor.wait(timeout=5)
            except Exception:
                pass
        left = {n: i for n, i in self._pidfile_status().items() if i["alive"]}
        for info in left.values():
            _killpg(info["pid"], signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(_alive(i["pid"]) for i in left.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        for info in left.values():
            _killpg(info["pid"], signal.SIGKILL)
        for stale in [*self.dir.glob("*.pid"), self.dir / STATE_FILE] if self.dir.is_dir() else []:
            stale.unlink(missing_ok=True)
        return names
