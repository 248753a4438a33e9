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
            i = test.index("--restart-after")  # restarting is tested on its own (below): here it would stop them
            del test[i:i + 2]
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


SETTINGS_COMPOSE_SETS = {"home", "redis_url", "extractor_url", "attacker_url", "recommender_url", "internal_token",
                         "stack_id", "log_format"}


def test_every_setting_reaches_the_containers_and_an_empty_one_is_its_default():
    """Every Settings field is forwarded to every advrec container (quotas and key quotas included), an unset one
    arrives empty and means the default, and a set one arrives as given."""
    from advrec_common.settings import Settings

    for name, svc in COMPOSE["services"].items():
        if name in ("redis",):
            continue
        env = service_env = svc.get("environment") or {}
        missing = [f for f in Settings.model_fields if f"ADVREC_{f.upper()}" not in service_env]
        assert missing == [], f"{name} does not forward {missing}"
    given = {"ADVREC_INTERNAL_TOKEN": "t" * 32, "ADVREC_KEY_QUOTAS": '{"' + "a" * 64 + '": {"concurrent_jobs": 9}}',
             "ADVREC_QUOTA_JOB_WORK_HOURS": "7.5", "ADVREC_QUOTA_CATALOG_ITEMS": "1234"}
    env = compose_env(COMPOSE["services"]["gateway"], given)
    assert env["ADVREC_QUOTA_PLAN_STEPS"] == "" and env["ADVREC_STACK_ID"] == "auto"
    old = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("ADVREC_")}
    try:
        os.environ.update(env)
        s = Settings()
    finally:
        for k in env:
            os.environ.pop(k, None)
        os.environ.update(old)
    assert s.quota_job_work_hours == 7.5 and s.quota_catalog_items == 1234
    assert s.quotas(None).plan_steps == Settings.model_fields["quota_plan_steps"].default
    assert s.key_quotas["a" * 64].concurrent_jobs == 9
    assert s.stack_id == "auto" and s.log_format == "json"


def test_stack_ids_auto_differ_per_deployment_and_agree_within_one(tmp_path):
    from advrec_common.settings import Settings

    a1, a2 = Settings(home=tmp_path / "a", stack_id="auto"), Settings(home=tmp_path / "a", stack_id="auto")
    b = Settings(home=tmp_path / "b", stack_id="auto")
    assert a1.namespace == a2.namespace != b.namespace


def test_a_cpu_only_host_starts_compose_as_shipped_and_the_gpu_file_adds_the_reservations():
    reserving = [n for n, svc in COMPOSE["services"].items() if "deploy" in svc or "devices" in str(svc)]
    assert reserving == []
    gpu = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())
    assert set(gpu["services"]) == {"extractor", "attacker", "worker-extract", "worker-attack"}
    assert set(gpu["services"]) <= set(COMPOSE["services"])
    for svc in gpu["services"].values():
        assert svc["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_the_image_pins_the_torch_that_bootstrap_installs():
    bootstrap = (ROOT / "scripts" / "bootstrap").read_text()
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    for pkg, arg in (("torch", "TORCH_VERSION"), ("torchvision", "TORCHVISION_VERSION")):
        pinned = re.search(rf'"{pkg}==([0-9.]+)"', bootstrap).group(1)
        assert f"ARG {arg}={pinned}" in dockerfile
        assert f'"{pkg}==${{{arg}}}"' in dockerfile


def test_every_container_is_restarted_when_unhealthy():
    """Each advrec container's healthcheck stops its PID 1 after 3 failed liveness checks (restart policy)."""
    for name, svc in COMPOSE["services"].items():
        if name in ("redis", "flower"):
            continue
        test = svc["healthcheck"]["test"]
        assert test[test.index("--restart-after") + 1] == "3", name
        assert svc.get("restart") == "unless-stopped", name


def test_the_http_healthcheck_stops_its_process_after_n_failed_checks(tmp_path):
    """Run as compose runs it: against a URL that does not answer, the first two checks fail, the third stops
    the process (SIGTERM), as Docker's restart policy then restarts its container."""
    from tests.redis_server import free_port

    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        argv = [sys.executable, "-m", "advrec.stack.healthcheck", "--url", f"http://127.0.0.1:{free_port()}/healthz",
                "--pid", str(victim.pid), "--restart-after", "3"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for _ in range(2):
            r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30)
            assert r.returncode == 1 and victim.poll() is None
        r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30)
        assert r.returncode == 1 and "stopped process" in r.stdout
        assert victim.wait(timeout=10) == -signal.SIGTERM
    finally:
        if victim.poll() is None:
            victim.kill()
