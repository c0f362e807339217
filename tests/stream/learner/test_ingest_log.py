"""Dead letters say so in the learner's log (`stream.learner.ingest.Ingest`): the first of each
reason, then each time its count reaches a power of two, with the latest's error. A stream that
dead-letters every event (labels of another type, times in milliseconds) showed nothing in the
log before the learner's exit line. Unit level, with the records built by hand of
`test_ingest_future_runs.py` (no broker)."""

from __future__ import annotations

import logging

import pytest

from tests.stream.learner.test_ingest_future_runs import NOW, NOW_MS, Run, ingest


def test_each_reason_is_logged_at_its_first_dead_letter_then_at_each_doubling(
    caplog: pytest.LogCaptureFixture,
) -> None:
    times: list[float | str] = ["not json"] * 9 + [(NOW - 5) * 1000] * 3 + [NOW - 1]
    with caplog.at_level(logging.WARNING, logger="stream.learner.ingest"):
        _, _, _, _, dead = ingest([Run(times, [NOW_MS] * len(times)).run()])
    assert dead == {"bad_json": 9, "event_time_in_future": 3}
    lines = [r.getMessage() for r in caplog.records]
    counts = [(line.split()[0], line.split("reason ")[1].split()[0]) for line in lines]
    assert counts == [
        ("1", "bad_json"), ("2", "bad_json"), ("4", "bad_json"), ("8", "bad_json"),
        ("1", "event_time_in_future"), ("2", "event_time_in_future"),
    ]  # fmt: skip
    assert "milliseconds" in lines[-1]  # the latest's error, naming the likely cause
