"""The delimited text files users bring (interactions, categories), read as they come.

Real exports are not a clean ``user,item`` CSV: Excel prepends a UTF-8 byte-order mark and, in
many locales, separates with ``;``; other tools pick ``\\t`` or ``|`` and their own column names.
:func:`read_table` therefore

- decodes UTF-8 with or without a BOM (``utf-8-sig``); bytes that are not UTF-8 are a
  :class:`Problem` naming the file and the 1-based line, never a ``UnicodeDecodeError``;
- sniffs the delimiter among ``,`` ``;`` ``\\t`` ``|`` from the first lines, whatever the file's
  suffix: a candidate must split the header into >= 2 columns; if several do, the one whose header
  holds the wanted columns wins, then the one that splits every sampled line into as many fields
  as the header; if that still leaves several, the file is ambiguous (name the delimiter);
- matches header names after stripping whitespace, case-insensitively when that is unambiguous
  (:func:`find_column`).

Reading never stops at the first bad record: every problem is collected with its file and line, so
a loader can raise the first one and a preflight check can list them all.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

DELIMITERS: tuple[str, ...] = (",", ";", "\t", "|")
Delimiter = Literal[",", ";", "\t", "|"]
SNIFF_LINES = 50  # lines sampled to sniff the delimiter
MAX_ENCODING_PROBLEMS = 5  # non-UTF-8 lines reported one by one per file; the rest are counted

_DECIMAL_COMMA = re.compile(r"^[+-]?\d+,\d+$")


class Problem(BaseModel):
    """One thing wrong with a user's file: ``file:line: message``.

    ``line`` is 1-based (None for the whole file or folder). ``severity`` is ``error`` when loading
    would fail, ``warning`` when loading would go on with something dropped or missing. ``code`` is
    ``not_found`` for a missing file or folder (the loader raises NotFound), else ``invalid``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    severity: Literal["error", "warning"] = "error"
    code: Literal["invalid", "not_found"] = "invalid"
    file: str
    line: int | None = None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.message}"


@dataclass
class Table:
    """A delimited file: stripped ``header`` names, ``records`` as (1-based line, fields), and its problems."""

    path: Path
    delimiter: str
    header: list[str]
    header_line: int
    records: list[tuple[int, list[str]]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def problem(self, line: int | None, message: str, severity: Literal["error", "warning"] = "error") -> Problem:
        p = Problem(severity=severity, file=str(self.path), line=line, message=message)
        self.problems.append(p)
        return p


def find_column(header: Sequence[str], name: str) -> int | None | list[int]:
    """Index of column ``name`` in ``header``: exact match after stripping whitespace, else the one
    case-insensitive match; None when there is none; the candidate indices when several match."""
    wanted = name.strip()
    exact = [i for i, h in enumerate(header) if h.strip() == wanted]
    if len(exact) == 1:
        return exact[0]
    if len(exact) > 1:
        return exact
    folded = [i for i, h in enumerate(header) if h.strip().casefold() == wanted.casefold()]
    if len(folded) == 1:
        return folded[0]
    return folded or None


def _decode(data: bytes, path: Path) -> tuple[str, list[Problem]]:
    """UTF-8 text without its BOM; lines that are not UTF-8 become problems (and U+FFFD in the text)."""
    try:
        return data.decode("utf-8-sig"), []
    except UnicodeDecodeError:
        pass
    problems: list[Problem] = []
    lines = data.split(b"\n")  # "\n" never occurs inside a multi-byte UTF-8 sequence
    bad = 0
    for number, raw in enumerate(lines, start=1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad += 1
            if bad <= MAX_ENCODING_PROBLEMS:
                problems.append(Problem(
                    file=str(path), line=number,
                    message=f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); save the "
                            f"file as UTF-8 (Excel: 'CSV UTF-8')",
                ))
    if bad > MAX_ENCODING_PROBLEMS:
        problems.append(Problem(file=str(path), line=None,
                                message=f"{bad - MAX_ENCODING_PROBLEMS} more lines are not UTF-8 text"))
    text = data.decode("utf-8", errors="replace")
    return text.removeprefix("\ufeff"), problems


def _split(lines: list[str], delimiter: str) -> list[list[str]] | None:
    """The non-blank records of ``lines``; None when the csv module refuses them (e.g. a field longer
    than its 128 KB limit: no table header has one)."""
    try:
        return [row for row in csv.reader(lines, delimiter=delimiter) if any(f.strip() for f in row)]
    except csv.Error:
        return None


def _clip(text: str, n: int = 80) -> str:
    return text if len(text) <= n else f"{text[:n]}... ({len(text):,} characters)"


def _sniff(
    sample: list[str], truncated: bool, wanted: Sequence[str]
) -> tuple[str | None, str]:
    """(delimiter, '') or (None, why not) from the first lines of a file (see the module docstring)."""
    splits: dict[str, list[list[str]]] = {}
    for d in DELIMITERS:
        # a later sampled line the csv module refuses is named by the reader, at its line: sniff the header
        rows = _split(sample, d)
        rows = rows if rows is not None else _split(sample[:1], d)
        if rows is not None:
            splits[d] = rows
    if truncated:  # the last sampled record may be cut short
        splits = {d: rows[:-1] if len(rows) > 1 else rows for d, rows in splits.items()}
    candidates = [d for d, rows in splits.items() if rows and len(rows[0]) >= 2]
    if not candidates:
        expected = f"expected at least {', '.join(repr(w) for w in wanted) or 'two columns'}"
        if len(splits) < len(DELIMITERS):
            return None, (f"the header line {_clip(sample[0].strip())!r} holds a field longer than "
                          f"{csv.field_size_limit():,} characters, which no table header has; {expected} separated "
                          f"by one of , ; tab |: is this the right file?")
        return None, (f"the header {_clip(sample[0].strip())!r} has a single column; {expected} separated by one "
                      f"of , ; tab |")

    def has_wanted(d: str) -> bool:
        return all(isinstance(find_column(splits[d][0], w), int) for w in wanted)

    named = [d for d in candidates if has_wanted(d)]
    if len(named) == 1:
        return named[0], ""
    pool = named or candidates
    if len(pool) == 1:
        return pool[0], ""
    regular = [d for d in pool if all(len(r) == len(splits[d][0]) for r in splits[d][1:])]
    if len(regular) == 1:
        return regular[0], ""
    shown = "; ".join(f"{d!r} gives {[h.strip() for h in splits[d][0]]}" for d in (regular or pool))
    return None, f"cannot tell the delimiter: {shown}; name it (columns.delimiter)"


def _nul_problem(data: bytes, path: Path) -> Problem:
    """Why a file with NUL bytes is no text table: UTF-16 text (NUL in every other byte) or binary data."""
    line = data.count(b"\n", 0, data.index(b"\0")) + 1
    head = data[:200]
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or max(head[0::2].count(0), head[1::2].count(0)) > len(head) // 4:
        return Problem(file=str(path), message="UTF-16 text (NUL bytes between the characters); save the file as "
                                               "UTF-8 (Excel: 'CSV UTF-8')")
    return Problem(file=str(path), line=line, message="holds NUL bytes, which no text table has: a binary file or a "
                                                      "damaged export? Save it again as UTF-8 text")


def read_table(
    path: str | Path,
    wanted: Sequence[str] = (),
    delimiter: str | None = None,
) -> Table | Problem:
    """Read a delimited file with a header line; a :class:`Problem` when there is no usable table.

    ``wanted``: column names the caller needs (they break a tie when sniffing). ``delimiter``:
    one of ``, ; \\t |`` to skip sniffing. Blank lines are skipped. A record with a different
    number of fields than the header is a problem (extra *empty* trailing fields are accepted, as
    spreadsheets write them) and is left out of ``records``.
    """
    path = Path(path)
    if delimiter is not None and delimiter not in DELIMITERS:
        return Problem(file=str(path), message=f"delimiter must be one of {list(DELIMITERS)}, got {delimiter!r}")
    if not path.is_file():
        return Problem(file=str(path), code="not_found", message="file does not exist")
    try:
        data = path.read_bytes()
    except OSError as exc:
        return Problem(file=str(path), message=f"cannot read the file: {exc.strerror or exc}")
    if b"\0" in data:  # csv reads NUL as a character: ids and labels would silently hold it
        return _nul_problem(data, path)
    text, problems = _decode(data, path)
    # split at \n, \r\n and \r only (as editors number lines), keeping the ends for the csv module
    lines = io.StringIO(text, newline="").readlines()
    header_line = next((n for n, line in enumerate(lines, start=1) if line.strip()), None)
    if header_line is None:
        return Problem(file=str(path), line=1, message="the file is empty; expected a header line")
    if delimiter is None:
        sample = lines[header_line - 1 : header_line - 1 + SNIFF_LINES]
        delimiter, why = _sniff(sample, truncated=len(lines) > header_line - 1 + SNIFF_LINES, wanted=wanted)
        if delimiter is None:
            return Problem(file=str(path), line=header_line, message=why)

    reader = csv.reader(lines[header_line - 1 :], delimiter=delimiter)
    base = header_line - 1  # reader.line_num counts from the header line
    table: Table | None = None
    end = 0
    try:
        for row in reader:
            start, end = base + end + 1, reader.line_num  # a quoted field may span lines: report the first
            if not any(f.strip() for f in row):
                continue
            if table is None:
                table = Table(path, delimiter, [h.strip() for h in row], start, problems=problems)
                continue
            extra = row[len(table.header) :]
            if len(row) < len(table.header) or any(f.strip() for f in extra):
                table.problem(start, f"{len(row)} fields, but the header has {len(table.header)} "
                                     f"(delimiter {delimiter!r})")
                continue
            table.records.append((start, row[: len(table.header)]))
    except csv.Error as exc:
        line = base + reader.line_num
        if table is None:
            return Problem(file=str(path), line=line, message=f"unreadable: {exc}")
        table.problem(line, f"unreadable from here on: {exc}")
    assert table is not None  # header_line is not blank
    return table


def parse_number(text: str, delimiter: str) -> float:
    """A finite float; ``4,5`` is read as 4.5 when the file is not comma-separated. ValueError otherwise."""
    t = text.strip()
    if delimiter != "," and _DECIMAL_COMMA.match(t):
        t = t.replace(",", ".")
    value = float(t)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


# epoch numbers by magnitude: 1e11 s is the year 5138, 1e11 ms is March 1973
_EPOCH_UNITS = ((1e17, 1e-9, "nanoseconds"), (1e14, 1e-6, "microseconds"), (1e11, 1e-3, "milliseconds"))


def parse_timestamp(text: str) -> float:
    """Seconds since 1970-01-01 UTC from an ISO 8601 date/time or an epoch number. ValueError otherwise.

    - ISO 8601: ``2024-03-05``, ``2024-03-05T14:30:00``, ``2024-03-05 14:30:00.250``, with ``Z`` or
      a ``+01:00`` offset; a date or time without an offset is taken as **UTC** (so the result does
      not depend on the machine's time zone).
    - Numbers: epoch seconds. Units are detected by magnitude: ``|x| >= 1e11`` is milliseconds (1e11
      seconds would be the year 5138, while 1e11 ms is March 1973), ``>= 1e14`` microseconds,
      ``>= 1e17`` nanoseconds. So a millisecond timestamp from 1970-1973 would be misread as
      seconds; any real interaction log is later.
    """
    t = text.strip()
    try:
        value = float(t)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            raise ValueError(text)
        for bound, scale, _unit in _EPOCH_UNITS:
            if abs(value) >= bound:
                return value * scale
        return value
    moment = datetime.fromisoformat(t)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
