"""Kafka's ACLs: what riverstream's user needs, and a denial as a configuration error.

The brokers enforce ACLs (`tests.support.acl.AclKafkaCluster`: StandardAuthorizer, nothing
allowed without an ACL; SASL_SSL as in `test_security.py`), with a Redis of their own, so that
the default topic and group names are the ones the README's ``kafka-acls.sh`` lines name. Those
lines are run by Kafka's own tool (``AclCommand``), which adds exactly the ACLs they say; a user
with them creates the topics, publishes a stream and learns it (equal to River). Users
denied creating the topics, writing the features topic or reading the learner's group get exit
status 2 and a message naming RIVERSTREAM_KAFKA_SASL_USERNAME, the operation and the resource,
never the password; they said "creating topics failed:" and the whole request, counted each
record as failed without a reason (exit 1), and "consume failed: KafkaError{…}". The cluster is
started once for the module.
"""

from __future__ import annotations

import json
import logging
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from learners.datasets import dataset_events
from schemas.errors import KafkaAdapterError
from schemas.settings import Settings
from stream.dev.secure import make_certificates
from stream.kafka.auth import KafkaAccessError
from stream.kafka.client import create_topics, open_source, partitions_for
from stream.kafka.consumer import ConfluentSource
from stream.kafka.security import kafka_security
from stream.learner.runtime import snapshot_store
from tests.support.acl import (
    AclServices,
    acl_bindings,
    acl_services,
    parse_acl_line,
    readme_acl_lines,
)
from tests.support.cluster import assert_equal_to_river, stop_all
from tests.support.pipeline import fast, publish, spawn_cli
from tests.support.waiting import wait_until

DATASET, LIMIT, DELAY, SEED = "synth.Agrawal", 1_000, 50, 23
USERS = ("riverstream", "nocreate", "nowrite", "nogroup", "revoked", "blinded", "quiet", "unread")
NOT_AN_OUTAGE = "a configuration error, not an outage; its ACLs must allow it"


@pytest.fixture(scope="module")
def acl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclServices]:
    with acl_services(tmp_path_factory.mktemp("acl"), USERS) as services:
        yield services


def as_user(acl: AclServices, user: str, **changes: object) -> Settings:
    password = SecretStr(acl.kafka.users[user])
    return fast(acl.settings, kafka_sasl_username=user, kafka_sasl_password=password, **changes)


@pytest.mark.integration
@pytest.mark.slow
def test_the_readme_acls_let_riverstream_create_the_topics_publish_and_learn(
    acl: AclServices, tmp_path: Path
) -> None:
    """Each README line run by Kafka's AclCommand (exit status 0) adds the ACLs
    `parse_acl_line` reads from it, no other; with them riverstream's user (the principal the
    lines name) creates the topics, publishes and learns."""
    lines = readme_acl_lines()
    assert len(lines) == 2, lines
    for line in lines:
        _run_acl_line(acl, line, tmp_path)
    s = fast(acl.settings)
    _run(s, ["topics", "create"], tmp_path / "topics.log")
    events = list(dataset_events(DATASET, label_delay=DELAY, limit=LIMIT, seed=SEED))
    report = publish(s, events)
    assert report.failed == 0 and report.sent == len(events), report.errors
    learn = ["learn", "--model", "lr=logreg", "--metric", "Accuracy", "--exit-when-idle", "2"]
    _run(s, learn, tmp_path / "learner.log", timeout=180)
    assert_equal_to_river(s, DATASET, LIMIT, DELAY, SEED)


@pytest.mark.integration
@pytest.mark.slow
def test_acls_denying_a_topic_or_the_group_stop_the_cli_naming_user_operation_and_resource(
    acl: AclServices, tmp_path: Path
) -> None:
    """``topics create`` without Create, ``publish features`` with Write on the labels topic
    only, ``learn`` without the group: each exits 2 with the message."""
    kafka, prefixed = acl.kafka, True
    topics = [("Read", "topic", "riverstream.", prefixed)]
    group = ("Read", "group", "riverstream", prefixed)
    kafka.grant("nocreate", [*topics, ("Write", "topic", "riverstream.", prefixed), group])
    kafka.grant("nowrite", [*topics, ("Create", "topic", "riverstream.", prefixed),
                            ("Write", "topic", "riverstream.labels", not prefixed), group])  # fmt: skip
    kafka.grant("nogroup", [*topics, ("Create", "topic", "riverstream.", prefixed),
                            ("Write", "topic", "riverstream.", prefixed)])  # fmt: skip
    tag = uuid.uuid4().hex[:8]
    new_topics = {f"topic_{kind}": f"riverstream.c{tag}.{kind}"
                  for kind in ("features", "labels", "dlq", "requests", "predictions")}  # fmt: skip
    features = tmp_path / "features.jsonl"
    features.write_text(json.dumps({"id": "acl-1", "time": 1.0, "features": {"x": 1.0}}) + "\n")
    runs = {
        "nocreate": (["topics", "create"],
                     f"create topics {', '.join(new_topics.values())}"),
        "nowrite": (["publish", "features", str(features)], "write topic riverstream.features"),
        "nogroup": (["learn", "--model", "lr=logreg"], "read consumer group riverstream-learner"),
    }  # fmt: skip
    logs = {user: tmp_path / f"{user}.log" for user in runs}
    procs = {
        user: spawn_cli(as_user(acl, user, **(new_topics if user == "nocreate" else {})),
                        args, logs[user])
        for user, (args, _said) in runs.items()
    }  # fmt: skip
    try:
        for user, proc in procs.items():
            _wait_stopped(proc, 120, logs[user])
    finally:
        stop_all(list(procs.values()))
    for user, (_args, said) in runs.items():
        text = logs[user].read_text()
        expected = (f"error: Kafka at {kafka.bootstrap} does not let the user of "
                    f"RIVERSTREAM_KAFKA_SASL_USERNAME ({user}) {said}: {NOT_AN_OUTAGE}")  # fmt: skip
        assert procs[user].returncode == 2, text[-3000:]
        assert expected in " ".join(text.split()), text[-3000:]
        assert kafka.users[user] not in text


@pytest.mark.integration
@pytest.mark.slow
def test_a_read_denied_under_a_running_learner_is_logged_and_waited_out(
    acl: AclServices, tmp_path: Path
) -> None:
    """The features topic's Read removed while the learner runs: an ERROR naming the user, the
    operation and the topic, and the learner runs on (it stopped on "consume failed")."""
    tag = uuid.uuid4().hex[:8]
    names = {f"topic_{kind}": f"riverstream.r{tag}.{kind}"
             for kind in ("features", "labels", "dlq", "requests", "predictions")}  # fmt: skip
    s = as_user(acl, "revoked", redis_prefix=f"rv{tag}", snapshot_every_labels=100, **names)
    features = ("Read", "topic", names["topic_features"], False)
    acl.kafka.grant("revoked", [features, ("Read", "topic", names["topic_labels"], False),
                                ("Create", "topic", "riverstream.", True),
                                ("Write", "topic", "riverstream.", True),
                                ("Read", "group", f"rv{tag}", True)])  # fmt: skip
    events = list(dataset_events(DATASET, label_delay=DELAY, limit=300, seed=SEED))
    assert publish(s, events).sent == len(events)
    log = tmp_path / "learner.log"
    proc = spawn_cli(s, ["learn", "--model", "lr=logreg"], log)
    try:
        store = snapshot_store(s)
        wait_until(lambda: store.latest_version("lr") is not None, 120, "a snapshot", log=log)
        acl.kafka.revoke("revoked", [features])
        said = (f"ERROR stream.kafka.consumer: Kafka at {acl.kafka.bootstrap} does not let the "
                f"user of RIVERSTREAM_KAFKA_SASL_USERNAME (revoked) read topic "
                f"{names['topic_features']}: {NOT_AN_OUTAGE}")  # fmt: skip
        wait_until(lambda: said in log.read_text(), 60, "the learner's ERROR", log=log)
        assert proc.poll() is None, log.read_text()[-3000:]
        assert acl.kafka.users["revoked"] not in log.read_text()
    finally:
        stop_all([proc])


def _run_acl_line(acl: AclServices, line: str, workdir: Path) -> None:
    """Run a README line with Kafka's AclCommand: exit status 0, and the ACLs it adds to the
    principal it names, riverstream's user, are those `parse_acl_line` reads from it."""
    user, acls = parse_acl_line(line)
    assert user == acl.settings.kafka_sasl_username == "riverstream"
    before = acl.kafka.acls(user)
    ran = acl.kafka.acl_command(line, workdir)
    said = (ran.stderr + ran.stdout)[:3000]  # what is wrong comes first, then the usage
    assert ran.returncode == 0, f"{line}\nexit status {ran.returncode}:\n{said}"
    expected = set(acl_bindings(user, acls))
    wait_until(lambda: acl.kafka.acls(user) - before == expected, 30, f"the ACLs of {line}",
               interval=0.2, detail=lambda: acl.kafka.acls(user) - before)  # fmt: skip


def _run(s: Settings, args: list[str], log: Path, timeout: float = 120) -> None:
    proc = spawn_cli(s, args, log)
    try:
        assert proc.wait(timeout=timeout) == 0, log.read_text()[-3000:]
    finally:
        stop_all([proc])


def _wait_stopped(proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    wait_until(lambda: proc.poll() is not None, timeout, f"{log.stem} to stop", log=log)


@pytest.mark.integration
def test_a_topic_whose_reads_are_denied_is_never_caught_up(acl: AclServices) -> None:
    """While the labels topic's Read is denied, its partitions are not caught up
    (`end_offsets` leaves them out): the learner's idleness would otherwise take the stale end
    of the log for reached and let the watermark pass labels not read yet. They count again
    once the ACL allows the reads (records came from the topic)."""
    tag = uuid.uuid4().hex[:8]
    names = {f"topic_{kind}": f"riverstream.b{tag}.{kind}"
             for kind in ("features", "labels", "dlq", "requests", "predictions")}  # fmt: skip
    s = as_user(acl, "blinded", redis_prefix=f"bl{tag}", **names)
    assert s.kafka_bootstrap_servers is not None
    labels = ("Read", "topic", names["topic_labels"], False)
    acl.kafka.grant("blinded", [labels, ("Read", "topic", names["topic_features"], False),
                                ("Create", "topic", "riverstream.", True),
                                ("Write", "topic", "riverstream.", True),
                                ("Read", "group", f"bl{tag}", True)])  # fmt: skip
    events = list(dataset_events(DATASET, label_delay=DELAY, limit=200, seed=SEED))
    assert publish(s, events).sent == len(events)
    security = kafka_security(s)
    topics = [names["topic_features"], names["topic_labels"]]
    positions = {
        (t, p): 0
        for t in topics
        for p in partitions_for(s.kafka_bootstrap_servers, t, security=security)
    }
    source = open_source(s.kafka_bootstrap_servers, f"bl{tag}", security=security)
    try:
        source.assign(positions)
        read = dict.fromkeys(positions, 0)

        def take() -> None:
            for run in source.poll(1000, 0.2):
                read[(run.topic, run.partition)] = run.offsets[-1] + 1

        def caught_up() -> bool:
            take()
            ends = source.end_offsets()
            return all(tp in ends and read[tp] >= ends[tp] for tp in positions)

        wait_until(caught_up, 60, "every partition read to its end")
        acl.kafka.revoke("blinded", [labels])
        more = list(dataset_events(DATASET, label_delay=DELAY, limit=400, seed=SEED))[200:]
        assert publish(s, more).sent == len(more)

        def denied_and_blind() -> bool:
            take()
            ends = source.end_offsets()
            return not any(tp in ends for tp in positions if tp[0] == names["topic_labels"])

        wait_until(denied_and_blind, 60, "the labels' ends no longer known")
        assert any(tp in source.end_offsets() for tp in positions
                   if tp[0] == names["topic_features"])  # fmt: skip
        acl.kafka.grant("blinded", [labels])
        wait_until(caught_up, 60, "the labels read again, to their end",
                   detail=lambda: (read, source.end_offsets()))  # fmt: skip
    finally:
        source.close()


@pytest.mark.integration
def test_a_certificate_kafka_python_refuses_is_named_in_the_error(
    acl: AclServices, tmp_path: Path
) -> None:
    """kafka-python says why it cannot bootstrap (here: the brokers' certificate is not signed
    by the CA given) only in its log lines, which are held back while it bootstraps: the last of
    them is in the error raised (it said only "Unable to bootstrap")."""
    other = make_certificates(tmp_path / "other")  # a CA that did not sign the brokers'
    s = as_user(acl, "riverstream", kafka_ssl_cafile=other.ca)
    assert s.kafka_bootstrap_servers is not None
    with pytest.raises(KafkaAdapterError) as raised:
        create_topics(s.kafka_bootstrap_servers, {"riverstream.never": 1},
                      security=kafka_security(s))  # fmt: skip
    assert "certificate verify failed" in str(raised.value).lower(), raised.value


@pytest.mark.integration
def test_a_read_denied_after_a_quiet_start_is_waited_out(
    acl: AclServices, caplog: pytest.LogCaptureFixture
) -> None:
    """A learner whose topics are still empty (a deployment waiting for traffic) has read once a
    fetch response came: its topic's Read removed afterwards, hours later as well, is an ERROR
    and reading waits, as for one that had read records (it raised `KafkaAccessError`, a
    start's denial: the learner exited 2). What is published once the ACL allows the reads
    again is read."""
    tag = uuid.uuid4().hex[:8]
    s = as_user(acl, "quiet", **acl.topics(f"riverstream.q{tag}"))
    assert s.kafka_bootstrap_servers is not None
    features = ("Read", "topic", s.topic_features, False)
    acl.kafka.grant("quiet", [features, ("Read", "topic", s.topic_labels, False),
                              ("Create", "topic", f"riverstream.q{tag}.", True),
                              ("Write", "topic", f"riverstream.q{tag}.", True),
                              ("Read", "group", f"q{tag}", False)])  # fmt: skip
    security = kafka_security(s)
    create_topics(s.kafka_bootstrap_servers, s.topics(), security=security)
    topics = [s.topic_features, s.topic_labels]
    positions = {(t, p): 0 for t in topics for p in range(s.partitions)}
    source = ConfluentSource(s.kafka_bootstrap_servers, f"q{tag}", security=security)
    try:
        source.assign(positions)
        wait_until(lambda: _fetched(source, positions), 60, "a fetch response from every partition")
        acl.kafka.revoke("quiet", [features])
        said = (f"does not let the user of RIVERSTREAM_KAFKA_SASL_USERNAME (quiet) read topic "
                f"{s.topic_features}: {NOT_AN_OUTAGE}")  # fmt: skip

        def denial_said() -> bool:
            assert source.poll(100, 0.1) == []  # no `KafkaAccessError`: it waits
            return any(r.levelno == logging.ERROR and said in r.getMessage()
                       for r in caplog.records)  # fmt: skip

        with caplog.at_level(logging.WARNING, logger="stream.kafka.consumer"):
            wait_until(denial_said, 60, "the denial's ERROR", detail=lambda: caplog.text)
            acl.kafka.grant("quiet", [features])
            events = list(dataset_events(DATASET, label_delay=DELAY, limit=100, seed=SEED))
            assert publish(s, events).sent == len(events)
            read = dict.fromkeys(topics, 0)

            def all_read() -> bool:
                for run in source.poll(1000, 0.2):
                    read[run.topic] += len(run.offsets)
                return sum(read.values()) >= len(events)

            wait_until(all_read, 60, "the events published after", detail=lambda: read)
        assert sum(read.values()) == len(events) and all(read.values()), read
        assert f"let this process read {s.topic_features} again" in caplog.text
    finally:
        source.close()


@pytest.mark.integration
def test_a_read_denied_before_any_fetch_came_is_a_start_s(acl: AclServices) -> None:
    """An empty topic whose Read is denied from the start (Describe allowed: it is assigned)
    raises `KafkaAccessError` at a poll, after polls without records: its denied fetches leave
    no log end cached, and do not count as having read."""
    tag = uuid.uuid4().hex[:8]
    s = as_user(acl, "unread", **acl.topics(f"riverstream.u{tag}"))
    assert s.kafka_bootstrap_servers is not None
    create_topics(s.kafka_bootstrap_servers, s.topics(), security=acl.kafka.security())
    acl.kafka.grant("unread", [("Describe", "topic", s.topic_features, False),
                               ("Read", "group", f"u{tag}", False)])  # fmt: skip
    positions = {(s.topic_features, p): 0 for p in range(s.partitions)}

    def first_denial() -> KafkaAccessError:
        """What a new source's polls raise (a denial of the group when its coordinator has not
        applied the group's grant yet: each broker applies the cluster's metadata in its own
        time, and a group denial before any read is a start's denial too)."""
        assert s.kafka_bootstrap_servers is not None
        source = ConfluentSource(s.kafka_bootstrap_servers, f"u{tag}", security=kafka_security(s))
        try:
            wait_until(lambda: _assigned(source, positions), 30, "the Describe grant in force")
            with pytest.raises(KafkaAccessError) as raised:
                wait_until(lambda: source.poll(100, 0.1), 60, "the denial raised")
            return raised.value
        finally:
            source.close()

    denials: list[KafkaAccessError] = []

    def the_topic_denied() -> bool:
        denials.append(first_denial())
        return not denials[-1].resource.startswith("consumer group")

    wait_until(the_topic_denied, 90, "the group's grant in force", detail=lambda: denials)
    assert f"(unread) read topic {s.topic_features}: " in str(denials[-1]), denials


def _assigned(source: ConfluentSource, positions: dict[tuple[str, int], int]) -> bool:
    """Whether ``source`` took ``positions``: False while a broker still denies describing the
    topic, the grant not yet applied there (each broker applies the cluster's metadata in its
    own time; on a loaded machine the broker asked may lag the one that said the grant was
    made)."""
    try:
        source.assign(positions)
    except KafkaAccessError as exc:
        if exc.operation != "describe":
            raise
        return False
    return True


def _fetched(source: ConfluentSource, positions: dict[tuple[str, int], int]) -> bool:
    """Whether a fetch response came for each of ``positions`` (librdkafka caches its high
    watermark: the source's own rule, asked of its consumer); a poll made after the cache
    said so, which counts it for the source too."""
    from confluent_kafka import TopicPartition

    marks = source._consumer.get_watermark_offsets  # the source's cache
    known = all(marks(TopicPartition(t, p), cached=True)[1] >= 0 for t, p in positions)
    assert source.poll(100, 0.1) == []
    return known
