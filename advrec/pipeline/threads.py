"""How many CPU threads each kind of step uses: measured on this machine, not assumed from its cores.

Small kernels (recommender training and scoring at catalog sizes like the demo's) run slower with
more threads: OpenMP's barriers cost more than the work they split, and on a busy 2-core machine a
demo-sized VBPR fit was 13x slower with all cores than with one. Convolutions (extraction, attacks)
do gain from threads on an idle machine. So each *workload* (``conv``, ``rec``) gets the smallest
thread count whose measured wall time is clearly (>= 20 %) better than one thread less, timed on a
fixed, representative kernel the first time a home runs a step on this machine. Steps that train
(:data:`TRAINING_KINDS`) always use one thread: their numbers depend on the count.

The choice is stored in ``<home>/threads.json`` (keyed by machine: host, cores, torch version) so
every process of a home, in-process or Celery worker, uses the same counts: the thread count is
part of what makes two runs bit-identical. ``ADVREC_TORCH_THREADS`` (settings.torch_threads) > 0
overrides the measurement for every step; ``OMP_WAIT_POLICY=PASSIVE`` (set by the CLI and the
workers unless already set) keeps idle threads from spinning on a busy machine.
"""

from __future__ import annotations

import json
import os
import platform
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from advrec_common.store import atomic_write

# step kinds that train models: one thread, always. Their weight gradients are sums that CPU kernels
# split across threads, so another count gives other models and other tables (two fresh demo homes on
# one machine measured 1 and 2 threads for convolutions and printed different tables). Forward passes
# and input gradients (extraction, attacks, placebos) move far less with the count (bit-identical for
# the demo's small CNN, ~4e-6 for Lite0), so those take the measured count for speed.
TRAINING_KINDS = frozenset({"extractor", "train", "evaluate"})
# which workload each other step kind resembles (default: rec)
KIND_WORKLOAD: dict[str, str] = {"features": "conv", "attack_shard": "conv", "placebo": "conv"}
GAIN = 0.8  # another thread must bring the time to <= 80 % of the previous count's
ROUNDS = 7  # interleaved timings per thread count (best of): ~0.6 s once per home on 2 cores


def _machine() -> str:
    import torch

    return f"{platform.node()}|{os.cpu_count()}|{torch.__version__}"


def _conv_kernel():
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1),
                        nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(64, 10))
    x = torch.rand(32, 3, 64, 64)

    def run() -> None:
        net.zero_grad()
        net(x).sum().backward()

    return run


def _rec_kernel():
    import torch

    g = torch.Generator().manual_seed(0)
    users, items = torch.randn(600, 64, generator=g), torch.randn(600, 64, generator=g)
    proj, feats = torch.randn(64, 64, generator=g), torch.randn(600, 64, generator=g)
    u = torch.randint(0, 600, (512,), generator=g)
    i = torch.randint(0, 600, (512,), generator=g)

    def run() -> None:
        for _ in range(20):  # one small BPR-like batch: gathers, a projection, a row update
            q = items[i] + feats[i] @ proj
            x = (users[u] * q).sum(1)
            users.index_add_(0, u, (torch.sigmoid(-x)[:, None] * q) * 1e-6)
        (users @ (items + feats @ proj).T).topk(10, dim=1)

    return run


def _times(run, counts: list[int], rounds: int = ROUNDS) -> dict[int, float]:
    """Best wall time of ``run`` per thread count, the counts interleaved round by round (each pool
    warmed first), so that a slow first round or a passing load does not favour one count."""
    import torch

    before = torch.get_num_threads()
    try:
        for t in counts:  # warm-up: the first call with a new count also starts its thread pool
            torch.set_num_threads(t)
            run()
        best = dict.fromkeys(counts, float("inf"))
        for _ in range(rounds):
            for t in counts:
                torch.set_num_threads(t)
                t0 = time.perf_counter()
                run()
                best[t] = min(best[t], time.perf_counter() - t0)
        return best
    finally:
        torch.set_num_threads(before)


def measure(max_threads: int | None = None) -> dict[str, Any]:
    """Time each workload with 1..max_threads threads; returns the choice and the timings."""
    cores = max(1, max_threads or os.cpu_count() or 1)
    out: dict[str, Any] = {"machine": _machine(), "measured_at": time.time(), "timings": {}}
    for name, kernel in (("conv", _conv_kernel), ("rec", _rec_kernel)):
        times = _times(kernel(), list(range(1, cores + 1)))
        choice = 1
        for t in range(2, cores + 1):
            if times[t] <= GAIN * times[choice]:
                choice = t
        out[name] = choice
        out["timings"][name] = {str(t): round(v, 5) for t, v in times.items()}
    return out


@lru_cache(maxsize=8)
def _stored_choice(home: str) -> dict[str, Any]:
    path = Path(home) / "threads.json"
    machine = _machine()
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            if data.get("machine") == machine:
                return data
        except (OSError, ValueError):
            pass
    data = measure()
    atomic_write(path, json.dumps(data, indent=1))
    return data


def threads_for(kind: str, home: Path, fixed: int = 0) -> int:
    """The CPU thread count for a step of ``kind``: ``fixed`` when > 0, 1 for a training kind
    (:data:`TRAINING_KINDS`), else this home's measured choice."""
    if fixed > 0:
        return fixed
    if kind in TRAINING_KINDS:
        return 1
    return int(_stored_choice(str(Path(home).resolve())).get(KIND_WORKLOAD.get(kind, "rec"), 1))
