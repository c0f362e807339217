"""The learner's record source over kafka-python, kept only for ``bench/consume_path.py``
(the learner consumes with confluent-kafka: see bench/README.md for the measured reasons)."""

from __future__ import annotations

from stream.kafka.client import Record, RecordRun


class KafkaPythonSource:
    """`stream.kafka.client.ConfluentSource`'s interface over kafka-python."""

    def __init__(self, bootstrap: str, group_id: str) -> None:
        from kafka import KafkaConsumer

        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=10_000,
            fetch_max_bytes=50 * 1024 * 1024,
            max_partition_fetch_bytes=10 * 1024 * 1024,
        )

    def assign(self, positions: dict[tuple[str, int], int]) -> None:
        from kafka import TopicPartition

        tps = {TopicPartition(t, p): off for (t, p), off in positions.items()}
        self._consumer.assign(list(tps))
        for tp, off in tps.items():
            if off >= 0:
                self._consumer.seek(tp, off)
            else:
                self._consumer.seek_to_beginning(tp)

    def poll(self, max_records: int, timeout: float) -> list[RecordRun]:
        batches = self._consumer.poll(timeout_ms=int(timeout * 1000), max_records=max_records)
        runs = []
        for tp, messages in batches.items():
            records = [
                Record(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp)
                for m in messages
            ]
            runs.append(
                RecordRun(
                    tp.topic,
                    tp.partition,
                    [r.offset for r in records],
                    [r.value for r in records],
                    records.__getitem__,
                )
            )
        return runs

    def end_offsets(self) -> dict[tuple[str, int], int]:
        ends = self._consumer.end_offsets(list(self._consumer.assignment()))
        return {(tp.topic, tp.partition): off for tp, off in ends.items()}

    def close(self) -> None:
        self._consumer.close()
