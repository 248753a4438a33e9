"""Preflight: every problem a spec has, found before compute, with its spec path; torch never imported."""

from __future__ import annotations

import subprocess
import sys

from PIL import Image

from advrec.pipeline.preflight import preflight


def _catalog(tmp_path, n=6):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(n):
        Image.new("RGB", (20, 20), (10 * i, 0, 0)).save(images / f"p{i}.png")
    lines = ["user_id;product_id;ts"] + [f"u{u};p{(u + j) % n};{1700000000 + j}" for u in range(8) for j in range(3)]
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "cats.csv").write_text("item,category\n" + "".join(f"p{i},{'shoe' if i % 2 else 'bag'}\n"
                                                                   for i in range(n)))
    return {"kind": "generic", "images_dir": str(images), "interactions": str(tmp_path / "log.csv"),
            "categories": str(tmp_path / "cats.csv"),
            "columns": {"user": "user_id", "item": "product_id", "timestamp": "ts"}}


def _spec(dataset, **over):
    return {"dataset": dataset, "extractors": [{"name": "standard", "image_size": 32}],
            "attacks": [{"method": "fgsm", "eps": [4]}], "recommenders": [{"name": "vbpr"}], "ks": [2, 5], **over}


def test_a_good_catalog_passes_and_reports_its_size(tmp_path):
    out = preflight(_spec(_catalog(tmp_path)), device="cpu")
    assert out.ok, out.problems
    assert out.facts["n_items"] == 6 and out.facts["categories"] == ["bag", "shoe"]


def test_every_problem_at_once_with_spec_paths(tmp_path):
    doc = _spec(_catalog(tmp_path), ks=[2, 50], scenario={"origin": "sock", "target": "shoe"},
                recommenders=[{"name": "vbpr", "config": {"epochz": 3}}])
    out = preflight(doc, device="cpu")
    assert not out.ok and [loc for loc, _ in out.problems] == ["recommenders[0].config.epochz"]  # parse first
    doc["recommenders"] = [{"name": "vbpr"}]
    locs = [loc for loc, _ in preflight(doc, device="cpu").problems]
    assert locs == ["ks[1]", "scenario.origin"]


def test_missing_files_and_devices_are_problems_not_tracebacks(tmp_path):
    bad = {"kind": "generic", "images_dir": str(tmp_path / "nope"), "interactions": str(tmp_path / "none.csv")}
    out = preflight(_spec(bad), device="cuda:3" if not _has_gpu() else "tpu")
    locs = {loc for loc, _ in out.problems}
    assert "--device" in locs and {"dataset.interactions", "dataset.images_dir"} & locs


def _has_gpu() -> bool:
    import os

    return os.path.exists("/proc/driver/nvidia/version")


def test_preflight_never_imports_torch(tmp_path):
    code = ("import sys; from advrec.pipeline.preflight import preflight; "
            "r = preflight({'preset': 'demo'}, device='cpu'); assert r.ok, r.problems; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
