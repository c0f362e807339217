"""`serving.v2_requests.numeric_row`: the commonest infer body read from its bytes gives exactly
the row of the general reading (`parse_infer_body`: same names in the same order, same types,
same bits), and any other body, however close, is left to the general reading. Each reader is
checked alone too: the C one (`serving/_v2_body.c`) and the Python one it falls back to."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from learners.linear import _sum
from serving.inputs import InputLimits
from serving.v2_requests import (
    _LAYOUTS,
    numeric_row,
    parse_infer_body,
    read_row_in_c,
    read_row_in_python,
    row_sum,
)
from serving.v2_tensors import V2Error

LIMITS = InputLimits(max_features=8, max_instances=4)
# names holding the texts the reader looks for, and what JSON must escape
TRICKY = [layout.between.decode() for layout in _LAYOUTS] + [
    m.decode() for layout in _LAYOUTS for m, _ in layout.middles
] + ['"', "\\", ":", ",", "\n", "\n:", "]}", "{", "[1]", "é", "\u2028", " "]  # fmt: skip
names = (
    st.text(max_size=5)
    | st.sampled_from(TRICKY)
    | st.lists(st.sampled_from(TRICKY), max_size=3).map("".join)
)
floats = st.floats(allow_nan=False, allow_infinity=False)
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
# number literals as clients write them, not only as Python does
ODD_LITERALS = [
    "-0", "0", "-0.0", "1E+2", "1e-5", "0.10", "12345678901234567890123", "18446744073709551616",
    "9223372036854775808", "-9223372036854775809", "1e400", "true", "null", '"1"', "[1]", "01",
    "1.", ".5", "NaN",
]  # fmt: skip
# any literal of JSON's grammar, past a float's 17 digits and an int64's 19 (rounding, overflow)
json_numbers = st.from_regex(
    r"-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,24})?([eE][+-]?[0-9]{1,3})?", fullmatch=True
)
literals = floats.map(repr) | int64.map(str) | st.sampled_from(ODD_LITERALS) | json_numbers


def in_c(raw: bytes, limits: InputLimits) -> dict[str, Any] | None:
    assert read_row_in_c is not None, "serving/_v2_body.c was not built: pip install -e . again"
    row: dict[str, Any] | None = read_row_in_c(raw, limits.max_features)
    return row


READERS = [numeric_row, in_c, read_row_in_python]


def general(raw: bytes) -> Any:
    try:
        return parse_infer_body(raw, LIMITS)
    except V2Error as exc:
        return ("error", exc.status, exc.message)


# a linear model's parameters over names the bodies below use (`row_sum`): an entry each
PARAMS = {
    name: (float(i) - 2.5, 0.5 + i, 1.0 / (i + 1) - 0.3)
    for i, name in enumerate(["x", "x0", "x1", "x2", "age", "income", "", "a", "ïncome"])
}


def assert_same(raw: bytes) -> dict[str, Any] | None:
    """``numeric_row(raw)``; each reader's row (`READERS`) checked against the general reading
    when it gives one; and `row_sum`, a linear model's sum read from the bytes, given exactly
    when the C reader gives a row, equal to the model's sum over it to the bit."""
    rows = [assert_read_alike(read, raw) for read in READERS]
    got = row_sum(raw, PARAMS, LIMITS)
    assert (got is None) == (rows[1] is None), (raw, got, rows[1])
    if got is not None and rows[1] is not None:
        want = _sum(rows[1], PARAMS.get)
        assert struct.pack("<d", got) == struct.pack("<d", want), (raw, got, want)
    return rows[0]


def assert_read_alike(read: Any, raw: bytes) -> dict[str, Any] | None:
    row: dict[str, Any] | None = read(raw, LIMITS)
    if row is not None:
        expected = general(raw)
        assert expected == (None, [row], None), raw
        (want,) = expected[1]
        assert list(row) == list(want)
        for got, value in zip(row.values(), want.values(), strict=True):
            assert type(got) is type(value)
            assert got == value and math.copysign(1, got) == math.copysign(1, value)
    return row


def body(tensors: list[tuple[str, str, str]], compact: bool) -> bytes:
    """``{"inputs": [...]}`` with each ``(name, datatype, value literal)`` as a tensor of
    shape [1], laid out as json.dumps or a compact writer lays it out."""
    colon, comma = (":", ",") if compact else (": ", ", ")
    parts = [
        f'{{"name"{colon}{json.dumps(n, ensure_ascii=compact)}{comma}"shape"{colon}[1]{comma}'
        f'"datatype"{colon}"{d}"{comma}"data"{colon}[{v}]}}'
        for n, d, v in tensors
    ]
    return f'{{"inputs"{colon}[{comma.join(parts)}]}}'.encode()


@pytest.mark.parametrize("dumps", [lambda b: json.dumps(b).encode(), orjson.dumps])
@pytest.mark.parametrize("datatype", ["FP64", "FP32", "FP16", "INT64"])
def test_the_commonest_bodies_are_read_from_their_bytes(dumps: Any, datatype: str) -> None:
    values = [1, -2, 3] if datatype == "INT64" else [1.5, -2, 3e-7]
    inputs = [{"name": f"x{i}", "shape": [1], "datatype": datatype, "data": [v]}
              for i, v in enumerate(values)]  # fmt: skip
    raw = dumps({"inputs": inputs})
    row = assert_same(raw)
    assert row is not None and list(row) == ["x0", "x1", "x2"]
    assert in_c(raw, LIMITS) == row  # read in C, not left to the Python reader
    assert all(type(v) is (int if datatype == "INT64" else float) for v in row.values())


@pytest.mark.parametrize(
    "raw",
    [
        b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1]}]}\n',
        b'{"id": "a", "inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1]}]}',
        b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1]}, '
        b'{"name": "y", "shape": [1], "datatype": "INT64", "data": [1]}]}',
        b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1]}, '
        b'{"name": "x", "shape": [1], "datatype": "FP64", "data": [2]}]}',
        b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [true]}]}',
        b'{"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [1.0]}]}',
        b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1e400]}]}',
        b'{"inputs": [{"name": "x", "shape": [1], "datatype": "BOOL", "data": [true]}]}',
        b'{"inputs": [{"name": "x" "shape": [1], "datatype": "FP64", "data": [1]}]}',
        b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1]}]}]}',
    ],
)
def test_other_bodies_are_left_to_the_general_reading(raw: bytes) -> None:
    """A trailing newline, an id, mixed datatypes, a name twice, a boolean, a float for an
    integer, an infinity, another datatype, a missing comma, a broken end."""
    for read in READERS:
        assert read(raw, LIMITS) is None, read


def test_more_inputs_than_the_limit_are_left_to_the_general_reading() -> None:
    tensors = [(f"x{i}", "FP64", "1.5") for i in range(LIMITS.max_features + 1)]
    for read in READERS:
        assert read(body(tensors, compact=True), LIMITS) is None, read
        assert read(body(tensors[:-1], compact=True), LIMITS) is not None, read


@pytest.mark.parametrize(
    ("name", "literal"),
    [('a"b', "1.5"), ("tab\there", "1.5"), ("x", "12345678901234567890"), ("x", "1" * 70 + ".5")],
)
def test_what_the_c_reader_leaves_the_python_one_reads(name: str, literal: str) -> None:
    """An escape in a name, an integer of more than 18 digits, a literal of more than 63
    characters: the C reader leaves them, the Python reader reads them, and so does
    `numeric_row`."""
    raw = body([(name, "FP64", literal)], compact=False)
    assert in_c(raw, LIMITS) is None
    row = assert_same(raw)
    assert row == {name: float(literal)}


def test_the_c_reader_keeps_names_by_position_and_never_mixes_them_up() -> None:
    """The names kept from the last body are reused only when the bytes are the same: names
    swapped, lengthened, shortened, not ASCII (written as UTF-8, or escaped: left to the
    Python reader), then the first body again."""
    bodies = [
        [("age", "FP64", "1"), ("income", "FP64", "2")],
        [("income", "FP64", "1"), ("age", "FP64", "2")],
        [("incomes", "FP64", "1"), ("ag", "FP64", "2")],
        [("âge", "FP64", "1"), ("ïncome", "FP64", "2"), ("x", "FP64", "3")],
        [("age", "FP64", "1"), ("income", "FP64", "2")],
    ]
    for tensors in bodies:
        for compact in (True, False):
            raw = body(tensors, compact)
            expected = {name: float(value) for name, _, value in tensors}
            row = in_c(raw, LIMITS) if b"\\" not in raw else numeric_row(raw, LIMITS)
            assert row == expected and list(row) == list(expected)  # "\u00e2": Python's


@settings(max_examples=600)
@given(
    tensors=st.lists(
        st.tuples(names, st.sampled_from(["FP64", "FP32", "FP16", "INT64", "BOOL"]), literals),
        min_size=1,
        max_size=5,
    ),
    compact=st.booleans(),
)
def test_any_body_of_this_layout_gives_the_general_row(
    tensors: list[tuple[str, str, str]], compact: bool
) -> None:
    """Whatever the names and number literals: the general reading's row or a fall-back; and
    no fall-back for a body the general reading reads as a row of numbers, one datatype, flat data, names without a colon or a comma (the reader cannot tell those from
    its own)."""
    raw = body(tensors, compact)
    row = assert_same(raw)
    expected = general(raw)
    if expected[0] == "error" or any(v is None for v in expected[1][0].values()):
        return
    datatypes = {d for _, d, _ in tensors}
    nested = any(v.startswith("[") for _, _, v in tensors)  # [[v]]: a row of shape [1] too
    if (
        len(datatypes) == 1
        and "BOOL" not in datatypes
        and not nested
        and not any(":" in n or "," in n for n, _, _ in tensors)
    ):
        assert row is not None


pieces = st.sampled_from(
    [*TRICKY, '"x"', "1", "-0", "1.5", "}", "]", "[", "{", '"', ",", ":", " ", "\n", '\\"', "e5"]
)


@settings(max_examples=1500)
@given(
    tensors=st.lists(
        st.tuples(names, st.sampled_from(["FP64", "INT64"]), literals), min_size=1, max_size=4
    ),
    compact=st.booleans(),
    edits=st.lists(
        st.tuples(st.integers(0, 10**6), st.integers(0, 12), pieces | st.text(max_size=3)),
        min_size=1,
        max_size=3,
    ),
)
def test_a_body_edited_anywhere_is_read_right_or_left_alone(
    tensors: list[tuple[str, str, str]], compact: bool, edits: list[tuple[int, int, str]]
) -> None:
    """Bytes cut out of, or slipped into, a valid body: whenever the reader still gives a row,
    the general reading gives the same (the reader never accepts a body it should not)."""
    raw = body(tensors, compact)
    for at, cut, insert in edits:
        at %= len(raw) + 1
        raw = raw[:at] + insert.encode() + raw[at + cut :]
    assert_same(raw)


# -- the C reader's table of powers of five ----------------------------------------------------


def powers_of_five_128() -> list[int]:
    """For q in [-342, 308], the 128 most significant bits of 5**q (for q < 0, of its
    reciprocal, rounded up): the table of Eisel and Lemire's algorithm (as fast_float's)."""
    table = []
    for q in range(-342, 309):
        if q >= 0:
            power = 5**q
            while power < 1 << 127:
                power *= 2
            while power >= 1 << 128:
                power //= 2
        else:
            divisor = 5**-q
            z = (divisor - 1).bit_length()  # the least z with 2**z >= divisor
            power = 2 ** (z + 127 if q >= -27 else 2 * z + 128) // divisor + 1
            while power >= 1 << 128:
                power //= 2
        table.append(power)
    return table


def table_header() -> str:
    """serving/_v2_body_pow5.h's text: ``Path("serving/_v2_body_pow5.h").write_text(table_header())``
    writes it again."""
    rows = "".join(
        f"    {{0x{p >> 64:016x}u, 0x{p & (2**64 - 1):016x}u}},  /* 5^{q} */\n"
        for q, p in zip(range(-342, 309), powers_of_five_128(), strict=True)
    )
    return (
        "/* 5^q for q in [-342, 308]: its 128 most significant bits, high then low (for q < 0,\n"
        " * of its reciprocal, rounded up), for Eisel and Lemire's algorithm in _v2_body.c.\n"
        " * Written and checked by tests/serving/test_v2_requests_bytes.py (table_header). */\n"
        "#define POW5_SMALLEST (-342)\n#define POW5_LARGEST 308\n"
        f"static const uint64_t POW5[651][2] = {{\n{rows}}};\n"
    )


def test_the_c_readers_table_is_the_powers_of_five() -> None:
    header = Path(__file__).resolve().parents[2] / "serving" / "_v2_body_pow5.h"
    assert header.read_text() == table_header()
    table = powers_of_five_128()
    assert table[342] == 1 << 127 and table[0] >> 64 == 0xEEF453D6923BD65A  # 5^0, 5^-342


@settings(max_examples=3000)
@given(
    digits=st.integers(1, 10**19 - 1),
    exponent=st.integers(-360, 330),
    sign=st.sampled_from(["", "-"]),
)
def test_the_c_reader_rounds_every_decimal_as_python_does(
    digits: int, exponent: int, sign: str
) -> None:
    """Up to 19 significant digits at any power of ten (the fast algorithm's domain, and past
    it at both ends: subnormals, overflow): the float Python reads, bit for bit, or left."""
    literal = f"{sign}{digits}e{exponent}"
    row = in_c(body([("x", "FP64", literal)], compact=True), LIMITS)
    expected = float(literal)
    if row is None:
        assert not math.isfinite(expected)
        return
    assert struct.pack("d", row["x"]) == struct.pack("d", expected), literal


def test_the_c_reader_rounds_halfway_decimals_to_even() -> None:
    """The decimal exactly between two floats, and one digit either side of it."""
    from decimal import Decimal, localcontext

    for value in (1.0, 0.1, 2.0**-1022, 9007199254740992.0, 1e23, 1.7976931348623155e308):
        above = math.nextafter(value, math.inf)
        with localcontext() as context:
            context.prec = 80
            middle = (Decimal(value) + Decimal(above)) / 2
            literals = [f"{middle:.40e}", f"{middle.next_plus():.40e}", f"{middle:.18e}"]
        for literal in literals:  # 41 digits (strtod), 42, then 19 (Eisel and Lemire)
            row = in_c(body([("x", "FP64", literal)], compact=True), LIMITS)
            assert row is not None, literal
            assert struct.pack("d", row["x"]) == struct.pack("d", float(literal)), literal


@pytest.mark.parametrize(
    "literal",
    [
        "0." + "0" * 99_999 + "1e1000000",  # past the exponent the reader keeps exact
        "0." + "0" * 999_999 + "1e1000000",
        "0." + "0" * 99_999 + "1e99999",
        "1e" + "9" * 30,
        "1e-" + "9" * 30,
        "0." + "0" * 400 + "1",
    ],
)
def test_long_exponents_and_leading_zeros_are_read_exactly_or_left(literal: str) -> None:
    """Leading zeros lower the power of ten one by one: the exponent must stay exact (a
    reader that stopped adding its digits gave 1.0 for the first literal, whose value is
    infinite, and 0.0 for the second, whose value is 1.0)."""
    raw = body([("x", "FP64", literal)], compact=True)
    for read in READERS:
        row = assert_read_alike(read, raw)
        if row is not None:
            assert struct.pack("d", row["x"]) == struct.pack("d", float(literal))


def test_digits_read_eight_at_a_time_are_read_exactly() -> None:
    """The C reader takes digits eight at a time while its significand stays exact (at most
    16 of them), then one by one: every split of up to 24 digits between the integer part and
    the fraction, after 0 to 9 leading zeros, with a digit other than 0..9 ('/', ':') right
    after an eighth, gives the float Python reads, bit for bit, or is left whole."""
    digits = "9182736450" * 3
    for count in range(1, 25):
        for point in range(count + 1):
            for zeros in (0, 1, 7, 8, 9):
                whole, fraction = digits[:point], digits[point:count]
                if whole:
                    literal = whole + ("." + "0" * zeros + fraction if fraction else "")
                else:
                    literal = "0." + "0" * zeros + fraction
                for sign in ("", "-"):
                    text = sign + literal
                    row = in_c(body([("x", "FP64", text)], compact=True), LIMITS)
                    if "." in text or len(text.lstrip("-")) <= 18:
                        assert row is not None, text
                        assert struct.pack("d", row["x"]) == struct.pack("d", float(text)), text
    for odd in ("12345678/", "12345678:", "0.12345678/", "1234567/8", "0.1234567:8"):
        assert in_c(body([("x", "FP64", odd)], compact=True), LIMITS) is None, odd


def test_the_c_reader_keeps_no_long_name() -> None:
    """Names are kept by position for the next body, short ones only: a client sending long
    names (in bodies read or not) pins nothing."""
    import gc
    import tracemalloc

    long_name = "n" * 4_000_000
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for position in range(3, -1, -1):
            names = [f"x{i}" for i in range(position)] + [long_name]
            raw = body([(n, "FP64", "1.5") for n in names], compact=True)
            assert in_c(raw + b" ", LIMITS) is None  # not read: a byte too many
            assert in_c(raw, LIMITS) is not None
            del raw
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 1_000_000, kept


def test_the_sum_reader_finds_any_name_given_twice_however_many_names() -> None:
    """`row_sum` keeps every name of a body (past the 64 it holds on the stack; long names,
    which no cache holds, too) and leaves a body naming one twice, known or not, to the general
    reading, which refuses it; the names it kept are let go (no growth over many bodies)."""
    limits = InputLimits(max_features=1000)
    long_names = ["L" * 100 + str(i) for i in range(3)]  # longer than the names kept by position
    names = ["x", *(f"n{i}" for i in range(300)), *long_names, "income"]
    raw = body([(n, "FP64", "0.5") for n in names], compact=True)
    row = {n: 0.5 for n in names}
    assert row_sum(raw, PARAMS, limits) == _sum(row, PARAMS.get)
    for repeated in ["x", "n7", "n299", long_names[1], "income"]:  # known and unknown names
        for where in [1, 150, len(names)]:
            again = [*names[:where], repeated, *names[where:]]
            if again[where - 1] == repeated:
                continue
            raw = body([(n, "FP64", "0.5") for n in again], compact=True)
            assert row_sum(raw, PARAMS, limits) is None, (repeated, where)
            assert general(raw)[0] == "error"
    import gc
    import tracemalloc

    big = ["B" * 1000 + str(i) for i in range(6)]
    once, twice = (body([(n, "FP64", "0.5") for n in b], compact=True) for b in (big, big * 2))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(2000):  # 12 000 names of 1 kB decoded, each let go
            assert row_sum(once, PARAMS, limits) == 0.0 and row_sum(twice, PARAMS, limits) is None
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 1_000_000, kept


def test_without_the_c_reader_the_python_one_reads_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An install without a C compiler: `numeric_row` gives the same rows."""
    import serving.v2_requests

    raws = [
        body([("a", "FP64", "1.5"), ("b", "FP64", "-2")], compact=True),
        body([("a", "INT64", "3"), ("b", "INT64", "-4")], compact=False),
    ]
    built = [numeric_row(raw, LIMITS) for raw in raws]
    monkeypatch.setattr(serving.v2_requests, "read_row_in_c", None)
    assert (
        [numeric_row(raw, LIMITS) for raw in raws]
        == built
        == [
            {"a": 1.5, "b": -2.0},
            {"a": 3, "b": -4},
        ]
    )


@pytest.mark.parametrize(
    ("datatype", "literal"),
    [
        ("FP16", "65520"),  # an integer literal: read as float(int) in C
        ("FP16", "-65520.0"),
        ("FP16", "1e10"),
        ("FP32", "1e300"),
        ("FP32", "-3.4028235677973366e38"),  # 2^128 - 2^103: FP32 rounds it to infinity
        ("FP32", "340282356779733661637539395458142568448"),  # the same, 39 digits: Python's
    ],
)
@pytest.mark.parametrize("compact", [True, False])
def test_fp16_and_fp32_values_out_of_range_are_left_to_the_general_reading(
    datatype: str, literal: str, compact: bool
) -> None:
    """No reader gives a row holding them (the C one read FP16 1e10 and FP32 1e300); the
    general reading refuses them, naming the input."""
    raw = body([("a", datatype, "1.5"), ("b", datatype, literal)], compact)
    for read in READERS:
        assert read(raw, LIMITS) is None, read
    expected = general(raw)
    assert expected[:2] == ("error", 400)
    assert (
        expected[2].startswith("input 'b': ") and f"out of the range of {datatype}" in expected[2]
    )


@pytest.mark.parametrize(
    ("datatype", "literal"),
    [
        ("FP16", "65504"),
        ("FP16", "-65519.99"),
        ("FP32", "3.4028235e38"),  # the largest FP32 as float32 writers write it
        ("FP32", "-3.4028234663852886e38"),
        ("FP32", "3.4028235677973362e38"),  # the double just under 2^128 - 2^103
        ("FP64", "1e300"),
    ],
)
def test_fp16_and_fp32_values_in_range_are_read_in_c(datatype: str, literal: str) -> None:
    raw = body([("x", datatype, literal)], compact=True)
    assert in_c(raw, LIMITS) == {"x": float(literal)}
    assert assert_same(raw) == {"x": float(literal)}
