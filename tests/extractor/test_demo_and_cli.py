"""Demo extractors in the artifact store, and the ``advrec extractor`` commands."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from advrec.cli import main
from advrec_common.errors import InvalidInput, NotFound
from advrec_common.vision.backbones import build_model
from advrec_common.vision.model_file import save_model_file
from services.extractor.demo_extractors import DEMO_DEFENSES, demo_extractor_key, train_demo_extractor
from services.extractor.extraction import read_study_outputs


def test_demo_extractor_is_stored_and_reused(store):
    model, report, key = train_demo_extractor(store, "standard", n_per_class=4, image_size=32)
    assert key == demo_extractor_key("standard", 4, 0, 32) and store.has(key)
    d = store.open(key)
    assert {"model.pt", "report.json", "meta.json"} <= set(os.listdir(d))
    mtimes = {f: os.stat(d / f).st_mtime_ns for f in ("model.pt", "report.json")}
    again, report2, key2 = train_demo_extractor(store, "standard", n_per_class=4, image_size=32)
    assert key2 == key and report2 == report  # same report: train_seconds included, so it was not retrained
    assert {f: os.stat(d / f).st_mtime_ns for f in mtimes} == mtimes
    for (k, v), (_, w) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(v, w), k
    assert report.config == DEMO_DEFENSES["standard"] and report.backbone == "tiny_cnn"
    # other parameters -> another key
    assert demo_extractor_key("standard", 4, 1, 32) != key and demo_extractor_key("pgd_at", 4, 0, 32) != key
    with pytest.raises(NotFound):
        train_demo_extractor(store, "trades")
    with pytest.raises(InvalidInput):
        train_demo_extractor(store, "standard", n_per_class=1)


def test_demo_defenses_are_tuned_as_documented():
    assert DEMO_DEFENSES["pgd_at"].method == "pgd_at" and DEMO_DEFENSES["free_at"].method == "free_at"
    assert {c.eps for c in DEMO_DEFENSES.values()} == {4.0} and {c.eval_steps for c in DEMO_DEFENSES.values()} == {10}


def test_cli_train_demo_prints_a_table(tmp_path, capsys):
    assert main(["extractor", "train-demo", "--defense", "standard", "--n-per-class", "3",
                 "--store", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "robust_acc(PGD-10,eps=4/255)" in out and out.count("standard") == 1
    assert main(["extractor", "train-demo", "--defense", "standard", "--n-per-class", "3",
                 "--store", str(tmp_path / "s")]) == 0
    assert "(stored)" in capsys.readouterr().out


def test_cli_extract_writes_study_outputs(tmp_path, capsys):
    torch.manual_seed(0)
    ckpt = save_model_file(build_model("small_cnn", ["a", "b", "c"]), tmp_path / "m.pt")
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in (10, 2, 1):  # numeric ids sort numerically
        Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    rc = main(["extractor", "extract", "--weights", str(ckpt), "--backbone", "small_cnn", "--images", str(folder),
               "--out", str(tmp_path / "out"), "--image-size", "32", "--device", "cpu"])
    assert rc == 0 and "extracted 3 images" in capsys.readouterr().out
    back = read_study_outputs(tmp_path / "out")
    assert back.item_ids == ["1", "2", "10"] and back.result.features.shape == (3, 128)

    (folder / "5.png").write_bytes(b"not a png")
    rc = main(["extractor", "extract", "--weights", str(ckpt), "--backbone", "small_cnn", "--images", str(folder),
               "--out", str(tmp_path / "out2"), "--image-size", "32", "--device", "cpu"])
    assert rc == 2 and "5.png" in capsys.readouterr().err and not (tmp_path / "out2").exists()


def test_cli_extract_defaults_to_the_models_input_size(tmp_path, capsys):
    """Mixed-size images reach the model's own size by default; --image-size 0 (native) names the CLI fix."""
    torch.manual_seed(0)
    model = build_model("small_cnn", ["a", "b"], input_size=24)
    ckpt = save_model_file(model, tmp_path / "m.pt")
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(40, 30), (50, 70)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    args = ["extractor", "extract", "--weights", str(ckpt), "--backbone", "small_cnn", "--images", str(folder),
            "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    assert "at 24x24 (crop)" in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "out2"), "--image-size", "0"]) == 2
    err = capsys.readouterr().err
    assert "differ in size" in err and "--image-size N" in err
    assert main([*args, "--out", str(tmp_path / "out3"), "--image-size", "16", "--image-fit", "pad"]) == 0
    assert "at 16x16 (pad)" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without a GPU")
def test_cli_extract_refuses_a_missing_device_without_a_traceback(tmp_path, capsys):
    ckpt = save_model_file(build_model("small_cnn", ["a", "b"]), tmp_path / "m.pt")
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "0.png")
    for device, words in (("cuda", "no usable CUDA GPU"), ("tpu", "unknown device 'tpu'")):
        rc = main(["extractor", "extract", "--weights", str(ckpt), "--backbone", "small_cnn", "--images",
                   str(tmp_path / "images"), "--out", str(tmp_path / "out"), "--device", device])
        assert rc == 2 and words in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_cli_extract_lists_every_flag_problem_before_loading(tmp_path, capsys):
    rc = main(["extractor", "extract", "--weights", "nope:x", "--backbone", "nope", "--images", str(tmp_path / "none"),
               "--out", str(tmp_path / "out"), "--image-size", "-3"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("advrec: error: invalid arguments:")
    assert [line.split(":")[0].strip() for line in err.splitlines()[1:]] == [
        "--weights", "--backbone", "--images", "--image-size"]
    assert "neither a checkpoint file nor a named weight" in err and not (tmp_path / "out").exists()


def test_cli_weights_lists_present_and_missing(tmp_path, capsys):
    assert main(["extractor", "weights", "--weights-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "resnet50:madry_linf_4" in out and str(tmp_path / "imagenet_linf_4.pt") in out and "MISSING" in out
    assert "efficientnet_lite0:imagenet" in out and "present" in out
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines() if ":" in line.split()[0]}
    assert rows["resnet50:madry_linf_4"] == "pgd_at" and rows["resnet50:free_at_eps4"] == "free_at"
    assert rows["resnet50:standard"] == "standard"
