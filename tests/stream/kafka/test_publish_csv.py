"""Reading CSV files of events (`stream.kafka.publish.read_rows`), for `publish` and `score`:
each cell as JSON reads it (a zip code ``01234`` stays text), the same events as a DictReader
reading a cell at a time (the learner's codec reads the same values and types from both,
though a row of JSON numbers is written as its cells' own text), and a row that does not match
its header, an integer past 64 bits, or a byte that is not UTF-8 is a rejection with its line,
not a crash."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from typing import Any, Literal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.errors import SchemaError
from schemas.events import EventCodec, Limits
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
_SURROGATES: tuple[Literal["Cs"]] = ("Cs",)
_OTHER_TEXT = st.one_of(
    st.sampled_from(["", "true", "false", "TRUE", " true", "null", "nan", "NaN", "inf",
                     "Infinity", "x1", "1,2", "[1]", "]", "[", '"3"', "{}", "1 2", "1e", "-", "+-inf",
                     "--nan", "-+Infinity"]),
    st.text(st.characters(exclude_characters="\x00", exclude_categories=_SURROGATES), max_size=6),
)  # fmt: skip
CELLS = st.lists(st.one_of(_NUMBER_TEXT, _NUMBER_TEXT, _OTHER_TEXT), min_size=1, max_size=12)


def _same(a: Any, b: Any) -> bool:
    """Equal with the same type, floats bit for bit (NaN and -0.0 included)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a.hex() == b.hex()
    return bool(a == b)


def _json_cell(value: str) -> Any:
    """A cell "as JSON would have it", by JSON's own reading (Python's ``json``): the number it
    reads, blanks around allowed; else ``true``/``false`` in any case, ``nan``/``inf`` as
    floats (refused later as not finite), the text as it is. The reference of `_cell`."""
    if value == "":
        return None
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = None
    if type(parsed) in (int, float):
        return parsed
    low = value.strip(" \t\r\n").lower()
    if low in ("true", "false"):
        return low == "true"
    if re.fullmatch(r"[+-]?(nan|inf|infinity)", low):  # what float reads as not finite
        return float(low)
    return value


@settings(max_examples=1000, deadline=None)
@given(CELLS)
def test_cells_read_as_json_reads_them(cells: list[str]) -> None:
    for cell in cells:
        assert _same(_cell(cell), _json_cell(cell)), cell


def test_a_cell_json_cannot_read_as_a_number_is_text() -> None:
    """A zip code keeps its leading zero (it was the integer 1234), and what only Python's
    ``int`` or ``float`` would read stays text, as the same feature sent as JSON would be."""
    assert [_cell(c) for c in ("01234", "1_000", "+5", ".5", "5.", "0x10", "\u0661")] == [
        "01234", "1_000", "+5", ".5", "5.", "0x10", "\u0661",
    ]  # fmt: skip
    assert [_cell(c) for c in ("0", "-0", "12", " 7\t", "1E2", "-0.0")] == [
        0, 0, 12, 7, 100.0, -0.0,
    ]  # fmt: skip
    assert [_cell(c) for c in ("+-inf", "--nan")] == ["+-inf", "--nan"]  # raised ValueError


def _reference(text: str, kind: str) -> list[bytes | str]:
    """The CSV reading without the fast path (csv.DictReader, a cell at a time, each as JSON
    reads it): the event's JSON, or the reason it was rejected."""
    out: list[bytes | str] = []
    for row in csv.DictReader(io.StringIO(text, newline="")):
        event: dict[str, object] = {"id": row.pop("id", None)}
        time_cell = row.pop("time", None)
        event["time"] = _json_cell(time_cell) if time_cell is not None else None
        if kind == "labels":
            label = row.pop("label", None)
            event["label"] = _json_cell(label) if label is not None else None
        else:
            event["features"] = {k: _json_cell(v) for k, v in row.items()}
        try:
            out.append(orjson.dumps(_finite(event)))
        except SchemaError as exc:
            out.append(str(exc))
    return out


_CODEC = EventCodec(Limits())


def _read(raw: bytes | str, kind: str) -> Any:
    """A row as the learner's codec reads it: id, time and the features (or the label), each
    value with its type (floats bit for bit); a rejection's text as it is."""
    if isinstance(raw, str):
        return raw
    decode = _CODEC.decode_features if kind == "features" else _CODEC.decode_labels
    events, refused = decode([raw])
    if refused:
        return f"refused by the codec: {refused[0][1]}"
    event = events[0]
    values = event.features if kind == "features" else {"label": event.label}  # type: ignore[union-attr]
    return (event.id, _typed(event.time), [(k, _typed(v)) for k, v in values.items()])


def _typed(value: Any) -> tuple[str, Any]:
    return type(value).__name__, value.hex() if isinstance(value, float) else value


def _same_events(path: Path, text: str, kind: str) -> None:
    got = [raw if isinstance(raw, bytes) else str(raw) for _, raw in read_rows(path, kind)]  # type: ignore[arg-type]
    assert [_read(raw, kind) for raw in got] == [_read(raw, kind) for raw in _reference(text, kind)]


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
def test_csv_files_read_as_a_cell_at_a_time(
    tmp_path_factory: pytest.TempPathFactory,
    header: list[str],
    rows: list[list[str]],
    kind: str,
) -> None:
    """The same events as the DictReader reading, header names given twice included, for
    files whose rows match their header (and whose numbers are finite)."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    for row in rows:
        writer.writerow(row[: len(header)])
    text = buffer.getvalue()
    path = tmp_path_factory.mktemp("csv") / "events.csv"
    path.write_text(text, newline="")
    _same_events(path, text, kind)


# Rows of the commonest kind, mostly JSON numbers already (what the fast path writes as they
# are), with a column name of each kind JSON must escape.
_JSON_NUMBER_TEXT = st.one_of(
    st.integers(-(10**19), 10**19).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: f"{f:.25e}"),
    st.from_regex(r"-?(0|[1-9][0-9]{0,19})(\.[0-9]{1,40})?([eE][+-]?[0-9]{1,3})?", fullmatch=True),
)
_IDS = st.one_of(st.text(max_size=8), st.sampled_from(['a"b', "a\\b", "tab\t", "", "é", "7"]))


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(
        st.tuples(_IDS, _JSON_NUMBER_TEXT, st.lists(_JSON_NUMBER_TEXT, min_size=4, max_size=4)),
        min_size=1,
        max_size=6,
    ),
    odd=st.one_of(st.none(), st.tuples(st.integers(0, 3), _OTHER_TEXT)),
)
def test_rows_of_json_numbers_read_as_before(
    tmp_path_factory: pytest.TempPathFactory,
    rows: list[tuple[str, str, list[str]]],
    odd: tuple[int, str] | None,
) -> None:
    """The same events as the DictReader reading for unique column names, cells of numbers at
    the edges of what is written as it is (digits, exponents, 64 bits), ids to escape, and a
    cell that is no number now and then."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["id", "time", "a", 'q"uote', "back\\slash", "é"])
    for event_id, time_cell, cells in rows:
        if odd is not None:
            cells = [odd[1] if i == odd[0] else c for i, c in enumerate(cells)]
        writer.writerow([event_id, time_cell, *cells])
    text = buffer.getvalue()
    path = tmp_path_factory.mktemp("csv") / "events.csv"
    path.write_text(text, newline="")
    _same_events(path, text, "features")


def test_a_row_of_json_numbers_is_written_as_its_cells(tmp_path: Path) -> None:
    """The fast path is taken: a row of JSON numbers keeps its cells' text (``1e3``, not
    ``1000.0``), a row with a cell `_cell` reads otherwise is read cell by cell."""
    path = tmp_path / "events.csv"
    path.write_text("id,time,a,b\nu1,5,1e3,-0.25\nu2,5, 7,2\nu3,5,01,2\n")
    rows = [raw for _, raw in read_rows(path, "features")]
    assert rows[0] == b'{"id":"u1","time":5,"features":{"a":1e3,"b":-0.25}}'
    assert rows[1] == orjson.dumps({"id": "u2", "time": 5, "features": {"a": 7, "b": 2}})
    assert rows[2] == orjson.dumps({"id": "u3", "time": 5, "features": {"a": "01", "b": 2}})


def test_a_byte_that_is_not_utf8_refuses_its_row_not_the_file(tmp_path: Path) -> None:
    """A byte-order mark is skipped (the header's first name was "\\ufeffid", every row then
    refused); a Latin-1 byte in one row refuses that row, with its line, where it stopped the
    whole reading with a UnicodeDecodeError."""
    path = tmp_path / "events.csv"
    path.write_bytes(
        "\ufeffid,time,city,b\nu1,5,Paris,1\n".encode() + b"u2,5,K\xf6ln,2\nu3,5,Rome,3\n"
    )
    rows = list(read_rows(path, "features"))
    assert [line for line, _ in rows] == [2, 3, 4]
    assert rows[0][1] == orjson.dumps(
        {"id": "u1", "time": 5, "features": {"city": "Paris", "b": 1}}
    )
    assert isinstance(rows[1][1], SchemaError) and rows[1][1].reason == "not_json"
    assert rows[2][1] == orjson.dumps({"id": "u3", "time": 5, "features": {"city": "Rome", "b": 3}})


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
