"""docker-compose.yml, read as data and run without Docker: its exact worker command lines (with this
machine's python) consume their queues in the stack's namespace, every worker's recovery loop runs,
and the compose healthcheck passes while the loop ticks and fails once it stops."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
import yaml

from advrec.pipeline.queue import RUN_STEP, make_celery
from advrec_common.settings import Settings

pytestmark = [pytest.mark.stack, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
WORKERS = {name: svc for name, svc in COMPOSE["services"].items()
           if svc.get("command", [None])[0] == "celery" and "worker" in svc["command"]}


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` against ``env``."""
    def one(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise KeyError(f"compose needs {name}: {arg}")
        return arg or ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value)


def compose_env(service: dict, env: dict[str, str]) -> dict[str, str]:
    return {k: interpolate(str(v), env) for k, v in (service.get("environment") or {}).items()}


def test_compose_names_no_folder_it_does_not_create_and_runs_no_beat():
    text = (ROOT / "docker-compose.yml").read_text()
    named = set(re.findall(r"(/data/[\w./-]+)", text))
    assert named == set(), f"compose names folders under the volume that nothing creates: {named}"
    for svc in WORKERS.values():
        assert "-B" not in svc["command"] and "beat" not in svc["command"]  # recovery is in every worker
        assert svc["healthcheck"]["test"][1:4] == ["python", "-m", "advrec.pipeline.recovery"]
    assert set(WORKERS) == {"worker-extract", "worker-attack", "worker-recommend", "worker-orchestrate"}
    flower = COMPOSE["services"]["flower"]
    assert flower["profiles"] == ["monitor"] and all(p.startswith("127.0.0.1:") for p in flower["ports"])
    assert any(a.startswith("--basic-auth=") for a in flower["command"])
    published = {n: s["ports"] for n, s in COMPOSE["services"].items() if s.get("ports")}
    assert set(published) == {"gateway", "flower"}  # the services are internal
    with pytest.raises(KeyError, match="ADVREC_INTERNAL_TOKEN"):
        compose_env(WORKERS["worker-extract"], {})


def test_compose_worker_commands_consume_their_queues_and_their_healthchecks_follow_the_loop(tmp_path, redis_url):
    env_in = {"ADVREC_INTERNAL_TOKEN": "t" * 32, "ADVREC_STACK_ID": f"compose-{uuid.uuid4().hex[:8]}",
              "ADVREC_RECONCILE_EVERY_S": "1"}
    procs: dict[str, subprocess.Popen] = {}
    logs: dict[str, Path] = {}
    try:
        for name, svc in WORKERS.items():
            env = {**os.environ, **compose_env(svc, env_in), "ADVREC_HOME": str(tmp_path / "data"),
                   "ADVREC_REDIS_URL": redis_url, "PYTHONPATH": str(ROOT)}
            argv = [sys.executable, "-m", *svc["command"]]  # `celery ...` exactly as compose runs it
            logs[name] = tmp_path / f"{name}.log"
            with open(logs[name], "wb") as out:
                procs[name] = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                               cwd=tmp_path, start_new_session=True)
        settings = Settings(home=tmp_path / "data", redis_url=redis_url, stack_id=env_in["ADVREC_STACK_ID"])
        check_env = {**os.environ, "ADVREC_HOME": str(settings.home), "ADVREC_REDIS_URL": redis_url,
                     "ADVREC_STACK_ID": settings.stack_id, "ADVREC_RECONCILE_EVERY_S": "1", "PYTHONPATH": str(ROOT)}

        def healthcheck(name: str) -> subprocess.CompletedProcess:
            test = list(WORKERS[name]["healthcheck"]["test"][1:])
            test[0] = sys.executable
            test[test.index("--pid") + 1] = str(procs[name].pid)  # in its container the worker is PID 1
            return subprocess.run([*test, "--max-age", "4"], env=check_env, capture_output=True, text=True,
                                  timeout=30)

        deadline = time.monotonic() + 60
        pending = set(WORKERS)
        while pending and time.monotonic() < deadline:
            pending = {n for n in pending if healthcheck(n).returncode != 0}
            assert all(p.poll() is None for p in procs.values()), {n: logs[n].read_text()[-2000:] for n in procs}
            time.sleep(0.5)
        assert not pending, {n: healthcheck(n).stdout for n in pending}

        # one message per queue, in this stack's namespace: each worker takes its own
        app = make_celery(settings)
        queues = {name: svc["command"][svc["command"].index("-Q") + 1] for name, svc in WORKERS.items()}
        for name, queue in queues.items():
            app.send_task(RUN_STEP, args=[f"20990101-000000-{name}-000000", "dataset"], queue=queue)
        client = redis.Redis.from_url(redis_url)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all("no such run here" in logs[n].read_text() for n in WORKERS):
            time.sleep(0.3)
        for name in WORKERS:
            assert f"-{name}-000000 step dataset: no such run here" in logs[name].read_text(), name
        strays = [k for k in client.keys("*") if not k.startswith(b"advrec:")]
        assert strays == [], f"keys outside any stack's namespace: {strays}"
        assert not [k for k in client.keys(f"advrec:{settings.namespace}:*") if client.type(k) == b"list"
                    and client.llen(k) and not k.endswith(b".reply.celery.pidbox")]

        # a frozen worker (its loop no longer ticks) fails its healthcheck; it passes again once it runs
        os.kill(procs["worker-extract"].pid, signal.SIGSTOP)
        try:
            time.sleep(5)
            bad = healthcheck("worker-extract")
            assert bad.returncode == 1 and "recovery loop last ran" in bad.stdout
        finally:
            os.kill(procs["worker-extract"].pid, signal.SIGCONT)
        deadline = time.monotonic() + 10
        while healthcheck("worker-extract").returncode != 0:
            assert time.monotonic() < deadline
            time.sleep(0.5)
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
