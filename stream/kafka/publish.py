"""Publishing feature and label events to Kafka: from files, from River datasets, from Python;
and asynchronous prediction requests, from files.

Every event is validated with the same codec the learner uses before it is sent (a request with
the prediction worker's, `schemas.predictions.RequestCodec`); a bad row is reported with its
line number and counted as rejected, never silently dropped. The message key is the event id,
so that (with equal partition counts) a label lands in its features' partition. Kafka's ACLs
denying the writes stop the publishing with `stream.kafka.auth.KafkaAccessError` (a configuration
error) as soon as a record's failure says so.
"""

from __future__ import annotations

import csv
import math
import operator
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import orjson

from schemas.errors import SchemaError
from schemas.events import EventCodec, FeatureEvent, LabelEvent, Limits
from schemas.predictions import PredictionRequest, RequestCodec
from schemas.settings import Settings
from stream.kafka.client import EventProducer, create_topics
from stream.kafka.parquet import parquet_events
from stream.kafka.security import kafka_security

Kind = Literal["features", "labels", "requests"]
"""What a file holds: feature events, label events or prediction requests."""

OWN_COLUMNS: dict[Kind, tuple[str, ...]] = {
    "features": ("id", "time"),
    "labels": ("id", "time", "label"),
    "requests": ("id", "target"),
}
"""The columns of a CSV or Parquet file that are the event's own fields; for features and
requests every other column is a feature."""
TEXT_COLUMNS = frozenset({"id", "target"})
"""Own CSV columns read as text as they are (an id ``01234`` or a target ``7`` stays text)."""


@dataclass
class Rejection:
    line: int
    reason: str


@dataclass
class PublishReport:
    """The final count of a publishing run."""

    sent: int = 0
    failed: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "sent": self.sent,
            "failed": self.failed,
            "rejected": len(self.rejected),
            "rejections": [{"line": r.line, "reason": r.reason} for r in self.rejected[:100]],
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.rate, 1),
        }


_CELL_NUMBER = re.compile(r"[ \t\r\n]*(-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?)[ \t\r\n]*")
"""A cell that JSON reads as a number: its grammar, blanks around allowed (as JSON allows)."""
_NOT_FINITE = re.compile(r"[+-]?(?:nan|inf|infinity)")
"""What ``float`` reads as a non-finite number (lower case, blanks stripped)."""


def _cell(value: str) -> int | float | str | bool | None:
    """A CSV cell as JSON would have it: empty is null; a JSON number an integer (no fraction,
    no exponent) or a float; ``true``/``false`` (any case) booleans; ``nan`` or ``inf`` (any
    case, signed) a float, which the row's checks then refuse as not finite; anything else the
    text as it is. A cell JSON cannot read as a number is text, even where Python's ``int`` or
    ``float`` would read one: ``01234`` (a zip code), ``1_000``, ``+5``, ``.5``.

    >>> [_cell(c) for c in ("", "TRUE", "12", "-1.5", "1e3", "nan", "x1", " 7 ", "1_0", "01234")]
    [None, True, 12, -1.5, 1000.0, nan, 'x1', 7, '1_0', '01234']
    """
    if not value:
        return None
    number = _CELL_NUMBER.fullmatch(value)
    if number is not None:
        text = number.group(1)
        if number.group(2) is None and number.group(3) is None:
            try:
                return int(text)
            except ValueError:  # past Python's 4 300 digits: as a float (not finite)
                pass
        return float(text)
    low = value.strip(" \t\r\n").lower()
    if low == "true" or low == "false":
        return low == "true"
    if _NOT_FINITE.fullmatch(low):
        return float(low)
    return value


def _json(event: dict[str, object]) -> bytes:
    """The JSON of an event read from CSV or Parquet, or the `SchemaError` of `_finite` (or
    ``not_json``). orjson writes a non-finite float as ``null`` and refuses integers past 64
    bits: only an event whose JSON holds a ``null`` (or that orjson refuses) is looked at cell by
    cell."""
    try:
        raw = orjson.dumps(event)
    except TypeError as exc:  # an integer past 64 bits, or (Parquet) bytes, a decimal...
        _finite(event)
        raise SchemaError("not_json", None, f"a value JSON cannot hold: {exc}") from None
    if b"null" in raw:
        _finite(event)
    return raw


def _finite(row: dict[str, object]) -> dict[str, object]:
    """``row`` itself, or a `SchemaError` naming a non-finite number (a CSV cell ``1e400``:
    JSON has no infinity, and orjson would silently write ``null``) or an integer orjson cannot
    write (past 64 bits).

    >>> _finite({"id": "a", "features": {"x": 2**70}})
    Traceback (most recent call last):
    ...
    schemas.errors.SchemaError: out_of_range at features.x: 1180591620717411303424 does not fit in 64 bits
    """
    for name, value in row.items():
        inner = value.items() if isinstance(value, dict) else ()
        for inner_name, cell in (("", value), *inner):
            if isinstance(cell, float) and not math.isfinite(cell):
                where = f"{name}.{inner_name}" if inner_name else name
                raise SchemaError("not_finite", where, f"{cell} is not a finite number")
            if cell.__class__ is int and not _INT_LOW <= cell <= _UINT_HIGH:
                where = f"{name}.{inner_name}" if inner_name else name
                raise SchemaError("out_of_range", where, f"{cell} does not fit in 64 bits")
    return row


_INT_LOW, _UINT_HIGH = -(2**63), 2**64 - 1  # what orjson writes


# A CSV cell that is already a JSON number which `_cell` reads the same way: an integer of at
# most 18 digits (no "+", no leading zero: it fits in 64 bits), or a float with at most 18
# digits before its point and a two-digit exponent (finite, however many decimals). A row of
# these is written as JSON text as it is, without a Python value per cell (`_json_row`).
_JSON_NUMBER = r"-?(?:0|[1-9][0-9]{0,17})(?:\.[0-9]+)?(?:[eE][+-]?[0-9]{1,2})?"
_JSON_NUMBERS = re.compile(f"{_JSON_NUMBER}(?:,{_JSON_NUMBER})*")
_PLAIN_TEXT = re.compile(r'[^"\\\x00-\x1f\ud800-\udfff]*')
"""Text that is a JSON string between two quotes as it is (nothing to escape)."""


def _json_row(
    names: list[str], id_at: int | None, time_at: int | None, columns: list[int]
) -> Callable[[list[str]], bytes | None] | None:
    """For a feature file whose header allows it, a function giving a row's event JSON straight
    from its cells when every one of ``time`` and the features is a JSON number that `_cell`
    reads the same way and the id needs no escaping (None otherwise: `_cell` then reads it).

    The text differs from `_json`'s (``1e3`` stays ``1e3``, not ``1000.0``) but the event
    decoded from it is the same, value for value and type for type: the test compares them.
    """
    if id_at is None or time_at is None or not columns or len(set(names)) != len(names):
        return None
    try:
        prefixes = [orjson.dumps(name).decode() + ":" for name in names]
    except TypeError:  # a name JSON cannot hold (a lone surrogate)
        return None
    pick = operator.itemgetter(time_at, *columns)
    commas = len(columns)  # between time and the features: a cell holding a comma has more
    numbers, plain, add = _JSON_NUMBERS.fullmatch, _PLAIN_TEXT.fullmatch, operator.add

    def row_json(cells: list[str]) -> bytes | None:
        picked = pick(cells)
        joined = ",".join(picked)
        event_id = cells[id_at]
        if numbers(joined) is None or joined.count(",") != commas or plain(event_id) is None:
            return None
        features = ",".join(map(add, prefixes, picked[1:]))
        return f'{{"id":"{event_id}","time":{picked[0]},"features":{{{features}}}}}'.encode()

    return row_json


def _csv_events(
    path: Path, kind: Kind
) -> Iterator[tuple[int, dict[str, object] | bytes | SchemaError]]:
    """``(line, the event (or request) as a dict, or its JSON)`` of each row of a CSV file, or
    the `SchemaError` of a row whose cells do not match the header (see `read_rows`)."""
    features = kind != "labels"  # features and requests have features
    # UTF-8, a byte-order mark skipped; a byte that is not UTF-8 is kept as a lone surrogate,
    # which JSON cannot hold: its row is refused (``not_json``, with its line), not the file
    with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return
        width = len(header)
        at = {name: i for i, name in enumerate(header)}  # a name given twice: its last column
        id_at, time_at = at.get("id"), at.get("time")
        own = OWN_COLUMNS[kind]
        columns = [i for i, name in enumerate(header) if name not in own]
        names = [header[i] for i in columns]  # as a dict keeps them: the first place, last value
        own_at = [(name, at.get(name), name in TEXT_COLUMNS) for name in own]
        as_json = _json_row(names, id_at, time_at, columns) if kind == "features" else None
        for cells in reader:
            if not cells:  # a blank line
                continue
            line = reader.line_num
            if len(cells) != width:
                msg = f"{len(cells)} cells, the header has {width} columns"
                yield line, SchemaError("csv_columns", None, msg)
                continue
            if as_json is not None and (raw := as_json(cells)) is not None:
                yield line, raw
                continue
            event: dict[str, object] = {
                name: None if i is None else cells[i] if text else _cell(cells[i])
                for name, i, text in own_at
            }
            if features:
                event["features"] = {
                    name: _cell(cells[i]) for name, i in zip(names, columns, strict=True)
                }
            yield line, event


def read_rows(path: Path, kind: Kind) -> Iterator[tuple[int, bytes | SchemaError]]:
    """(line number, the event's raw JSON bytes) of a JSON Lines, CSV or Parquet file (for
    Parquet, the row number), or a `SchemaError` for a row that cannot be an event (CSV cells
    not matching the header, a number out of float range, a value JSON cannot hold); the JSON is
    validated by the caller, with the learner's codec. Parquet: `stream.kafka.parquet`.

    CSV: a header names the columns; ``id`` and ``time`` (and ``label`` for labels; ``id`` and
    ``target`` for requests: `OWN_COLUMNS`) are the event's, every other column is a feature (of
    feature events and requests). A cell reads as JSON would have it (`_cell`): empty is null,
    ``true``/``false`` booleans, then numbers, else text; ``id`` and ``target`` are text.
    """
    suffix = path.suffix.lower()
    if suffix in (".csv", ".parquet"):
        own = OWN_COLUMNS[kind]
        events = _csv_events(path, kind) if suffix == ".csv" else parquet_events(path, own)
        for number, event in events:
            if isinstance(event, SchemaError | bytes):
                yield number, event
                continue
            try:
                yield number, _json(event)
            except SchemaError as exc:
                yield number, exc
        return
    with path.open("rb") as handle:
        for line, raw in enumerate(handle, start=1):
            if raw.strip():
                yield line, raw.strip()


class Publisher:
    """Validates and sends events; topics are created on first use."""

    def __init__(self, settings: Settings, *, producer: EventProducer | None = None) -> None:
        if not settings.kafka_bootstrap_servers:
            raise SchemaError("config", "kafka_bootstrap_servers", "no Kafka address")
        self.settings = settings
        self.codec = EventCodec(Limits.from_settings(settings))
        self.requests = RequestCodec(self.codec.limits)
        security = kafka_security(settings)
        create_topics(settings.kafka_bootstrap_servers, settings.topics(), security=security)
        self.producer = producer or EventProducer(
            settings.kafka_bootstrap_servers, security=security
        )

    def topic(self, kind: Kind) -> str:
        s = self.settings
        topics = {
            "features": s.topic_features,
            "labels": s.topic_labels,
            "requests": s.topic_requests,
        }
        return topics[kind]

    def send_event(self, event: FeatureEvent | LabelEvent) -> None:
        kind: Kind = "features" if isinstance(event, FeatureEvent) else "labels"
        self.producer.send(self.topic(kind), event.id.encode(), self.codec.encode(event))

    def publish_rows(
        self,
        rows: Iterable[tuple[int, bytes | SchemaError]],
        kind: Kind,
        *,
        progress: Callable[[int], None] | None = None,
    ) -> PublishReport:
        report = PublishReport()
        decoders: dict[Kind, Callable[[bytes], FeatureEvent | LabelEvent | PredictionRequest]] = {
            "features": self.codec.decode_feature,
            "labels": self.codec.decode_label,
            "requests": self.requests.decode,
        }
        decode = decoders[kind]
        topic = self.topic(kind)
        start = time.perf_counter()
        for line, row in rows:
            try:
                if isinstance(row, SchemaError):
                    raise row
                event = decode(row)
            except SchemaError as exc:
                report.rejected.append(Rejection(line, str(exc)))
                continue
            self.producer.send(topic, event.id.encode(), row)
            self._allowed()
            if progress is not None:
                progress(1)
        return self._finish(report, start)

    def publish_events(
        self,
        events: Iterable[FeatureEvent | LabelEvent],
        *,
        rate: float | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> PublishReport:
        """Send already-typed events in the given order, optionally throttled to ``rate``/s."""
        report = PublishReport()
        start = time.perf_counter()
        for n, event in enumerate(events, start=1):
            self.send_event(event)
            self._allowed()
            if progress is not None:
                progress(1)
            if rate:
                ahead = n / rate - (time.perf_counter() - start)
                if ahead > 0.002:
                    time.sleep(ahead)  # pacing, not synchronisation
        return self._finish(report, start)

    def _allowed(self) -> None:
        """`KafkaAccessError` once Kafka's ACLs denied a record's write: every next one would
        fail the same way (nothing more is sent; the input is unchanged)."""
        if self.producer.denied is not None:
            raise self.producer.denied

    def _finish(self, report: PublishReport, start: float) -> PublishReport:
        self.producer.flush()
        self._allowed()
        report.sent = self.producer.sent
        report.failed = self.producer.failed
        report.errors = list(self.producer.errors)
        report.seconds = time.perf_counter() - start
        self.producer.sent = self.producer.failed = 0
        return report

    def close(self) -> None:
        self.producer.close()
