"""``advrec recommend demo`` argument handling (the full demo run needs the demo extractor; see docs)."""

from __future__ import annotations

import pytest

from advrec.cli import main


def test_unknown_model_fails_before_any_training(capsys):
    assert main(["recommend", "demo", "--models", "vbpr,nosuchmodel"]) == 2
    err = capsys.readouterr().err
    assert "unknown recommenders ['nosuchmodel']" in err


def test_bad_cutoffs_are_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["recommend", "demo", "--k", "0,10"])
    assert "positive" in capsys.readouterr().err


def test_bad_epochs_rejected(capsys):
    assert main(["recommend", "demo", "--epochs", "0"]) == 2
    assert "--epochs" in capsys.readouterr().err


def test_every_bad_argument_is_listed_at_once(capsys, tmp_path):
    argv = ["recommend", "demo", "--store", str(tmp_path), "--models", "vbpr,foo", "--epochs", "0", "--threads",
            "0", "--items", "5", "--users", "0", "--seed", "-3", "--k", "10"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    for flag, words in (("--models", "['foo']"), ("--epochs", "got 0"), ("--threads", "got 0"),
                        ("--items", "at least 10, got 5"), ("--users", "positive, got 0"), ("--seed", "got -3"),
                        ("--k", "<= the catalog's 5 items")):
        assert f"  {flag}: " in err and words in err, (flag, err)
    assert not any(tmp_path.iterdir())  # nothing trained or stored


@pytest.mark.slow
def test_demo_run_prints_accuracy_chr_and_scenario(capsys, tmp_path):
    assert main(["recommend", "demo", "--models", "vbpr", "--epochs", "3", "--k", "10",
                 "--store", str(tmp_path / "store"), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "popularity" in out and "CHR@10" in out and "proposed scenario" in out
