"""``advrec dataset demo`` and ``advrec dataset inspect``."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from advrec.cli import main


def test_demo_then_inspect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    args = [
        "dataset",
        "demo",
        "--out",
        str(out),
        "--items",
        "20",
        "--users",
        "12",
        "--size",
        "16",
        "--seed",
        "1",
    ]
    assert main([*args, "--min-per-user", "3", "--max-per-user", "5"]) == 0
    written = capsys.readouterr().out
    assert "users    12" in written and "items    20" in written and "test     12" in written
    assert "  sock      2" in written
    assert (out / "trainingset.tsv").is_file() and (out / "original" / "images" / "19.jpg").is_file()

    assert main(["dataset", "inspect", str(out)]) == 0
    inspected = capsys.readouterr().out
    assert inspected.splitlines()[1:] == written.splitlines()[1:-1]  # same counts (the name line may differ)

    assert main([*args]) == 2  # refuses to overwrite a non-empty folder
    assert "not empty" in capsys.readouterr().err


def test_inspect_generic_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "img").mkdir()
    for item in ("a", "b"):
        Image.new("RGB", (4, 4), (9, 9, 9)).save(tmp_path / "img" / f"{item}.png")
    (tmp_path / "log.csv").write_text("user,item\nu,a\nu,b\nv,a\nv,zzz\n")
    assert (
        main(
            [
                "dataset",
                "inspect",
                str(tmp_path / "img"),
                "--layout",
                "generic",
                "--interactions",
                str(tmp_path / "log.csv"),
            ]
        )
        == 0
    )
    out = capsys.readouterr()
    assert "users    2" in out.out and "items    2" in out.out and "test     1" in out.out
    assert "warning: dropped 1 interaction(s) of 1 item(s)" in out.err

    assert main(["dataset", "inspect", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["dataset", "inspect", str(tmp_path), "--layout", "generic"]) == 2
    assert "needs --interactions" in capsys.readouterr().err


def test_inspect_names_columns_like_a_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--interactions implies the generic layout; the column flags are upload's (and a spec's)."""
    (tmp_path / "img").mkdir()
    for item in ("a", "b", "c"):
        Image.new("RGB", (4, 4), (9, 9, 9)).save(tmp_path / "img" / f"{item}.png")
    (tmp_path / "log.tsv").write_text("customer\tsku\tstars\nu\ta\t5\nu\tb\t1\nv\ta\t4\nv\tc\t5\n")
    (tmp_path / "cats.csv").write_text("sku;dept\na;x\nb;y\nc;y\n")
    argv = ["dataset", "inspect", str(tmp_path / "img"), "--interactions", str(tmp_path / "log.tsv"),
            "--categories", str(tmp_path / "cats.csv"), "--user-col", "customer", "--item-col", "sku",
            "--rating-col", "stars", "--min-rating", "4", "--delimiter", "tab", "--category-item-col", "sku",
            "--category-col", "dept"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "users    2" in out and "items    2" in out  # b's only row is rated 1
    assert main(argv[:5] + ["--user-col", "custmer"]) == 2
    assert "no 'custmer' column" in capsys.readouterr().err
    assert main(["dataset", "inspect", str(tmp_path)]) == 2  # a folder that is not in the study layout
    assert "pass --interactions FILE" in capsys.readouterr().err


def test_a_path_the_system_refuses_is_a_user_error_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An OSError about a path (here: a folder under a regular file) is printed with the path and exit 2,
    not as an "unexpected ... bug"; --debug still shows the traceback."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    target = blocker / "demo"
    assert main(["dataset", "demo", "--out", str(target), "--items", "20", "--users", "12", "--size", "16"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"advrec: error: {target}") and "bug" not in err
    with pytest.raises(OSError):
        main(["--debug", "dataset", "demo", "--out", str(target), "--items", "20", "--users", "12", "--size", "16"])
