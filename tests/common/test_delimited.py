"""Delimited files as users bring them: BOM, sniffed delimiters, header matching, timestamps, file:line problems."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from advrec_common.datasets.delimited import Problem, find_column, parse_number, parse_timestamp, read_table


def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".txt"])
def test_delimiter_is_sniffed_whatever_the_suffix(tmp_path: Path, delimiter: str, suffix: str) -> None:
    text = delimiter.join(["user", "item", "rating"]) + "\n" + delimiter.join(["u1", "A1", "5"]) + "\n"
    table = read_table(_write(tmp_path, f"log{suffix}", text), wanted=("user", "item"))
    assert not isinstance(table, Problem)
    assert table.delimiter == delimiter and table.header == ["user", "item", "rating"]
    assert table.records == [(2, ["u1", "A1", "5"])]


def test_bom_crlf_blank_lines_and_padded_header(tmp_path: Path) -> None:
    path = _write(tmp_path, "x.csv", b"\xef\xbb\xbf\r\n user , item \r\nu1,A1\r\n\r\nu2,B2,,\r\n")
    table = read_table(path, wanted=("user", "item"))
    assert not isinstance(table, Problem)
    assert table.header == ["user", "item"] and table.header_line == 2
    # trailing empty fields (as spreadsheets write them) are accepted; lines keep their numbers
    assert table.records == [(3, ["u1", "A1"]), (5, ["u2", "B2"])] and not table.problems


def test_wanted_columns_break_a_delimiter_tie_else_it_is_ambiguous(tmp_path: Path) -> None:
    path = _write(tmp_path, "x.csv", "user;item;a,b\nu1;A1;1,2\n")  # both ';' and ',' split it regularly
    table = read_table(path, wanted=("user", "item"))
    assert not isinstance(table, Problem) and table.delimiter == ";"
    problem = read_table(path, wanted=("who", "what"))
    assert isinstance(problem, Problem) and problem.line == 1
    assert "cannot tell the delimiter" in str(problem) and str(problem).startswith(f"{path}:1: ")
    assert read_table(path, wanted=("who", "what"), delimiter=",").header == ["user;item;a", "b"]


def test_single_column_empty_and_missing_files_are_problems(tmp_path: Path) -> None:
    single = read_table(_write(tmp_path, "one.csv", "user item\nu1 A1\n"), wanted=("user", "item"))
    assert isinstance(single, Problem) and single.line == 1 and "single column" in single.message
    empty = read_table(_write(tmp_path, "empty.csv", "\n\n"), wanted=("user", "item"))
    assert isinstance(empty, Problem) and "empty" in empty.message
    missing = read_table(tmp_path / "nope.csv")
    assert isinstance(missing, Problem) and missing.message == "file does not exist"


def test_non_utf8_lines_are_problems_with_their_line(tmp_path: Path) -> None:
    data = "user,item\nu1,A1\nJosé,B2\nu3,C3\n".encode("latin-1")
    table = read_table(_write(tmp_path, "latin.csv", data), wanted=("user", "item"))
    assert not isinstance(table, Problem)
    assert [(p.line, p.severity) for p in table.problems] == [(3, "error")]
    assert str(table.problems[0]).startswith(f"{tmp_path / 'latin.csv'}:3: not UTF-8 text (byte 0xe9")
    assert len(table.records) == 3  # reading goes on


def test_a_header_field_over_128_kb_is_a_problem_not_a_csv_error(tmp_path: Path) -> None:
    """The csv module refuses fields over 131,072 characters; the sniffer let its error out (a 500 on upload)."""
    long_header = read_table(_write(tmp_path, "x.csv", "user,item," + "x" * 140_000 + "\nu1,A1,\n"),
                             wanted=("user", "item"))
    assert isinstance(long_header, Problem) and long_header.line == 1
    assert "longer than 131,072 characters" in long_header.message and "(140,010 characters)" in long_header.message
    assert len(long_header.message) < 500  # the header is quoted clipped, not whole
    # a long field further down is named at its line; the header still sniffs
    table = read_table(_write(tmp_path, "y.csv", "user;item\nu1;A1\nu2;" + "y" * 140_000 + "\nu3;C3\n"),
                       wanted=("user", "item"))
    assert not isinstance(table, Problem) and table.delimiter == ";"
    assert [(p.line, p.message.split(":")[0]) for p in table.problems] == [(3, "unreadable from here on")]


@pytest.mark.parametrize(("data", "line", "words"), [
    (b"user,item\nu1,A\x001\nu2,B2\n", 2, "NUL bytes"),  # a damaged export: ids would hold the NUL
    ("user,item\nu1,A1\n".encode("utf-16"), None, "UTF-16 text"),  # Excel's "Unicode text"
    ("user,item\nu1,A1\n".encode("utf-16-be"), None, "UTF-16 text"),  # without a byte-order mark
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", 3, "NUL bytes"),  # an image given as the log
])
def test_nul_bytes_are_a_problem_not_a_table(tmp_path: Path, data: bytes, line: int | None, words: str) -> None:
    problem = read_table(_write(tmp_path, "x.csv", data), wanted=("user", "item"))
    assert isinstance(problem, Problem) and problem.severity == "error", problem
    assert problem.line == line and words in problem.message and "UTF-8" in problem.message


def test_field_count_problems_name_the_first_line_of_a_record(tmp_path: Path) -> None:
    text = 'user,item,note\nu1,A1,"two\nlines"\nu2,B2\nu3,C3,x,y\nu4,D4,ok\n'
    table = read_table(_write(tmp_path, "x.csv", text), wanted=("user", "item"))
    assert not isinstance(table, Problem)
    assert [line for line, _ in table.records] == [2, 6]
    assert [(p.line, p.message.split(",")[0]) for p in table.problems] == [(4, "2 fields"), (5, "4 fields")]


def test_find_column_strips_and_folds_case_when_unambiguous() -> None:
    assert find_column(["User ", "item"], "user") == 0
    assert find_column(["user", "User"], "user") == 0  # the exact match wins
    assert find_column(["user", "User"], "USER") == [0, 1]  # ambiguous
    assert find_column(["a", "b"], "user") is None


def test_timestamps_iso_8601_and_epoch_units() -> None:
    moment = datetime(2024, 3, 5, 8, 0, tzinfo=UTC).timestamp()
    for text in ("2024-03-05T08:00:00Z", "2024-03-05T10:00:00+02:00", "2024-03-05 08:00:00", "2024-03-05T08:00"):
        assert parse_timestamp(text) == moment, text  # no offset: UTC, whatever the machine's zone
    assert parse_timestamp("2024-03-05") == datetime(2024, 3, 5, tzinfo=UTC).timestamp()
    assert parse_timestamp(str(int(moment))) == moment
    assert parse_timestamp(str(int(moment * 1000))) == moment  # milliseconds, by magnitude
    assert parse_timestamp(str(int(moment * 1_000_000))) == moment
    assert parse_timestamp("1700000000.5") == 1700000000.5
    for bad in ("yesterday", "nan", "inf", "", "2024-13-01"):
        with pytest.raises(ValueError):
            parse_timestamp(bad)


def test_decimal_comma_only_when_comma_is_not_the_delimiter() -> None:
    assert parse_number("4,5", ";") == 4.5 and parse_number(" 3 ", ",") == 3.0
    with pytest.raises(ValueError):
        parse_number("4,5", ",")
    with pytest.raises(ValueError):
        parse_number("nan", ";")
