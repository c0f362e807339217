"""`stream.kafka.deadletter.check_writable`, the learner's start-time question, where it finds
nothing to refuse: a broker without an authorizer (the local default) says every operation, and
nothing is logged; a broker that does not answer holds the start a few seconds at most, with one
INFO line. Denials are in `test_deadletter_acl.py`."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from schemas.settings import Settings
from stream.kafka.client import OPERATIONS_SECONDS, create_topics, topic_operations
from stream.kafka.deadletter import check_writable
from stream.kafka.security import PLAINTEXT


def test_a_broker_without_authorizer_lets_the_learner_start_silently(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    bootstrap = settings.kafka_bootstrap_servers or ""
    create_topics(bootstrap, {settings.topic_dlq: 1})
    assert "WRITE" in (topic_operations(bootstrap, settings.topic_dlq) or set())
    with caplog.at_level(logging.DEBUG, logger="stream.kafka.deadletter"):
        check_writable(bootstrap, settings.topic_dlq, PLAINTEXT)
    assert not caplog.records, caplog.text


def test_a_broker_that_does_not_answer_holds_the_start_briefly(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """Within `OPERATIONS_SECONDS` (and a margin), one INFO line, nothing of librdkafka's own on
    stderr."""
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        bootstrap = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with caplog.at_level(logging.DEBUG, logger="stream.kafka.deadletter"):
            check_writable(bootstrap, "rs.dlq", PLAINTEXT)
        took = time.monotonic() - started
    assert took < OPERATIONS_SECONDS + 2, took
    [line] = caplog.records
    assert line.levelno == logging.INFO
    assert "dead-letter topic's Write could not be checked" in line.getMessage()
    assert capfd.readouterr().err == ""
