"""A producer for unit tests of what is sent to Kafka (dead letters): `KeptSender` keeps what it
is given, no broker."""

from __future__ import annotations


class KeptSender:
    """A `stream.kafka.deadletter.Sender` that keeps what it is given: ``sent`` holds each
    record's ``(key, value, headers)``, `letters` the same as one dict per record."""

    failed = 0

    def __init__(self) -> None:
        self.sent: list[tuple[bytes | None, bytes | None, dict[str, bytes]]] = []

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self.sent.append((key, value, dict(headers or [])))

    def flush(self, timeout: float | None = None) -> None:
        return None

    def letters(self) -> list[dict[str, bytes]]:
        """Each record sent as its headers plus ``key`` and ``value`` (``b""`` when none)."""
        return [{"key": k or b"", "value": v or b"", **h} for k, v, h in self.sent]
