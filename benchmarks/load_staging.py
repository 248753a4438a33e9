"""Load on the staging endpoints, through the gateway: top-K for a user, what-if score, seller image refresh;
and a shared stack's fairness: one key floods the job list while another submits small jobs.

    .venv/bin/python benchmarks/load_staging.py [--concurrency 8] [--seconds 15] [--n-items 600]
    .venv/bin/python benchmarks/load_staging.py --server URL --api-key KEY --model KEY   # an existing stack
    .venv/bin/python benchmarks/load_staging.py --scenario two-keys [--history 2000] [--jobs 3]

Without ``--server`` it builds a staging stack in a temporary home: a demo catalog (``--n-items`` items at
64 px, 800 users), a small CNN extractor (random weights: speed does not depend on them), its features
and a VBPR model, through the pipeline's own steps; then ``advrec stack up`` (its own Redis, the three
services, the gateway, no workers) and ``stack down`` at the end.

Each endpoint gets ``--concurrency`` clients in one asyncio loop (httpx, bounded: each client sends its
next request when the previous one answered) for ``--seconds`` after a short warm-up. Prints requests/s,
p50/p99 latency and non-2xx answers; asserts nothing.

``--scenario two-keys`` starts a stack with workers (one per queue) and two keys. Key B owns ``--history``
finished jobs (records as large as a demo run's: the list used to read every one); key A submits
``--jobs`` small evaluations one after another and polls each one's status every 0.2 s until it is done:
(a new seed each: nothing reused; after one warm-up job) first alone, then while key B sends list requests
with ``--concurrency`` clients without pause. Prints, per
phase, A's status-read latency (p50/p95/max), each job's time to done, and B's list requests (answered,
refused with 429 by the rate limit, latency).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_store(home: Path, n_items: int) -> dict[str, str]:
    """Dataset, extractor, features and a trained VBPR in ``home``'s store; returns the artifact keys."""
    import torch

    from advrec.pipeline.dag import Plan
    from advrec.pipeline.executor import execute_step
    from advrec.pipeline.spec import DatasetSpec
    from advrec_common.store import ArtifactStore
    from advrec_common.vision.backbones import build_model
    from advrec_common.vision.model_file import save_model_file
    from services.extractor.artifacts import features_params

    store = ArtifactStore(home / "store")
    torch.manual_seed(0)
    ckpt = save_model_file(build_model("small_cnn", [f"class{i}" for i in range(10)]).eval(), home / "cnn.pt")
    plan = Plan()
    plan.add("dataset", "dataset", DatasetSpec(kind="demo", n_items=n_items, n_users=800, image_size=64,
                                                seed=0).model_dump(mode="json"))
    plan.add("extractor/cnn", "extractor", {"source": "checkpoint", "backbone": "small_cnn", "checkpoint": str(ckpt),
                                            "layout": "advrec"})
    plan.add("features/cnn", "features", features_params(None, False), {"dataset": "dataset", "extractor": "extractor/cnn"})
    plan.add("train/cnn/vbpr", "train", {"recommender": "vbpr", "config": {"epochs": 5, "patience": 0}, "seed": 0,
                                         "max_k": 20}, {"dataset": "dataset", "features": "features/cnn"})
    for step in plan:
        execute_step(step, plan, store, "cpu")
    return {s.name.split("/")[0]: s.key for s in plan}


def png(seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def load(client: httpx.AsyncClient, make, concurrency: int, seconds: float, warmup: int = 3) -> dict:
    """``concurrency`` closed-loop clients sending ``make(i)`` requests for ``seconds``."""
    for i in range(warmup):
        await client.send(make(i))
    latencies: list[float] = []
    errors: dict[int | str, int] = {}
    deadline = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        i = 0
        while time.perf_counter() < deadline:
            i += 1
            t0 = time.perf_counter()
            try:
                r = await client.send(make(w * 1_000_000 + i))
                status: int | str = r.status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                errors[status] = errors.get(status, 0) + 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    wall = time.perf_counter() - t0
    return {"n": len(latencies), "rps": len(latencies) / wall, "p50": percentile(latencies, 50) * 1000,
            "p99": percentile(latencies, 99) * 1000, "mean": statistics.fmean(latencies) * 1000, "errors": errors}


async def run(server: str, key: str, model: str, concurrency: int, seconds: float, endpoints: list[str],
              users: list[str] | None = None) -> None:
    headers = {"X-API-Key": key}
    limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2)
    async with httpx.AsyncClient(base_url=server, headers=headers, timeout=60, limits=limits) as client:
        info = next(m for m in (await client.get("/v1/recommender/models")).json() if m["key"] == model)
        exts = (await client.get("/v1/extractor/extractors")).json()
        dim = next(e for e in exts if e["key"] == info["extractor"])["feature_dim"]
        users = users or [f"user-{u:05d}" for u in range(50)]  # default: the demo catalog's user ids
        top_url = f"/v1/recommender/models/{model}/users/{{}}/top"
        probe = await client.get(top_url.format(users[0]), params={"k": 10})
        if probe.status_code != 200:
            raise SystemExit(f"top-K probe failed: {probe.status_code} {probe.text[:300]}")
        items = [it["item_id"] for it in probe.json()["items"]]
        rng = random.Random(0)
        images = [png(s) for s in range(8)]
        requests = {
            "top": lambda i: client.build_request("GET", top_url.format(users[i % len(users)]), params={"k": 10}),
            "score": lambda i: client.build_request("POST", f"/v1/recommender/models/{model}/score", json={
                "users": [users[i % len(users)]],
                "items": [{"item_id": items[i % len(items)], "features": [rng.random() for _ in range(dim)]}]}),
            "image": lambda i: client.build_request(
                "POST", f"/v1/recommender/models/{model}/items/{items[i % len(items)]}/image",
                params={"users": users[i % len(users)]}, files={"image": ("new.png", images[i % len(images)], "image/png")}),
        }
        print(f"server {server}  model {model[:12]}  feature dim {dim}  concurrency {concurrency}  "
              f"{seconds:g} s per endpoint  ({os.cpu_count()} CPU cores)")
        print(f"{'endpoint':<10} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}  non-200")
        for name in endpoints:
            r = await load(client, requests[name], concurrency, seconds)
            print(f"{name:<10} {r['n']:>8} {r['rps']:>8.1f} {r['p50']:>8.1f} {r['p99']:>8.1f} {r['mean']:>8.1f}  "
                  f"{r['errors'] or '-'}")


SMALL_JOB = {"name": "small", "dataset": {"kind": "demo", "n_items": 60, "n_users": 60},
             "extractors": [{"name": "standard", "demo_images_per_class": 10, "epochs": 1}],
             "attacks": [{"method": "fgsm", "eps": [8]}], "recommenders": [{"name": "vbpr", "config": {"epochs": 5}}],
             "ks": [5, 10], "modes": ["deployment"], "controls": []}


def write_history(runs_dir: Path, owner: str, n: int) -> None:
    """``n`` finished job records of ``owner``, each with a demo-sized plan (the record's bulk)."""
    from advrec.pipeline.dag import plan
    from advrec.pipeline.record import RunRecord
    from advrec.pipeline.spec import parse_spec

    spec = parse_spec({"preset": "demo"})
    rows = plan(spec, spec.dataset.n_items).to_json()
    steps = {r["name"]: {"state": "done", "key": r["key"], "kind": r["kind"], "attempts": 1, "error": None,
                         "seconds": 1.0, "units": 100.0} for r in rows}
    for _ in range(n):
        rec = RunRecord.create(runs_dir, spec.model_dump(mode="json"), executor="celery", owner=owner)
        rec.update(lambda d: d.update(plan=rows, steps=steps, state="done"))


async def two_keys(server: str, key_a: str, key_b: str, jobs: int, concurrency: int) -> None:
    """Key A's small jobs, alone and while key B floods the job list (see the module docstring)."""
    async with httpx.AsyncClient(base_url=server, headers={"X-API-Key": key_a}, timeout=120) as a, \
            httpx.AsyncClient(base_url=server, headers={"X-API-Key": key_b}, timeout=120,
                              limits=httpx.Limits(max_connections=concurrency + 2)) as b:
        seed = iter(range(1, 1000))  # a new seed per job: every job computes all its steps (nothing reused)
        r = await a.post("/v1/jobs", json={**SMALL_JOB, "seed": 0})  # warm-up: the workers import torch
        while (await a.get(f"/v1/jobs/{r.json()['id']}")).json()["state"] not in ("done", "failed", "cancelled"):
            await asyncio.sleep(0.5)
        for phase in ("alone", "list flood"):
            stop = asyncio.Event()
            lists: list[float] = []
            refused = [0]

            async def flood(stop: asyncio.Event = stop, lists: list[float] = lists, refused: list[int] = refused) -> None:
                while not stop.is_set():
                    t0 = time.perf_counter()
                    r = await b.get("/v1/jobs")
                    if r.status_code == 429:
                        refused[0] += 1
                        await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                    else:
                        lists.append(time.perf_counter() - t0)

            flooders = [asyncio.create_task(flood()) for _ in range(concurrency if phase == "list flood" else 0)]
            status: list[float] = []
            done: list[float] = []
            for _ in range(jobs):
                t_submit = time.perf_counter()
                r = await a.post("/v1/jobs", json={**SMALL_JOB, "seed": next(seed)})
                if r.status_code != 202:
                    raise SystemExit(f"submit failed: {r.status_code} {r.text[:300]}")
                job = r.json()["id"]
                while True:
                    t0 = time.perf_counter()
                    st = await a.get(f"/v1/jobs/{job}")
                    status.append(time.perf_counter() - t0)
                    if st.status_code == 200 and st.json()["state"] in ("done", "failed", "cancelled"):
                        if st.json()["state"] != "done":
                            raise SystemExit(f"job {job} {st.json()['state']}: {st.json().get('error')}")
                        break
                    await asyncio.sleep(0.2)
                done.append(time.perf_counter() - t_submit)
            stop.set()
            await asyncio.gather(*flooders)
            print(f"{phase:<11} A: {len(status):>5} status reads  p50 {percentile(status, 50) * 1000:7.1f} ms  "
                  f"p95 {percentile(status, 95) * 1000:7.1f} ms  max {max(status) * 1000:7.1f} ms  | "
                  f"{jobs} jobs done in {', '.join(f'{d:.1f}' for d in done)} s")
            if lists:
                print(f"{'':<11} B: {len(lists):>5} list answers  p50 {percentile(lists, 50) * 1000:7.1f} ms  "
                      f"p95 {percentile(lists, 95) * 1000:7.1f} ms  | {refused[0]} refused (429, rate limit)")


def scenario_two_keys(args: argparse.Namespace) -> None:
    from advrec.pipeline.queue import QUEUES
    from advrec.stack.launcher import Stack, StackConfig
    from advrec_common.apikeys import hash_key, owner_id
    from tests.redis_server import free_port

    key_a, key_b = "bench-key-a-0123456789", "bench-key-b-0123456789"
    with tempfile.TemporaryDirectory(prefix="advrec-load-") as tmp:
        home = Path(tmp) / "home"
        t0 = time.perf_counter()
        write_history(home / "runs", owner_id(key_b), args.history)
        print(f"key B's history: {args.history} finished jobs written in {time.perf_counter() - t0:.1f} s")
        stack = Stack(StackConfig(home=home, port=free_port(), redis_url=f"redis://127.0.0.1:{free_port()}/0",
                                  services=False, worker_queues=tuple((q,) for q in QUEUES), device="cpu",
                                  api_key_hashes=[hash_key(key_a), hash_key(key_b)],
                                  extra_env={"OMP_NUM_THREADS": "1", "ADVREC_TORCH_THREADS": "1"}))
        stack.up(timeout=180)
        try:
            print(f"server {stack.url}  {os.cpu_count()} CPU cores  B's list clients {args.concurrency}  "
                  f"rate limit {stack.settings.quota_requests_per_minute} requests/min per key")
            asyncio.run(two_keys(stack.url, key_a, key_b, args.jobs, args.concurrency))
        finally:
            stack.down()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server")
    p.add_argument("--api-key")
    p.add_argument("--model", help="key of a train artifact (with --server)")
    p.add_argument("--users", help="comma-separated user ids of that model (default: the demo's user-00000..)")
    p.add_argument("--n-items", type=int, default=600)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--seconds", type=float, default=15)
    p.add_argument("--endpoints", default="top,score,image")
    p.add_argument("--scenario", choices=("endpoints", "two-keys"), default="endpoints")
    p.add_argument("--history", type=int, default=2000, help="two-keys: key B's finished jobs")
    p.add_argument("--jobs", type=int, default=3, help="two-keys: key A's small jobs per phase")
    args = p.parse_args()
    if args.scenario == "two-keys":
        scenario_two_keys(args)
        return
    endpoints = args.endpoints.split(",")
    if args.server:
        asyncio.run(run(args.server, args.api_key, args.model, args.concurrency, args.seconds, endpoints,
                        args.users.split(",") if args.users else None))
        return
    from advrec.stack.launcher import Stack, StackConfig
    from tests.redis_server import free_port

    with tempfile.TemporaryDirectory(prefix="advrec-load-") as tmp:
        home = Path(tmp) / "home"
        t0 = time.perf_counter()
        keys = build_store(home, args.n_items)
        print(f"staging store built in {time.perf_counter() - t0:.1f} s ({args.n_items} items)")
        ports = {"extractor": free_port(), "attacker": free_port(), "recommender": free_port()}
        stack = Stack(StackConfig(home=home, port=free_port(), redis_url=f"redis://127.0.0.1:{free_port()}/0",
                                  service_ports=ports, worker_queues=(), device="cpu",
                                  # one key hammers the serving endpoints here: above the per-key rate limit
                                  extra_env={"ADVREC_QUOTA_REQUESTS_PER_MINUTE": str(10**8)}))
        from advrec.pipeline import owners
        from advrec_common.apikeys import owner_id

        for key in keys.values():  # the staging key made them (as a job of its own would have)
            owners.add(home, key, owner_id(stack.local_key()))
        stack.up(timeout=120, require_workers=False)
        try:
            asyncio.run(run(stack.url, stack.local_key(), keys["train"], args.concurrency, args.seconds, endpoints))
        finally:
            stack.down()


if __name__ == "__main__":
    main()
