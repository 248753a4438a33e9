"""``advrec attack demo``."""

from __future__ import annotations

import pytest

from advrec.cli import main
from advrec.commands.attack import ALL_METHODS, build_specs


def test_specs_of_a_demo_run():
    specs = build_specs(["fgsm", "pgd", "cw"], [4, 8], "normalized")
    assert [(s.method, s.eps, s.budget_space) for s in specs] == [
        ("fgsm", 4, "normalized"), ("fgsm", 8, "normalized"), ("pgd", 4, "normalized"), ("pgd", 8, "normalized"),
        ("cw", 0, "pixel"),
    ]
    assert specs[-1].cw_steps == 1000 and specs[2].resolved_steps == 10
    assert len(build_specs(list(ALL_METHODS), [4], "pixel")) == len(ALL_METHODS)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--methods", "score"], "unsupported demo method 'score'"),
        (["--methods", "nope"], "unknown or unsupported"),
        (["--origin", "hat", "--target", "hat"], "must differ"),
        (["--defenses", "magic"], "unknown defenses"),
        (["--budget-space", "normalized"], "erases the attack"),  # with the default png8 delivery
    ],
)
def test_bad_arguments_fail_before_any_training(tmp_path, capsys, argv, message):
    assert main(["attack", "demo", "--store", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not any((tmp_path / "objects").glob("*/*"))


def test_every_bad_argument_is_listed_at_once(tmp_path, capsys):
    argv = ["attack", "demo", "--store", str(tmp_path), "--methods", "pgd,bogus", "--eps", "0.03,8",
            "--origin", "Shirt", "--target", "Shirt", "--max-items", "0", "--defenses", "standard,trades"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    for flag, words in (("--origin", "unknown category 'Shirt'"), ("--target", "must differ"),
                        ("--defenses", "['trades']"), ("--max-items", ">= 1"), ("--eps", "did you mean 7.65?"),
                        ("--methods", "'bogus'")):
        assert f"  {flag}: " in err and words in err, (flag, err)
    assert not any((tmp_path / "objects").glob("*/*"))


@pytest.mark.slow
def test_demo_attacks_the_standard_extractor(tmp_path, capsys):
    argv = ["attack", "demo", "--store", str(tmp_path), "--defenses", "standard", "--methods", "fgsm,pgd",
            "--eps", "8", "--max-items", "6"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("standard")]
    assert [r[1] for r in rows] == ["fgsm", "pgd"]
    assert all(float(r[10]) <= 8.0 for r in rows)  # L-inf of the delivered images, in 1/255
    n_artifacts = len(list((tmp_path / "objects").glob("*/*")))
    assert main(argv) == 0 and capsys.readouterr().out == out  # second run: everything from the store
    assert len(list((tmp_path / "objects").glob("*/*"))) == n_artifacts == 3  # extractor + 2 attacks
