"""``--jobs auto``: the rule on hand-made measurements, the /proc parsers on hand-made files, the CLI's choice."""

from __future__ import annotations

import pytest

from advrec.pipeline.parallelism import (
    WORKER_MEMORY_BYTES,
    available_memory,
    choose_jobs,
    idle_cpus_between,
)

GB = 1024**3


def _stat(idle: int, busy: int, n_cpus: int = 2) -> str:
    """A /proc/stat text whose total line has ``busy`` user ticks and ``idle`` idle ticks."""
    cpus = "".join(f"cpu{i} 1 0 0 1 0 0 0 0 0 0\n" for i in range(n_cpus))
    return f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\n{cpus}intr 1 2 3\nctxt 99\n"


def test_idle_cpus_are_the_idle_share_of_the_sample_times_the_cpus():
    # 200 ticks of 2 CPUs elapsed: 190 idle -> 1.9 CPUs idle; 100 idle -> 1.0 (one CPU busy all along)
    assert idle_cpus_between(_stat(1000, 500), _stat(1190, 510)) == pytest.approx(1.9)
    assert idle_cpus_between(_stat(1000, 500), _stat(1100, 600)) == pytest.approx(1.0)
    # iowait counts as idle (the CPU could run a step); no time elapsed or no total line: unknown
    with_iowait = "cpu  10 0 0 100 50 0 0 0 0 0\ncpu0 1\ncpu1 1\n"
    assert idle_cpus_between("cpu  10 0 0 100 0 0 0 0 0 0\ncpu0 1\ncpu1 1\n", with_iowait) == pytest.approx(2.0)
    assert idle_cpus_between(_stat(1000, 500), _stat(1000, 500)) is None
    assert idle_cpus_between("intr 1\n", _stat(1, 1)) is None


def test_available_memory_reads_memavailable():
    assert available_memory("MemTotal: 100 kB\nMemFree: 10 kB\nMemAvailable:   2048 kB\n") == 2048 * 1024
    assert available_memory("MemTotal: 100 kB\n") is None


@pytest.mark.parametrize(("cpus", "idle", "mem", "device", "jobs"), [
    (2, 1.95, 20 * GB, "cpu", 2),      # an idle 2-core machine: two steps at once
    (2, 1.0, 20 * GB, "cpu", 1),       # another process keeps one core busy: one
    (2, 1.8, 20 * GB, "cpu", 2),       # 80 % idle counts as free
    (2, 1.7, 20 * GB, "cpu", 1),       # 70 % does not
    (2, 0.1, 20 * GB, "cpu", 1),       # a saturated machine still runs one step
    (16, 15.9, 20 * GB, "cpu", 8),     # memory caps it: 20 GB / 2.5 GB per worker
    (16, 15.9, 1 * GB, "cpu", 1),      # little memory: one
    (4, 3.99, None, "cpu", 4),         # memory unknown: the CPUs decide
    (2, None, 20 * GB, "cpu", 1),      # idle time unknown (not Linux): one
    (2, 2.0, 20 * GB, "cuda:0", 1),    # a GPU: steps share it in one process
    (1, 8.0, 20 * GB, "cpu", 1),       # never more than the CPUs this process may use
])
def test_choose_jobs(cpus, idle, mem, device, jobs):
    choice = choose_jobs(cpus, idle, mem, device)
    assert choice.jobs == jobs
    assert choice.reason  # says why, printed by the CLI
    if idle is not None and not device.startswith("cuda"):
        assert f"{idle:.1f} of {cpus} CPUs idle" in choice.reason
    assert WORKER_MEMORY_BYTES == 2.5 * GB


def test_the_cli_says_what_auto_chose_and_an_explicit_count_wins(monkeypatch, tmp_path, capsys):
    """``advrec run --jobs auto`` prints the choice and its measurements, then runs with that many workers;
    ``--jobs 1`` (or ADVREC_JOBS=1) measures nothing."""
    import advrec.pipeline.parallelism as parallelism
    from advrec.pipeline.parallelism import JobsChoice

    seen = {}
    monkeypatch.setattr(parallelism, "auto_jobs", lambda device: JobsChoice(1, f"measured for {device}"))

    def fake_run(*args, **kwargs):  # stands in for the run: only the jobs it was given matter here
        seen.update(kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr("advrec.pipeline.executor.run_inprocess", fake_run)

    from advrec.cli import main

    spec = tmp_path / "spec.yaml"
    spec.write_text("extractors: [{name: standard, demo_images_per_class: 10, epochs: 1}]\n"
                    "attacks: [{method: fgsm, eps: [8]}]\nrecommenders: [{name: vbpr}]\n"
                    "dataset: {kind: demo, n_items: 40, n_users: 30, image_size: 32}\nks: [5]\n")
    assert main(["run", str(spec), "--home", str(tmp_path / "h"), "--jobs", "auto", "--device", "cpu"]) == 130
    assert seen["jobs"] == 1
    assert "steps at once: 1 (--jobs auto: measured for cpu; --jobs N sets it)" in capsys.readouterr().out
    monkeypatch.setattr(parallelism, "auto_jobs", lambda device: pytest.fail("measured although --jobs was given"))
    assert main(["run", str(spec), "--home", str(tmp_path / "h"), "--jobs", "2", "--quiet"]) == 130
    assert seen["jobs"] == 2
    monkeypatch.setenv("ADVREC_JOBS", "auto")
    monkeypatch.setattr(parallelism, "auto_jobs", lambda device: JobsChoice(2, "two idle"))
    assert main(["run", str(spec), "--home", str(tmp_path / "h"), "--quiet"]) == 130
    assert seen["jobs"] == 2  # the setting is the default of --jobs


def test_bad_settings_are_one_user_error_naming_every_variable(monkeypatch, capsys):
    """A malformed ADVREC_* value is an error listing each variable (no traceback), even when a command
    module reads the settings as it loads."""
    from advrec.cli import main
    from advrec_common.settings import get_settings

    monkeypatch.setenv("ADVREC_JOBS", "0")
    monkeypatch.setenv("ADVREC_TORCH_THREADS", "-1")
    get_settings.cache_clear()
    try:
        assert main(["list"]) == 2
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    err = capsys.readouterr().err
    assert err.startswith("advrec: error: invalid settings (environment variables):")
    assert "ADVREC_JOBS='0': Input should be greater than or equal to 1 or Input should be 'auto'" in err
    assert "ADVREC_TORCH_THREADS='-1'" in err and "Traceback" not in err


@pytest.mark.parametrize(("env", "says"), [
    ({"ADVREC_API_KEY_HASHES": "notjson"}, "ADVREC_API_KEY_HASHES: not valid JSON"),
    ({"ADVREC_KEY_QUOTAS": '{"x": {"bogus": 1}}'}, "ADVREC_KEY_QUOTAS (x.bogus)=<hidden>: Extra inputs"),
])
def test_settings_errors_name_the_variable_and_hide_secret_values(monkeypatch, env, says):
    from advrec_common.errors import InvalidInput
    from advrec_common.settings import get_settings

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        with pytest.raises(InvalidInput) as caught:
            get_settings()
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert says in str(caught.value)
    assert "bogus\": 1" not in str(caught.value)  # a value of a key-bearing variable is never echoed


def test_a_containers_cgroup_limits_cpus_and_memory(tmp_path):
    """A container sees the host's /proc: its cgroup's CPU quota and memory limit (v2 or v1) bound the jobs."""
    from advrec.pipeline.parallelism import cgroup_cpu_limit, cgroup_memory_available, usable_cpus

    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs
    (v2 / "memory.max").write_text(f"{6 * GB}\n")
    (v2 / "memory.current").write_text(f"{1 * GB}\n")
    assert cgroup_cpu_limit(v2) == 1.5 and cgroup_memory_available(v2) == 5 * GB
    assert usable_cpus(v2) <= 2
    (v2 / "cpu.max").write_text("max 100000\n")
    (v2 / "memory.max").write_text("max\n")
    assert cgroup_cpu_limit(v2) is None and cgroup_memory_available(v2) is None

    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "memory").mkdir()
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # no quota
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # "no limit"
    (v1 / "memory" / "memory.usage_in_bytes").write_text(f"{GB}\n")
    assert cgroup_cpu_limit(v1) is None and cgroup_memory_available(v1) is None
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    (v1 / "memory" / "memory.limit_in_bytes").write_text(f"{3 * GB}\n")
    assert cgroup_cpu_limit(v1) == 4.0 and cgroup_memory_available(v1) == 2 * GB
    assert cgroup_cpu_limit(tmp_path / "none") is None and cgroup_memory_available(tmp_path / "none") is None


def test_auto_runs_one_step_at_a_time_where_workers_cannot_share_a_queue(monkeypatch):
    """Without POSIX semaphores (a container without /dev/shm) multiprocessing queues fail: auto falls
    back to one step at a time and says why, instead of failing the run."""
    import multiprocessing

    import advrec.pipeline.parallelism as parallelism

    monkeypatch.setattr(parallelism, "choose_jobs", lambda *a: parallelism.JobsChoice(2, "2.0 of 2 CPUs idle"))

    class NoSemaphores:
        def Queue(self):  # noqa: N802 (multiprocessing's name)
            raise OSError(38, "Function not implemented")

    monkeypatch.setattr(multiprocessing, "get_context", lambda method: NoSemaphores())
    choice = parallelism.auto_jobs("cpu", sample_s=0.01)
    assert choice.jobs == 1
    assert choice.reason.startswith("2.0 of 2 CPUs idle, but worker processes cannot share a queue here (OSError")
