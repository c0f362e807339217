"""Batch predicting: score a file or a Kafka topic of feature events with one model version, or
one version of a serving graph.

``riverstream score TARGET INPUT --out OUTPUT [--version V] [--into redis]``:

- INPUT is a file in the formats of ``riverstream publish features`` (JSON Lines, or CSV or
  Parquet with ``id`` and ``time`` columns; read by `stream.kafka.publish.read_rows` and
  validated by the same codec as the learner), or ``kafka:TOPIC[:FROM-TO]``: every partition of TOPIC as it stands
  when the run starts, partition by partition in offset order, optionally keeping only events
  whose time is in the closed range [FROM, TO] (event times, as in ``snapshots rollback
  --exclude``); read committed, each partition up to its last stable offset (a transaction
  open at the start ends it there, and the command says which offsets it left: `kafka_rows`).
- OUTPUT is JSON Lines (``.jsonl``/``.json``: one answer per line, `answer_body`'s fields and
  order, encoded like the API's answers), CSV or Parquet (``.csv``, ``.parquet``: columns
  ``id, target, versions, prediction, probabilities, decided_by``; the cells of ``versions``,
  ``prediction`` and ``probabilities`` hold JSON): `stream.predict.sinks`.
- With ``--into redis`` the answers also become a lookup table served by ``GET
  /v1/models/{name}/predictions/{id}`` (`stream.store.lookup`).

TARGET may name a serving graph (when no model has that name): the graph's promoted version, or
the one ``--version`` pins, with its members at the versions served when the run starts, each
loaded once (`stream.predict.graph_target.GraphTarget`); the report's ``versions`` lists them
and ``graph_version`` the graph's. Rows are answered as ``POST /v1/graphs/{name}/predict``
answers (`graph_answer_body`: ``graph_version``, ``kind``, ``path``, ``decision``, ``reason``
besides the model fields; CSV has a column for each, JSON cells for ``path``, ``decision`` and
``reason`` too), and a row that reaches a member with no version is reported
(``target_unavailable``). The lookup table is the graph's (``GET
/v1/graphs/{name}/predictions/{id}``).

Every row is answered by `ServedModel.predict`, so an output row equals the ``/v1`` answer of
the same version. The version is the one pinned by ``--version``, else the one served when the
run starts; it is loaded once, so a whole run uses one version. Output rows follow the input
order and hold no clock time: a pinned version gives byte-identical output.

A row that cannot be scored (malformed, refused by the codec, a model error, a non-finite
answer) is reported with where it was (``line N``, or ``partition P offset O``) and its reason,
and counted; it is never dropped silently.

With ``--workers N`` (not for a graph with shadows), chunks of `CHUNK` rows are decoded,
answered and encoded in N forked processes (`ChunkScorer`, the very work of one process) while
this one reads the input and writes the answers, in input order: the same bytes and report. A
worker that dies fails the run (`RiverstreamError`) with the chunks before it written. The
workers never outlive the run: an exception in this process (``SystemExit`` from the command's
SIGTERM handler included) shuts them down, and on Linux each dies when this process does, even
killed (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import gc
import math
import multiprocessing
import os
import signal
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, cast

from learners.predictor import ServedModel
from schemas.errors import KafkaAdapterError, RiverstreamError, SchemaError
from schemas.events import EventCodec, FeatureEvent, Limits
from stream.kafka.client import electing, partitions_for
from stream.kafka.publish import read_rows
from stream.kafka.security import PLAINTEXT, KafkaSecurity
from stream.predict.answer import ModelAnswers, encode
from stream.predict.graph_target import GraphTarget
from stream.predict.sinks import Scored, Sink
from stream.store.lookup import LookupTable
from stream.store.snapshots import SnapshotStore

CHUNK = 2048
"""Rows decoded in one codec call and written in one call."""
KAFKA_STALL_SECONDS = 30.0
"""A Kafka input making no progress for this long is an error (the broker is gone)."""

Where = int | str
"""Where a row was: its line number in a file, or ``partition P offset O`` in a topic."""
Row = tuple[Where, bytes | SchemaError]
"""Where a row was and its JSON bytes, or why it could not even be read."""


def where_text(where: Where) -> str:
    """``line 7`` for a line number; a topic position as it is.

    >>> where_text(7), where_text("partition 1 offset 30")
    ('line 7', 'partition 1 offset 30')
    """
    return f"line {where}" if isinstance(where, int) else where


@dataclass(frozen=True)
class Rejected:
    where: str
    reason: str


@dataclass
class ScoreReport:
    """The counts of a scoring run."""

    target: str
    versions: dict[str, int]
    scored: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    outside_range: int = 0
    seconds: float = 0.0
    table: LookupTable | None = None
    graph_version: int | None = None
    """The graph version that scored, for a graph target."""
    workers: int = 1
    """Processes that answered the rows (besides this one, when more than one)."""

    def to_dict(self) -> dict[str, Any]:
        graph = {} if self.graph_version is None else {"graph_version": self.graph_version}
        return {
            "target": self.target,
            **graph,
            "versions": self.versions,
            "scored": self.scored,
            "rejected": len(self.rejected),
            "outside_range": self.outside_range,
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.scored / self.seconds, 1) if self.seconds else 0.0,
            "workers": self.workers,
            "lookup_table": None
            if self.table is None
            else {
                "table": self.table.table,
                "rows": self.table.rows,
                "computed_at": self.table.computed_at,
                "ttl_seconds": self.table.ttl_seconds,
            },
        }


# -- the model ---------------------------------------------------------------------------------
def load_served(store: SnapshotStore, name: str, version: int | None = None) -> ServedModel:
    """``version`` of ``name`` (default: the one served now), verified and loaded."""
    if version is None:
        version = store.serving_version(name)
        if version is None:
            raise RiverstreamError(f"no model {name!r} in Redis (no version to score with)")
    obj, meta = store.load_model(name, version)
    return ServedModel.build(name, obj, version=version, kind=meta.kind, meta=meta)


# -- inputs ------------------------------------------------------------------------------------
def file_rows(path: Path) -> Iterator[Row]:
    """The rows of a JSON Lines, CSV or Parquet file of feature events, with their line (row)
    numbers."""
    if not path.exists():
        raise RiverstreamError(f"{path}: no such file")
    yield from read_rows(path, "features")


def kafka_rows(
    bootstrap: str,
    topic: str,
    *,
    security: KafkaSecurity = PLAINTEXT,
    note: Callable[[str], None] | None = None,
) -> Iterator[Row]:
    """Every message of ``topic`` up to its end at the run's start (every partition's end is
    read first: what is written meanwhile, to any partition, is not scored), partition by
    partition in offset order (the same order every run); ``security``: how to connect
    (`stream.kafka.security`).

    Messages are read committed (``isolation.level`` read_committed: an aborted transaction's
    are never scored), so a partition's end is its last stable offset, the furthest such a
    consumer can reach: below the log end while a transaction is open, at its first message.
    What lies from there to the log end (the open transaction's messages, and any written
    after them, committed or not) is not part of the run, and ``note`` is told so for each
    such partition (`_partition_ends`).

    A partition whose reading makes no progress for `KAFKA_STALL_SECONDS`, counted in the
    consumer's polls only (not while the rows wait for their reader, however slow), is an
    error."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"rs-score-{uuid.uuid4().hex[:8]}",  # never committed
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            **security.librdkafka(),
        }
    )
    try:
        ends = _partition_ends(bootstrap, topic, security)
        for partition, (_low, stable, high) in ends.items():
            if stable < high and note is not None:
                note(
                    f"partition {partition} offsets {stable}-{high - 1}: not read: a "
                    f"transaction is open at offset {stable} (messages are read committed, up "
                    f"to the last stable offset)"
                )
        for partition, (low, end, _high) in ends.items():
            tp = TopicPartition(topic, partition)
            if end <= low:
                continue
            consumer.assign([TopicPartition(topic, partition, low)])
            position, waited = low, 0.0  # waited: in polls, since the last progress
            while position < end:
                asked = time.monotonic()
                messages = consumer.consume(CHUNK, 0.5)
                waited += time.monotonic() - asked
                for m in messages:
                    err = m.error()
                    if err is not None:
                        raise KafkaAdapterError(f"consume {topic}/{partition}: {err}")
                    offset = cast(int, m.offset())
                    if offset >= end:
                        break
                    yield f"partition {partition} offset {offset}", m.value() or b""
                # the next offset to read (moves past transaction markers and compacted gaps)
                now_at = consumer.position([tp])[0].offset
                if messages or now_at > position:
                    position, waited = max(position, now_at), 0.0
                elif waited > KAFKA_STALL_SECONDS:
                    raise KafkaAdapterError(
                        f"{topic}/{partition}: no progress at offset {position} of {end} "
                        f"for {KAFKA_STALL_SECONDS:.0f} s"
                    )
            consumer.unassign()
    finally:
        consumer.close()


def _partition_ends(
    bootstrap: str, topic: str, security: KafkaSecurity, *, timeout: float = 30.0
) -> dict[int, tuple[int, int, int]]:
    """Each partition of ``topic``: its first offset, its last stable offset (the end of a
    read committed: the first offset of the oldest transaction still open, else the log end)
    and its log end (the high watermark), asked at once (ListOffsets, by isolation level).
    A partition whose leader is being elected (a topic just created, a broker restarting) is
    asked again until ``timeout``."""
    from confluent_kafka import IsolationLevel, KafkaException, TopicPartition
    from confluent_kafka.admin import AdminClient, OffsetSpec

    partitions = partitions_for(bootstrap, topic, security=security)
    admin = AdminClient({"bootstrap.servers": bootstrap, **security.librdkafka()})
    spec: Any = OffsetSpec  # its class methods are untyped
    asked = [
        (spec.earliest(), IsolationLevel.READ_UNCOMMITTED),
        (spec.latest(), IsolationLevel.READ_COMMITTED),
        (spec.latest(), IsolationLevel.READ_UNCOMMITTED),
    ]
    wanted = [{TopicPartition(topic, p): offset for p in partitions} for offset, _ in asked]

    def ask() -> dict[int, tuple[int, int, int]]:
        answers = [
            {tp.partition: future for tp, future in futures.items()}
            for futures in (
                admin.list_offsets(offsets, isolation_level=level, request_timeout=10)
                for offsets, (_, level) in zip(wanted, asked, strict=True)
            )
        ]
        ends: dict[int, tuple[int, int, int]] = {}
        for partition in partitions:
            try:
                low, stable, high = (int(by[partition].result().offset) for by in answers)
            except KafkaException as exc:
                raise _PartitionError(partition, exc) from exc
            ends[partition] = (low, stable, high)
        return ends

    deadline = time.monotonic() + timeout
    while True:
        try:
            return ask()
        except _PartitionError as failed:
            if not electing(failed.error) or time.monotonic() >= deadline:
                message = f"offsets of {topic}/{failed.partition}: {failed.error}"
                raise KafkaAdapterError(message) from failed.error
            time.sleep(0.2)  # a pause between asks (polling with a deadline)


class _PartitionError(Exception):
    """A partition's offsets could not be read: which one, and Kafka's error."""

    def __init__(self, partition: int, error: Exception) -> None:
        super().__init__(partition, error)
        self.partition = partition
        self.error = error


# -- scoring -----------------------------------------------------------------------------------
@dataclass
class ChunkResult:
    """What scoring a chunk of rows gave: the answers, in order, and the rows not scored."""

    out: Scored
    rejected: list[Rejected]
    outside_range: int
    rows: int


@dataclass(frozen=True)
class ChunkScorer:
    """Scores one chunk of rows (decode, keep the time range, answer): the same work in this
    process or in a worker process (`score_rows` with ``workers``)."""

    codec: EventCodec
    answer: Callable[[str, dict[str, Any]], tuple[dict[str, Any] | None, bytes]]
    low: float
    high: float
    keep: bool

    def __call__(self, chunk: list[Row]) -> ChunkResult:
        result = ChunkResult([], [], 0, len(chunk))
        low, high, keep, answer = self.low, self.high, self.keep, self.answer
        out, rejected = result.out, result.rejected
        for where, event in _decoded(self.codec, chunk, rejected):
            if not low <= event.time <= high:
                result.outside_range += 1
                continue
            try:
                body, encoded = answer(event.id, event.features)
            except SchemaError as exc:
                rejected.append(Rejected(where_text(where), str(exc)))
                continue
            out.append((event.id, body if keep else None, encoded))
        return result


def _decoded(
    codec: EventCodec, chunk: list[Row], rejected: list[Rejected]
) -> Iterable[tuple[Where, FeatureEvent]]:
    """The chunk's rows that decode, with where they were; the others into ``rejected``."""
    raws: list[bytes] = []
    wheres: list[Where] = []
    for where, raw in chunk:
        if isinstance(raw, SchemaError):
            rejected.append(Rejected(where_text(where), str(raw)))
        else:
            raws.append(raw)
            wheres.append(where)
    events, refused = codec.decode_features(raws)
    if not refused:
        return zip(wheres, events, strict=True)
    bad = dict(refused)
    for index, error in refused:
        rejected.append(Rejected(where_text(wheres[index]), str(error)))
    return zip([w for i, w in enumerate(wheres) if i not in bad], events, strict=True)


def _chunks(rows: Iterable[Row]) -> Iterator[list[Row]]:
    """``rows`` in lists of `CHUNK`."""
    rows = iter(rows)
    while chunk := list(islice(rows, CHUNK)):
        yield chunk


_SCORER: ChunkScorer | None = None
"""The scorer of the worker processes (set before they fork, so they inherit it)."""


def _score_in_worker(chunk: list[Row]) -> ChunkResult:
    assert _SCORER is not None
    return _SCORER(chunk)


PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal a process gets when its parent dies (Linux)."""


def _die_with_parent(parent: int) -> None:
    """Initializer of a worker process: SIGTERM kills it (not the handler it inherited from the
    command, which raises `SystemExit` there), and on Linux the kernel sends it SIGTERM when
    ``parent`` dies, even killed -9: a worker is never left waiting for chunks that will not
    come. A parent already gone before that was set leaves the worker re-parented: it exits."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
    if os.getppid() != parent:
        os._exit(1)


def _in_processes(
    scorer: ChunkScorer, chunks: Iterator[list[Row]], workers: int
) -> Iterator[ChunkResult]:
    """``scorer`` over ``chunks`` in ``workers`` forked processes, the results in input order;
    at most two chunks per worker are in flight (a large input is never all in memory). A
    worker that dies (killed, out of memory) fails the run with that reason, never hangs it.
    Closed early (an exception in the caller, ``SystemExit`` on SIGTERM), it shuts the workers
    down; they die with this process anyway (`_die_with_parent`)."""
    global _SCORER
    _SCORER = scorer  # the workers fork at their first chunk and inherit it
    context = multiprocessing.get_context("fork")
    pool = ProcessPoolExecutor(
        workers, mp_context=context, initializer=_die_with_parent, initargs=(os.getpid(),)
    )
    try:
        pending: deque[Future[ChunkResult]] = deque()
        for chunk in chunks:
            pending.append(pool.submit(_score_in_worker, chunk))
            if len(pending) >= 2 * workers:
                yield _result(pending.popleft())
        while pending:
            yield _result(pending.popleft())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _SCORER = None


def _result(future: Future[ChunkResult]) -> ChunkResult:
    try:
        return future.result()
    except BrokenProcessPool as exc:
        raise RiverstreamError(
            f"a scoring process died ({exc}); nothing after the rows written so far was scored"
        ) from None


def one_process_only(served: ServedModel | GraphTarget, workers: int) -> str | None:
    """Why ``served`` cannot be scored with ``workers`` processes (None: it can): a graph
    with a shadow node runs its shadows on this process's shadow runner."""
    if workers > 1 and isinstance(served, GraphTarget) and served.has_shadows:
        return f"graph {served.name!r} has shadows, which run in one process: drop --workers"
    return None


def score_rows(
    served: ServedModel | GraphTarget,
    rows: Iterable[Row],
    sinks: list[Sink],
    *,
    limits: Limits | None = None,
    time_range: tuple[float, float] | None = None,
    progress: Callable[[int], None] | None = None,
    workers: int = 1,
) -> ScoreReport:
    """Answer every row with ``served`` (a model version, or a graph version with its members)
    and write the answers to every sink, in input order; rejections are listed in input order
    too. With ``workers`` > 1, chunks of rows are decoded and answered in that many forked
    processes while this one reads and writes: the same output, bytes for bytes (not for a
    graph with shadows: `one_process_only`)."""
    codec = EventCodec(limits or Limits())
    keep = any(sink.needs_body for sink in sinks)  # else the answers' JSON alone is written
    answer: Callable[[str, dict[str, Any]], tuple[dict[str, Any] | None, bytes]]
    refused = one_process_only(served, workers)
    if refused:
        raise RiverstreamError(refused)
    if isinstance(served, GraphTarget):
        report = ScoreReport(served.name, dict(served.versions), graph_version=served.version)
        graph_body = served.body

        def answer(row_id: str, features: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
            body = graph_body(row_id, features)
            return body, encode(body)
    else:
        report = ScoreReport(served.name, {served.name: served.version})
        answers = ModelAnswers(served)
        answer = answers.answer if keep else answers.answer_json
    low, high = time_range if time_range is not None else (-math.inf, math.inf)
    scorer = ChunkScorer(codec, answer, low, high, keep)
    report.workers = max(workers, 1)
    started = time.perf_counter()
    thresholds = gc.get_threshold()
    # Scoring makes no reference cycles: collect young objects 100 times less often (the
    # collections cost ≈ 10 % of a fast model's rows, measured), not never. Forked workers
    # inherit the setting.
    gc.set_threshold(thresholds[0] * 100, *thresholds[1:])
    chunks = _chunks(rows)
    results = map(scorer, chunks) if workers <= 1 else _in_processes(scorer, chunks, workers)
    try:
        for result in results:
            report.rejected += result.rejected
            report.outside_range += result.outside_range
            for sink in sinks:
                sink.write(result.out)
            report.scored += len(result.out)
            if progress is not None:
                progress(result.rows)
    finally:
        if isinstance(results, Generator):
            # now, not when the traceback that holds this frame goes: the workers stop here
            results.close()
        gc.set_threshold(*thresholds)
    report.rejected.sort(key=_position)
    report.seconds = time.perf_counter() - started
    return report


def _position(rejection: Rejected) -> tuple[int, int]:
    """Sort key of a rejection: lines by number, topic positions by partition and offset."""
    numbers = [int(n) for n in rejection.where.split() if n.isdigit()]
    return (numbers[0], numbers[1] if len(numbers) > 1 else 0)
