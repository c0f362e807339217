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
  failure only: a start that gets through pays nothing), else ``cannot reach Kafka at …``;
- `LoginQuestions`: the same answer for a client whose failure nobody may wait on (a request's):
  the brokers asked beside a connection that takes long, never after it; and for a process that
  stops on it (`connect_or_stop`: every command and process start, in `create_topics`), the
  refusal as soon as they tell it, not at the end of kafka-python's 30 s bootstrap;
- `RefusalLog`: a running process's log of the refusal, an ERROR each minute while it lasts.

Kafka's ACLs denying the user an operation riverstream needs (describing, reading or writing a
topic, creating one, using a consumer group) is one too, once the login got through: each
client says it in its own way (kafka-python an ``AuthorizationError`` or, for an idempotent
producer's id, a bare ``KafkaError`` quoting one; librdkafka a ``*_AUTHORIZATION_FAILED`` code),
and riverstream said "creating topics failed: <the whole request>", counted a publish's records
as failed without saying why, or stopped a learner on "consume failed". `denied` reads either;
`KafkaAccessError` names the user, the operation and the resource. Kafka also tells a client
its own operations on a topic (KIP-430): `write_refusal` reads a write's denial there before
any write is tried (the learner's dead-letter topic, at start).

Kafka keeps the connections it authenticated: credentials that stop working under a running
process (a password changed, a user deleted) are refused at its next connection, which the
learner's consumer (`stream.kafka.consumer.ConfluentSource`), the prediction worker and the
API's closed loop (`serving.feedback.Publisher`) log as such (`RefusalLog`).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from schemas.errors import ConfigError, KafkaAdapterError
from stream.kafka.security import KafkaSecurity

if TYPE_CHECKING:
    from confluent_kafka.admin import ClusterMetadata

PROBE_SECONDS = 10.0
"""How long `login_refusal` waits for the brokers' word: a cold broker's TLS and SCRAM handshake
takes seconds on a loaded machine (`stream.dev.secure`)."""
_FIRST_WAIT_SECONDS = 0.25  # `answer`'s first try; each next one waits twice as long
ASK_AFTER_SECONDS = 0.5
"""`LoginQuestions`: a connection still under way after this long has the brokers asked, beside
it, whether they refuse the login (a SASL_SSL bootstrap that gets through takes ≈ 0.1 s here;
one refused, kafka-python's whole bootstrap timeout)."""
REFUSAL_LOG_SECONDS = 60.0
"""While Kafka refuses the login of a running process, `RefusalLog` says so this often."""
_T = TypeVar("_T")


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


DENIALS = {29: "topic", 30: "group", 31: "cluster", 53: "transactional id"}
"""Kafka's authorization error codes (the same in both clients) → the kind of resource denied."""
_QUOTED_DENIAL = re.compile(r"\[Error (29|30|31|53)\]")  # kafka-python's message of one


class KafkaAccessError(KafkaAdapterError, ConfigError):
    """Kafka's ACLs deny this process's user ``operation`` on ``resource``: a configuration
    error, not an outage; the message names the user's setting, never the password.

    >>> from stream.kafka.security import KafkaSecurity
    >>> security = KafkaSecurity("SASL_SSL", "SCRAM-SHA-512", "app", "s3cret")
    >>> print(KafkaAccessError("k1:9093", "write", "topic riverstream.features", security))  # doctest: +NORMALIZE_WHITESPACE
    Kafka at k1:9093 does not let the user of RIVERSTREAM_KAFKA_SASL_USERNAME (app) write topic
    riverstream.features: a configuration error, not an outage; its ACLs must allow it (README,
    Security: the kafka-acls.sh lines)
    """

    def __init__(
        self,
        bootstrap: str,
        operation: str,
        resource: str,
        security: KafkaSecurity,
        *,
        then: str = "",
    ) -> None:
        """``then``: what it meant for this process (`meaning`), after the message."""
        self.bootstrap, self.operation, self.resource = bootstrap, operation, resource
        self.security = security
        user = (
            f"the user of RIVERSTREAM_KAFKA_SASL_USERNAME ({security.username})"
            if security.sasl
            else "this process (no SASL login: User:ANONYMOUS, or its TLS certificate's name)"
        )
        super().__init__(
            f"Kafka at {bootstrap} does not let {user} {operation} {resource}: a configuration "
            "error, not an outage; its ACLs must allow it (README, Security: the kafka-acls.sh "
            "lines)" + (f"; {then}" if then else "")
        )

    def meaning(self, then: str) -> KafkaAccessError:
        """This denial, saying what it meant for this process (what was not written, what the
        process does)."""
        return KafkaAccessError(
            self.bootstrap, self.operation, self.resource, self.security, then=then
        )


def read_denial(
    error: object, topic: str | None, group: str, bootstrap: str, security: KafkaSecurity
) -> KafkaAccessError | None:
    """A consumer's ``error`` (of a message from ``topic``, in consumer group ``group``) as the
    `KafkaAccessError` of a read that Kafka's ACLs deny; None when it is no denial.

    >>> from confluent_kafka import KafkaError
    >>> from stream.kafka.security import PLAINTEXT
    >>> error = KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED)
    >>> read_denial(error, None, "rs", "k1:9092", PLAINTEXT).resource
    'consumer group rs'
    """
    kind = denied(error)
    if kind is None:
        return None
    resource = f"consumer group {group}" if kind == "group" else f"{kind} {topic or ''}".strip()
    return KafkaAccessError(bootstrap, "read", resource, security)


def write_denial(
    error: object, topic: str | None, bootstrap: str, security: KafkaSecurity
) -> KafkaAccessError | None:
    """A producer's ``error`` (of a message to ``topic``) as the `KafkaAccessError` of a write
    that Kafka's ACLs deny: the topic's, else an idempotent producer's id, which Kafka gives a
    user with Write on a topic (or IdempotentWrite on the cluster); None when it is no denial.

    >>> from kafka.errors import TopicAuthorizationFailedError
    >>> from stream.kafka.security import PLAINTEXT
    >>> error = TopicAuthorizationFailedError("riverstream.dlq")
    >>> write_denial(error, "riverstream.dlq", "k1:9092", PLAINTEXT).resource
    'topic riverstream.dlq'
    """
    kind = denied(error)
    if kind is None:
        return None
    if kind == "topic":
        return KafkaAccessError(bootstrap, "write", f"topic {topic}", security)
    return KafkaAccessError(
        bootstrap, "write", "any topic (an idempotent producer's id, which Kafka gives for "
        "Write on a topic or IdempotentWrite on the cluster)", security,
    )  # fmt: skip


def write_refusal(
    operations: Collection[str] | None, topic: str, bootstrap: str, security: KafkaSecurity
) -> KafkaAccessError | None:
    """The `KafkaAccessError` of a write to ``topic`` when ``operations``, what Kafka says its
    ACLs allow this process's user on it (KIP-430's authorized operations, by confluent-kafka's
    ``AclOperation`` names), has neither ``WRITE`` nor ``ALL``; None when it has, or when the
    brokers do not say (None: no authorizer that tells, or a broker too old to).

    >>> from stream.kafka.security import PLAINTEXT
    >>> write_refusal(["READ", "DESCRIBE"], "rs.dlq", "k1:9092", PLAINTEXT).operation
    'write'
    >>> write_refusal(["DESCRIBE", "WRITE"], "rs.dlq", "k1:9092", PLAINTEXT) is None
    True
    """
    if operations is None or not {"WRITE", "ALL"}.isdisjoint(operations):
        return None
    return KafkaAccessError(bootstrap, "write", f"topic {topic}", security)


def denied(error: object) -> str | None:
    """The kind of resource (`DENIALS`) whose access Kafka's ACLs deny, when ``error`` says so:
    a librdkafka ``KafkaError`` (or a ``KafkaException`` carrying one), a kafka-python error
    (``AuthorizationError``, or a ``KafkaError`` quoting one); else None.

    >>> from confluent_kafka import KafkaError
    >>> denied(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED))
    'group'
    >>> from kafka.errors import ClusterAuthorizationFailedError, KafkaTimeoutError
    >>> denied(KafkaError(KafkaError._TRANSPORT)), denied(KafkaTimeoutError("Unable to bootstrap"))
    (None, None)
    >>> import kafka.errors
    >>> denied(kafka.errors.KafkaError(f"Unexpected error: {ClusterAuthorizationFailedError()}"))
    'cluster'
    """
    from confluent_kafka import KafkaError, KafkaException
    from kafka.errors import AuthorizationError
    from kafka.errors import KafkaError as PythonKafkaError

    if isinstance(error, KafkaException) and error.args:
        error = error.args[0]
    if isinstance(error, KafkaError):
        return DENIALS.get(error.code())
    if isinstance(error, AuthorizationError):
        return DENIALS.get(error.errno or 0)
    if isinstance(error, PythonKafkaError):
        quoted = _QUOTED_DENIAL.search(str(error))
        return DENIALS[int(quoted.group(1))] if quoted else None
    return None


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


class LoginQuestions:
    """Kafka refusing a kafka-python client's login, found while it connects, for a caller that
    may not wait after the failure (a request): kafka-python tells a refusal only as its
    bootstrap's timeout, and `connect_error` then asks the brokers for up to `PROBE_SECONDS`
    more when they are away. `connect` asks them (`login_refusal`, with SASL only) on a thread
    of its own once the connection has taken `ASK_AFTER_SECONDS` (one that gets through sooner
    pays nothing), one question at a time (the failures of an outage keep one asking, not one
    each); a failure takes the answer that is in and waits for none. For connections made one
    at a time (the caller's lock)."""

    def __init__(
        self, bootstrap: str, security: KafkaSecurity, *, after: float = ASK_AFTER_SECONDS
    ) -> None:
        self.bootstrap, self.security, self.after = bootstrap, security, after
        self._question: _Question | None = None

    def connect(self, make: Callable[[], _T]) -> _T:
        """``make()``, which connects a client; its `KafkaAdapterError` becomes `KafkaAuthError`
        when it says that the brokers refused the login, or the question asked beside says so.
        """
        question = self._ask()
        try:
            return make()
        except KafkaAdapterError as exc:
            self._raise_refusal(exc, question)
            raise
        finally:
            if question is not None:
                question.over.set()  # not asked yet: not asked at all

    def connect_or_stop(self, make: Callable[[], _T], discard: Callable[[_T], None]) -> _T:
        """`connect`, for a process that stops on the error (a command, a process's start):
        the refusal found beside the connection is raised at once, instead of after ``make``'s
        failure, which for kafka-python comes at its whole bootstrap timeout (30 s). ``make``
        then goes on on a daemon thread of its own, left to end as it will (its client, if it
        still gets through, given to ``discard``)."""
        question = self._ask()
        if question is None:
            return make()
        settled = threading.Event()  # the first of the two to end
        question.tell(settled)
        made = _Made(make, discard, settled)
        try:
            settled.wait()
            if question.refusal is not None and made.abandon():
                raise KafkaAuthError(self.bootstrap, question.refusal, self.security)
            made.ended.wait()  # the question said nothing (yet): the connection tells
            return made.result()
        except KafkaAdapterError as exc:
            self._raise_refusal(exc, question)
            raise
        finally:
            question.over.set()

    def _raise_refusal(self, exc: KafkaAdapterError, question: _Question | None) -> None:
        """`KafkaAuthError` (from ``exc``) when ``exc`` says that the brokers refused the
        login, or the question asked beside the connection does; else nothing (``exc`` itself
        when it is one already: raised as it is)."""
        if isinstance(exc, KafkaAuthError):
            return
        refusal = str(exc) if refused(exc) else None if question is None else question.refusal
        if refusal is not None:
            raise KafkaAuthError(self.bootstrap, refusal, self.security) from exc

    def _ask(self) -> _Question | None:
        """The question asked beside a connection: the one still asking, else a new one."""
        if not self.security.sasl:
            return None
        if self._question is None or not self._question.asking:
            self._question = _Question(self.bootstrap, self.security, self.after)
        return self._question


class _Question:
    """`login_refusal` on a thread of its own, once ``after`` seconds passed and the connection
    is not `over`; `refusal` is None until the brokers refused the login. The events given to
    `tell` are set once the answer is in (or the question was never asked)."""

    def __init__(self, bootstrap: str, security: KafkaSecurity, after: float) -> None:
        self.over = threading.Event()
        self.refusal: str | None = None
        self._told: list[threading.Event] = []
        self._answered = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._ask, args=(bootstrap, security, after), name="kafka-login-question",
            daemon=True,  # a librdkafka client asking, ≤ PROBE_SECONDS: never waited for
        )  # fmt: skip
        self._thread.start()

    @property
    def asking(self) -> bool:
        return self._thread.is_alive()

    def tell(self, event: threading.Event) -> None:
        with self._lock:
            if not self._answered:
                self._told.append(event)
                return
        event.set()

    def _ask(self, bootstrap: str, security: KafkaSecurity, after: float) -> None:
        try:
            if not self.over.wait(after):
                self.refusal = login_refusal(bootstrap, security)
        finally:
            with self._lock:
                self._answered = True
                told, self._told = self._told, []
            for event in told:
                event.set()


class _Made(Generic[_T]):
    """``make()`` on a daemon thread (`LoginQuestions.connect_or_stop`): `ended` (and
    ``settled``) once it returned or raised; a client made after `abandon` goes to ``discard``.
    """

    def __init__(
        self, make: Callable[[], _T], discard: Callable[[_T], None], settled: threading.Event
    ) -> None:
        self.ended = threading.Event()
        self._lock = threading.Lock()
        self._abandoned = False
        self._made: tuple[_T] | None = None
        self._error: BaseException | None = None
        self._make, self._discard, self._settled = make, discard, settled
        threading.Thread(target=self._run, name="kafka-connect", daemon=True).start()

    def _run(self) -> None:
        error: BaseException | None = None
        try:
            made = self._make()
        except BaseException as exc:  # handed to the caller's thread, raised there
            error = exc
        with self._lock:
            if error is not None:
                self._error = error
            elif self._abandoned:
                self._discard(made)
            else:
                self._made = (made,)
            self.ended.set()
        self._settled.set()

    def abandon(self) -> bool:
        """Leave ``make`` to itself, unless it has ended already (False: take its result)."""
        with self._lock:
            self._abandoned = not self.ended.is_set()
            return self._abandoned

    def result(self) -> _T:
        """The client made, or ``make``'s error raised."""
        if self._made is not None:
            return self._made[0]
        assert self._error is not None
        raise self._error


class RefusalLog:
    """Kafka refusing the login of a running process (or its ACLs denying it something), said in
    its log: an ERROR naming the settings (`KafkaAuthError`, `KafkaAccessError`) and what the
    process does meanwhile, at once and then every
    `REFUSAL_LOG_SECONDS` while it lasts (librdkafka tells it at each reconnection); a warning
    once Kafka accepts the credentials again. Not thread-safe: call it from one client's
    callbacks, or under one lock."""

    def __init__(self, logger: logging.Logger, meanwhile: str) -> None:
        self._log, self._meanwhile = logger, meanwhile
        self._said: float | None = None  # while the login is refused: when it was last said

    @property
    def refusing(self) -> bool:
        """Whether Kafka refused the login and has not accepted it since."""
        return self._said is not None

    def refused(self, error: KafkaAdapterError) -> None:
        now = time.monotonic()
        if self._said is None or now - self._said >= REFUSAL_LOG_SECONDS:
            self._said = now
            self._log.error("%s; %s", error, self._meanwhile)

    def accepted(self) -> bool:
        """Kafka got through: the warning if it refused the login until now; whether it did."""
        if self._said is None:
            return False
        self._said = None
        self._log.warning("Kafka accepts this process's credentials again")
        return True
