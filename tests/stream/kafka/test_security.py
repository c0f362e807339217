"""Kafka with TLS and SASL/SCRAM, Redis with TLS and an ACL user: every riverstream process
connects through the same settings, and plain connections are refused.

`stream.kafka.security` renders the settings for both Kafka client libraries; the test cluster
is `stream.dev.secure`: three KRaft nodes whose only client and inter-broker listener is
SASL_SSL (SCRAM-SHA-512 users made by ``kafka-storage format --add-scram``, controllers over
TLS), and a Redis with no plain port whose default user is off, certificates made by the test
(openssl). With ``RIVERSTREAM_KAFKA_SECURITY_PROTOCOL=SASL_SSL`` & co. and a ``rediss://`` URL
with ``RIVERSTREAM_REDIS_USERNAME/PASSWORD/SSL_CAFILE``: the CLI creates the topics, the
publisher writes a stream, the learner learns it (the model equals River's), the API answers
from its snapshot and logs a feature event it is given, a prediction worker answers a request
through Kafka, and ``score kafka:TOPIC`` scores the topic. A plain Kafka client, a wrong SCRAM password, a plain Redis connection
and a Redis client without the user all fail.

Kafka refusing the login (a wrong password, an unknown user, a mechanism the brokers do not
enable) is a configuration error naming the settings, never the password: at the start of a
process (``riverstream learn`` and ``predict-worker`` exit 2; the learner's consumer and the
metadata requests raise it), an ERROR in a running learner or prediction worker whose password
was changed under it (once the brokers restart: Kafka keeps the connections it authenticated),
which waits, then goes on once the password is right again, and the 503 of the API's closed
loop (reason ``auth``). The cluster is started once for the module.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from learners.datasets import dataset_events
from schemas.errors import ConfigError
from schemas.settings import Settings
from serving import feedback
from serving.app import create_app
from serving.telemetry import ServingMetrics
from stream.dev.secure import SecureKafkaCluster, SecureRedis, make_certificates
from stream.dev.services import free_port
from stream.kafka.client import ConfluentSource, broker_ready, partitions_for, read_all
from stream.kafka.security import KafkaSecurity, kafka_security
from stream.store.connect import redis_client
from tests.support.cluster import assert_equal_to_river, stop_all
from tests.support.pipeline import fast, publish, spawn_cli
from tests.support.waiting import wait_until

DATASET, LIMIT, DELAY, SEED = "synth.Agrawal", 2_000, 50, 17
ADMIN_BOOTSTRAP_SECONDS = 30.0  # kafka-python's bootstrap_timeout_ms, as `create_topics` leaves it


# -- pure: the settings rendered for each client library -------------------------------------
def test_plaintext_adds_nothing_and_sasl_ssl_configures_both_libraries(tmp_path: Path) -> None:
    assert kafka_security(Settings()).librdkafka() == {}
    s = Settings(kafka_security_protocol="sasl_ssl", kafka_sasl_username="app",
                 kafka_sasl_password=SecretStr("pw"), kafka_ssl_cafile=tmp_path / "ca.pem")  # fmt: skip
    security = kafka_security(s)
    assert security.librdkafka() == {
        "security.protocol": "sasl_ssl", "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "app", "sasl.password": "pw",
        "ssl.ca.location": str(tmp_path / "ca.pem"),
        "ssl.endpoint.identification.algorithm": "https",
    }  # fmt: skip
    assert security.kafka_python() == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "app", "sasl_plain_password": "pw", "ssl_check_hostname": True,
        "ssl_cafile": str(tmp_path / "ca.pem"),
    }  # fmt: skip
    assert "pw" not in repr(security)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"kafka_security_protocol": "TLS"}, "SECURITY_PROTOCOL=TLS"),
        ({"kafka_security_protocol": "SASL_SSL"}, "SASL_USERNAME"),
        ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_username": "a",
          "kafka_sasl_password": "p", "kafka_sasl_mechanism": "GSSAPI"}, "SASL_MECHANISM"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_certfile": "/c.pem"}, "SSL_KEYFILE"),
    ],
)  # fmt: skip
def test_bad_security_settings_are_named(changes: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        kafka_security(Settings(**changes))  # type: ignore[arg-type]


def test_a_ca_file_without_a_tls_url_is_refused() -> None:
    s = Settings(redis_url="redis://127.0.0.1:6379/0", redis_ssl_cafile="/ca.pem")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="rediss://"):
        redis_client(s)


# -- live: a secure Kafka cluster and Redis ---------------------------------------------------
@dataclass
class Secure:
    kafka: SecureKafkaCluster
    redis: SecureRedis
    settings: Settings


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    """The secure Kafka and Redis, and settings to use them as ``app``; the Kafka user
    ``rotated`` is the one whose password a test changes."""
    tmp_path = tmp_path_factory.mktemp("secure")
    base = Settings()
    certificates = make_certificates(tmp_path / "certs")
    kafka_password, redis_password = uuid.uuid4().hex, uuid.uuid4().hex
    kafka = SecureKafkaCluster(tmp_path / "kafka", base.cache_dir.expanduser(),
                               base.kafka_version, certificates,
                               {"app": kafka_password, "rotated": uuid.uuid4().hex})  # fmt: skip
    server = SecureRedis(tmp_path / "redis", certificates, "app", redis_password)
    tag = uuid.uuid4().hex[:10]
    settings = Settings(
        kafka_bootstrap_servers=kafka.bootstrap, kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="app",
        kafka_sasl_password=SecretStr(kafka_password), kafka_ssl_cafile=certificates.ca,
        redis_url=server.url, redis_username="app", redis_password=SecretStr(redis_password),
        redis_ssl_cafile=certificates.ca, state_dir=tmp_path / "state",
        topic_features=f"t{tag}.features", topic_labels=f"t{tag}.labels",
        topic_dlq=f"t{tag}.dlq", topic_requests=f"t{tag}.requests",
        topic_predictions=f"t{tag}.predictions", redis_prefix=f"test:{tag}",
        snapshot_key=SecretStr(f"key-{tag}"), partitions=3, learner_metrics_port=0,
    )  # fmt: skip
    try:
        server.up()
        kafka.up()
        yield Secure(kafka, server, settings)
    finally:
        kafka.stop(graceful=False)
        server.stop()


def run_cli(s: Settings, args: list[str], log: Path, timeout: float = 120) -> None:
    proc = spawn_cli(s, args, log)
    try:
        assert proc.wait(timeout=timeout) == 0, log.read_text()[-3000:]
    finally:
        stop_all([proc])


@pytest.mark.integration
@pytest.mark.slow
def test_every_process_connects_securely_and_plain_is_refused(
    secure: Secure, tmp_path: Path
) -> None:
    s = fast(secure.settings)
    security = kafka_security(s)
    bootstrap = secure.kafka.bootstrap

    # Refused: a plain Kafka client, a wrong SCRAM password, plain Redis, Redis without the user.
    assert not _answers(bootstrap, KafkaSecurity())
    wrong = KafkaSecurity("SASL_SSL", "SCRAM-SHA-512", "app", "not-it", str(s.kafka_ssl_cafile))
    assert not _answers(bootstrap, wrong)
    assert _answers(bootstrap, security)
    plain = s.model_copy(update={"redis_url": secure.redis.url.replace("rediss:", "redis:"),
                                 "redis_ssl_cafile": None})  # fmt: skip
    with pytest.raises(redis.ConnectionError):
        redis_client(plain, socket_timeout=2).ping()
    anonymous = s.model_copy(update={"redis_username": None, "redis_password": None})
    with pytest.raises(redis.AuthenticationError):
        redis_client(anonymous, socket_timeout=2).ping()

    # The CLI, the publisher and the learner (consumer, dead letters, Redis) over TLS + SCRAM.
    run_cli(s, ["topics", "create"], tmp_path / "topics.log")
    events = list(dataset_events(DATASET, label_delay=DELAY, limit=LIMIT, seed=SEED))
    report = publish(s, events)
    assert report.failed == 0 and report.sent == len(events), report.errors
    learn = ["learn", "--model", "lr=logreg", "--metric", "Accuracy", "--exit-when-idle", "2"]
    run_cli(s, learn, tmp_path / "learner.log", timeout=180)
    assert_equal_to_river(s, DATASET, LIMIT, DELAY, SEED)

    # The API reads Redis over TLS as the ACL user and logs events to Kafka; a worker answers.
    port = free_port()
    api_log, worker_log = tmp_path / "api.log", tmp_path / "worker.log"
    procs = [spawn_cli(s, ["serve", "--port", str(port)], api_log),
             spawn_cli(s, ["predict-worker"], worker_log)]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        body = {"features": {"salary": 50_000.0, "age": 40, "elevel": 2}}
        wait_until(
            lambda: _post(f"{url}/v1/models/lr/predict", body) == 200, 90, "the API", log=api_log
        )
        logged = {"id": "secure-1", "time": 1e9, "features": body["features"]}
        assert _post(f"{url}/v1/features", logged) == 202, api_log.read_text()[-3000:]
        features = read_all(bootstrap, [s.topic_features], security=security)
        assert [r.key for r in features].count(b"secure-1") == 1
        _request(s, "req-1", body["features"])
        wait_until(lambda: "req-1" in _answered(s), 90, "the worker's answer", log=worker_log)
    finally:
        stop_all(procs)
    # Batch scoring reads the topic over TLS + SCRAM too.
    scores = tmp_path / "scores.jsonl"
    score = ["score", "lr", f"kafka:{s.topic_features}", "--out", str(scores)]
    run_cli(s, score, tmp_path / "score.log")
    assert len(scores.read_text().splitlines()) == LIMIT + 1  # the stream and the logged event


CREDENTIALS = ("RIVERSTREAM_KAFKA_SASL_USERNAME", "RIVERSTREAM_KAFKA_SASL_PASSWORD",
               "RIVERSTREAM_KAFKA_SASL_MECHANISM")  # fmt: skip
REFUSED = "refused this process's credentials"
BOOTSTRAP_SECONDS = 3.0  # the closed loop's producer's bootstrap timeout


@pytest.mark.integration
@pytest.mark.slow
def test_a_refused_login_stops_the_learner_and_a_worker_at_their_start_naming_the_settings(
    secure: Secure, tmp_path: Path
) -> None:
    """A wrong password: `riverstream learn` and `riverstream predict-worker` exit 2 with a
    message that names the settings, not the password (kafka-python creates the topics first,
    at every process's start: before the worker's consumer and producer connect). It said
    "cannot reach Kafka" after kafka-python's bootstrap timeout."""
    password = f"wrong-{uuid.uuid4().hex}"
    s = fast(secure.settings, kafka_sasl_password=SecretStr(password))
    logs = [tmp_path / "learner.log", tmp_path / "worker.log"]
    procs = [spawn_cli(s, ["learn", "--model", "lr=logreg"], logs[0]),
             spawn_cli(s, ["predict-worker", "--metrics-port", "0"], logs[1])]  # fmt: skip
    try:
        for proc, log in zip(procs, logs, strict=True):
            _wait_stopped(proc, 120, log)
    finally:
        stop_all(procs)
    for proc, log in zip(procs, logs, strict=True):
        text = log.read_text()
        assert proc.returncode == 2, text[-3000:]
        assert f"error: Kafka at {secure.kafka.bootstrap} {REFUSED}" in text, text[-3000:]
        _says_refused(text, password)
        assert "cannot reach Kafka" not in text


@pytest.mark.integration
@pytest.mark.slow
def test_a_refused_login_is_one_line_of_the_cli_without_the_clients_own(
    secure: Secure, tmp_path: Path
) -> None:
    """A wrong password: ``topics create``, ``publish`` and ``learn`` each write one line, the
    error naming the settings, and exit 2. kafka-python's ERROR lines (``Authentication failed``,
    ``socket disconnected``, one per try at each broker: dozens) came before it, as would
    librdkafka's ``%3|…|FAIL|`` lines of a client that only asks. And the line comes as soon as
    the brokers refuse the login, not at the end of kafka-python's bootstrap (its timeout,
    `ADMIN_BOOTSTRAP_SECONDS`, was how long each command took)."""
    password = f"wrong-{uuid.uuid4().hex}"
    s = fast(secure.settings, kafka_sasl_password=SecretStr(password))
    events = tmp_path / "features.jsonl"
    events.write_text(json.dumps({"id": "a", "time": 1.0, "features": {"x": 1.0}}) + "\n")
    commands = {"topics": ["topics", "create"], "publish": ["publish", "features", str(events)],
                "learn": ["learn", "--model", "lr=logreg"]}  # fmt: skip
    for name, args in commands.items():
        log = tmp_path / f"{name}.log"
        started = time.monotonic()
        proc = spawn_cli(s, args, log)
        try:
            _wait_stopped(proc, 120, log)
        finally:
            stop_all([proc])
        took = time.monotonic() - started
        text = log.read_text()
        assert proc.returncode == 2, text[-3000:]
        assert took < ADMIN_BOOTSTRAP_SECONDS - 10, f"{name} stopped after {took:.1f} s"
        lines = text.splitlines()
        assert len(lines) == 1, f"{name}: {text[-3000:]}"  # nothing but the error
        line = lines[0]
        assert line.startswith(f"error: Kafka at {secure.kafka.bootstrap} {REFUSED}"), text[-3000:]
        _says_refused(line, password)


@pytest.mark.integration
@pytest.mark.slow
def test_a_refused_login_is_a_configuration_error_for_librdkafka(secure: Secure) -> None:
    """A wrong password, an unknown user, a mechanism the brokers do not enable: the learner's
    consumer at its assignment and the metadata requests raise a `ConfigError` naming the
    settings. They raised librdkafka's "Broker transport failure", after their timeout."""
    password = f"wrong-{uuid.uuid4().hex}"
    s = secure.settings.model_copy(update={"kafka_sasl_password": SecretStr(password)})
    bootstrap = secure.kafka.bootstrap
    source = ConfluentSource(bootstrap, "rs-refused", security=kafka_security(s))
    try:
        with pytest.raises(ConfigError) as raised:
            source.assign({(s.topic_features, 0): -1})
    finally:
        source.close()
    _says_refused(str(raised.value), password)
    for changes in ({"kafka_sasl_username": "nobody"}, {"kafka_sasl_mechanism": "SCRAM-SHA-256"}):
        other = kafka_security(s.model_copy(update=changes))
        with pytest.raises(ConfigError) as raised:
            partitions_for(bootstrap, s.topic_features, security=other)
        _says_refused(str(raised.value), password)
    assert "RIVERSTREAM_KAFKA_SASL_MECHANISM (SCRAM-SHA-256)" in str(raised.value)
    with pytest.raises(ConfigError, match=REFUSED):
        broker_ready(bootstrap, timeout=10, security=kafka_security(s))


@pytest.mark.integration
@pytest.mark.slow
def test_a_password_changed_under_a_running_learner_and_worker_is_logged_as_refused(
    secure: Secure, tmp_path: Path
) -> None:
    """The password of the learner's and a prediction worker's user is changed and the brokers
    restart (Kafka keeps the connections it authenticated): each logs an ERROR naming the
    settings (the worker logged nothing of its own, only librdkafka's lines; the learner waited
    as for brokers that are away), runs on, and goes on once the password is theirs again."""
    tag = uuid.uuid4().hex[:10]
    user = "rotated"
    password = secure.kafka.users[user]
    s = fast(
        secure.settings, kafka_sasl_username=user, kafka_sasl_password=SecretStr(password),
        topic_features=f"r{tag}.features", topic_labels=f"r{tag}.labels",
        topic_dlq=f"r{tag}.dlq", topic_requests=f"r{tag}.requests",
        topic_predictions=f"r{tag}.predictions", predict_group=f"r{tag}",
        redis_prefix=f"test:{tag}", snapshot_key=f"key-{tag}",
    )  # fmt: skip
    logs = {"learner": tmp_path / "learner.log", "worker": tmp_path / "worker.log"}
    procs = [
        spawn_cli(s, ["learn", "--model", "lr=logreg"], logs["learner"]),
        spawn_cli(s, ["predict-worker", "--metrics-port", "0", "--report-every", "0.5"],
                  logs["worker"]),
    ]  # fmt: skip
    log = logs["learner"]
    try:
        _wait_logged(log, "metrics: ", 120, "the learner's start")
        joined = re.compile(r'"assigned": [1-9]')
        wait_until(lambda: joined.search(logs["worker"].read_text()), 120,
                   "the worker's partitions", log=logs["worker"])  # fmt: skip
        _set_password(secure.kafka, user, f"changed-{uuid.uuid4().hex}")
        secure.kafka.stop(graceful=False)
        secure.kafka.up()
        said = f"Kafka at {secure.kafka.bootstrap} {REFUSED}"
        for name, logger in (("learner", "stream.kafka.consumer"),
                             ("worker", "stream.predict.worker")):  # fmt: skip
            log = logs[name]
            _wait_logged(log, f"ERROR {logger}: {said}", 90, f"the {name}'s ERROR")
            _says_refused(log.read_text(), password)
        assert [p.poll() for p in procs] == [None, None], log.read_text()[-3000:]

        _set_password(secure.kafka, user, password)
        again = "accepts this process's credentials again"
        for name, log in logs.items():
            _wait_logged(log, again, 60, f"the {name} going on")
        assert [p.poll() for p in procs] == [None, None], log.read_text()[-3000:]
    finally:
        stop_all(procs)


@pytest.mark.integration
@pytest.mark.slow
def test_the_closed_loop_says_that_kafka_refused_the_login_without_slowing_an_outage(
    secure: Secure, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A wrong password: the API's closed loop answers 503 saying that Kafka refused the login,
    naming the settings, counted as ``auth``, and logs it as an ERROR (it said "Kafka
    unreachable: cannot reach Kafka at …", counted as ``not_acknowledged``, then ``outage``),
    once the producer's bootstrap gave up (3 s), as before: the brokers were asked beside it.
    In a real outage (nothing listens) with SASL, the 503 comes as soon as before, not after
    the brokers' question (up to 10 s), which stays one at a time."""
    password = f"wrong-{uuid.uuid4().hex}"
    s = secure.settings.model_copy(update={"kafka_sasl_password": SecretStr(password)})
    metrics = ServingMetrics(CollectorRegistry())
    app = create_app(s, metrics=metrics)
    request.addfinalizer(app.state.publisher.close)
    with caplog.at_level(logging.WARNING, logger="serving.feedback"):
        first, again = _post_label(app, "refused-1"), _post_label(app, "refused-2")
    said = f"Kafka at {secure.kafka.bootstrap} {REFUSED}"
    for status, detail, _took in (first, again):
        assert status == 503 and detail.startswith(said), detail
        _says_refused(detail, password)
        assert detail.endswith("nothing was stored, send again"), detail
    assert first[2] < BOOTSTRAP_SECONDS + 1.5 and again[2] < 1.0, (first, again)
    counter = metrics.closed_loop_publish_failures_total
    counts = {r: counter.labels(r)._value.get() for r in ("auth", "not_acknowledged", "outage")}
    assert counts == {"auth": 2, "not_acknowledged": 0, "outage": 0}
    errors = [r.getMessage() for r in caplog.records
              if r.name == "serving.feedback" and r.levelno == logging.ERROR]  # fmt: skip
    assert len(errors) == 1 and errors[0].startswith(first[1].split(";")[0]), errors

    # Brokers away (nothing listens): each attempt fails after the bootstrap timeout, as before.
    away = s.model_copy(update={"kafka_bootstrap_servers": f"127.0.0.1:{free_port()}"})
    publisher = feedback.Publisher(away)
    request.addfinalizer(publisher.close)
    monkeypatch.setattr(feedback, "OUTAGE_SECONDS", 0.0)  # each publish tries again
    for attempt in range(2):
        start = time.monotonic()
        with pytest.raises(feedback.KafkaUnavailable) as caught:
            publisher.publish([(s.topic_labels, b"k", b"{}")], feedback.PUBLISH_TIMEOUT_SECONDS)
        took = time.monotonic() - start
        assert took < BOOTSTRAP_SECONDS + 1.5, (attempt, took)
        assert caught.value.reason == "not_acknowledged" and REFUSED not in str(caught.value)
    asking = [t for t in threading.enumerate() if t.name == "kafka-login-question"]
    assert len(asking) == 1, asking  # the first attempt's question, asking still (≤ 10 s)


def _wait_stopped(proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    wait_until(lambda: proc.poll() is not None, timeout, f"{log.stem} to stop", log=log)


def _wait_logged(log: Path, text: str, timeout: float, what: str) -> None:
    wait_until(lambda: text in log.read_text(), timeout, what, log=log)


def _says_refused(text: str, password: str) -> None:
    """``text`` says that Kafka refused the credentials and names their settings, not
    ``password``."""
    assert REFUSED in text and all(name in text for name in CREDENTIALS), text[-3000:]
    assert password not in text


def _set_password(kafka: SecureKafkaCluster, user: str, password: str) -> None:
    """Give ``user`` a new SCRAM password, as the brokers' admin."""
    from confluent_kafka.admin import (
        AdminClient,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    admin = AdminClient({"bootstrap.servers": kafka.bootstrap, **kafka.security().librdkafka()})
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096)
    change = UserScramCredentialUpsertion(user, info, password.encode())
    for future in admin.alter_user_scram_credentials([change]).values():
        future.result(timeout=30)


def _answers(bootstrap: str, security: KafkaSecurity) -> bool:
    """Whether a metadata request with ``security`` is answered (within 3 s)."""
    try:
        return broker_ready(bootstrap, timeout=3, security=security)
    except Exception:  # confluent-kafka: a transport or authentication failure
        return False


def _post_label(app: Any, event_id: str) -> tuple[int, str, float]:
    """POST one label to the ASGI ``app``: the status, the detail and the seconds it took."""

    async def post() -> tuple[int, str, float]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            start = time.monotonic()
            response = await client.post(
                "/v1/labels", json={"id": event_id, "time": 1, "label": True}
            )
            took = time.monotonic() - start
            return response.status_code, response.json().get("detail", ""), took

    return asyncio.run(post())


def _post(url: str, body: Mapping[str, object]) -> int:
    try:
        return httpx.post(url, json=body, timeout=10).status_code
    except httpx.HTTPError:
        return 0


def _request(s: Settings, request_id: str, features: dict[str, float | int]) -> None:
    """One prediction request on the requests topic, written over TLS + SCRAM."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": s.kafka_bootstrap_servers, "acks": "all",
                         **kafka_security(s).librdkafka()})  # fmt: skip
    value = json.dumps({"id": request_id, "target": "lr", "features": features}).encode()
    producer.produce(s.topic_requests, value, request_id.encode())
    assert producer.flush(30) == 0


def _answered(s: Settings) -> set[str]:
    records = read_all(s.kafka_bootstrap_servers or "", [s.topic_predictions], timeout=3,
                       security=kafka_security(s))  # fmt: skip
    return {json.loads(r.value)["id"] for r in records}
