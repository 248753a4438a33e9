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


@pytest.fixture(scope="session")
def inprocess_results(tmp_path_factory) -> dict[str, Any]:
    """results.json of the tiny spec run by the in-process executor in its own home."""
    from advrec.pipeline.executor import run_inprocess
    from advrec.pipeline.spec import parse_spec
    from advrec_common.store import ArtifactStore

    home = tmp_path_factory.mktemp("inprocess")
    rec = run_inprocess(parse_spec(TINY_SPEC), ArtifactStore(home / "store"), home / "runs", device="cpu",
                        show_progress=False)
    assert rec.read()["state"] == "done"
    return json.loads((rec.dir / "report" / "results.json").read_text())


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


def test_a_celery_job_matches_the_inprocess_run(make_stack, inprocess_results, tmp_path):
    stack = make_stack()
    with AdvrecClient(stack.url, API_KEY) as client:
        job = client.submit(TINY_SPEC)
        seen: list[int] = []
        final = client.wait(job, progress=lambda s: seen.append(s["progress"]["done"]), poll_interval=0.5,
                            timeout=240)
        assert final["state"] == "done" and final["progress"]["done"] == final["progress"]["total"] > 5
        assert seen == sorted(seen)  # progress never goes back
        results = client.results(job)
        report = client.report(job, tmp_path / "report.html")
    assert differences(numbers(results), numbers(inprocess_results)) == []
    assert "<html" in report.read_text().lower()
    # `advrec report JOB --server URL` downloads the same report
    from advrec.cli import main

    assert main(["report", job, "--server", stack.url, "--api-key", API_KEY, "-o", str(tmp_path / "cli.html")]) == 0
    assert (tmp_path / "cli.html").read_bytes() == report.read_bytes()
    workers = {s.get("worker", "").split("@")[0].rsplit("-", 1)[0] for s in _record(stack, job)["steps"].values()
               if s["state"] == "done"}
    assert {"worker-extract", "worker-attack", "worker-recommend"} <= workers  # work went to every queue


def test_b_killed_worker_loses_nothing(make_stack, inprocess_results):
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
        stack.kill(victim, signal.SIGKILL)
        assert not stack.status().get(victim, {}).get("alive")
        stack.start_worker(tuple(victim.removeprefix("worker-").split("-")), name=victim)
        final = client.wait(job, poll_interval=0.5, timeout=240)
        assert final["state"] == "done"
        assert _record(stack, job)["steps"][step]["attempts"] >= 2  # the killed step was delivered again
        assert numbers(client.results(job)) == numbers(inprocess_results)


def test_c_cancel_stops_work(make_stack):
    stack = make_stack()
    with AdvrecClient(stack.url, API_KEY) as client:
        job = client.submit(TINY_SPEC)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            st = client.status(job)
            assert st["state"] not in ("done", "failed"), st.get("error")  # must still be running to cancel
            if st["progress"]["done"] >= 2:
                break
            time.sleep(0.1)
        cancelled = client.cancel(job)
        assert cancelled["state"] == "cancelled" and cancelled["cancel_requested"]
        # the step running at cancel time may finish; then nothing else moves
        while any(s["state"] == "running" for s in _record(stack, job)["steps"].values()):
            time.sleep(0.2)
        before = _record(stack, job)
        store_before = sorted(p.name for p in (stack.home / "store" / "objects").rglob("meta.json"))
        time.sleep(4)
        after = _record(stack, job)
        assert {n: s["state"] for n, s in after["steps"].items()} == {n: s["state"] for n, s in before["steps"].items()}
        assert sorted(p.name for p in (stack.home / "store" / "objects").rglob("meta.json")) == store_before
        assert after["state"] == "cancelled"
        assert not (stack.home / "runs" / job / "report").exists()
        assert any(s["state"] in ("pending", "cancelled") for s in after["steps"].values())
        with pytest.raises(Conflict, match="results exist once it is done"):
            client.results(job)


def test_submit_validation_errors_are_422_and_record_nothing(gateway_client, settings):
    r = gateway_client.post("/v1/jobs", json={"extractors": [], "attacks": [{"method": "nope"}]})
    assert r.status_code == 422 and "extractors" in r.json()["detail"]
    outside = {**TINY_SPEC, "dataset": {"kind": "generic", "images_dir": "../../etc", "interactions": "/etc/passwd"}}
    r = gateway_client.post("/v1/jobs", json=outside)
    assert r.status_code == 422 and "escapes" in r.json()["detail"]
    assert not Path(settings.runs_dir).exists() or not any(Path(settings.runs_dir).iterdir())
