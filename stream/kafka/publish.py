"""Publishing feature and label events to Kafka: from files, from River datasets, from Python.

Every event is validated with the same codec the learner uses before it is sent; a bad row is
reported with its line number and counted as rejected, never silently dropped. The message key is
the event id, so that (with equal partition counts) a label lands in its features' partition.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import orjson

from schemas.errors import SchemaError
from schemas.events import EventCodec, FeatureEvent, LabelEvent, Limits
from schemas.settings import Settings
from stream.kafka.client import EventProducer, create_topics
from stream.kafka.security import kafka_security

Kind = Literal["features", "labels"]


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


def _cell(value: str) -> int | float | str | bool | None:
    """A CSV cell as JSON would have it: empty is null, ``true``/``false`` (any case) booleans,
    then an integer, a float, or the text.

    >>> [_cell(c) for c in ("", "TRUE", "12", "-1.5", "1e3", "nan", "x1", " 7 ")]
    [None, True, 12, -1.5, 1000.0, nan, 'x1', 7]
    """
    if value == "":
        return None
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    # int() refuses any text with a "." or an "e" (the commonest floats): skip its exception
    casts = (float,) if "." in value or "e" in low else (int, float)
    for cast in casts:
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def _finite(row: dict[str, object]) -> dict[str, object]:
    """``row`` itself, or a `SchemaError` naming a non-finite number (a CSV cell ``1e400``):
    JSON has no infinity, and orjson would silently write ``null``."""
    for name, value in row.items():
        inner = value.items() if isinstance(value, dict) else ()
        for inner_name, cell in (("", value), *inner):
            if isinstance(cell, float) and not math.isfinite(cell):
                where = f"{name}.{inner_name}" if inner_name else name
                raise SchemaError("not_finite", where, f"{cell} is not a finite number")
    return row


def row_json(row: bytes | dict[str, object]) -> bytes:
    """A row of `read_rows` as JSON bytes (a `SchemaError` for a non-finite CSV number).

    >>> row_json(b'{"id": "a"}'), row_json({"id": "a", "features": {"x": 1}})
    (b'{"id": "a"}', b'{"id":"a","features":{"x":1}}')
    """
    return row if isinstance(row, bytes) else orjson.dumps(_finite(row))


def read_rows(path: Path, kind: Kind) -> Iterator[tuple[int, bytes | dict[str, object]]]:
    """(line number, raw JSON bytes or a CSV row turned into an event dict)."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            for row in reader:
                line = reader.line_num
                event: dict[str, object] = {"id": row.pop("id", None)}
                time_cell = row.pop("time", None)
                event["time"] = _cell(time_cell) if time_cell is not None else None
                if kind == "labels":
                    label = row.pop("label", None)
                    event["label"] = _cell(label) if label is not None else None
                else:
                    event["features"] = {k: _cell(v) for k, v in row.items()}
                yield line, event
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
        security = kafka_security(settings)
        create_topics(settings.kafka_bootstrap_servers, settings.topics(), security=security)
        self.producer = producer or EventProducer(
            settings.kafka_bootstrap_servers, security=security
        )

    def topic(self, kind: Kind) -> str:
        return self.settings.topic_features if kind == "features" else self.settings.topic_labels

    def send_event(self, event: FeatureEvent | LabelEvent) -> None:
        kind: Kind = "features" if isinstance(event, FeatureEvent) else "labels"
        self.producer.send(self.topic(kind), event.id.encode(), self.codec.encode(event))

    def publish_rows(
        self,
        rows: Iterable[tuple[int, bytes | dict[str, object]]],
        kind: Kind,
        *,
        progress: Callable[[int], None] | None = None,
    ) -> PublishReport:
        report = PublishReport()
        decode = self.codec.decode_feature if kind == "features" else self.codec.decode_label
        topic = self.topic(kind)
        start = time.perf_counter()
        for line, row in rows:
            try:
                raw = row if isinstance(row, bytes) else orjson.dumps(_finite(row))
                event = decode(raw)
            except SchemaError as exc:
                report.rejected.append(Rejection(line, str(exc)))
                continue
            self.producer.send(topic, event.id.encode(), raw)
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
            if progress is not None:
                progress(1)
            if rate:
                ahead = n / rate - (time.perf_counter() - start)
                if ahead > 0.002:
                    time.sleep(ahead)  # pacing, not synchronisation
        return self._finish(report, start)

    def _finish(self, report: PublishReport, start: float) -> PublishReport:
        self.producer.flush()
        report.sent = self.producer.sent
        report.failed = self.producer.failed
        report.errors = list(self.producer.errors)
        report.seconds = time.perf_counter() - start
        self.producer.sent = self.producer.failed = 0
        return report

    def close(self) -> None:
        self.producer.close()
