"""Run the demo spec on a fresh store and print seconds and peak memory (RSS) per stage.

    .venv/bin/python benchmarks/demo_stages.py [--spec demo] [--device cpu] [--home /tmp/advrec-bench]

Stages are the DAG's step kinds (dataset, extractor, features, train, scenario, attack_shard,
adversarial, evaluate, report). Peak RSS per step is measured by resetting the kernel's
high-water mark (/proc/self/clear_refs) before the step and reading VmHWM after it.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from advrec.pipeline.executor import execute_step, plan_run
from advrec.pipeline.spec import load_spec
from advrec_common.store import ArtifactStore


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="demo")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--home", default=None, help="fresh directory (default: a temporary one, deleted)")
    args = ap.parse_args()
    home = Path(args.home or tempfile.mkdtemp(prefix="advrec-bench-"))
    store = ArtifactStore(home / "store")
    spec = load_spec(args.spec)
    t_total = time.perf_counter()
    _reset_peak()
    t0 = time.perf_counter()
    plan = plan_run(spec, store, args.device)
    seconds: dict[str, float] = defaultdict(float)
    peak: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    seconds["dataset"] += time.perf_counter() - t0
    peak["dataset"] = _peak_mib()
    count["dataset"] = 1
    for step in plan:
        if step.kind == "dataset":
            continue
        can_reset = _reset_peak()
        t0 = time.perf_counter()
        execute_step(step, plan, store, args.device)
        seconds[step.kind] += time.perf_counter() - t0
        peak[step.kind] = max(peak[step.kind], _peak_mib() if can_reset else float("nan"))
        count[step.kind] += 1
    total = time.perf_counter() - t_total
    print(f"spec {spec.name}: {len(plan)} steps, total {total:.1f} s, device {args.device}")
    print(f"{'stage':<14}{'steps':>6}{'seconds':>10}{'share':>8}{'peak RSS MiB':>14}")
    for kind in sorted(seconds, key=seconds.get, reverse=True):
        print(f"{kind:<14}{count[kind]:>6}{seconds[kind]:>10.1f}{100 * seconds[kind] / total:>7.0f}%{peak[kind]:>14.0f}")
    if args.home is None:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
