"""A small spec end to end in-process: results, reuse, resume after a crash, reproducibility."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from advrec.pipeline.dag import plan
from advrec.pipeline.executor import plan_run, run_inprocess
from advrec.pipeline.record import RunRecord, list_runs
from advrec.pipeline.spec import load_spec, parse_spec
from advrec_common.errors import InvalidInput
from advrec_common.store import ArtifactStore

TINY = {
    "name": "tiny",
    "dataset": {"kind": "demo", "n_items": 80, "n_users": 80, "image_size": 32, "seed": 3},
    "extractors": [{"name": "standard", "demo_images_per_class": 20, "epochs": 2}],
    "attacks": [{"method": "fgsm", "eps": [8]}],
    "recommenders": [{"name": "vbpr", "config": {"epochs": 3}}],
    "ks": [5, 10],
    "shard_size": 40,
}


def _numbers(results: dict) -> dict:
    """results.json without wall-clock figures (everything else must reproduce exactly)."""

    def strip(o):
        if isinstance(o, dict):
            return {k: strip(v) for k, v in o.items() if "second" not in k and "per_s" not in k and k != "advrec_version"}
        if isinstance(o, list):
            return [strip(v) for v in o]
        return o

    return strip(results)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    store = ArtifactStore(home / "store")
    record = run_inprocess(parse_spec(TINY), store, home / "runs", show_progress=False)
    return home, store, record


def test_runs_end_to_end(first_run):
    home, store, record = first_run
    data = record.read()
    assert data["state"] == "done", data["error"]
    results = json.loads((record.dir / "report" / "results.json").read_text())
    assert results["schema_version"] == 2
    evals = results["evaluations"]
    assert {e["mode"] for e in evals} == {"retrain", "deployment"}
    assert {e["control"] for e in evals} == {"attack", "placebo", "oracle"}
    for e in evals:
        ks = [row["k"] for row in e["per_k"]]
        assert ks == [5, 10] and e["n_replicates"] == 3
        for row in e["per_k"]:
            m = row["chr"]
            assert 0.0 <= m["before"] <= 1.0 and 0.0 <= row["chr_count"]["before"] <= row["k"]
            assert len(m["before_per_replicate"]) == 3
            assert m["effect"] == pytest.approx(m["after"] - m["before"], abs=1e-12)
            assert m["p_adjusted"] is None or m["p_adjusted"] >= m["p_value"]  # BH never lowers a p-value
    assert results["tests"]["n_tests"] > 0
    # how each kind was computed (tests pin ADVREC_TORCH_THREADS=1): what to compare when two runs differ
    env = results["environment"]
    assert {"extractor", "features", "train", "evaluate", "adversarial", "attack_shard"} <= set(env["threads"])
    assert all(v == [1] for v in env["threads"].values()) and all(v == ["cpu"] for v in env["devices"].values())
    import torch

    assert env["torch"] == [torch.__version__] and env["cpu_isa"] == [torch.backends.cpu.get_cpu_capability()]
    html = (record.dir / "report" / "report.html").read_text()
    assert f"CPU kernels {torch.backends.cpu.get_cpu_capability()}" in html and "evaluate 1" in html
    assert (record.dir / "report" / "report.html").is_file()
    import pandas as pd

    long = pd.read_csv(record.dir / "report" / "tables" / "long.csv")
    parquet = pd.read_parquet(record.dir / "report" / "tables" / "long.parquet")
    assert len(long) == len(parquet) == sum(3 * len(e["per_k"]) for e in evals)  # chr, chr_count, ncdcg
    assert long["delta"].dtype.kind == "f" and long["significant"].dtype == bool
    assert list_runs(home / "runs")[0]["run_id"] == record.run_id


def test_second_run_recomputes_nothing(first_run):
    home, store, _ = first_run
    before = set(store.keys())
    record = run_inprocess(parse_spec(TINY), store, home / "runs", show_progress=False)
    steps = record.read()["steps"]
    assert steps and all(s["state"] == "cached" for s in steps.values())
    assert set(store.keys()) == before


def test_larger_grid_reuses_clean_work(first_run):
    home, store, _ = first_run
    bigger = {**TINY, "attacks": [{"method": "fgsm", "eps": [4, 8]}]}
    spec = parse_spec(bigger)
    p = plan_run(spec, store)
    reused = {s.name for s in p if store.has(s.key)}
    assert {"dataset", "extractor/standard", "features/standard", "train/standard/vbpr", "scenario"} <= reused
    assert "adversarial/standard/fgsm/eps8" in reused and "adversarial/standard/fgsm/eps4" not in reused


def test_crash_resumes_where_it_stopped(tmp_path, first_run):
    _, _, first = first_run
    store = ArtifactStore(tmp_path / "store")
    spec = parse_spec(TINY)
    rec = run_inprocess(spec, store, tmp_path / "runs", show_progress=False, stop_after=3)
    assert rec.read()["state"] == "interrupted"
    done_before = set(store.keys())
    resumed = run_inprocess(spec, store, tmp_path / "runs", run_id=rec.run_id, show_progress=False)
    data = resumed.read()
    assert data["state"] == "done"
    cached = {n for n, s in data["steps"].items() if s["state"] == "cached"}
    assert len(cached) >= 3 and done_before <= set(store.keys())
    # seeds reproduce: a fresh store gives the same numbers as the first run
    a = json.loads((first.dir / "report" / "results.json").read_text())
    b = json.loads((resumed.dir / "report" / "results.json").read_text())
    assert _numbers(a) == _numbers(b)


def test_invalid_spec_fails_before_any_work(tmp_path):
    bad = {**TINY, "ks": [0], "attacks": [{"method": "nope", "eps": [-1]}]}
    with pytest.raises(InvalidInput) as err:
        parse_spec(bad)
    msg = str(err.value)
    assert "ks" in msg and "eps" in msg
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text("name: x\nextractors: []\n")
    with pytest.raises(InvalidInput):
        load_spec(spec_file)
    assert not (tmp_path / "store").exists()


def test_presets_validate_and_plan_the_study_grid():
    spec = load_spec("demo")
    p = plan(spec, n_items=600)
    cells = [s for s in p if s.kind == "adversarial"]
    assert len(cells) == len(spec.extractors) * sum(len(a.eps) for a in spec.attacks)
    assert {s.kind for s in p} >= {"placebo", "oracle"}
    assert load_spec("study").attacks[-1].method == "cw"


def test_record_rejects_path_escape(tmp_path):
    with pytest.raises(InvalidInput):
        RunRecord(tmp_path, "../../etc")
    assert not Path(tmp_path / "etc").exists()


def test_example_specs_validate():
    root = Path(__file__).resolve().parents[2]
    for spec_file in sorted((root / "examples").glob("*.yaml")):
        spec = load_spec(spec_file)
        assert plan(spec, n_items=spec.dataset.n_items)["report"].deps


def test_cli_report_and_list_read_the_run(first_run, capsys, tmp_path):
    from advrec.cli import main

    home, _, record = first_run
    assert main(["report", record.run_id, "--home", str(home), "-o", str(tmp_path / "r.html")]) == 0
    out = capsys.readouterr().out
    assert "scenario:" in out and "CHR@" in out
    assert (tmp_path / "r.html").read_bytes() == (record.dir / "report" / "report.html").read_bytes()
    assert out.rstrip().endswith(f"report: {tmp_path / 'r.html'}")  # the copy -o wrote (it named the run's)
    assert main(["list", "--home", str(home)]) == 0
    assert record.run_id in capsys.readouterr().out
    assert main(["report", "no-such-run", "--home", str(home)]) == 2  # a clear error, not a traceback


def test_report_into_a_pipe_that_closes_stops_quietly(first_run):
    """`advrec report RUN | head`: the reader leaves before the tables are written. It printed "unexpected
    BrokenPipeError ... most likely a bug" and exited 1; it stops quietly with the status of a process
    SIGPIPE ended (141), as cat does. Deterministic: the pipe's read end is closed before the run starts."""
    import os
    import subprocess
    import sys

    home, _, record = first_run
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        for verb in (["report", record.run_id], ["list"]):  # a long output and a short one (flushed at exit)
            proc = subprocess.run([sys.executable, "-m", "advrec.cli", *verb, "--home", str(home)], stdout=write_end,
                                  stderr=subprocess.PIPE, timeout=120)
            assert (proc.returncode, proc.stderr.decode()) == (141, ""), verb
    finally:
        os.close(write_end)


def test_bprmf_is_a_clean_reference_never_an_evaluated_cell(first_run):
    """BPR-MF reads nothing about items: it is trained for the clean accuracy table (beside the visual
    recommenders it is the reference for) and gets no attack, placebo or oracle cells (before: the
    train step crashed building an empty item side)."""
    home, store, _ = first_run
    spec = parse_spec({**TINY, "recommenders": [{"name": "vbpr", "config": {"epochs": 3}},
                                                {"name": "bprmf", "config": {"epochs": 3}}]})
    p = plan(spec, 80)
    assert "train/-/bprmf" in {s.name for s in p}
    assert not [s.name for s in p if s.kind == "evaluate" and "/bprmf/" in s.name]
    record = run_inprocess(spec, store, home / "runs", show_progress=False)
    assert record.read()["state"] == "done", record.read()["error"]
    results = json.loads((record.dir / "report" / "results.json").read_text())
    assert {e["recommender"] for e in results["evaluations"]} == {"vbpr"}
    bpr = next(c for c in results["clean"] if c["recommender"] == "bprmf")
    assert not bpr["uses_extractor"] and 0.0 <= bpr["accuracy"]["auc"] <= 1.0
    import pandas as pd

    table = pd.read_csv(record.dir / "report" / "tables" / "clean_accuracy.csv")
    assert set(table.loc[table["recommender"] == "bprmf", "uses extractor"]) == {"no (interactions only)"}


def test_a_spec_with_only_bprmf_is_refused_before_any_work():
    with pytest.raises(InvalidInput, match=r"recommenders: no recommender reads anything about items \(bprmf\)"):
        parse_spec({**TINY, "recommenders": [{"name": "bprmf"}]})


def test_feature_match_is_pulled_toward_the_target_categorys_features(first_run):
    """The recommender-aware feature attack runs in a spec: the pipeline hands it the target category's
    clean features (it failed at the shard: 'feature_match needs target_features')."""
    home, store, _ = first_run
    spec = parse_spec({**TINY, "attacks": [{"method": "feature_match", "eps": [8], "steps": 3}],
                       "modes": ["deployment"], "replicates": 1, "controls": []})
    record = run_inprocess(spec, store, home / "runs", show_progress=False)
    assert record.read()["state"] == "done", record.read()["error"]
    results = json.loads((record.dir / "report" / "results.json").read_text())
    summary = results["attacks"][0]["summary"]
    assert summary["n_attacked"] > 0 and summary["feat_mse"] > 0


@pytest.mark.parametrize(("attacks", "message"), [
    ([{"method": "score", "eps": [8]}], "a spec cannot supply"),
    ([{"method": "fgsm", "eps": [8], "delivery": "jpeg"}, {"method": "fgsm", "eps": [4, 8], "delivery": "float"}],
     r"attacks\[1\]: fgsm at eps 8 is already attacks\[0\]"),
])
def test_attack_grids_that_cannot_run_as_written_are_refused(attacks, message):
    """Two grids with the same method and eps would share one cell (one of them silently lost); 'score'
    needs a Python score function."""
    with pytest.raises(InvalidInput, match=message):
        parse_spec({**TINY, "attacks": attacks})


def test_parallel_steps_give_the_sequential_numbers_and_a_failure_names_its_step(tmp_path, first_run):
    """``jobs=2``: ready steps run in two worker processes, with exactly the numbers of the sequential
    run (every step is a function of its inputs, with its pinned thread count). A step that fails in
    a worker fails the run at that step, with its error and log, and leaves no step "running"."""
    import shutil

    from advrec.pipeline.executor import ERROR_LOG

    _, _, first = first_run
    store = ArtifactStore(tmp_path / "store")
    spec = parse_spec(TINY)
    record = run_inprocess(spec, store, tmp_path / "runs", show_progress=False, jobs=2)
    data = record.read()
    assert data["state"] == "done" and {s["state"] for s in data["steps"].values()} <= {"done", "cached"}
    assert all(s["seconds"] is not None for s in data["steps"].values())
    a = json.loads((first.dir / "report" / "results.json").read_text())
    b = json.loads((record.dir / "report" / "results.json").read_text())
    assert _numbers(a) == _numbers(b)

    # a corrupted input: the scenario's file unreadable, the steps that read it to be computed again
    p = plan_run(spec, store)
    (store.open(p["scenario"].key) / "scenario.json").write_text("{not json")
    readers = [s for s in p if s.kind in ("evaluate", "oracle", "report")]
    for s in readers:
        shutil.rmtree(store.path(s.key))
    failed = tmp_path / "runs-failed"
    with pytest.raises(json.JSONDecodeError):  # the worker's error, raised in the parent
        run_inprocess(spec, store, failed, show_progress=False, jobs=2)
    rec = list_runs(failed)[0]
    data = RunRecord.open(failed, rec["run_id"]).read()
    assert data["state"] == "failed" and data["failed_step"] in {s.name for s in readers}
    assert data["steps"][data["failed_step"]]["state"] == "failed" and "JSONDecodeError" in data["error"]
    assert "running" not in {s["state"] for s in data["steps"].values()}
    assert (failed / rec["run_id"] / ERROR_LOG).is_file()
