"""The prediction worker on brokers that enforce ACLs (`tests.support.acl.AclKafkaCluster`):
a worker denied its consumer group or the requests topic stops at start with exit status 2 and
a message naming RIVERSTREAM_KAFKA_SASL_USERNAME, the operation and the resource, never the
password (it sat without a request, after one warning); a worker whose requests topic is
quiet rides out its Read removed once a fetch response came, an ERROR while requests wait, and
answers them once allowed again (it exited 2); a worker denied the predictions topic's Write
commits nothing it could not write and says so, naming the topic, until the ACL is granted:
then every request is answered (it said "not stored" and Kafka's error code, each second). The
cluster is started once for the module."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from schemas.settings import Settings
from stream.dev.ports import free_port
from stream.kafka.client import create_topics, partitions_for
from stream.store.snapshots import open_store
from tests.stream.predict.test_metrics import scrape
from tests.stream.predict.test_worker import stop
from tests.support.acl import AclServices, acl_services
from tests.support.cluster import stop_all
from tests.support.pipeline import spawn_cli
from tests.support.scoring import publish_clf
from tests.support.serving import Kit
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]
USERS = ("nogroup", "noread", "nowrite", "quiet")
NOT_AN_OUTAGE = "a configuration error, not an outage; its ACLs must allow it"
PREFIXED = True


@pytest.fixture(scope="module")
def acl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclServices]:
    with acl_services(tmp_path_factory.mktemp("acl"), USERS) as services:
        yield services


def worker_settings(
    acl: AclServices, user: str, acls: list[tuple[str, str, str, bool]]
) -> Settings:
    """``user``'s settings with topics, group and Redis prefix of its own, its topics created,
    ``acls`` granted (the group and topics' names: ``rs-w…``)."""
    tag = f"rs-w{uuid.uuid4().hex[:8]}"
    s = acl.as_user(user, redis_prefix=tag, predict_group=tag, serve_poll_seconds=0.2,
                    **acl.topics(tag))  # fmt: skip
    assert s.kafka_bootstrap_servers
    create_topics(s.kafka_bootstrap_servers, s.topics(), security=acl.kafka.security())
    acl.kafka.grant(user, [(op, kind, tag if name == "*" else name, prefixed)
                           for op, kind, name, prefixed in acls])  # fmt: skip
    return s


def request(acl: AclServices, s: Settings, inputs: list[dict[str, object]], n: int) -> None:
    """``n`` requests for ``clf``, written as the brokers' super user."""
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap_servers, "acks": "all",
                         **acl.kafka.security().librdkafka()})  # fmt: skip
    for i in range(n):
        value = orjson.dumps({"id": f"r{i}", "target": "clf", "features": inputs[i]})
        producer.produce(s.topic_requests, value, f"r{i}".encode())
    assert producer.flush(30) == 0


def denied_at_start(acl: AclServices, tmp_path: Path, user: str, s: Settings, said: str) -> None:
    log = tmp_path / f"{user}.log"
    proc = spawn_cli(s, ["predict-worker", "--metrics-port", "0"], log)
    try:
        wait_until(lambda: proc.poll() is not None, 90, f"{user}'s worker to stop", log=log)
    finally:
        stop_all([proc])
    text = log.read_text()
    expected = (f"error: Kafka at {acl.kafka.bootstrap} does not let the user of "
                f"RIVERSTREAM_KAFKA_SASL_USERNAME ({user}) {said}: {NOT_AN_OUTAGE}")  # fmt: skip
    assert proc.returncode == 2, text[-3000:]
    assert expected in " ".join(text.split()), text[-3000:]
    assert acl.kafka.users[user] not in text


def test_a_worker_denied_its_group_or_the_requests_topic_stops_at_start(
    acl: AclServices, tmp_path: Path
) -> None:
    topics = ("Read", "topic", "*", PREFIXED)
    writes = ("Write", "topic", "*", PREFIXED)
    nogroup = worker_settings(acl, "nogroup", [topics, writes])
    noread = worker_settings(acl, "noread", [("Describe", "topic", "*", PREFIXED), writes,
                                             ("Read", "group", "*", PREFIXED)])  # fmt: skip
    for s in (nogroup, noread):
        publish_clf(Kit, open_store(s), s)
    denied_at_start(
        acl, tmp_path, "nogroup", nogroup, f"read consumer group {nogroup.predict_group}"
    )
    denied_at_start(acl, tmp_path, "noread", noread, f"read topic {noread.topic_requests}")


def committed(acl: AclServices, s: Settings) -> int:
    """The requests the worker's group has committed (as the super user)."""
    assert s.kafka_bootstrap_servers
    consumer = Consumer({"bootstrap.servers": s.kafka_bootstrap_servers,
                         "group.id": s.predict_group, **acl.kafka.security().librdkafka()})  # fmt: skip
    try:
        parts = partitions_for(s.kafka_bootstrap_servers, s.topic_requests,
                               security=acl.kafka.security())  # fmt: skip
        tps = consumer.committed([TopicPartition(s.topic_requests, p) for p in parts], timeout=10)
        return sum(max(tp.offset, 0) for tp in tps)
    finally:
        consumer.close()


def answers(acl: AclServices, s: Settings) -> set[str]:
    """The ids answered on the predictions topic so far (as the super user)."""
    from stream.kafka.client import read_all

    assert s.kafka_bootstrap_servers
    records = read_all(s.kafka_bootstrap_servers, [s.topic_predictions], timeout=5,
                       security=acl.kafka.security())  # fmt: skip
    return {orjson.loads(r.value)["id"] for r in records}


def test_answers_the_acls_deny_are_not_committed_but_said_then_written_once_allowed(
    acl: AclServices, tmp_path: Path
) -> None:
    n = 5
    s = worker_settings(acl, "nowrite", [("Read", "topic", "*", PREFIXED),
                                        ("Read", "group", "*", PREFIXED)])  # fmt: skip
    dlq = ("Write", "topic", s.topic_dlq, not PREFIXED)
    acl.kafka.grant("nowrite", [dlq])
    _version, inputs = publish_clf(Kit, open_store(s), s)
    request(acl, s, inputs, n)
    log = tmp_path / "worker.log"
    proc = spawn_cli(s, ["predict-worker", "--metrics-port", "0", "--report-every", "0.5"], log)
    try:
        said = (f"ERROR stream.predict.worker: Kafka at {acl.kafka.bootstrap} does not let the "
                f"user of RIVERSTREAM_KAFKA_SASL_USERNAME (nowrite) write topic "
                f"{s.topic_predictions}: {NOT_AN_OUTAGE}")  # fmt: skip
        wait_until(lambda: said in " ".join(log.read_text().split()), 60, "the ERROR", log=log)
        assert proc.poll() is None, log.read_text()[-3000:]
        assert committed(acl, s) == 0, "nothing the worker could not write is committed"
        assert log.read_text().count(said) == 1, "said once a minute, not at each retry"
        acl.kafka.grant("nowrite", [("Write", "topic", s.topic_predictions, not PREFIXED)])
        wait_until(lambda: committed(acl, s) == n, 60, "the requests committed", log=log)
        assert answers(acl, s) == {f"r{i}" for i in range(n)}
        assert acl.kafka.users["nowrite"] not in log.read_text()
    finally:
        stop(proc)


def test_a_read_denied_after_a_quiet_start_is_waited_out(acl: AclServices, tmp_path: Path) -> None:
    """A worker whose requests topic is still empty has read once a fetch response came (its
    lag is measured from the log end that response cached): the topic's Read removed afterwards,
    hours later as well, is an ERROR while requests wait, as for a worker that had answered
    requests (it exited 2, a start's denial). A request sent once it is allowed is answered."""
    s = worker_settings(acl, "quiet", [("Write", "topic", "*", PREFIXED),
                                      ("Read", "group", "*", PREFIXED)])  # fmt: skip
    reads = ("Read", "topic", s.topic_requests, not PREFIXED)
    acl.kafka.grant("quiet", [reads])
    _version, inputs = publish_clf(Kit, open_store(s), s)
    port, log = free_port(), tmp_path / "worker.log"
    proc = spawn_cli(s, ["predict-worker", "--metrics-port", str(port)], log)
    try:
        wait_until(
            lambda: lag_measured(port, s), 60, "a fetch response from every partition", log=log
        )
        acl.kafka.revoke("quiet", [reads])
        said = (f"ERROR stream.predict.worker: Kafka at {acl.kafka.bootstrap} does not let the "
                f"user of RIVERSTREAM_KAFKA_SASL_USERNAME (quiet) read topic "
                f"{s.topic_requests}: {NOT_AN_OUTAGE}")  # fmt: skip
        wait_until(lambda: said in " ".join(log.read_text().split()) or proc.poll() is not None,
                   60, "the denial's ERROR", log=log)  # fmt: skip
        assert proc.poll() is None, log.read_text()[-3000:]
        acl.kafka.grant("quiet", [reads])
        request(acl, s, inputs, 1)
        wait_until(lambda: answers(acl, s) == {"r0"}, 60, "the request answered", log=log)
        assert stop(proc) == 0, log.read_text()[-3000:]
    finally:
        stop(proc)


def lag_measured(port: int, s: Settings) -> bool:
    """Whether the worker on ``port`` measures the lag of every requests partition: it does
    once a fetch response cached the partition's log end (the worker asks the same cache after
    each empty poll, every 0.1 s at most: sooner than a revoked ACL reaches its fetches)."""
    try:
        samples = scrape(port)
    except httpx.HTTPError:  # not listening yet
        return False
    lags = [labels for (name, labels), _ in samples.items()
            if name == "riverstream_predict_consumer_lag"
            and dict(labels)["topic"] == s.topic_requests]  # fmt: skip
    return len(lags) == s.partitions
