"""The worker's producer: answers and dead letters to Kafka, acknowledged (acks=all,
idempotent), failed deliveries counted so that a batch is answered again rather than lost, and
a write that Kafka's ACLs deny kept as such (`denied`)."""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from schemas.errors import KafkaAdapterError
from schemas.predictions import HEADER_PREFIX
from stream.kafka.auth import KafkaAccessError, denied, write_denial
from stream.kafka.security import PLAINTEXT, KafkaSecurity

_QUEUE_FULL_WAIT = 0.05
MESSAGE_MAX_BYTES = 1_000_000
"""The producer's ``message.max.bytes`` (librdkafka's default, set explicitly): a message whose
key, value, headers and record overhead pass it is refused by ``produce`` itself
(``MSG_SIZE_TOO_LARGE``)."""
RECORD_OVERHEAD = 64
"""What librdkafka adds to a message's key, value and headers before comparing it with
``message.max.bytes`` (36 bytes in librdkafka 2.x: the record's varints), with a margin."""


def passed_headers(headers: Any) -> list[tuple[str, bytes]]:
    """The ``x-`` headers of a request, copied onto its answer (or dead letter).

    >>> passed_headers([("x-trace", b"7"), ("other", b"1"), ("X-Empty", None)])
    [('x-trace', b'7'), ('X-Empty', b'')]
    """
    items = headers.items() if isinstance(headers, dict) else headers
    return [
        (k, v if isinstance(v, bytes) else (v or "").encode())
        for k, v in items
        if k[:2].lower() == HEADER_PREFIX
    ]


class AnswerProducer:
    """confluent-kafka producer (acks=all, idempotent) counting failed deliveries.

    Implements `stream.kafka.deadletter.Sender`, so dead letters go through it as well and one
    flush covers answers and dead letters alike.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        linger_ms: float = 1.0,
        security: KafkaSecurity = PLAINTEXT,
        max_message_bytes: int = MESSAGE_MAX_BYTES,
        error_cb: Callable[[KafkaError], None] | None = None,
    ) -> None:
        """``error_cb``: librdkafka's error callback (served by `unacknowledged` and `flush`)."""
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": linger_ms,
                "message.max.bytes": max_message_bytes,
                **security.librdkafka(),
                **({} if error_cb is None else {"error_cb": error_cb}),
            }
        )
        self.max_bytes = max_message_bytes - RECORD_OVERHEAD
        """The largest message (key, value and headers, as `stream.kafka.deadletter.message_bytes`
        counts them) that ``send`` can send: the worker measures an answer against it."""
        self.failed = 0
        self.errors: deque[str] = deque(maxlen=20)
        """The newest failed deliveries' errors (what a retry reports)."""
        self.denied: KafkaAccessError | None = None
        """Kafka's ACLs denied a delivery's write (the latest such) since `take_failures`."""
        self._refused: set[str] = set()  # topics whose messages `send` saw refused at once
        self._bootstrap, self._security = bootstrap, security

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.failed += 1
            self.errors.append(str(err))
            if denied(err) is not None:  # the message is read only then
                self.denied = write_denial(err, msg.topic(), self._bootstrap, self._security)

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        extra: dict[str, Any] = {} if partition is None else {"partition": partition}
        while True:
            try:
                self._producer.produce(
                    topic,
                    value,
                    key,
                    headers=headers,  # type: ignore[arg-type]  # list is invariant; bytes fit
                    on_delivery=self._delivered,
                    **extra,
                )
                return
            except BufferError:  # the local queue is full: let deliveries drain
                self._producer.poll(_QUEUE_FULL_WAIT)
            except KafkaException as exc:
                error = exc.args[0] if exc.args else exc
                access = write_denial(error, topic, self._bootstrap, self._security)
                if access is None:
                    raise KafkaAdapterError(f"produce to {topic} failed: {exc}") from exc
                # Once a delivery was denied, librdkafka may learn from the topic's metadata
                # that the ACLs deny it and refuse the next messages at once: failed deliveries
                # as the others, the batch answered again (`recheck`), never a stop.
                self.failed += 1
                self.errors.append(str(error))
                self.denied = access
                self._refused.add(topic)
                return

    def unacknowledged(self, timeout: float) -> int:
        """Wait at most ``timeout`` seconds for the messages sent so far to be acknowledged (or
        refused for good): how many are still waiting."""
        return int(self._producer.flush(timeout))

    def flush(self, timeout: float | None = 60.0) -> None:
        """Wait until every message sent so far is acknowledged (or failed for good)."""
        left = self._producer.flush(-1 if timeout is None else timeout)
        if left:
            raise KafkaAdapterError(f"{left} messages not acknowledged within {timeout} s")

    def recheck(self, timeout: float = 5.0) -> None:
        """Ask Kafka again for the metadata of the topics whose messages were refused at once
        since the last call: librdkafka may go on refusing them until its metadata says
        otherwise (its own refresh comes every 5 minutes by default), so that the next messages
        see an ACL granted since."""
        refused, self._refused = self._refused, set()
        for topic in refused:
            with contextlib.suppress(KafkaException):  # away: asked again at the next refusal
                self._producer.list_topics(topic, timeout=timeout)

    def take_failures(self) -> int:
        """Failed deliveries since the last call (`denied` forgotten: read it before)."""
        failed, self.failed, self.denied = self.failed, 0, None
        return failed
