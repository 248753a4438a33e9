"""Load on the staging endpoints, through the gateway: top-K for a user, what-if score, seller image refresh.

    .venv/bin/python benchmarks/load_staging.py [--concurrency 8] [--seconds 15] [--n-items 600]
    .venv/bin/python benchmarks/load_staging.py --server URL --api-key KEY --model KEY   # an existing stack

Without ``--server`` it builds a staging stack in a temporary home: a demo catalog (``--n-items`` items at
64 px, 800 users), a small CNN extractor (random weights: speed does not depend on them), its features
and a VBPR model, through the pipeline's own steps; then ``advrec stack up`` (its own Redis, the three
services, the gateway, no workers) and ``stack down`` at the end.

Each endpoint gets ``--concurrency`` clients in one asyncio loop (httpx, bounded: each client sends its
next request when the previous one answered) for ``--seconds`` after a short warm-up. Prints requests/s,
p50/p99 latency and non-2xx answers; asserts nothing.
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
    args = p.parse_args()
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
                                  service_ports=ports, worker_queues=(), device="cpu"))
        stack.up(timeout=120)
        try:
            asyncio.run(run(stack.url, stack.local_key(), keys["train"], args.concurrency, args.seconds, endpoints))
        finally:
            stack.down()


if __name__ == "__main__":
    main()
