"""Managing runs from the CLI: the run id first, Ctrl-C, resume (same spec, read from the run, changed,
unknown), failures as one paragraph with a log, ``advrec show`` / ``list`` / ``init``, and progress
reported by the steps in their own units."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import yaml

from advrec.cli import main
from advrec.pipeline import steps as steps_module
from advrec.pipeline.executor import execute_step, plan_run
from advrec.pipeline.record import RunRecord
from advrec.pipeline.spec import parse_spec
from advrec_common.errors import InvalidInput
from advrec_common.store import ArtifactStore

TINY = {
    "name": "tiny",
    "dataset": {"kind": "demo", "n_items": 60, "n_users": 60, "image_size": 32, "seed": 5},
    "extractors": [{"name": "standard", "demo_images_per_class": 10, "epochs": 1}],
    "attacks": [{"method": "fgsm", "eps": [8]}],
    "recommenders": [{"name": "vbpr", "config": {"epochs": 2}}],
    "ks": [5],
    "modes": ["deployment"],
    "shard_size": 30,
    "gallery_users": 0,
}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    (home / "spec.yaml").write_text(yaml.safe_dump(TINY))
    return home


def _run(home: Path, *args: str) -> int:
    return main(["run", *args, "--home", str(home), "--quiet"])


def _run_id(out: str) -> str:
    first = out.strip().splitlines()[0]
    assert first.startswith("run ") and (" started " in first or " resuming " in first), first
    return first.split()[1]


def test_ctrl_c_marks_the_run_interrupted_and_prints_how_to_resume(home, capsys, monkeypatch):
    def interrupted(ctx):
        raise KeyboardInterrupt  # what Ctrl-C raises inside a step

    monkeypatch.setitem(steps_module.STEP_FUNCTIONS, "train", interrupted)
    assert _run(home, str(home / "spec.yaml")) == 130
    out, err = capsys.readouterr()
    run_id = _run_id(out)  # printed before any work
    assert f"advrec run --resume {run_id}" in err and "Traceback" not in err
    record = RunRecord.open(home / "runs", run_id).read()
    assert record["state"] == "interrupted" and record["interrupted_step"] == "train/standard/vbpr"
    assert record["steps"]["train/standard/vbpr"]["state"] == "interrupted"
    assert record["steps"]["features/standard"]["state"] == "done"

    monkeypatch.undo()
    assert _run(home, "--resume", run_id) == 0  # no spec: the run's own
    out, _ = capsys.readouterr()
    assert _run_id(out) == run_id and f"run {run_id} done" in out
    record = RunRecord.open(home / "runs", run_id).read()
    assert record["state"] == "done" and record["steps"]["features/standard"]["state"] == "cached"
    home.joinpath("done_run").write_text(run_id)


def test_resume_with_another_spec_names_what_differs_and_touches_nothing(home, capsys):
    run_id = home.joinpath("done_run").read_text()
    report = home / "runs" / run_id / "report" / "results.json"
    before = report.read_bytes()
    changed = {**TINY, "attacks": [{"method": "fgsm", "eps": [4, 8]}], "ks": [3]}
    (home / "changed.yaml").write_text(yaml.safe_dump(changed))
    assert _run(home, str(home / "changed.yaml"), "--resume", run_id) == 2
    err = capsys.readouterr().err
    assert f"run {run_id} was started with another spec" in err
    assert "attacks[0].eps: [8.0] -> [4.0, 8.0]" in err and "ks[0]: 5 -> 3" in err
    assert report.read_bytes() == before
    assert _run(home, str(home / "spec.yaml"), "--resume", run_id) == 0  # the same spec resumes (nothing to do)
    capsys.readouterr()


def test_an_unknown_run_id_is_an_error_not_a_new_run(home, capsys):
    runs_before = sorted(p.name for p in (home / "runs").iterdir())
    assert _run(home, str(home / "spec.yaml"), "--resume", "typo") == 2
    err = capsys.readouterr().err
    assert "advrec: error: no run 'typo'" in err and "recent runs:" in err
    assert sorted(p.name for p in (home / "runs").iterdir()) == runs_before


def test_an_unexpected_error_is_one_paragraph_with_the_run_id_and_its_log(home, capsys, monkeypatch):
    def bug(ctx):
        return 1 / 0

    monkeypatch.setitem(steps_module.STEP_FUNCTIONS, "scenario", bug)
    spec = {**TINY, "seed": 1}  # another seed: the scenario is not in the store yet
    (home / "seed1.yaml").write_text(yaml.safe_dump(spec))
    assert _run(home, str(home / "seed1.yaml")) == 1
    out, err = capsys.readouterr()
    run_id = _run_id(out)
    log = home / "runs" / run_id / "error.log"
    assert f"run {run_id} failed at step scenario with an unexpected ZeroDivisionError" in err
    assert str(log) in err and "--debug" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "Traceback" in log.read_text() and "ZeroDivisionError" in log.read_text()
    with pytest.raises(ZeroDivisionError):  # --debug: the traceback
        main(["run", "--resume", run_id, "--home", str(home), "--quiet", "--debug"])
    capsys.readouterr()

    assert main(["list", "--home", str(home)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(run_id))
    assert "failed" in row and "ZeroDivisionError: division by zero" in row

    assert main(["show", run_id, "--home", str(home)]) == 0
    shown = capsys.readouterr().out
    assert "state    failed (at step scenario)" in shown and "error    ZeroDivisionError" in shown
    assert str(log) in shown and f"resume   advrec run --resume {run_id}" in shown
    assert "features" in shown and "time per step kind" in shown

    monkeypatch.undo()  # the bug fixed: resuming the failed run finishes it and clears the failure
    assert main(["run", "--resume", run_id, "--home", str(home), "--quiet"]) == 0
    capsys.readouterr()
    record = RunRecord.open(home / "runs", run_id).read()
    assert record["state"] == "done" and record["error"] is None and record["failed_step"] is None


def test_a_user_mistake_inside_a_step_is_a_typed_error(home, capsys, monkeypatch):
    def mistake(ctx):
        raise InvalidInput("scenario.origin 'x' is not a category")

    monkeypatch.setitem(steps_module.STEP_FUNCTIONS, "scenario", mistake)
    (home / "seed2.yaml").write_text(yaml.safe_dump({**TINY, "seed": 2}))
    assert _run(home, str(home / "seed2.yaml")) == 2
    out, err = capsys.readouterr()
    assert f"advrec: error: run {_run_id(out)} failed at step scenario: scenario.origin 'x'" in err


def test_show_reads_a_gateway_job_through_the_client(home, capsys, monkeypatch):
    status = {"id": "job-1", "name": "tiny", "state": "done", "created": 0.0, "updated": 60.0, "error": None,
              "progress": {"done": 2, "total": 2}, "spec": TINY,
              "steps": {"dataset": {"state": "done", "kind": "dataset", "seconds": 1.5},
                        "attack/standard/fgsm/eps8/shard0": {"state": "done", "kind": "attack_shard", "seconds": 30.0}}}

    class FakeClient:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def status(self, job_id):
            assert job_id == "job-1"
            return status

    import advrec.commands.client as client_commands

    monkeypatch.setattr(client_commands, "client_from_args", lambda args: FakeClient())
    assert main(["show", "job-1", "--server", "http://gw:8000", "--home", str(home)]) == 0
    out = capsys.readouterr().out
    assert "job of http://gw:8000" in out and "attack_shard" in out and "95%" in out
    assert "advrec download job-1 -o report.html" in out


def test_init_writes_a_commented_spec_that_validates(tmp_path, capsys):
    import runpy

    sample = runpy.run_path(str(Path(__file__).resolve().parents[2] / "examples" / "own_catalog" / "make_sample.py"))
    paths = sample["write_sample_catalog"](tmp_path / "shop", n_items=30, n_users=40, image_size=32)
    spec = tmp_path / "advrec.yaml"
    assert main(["init", str(spec), "--images", str(paths["images_dir"]), "--interactions", str(paths["interactions"]),
                 "--categories", str(paths["categories"]), "--name", "shop"]) == 0
    text = spec.read_text()
    assert "user: customer" in text and "item: sku" in text and "category: department" in text
    assert "your labels: Accessories, Apparel, Footwear" in text
    assert text.count("#") > 40  # every knob explained
    assert "replicates: 3" in text and "controls: [placebo, oracle]" in text  # the evidence knobs are visible
    assert main(["run", str(spec), "--validate", "--home", str(tmp_path / "h")]) == 0
    assert "spec 'shop' is valid" in capsys.readouterr().out
    assert main(["init", str(spec)]) == 2  # never overwrites without --force
    # without labels: no extractor that must learn them, and the spec still validates
    bare = tmp_path / "bare.yaml"
    assert main(["init", str(bare), "--images", str(paths["images_dir"]), "--interactions",
                 str(paths["interactions"])]) == 0
    assert "source: train" not in bare.read_text().replace("(source: train", "")
    assert main(["run", str(bare), "--validate", "--home", str(tmp_path / "h")]) == 0
    capsys.readouterr()
    # where it cannot write: a user error naming the path, not an "unexpected" bug
    missing = tmp_path / "no" / "such" / "x.yaml"
    assert main(["init", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"advrec: error: {missing}: No such file or directory") and "bug" not in err
    assert main(["init", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_init_maps_the_time_column_by_its_values_and_validation_says_when_none_is(tmp_path, capsys):
    """A shop export whose time column has a name of its own (purchased_at, fecha), rows newest first: init
    maps it, so each user's test item is the latest purchase; a spec without it validates with a warning
    that the test item is the last row in file order and which column holds the times (it said nothing)."""
    import runpy

    sample = runpy.run_path(str(Path(__file__).resolve().parents[2] / "examples" / "own_catalog" / "make_sample.py"))
    paths = sample["write_sample_catalog"](tmp_path / "shop", n_items=30, n_users=40, image_size=16)
    header, *rows = paths["interactions"].read_text().splitlines()
    assert header == "customer;sku;bought_at"
    export = tmp_path / "shop" / "export.csv"
    export.write_text("customer;sku;purchased_at\n" + "\n".join(reversed(rows)) + "\n")  # newest first
    spec = tmp_path / "shop.yaml"
    args = ["--images", str(paths["images_dir"]), "--interactions", str(export)]
    assert main(["init", str(spec), *args]) == 0
    assert "    timestamp: purchased_at " in spec.read_text()
    assert main(["run", str(spec), "--validate", "--home", str(tmp_path / "h")]) == 0
    assert "file order" not in capsys.readouterr().err

    spec.write_text(spec.read_text().replace("    timestamp: purchased_at", "    # timestamp: purchased_at"))
    assert main(["run", str(spec), "--validate", "--home", str(tmp_path / "h")]) == 0
    err = capsys.readouterr().err
    assert f"advrec: warning: dataset.interactions: {export}:1: no timestamp column is mapped, so each user's " \
           "held-out test item is the last row in file order" in err
    assert "column 'purchased_at' holds times: name it (columns.timestamp" in err

    # by its values alone: epoch milliseconds under a Spanish name; a quantity column is no time
    fecha = tmp_path / "shop" / "fecha.csv"
    fecha.write_text("cliente,sku,cantidad,fecha\n" + "".join(
        f"c{i % 7},SKU{i % 30:04d},{i % 3 + 1},{1_700_000_000_000 + 3_600_000 * i}\n" for i in range(60)))
    assert main(["init", "-", "--images", str(paths["images_dir"]), "--interactions", str(fecha)]) == 0
    assert "    timestamp: fecha " in capsys.readouterr().out
    # a column named like a time whose values are not dates the loader reads: said, not mapped
    us = tmp_path / "shop" / "us.csv"
    us.write_text("customer,sku,order_date\n" + "".join(f"c{i % 7},SKU{i:04d},05/0{i % 9 + 1}/2024\n" for i in range(30)))
    assert main(["init", "-", "--images", str(paths["images_dir"]), "--interactions", str(us)]) == 0
    out = capsys.readouterr().out
    assert "timestamp: order_date" not in out and "column 'order_date' looks like a time, but values such as " \
                                                     "'05/01/2024' are neither ISO 8601 dates" in out


def test_spec_paths_are_read_from_the_spec_files_folder(tmp_path, monkeypatch, capsys):
    """The walkthrough's spec names shop/images etc.: run from another folder it found nothing ("image folder
    does not exist"), relative to the current folder. Now relative paths are the spec file's; init writes
    them so, from wherever it runs."""
    import runpy
    import shutil

    root = Path(__file__).resolve().parents[2] / "examples" / "own_catalog"
    project = tmp_path / "project"
    runpy.run_path(str(root / "make_sample.py"))["write_sample_catalog"](project / "shop", n_items=30, n_users=40,
                                                                          image_size=16)
    shutil.copy(root / "spec.yaml", project / "spec.yaml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["run", "../project/spec.yaml", "--validate", "--home", str(tmp_path / "h")]) == 0, \
        capsys.readouterr().err
    assert "spec 'shop' is valid (n_items 30" in capsys.readouterr().out
    from advrec.pipeline.spec import read_spec_document

    dataset = read_spec_document("../project/spec.yaml")["dataset"]
    assert dataset["images_dir"] == str(project / "shop" / "images")  # absolute in the run's record
    assert read_spec_document("../project/spec.yaml", paths_from_file=False)["dataset"]["images_dir"] == "shop/images"

    # init from one folder into another: the paths it writes are the spec's, and it validates from a third
    monkeypatch.chdir(project)
    (project / "specs").mkdir()
    assert main(["init", "specs/shop.yaml", "--images", "shop/images", "--interactions", "shop/interactions.csv",
                 "--categories", "shop/categories.csv"]) == 0
    assert "images_dir: ../shop/images " in (project / "specs" / "shop.yaml").read_text()
    monkeypatch.chdir(elsewhere)
    assert main(["run", str(project / "specs" / "shop.yaml"), "--validate", "--home", str(tmp_path / "h")]) == 0


def test_one_home_per_user_whatever_the_folder(tmp_path, monkeypatch, capsys):
    """Runs and trained extractors lived in ./.advrec of the current folder, so `advrec list` elsewhere showed
    nothing. The default home is one per user ($XDG_DATA_HOME/advrec, else ~/.local/share/advrec);
    ADVREC_HOME overrides it; a folder's old .advrec is pointed at, not silently ignored."""
    from advrec.pipeline.record import RunRecord
    from advrec_common.settings import Settings, get_settings

    monkeypatch.delenv("ADVREC_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    get_settings.cache_clear()
    assert get_settings().home == tmp_path / "xdg" / "advrec"
    run_id = RunRecord.create(get_settings().runs_dir, {"name": "shop"}).run_id
    for folder in ("a", "b/c"):
        (tmp_path / folder).mkdir(parents=True)
        monkeypatch.chdir(tmp_path / folder)
        assert main(["list"]) == 0 and run_id in capsys.readouterr().out
        assert main(["show", run_id]) == 0 and "name     shop" in capsys.readouterr().out
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert Settings().home == tmp_path / "user" / ".local" / "share" / "advrec"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/xdg")  # the XDG spec: ignored unless absolute
    assert Settings().home == tmp_path / "user" / ".local" / "share" / "advrec"
    monkeypatch.setenv("ADVREC_HOME", str(tmp_path / "team"))
    assert Settings().home == tmp_path / "team"

    monkeypatch.delenv("ADVREC_HOME")  # a folder with runs of the per-folder home of earlier versions
    get_settings.cache_clear()
    RunRecord.create(tmp_path / "a" / ".advrec" / "runs", {"name": "old"})
    monkeypatch.chdir(tmp_path / "a")
    assert main(["list"]) == 0
    assert "./.advrec here is a per-folder home of an earlier advrec" in capsys.readouterr().out
    assert main(["report", "20250101-000000-old-abcdef"]) == 2
    assert "`--home .advrec` reads it" in capsys.readouterr().err


def test_the_tests_never_write_into_the_users_home():
    """Every test (and every process one starts) works in a temporary home unless it names another."""
    from advrec_common.settings import get_settings

    home = get_settings().home.resolve()
    assert not home.is_relative_to(Path.home().resolve() / ".local" / "share" / "advrec")
    assert home.is_relative_to(Path(tempfile.gettempdir()).resolve())


def test_steps_report_progress_in_their_own_units(tmp_path):
    from services.attacker.artifacts import load_adversarial

    spec = parse_spec({**TINY, "modes": ["retrain"]})
    store = ArtifactStore(tmp_path / "store")
    p = plan_run(spec, store, "cpu")
    seen: dict[str, set[str]] = {}
    totals: dict[str, int] = {}
    for step in p:
        def progress(info, step=step):
            seen.setdefault(step.kind, set()).add(f"{info['unit']}:{info['total']}")
            totals[step.name] = info["total"]

        execute_step(step, p, store, "cpu", progress=progress)
    assert seen["extractor"] == {"passes:1"}  # one epoch of demo training
    assert seen["features"] == {"images:60"}
    epochs_of_all_replicates = f"epochs:{2 * spec.replicates}"  # R seeds, 2 epochs each
    assert spec.replicates > 1
    assert seen["train"] == {epochs_of_all_replicates} and seen["evaluate"] == {epochs_of_all_replicates}
    assert {u.split(":")[0] for u in seen["attack_shard"]} == {"images"}
    attacked = load_adversarial(store, p["adversarial/standard/fgsm/eps8"].key, arrays=False).summary["n_attacked"]
    assert sum(n for name, n in totals.items() if name.startswith("attack/")) == attacked > 0


def test_progress_counts_work_units_when_every_step_has_an_estimate():
    """Hand-made record: a 1-unit step done, a 1000-unit attack half way, a 99-unit step pending -> the
    work fraction is (1 + 500) / 1100 while the step count says 1 of 3; without estimates, no work."""
    from advrec.pipeline.record import progress_of

    steps = {"dataset": {"state": "done", "units": 1.0},
             "attack/x": {"state": "running", "units": 1000.0, "progress": {"done": 32, "total": 64, "unit": "images"}},
             "report": {"state": "pending", "units": 99.0}}
    p = progress_of({"steps": steps})
    assert (p["done"], p["total"], p["running"]) == (1, 3, ["attack/x"])
    assert p["work"]["total"] == 1100.0 and p["work"]["fraction"] == pytest.approx(501 / 1100)
    steps["attack/x"]["progress"] = {"epoch": 3}  # a progress without done/total counts nothing yet
    assert progress_of({"steps": steps})["work"]["done"] == 1.0
    del steps["report"]["units"]
    assert progress_of({"steps": steps})["work"] is None


def test_progress_of_a_finished_run_is_exactly_one():
    """Ten 0.1-unit steps, all done: the work fraction is 1.0, not 0.9999999999999999 (on Python 3.12
    sum() compensates rounding, so a total by sum() and a done count by += differed by an ulp)."""
    from advrec.pipeline.record import progress_of

    steps = {f"attack/{i}": {"state": "done", "units": 0.1} for i in range(10)}
    steps["report"] = {"state": "cached", "units": 0}
    work = progress_of({"steps": steps})["work"]
    assert work["fraction"] == 1.0 and work["done"] == work["total"]


def test_remote_eta_prices_remaining_work_per_step_kind():
    """Hand-made record: attack shards cost 0.01 s/unit (one finished in 10 s), the dataset 0.1 s/unit; an
    unmeasured kind takes the overall rate 11/1010; the parallelism seen so far divides the total."""
    from advrec.pipeline.record import eta_of, progress_of

    now = 1000.0
    steps = {"dataset": {"state": "done", "units": 10.0, "seconds": 1.0, "started": now - 20},
             "attack/a": {"state": "done", "units": 1000.0, "seconds": 10.0, "started": now - 19},
             "attack/b": {"state": "running", "units": 1000.0, "started": now - 5,
                          "progress": {"done": 32, "total": 64, "unit": "images"}},
             "train/x": {"state": "pending", "units": 100.0}}
    plan = [{"name": "dataset", "kind": "dataset"}, {"name": "attack/a", "kind": "attack_shard"},
            {"name": "attack/b", "kind": "attack_shard"}, {"name": "train/x", "kind": "train"}]
    serial = 500 * 0.01 + 100 * 11 / 1010
    # 16 compute seconds in 20 wall seconds: no parallelism to credit (at least 1)
    assert eta_of({"steps": steps, "plan": plan}, now) == pytest.approx(serial)
    assert progress_of({"steps": steps, "plan": plan}, now)["work"]["eta_seconds"] == pytest.approx(serial)
    for st in steps.values():  # the same work done by two workers in 8 wall seconds: twice as fast
        if "started" in st:
            st["started"] = max(st["started"], now - 8)
    assert eta_of({"steps": steps, "plan": plan}, now) == pytest.approx(serial / ((1 + 10 + 5) / 8))
    # nothing computed yet (reused or pending): no ETA rather than a guess
    fresh = {"a": {"state": "cached", "units": 5.0}, "b": {"state": "pending", "units": 5.0}}
    assert eta_of({"steps": fresh}, now) is None


def test_home_flag_reaches_the_steps_settings(tmp_path, capsys):
    """`--home` is process-wide: a step reads the home's thread choice and weights folder through
    get_settings(), so the flag must not stop at the command's own settings copy."""
    from advrec_common.settings import get_settings

    assert main(["list", "--home", str(tmp_path / "h")]) == 0
    assert get_settings().home == tmp_path / "h"
    assert get_settings().resolved_weights_dir == tmp_path / "h" / "weights"


@pytest.mark.skipif(__import__("os").path.exists("/proc/driver/nvidia/version"), reason="needs a machine without a GPU")
def test_demo_refuses_a_missing_device_before_recording_a_run(tmp_path, capsys):
    assert main(["demo", "--device", "cuda", "--home", str(tmp_path / "h"), "--quiet"]) == 2
    assert "--device: device 'cuda' was asked for" in capsys.readouterr().err
    assert not (tmp_path / "h" / "runs").exists()  # nothing started, nothing to resume


def test_show_lists_what_the_checks_before_the_run_noticed(home, capsys):
    noted = {**TINY, "seed": 3, "dataset": {**TINY["dataset"], "kcore": 5}}  # kcore: generic datasets only
    (home / "noted.yaml").write_text(yaml.safe_dump(noted))
    assert _run(home, str(home / "noted.yaml")) == 0
    out, err = capsys.readouterr()
    assert "warning: dataset.kcore: ignored" in err
    assert main(["show", _run_id(out), "--home", str(home)]) == 0
    assert "warning  dataset.kcore: ignored: dataset kind 'demo' does not read it" in capsys.readouterr().out


@pytest.mark.parametrize("value", ["0", "65", "two"])
def test_jobs_out_of_range_is_a_usage_error(value, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--jobs", value])
    assert exit_.value.code == 2 and "--jobs" in capsys.readouterr().err


def _like_a_terminal_child() -> None:
    """preexec_fn: SIGINT at its default and unblocked, as in a program started from a terminal, whatever
    the test runner inherited (a runner started in the background of a script has SIGINT ignored, and
    an ignored signal stays ignored across exec: the run would then never see the Ctrl-C)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_ctrl_c_with_parallel_steps_stops_the_workers_without_a_traceback(tmp_path):
    """A real SIGINT to ``advrec run --jobs 2`` (the process group, as a terminal sends it): exit 130,
    the resume hint, no traceback from the parent or the workers, and no step left "running"."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    spec = {**TINY, "seed": 11, "extractors": [{"name": "standard", "demo_images_per_class": 30, "epochs": 40}]}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    home = tmp_path / "home"
    proc = subprocess.Popen([sys.executable, "-m", "advrec.cli", "run", str(tmp_path / "spec.yaml"), "--home",
                             str(home), "--quiet", "--jobs", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, cwd=Path(__file__).resolve().parents[2],
                            preexec_fn=_like_a_terminal_child)
    deadline = time.monotonic() + 120
    record = None
    while time.monotonic() < deadline and record is None and proc.poll() is None:  # until the extractor trains
        time.sleep(0.5)
        for path in (home / "runs").glob("*/record.json") if (home / "runs").is_dir() else []:
            data = json.loads(path.read_text())
            if data["steps"].get("extractor/standard", {}).get("state") == "running":
                record = path
    assert record is not None, proc.communicate(timeout=60)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "advrec run --resume" in err and "Traceback" not in err, err
    data = json.loads(record.read_text())
    assert data["state"] == "interrupted" and "running" not in {s["state"] for s in data["steps"].values()}


def test_a_killed_worker_fails_its_step_instead_of_hanging(tmp_path):
    """SIGKILL of the worker process computing a step (what the OOM killer does): the run fails at that
    step with a clear message within seconds (a process pool would wait for its result forever)."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    spec = {**TINY, "seed": 12, "extractors": [{"name": "standard", "demo_images_per_class": 60, "epochs": 500}]}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    home = tmp_path / "home"
    proc = subprocess.Popen([sys.executable, "-m", "advrec.cli", "run", str(tmp_path / "spec.yaml"), "--home",
                             str(home), "--quiet", "--jobs", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=Path(__file__).resolve().parents[2])
    deadline, record = time.monotonic() + 120, None
    while time.monotonic() < deadline and record is None and proc.poll() is None:
        time.sleep(0.5)
        for path in (home / "runs").glob("*/record.json") if (home / "runs").is_dir() else []:
            if json.loads(path.read_text())["steps"].get("extractor/standard", {}).get("state") == "running":
                record = path
    assert record is not None, proc.communicate(timeout=60)
    time.sleep(1)  # the worker is training (500 epochs: minutes)
    children = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    workers = [pid for pid in children if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert workers
    for pid in workers:  # the pool's workers (one of them computes the extractor)
        os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, (out, err)
    assert "failed at step extractor/standard" in err and "worker process died" in err, err
    assert "Traceback" not in err, err
    data = json.loads(record.read_text())
    assert data["state"] == "failed" and data["failed_step"] == "extractor/standard"
    assert "running" not in {s["state"] for s in data["steps"].values()}


def test_a_ctrl_c_while_a_worker_starts_is_delivered_not_lost():
    """While a worker process is spawned SIGINT is blocked in the spawning thread (the child inherits
    the mask and ignores Ctrl-C before unblocking it); a Ctrl-C in that window still reaches this
    process: pending until the mask is restored, or through another thread of the process, whose
    handler then runs in the main thread a moment later (so the test waits for it, with its own
    handler: a late KeyboardInterrupt must not escape into pytest)."""
    import os
    import signal
    import time

    from advrec.pipeline.executor import _blocking_sigint

    received: list[int] = []

    def spawn_window():
        os.kill(os.getpid(), signal.SIGINT)
        return "spawned"

    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        assert _blocking_sigint(spawn_window) == "spawned"
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert received == [signal.SIGINT]  # delivered once, not lost
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())  # the mask is restored


_FIRST_SPAWN = """
import multiprocessing, signal, time
from advrec.pipeline.executor import _blocking_sigint

def start():
    proc = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(0.5,))
    proc.start()  # the first spawn of this process: multiprocessing launches its resource tracker here
    parent = signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    status = open(f"/proc/{proc.pid}/status").read()
    child = int(next(ln for ln in status.splitlines() if ln.startswith("SigBlk:")).split()[1], 16)
    return proc, parent, bool(child & (1 << (signal.SIGINT - 1)))

if __name__ == "__main__":
    proc, parent, child = _blocking_sigint(start)
    proc.join()
    print(parent, child)
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the child's signal mask from /proc")
def test_the_first_worker_of_a_process_is_spawned_with_ctrl_c_blocked(tmp_path):
    """The cause of the flaky Ctrl-C test (issue 23, item 13): the first spawn of a process launches
    multiprocessing's resource tracker, which unblocks SIGINT when it is done, inside the window where
    SIGINT must stay blocked; the first worker then started with Ctrl-C deliverable and a Ctrl-C during
    its start-up killed it with a traceback. In a fresh interpreter (no tracker yet), SIGINT stays
    blocked in the parent for the whole window and the spawned child inherits it blocked."""
    import subprocess
    import sys

    script = tmp_path / "first_spawn.py"
    script.write_text(_FIRST_SPAWN)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"], out.stdout  # parent blocked, child inherited the block


def test_show_says_when_steps_ran_at_once():
    """With --jobs > 1 the steps' seconds add up to more than the run's wall time: show says so, not
    a sequential run."""
    from advrec.commands.show import describe

    steps = {f"evaluate/{i}": {"state": "done", "kind": "evaluate", "seconds": 50.0} for i in range(4)}
    parallel = describe({"run_id": "r", "state": "done", "created": 1000.0, "updated": 1110.0, "steps": steps})
    assert "(steps ran at once: their 200 s of compute took 110 s of wall time)" in parallel
    sequential = describe({"run_id": "r", "state": "done", "created": 1000.0, "updated": 1205.0, "steps": steps})
    assert "ran at once" not in sequential
