"""The learner's dead letters on brokers that enforce ACLs (`tests.support.acl.AclKafkaCluster`).

A learner whose user may not write the dead-letter topic does not start: Kafka tells it its
operations on the topic (KIP-430), and it exits 2 with a message naming
RIVERSTREAM_KAFKA_SASL_USERNAME, the Write and the topic (it learned on until its first
malformed record, hours later maybe); with the Write granted it starts. A Write revoked under a
running learner stops it at its first dead letter with exit status 2, naming the dead letters
not written (it said "1 of 1 dead letters to … were not delivered"), and no snapshot passes the
malformed record: once the ACL is granted again, a learner started again dead-letters it. A user
that may not even describe the topic cannot be told its operations: the learner starts, with
one WARNING.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from confluent_kafka import Producer

from schemas.settings import Settings
from stream.kafka.client import create_topics, read_all, topic_operations
from stream.kafka.security import kafka_security
from stream.learner.runtime import snapshot_store
from tests.support.acl import AclServices, acl_services
from tests.support.cluster import stop_all
from tests.support.pipeline import spawn_cli
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NOT_AN_OUTAGE = "a configuration error, not an outage; its ACLs must allow it"
BAD = b'{"id": "bad", "time": 1.0, "features": '
LEARN = ["learn", "--model", "lr=logreg", "--exit-when-idle", "2"]


@pytest.fixture(scope="module")
def acl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclServices]:
    with acl_services(tmp_path_factory.mktemp("acl"), ["nodlq", "revoked", "blind"]) as services:
        yield services


def _learner_user(acl: AclServices, user: str, *, blind: bool = False) -> Settings:
    """``user``'s settings, on topics of their own that exist, which it may read (and write the
    features topic: an idempotent producer's id), in its own group; not the dead-letter topic's
    Write. ``blind``: not its Describe either (nor Read, which implies it), only its Create
    (without which `create_topics` would create it, counted missing, and be denied)."""
    tag = f"rs-l{uuid.uuid4().hex[:8]}"
    s = acl.as_user(user, redis_prefix=tag, snapshot_every_labels=1, **acl.topics(tag))
    assert s.kafka_bootstrap_servers
    create_topics(s.kafka_bootstrap_servers, s.topics(), security=acl.kafka.security())
    reads = [("Read", "topic", tag, True)]
    if blind:
        reads = [("Read", "topic", t, False) for t in s.topics() if t != s.topic_dlq]
        reads.append(("Create", "topic", s.topic_dlq, False))
    acl.kafka.grant(user, [*reads, ("Read", "group", tag, True),
                           ("Write", "topic", s.topic_features, False)])  # fmt: skip
    return s


def _produce(acl: AclServices, s: Settings, *, bad: bool) -> None:
    """Three events and their labels on partition 0, after a malformed record when ``bad``."""
    assert s.kafka_bootstrap_servers
    config = {"bootstrap.servers": s.kafka_bootstrap_servers, **acl.kafka.security().librdkafka()}
    producer = Producer(config)
    if bad:
        producer.produce(s.topic_features, BAD, b"bad", partition=0)
    for i in range(3):
        event = b'{"id": "f%d", "time": %d.0, "features": {"x": 1.0}}' % (i, i + 2)
        producer.produce(s.topic_features, event, b"f%d" % i, partition=0)
        producer.produce(s.topic_labels, b'{"id": "f%d", "time": %d.5, "label": true}' % (i, i + 2),
                         b"f%d" % i, partition=0)  # fmt: skip
    assert producer.flush(30) == 0


def _denied(acl: AclServices, s: Settings, user: str) -> str:
    return (f"error: Kafka at {acl.kafka.bootstrap} does not let the user of "
            f"RIVERSTREAM_KAFKA_SASL_USERNAME ({user}) write topic {s.topic_dlq}: "
            f"{NOT_AN_OUTAGE} (README, Security: the kafka-acls.sh lines); ")  # fmt: skip


def _run(s: Settings, args: list[str], log: Path, timeout: float) -> int:
    proc = spawn_cli(s, args, log)
    try:
        wait_until(lambda: proc.poll() is not None, timeout, "the learner to stop", log=log)
    finally:
        stop_all([proc])
    return proc.returncode


def test_a_learner_denied_the_dead_letter_write_does_not_start(
    acl: AclServices, tmp_path: Path
) -> None:
    """No malformed record: it learned on, exit 0, the denial unseen until the first one."""
    s = _learner_user(acl, "nodlq")
    _produce(acl, s, bad=False)
    log = tmp_path / "denied.log"
    code = _run(s, LEARN, log, 90)
    text = " ".join(log.read_text().split())
    assert code == 2, text[-3000:]
    assert _denied(acl, s, "nodlq") + "the learner does not start" in text, text[-3000:]
    assert acl.kafka.users["nodlq"] not in text
    assert snapshot_store(s).latest_version("lr") is None, "it learned nothing"
    acl.kafka.grant("nodlq", [("Write", "topic", s.topic_dlq, False)])
    log = tmp_path / "allowed.log"
    assert _run(s, LEARN, log, 120) == 0, log.read_text()[-3000:]
    assert "could not be checked" not in log.read_text()
    assert snapshot_store(s).latest_version("lr") is not None


def test_a_dead_letter_topic_the_user_may_not_describe_is_not_checked_and_it_starts(
    acl: AclServices, tmp_path: Path
) -> None:
    """Kafka cannot tell the operations on a topic the user may not describe: one WARNING says
    that the Write could not be checked, and the learner starts (its first dead letter tells)."""
    s = _learner_user(acl, "blind", blind=True)
    _produce(acl, s, bad=False)
    log = tmp_path / "blind.log"
    assert _run(s, LEARN, log, 120) == 0, log.read_text()[-3000:]
    text = " ".join(log.read_text().split())
    said = (f"WARNING stream.kafka.deadletter: the dead-letter topic's Write could not be checked "
            f"at start (its first dead letter will tell): Kafka at {acl.kafka.bootstrap} does not "
            f"let the user of RIVERSTREAM_KAFKA_SASL_USERNAME (blind) describe topic "
            f"{s.topic_dlq}")  # fmt: skip
    assert text.count(said) == 1, text[-3000:]
    assert snapshot_store(s).latest_version("lr") is not None


def test_a_dead_letter_the_acls_deny_stops_the_learner_before_its_record_is_passed(
    acl: AclServices, tmp_path: Path
) -> None:
    """The Write granted at start (the learner starts), revoked before the malformed record."""
    s = _learner_user(acl, "revoked")
    assert s.kafka_bootstrap_servers
    dlq = ("Write", "topic", s.topic_dlq, False)
    acl.kafka.grant("revoked", [dlq])
    log = tmp_path / "denied.log"
    proc = spawn_cli(s, ["learn", "--model", "lr=logreg"], log)
    try:
        wait_until(lambda: f"(dead letters: {s.topic_dlq})" in log.read_text(), 90,
                   "the learner to start", log=log)  # fmt: skip
        acl.kafka.revoke("revoked", [dlq])
        security = kafka_security(s)  # the user's: the brokers say the Write is gone
        wait_until(lambda: "WRITE" not in (topic_operations(cast(str, s.kafka_bootstrap_servers),
                                                            s.topic_dlq, security=security)
                                           or {"WRITE"}), 30, "the Write revoked")  # fmt: skip
        _produce(acl, s, bad=True)
        wait_until(lambda: proc.poll() is not None, 90, "the learner to stop", log=log)
    finally:
        stop_all([proc])
    text = " ".join(log.read_text().split())
    said = _denied(acl, s, "revoked") + f"1 of 1 dead letters to {s.topic_dlq} were not written"
    assert proc.returncode == 2, text[-3000:]
    assert said in text, text[-3000:]
    assert acl.kafka.users["revoked"] not in text
    assert snapshot_store(s).latest_version("lr") is None, "no checkpoint passed the record"
    acl.kafka.grant("revoked", [dlq])
    log = tmp_path / "allowed.log"
    assert _run(s, LEARN, log, 120) == 0, log.read_text()[-3000:]
    admin = acl.kafka.security()
    dead = read_all(s.kafka_bootstrap_servers, [s.topic_dlq], security=admin)
    assert [r.value for r in dead] == [BAD]
