"""Thread counts per kind of step: measured once per machine and home, shared by every process."""

from __future__ import annotations

import json

from advrec.pipeline import threads


def test_fixed_count_wins_and_the_measurement_is_stored_once(tmp_path, monkeypatch):
    assert threads.threads_for("train", tmp_path, fixed=3) == 3
    calls = []

    def fake_measure(max_threads=None):
        calls.append(1)
        return {"machine": threads._machine(), "conv": 2, "rec": 1, "timings": {}}

    monkeypatch.setattr(threads, "measure", fake_measure)
    threads._stored_choice.cache_clear()
    assert threads.threads_for("attack_shard", tmp_path) == 2 and threads.threads_for("train", tmp_path) == 1
    # training kinds use one thread whatever was measured: their models depend on the count
    assert all(threads.threads_for(k, tmp_path) == 1 for k in threads.TRAINING_KINDS)
    assert json.loads((tmp_path / "threads.json").read_text())["conv"] == 2
    threads._stored_choice.cache_clear()  # another process of the same home reads the file
    assert threads.threads_for("features", tmp_path) == 2 and len(calls) == 1
    (tmp_path / "threads.json").write_text(json.dumps({"machine": "elsewhere", "conv": 9, "rec": 9}))
    threads._stored_choice.cache_clear()
    assert threads.threads_for("features", tmp_path) == 2 and len(calls) == 2  # another machine: measured again


def test_more_threads_only_when_clearly_faster(monkeypatch):
    timings = {1: 1.0, 2: 0.85, 3: 0.5, 4: 0.45}  # 2: not 20 % better than 1; 3: is; 4: not 20 % better than 3
    monkeypatch.setattr(threads, "_times", lambda run, counts: {t: timings[t] for t in counts})
    out = threads.measure(max_threads=4)
    assert out["conv"] == 3 and out["rec"] == 3


def test_timings_interleave_the_counts_after_warming_each(monkeypatch):
    """Every count is warmed once, then timed once per round in turn: a slow start cannot favour one."""
    import torch

    seen: list[int] = []
    out = threads._times(lambda: seen.append(torch.get_num_threads()), [1, 2], rounds=3)
    assert seen == [1, 2, 1, 2, 1, 2, 1, 2] and set(out) == {1, 2}
