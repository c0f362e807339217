"""Reading CSV files of events (`stream.kafka.publish.read_rows`), for `publish` and `score`:
the same events as the DictReader reading before it (≈ 2 times faster), and a row that does not
match its header, or an integer past 64 bits, is a rejection with its line, not a crash."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.errors import SchemaError
from stream.kafka.publish import _cell, _finite, read_rows

# Cells as files hold them: numbers in many spellings, and what must not read as a number.
_NUMBER_TEXT = st.one_of(
    st.integers(-(10**25), 10**25).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: f"{f:e}"),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: f"{f:E}"),
    st.integers(-999, 999).map(lambda i: f" {i}\t"),
    st.sampled_from(["-0", "0.0", "-0.0", "1e400", "-1e400", "1.5e-400", "007", "+5", ".5", "5.",
                     "1_000", "0x10", "9223372036854775808", "-9223372036854775809",
                     "18446744073709551616"]),
)  # fmt: skip
_OTHER_TEXT = st.one_of(
    st.sampled_from(["", "true", "false", "TRUE", " true", "null", "nan", "NaN", "inf",
                     "Infinity", "x1", "1,2", "[1]", "]", "[", '"3"', "{}", "1 2", "1e", "-"]),
    st.text(st.characters(blacklist_characters="\x00"), max_size=6),
)  # fmt: skip
CELLS = st.lists(st.one_of(_NUMBER_TEXT, _NUMBER_TEXT, _OTHER_TEXT), min_size=1, max_size=12)


def _same(a: Any, b: Any) -> bool:
    """Equal with the same type, floats bit for bit (NaN and -0.0 included)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a.hex() == b.hex()
    return bool(a == b)


def _old_cell(value: str) -> Any:
    """`_cell` as it was before it skipped ``lower()`` for numbers: the reference."""
    if value == "":
        return None
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    casts: tuple[type, ...] = (float,) if "." in value or "e" in low else (int, float)
    for cast in casts:
        try:
            return cast(value)
        except ValueError:
            pass
    return value


@settings(max_examples=1000, deadline=None)
@given(CELLS)
def test_cells_read_as_before(cells: list[str]) -> None:
    for cell in cells:
        assert _same(_cell(cell), _old_cell(cell)), cell


def _reference(text: str, kind: str) -> list[bytes | str]:
    """What the CSV reading gave before the fast path (csv.DictReader, a cell at a time): the
    event's JSON, or the reason it was rejected."""
    out: list[bytes | str] = []
    for row in csv.DictReader(io.StringIO(text, newline="")):
        event: dict[str, object] = {"id": row.pop("id", None)}
        time_cell = row.pop("time", None)
        event["time"] = _old_cell(time_cell) if time_cell is not None else None
        if kind == "labels":
            label = row.pop("label", None)
            event["label"] = _old_cell(label) if label is not None else None
        else:
            event["features"] = {k: _old_cell(v) for k, v in row.items()}
        try:
            out.append(orjson.dumps(_finite(event)))
        except SchemaError as exc:
            out.append(str(exc))
    return out


_NAMES = st.sampled_from(["id", "time", "label", "a", "b", "c", "x y", "é"])


@settings(max_examples=200, deadline=None)
@given(
    header=st.lists(_NAMES, min_size=1, max_size=6),
    rows=st.lists(
        st.one_of(
            st.lists(_NUMBER_TEXT, min_size=6, max_size=6),  # rows of numbers, the commonest
            st.lists(st.one_of(_NUMBER_TEXT, _OTHER_TEXT), min_size=6, max_size=6),
        ),
        max_size=5,
    ),
    kind=st.sampled_from(["features", "labels"]),
)  # fmt: skip
def test_csv_files_read_as_before(
    tmp_path_factory: pytest.TempPathFactory,
    header: list[str],
    rows: list[list[str]],
    kind: str,
) -> None:
    """The same JSON bytes as the DictReader reading, header names given twice included, for
    files whose rows match their header (and whose numbers are finite)."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    for row in rows:
        writer.writerow(row[: len(header)])
    text = buffer.getvalue()
    path = tmp_path_factory.mktemp("csv") / "events.csv"
    path.write_text(text, newline="")
    got = [raw if isinstance(raw, bytes) else str(raw) for _, raw in read_rows(path, kind)]  # type: ignore[arg-type]
    assert got == _reference(text, kind)


def test_a_row_that_does_not_match_its_header_is_rejected_with_its_line(tmp_path: Path) -> None:
    """It used to raise AttributeError out of `publish` and `score` (DictReader fills a short row
    with None, a long one's extra cells are a list)."""
    path = tmp_path / "events.csv"
    path.write_text(
        'id,time,a,b\n1,1,2,3\n2,2,5\n\n3,3,1,2,9\n"4",4,"multi\nline",8\n5,5,1e400,1\n6,6,7,8\n'
        "7,7,1,1180591620717411303424\n"
    )
    rows = list(read_rows(path, "features"))
    lines = [line for line, _ in rows]
    assert lines == [2, 3, 5, 7, 8, 9, 10]  # the blank line 4 is skipped; line 6-7 is one row
    errors = {line: raw for line, raw in rows if isinstance(raw, SchemaError)}
    assert sorted(errors) == [3, 5, 8, 10]
    assert errors[3].reason == "csv_columns" and "3 cells, the header has 4" in str(errors[3])
    assert errors[5].reason == "csv_columns" and "5 cells" in str(errors[5])
    assert errors[8].reason == "not_finite" and errors[8].field == "features.a"
    assert errors[10].reason == "out_of_range" and errors[10].field == "features.b"  # not a crash
    good = [orjson.loads(raw) for _, raw in rows if isinstance(raw, bytes)]
    assert good == [
        {"id": "1", "time": 1, "features": {"a": 2, "b": 3}},
        {"id": "4", "time": 4, "features": {"a": "multi\nline", "b": 8}},
        {"id": "6", "time": 6, "features": {"a": 7, "b": 8}},
    ]
