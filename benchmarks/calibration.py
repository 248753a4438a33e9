"""Calibration of advrec's verdicts on the verdict path: null specs run through the pipeline.

Every number comes from ``advrec run``'s own steps, tests, Benjamini-Hochberg family and Ks: the script
builds one spec per demo *world* (the demo catalog drawn with another dataset seed: other products,
other shoppers; the extractors are shared, as their training images do not depend on the world), runs it
in-process, and reads ``results.json``. Each spec holds:

* **null cells** -- attacks that know nothing: ``noise`` (a seeded random point of the L-inf ball, at
  eps 2, 4, 8 and 16) on the scenario's origin category, under the standard and the PGD-AT extractor,
  VBPR and AMR, retrain and deployment; and the ``noise`` baseline in item promotion (the 20 least
  exposed origin items, deployment and retrain). Against its placebo (the same values shuffled over each
  image) a noise cell is a null by construction; in retrain the only difference between the two arms is
  the perturbation's draw and the training noise it brings (seed-only retrains of equal-sized
  perturbations). The tests counted are each cell's "beyond its placebo" tests (CHR@K and nCDCG@K at
  every K; the promotion's score and exposure), after the run's correction, and the findings (a) of the
  noise attacks: their "yes" is a false finding.
* **positive controls** -- the oracle (every origin item disguised as a real target item) and ``insa``
  (white-box promotion of the 20 least exposed origin items): their power is the share of feasible
  cells where the verdict says yes. Feasible: the oracle's cell that the scenario step measured (its
  recommender, the standard extractor, deployment) in a world where it found the rise real, with another
  oracle draw than the evaluation's; insa's score shift under the standard extractor in deployment. The
  oracle's other deployment cells (AMR) are printed for information: nothing established their rise.

    .venv/bin/python benchmarks/calibration.py                 # 4 worlds, R = 3 (prints its own time)
    .venv/bin/python benchmarks/calibration.py --jobs 1        # one step at a time (the same numbers)
    .venv/bin/python benchmarks/calibration.py --worlds 2      # a quick look

Figures are printed, never asserted (see README "Calibration"). A home (``--home``) keeps every step, so a
second call with more worlds only computes the new ones.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from tempfile import gettempdir
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from advrec.pipeline.executor import run_inprocess  # noqa: E402
from advrec.pipeline.spec import parse_spec  # noqa: E402
from advrec_common.store import ArtifactStore  # noqa: E402

NOISE_EPS = [2, 4, 8, 16]


def null_spec(world: int, replicates: int) -> dict[str, Any]:
    """The calibration spec of one demo world (dataset seed ``world``; the run's seed, hence the extractors, fixed)."""
    return {
        "name": f"calibration-w{world}",
        "dataset": {"kind": "demo", "n_users": 600, "seed": world},
        "extractors": [{"name": "standard"}, {"name": "pgd_at"}],
        "attacks": [{"method": "noise", "eps": NOISE_EPS}],
        "recommenders": [{"name": "vbpr"}, {"name": "amr"}],
        "ks": [5, 10, 20, 50],
        "modes": ["retrain", "deployment"],
        "replicates": replicates,
        "controls": ["placebo", "oracle"],
        "gallery_users": 0,
        "promotion": {"attacks": [{"method": "noise", "eps": [8]}, {"method": "insa", "eps": [8], "steps": 20}],
                      "modes": ["deployment", "retrain"]},
    }


def null_tests(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every "beyond its placebo" test of the noise cells (category: per K and metric; promotion: score, exposure)."""
    out = []
    for e in results["evaluations"]:
        if e["control"] == "attack" and e["method"] == "noise":
            for row in e["per_k"]:
                for metric in ("chr", "ncdcg"):
                    t = (row.get(metric) or {}).get("beyond_placebo")
                    if t:
                        out.append({**t, "kind": "category", "mode": e["mode"]})
    for e in (results.get("promotion") or {}).get("evaluations", []):
        if e["control"] == "attack" and e["method"] == "noise":
            for q, tests in e["tests"].items():
                out.append({**tests["beyond_placebo"], "kind": f"promotion {q}", "mode": e["mode"]})
    return out


def null_cells(results: dict[str, Any]) -> int:
    category = sum(1 for e in results["evaluations"] if e["control"] == "attack" and e["method"] == "noise")
    promo = sum(1 for e in (results.get("promotion") or {}).get("evaluations", [])
                if e["control"] == "attack" and e["method"] == "noise")
    return category + promo


def power_cells(results: dict[str, Any]) -> dict[str, list[bool]]:
    """Per positive control, one verdict per feasible cell (True = it said the rise is real)."""
    from advrec.report.findings import direction
    from advrec.report.promotion import gained

    k = results["headline_k"]
    feas = results["scenario"].get("feasibility") or {}

    def oracle(recommenders: set[str]) -> list[bool]:
        return [direction(next(r for r in e["per_k"] if r["k"] == k)["chr"]) == "rose"
                for e in results["evaluations"] if e["control"] == "oracle" and e["extractor"] == "standard"
                and e["mode"] == "deployment" and e["recommender"] in recommenders] if feas.get("feasible") else []

    insa = [gained(e, "score") == "rose" for e in (results.get("promotion") or {}).get("evaluations", [])
            if e["control"] == "attack" and e["method"] == "insa" and e["extractor"] == "standard"
            and e["mode"] == "deployment"]
    return {f"oracle, the feasibility cell ({feas.get('recommender')})": oracle({feas.get("recommender")}),
            "oracle, every recommender (information)": oracle({"vbpr", "amr"}),
            "insa score (standard, deployment)": insa}


def rate(flags: list[bool]) -> str:
    return f"{sum(flags)}/{len(flags)} = {sum(flags) / len(flags):.3f}" if flags else "n/a (no cell)"


def _jobs(value: str) -> int:
    """``--jobs``: a number, or ``auto`` (the machine measured now, as ``advrec run --jobs auto``; said on stdout)."""
    if value != "auto":
        return int(value)
    from advrec.pipeline.parallelism import auto_jobs
    from advrec_common.settings import resolve_device

    choice = auto_jobs(resolve_device("auto"))
    print(f"steps at once: {choice.jobs} (--jobs auto: {choice.reason})", flush=True)
    return choice.jobs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worlds", type=int, default=4, help="demo worlds (dataset seeds 1..N), one run each")
    ap.add_argument("--replicates", type=int, default=3)
    ap.add_argument("--jobs", default="auto",
                    help="steps at once (worker processes; 1: in this process); auto (default): as `advrec run`, one "
                         "per CPU idle now. The numbers do not depend on it")
    ap.add_argument("--home", default=str(Path(gettempdir()) / "advrec-calibration"),
                    help="store and runs (kept: a second call reuses every step)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    jobs = _jobs(args.jobs)
    home = Path(args.home)
    store = ArtifactStore(home / "store")
    tests: list[dict[str, Any]] = []
    findings: list[dict[str, Any]] = []
    power: dict[str, list[bool]] = {}
    cells = 0
    feasible_worlds = 0
    for world in range(1, args.worlds + 1):
        t = time.perf_counter()
        record = run_inprocess(parse_spec(null_spec(world, args.replicates)), store, home / "runs",
                               show_progress=False, jobs=jobs)
        results = json.loads((record.dir / "report" / "results.json").read_text())
        tests += null_tests(results)
        cells += null_cells(results)
        findings += [f for f in results["findings"] if f["id"] == "a" and f["method"] == "noise"]
        feasible_worlds += bool((results["scenario"].get("feasibility") or {}).get("feasible"))
        for name, flags in power_cells(results).items():
            power.setdefault(name, []).extend(flags)
        scen = results["scenario"]
        print(f"world {world}: {scen['origin']} -> {scen['target']} (oracle feasible: "
              f"{(scen.get('feasibility') or {}).get('feasible')}), {time.perf_counter() - t:.0f} s", flush=True)

    print(f"\n{args.worlds} worlds, {cells} null cells, R = {args.replicates}, alpha = 0.05 "
          f"(Benjamini-Hochberg over every test of each run)")
    print("\nfalse positives of the null tests (noise beyond its placebo):")
    groups: dict[str, list[dict[str, Any]]] = {}
    for t in tests:
        groups.setdefault(f"{t['kind']}, {t['mode']}", []).append(t)
    groups["all"] = tests
    for name, ts in groups.items():
        testable = [t for t in ts if t.get("p_value") is not None]
        raw = [t["p_value"] <= 0.05 for t in testable]
        adjusted = [bool(t.get("significant")) for t in testable]
        print(f"  {name:<34} tests {len(testable):>4}   raw p <= 0.05: {rate(raw):<18}   "
              f"after correction: {rate(adjusted)}   (goal <= 0.05)")
    yes = [f["answer"] == "yes" for f in findings]
    print(f"\nfindings (a) of the noise attacks answering yes: {sum(yes)} of {len(yes)} (goal 0 of >= 30); "
          f"partly: {sum(f['answer'] == 'partly' for f in findings)}")
    print(f"\npower of the positive controls (feasible cells; {feasible_worlds} of {args.worlds} worlds feasible):")
    for name, flags in power.items():
        print(f"  {name:<44} {rate(flags)}" + ("" if "information" in name else "   (goal >= 0.80)"))
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
