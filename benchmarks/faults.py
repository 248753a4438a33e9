"""Faults against a running stack: does every job finish, and how long until work resumes?

    .venv/bin/python benchmarks/faults.py [--scenarios baseline,kill-extract,...] [--deadline 600]

Starts a stack in a temporary home (``advrec stack up``: its own non-persistent Redis, the gateway,
one solo worker per queue, the supervisor; default settings, so the recovery loop runs every 10 s and
a step's heartbeat is stale after 10 s) and runs one small evaluation per scenario (a new seed each
time, so nothing is reused from the store), injecting one fault while it runs:

* ``kill-<queue>``: SIGKILL the worker of that queue while it runs a step (the orchestrate worker:
  at the job's start, it has no step before the report); the supervisor restarts it;
* ``restart-gateway``: the gateway restarts while the client waits (the client retries);
* ``restart-redis``: the non-persistent Redis restarts: every queued and unacknowledged message is lost;
* ``two-stacks``: a second stack (another home, one worker for every queue) on the same Redis database
  runs a job at the same time.

For each scenario it prints the job's end state, its duration, and "resumed": the time from the fault
to the next step that finished after it. "jobs lost" counts jobs that did not end ``done`` before
``--deadline``. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from advrec.client import AdvrecClient  # noqa: E402
from advrec.stack.launcher import Stack, StackConfig  # noqa: E402
from tests.redis_server import free_port  # noqa: E402

# small, but with queues that hold messages: 12 attack shards behind one attack worker, two
# recommenders (4 evaluations) behind one recommend worker
SPEC: dict[str, Any] = {
    "name": "faults",
    "dataset": {"kind": "demo", "n_items": 240, "n_users": 200},
    "extractors": [{"name": "standard", "demo_images_per_class": 20, "epochs": 2}],
    "attacks": [{"method": "pgd", "eps": [8], "steps": 10}],
    "recommenders": [{"name": "vbpr", "config": {"epochs": 100, "patience": 0}},
                     {"name": "amr", "config": {"epochs": 100, "patience": 0}}],
    "ks": [5, 10],
    "shard_size": 20,
}
SCENARIOS = ["baseline", "kill-extract", "kill-attack", "kill-recommend", "kill-orchestrate", "restart-gateway",
             "restart-redis", "two-stacks"]
QUEUE_OF_KIND = {"dataset": "extract", "extractor": "extract", "features": "extract", "train": "recommend",
                 "scenario": "recommend", "evaluate": "recommend", "attack_shard": "attack", "adversarial": "attack",
                 "report": "orchestrate"}


def record(stack: Stack, job: str) -> dict[str, Any]:
    try:
        return json.loads((stack.home / "runs" / job / "record.json").read_text())
    except (OSError, ValueError):
        return {}


def finished_times(stack: Stack, job: str) -> list[float]:
    return sorted(s["finished"] for s in record(stack, job).get("steps", {}).values() if s.get("finished"))


def wait_for(pred, timeout: float, poll: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(poll)
    return False


def running_on(stack: Stack, job: str, queue: str) -> str | None:
    for name, st in record(stack, job).get("steps", {}).items():
        if st["state"] == "running" and QUEUE_OF_KIND.get(st.get("kind", "")) == queue:
            return name
    return None


def inject(scenario: str, stack: Stack, job: str) -> tuple[float | None, str | None]:
    """Inject the scenario's fault; returns its wall time (time.time()) and the step it hit, if one."""
    if scenario.startswith("kill-"):
        queue = scenario.removeprefix("kill-")
        victim = None
        if queue != "orchestrate":
            if not wait_for(lambda: running_on(stack, job, queue), 300):
                return None, None
            victim = running_on(stack, job, queue)
        t = time.time()
        stack.kill(f"worker-{queue}", signal.SIGKILL)
        return t, victim
    if scenario == "restart-gateway":
        wait_for(lambda: len(finished_times(stack, job)) >= 2, 300)
        t = time.time()
        stack.restart("gateway")
        return t, None
    if scenario == "restart-redis":  # when messages wait in a queue: the restart loses them
        wait_for(lambda: sum(st["state"] == "queued" for st in record(stack, job).get("steps", {}).values()) >= 3, 300)
        t = time.time()
        stack.restart("redis")
        return t, None
    return (time.time(), None) if scenario == "two-stacks" else (None, None)


def run(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="advrec-faults-"))
    redis_url = f"redis://127.0.0.1:{free_port()}/0"
    stack = Stack(StackConfig(home=tmp / "a", port=free_port(), redis_url=redis_url, services=False, device="cpu",
                              extra_env={"OMP_NUM_THREADS": "1", "ADVREC_TORCH_THREADS": "1"}))
    t0 = time.perf_counter()
    stack.up(timeout=120)
    print(f"stack up in {time.perf_counter() - t0:.1f} s (own Redis, gateway, 4 workers, supervisor)")
    other_stack: Stack | None = None
    rows = []
    lost = 0
    try:
        with AdvrecClient(stack.url, stack.local_key(), retry_for=120) as client:
            for i, scenario in enumerate(args.scenarios.split(",")):
                spec = {**SPEC, "name": f"faults-{scenario}", "seed": 100 + i}
                other = None
                if scenario == "two-stacks":
                    other_stack = Stack(StackConfig(home=tmp / "b", port=free_port(), redis_url=redis_url,
                                                    services=False, device="cpu",
                                                    worker_queues=(("extract", "attack", "recommend", "orchestrate"),),
                                                    extra_env={"OMP_NUM_THREADS": "1", "ADVREC_TORCH_THREADS": "1"}))
                    other_stack.up(timeout=120)
                    with AdvrecClient(other_stack.url, other_stack.local_key()) as oc:
                        other = (other_stack, oc.submit({**spec, "seed": 900 + i}))
                started = time.time()
                job = client.submit(spec)
                fault, victim = inject(scenario, stack, job)
                try:
                    final = client.wait(job, poll_interval=0.5, timeout=args.deadline)
                    state = final["state"]
                except TimeoutError:
                    state = "timeout"
                ended = time.time()
                after = [t for t in finished_times(stack, job) if fault is not None and t > fault]
                resumed = (after[0] - fault) if after and fault is not None else None
                attempts = max((s.get("attempts", 0) for s in record(stack, job).get("steps", {}).values()), default=0)
                extra = ""
                if victim is not None and fault is not None:  # the killed step: claimed again, then done
                    st = record(stack, job)["steps"][victim]
                    extra = (f"killed step re-claimed after {st['started'] - fault:.1f} s, done after "
                             f"{st['finished'] - fault:.1f} s" if st.get("finished") else f"killed step {st['state']}")
                if other is not None:
                    with AdvrecClient(other[0].url, other[0].local_key()) as oc:
                        try:
                            ost = oc.wait(other[1], poll_interval=0.5, timeout=args.deadline)["state"]
                        except TimeoutError:
                            ost = "timeout"
                    extra = f"other stack's job: {ost}"
                    lost += ost != "done"
                lost += state != "done"
                rows.append((scenario, state, ended - started, resumed, attempts, other is not None))
                print(f"{scenario:<17} {state:<8} job {ended - started:6.1f} s   resumed "
                      f"{'-' if resumed is None else f'{resumed:5.1f} s'}   max attempts {attempts}  {extra}", flush=True)
        print(f"\njobs lost: {lost} of {len(rows) + sum(1 for r in rows if r[5])}")
        print("restarts by the supervisor: " + ", ".join(f"{n} {i.get('restarts', 0)}"
                                                          for n, i in stack.status().items() if i.get("restarts")))
    finally:
        if other_stack is not None:
            other_stack.down()
        stack.down()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--deadline", type=float, default=600, help="seconds a job may take before it counts as lost")
    run(p.parse_args())


if __name__ == "__main__":
    main()
