"""The learner's dead letters on brokers that enforce ACLs (`tests.support.acl.AclKafkaCluster`):
a learner whose user may not write the dead-letter topic stops at its first dead letter with
exit status 2 and a message naming RIVERSTREAM_KAFKA_SASL_USERNAME, the topic and the dead
letters not written (it said "1 of 1 dead letters to … were not delivered"), and no snapshot
passes the malformed record: once the ACL is granted, a learner started again dead-letters it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer

from stream.kafka.client import create_topics, read_all
from stream.learner.runtime import snapshot_store
from tests.support.acl import AclServices, acl_services
from tests.support.cluster import stop_all
from tests.support.pipeline import spawn_cli
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NOT_AN_OUTAGE = "a configuration error, not an outage; its ACLs must allow it"
BAD = b'{"id": "bad", "time": 1.0, "features": '


@pytest.fixture(scope="module")
def acl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclServices]:
    with acl_services(tmp_path_factory.mktemp("acl"), ["nodlq"]) as services:
        yield services


def test_a_dead_letter_the_acls_deny_stops_the_learner_before_its_record_is_passed(
    acl: AclServices, tmp_path: Path
) -> None:
    tag = f"rs-l{uuid.uuid4().hex[:8]}"
    s = acl.as_user("nodlq", redis_prefix=tag, snapshot_every_labels=1, **acl.topics(tag))
    assert s.kafka_bootstrap_servers
    admin = acl.kafka.security()
    create_topics(s.kafka_bootstrap_servers, s.topics(), security=admin)
    acl.kafka.grant("nodlq", [("Read", "topic", tag, True), ("Read", "group", tag, True),
                              ("Write", "topic", s.topic_features, False)])  # fmt: skip
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap_servers, **admin.librdkafka()})
    producer.produce(s.topic_features, BAD, b"bad", partition=0)
    for i in range(3):
        event = b'{"id": "f%d", "time": %d.0, "features": {"x": 1.0}}' % (i, i + 2)
        producer.produce(s.topic_features, event, b"f%d" % i, partition=0)
        producer.produce(s.topic_labels, b'{"id": "f%d", "time": %d.5, "label": true}' % (i, i + 2),
                         b"f%d" % i, partition=0)  # fmt: skip
    assert producer.flush(30) == 0
    learn = ["learn", "--model", "lr=logreg", "--exit-when-idle", "2"]
    log = tmp_path / "denied.log"
    proc = spawn_cli(s, learn, log)
    try:
        wait_until(lambda: proc.poll() is not None, 90, "the learner to stop", log=log)
    finally:
        stop_all([proc])
    text = " ".join(log.read_text().split())
    said = (f"error: Kafka at {acl.kafka.bootstrap} does not let the user of "
            f"RIVERSTREAM_KAFKA_SASL_USERNAME (nodlq) write topic {s.topic_dlq}: "
            f"{NOT_AN_OUTAGE} (README, Security: the kafka-acls.sh lines); 1 of 1 dead letters "
            f"to {s.topic_dlq} were not written")  # fmt: skip
    assert proc.returncode == 2, text[-3000:]
    assert said in text, text[-3000:]
    assert acl.kafka.users["nodlq"] not in text
    assert snapshot_store(s).latest_version("lr") is None, "no checkpoint passed the record"
    acl.kafka.grant("nodlq", [("Write", "topic", s.topic_dlq, False)])
    log = tmp_path / "allowed.log"
    proc = spawn_cli(s, learn, log)
    try:
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        stop_all([proc])
    dead = read_all(s.kafka_bootstrap_servers, [s.topic_dlq], security=admin)
    assert [r.value for r in dead] == [BAD]
