"""Cancel within seconds, every step kind (issue 22, item 2): a worker computing a large step of each kind --
dataset ingestion, extractor training, extraction, an attack, recommender training, an evaluation, the
report -- stops within 5 s of the cancel and stores nothing. Steps that call their progress callback stop at
their next check; the others (a demo catalog being drawn, a report being built) are interrupted by the
worker's cancel watcher. Each step runs as a worker runs it (celery_executor.run_step) on a real record."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from advrec.pipeline import celery_executor as ce
from advrec.pipeline import jobs
from advrec.pipeline.dag import Plan
from advrec.pipeline.record import RunRecord
from advrec_common.settings import Settings
from advrec_common.store import ArtifactStore

from .conftest import TINY_SPEC

pytestmark = [pytest.mark.stack, pytest.mark.timeout(300)]


def _variant(kind: str, plan: Plan) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(name of the tiny run's step of ``kind``, params of a large variant, its inputs)."""
    orig = next(s for s in plan if s.kind == kind and (kind != "evaluate" or s.params.get("mode") == "retrain"))
    p = dict(orig.params)
    large = {
        "dataset": {"n_items": 20_000, "n_users": 200},  # drawing 20,000 product images (~40 s)
        "extractor": {"demo_images_per_class": 2_000, "epochs": 40},  # 20,000 images, 40 passes
        # 3,000 images at 128 px (the "dataset#mid" catalog), 256 a batch: one forward pass of a batch is not
        # interruptible, so the bound is a batch's time (here ~2 s; ResNet-50 at 224 px on 2 cores: ~18 s)
        "features": {"image_size": 128},
        "attack_shard": {"method": "pgd", "steps": 100_000},
        "train": {"config": {**p.get("config", {}), "epochs": 20_000, "patience": 0}},
        "evaluate": {"config": {**p.get("config", {}), "epochs": 20_000, "patience": 0}},
        "report": {"gallery_users": 20},  # of the wide run: 48 cells, 20 gallery users
    }[kind]
    return orig.name, {**p, **large}, orig.inputs


WIDE_SPEC = {**TINY_SPEC, "name": "wide", "attacks": [{"method": "fgsm", "eps": list(range(1, 33))},
                                                      {"method": "bim", "eps": list(range(1, 17))}],
             "modes": ["deployment"], "controls": [], "gallery_users": 1}


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory) -> Any:
    """A run with 48 attack cells (the report's input: 48 cells of tables, plots and gallery; its report
    takes 2-3 s here with everything imported)."""
    from advrec.pipeline.executor import run_inprocess
    from advrec.pipeline.spec import parse_spec

    home = tmp_path_factory.mktemp("wide")
    rec = run_inprocess(parse_spec(WIDE_SPEC), ArtifactStore(home / "store"), home / "runs", device="cpu",
                        show_progress=False)
    assert rec.read()["state"] == "done"
    return home, rec


@pytest.fixture
def home_with_inputs(request, tmp_path, redis_url):
    """A home whose store holds every artifact of the tiny run (the wide one for the report; hard links:
    instant), its settings, the run's plan."""
    import os

    kind = request.node.callspec.params["kind"]
    src_home, rec = request.getfixturevalue("wide_run" if kind == "report" else "tiny_run")
    home = tmp_path / "home"
    for path in (src_home / "store").rglob("*"):
        dst = home / "store" / path.relative_to(src_home / "store")
        if path.is_dir():
            dst.mkdir(parents=True, exist_ok=True)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, dst)
    return Settings(home=home, redis_url=redis_url, device="cpu"), Plan.from_json(rec.read()["plan"])


@pytest.mark.parametrize("kind", ["dataset", "extractor", "features", "attack_shard", "train", "evaluate", "report"])
def test_a_large_step_of_every_kind_stops_within_seconds_of_the_cancel(home_with_inputs, kind):
    settings, tiny = home_with_inputs
    store = ArtifactStore(settings.store_dir)
    name, params, inputs = _variant(kind, tiny)
    plan = Plan()
    for step in tiny:
        plan.add_stored(step.name, step.kind, step.key, step.params)
    if kind == "features":  # a catalog of 3,000 items to extract
        mid = plan.add("dataset#mid", "dataset", {**plan["dataset"].params, "n_items": 3_000, "n_users": 100})
        from advrec.pipeline.executor import execute_step

        execute_step(plan[mid], plan, store, "cpu")
        inputs = {**inputs, "dataset": mid}
    big = plan.add(f"{name}#large", kind, params, inputs) if kind != "dataset" else \
        plan.add("dataset#large", "dataset", params)
    assert not store.has(plan[big].key)
    rec = RunRecord.create(settings.runs_dir, {"name": "cancel"}, executor="celery")
    rec.set_plan(plan.to_json())
    rec.update(lambda d: [st.update(state="done") for n, st in d["steps"].items() if n != big])
    rec.update(lambda d: d["steps"][big].update(state="queued", task_id="t1"))

    outcome: list[str] = []
    worker = threading.Thread(target=lambda: outcome.append(ce.run_step(rec.run_id, big, task_id="t1",
                                                                        settings=settings)))
    worker.start()
    deadline = time.monotonic() + 120
    while rec.read()["steps"][big]["state"] != "running":
        assert time.monotonic() < deadline and worker.is_alive(), outcome
        time.sleep(0.05)
    time.sleep(0.3 if kind == "report" else 1.5)  # well inside the step's work (its loops, its progress checks)
    assert worker.is_alive(), f"the {kind} step finished before it was cancelled: not a large input"
    t0 = time.monotonic()
    jobs.cancel(rec.run_id, settings)
    worker.join(timeout=30)
    stopped_after = time.monotonic() - t0
    assert outcome == ["cancelled"], outcome
    assert stopped_after < 5, f"the {kind} step stopped {stopped_after:.1f} s after the cancel"
    assert rec.read()["steps"][big]["state"] == "cancelled" and not store.has(plan[big].key)
    print(f"{kind}: stopped {stopped_after:.2f} s after the cancel")
