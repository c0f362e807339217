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
process (``riverstream learn`` exits 2; the learner's consumer and the metadata requests raise
it), and an ERROR in a running learner whose password was changed under it (once the brokers
restart: Kafka keeps the connections it authenticated), which waits, then reads on once the
password is right again. The cluster is started once for the module.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from pydantic import SecretStr

from learners.datasets import dataset_events
from schemas.errors import ConfigError
from schemas.settings import Settings
from stream.dev.secure import SecureKafkaCluster, SecureRedis, make_certificates
from stream.dev.services import free_port
from stream.kafka.client import ConfluentSource, broker_ready, partitions_for, read_all
from stream.kafka.security import KafkaSecurity, kafka_security
from stream.store.connect import redis_client
from tests.support.cluster import assert_equal_to_river, stop_all
from tests.support.pipeline import fast, publish, spawn_cli
from tests.support.waiting import wait_until

DATASET, LIMIT, DELAY, SEED = "synth.Agrawal", 2_000, 50, 17


# -- pure: the settings rendered for each client library -------------------------------------
def test_plaintext_adds_nothing_and_sasl_ssl_configures_both_libraries(tmp_path: Path) -> None:
    assert kafka_security(Settings()).librdkafka() == {}
    s = Settings(kafka_security_protocol="sasl_ssl", kafka_sasl_username="app",
                 kafka_sasl_password="pw", kafka_ssl_cafile=tmp_path / "ca.pem")  # fmt: skip
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
        kafka_sasl_password=kafka_password, kafka_ssl_cafile=certificates.ca,
        redis_url=server.url, redis_username="app", redis_password=redis_password,
        redis_ssl_cafile=certificates.ca, state_dir=tmp_path / "state",
        topic_features=f"t{tag}.features", topic_labels=f"t{tag}.labels",
        topic_dlq=f"t{tag}.dlq", topic_requests=f"t{tag}.requests",
        topic_predictions=f"t{tag}.predictions", redis_prefix=f"test:{tag}",
        snapshot_key=f"key-{tag}", partitions=3, learner_metrics_port=0,
    )  # type: ignore[arg-type]  # fmt: skip
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


@pytest.mark.integration
@pytest.mark.slow
def test_a_refused_login_stops_the_learner_at_its_start_naming_the_settings(
    secure: Secure, tmp_path: Path
) -> None:
    """A wrong password: `riverstream learn` exits 2 with a message that names the settings,
    not the password (kafka-python creates the topics first, at every process's start). It said
    "cannot reach Kafka" after kafka-python's bootstrap timeout."""
    password = f"wrong-{uuid.uuid4().hex}"
    s = fast(secure.settings, kafka_sasl_password=SecretStr(password))
    log = tmp_path / "learner.log"
    proc = spawn_cli(s, ["learn", "--model", "lr=logreg"], log)
    try:
        wait_until(lambda: proc.poll() is not None, 120, "the learner to stop", log=log)
    finally:
        stop_all([proc])
    text = log.read_text()
    assert proc.returncode == 2, text[-3000:]
    assert f"error: Kafka at {secure.kafka.bootstrap} {REFUSED}" in text, text[-3000:]
    _says_refused(text, password)
    assert "cannot reach Kafka" not in text


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
def test_a_password_changed_under_a_running_learner_is_logged_as_refused(
    secure: Secure, tmp_path: Path
) -> None:
    """The password of the learner's user is changed and the brokers restart (Kafka keeps the
    connections it authenticated): the learner logs an ERROR naming the settings (it logged
    nothing of its own, waiting as for brokers that are away), runs on, and reads on once the
    password is the learner's again."""
    tag = uuid.uuid4().hex[:10]
    user = "rotated"
    password = secure.kafka.users[user]
    s = fast(
        secure.settings, kafka_sasl_username=user, kafka_sasl_password=SecretStr(password),
        topic_features=f"r{tag}.features", topic_labels=f"r{tag}.labels",
        topic_dlq=f"r{tag}.dlq", redis_prefix=f"test:{tag}", snapshot_key=f"key-{tag}",
    )  # fmt: skip
    log = tmp_path / "learner.log"
    proc = spawn_cli(s, ["learn", "--model", "lr=logreg"], log)
    try:
        wait_until(lambda: "metrics: " in log.read_text(), 120, "the learner's start", log=log)
        _set_password(secure.kafka, user, f"changed-{uuid.uuid4().hex}")
        secure.kafka.stop(graceful=False)
        secure.kafka.up()
        refused = f"ERROR stream.kafka.consumer: Kafka at {secure.kafka.bootstrap} {REFUSED}"
        wait_until(lambda: refused in log.read_text(), 90, "the learner's ERROR", log=log)
        assert proc.poll() is None, log.read_text()[-3000:]
        _says_refused(log.read_text(), password)

        _set_password(secure.kafka, user, password)
        again = "accepts this process's credentials again"
        wait_until(lambda: again in log.read_text(), 60, "the learner reading on", log=log)
        assert proc.poll() is None, log.read_text()[-3000:]
    finally:
        stop_all([proc])


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


def _post(url: str, body: dict[str, object]) -> int:
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
