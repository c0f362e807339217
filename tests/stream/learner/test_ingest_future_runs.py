"""The far-future guard of `stream.learner.ingest.Ingest`, on runs of records built by hand.

An event whose time is more than ``max_future`` seconds after its own record's Kafka timestamp
is dead-lettered (``event_time_in_future``) before the watermark or the core sees it; the
decision reads only the record (its timestamp), and timestamps are read only for runs whose
latest event time could pass the bound. Unit level: the dead letters go to a `Sender` that
keeps them (no broker); the pipeline test is `test_ingest_future.py`.
"""

from __future__ import annotations

import orjson
import pytest

from learners.core import LearningCore
from learners.specs import ModelSpec
from learners.watermark import Watermark
from schemas.events import EventCodec, Limits
from schemas.settings import Settings
from stream.checkpoint.protocol import Offsets, SkipRanges
from stream.kafka.deadletter import DeadLetters
from stream.kafka.records import NO_TIMESTAMP, Record, RecordRun
from stream.learner.ingest import IN_FUTURE, Ingest
from tests.support.senders import KeptSender

FEATURES, LABELS = "f", "l"
NOW_MS = 1_796_000_000_000  # the records' Kafka timestamps: epoch ms
NOW = NOW_MS / 1000


class Run:
    """A run of feature (or label) records with given event times and Kafka timestamps; counts
    how often its timestamps and whole records were read."""

    def __init__(
        self,
        times: list[float | str],
        stamps: list[int],
        *,
        topic: str = FEATURES,
        first: int = 10,
    ) -> None:
        self.topic, self.stamps = topic, stamps
        self.timestamp_reads = self.record_reads = 0
        self.offsets = list(range(first, first + len(times)))
        self.values = [self._value(i, t) for i, t in enumerate(times)]

    def _value(self, i: int, time: float | str) -> bytes:
        if isinstance(time, str):  # not an event: refused by the decoder
            return time.encode()
        if self.topic == FEATURES:
            return orjson.dumps({"id": f"e{i}", "time": time, "features": {"x": 1.0}})
        return orjson.dumps({"id": f"e{i}", "time": time, "label": 1.0})

    def _record(self, index: int) -> Record:
        self.record_reads += 1
        offset = self.offsets[index]
        return Record(self.topic, 1, offset, b"k", self.values[index], self.stamps[index])

    def _timestamps(self) -> list[int]:
        self.timestamp_reads += 1
        return list(self.stamps)

    def run(self) -> RecordRun:
        return RecordRun(
            self.topic, 1, list(self.offsets), list(self.values), self._record, self._timestamps
        )


def ingest(
    runs: list[RecordRun], max_future: float = 3600.0, skip: SkipRanges | None = None
) -> tuple[KeptSender, LearningCore, Watermark, Offsets, dict[str, int]]:
    dead: dict[str, int]
    sender, dead = KeptSender(), {}
    feed = Ingest(
        EventCodec(Limits.from_settings(Settings())), DeadLetters(sender, "dlq"),
        (FEATURES, LABELS), {}, dead, max_future=max_future,
    )  # fmt: skip
    core = LearningCore([ModelSpec("m", "linreg", ("MAE",))])
    offsets: Offsets
    watermark, offsets = Watermark([(0, 1), (1, 1)]), {}
    feed.push(runs, core, offsets, watermark, [], {} if skip is None else skip)
    return sender, core, watermark, offsets, dead


def buffered(core: LearningCore) -> list[tuple[float, int]]:
    """``(time, offset)`` of the events the core holds."""
    return sorted((entry[0], entry[3]) for entry in core._join._buffer)


def test_a_time_in_milliseconds_is_dead_lettered_and_the_rest_goes_on() -> None:
    times: list[float | str] = [NOW - 20, NOW - 10, (NOW - 5) * 1000, NOW - 1]
    run = Run(times, [NOW_MS] * 4)
    sender, core, watermark, offsets, dead = ingest([run.run()])
    [letter] = sender.letters()
    assert letter["rs.reason"] == IN_FUTURE.encode() == b"event_time_in_future"
    assert (letter["rs.topic"], letter["rs.partition"], letter["rs.offset"]) == (b"f", b"1", b"12")
    assert letter["value"] == run.values[2]  # the original bytes
    error = letter["rs.error"].decode()
    assert "1795999995000" in error and f"{NOW_MS} ms" in error  # both times
    assert "milliseconds" in error and "1795999995.000" in error  # and the likely cause
    assert dead == {IN_FUTURE: 1}
    assert buffered(core) == [(NOW - 20, 10), (NOW - 10, 11), (NOW - 1, 13)]
    assert watermark.max_seen((0, 1)) == NOW - 1  # not the far future
    assert offsets == {"f:1": 14}  # past it: handled, never holding the checkpoint back


def test_the_bound_is_inclusive_and_labels_are_checked_too() -> None:
    times: list[float | str] = [NOW + 3600, NOW + 3600.5]
    sender, core, _, _, dead = ingest([Run(times, [NOW_MS, NOW_MS], topic=LABELS).run()])
    assert [letter["rs.offset"] for letter in sender.letters()] == [b"11"]
    assert buffered(core) == [(NOW + 3600, 10)]
    assert dead == {IN_FUTURE: 1}


def test_a_record_without_a_timestamp_is_not_checked() -> None:
    times: list[float | str] = [NOW * 1000, NOW * 1000]
    sender, core, _, _, _ = ingest([Run(times, [NOW_MS, NO_TIMESTAMP]).run()])
    assert [letter["rs.offset"] for letter in sender.letters()] == [b"10"]
    assert buffered(core) == [(NOW * 1000, 11)]


def test_records_refused_before_it_keep_each_event_on_its_own_record() -> None:
    """Records refused by the decoder leave gaps: the guard still pairs each event with its
    own record's timestamp."""
    times: list[float | str] = ["{", NOW - 5, "not json", (NOW - 4) * 1000, NOW - 3]
    ahead = int((NOW - 4) * 1000 * 1000)  # the far-future event's record, stamped as far ahead
    sender, core, _, _, dead = ingest([Run(times, [0, NOW_MS, 0, ahead, NOW_MS]).run()])
    assert dead == {"bad_json": 2}  # each within the bound of its own record
    assert buffered(core) == [(NOW - 5, 11), (NOW - 3, 14), ((NOW - 4) * 1000, 13)]

    sender, core, _, _, dead = ingest([Run(times, [0, NOW_MS, 0, NOW_MS, NOW_MS]).run()])
    assert dead == {"bad_json": 2, IN_FUTURE: 1}
    future = [letter for letter in sender.letters() if letter["rs.reason"] == IN_FUTURE.encode()]
    assert [letter["rs.offset"] for letter in future] == [b"13"]
    assert buffered(core) == [(NOW - 5, 11), (NOW - 3, 14)]


def test_records_skipped_after_a_restore_keep_each_event_on_its_own_record() -> None:
    times: list[float | str] = [NOW - 9, NOW - 8, NOW * 1000, NOW - 6]
    run = Run(times, [NOW_MS] * 4)
    sender, core, _, offsets, _ = ingest([run.run()], skip={"f:1": [(10, 12)]})
    assert [letter["rs.offset"] for letter in sender.letters()] == [b"12"]
    assert buffered(core) == [(NOW - 6, 13)]
    assert offsets == {"f:1": 14}


def test_timestamps_are_read_only_for_runs_whose_times_could_pass_the_bound() -> None:
    """A dataset's index as event time (the benchmarks, the demo) never reads a timestamp; an
    epoch-seconds run reads them once, and builds no whole record unless one is refused."""
    small = Run([0.0, 1.0, 2.0, 3600.0], [NOW_MS] * 4)
    epoch = Run([NOW - 3, NOW - 2, NOW + 3599], [NOW_MS] * 3, first=20)
    sender, core, _, _, _ = ingest([small.run(), epoch.run()])
    assert not sender.sent and len(buffered(core)) == 7
    assert (small.timestamp_reads, small.record_reads) == (0, 0)
    assert (epoch.timestamp_reads, epoch.record_reads) == (1, 0)


@pytest.mark.parametrize("max_future", [0.0, 1e30])
def test_max_future_zero_turns_the_guard_off(max_future: float) -> None:
    run = Run([NOW * 1000], [NOW_MS])
    sender, core, watermark, _, _ = ingest([run.run()], max_future=max_future)
    assert not sender.sent and buffered(core) == [(NOW * 1000, 10)]
    assert watermark.max_seen((0, 1)) == NOW * 1000
    assert run.timestamp_reads == 0


def test_the_setting_and_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().max_future_seconds == 3600.0
    monkeypatch.setenv("RIVERSTREAM_MAX_FUTURE_SECONDS", "0")
    assert Settings().max_future_seconds == 0.0
    monkeypatch.setenv("RIVERSTREAM_MAX_FUTURE_SECONDS", "-1")
    with pytest.raises(ValueError, match="max_future_seconds"):
        Settings()


def test_a_run_without_a_timestamp_reader_reads_them_from_its_records() -> None:
    """Runs built without a reader (the backfill's cut runs, other sources) still decide."""
    run = Run([NOW - 1, NOW * 1000], [NOW_MS, NOW_MS])
    plain = RecordRun(FEATURES, 1, list(run.offsets), list(run.values), run._record)
    sender, _, _, _, _ = ingest([plain])
    assert [letter["rs.offset"] for letter in sender.letters()] == [b"11"]
