"""Running a shared stack (issue 22, items 5, 6, 7 and 10), with real processes:

* one namespace, one stack, even in a race: of two claimants at the same moment exactly one wins, the other
  is refused with the holder's identity, and a worker of another deployment exits instead of taking messages;
* health that tells the truth: a worker the supervisor gave up on makes /readyz 503 naming it and its queue,
  and a job waiting on that queue says so in its status;
* metrics (queues, consumers, jobs, step durations, restarts) and JSON logs with job, step and request ids;
* workers on a second host (another hostname, the same Redis and home) share a job's steps, with the numbers
  of an in-process run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from advrec.client import AdvrecClient
from advrec_common.errors import Conflict

from .conftest import API_KEY, TINY_SPEC
from .test_jobs_e2e import differences, numbers

pytestmark = [pytest.mark.stack, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]


def _record(stack, job_id: str) -> dict:
    return json.loads((stack.home / "runs" / job_id / "record.json").read_text())


def test_two_deployments_claiming_one_namespace_at_once_one_wins(tmp_path, redis_url):
    from advrec.stack.launcher import Stack, StackConfig

    ns = f"race-{os.getpid()}"
    stacks = [Stack(StackConfig(home=tmp_path / f"home{i}", redis_url=redis_url, stack_id=ns)) for i in range(2)]
    barrier, results = threading.Barrier(2), [None, None]

    def claim(i: int) -> None:
        barrier.wait()
        try:
            stacks[i].check_claim()
            results[i] = "won"
        except Conflict as exc:
            results[i] = str(exc)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r == "won" for r in results) == [False, True], results
    winner = results.index("won")
    refusal = results[1 - winner]
    assert f"home {stacks[winner].home}" in refusal and "held by another live stack" in refusal
    stacks[winner].check_claim()  # its own claim: refreshed, not refused
    from advrec.pipeline.claim import release

    assert release(redis_url, ns, stacks[winner].home)
    stacks[1 - winner].check_claim()  # released: the other may take it now
    release(redis_url, ns, stacks[1 - winner].home)


def test_a_second_stack_with_the_same_namespace_is_refused_and_its_worker_exits(make_stack, tmp_path, redis_url):
    from advrec.stack.launcher import Stack, StackConfig

    ns = f"one-{os.getpid()}"
    first = make_stack("first", stack_id=ns, worker_queues=(("extract", "attack", "recommend", "orchestrate"),))
    second = Stack(StackConfig(home=tmp_path / "second", port=first.config.port + 7, redis_url=redis_url,
                               stack_id=ns, services=False))
    with pytest.raises(Conflict, match=f"home {first.home}"):
        second.up(timeout=30)
    assert second.supervisor_pid() is None  # nothing was started
    # a worker of the other deployment (docker-compose has no launcher to refuse it) exits at start
    env = {**second.env(), "PYTHONPATH": str(ROOT)}
    argv = Stack.worker_argv(("extract",), "worker-foreign")
    out = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 78, out.stderr[-2000:]
    assert "held by another live stack" in out.stdout + out.stderr
    with AdvrecClient(first.url, API_KEY) as c:  # the first stack is untouched: its job runs
        assert c.wait(c.submit(TINY_SPEC), poll_interval=0.5, timeout=240)["state"] == "done"


def test_a_failed_worker_makes_the_stack_not_ready_and_the_job_says_what_it_waits_for(make_stack):
    stack = make_stack(max_restarts=0)
    stack.kill("worker-attack", signal.SIGTERM)  # it exits (warmly: it unregisters); the supervisor gives up
    deadline = time.monotonic() + 60
    while stack.status()["worker-attack"].get("state") != "failed":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    ready = httpx.get(f"{stack.url}/readyz")
    assert ready.status_code == 503
    why = ready.json()["checks"]["workers"]
    assert "worker-attack failed" in why and "queue 'attack' has no live consumer" in why
    with AdvrecClient(stack.url, API_KEY) as c:
        job = c.submit(TINY_SPEC)
        deadline = time.monotonic() + 180
        while True:
            st = c.status(job)
            if st.get("stalled"):
                break
            assert time.monotonic() < deadline and st["state"] == "running", st
            time.sleep(0.5)
        assert {s["queue"] for s in st["stalled"]} == {"attack"} and "no live worker" in st["stalled"][0]["why"]
        metrics = httpx.get(f"{stack.url}/metrics").text
        assert 'advrec_queue_consumers{queue="attack"} 0.0' in metrics
        assert 'advrec_queue_consumers{queue="extract"} 1.0' in metrics
        stack.restart("worker-attack")
        final = c.wait(job, poll_interval=0.5, timeout=240)
        assert final["state"] == "done" and final["stalled"] == []
    assert httpx.get(f"{stack.url}/readyz").status_code == 200
    # jobs by state are cached for 15 s (a scrape does not list every run): the count follows within that
    deadline = time.monotonic() + 40
    while 'advrec_jobs{state="done"} 1.0' not in (metrics := httpx.get(f"{stack.url}/metrics").text):
        assert time.monotonic() < deadline, "jobs by state did not follow within the cache's 15 s"
        time.sleep(1)
    for line in ('advrec_jobs{state="done"} 1.0', 'advrec_worker_restarts_total{worker="worker-attack@',
                 'advrec_step_seconds_bucket{kind="attack_shard",le="+Inf",outcome="done"}',
                 'http_requests_total{handler="/v1/jobs/{job_id}",method="GET",status="200"}',
                 'advrec_queue_messages{queue="attack"} 0.0'):
        assert line in metrics, line
    # JSON logs: a worker's lines carry the job and step ids, the gateway's the request id
    lines = [json.loads(x) for x in (stack.dir / "worker-attack.log").read_text().splitlines() if x.startswith("{")]
    assert any(x.get("job_id") == job and x.get("step", "").startswith("attack/") for x in lines)
    gw = [json.loads(x) for x in (stack.dir / "gateway.log").read_text().splitlines() if x.startswith("{")]
    assert any(x.get("request_id") and x.get("job_id") == job for x in gw)


def test_workers_on_a_second_host_share_a_jobs_steps_with_the_numbers_of_an_inprocess_run(
        make_stack, inprocess_results, tmp_path):
    """The "CPU host" runs the gateway and the recommend/orchestrate workers; a "GPU host" (other hostnames,
    the same Redis, the same home: a shared filesystem) runs the extract and attack workers."""
    from advrec.stack.launcher import Stack

    stack = make_stack("cpu-host", require_workers=False, worker_queues=(("recommend",), ("orchestrate",)))
    env = {**stack.env(), "PYTHONPATH": str(ROOT)}
    procs = []
    try:
        for queue in ("extract", "attack"):
            argv = Stack.worker_argv((queue,), f"gpu-{queue}")
            argv[argv.index("-n") + 1] = f"gpu-{queue}@gpu-host"  # the other machine's hostname
            log = open(tmp_path / f"gpu-{queue}.log", "wb")  # noqa: SIM115 -- closed with the process
            procs.append((subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True), log))
        stack.wait_ready(120)  # every queue has a consumer now
        with AdvrecClient(stack.url, API_KEY) as c:
            job = c.submit(TINY_SPEC)
            assert c.wait(job, poll_interval=0.5, timeout=240)["state"] == "done"
            results = c.results(job)
        hosts = {n: s["worker"].split("@")[1] for n, s in _record(stack, job)["steps"].items() if s.get("worker")}
        assert {h for n, h in hosts.items() if n.startswith(("attack/", "features/"))} == {"gpu-host"}
        assert {h for n, h in hosts.items() if n.startswith(("train/", "evaluate/", "report"))} == \
            {os.uname().nodename}
        assert differences(numbers(results), numbers(inprocess_results)) == []
        metrics = httpx.get(f"{stack.url}/metrics").text
        assert 'advrec_workers_live{host="gpu-host"} 2.0' in metrics
    finally:
        for p, _ in procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p, log in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
            log.close()
