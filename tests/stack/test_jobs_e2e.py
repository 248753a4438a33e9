"""End to end with real processes: gateway + one Celery worker per queue + the real Redis.

(a) a job submitted through the client gives the same numbers as an in-process run;
(b) a worker killed with SIGKILL mid-step is replaced and the job completes with nothing lost;
(c) cancel stops the work.
"""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from advrec.client import AdvrecClient
from advrec_common.errors import Conflict

from .conftest import API_KEY, TINY_SPEC

pytestmark = [pytest.mark.stack, pytest.mark.timeout(300)]

TIMING = re.compile(r"(second|elapsed|duration|time|created|updated|finished|started|per_s)", re.I)


def numbers(obj: Any) -> Any:
    """results.json without timings (keys naming seconds/time/...)."""
    if isinstance(obj, dict):
        return {k: numbers(v) for k, v in obj.items() if not TIMING.search(str(k))}
    if isinstance(obj, list):
        return [numbers(v) for v in obj]
    return obj


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Paths where two JSON documents differ (readable assertion messages)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}/{k}: only in one" for k in set(a) ^ set(b)]
        for k in set(a) & set(b):
            out += differences(a[k], b[k], f"{path}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def _record(stack, job_id: str) -> dict[str, Any]:
    return json.loads((stack.home / "runs" / job_id / "record.json").read_text())


def test_a_two_stacks_on_one_redis_db_both_match_the_inprocess_run(make_stack, inprocess_results, tmp_path):
    """Two stacks (two homes) on the same Redis database: each takes only its own messages, both finish,
    and both give the in-process run's numbers."""
    stack = make_stack()
    other = make_stack("other", worker_queues=(("extract", "attack", "recommend", "orchestrate"),))
    assert stack.config.redis_url == other.config.redis_url and stack.namespace != other.namespace
    assert {stack.namespace, other.namespace} <= set(stack.claims())
    with AdvrecClient(stack.url, API_KEY) as client, AdvrecClient(other.url, API_KEY) as other_client:
        job = client.submit(TINY_SPEC)
        other_job = other_client.submit(TINY_SPEC)
        seen: list[int] = []
        work: list[float] = []
        etas: list[float | None] = []

        def track(st):
            seen.append(st["progress"]["done"])
            if st["progress"]["work"]:
                work.append(st["progress"]["work"]["fraction"])
                etas.append(st["progress"]["work"]["eta_seconds"])

        final = client.wait(job, progress=track, poll_interval=0.5, timeout=240)
        assert final["state"] == "done" and final["progress"]["done"] == final["progress"]["total"] > 5
        assert seen == sorted(seen)  # progress never goes back
        # once planned, progress is in estimated work units, and reaches exactly 1
        assert final["progress"]["work"]["fraction"] == 1.0 and final["progress"]["work"]["total"] > 0
        assert work == sorted(work)
        # the gateway's ETA: absent until a computed step has finished, never negative, 0 at the end
        assert all(e is None or e >= 0 for e in etas) and final["progress"]["work"]["eta_seconds"] == 0
        results = client.results(job)
        report = client.report(job, tmp_path / "report.html")
        assert other_client.wait(other_job, poll_interval=0.5, timeout=240)["state"] == "done"
        assert differences(numbers(other_client.results(other_job)), numbers(inprocess_results)) == []
    assert differences(numbers(results), numbers(inprocess_results)) == []
    assert "<html" in report.read_text().lower()
    # `advrec report JOB --server URL` downloads the same report
    from advrec.cli import main

    assert main(["report", job, "--server", stack.url, "--api-key", API_KEY, "-o", str(tmp_path / "cli.html")]) == 0
    assert (tmp_path / "cli.html").read_bytes() == report.read_bytes()
    workers = {s.get("worker", "").split("@")[0].rsplit("-", 1)[0] for s in _record(stack, job)["steps"].values()
               if s["state"] == "done"}
    assert {"worker-extract", "worker-attack", "worker-recommend"} <= workers  # work went to every queue
    # no step of one stack ran on the other's workers
    other_workers = {s.get("worker", "").split("@")[0].rsplit("-", 1)[0]
                     for s in _record(other, other_job)["steps"].values() if s.get("worker")}
    assert other_workers == {"worker-extract-attack-recommend-orchestrate"}


def test_b_killed_workers_are_restarted_and_lose_nothing(make_stack, inprocess_results):
    """SIGKILL the worker running a step, and the orchestrate worker: the supervisor restarts both, the
    recovery loop re-sends the step, the job completes with the same numbers."""
    stack = make_stack()
    with AdvrecClient(stack.url, API_KEY) as client:
        job = client.submit(TINY_SPEC)
        victim = step = None
        deadline = time.monotonic() + 180
        while victim is None and time.monotonic() < deadline:
            for name, st in _record(stack, job).get("steps", {}).items():
                if st["state"] == "running" and not st.get("worker", "").startswith("worker-orchestrate"):
                    victim, step = st["worker"].split("@")[0].rsplit("-", 1)[0], name
                    break
            time.sleep(0.05)
        assert victim is not None, "no step was seen running"
        old_pid = stack.kill(victim, signal.SIGKILL)
        stack.kill("worker-orchestrate", signal.SIGKILL)
        final = client.wait(job, poll_interval=0.5, timeout=240)
        assert final["state"] == "done"
        assert _record(stack, job)["steps"][step]["attempts"] >= 2  # the killed step was delivered again
        assert numbers(client.results(job)) == numbers(inprocess_results)
    status = stack.status()
    assert status[victim]["alive"] and status[victim]["pid"] != old_pid and status[victim]["restarts"] >= 1
    assert status["worker-orchestrate"]["restarts"] >= 1


LONG_TRAIN_SPEC = {**TINY_SPEC, "name": "long", "recommenders": [{"name": "vbpr", "config": {"epochs": 20000,
                                                                                            "patience": 0}}]}


def test_c_cancel_frees_the_worker_within_seconds_and_down_stops_the_redis_it_started(make_stack, tmp_path):
    """A stack that starts its own Redis; cancel a job while a long training step runs: the step stops
    within seconds (its worker is free), nothing else runs; `restart` and `down` (Redis included)."""
    from tests.redis_server import free_port

    stack = make_stack("own-redis", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert stack.status()["redis"]["alive"]
    with AdvrecClient(stack.url, API_KEY) as client:
        job = client.submit(LONG_TRAIN_SPEC)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            st = client.status(job)
            assert st["state"] not in ("done", "failed"), st.get("error")
            train = {n: s for n, s in st["steps"].items() if n.startswith("train/")}
            if any(s["state"] == "running" and (s.get("progress") or {}).get("done", 0) >= 1 for s in train.values()):
                break  # the training step is in its epochs (its heartbeat publishes the progress)
            time.sleep(0.1)
        t0 = time.monotonic()
        cancelled = client.cancel(job)
        assert cancelled["state"] == "cancelled" and cancelled["cancel_requested"]
        while any(s["state"] == "running" for s in _record(stack, job)["steps"].values()):
            assert time.monotonic() - t0 < 5, "the running step did not stop within 5 s of the cancel"
            time.sleep(0.1)
        freed_after = time.monotonic() - t0
        after = _record(stack, job)
        assert any(s["state"] == "cancelled" and n.startswith("train/") for n, s in after["steps"].items())
        time.sleep(2)
        assert {n: s["state"] for n, s in _record(stack, job)["steps"].items()} == \
            {n: s["state"] for n, s in after["steps"].items()}
        assert not (stack.home / "runs" / job / "report").exists()
        with pytest.raises(Conflict, match="results exist once it is done"):
            client.results(job)
    print(f"cancel freed the worker in {freed_after:.1f} s")
    old = stack.status()["gateway"]["pid"]
    assert stack.restart("gateway") != old
    stack.wait_ready(30)
    stack.down()
    assert not stack.redis_answers() and stack.supervisor_pid() is None
    assert not [n for n, i in stack.status().items() if i["alive"]]


def test_submit_validation_errors_are_422_and_record_nothing(gateway_client, settings):
    r = gateway_client.post("/v1/jobs", json={"extractors": [], "attacks": [{"method": "nope"}]})
    assert r.status_code == 422 and "extractors" in r.json()["detail"]
    outside = {**TINY_SPEC, "dataset": {"kind": "generic", "images_dir": "../../etc", "interactions": "/etc/passwd"}}
    r = gateway_client.post("/v1/jobs", json=outside)
    assert r.status_code == 422 and "escapes" in r.json()["detail"]
    assert not Path(settings.runs_dir).exists() or not any(Path(settings.runs_dir).iterdir())
