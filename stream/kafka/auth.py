"""Kafka refusing this process's login: a configuration error, not an outage.

With SASL (`stream.kafka.security`), brokers refuse the login of a wrong password, an unknown
user or a mechanism they do not enable. Neither client library says so where riverstream
looks: kafka-python (3.0.12) retries the refusal while it bootstraps, then raises
``KafkaTimeoutError("Unable to bootstrap ...")`` as for brokers that are away; librdkafka fails a
metadata request with ``_TRANSPORT`` and tells the refusal (``_AUTHENTICATION``, -169) only to
the client's error callback, which ``poll`` serves. Both read as "cannot reach Kafka". Here, in
one place:

- `KafkaAuthError`: the error, a `ConfigError` naming the settings (never the password);
- `refused`: whether a client's error is such a refusal;
- `LoginWatch`: a librdkafka error callback that keeps the refusal, and `answer`: a metadata
  request that gives up as soon as the brokers refuse the login;
- `connect_error`: the error of a client that could not get through: `KafkaAuthError` when the
  brokers refuse the login (asked by a fresh librdkafka client, `login_refusal`, after the
  failure only: a start that gets through pays nothing), else ``cannot reach Kafka at …``.

Kafka keeps the connections it authenticated: credentials that stop working under a running
process (a password changed, a user deleted) are refused at its next connection, which
`stream.kafka.consumer.ConfluentSource` logs as such.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from schemas.errors import ConfigError, KafkaAdapterError
from stream.kafka.security import KafkaSecurity

if TYPE_CHECKING:
    from confluent_kafka.admin import ClusterMetadata

PROBE_SECONDS = 10.0
"""How long `login_refusal` waits for the brokers' word: a cold broker's TLS and SCRAM handshake
takes seconds on a loaded machine (`stream.dev.secure`)."""
_FIRST_WAIT_SECONDS = 0.25  # `answer`'s first try; each next one waits twice as long


class KafkaAuthError(KafkaAdapterError, ConfigError):
    """Kafka refused this process's credentials: a configuration error, not an outage; the
    message names the settings, and the user and mechanism they hold, never the password.

    >>> from stream.kafka.security import KafkaSecurity
    >>> security = KafkaSecurity("SASL_SSL", "SCRAM-SHA-512", "app", "s3cret")
    >>> print(KafkaAuthError("k1:9093", "invalid credentials", security))  # doctest: +NORMALIZE_WHITESPACE
    Kafka at k1:9093 refused this process's credentials (invalid credentials): a configuration
    error, not an outage; RIVERSTREAM_KAFKA_SASL_USERNAME (app), RIVERSTREAM_KAFKA_SASL_PASSWORD
    and RIVERSTREAM_KAFKA_SASL_MECHANISM (SCRAM-SHA-512) must be those of a user the brokers
    know, with a mechanism they enable
    """

    def __init__(self, bootstrap: str, refusal: str, security: KafkaSecurity) -> None:
        super().__init__(
            f"Kafka at {bootstrap} refused this process's credentials ({refusal}): a "
            "configuration error, not an outage; RIVERSTREAM_KAFKA_SASL_USERNAME "
            f"({security.username}), RIVERSTREAM_KAFKA_SASL_PASSWORD and "
            f"RIVERSTREAM_KAFKA_SASL_MECHANISM ({security.mechanism}) must be those of a user "
            "the brokers know, with a mechanism they enable"
        )


def refused(error: object) -> bool:
    """Whether ``error`` says that Kafka refused the login: librdkafka's ``_AUTHENTICATION``
    (a ``KafkaError``, or a ``KafkaException`` carrying one), kafka-python's
    ``SaslAuthenticationFailedError`` or ``UnsupportedSaslMechanismError``, or an exception
    raised from one of those.

    >>> from confluent_kafka import KafkaError, KafkaException
    >>> refused(KafkaError(KafkaError._AUTHENTICATION)), refused(KafkaError(KafkaError._TRANSPORT))
    (True, False)
    >>> from kafka.errors import KafkaTimeoutError, SaslAuthenticationFailedError
    >>> refused(SaslAuthenticationFailedError("invalid credentials"))
    True
    >>> refused(KafkaTimeoutError("Unable to bootstrap from 127.0.0.1:9093"))  # who knows why
    False
    """
    from confluent_kafka import KafkaError, KafkaException
    from kafka.errors import SaslAuthenticationFailedError, UnsupportedSaslMechanismError

    seen: set[int] = set()
    current: object = error
    while current is not None and id(current) not in seen:
        if isinstance(current, KafkaException) and current.args:
            current = current.args[0]
        if isinstance(current, KafkaError):
            return bool(current.code() == KafkaError._AUTHENTICATION)
        refusals = (KafkaAuthError, SaslAuthenticationFailedError, UnsupportedSaslMechanismError)
        if isinstance(current, refusals):
            return True
        seen.add(id(current))
        current = current.__cause__ if isinstance(current, BaseException) else None
    return False


class LoginWatch:
    """A librdkafka client's ``error_cb``: keeps the brokers' last refusal of the login
    (`refusal`) and hands every error on to ``then``. Served by the client's ``poll`` (a
    consumer's ``consume``)."""

    def __init__(self, then: Callable[[Any], None] | None = None) -> None:
        self.refusal: str | None = None
        self._then = then

    def __call__(self, error: Any) -> None:
        if refused(error):
            self.refusal = str(error.str())
        if self._then is not None:
            self._then(error)


class _MetadataClient(Protocol):
    """A librdkafka client (AdminClient, Producer) as `answer` uses it."""

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> ClusterMetadata: ...
    def poll(self, timeout: float = -1) -> int: ...


def answer(
    client: _MetadataClient,
    watch: LoginWatch,
    timeout: float,
    bootstrap: str,
    security: KafkaSecurity,
    topic: str | None = None,
) -> ClusterMetadata:
    """``client.list_topics(topic)`` within ``timeout`` seconds, but `KafkaAuthError` once the
    brokers refused the login (seen by ``watch``, the client's ``error_cb``, between tries of
    growing length): librdkafka waits the whole timeout for a refused login, as for brokers
    that are away. Else the ``KafkaException`` of the last try. ``client`` must be one whose
    ``poll`` only serves callbacks (not a consumer: its ``poll`` reads a record)."""
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + timeout
    wait = _FIRST_WAIT_SECONDS
    while True:
        try:
            return client.list_topics(
                topic, timeout=max(0.01, min(wait, deadline - time.monotonic()))
            )
        except KafkaException:
            client.poll(0)  # serves the error callback
            if watch.refusal is not None:
                raise KafkaAuthError(bootstrap, watch.refusal, security) from None
            if time.monotonic() >= deadline:
                raise
        wait *= 2  # an answer slower than a try (a loaded broker's) comes within a later one


def login_refusal(
    bootstrap: str, security: KafkaSecurity, timeout: float = PROBE_SECONDS
) -> str | None:
    """The brokers' refusal of the login of ``security``, asked by a fresh librdkafka client
    within ``timeout`` seconds; None when they accept it, do not answer, or there is no login
    (no SASL)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    if not security.sasl:
        return None
    watch = LoginWatch()
    conf: dict[str, str | int | float | bool] = {
        "bootstrap.servers": bootstrap, "log_level": 0, **security.librdkafka()
    }  # fmt: skip
    admin = AdminClient(conf, error_cb=watch)
    try:
        answer(admin, watch, timeout, bootstrap, security)
    except KafkaAuthError:
        return watch.refusal
    except KafkaException:
        return None
    return None


def connect_error(
    exc: BaseException, bootstrap: str, security: KafkaSecurity, *, failed: str | None = None
) -> KafkaAdapterError:
    """The error to raise (from ``exc``) for a client that could not get through to Kafka at
    ``bootstrap``: `KafkaAuthError` when the brokers refuse its login (``exc`` says so, or,
    with SASL, `login_refusal` finds it), else `KafkaAdapterError` ``FAILED: exc`` (``failed``
    by default: ``cannot reach Kafka at …``).

    >>> from stream.kafka.security import PLAINTEXT
    >>> print(connect_error(TimeoutError("Unable to bootstrap"), "k1:9092", PLAINTEXT))
    cannot reach Kafka at k1:9092: Unable to bootstrap
    """
    refusal = str(exc) if refused(exc) else login_refusal(bootstrap, security)
    if refusal is not None:
        return KafkaAuthError(bootstrap, refusal, security)
    return KafkaAdapterError(f"{failed or f'cannot reach Kafka at {bootstrap}'}: {exc}")
