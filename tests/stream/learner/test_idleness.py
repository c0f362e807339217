"""Idleness of the inputs, on a clock and log ends of the test's own: a source turns idle only
after a whole grace without records, however the checks fall between its records."""

from __future__ import annotations

from learners.watermark import Watermark
from stream.learner.idleness import Idleness

SOURCE = (0, 0)
KEY = "f:0"


class Ends:
    """Stands in for the Kafka source: only the log ends are read."""

    def __init__(self) -> None:
        self.end = 0

    def end_offsets(self) -> dict[tuple[str, int], int]:
        return {("f", 0): self.end}


def _idleness(grace: float) -> tuple[Idleness, Ends, Watermark, list[float]]:
    ends, clock = Ends(), [0.0]
    idleness = Idleness(ends, [SOURCE], ("f", "l"), grace, lambda: clock[0])  # type: ignore[arg-type]
    return idleness, ends, Watermark([SOURCE]), clock


def test_a_source_that_trickles_records_between_checks_never_turns_idle() -> None:
    """Each record is read before the next check, so every check finds the source caught up:
    it still is not idle, since records keep coming (a regression: the grace used to run from
    the first check that found it caught up, and a slow partition turned idle mid-stream)."""
    idleness, ends, watermark, clock = _idleness(grace=1.0)
    for step in range(40):  # a record every 0.3 s, for 12 s
        clock[0] = step * 0.3
        ends.end = step + 1
        idleness.update(clock[0], False, {KEY: step + 1}, watermark)
        assert SOURCE not in watermark.idle_sources(), clock[0]
    assert not idleness.all_idle()


def test_a_source_without_records_for_the_grace_turns_idle() -> None:
    idleness, ends, watermark, clock = _idleness(grace=1.0)
    ends.end = 5
    for now in (0.0, 0.4, 0.8):
        clock[0] = now
        idleness.update(now, False, {KEY: 5}, watermark)
        assert SOURCE not in watermark.idle_sources()
    clock[0] = 1.2
    idleness.update(1.2, False, {KEY: 5}, watermark)
    assert SOURCE in watermark.idle_sources() and idleness.all_idle()
    # a record after that: not idle any more, and a new grace before it is again
    ends.end = 6
    clock[0] = 1.5
    idleness.update(1.5, False, {KEY: 6}, watermark)
    assert SOURCE not in watermark.idle_sources()
    clock[0] = 2.6
    idleness.update(2.6, False, {KEY: 6}, watermark)
    assert SOURCE in watermark.idle_sources()


def test_a_source_behind_its_log_end_is_not_caught_up() -> None:
    idleness, ends, watermark, clock = _idleness(grace=0.5)
    ends.end = 10
    for now in (0.0, 1.0, 2.0):
        clock[0] = now
        idleness.update(now, False, {KEY: 3}, watermark)
    assert SOURCE not in watermark.idle_sources() and not idleness.all_caught_up()


def test_a_stream_that_resumes_gives_every_source_the_grace_again() -> None:
    """Every source idle (a pause), then records on one: the other is not left idle (its older
    events may still be on their way) until a whole grace passes without records from it."""
    other, other_key = (0, 1), "f:1"
    ends, clock = Ends(), [0.0]
    ends.end_offsets = lambda: {("f", 0): ends.end, ("f", 1): 3}  # type: ignore[method-assign]
    sources = [SOURCE, other]
    idleness = Idleness(ends, sources, ("f", "l"), 1.0, lambda: clock[0])  # type: ignore[arg-type]
    watermark = Watermark(sources)
    ends.end = 3
    for now in (0.0, 0.5, 1.1):
        clock[0] = now
        idleness.update(now, False, {KEY: 3, other_key: 3}, watermark)
    assert idleness.all_idle() and watermark.idle_sources() == {SOURCE, other}
    ends.end = 5  # the stream resumes on SOURCE; what `other` has is not read (or sent) yet
    clock[0] = 5.0
    watermark.observe(SOURCE, 10.0)
    idleness.update(5.0, True, {KEY: 5, other_key: 3}, watermark)
    assert other not in watermark.idle_sources() and not idleness.all_idle()
    for now in (5.3, 5.6, 5.9):
        clock[0] = now
        idleness.update(now, False, {KEY: 5, other_key: 3}, watermark)
        assert other not in watermark.idle_sources(), now
    clock[0] = 6.1
    idleness.update(6.1, False, {KEY: 5, other_key: 3}, watermark)
    assert watermark.idle_sources() == {SOURCE, other}
